"""A login session as stored: its fields, its serialised form, and the limits every store shares."""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

log = logging.getLogger("gateway.sessions")

Clock = Callable[[], float]

CHUNK_SIZE = 3800  # bytes of cookie value per chunk, so name + attributes stay under 4096
MAX_CHUNKS = 10  # a session never spans more cookies than this
MAX_TOKEN_CHARS = 64 * 1024  # longer values are refused before any work is done
MAX_SESSION_JSON = 1 << 20  # decompression bound (the payload is authenticated, this is belt and braces)

TOKEN_VERSION = 1
NONCE_SIZE = 12
KEY_INFO = b"gateway session v1"

REDIS_KEY_PREFIX = "gateway:"
REDIS_TIMEOUT = 2.0  # seconds: socket connect and read timeouts, and ping's bound

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_EXPIRY = struct.Struct(">d")
_FORMAT_JSON = b"J"
_FORMAT_ZLIB = b"Z"


def new_session_id() -> str:
    """A random 128-bit URL-safe identifier (for ``Session.id``)."""
    return secrets.token_urlsafe(16)


# --------------------------------------------------------------------------
# The session itself


@dataclass
class Session:
    """One signed-in browser: who it is, which provider said so, and its tokens."""

    id: str  # random 128-bit urlsafe id (single-flight refresh, closing websockets)
    provider: str  # provider name
    sub: str
    email: Optional[str] = None
    groups: Tuple[str, ...] = ()
    preferred_username: Optional[str] = None
    claims: Dict[str, Any] = field(default_factory=dict)  # small JSON-able subset of id-token claims
    id_token: Optional[str] = None
    access_token: Optional[str] = None
    refresh_token: Optional[str] = None
    access_expires_at: Optional[float] = None  # unix time
    access_issued_at: Optional[float] = None  # when the current access token was obtained
    created_at: float = 0.0
    expires_at: float = 0.0  # session end (created_at + lifetime)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "sub": self.sub,
            "email": self.email,
            "groups": list(self.groups),
            "preferred_username": self.preferred_username,
            "claims": dict(self.claims),
            "id_token": self.id_token,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "access_expires_at": self.access_expires_at,
            "access_issued_at": self.access_issued_at,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Session":
        """Rebuild a session from ``to_dict()`` output; anything malformed is a ValueError.

        Unknown keys are ignored, so an older gateway can read a newer session.
        """
        if not isinstance(d, Mapping):
            raise ValueError("session is not an object")
        groups = d.get("groups", [])
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) for g in groups):
            raise ValueError("session groups must be a list of strings")
        claims = d.get("claims", {})
        if not isinstance(claims, Mapping) or not all(isinstance(k, str) for k in claims):
            raise ValueError("session claims must be an object")
        return cls(
            id=_required_str(d, "id"),
            provider=_required_str(d, "provider"),
            sub=_required_str(d, "sub"),
            email=_optional_str(d, "email"),
            groups=tuple(groups),
            preferred_username=_optional_str(d, "preferred_username"),
            claims=dict(claims),
            id_token=_optional_str(d, "id_token"),
            access_token=_optional_str(d, "access_token"),
            refresh_token=_optional_str(d, "refresh_token"),
            access_expires_at=_optional_time(d, "access_expires_at"),
            access_issued_at=_optional_time(d, "access_issued_at"),
            created_at=_time(d, "created_at", 0.0),
            expires_at=_time(d, "expires_at", 0.0),
        )


def _required_str(d: Mapping, key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"session {key} must be a non-empty string")
    return value


def _optional_str(d: Mapping, key: str) -> Optional[str]:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"session {key} must be a string or null")
    return value


def _optional_time(d: Mapping, key: str) -> Optional[float]:
    if d.get(key) is None:
        return None
    return _time(d, key, 0.0)


def _time(d: Mapping, key: str, default: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"session {key} must be a finite number")
    return float(value)


def _encode_session(session: Session) -> bytes:
    """Compact JSON, prefixed by a format byte; zlib-compressed when that is shorter."""
    try:
        raw = json.dumps(session.to_dict(), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"session is not JSON-serialisable: {exc}") from None
    packed = zlib.compress(raw, 6)
    if len(packed) < len(raw):
        return _FORMAT_ZLIB + packed
    return _FORMAT_JSON + raw


def _decode_session(payload: bytes) -> Session:
    """The inverse of ``_encode_session``; ValueError for anything unexpected."""
    fmt, body = payload[:1], payload[1:]
    if fmt == _FORMAT_ZLIB:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, MAX_SESSION_JSON)
        except zlib.error:
            raise ValueError("session payload is not valid zlib data") from None
        if not inflater.eof or inflater.unconsumed_tail:
            raise ValueError("session payload is truncated or too large")
    elif fmt != _FORMAT_JSON:
        raise ValueError("unknown session payload format")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("session payload is not valid JSON") from None
    return Session.from_dict(data)


def _fill_times(session: Session, now: float, lifetime: float) -> None:
    """Give a session that has none its creation and end time (in place)."""
    if not session.created_at:
        session.created_at = now
    if not session.expires_at:
        session.expires_at = session.created_at + lifetime


# --------------------------------------------------------------------------
# Encryption
