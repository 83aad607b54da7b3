"""Authentication: who is calling? A bearer token first, then (for login routes) the session.

Runs after route matching and before policy. Like oauth2-proxy's JWT session
loader, a bearer token that is present but invalid is an outright 401: the
gateway never falls back to a session cookie to rescue a bad token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from tornado import httputil

from .config import AUTH_LOGIN, RouteConfig
from .models import AuthError, Identity
from .tokens import TokenVerifier, bearer_from_header

# (handler, route) -> identity; gets the handler because a refresh re-sets the session cookie.
SessionLoader = Callable[[Any, Optional[RouteConfig]], Awaitable[Optional[Identity]]]


@dataclass
class AuthResult:
    identity: Optional[Identity] = None
    error: Optional[AuthError] = None  # a credential was sent and refused
    token_sent: bool = False


def is_browser(headers: httputil.HTTPHeaders) -> bool:
    """A page load by a person: accepts HTML and is not a script's XHR/fetch."""
    if "text/html" not in headers.get("Accept", ""):
        return False
    if headers.get("X-Requested-With"):
        return False
    return headers.get("Sec-Fetch-Mode", "").lower() != "cors"


class Authenticator:
    def __init__(self, verifier: TokenVerifier, session_loader: Optional[SessionLoader] = None):
        self.verifier = verifier
        self.session_loader = session_loader

    async def authenticate(self, handler: Any, route: Optional[RouteConfig]) -> AuthResult:
        """Bearer token on any route; the login session only where the route takes one."""
        request = handler.request
        try:
            raw = bearer_from_header(request.headers.get("Authorization"))
        except AuthError as exc:
            return AuthResult(error=exc, token_sent=True)
        if raw is not None:
            try:
                return AuthResult(identity=await self.verifier.verify(raw), token_sent=True)
            except AuthError as exc:
                return AuthResult(error=exc, token_sent=True)
        if self.session_loader is not None and (route is None or route.auth == AUTH_LOGIN):
            identity = await self.session_loader(handler, route)
            if identity is not None:
                return AuthResult(identity=identity)
        return AuthResult()

