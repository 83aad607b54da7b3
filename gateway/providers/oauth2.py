"""Plain OAuth 2.0 login (``type: oauth2``): configured endpoints, the user from userinfo.

There is no ID token and so no ``nonce``: the identity is whatever the
userinfo endpoint answers for the access token just obtained, read through
the provider's ``claims`` mapping (``{sub: id, email: mail}``). An answer
without the field that maps to ``sub`` is an error, never a user.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

from .client import ProviderClient, TokenSet
from .errors import REFUSED_TEXT, ProviderError
from .identity import UserClaims, mapped, user_claims

log = logging.getLogger("gateway.providers")


class OAuth2Client(ProviderClient):
    kind = "oauth2"

    async def endpoints(self) -> Dict[str, Any]:
        return {"authorization_endpoint": self.config.authorization_endpoint,
                "token_endpoint": self.config.token_endpoint,
                "userinfo_endpoint": self.config.userinfo_endpoint}

    async def sign_in(self, *, code: str, verifier: str, nonce: str,
                      iss: Optional[str]) -> Tuple[TokenSet, UserClaims]:
        tokens = await self.exchange_code(code, verifier)
        assert tokens.access_token is not None
        document = await self.profile(tokens.access_token)
        return tokens, user_claims(self.config, mapped(document, self.config.claims), keep=self.keep)

    async def profile(self, access_token: str) -> Dict[str, Any]:
        """The userinfo endpoint's answer, as a JSON object."""
        document, _ = await self.get_json(self.config.userinfo_endpoint, access_token, "userinfo")
        if not isinstance(document, dict):
            log.warning("provider %s: userinfo answer is not a JSON object", self.name)
            raise ProviderError(REFUSED_TEXT, "userinfo_malformed")
        return document
