"""Login providers behind one interface: OpenID Connect, plain OAuth 2.0 and GitHub.

``make_client`` picks the kind from the provider's configuration (its
``type`` and preset); ``login`` only ever talks to ``ProviderClient``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from ..config import ProviderConfig
from ..discovery import DiscoveryCache
from ..jwks import JWKSRegistry
from .client import ProviderClient, TokenSet, new_pkce, random_token
from .errors import InvalidGrant, Misconfigured, ProviderError, ProviderUnavailable, TokenRefused
from .github import GitHubClient
from .identity import KEPT_CLAIMS, UserClaims
from .oauth2 import OAuth2Client
from .oidc import OIDCClient

__all__ = ["KEPT_CLAIMS", "GitHubClient", "InvalidGrant", "Misconfigured", "OAuth2Client", "OIDCClient",
           "ProviderClient", "ProviderError", "ProviderUnavailable", "TokenRefused", "TokenSet", "UserClaims",
           "make_client", "new_pkce", "random_token"]


def make_client(config: ProviderConfig, http_client: Any, *, redirect_uri: str, discovery: DiscoveryCache,
                jwks: JWKSRegistry, keep: Iterable[str] = (),
                clock: Callable[[], float] = time.time) -> ProviderClient:
    if config.type == "oidc":
        return OIDCClient(config, http_client, redirect_uri=redirect_uri, discovery=discovery, jwks=jwks,
                          keep=tuple(keep), clock=clock)
    kind = GitHubClient if config.api == "github" else OAuth2Client
    return kind(config, http_client, redirect_uri=redirect_uri, keep=tuple(keep), clock=clock)
