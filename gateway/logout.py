"""Ending sessions from outside the browser: the provider's back-channel logout and the admin's revocation.

Both end sessions the same way (``end``): the stored sessions a logout names
are deleted (Redis: on every instance at once, found through the session
index), and a revocation is recorded (``gateway.revocations``) so that a
replayed cookie, a gateway-issued token or an open WebSocket of those
sessions is refused or closed in every worker and, with Redis, every
instance. Lower than the handlers: plain values in, answers out.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

import jwt

from .answers import Answer, Empty, Json
from .login import LoginManager
from .providers import OIDCClient, ProviderError, ProviderUnavailable
from .revocations import Revocation
from .sessions import SessionStoreError

log = logging.getLogger("gateway.logout")

NO_STORE = (("Pragma", "no-cache"),)  # and Cache-Control: no-store, as every answer of the gateway
JTI_MIN_TTL = 600.0  # a logout token's jti is remembered at least this long (or until it expires)
MAX_LOGOUT_TOKEN = 16 * 1024


def _refused(description: str) -> Json:
    return Json({"error": "invalid_request", "error_description": description}, status=400, headers=NO_STORE)


def _iso(value: Any) -> Optional[str]:
    if not isinstance(value, (int, float)):
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat().replace("+00:00", "Z")


class Logouts:
    def __init__(self, login: LoginManager):
        self.login = login

    async def end(self, kind: str, value: str, provider: str = "") -> int:
        """End every session ``kind`` ("id", "psid", "sub", "user") and ``value`` name; how many were stored."""
        login = self.login
        now = login.clock()
        found = await login.store.find(kind, value, provider)
        ended = await login.store.end(found)
        # No session it names can live longer than a whole lifetime from now.
        until = max([now + login.config.session.lifetime] + [e["expires"] for e in found
                                                             if isinstance(e.get("expires"), (int, float))])
        login.revocations.add(Revocation(kind, value, provider, before=now, until=until))
        for entry in found:  # the index found them: close their sockets and refuse their tokens by id too
            if kind != "id":
                login.revocations.add(Revocation("id", entry["id"], until=until))
        return ended

    # -- OpenID Connect Back-Channel Logout 1.0 ---------------------------------------

    async def backchannel(self, form: Mapping[str, str]) -> Answer:
        """POST /oauth2/backchannel_logout: 200 once a valid logout_token's sessions have ended, else 400."""
        token = form.get("logout_token", "")
        if not token or len(token) > MAX_LOGOUT_TOKEN:
            return _refused("a logout_token is required")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except Exception:
            return _refused("the logout_token is not a JWT")
        iss = unverified.get("iss")
        candidates = [c for c in self.login.clients.values()
                      if isinstance(c, OIDCClient) and c.config.backchannel_logout and isinstance(iss, str)
                      and (c.issuer == iss or c.config.tenant_issuer)]
        if not candidates:
            log.warning("back-channel logout from an issuer no provider accepts logouts from")
            return _refused("no provider accepts back-channel logouts from this issuer")
        claims, client, problem = None, None, "invalid logout_token"
        for candidate in candidates:
            try:
                claims, client = await candidate.validate_logout_token(token), candidate
                break
            except ProviderUnavailable:
                return Json({"error": "temporarily_unavailable", "error_description": "the provider's keys "
                             "could not be fetched"}, status=503, headers=NO_STORE)
            except ProviderError as exc:
                problem = exc.description
        if claims is None or client is None:
            return _refused(problem)
        ttl = max(JTI_MIN_TTL, float(claims.get("exp") or 0) - self.login.clock())
        jti = hashlib.sha256(f"{claims['iss']}\0{claims['jti']}".encode()).hexdigest()
        if not await self.login.store.mark_used("jti:" + jti, ttl):
            log.warning("back-channel logout from %s replayed (jti seen before)", client.name)
            return _refused("this logout_token was used before")
        try:
            if claims.get("sid"):
                ended = await self.end("psid", claims["sid"], client.name)
            else:
                ended = await self.end("sub", claims["sub"], client.name)
        except SessionStoreError as exc:
            log.error("back-channel logout from %s: %s", client.name, exc)
            return Json({"error": "temporarily_unavailable", "error_description": "the session store is "
                         "unavailable"}, status=503, headers=NO_STORE)
        log.info("back-channel logout from %s: %s ended (%d stored session(s))", client.name,
                 "its session" if claims.get("sid") else "every session of the subject", ended)
        return Empty(200, headers=NO_STORE)

    # -- the admin port ---------------------------------------------------------------

    async def list(self, sub: str) -> Answer:
        """GET /sessions?sub=S (admin port): the stored sessions of a user, never a token."""
        if self.login.config.session.store == "cookie":
            return Json({"error": "not_available", "error_description": "sessions are kept in browsers' cookies "
                         "(session.store: cookie); listing them needs session.store: redis://"}, status=501)
        found = await self.login.store.find("user", sub)
        return Json({"sessions": [{"id": e["id"], "sub": e["sub"], "provider": e["provider"],
                                   "created": _iso(e.get("created")), "expires": _iso(e.get("expires"))}
                                  for e in found]})

    async def revoke(self, *, sub: Optional[str], session_id: Optional[str]) -> Answer:
        """POST /sessions/revoke?sub=S|id=ID (admin port): as a back-channel logout would."""
        if bool(sub) == bool(session_id):
            return Json({"error": "invalid_request", "error_description": "give exactly one of sub and id"},
                        status=400)
        kind, value = ("user", sub) if sub else ("id", session_id)
        assert value is not None
        try:
            ended = await self.end(kind, value)
        except SessionStoreError as exc:
            return Json({"error": "temporarily_unavailable", "error_description": str(exc)}, status=503)
        log.info("admin revoked the sessions of %s %s (%d stored)", "user" if sub else "session", value[:80], ended)
        return Json({"revoked": ended})
