"""The one token maker, bearer header and gateway environment of the test suite.

* ``claims(iss, sub, aud=..., lifetime=...)``: a JWT claim set issued now (``iat``/``exp``);
  extra claims override, and a claim set to ``None`` is left out;
* ``make_token(claims, key, alg=..., headers=...)``: the claims signed (HS256 by default,
  ``alg="none"`` with ``key=None`` for an unsigned one);
* ``hs_token(sub, iss=..., secret=...)``: ``make_token(claims(...))`` for an HS256 issuer;
  test modules bind their issuer's defaults with ``functools.partial``;
* ``bearer(token)``: the ``Authorization`` header carrying it;
* ``gateway_env(...)``: the environment variables a gateway config refers to
  (``GATEWAY_SESSION_SECRET`` and any others).

tests/conftest.py exposes them as the fixtures ``hs_secret``, ``make_token``, ``bearer`` and
``gateway_env``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import jwt

NOW = 1_700_000_000  # the wall-clock time tests inject into TokenVerifier
HMAC_SECRET = "a-test-secret-that-is-long-enough-for-hs256!"
SESSION_SECRET = "a-test-session-secret-of-at-least-32-bytes!"


def claims(iss: str, sub: Optional[str] = "alice", *, aud: Any = None, lifetime: int = 600,
           now: Optional[int] = None, **extra: Any) -> Dict[str, Any]:
    issued = int(time.time()) if now is None else now
    body: Dict[str, Any] = {"iss": iss, "sub": sub, "aud": aud, "iat": issued, "exp": issued + lifetime}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def make_token(body: Dict[str, Any], key: Any = HMAC_SECRET, *, alg: str = "HS256",
               headers: Optional[Dict[str, Any]] = None) -> str:
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def hs_token(sub: Optional[str] = "alice", *, iss: str, secret: str = HMAC_SECRET, aud: Any = None,
             lifetime: int = 600, email_domain: Optional[str] = None, **extra: Any) -> str:
    """An HS256 token from ``iss``; with ``email_domain``, ``email`` defaults to ``sub@email_domain``."""
    if email_domain is not None:
        extra.setdefault("email", f"{sub}@{email_domain}")
    return make_token(claims(iss, sub, aud=aud, lifetime=lifetime, **extra), secret)


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def gateway_env(session_secret: Optional[str] = SESSION_SECRET, **variables: str) -> Dict[str, str]:
    """``GATEWAY_SESSION_SECRET`` (unless ``session_secret=None``) and the other ``variables``."""
    env = {} if session_secret is None else {"GATEWAY_SESSION_SECRET": session_secret}
    env.update(variables)
    return env
