"""Authentication: who is calling? A bearer token first, then (for login routes) the session.

The gateway's own tokens (``source == "gateway"``) are bearer tokens bound to
a session: refused once that session has ended.

Runs after route matching and before policy, on plain inputs (the
Authorization header and the request's cookies). Like oauth2-proxy's JWT
session loader, a bearer token that is present but invalid is an outright
401: the gateway never falls back to a session cookie to rescue a bad token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Optional, Tuple

from .answers import Cookies
from .config import AUTH_LOGIN, RouteConfig
from .models import AuthError, Identity
from .tokens import TokenVerifier, bearer_from_header

# (cookies, route) -> (identity, cookie updates a refresh made)
SessionLoader = Callable[[Mapping[str, str], Optional[RouteConfig]], Awaitable[Tuple[Optional[Identity], Cookies]]]
SessionAlive = Callable[[Identity], Awaitable[bool]]
SESSION_ENDED = AuthError("the session this token was issued for has ended", "session_ended")


@dataclass
class AuthResult:
    identity: Optional[Identity] = None
    error: Optional[AuthError] = None  # a credential was sent and refused
    token_sent: bool = False
    cookies: Cookies = ()  # session cookie updates to send with the answer (a refresh)


class Authenticator:
    def __init__(self, verifier: TokenVerifier, session_loader: Optional[SessionLoader] = None,
                 session_alive: Optional[SessionAlive] = None):
        self.verifier = verifier
        self.session_loader = session_loader
        self.session_alive = session_alive  # the gateway's own tokens live only as long as their session

    async def authenticate(self, authorization: Optional[str], cookies: Callable[[], Mapping[str, str]],
                           route: Optional[RouteConfig]) -> AuthResult:
        """Bearer token on any route; the login session only where the route takes one.

        ``cookies`` is called only when the session is consulted, so token calls never parse them.
        """
        try:
            raw = bearer_from_header(authorization)
        except AuthError as exc:
            return AuthResult(error=exc, token_sent=True)
        if raw is not None:
            try:
                identity = await self.verifier.verify(raw)
            except AuthError as exc:
                return AuthResult(error=exc, token_sent=True)
            if identity.source == "gateway" and not (
                    identity.session_id and self.session_alive is not None
                    and await self.session_alive(identity)):
                return AuthResult(error=SESSION_ENDED, token_sent=True)
            return AuthResult(identity=identity, token_sent=True)
        if self.session_loader is not None and (route is None or route.auth == AUTH_LOGIN):
            identity, ops = await self.session_loader(cookies(), route)
            return AuthResult(identity=identity, cookies=ops)
        return AuthResult()
