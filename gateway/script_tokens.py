"""Tokens for scripts and CLIs: a browser signs in, the gateway issues a token, the script sends it.

Below the handlers, beside ``login``: every function takes plain values and
returns what to answer. ``GET /oauth2/token`` shows the signed-in person a
token; ``gateway login`` gets one by the RFC 8252 loopback flow
(``/oauth2/cli`` hands a single-use 60-second code to
``http://127.0.0.1:PORT/callback``, and ``POST /oauth2/token`` redeems it with
the PKCE verifier). A token names its session (``sid``) and never outlives
it; ``authn`` refuses it once the session has ended.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlencode

from .answers import Answer, Json, Page, Redirect, Refusal
from .models import Identity, is_number
from .providers import random_token
from .signing import KeyRing

log = logging.getLogger("gateway.tokens.own")

AUDIENCE = "gateway"
CLI_CODE_TTL = 60.0
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256, without padding
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1
NO_STORE = (("Pragma", "no-cache"),)  # and Cache-Control: no-store, as on every answer of the gateway


def _bad(description: str, error: str = "invalid_request") -> Json:
    return Json({"error": error, "error_description": description}, status=400, headers=NO_STORE)


class ScriptTokens:
    """Issues the gateway's own bearer tokens for signed-in people."""

    def __init__(self, ring: KeyRing, store: Any, *, lifetime: float, clock: Callable[[], float] = time.time,
                 codec: Any = None):
        self.ring = ring
        self.codec = codec  # encrypts what a CLI code stands for while the store keeps it (Redis sees no identity)
        self.store = store  # the session store: its handoff slots keep CLI codes (single use, 60 s)
        self.lifetime = lifetime
        self.clock = clock

    def issue(self, identity: Identity) -> tuple[str, int]:
        """A token for ``identity`` (a session's) and its lifetime in seconds, never past the session's end."""
        now = int(self.clock())
        exp = now + int(self.lifetime)
        if identity.expires_at is not None:
            exp = min(exp, int(identity.expires_at))
        claims = {"iss": self.ring.issuer, "aud": AUDIENCE, "sub": identity.sub, "iat": now, "exp": exp,
                  "sid": identity.session_id}
        if identity.started_at:
            claims["auth_time"] = int(identity.started_at)
        # what a logout may name the session by (its provider's session and subject)
        for name, value in (("idp", identity.provider), ("idp_sid", identity.provider_sid),
                            ("idp_sub", identity.provider_sub)):
            if value:
                claims[name] = value
        claims.update(identity.profile())
        return self.ring.sign(claims), max(0, exp - now)

    def _answer(self, identity: Identity) -> dict:
        token, expires_in = self.issue(identity)
        return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "sub": identity.sub,
                "email": identity.email, "preferred_username": identity.preferred_username}

    def token_for(self, identity: Identity, *, browser: bool, public_url: str) -> Answer:
        """``GET /oauth2/token`` with a session: JSON for scripts, a page with a copy button for people."""
        body = self._answer(identity)
        if not browser:
            return Json(body, headers=NO_STORE)
        example = f'curl -H "Authorization: Bearer $TOKEN" {public_url}/'
        return Page("token.html", {"title": "Your token", "token": body["access_token"],
                                   "expires_in": body["expires_in"], "example": example,
                                   "who": identity.preferred_username or identity.email or identity.sub},
                    reason="token issued")

    async def cli_start(self, args: Mapping[str, str], identity: Identity) -> Answer:
        """``/oauth2/cli?port=P&code_challenge=C``: hand a code to the CLI listening on 127.0.0.1:P only."""
        port, challenge = args.get("port", ""), args.get("code_challenge", "")
        if not _PORT.fullmatch(port) or int(port) > 65535:
            return Refusal(400, "cli: bad port", description="The command line's port must be a number from 1 "
                                                             "to 65535.")
        if not _CHALLENGE.fullmatch(challenge) or args.get("code_challenge_method", "S256") != "S256":
            return Refusal(400, "cli: bad code_challenge", description="The sign-in request needs a PKCE S256 "
                                                                       "code_challenge.")
        code = random_token(32)
        note = json.dumps({"c": challenge, "i": _identity_dict(identity)}).encode()
        if self.codec is not None:
            note = self.codec.encode("cli-code", note, CLI_CODE_TTL).encode()
        await self.store.put_handoff("cli:" + code, note, CLI_CODE_TTL)
        # Only the loopback address, only the port given, only /callback: nothing from the query is a URL.
        return Redirect(f"http://127.0.0.1:{int(port)}/callback?" + urlencode({"code": code}),
                        reason="cli code issued")

    async def cli_exchange(self, form: Mapping[str, str]) -> Answer:
        """``POST /oauth2/token`` (code, code_verifier): the code's token, once, within 60 s."""
        code, verifier = form.get("code", ""), form.get("code_verifier", "")
        if not code or not verifier:
            return _bad("code and code_verifier are required")
        if not _VERIFIER.fullmatch(verifier) or len(code) > 100:
            return _bad("malformed code or code_verifier", "invalid_grant")
        raw = await self.store.take_handoff("cli:" + code)  # single use: taken even when the verifier is wrong
        if raw is not None and self.codec is not None:
            raw = self.codec.decode("cli-code", raw.decode("ascii", "replace"))
        if raw is None:
            return _bad("the code is unknown, used or expired", "invalid_grant")
        note = json.loads(raw)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(challenge.encode(), str(note.get("c", "")).encode()):
            log.warning("cli token exchange with a wrong code_verifier: code spent")
            return _bad("the code_verifier does not match", "invalid_grant")
        identity = _identity_from(note["i"])
        if identity.expires_at is not None and identity.expires_at <= self.clock():
            return _bad("the session has ended", "invalid_grant")
        return Json(self._answer(identity), headers=NO_STORE)


def _identity_dict(identity: Identity) -> dict:
    return {"sub": identity.sub, "email": identity.email, "groups": list(identity.groups),
            "preferred_username": identity.preferred_username, "issuer": identity.issuer,
            "expires_at": identity.expires_at, "sid": identity.session_id, "provider": identity.provider,
            "psid": identity.provider_sid, "psub": identity.provider_sub, "started": identity.started_at}


def _identity_from(data: Mapping[str, Any]) -> Identity:
    return Identity(sub=data["sub"], email=data.get("email"), groups=tuple(data.get("groups") or ()),
                    preferred_username=data.get("preferred_username"), issuer=data.get("issuer"),
                    source="session", expires_at=data.get("expires_at"), session_id=data.get("sid"),
                    provider=data.get("provider"), provider_sid=data.get("psid"), provider_sub=data.get("psub"),
                    started_at=float(data.get("started") or 0.0))


def own_identity(claims: Mapping[str, Any]) -> Identity:
    """The identity a verified token of ours carries."""
    groups = claims.get("groups")

    def text(name: str) -> Optional[str]:
        value = claims.get(name)
        return value if isinstance(value, str) and value else None

    return Identity(sub=claims["sub"], email=claims.get("email") if isinstance(claims.get("email"), str) else None,
                    groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
                    preferred_username=claims.get("preferred_username")
                    if isinstance(claims.get("preferred_username"), str) else None,
                    issuer=claims.get("iss"), claims=dict(claims), source="gateway",
                    expires_at=float(claims["exp"]), session_id=text("sid"), provider=text("idp"),
                    provider_sid=text("idp_sid"), provider_sub=text("idp_sub"),
                    started_at=float(claims["auth_time"]) if is_number(claims.get("auth_time")) else 0.0)
