"""Browser sessions: what a signed-in browser carries between requests.

This module sits between the login handlers and the session cookie. The
handlers (``/oauth2/callback``, ``/oauth2/sign_out``, token refresh) and
``authn`` only use the ``SessionStore`` interface; which backend stores the
session is decided once, by ``make_session_store(config.session)``::

    store = make_session_store(config.session)
    session = await store.load(cookies)            # Session or None, never raises
    update = await store.save(session, cookies)    # CookieUpdate: what to set, what to clear
    for name, value in update.set:
        handler.set_cookie(name, value, max_age=update.max_age, ...)
    for name in update.clear:
        handler.clear_cookie(name, ...)

where ``cookies`` maps request cookie names to values.

Two backends:

* ``CookieSessionStore`` (``store: cookie``): the whole session, as JSON
  (zlib-compressed when that is shorter), encrypted with ``CookieCodec`` and
  split over several cookies when it exceeds ``CHUNK_SIZE`` (large id tokens).
  Nothing is kept on the server, so a cleared cookie that an attacker kept a
  copy of stays valid until it expires: prefer Redis where sign-out must
  revoke. Refresh locks and one-time markers live in this process only.
* ``RedisSessionStore`` (``store: redis://HOST:PORT/DB``): the cookie holds an
  encrypted random ticket; Redis holds the session under
  ``gateway:session:<ticket>``, itself encrypted, so a Redis dump leaks no
  tokens. Several gateway instances share sessions, refresh locks and
  one-time markers, and ``clear()`` revokes the session everywhere.

Every value is encrypted and authenticated with AES-GCM under a key derived
from ``session.secret`` (HKDF-SHA256, one key per purpose); the cookie name is
bound as associated data and an expiry travels inside the plaintext.
``session.previous_secrets`` are still accepted for decryption, for key
rotation. Cookie values, tokens and secrets never appear in a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import secrets
import struct
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config import SessionConfig
from gateway.redact import safe_url

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


class CookieCodec:
    """AES-GCM with a 256-bit key derived from the secret by HKDF-SHA256.

    The HKDF info is ``b"gateway session v1 " + purpose``, so the values made
    for one purpose ("session", "login-state", "ticket", ...) cannot be
    decrypted as another. A token is the unpadded base64url of::

        version (1 byte) | nonce (12 random bytes) | AES-GCM(expiry as float64 | payload)

    with the cookie ``name`` as associated data, so a value cannot be moved to
    another cookie. ``encode`` uses the current secret; ``decode`` tries the
    current and then every previous secret. ``decode`` returns None for
    anything tampered, expired, truncated or otherwise unusable, and never
    raises.
    """

    def __init__(
        self,
        secret: str,
        previous: Sequence[str] = (),
        purpose: str = "session",
        clock: Clock = time.time,
    ):
        if not secret:
            raise ValueError("a session secret is required")
        self.purpose = purpose
        self._clock = clock
        info = KEY_INFO + b" " + purpose.encode()
        keys: List[AESGCM] = []
        seen = set()
        for s in (secret, *previous):
            if not s or s in seen:
                continue
            seen.add(s)
            material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(s.encode())
            keys.append(AESGCM(material))
        self._keys = keys

    def encode(self, name: str, payload: bytes, max_age: float) -> str:
        """Encrypt ``payload`` for cookie ``name``, valid for ``max_age`` seconds."""
        expires = self._clock() + max_age
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._keys[0].encrypt(nonce, _EXPIRY.pack(expires) + bytes(payload), name.encode())
        blob = bytes([TOKEN_VERSION]) + nonce + sealed
        return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")

    def decode(self, name: str, token: str) -> Optional[bytes]:
        """The payload of a valid, unexpired ``token`` made for ``name``; otherwise None."""
        try:
            return self._decode(name, token)
        except Exception:  # a codec must never turn bad input into a 500
            log.debug("unexpected error decoding a %s value", self.purpose, exc_info=True)
            return None

    def _decode(self, name: str, token: str) -> Optional[bytes]:
        if not isinstance(token, str) or not isinstance(name, str):
            return None
        if not token or len(token) > MAX_TOKEN_CHARS or len(token) % 4 == 1:
            return None
        if not _B64URL.fullmatch(token):
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # version + nonce + expiry + GCM tag (16 bytes)
        if len(blob) < 1 + NONCE_SIZE + _EXPIRY.size + 16 or blob[0] != TOKEN_VERSION:
            return None
        nonce, sealed = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        aad = name.encode("utf-8", "surrogatepass")
        for key in self._keys:
            try:
                plain = key.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
            (expires,) = _EXPIRY.unpack_from(plain)
            if not math.isfinite(expires) or self._clock() >= expires:
                return None
            return plain[_EXPIRY.size :]
        return None


# --------------------------------------------------------------------------
# Cookie chunking


def chunk_cookie(name: str, value: str) -> List[Tuple[str, str]]:
    """``[(name, value)]`` when it fits, else ``[(name_0, v0), (name_1, v1), ...]``.

    Raises ValueError when more than ``MAX_CHUNKS`` cookies would be needed.
    """
    if len(value) <= CHUNK_SIZE:
        return [(name, value)]
    parts = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"cookie {name} would need {len(parts)} chunks (at most {MAX_CHUNKS})")
    return [(f"{name}_{i}", part) for i, part in enumerate(parts)]


def read_chunked(name: str, cookies: Mapping[str, str]) -> Optional[str]:
    """The value of cookie ``name``, or of ``name_0``, ``name_1``... joined.

    Reassembly stops at the first missing index and never reads more than
    ``MAX_CHUNKS`` chunks. None when neither form is present.
    """
    if name in cookies:
        return cookies[name]
    parts = []
    for i in range(MAX_CHUNKS):
        part = cookies.get(f"{name}_{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts) if parts else None


def cookie_names(name: str, cookies: Mapping[str, str]) -> List[str]:
    """Every cookie of this session in the request (``name`` and any ``name_N``), to clear them all."""
    pattern = re.compile(re.escape(name) + r"_(\d{1,4})")
    chunks = []
    for key in cookies:
        m = pattern.fullmatch(key)
        if m:
            chunks.append((int(m.group(1)), key))
    names = [name] if name in cookies else []
    return names + [key for _, key in sorted(chunks)]


# --------------------------------------------------------------------------
# The store interface


@dataclass(frozen=True)
class CookieUpdate:
    """What a response must do to the browser's cookies after a store call."""

    set: Tuple[Tuple[str, str], ...]  # (name, value) to set with max_age
    clear: Tuple[str, ...]  # names to delete, stale chunks of a larger earlier session included
    max_age: float  # seconds, for every cookie in ``set``


class SessionStoreError(Exception):
    """The session backend could not store a session (the message names no secret)."""


class SessionStore(ABC):
    """Where browser sessions live. ``cookies`` is always request name -> value."""

    cookie_name: str

    @abstractmethod
    async def load(self, cookies: Mapping[str, str]) -> Optional[Session]:
        """The request's valid, unexpired session, or None. Never raises."""

    @abstractmethod
    async def save(self, session: Session, cookies: Mapping[str, str]) -> CookieUpdate:
        """Store ``session`` (new or updated) and say which cookies to set and clear.

        A session without ``created_at``/``expires_at`` gets them here (now and
        now + lifetime), in place. An already expired session is not stored:
        the update then only clears cookies.
        """

    @abstractmethod
    async def clear(self, cookies: Mapping[str, str]) -> CookieUpdate:
        """Forget the request's session (server side too) and clear every chunk."""

    @abstractmethod
    async def lock(self, session_id: str, ttl: float = 10.0) -> bool:
        """Take the refresh lock of a session (single flight); True if taken."""

    @abstractmethod
    async def unlock(self, session_id: str) -> None:
        """Release a lock taken by ``lock``."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the backend is reachable (for ``/ready``). Never raises."""

    @abstractmethod
    async def mark_used(self, key: str, ttl: float) -> bool:
        """One-time marker: True the first time ``key`` is seen within ``ttl``, False after."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


def _require_secret(config: SessionConfig) -> str:
    if not config.secret:
        raise ValueError(
            "session.secret is required to store browser sessions: set it (at least 32 bytes, "
            "e.g. secret: ${GATEWAY_SESSION_SECRET}) when any provider is configured"
        )
    return config.secret


class _ExpiringMarkers:
    """Keys with an expiry, in insertion order, capped at ``cap`` entries (oldest dropped)."""

    def __init__(self, clock: Clock, cap: int):
        self._clock = clock
        self._cap = cap
        self._items: "OrderedDict[str, float]" = OrderedDict()

    def add(self, key: str, ttl: float) -> bool:
        """Add ``key`` for ``ttl`` seconds; False if it is already there and unexpired."""
        now = self._clock()
        expires = self._items.get(key)
        if expires is not None and expires > now:
            return False
        self._items[key] = now + ttl
        self._items.move_to_end(key)
        self._prune(now)
        return True

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def _prune(self, now: float) -> None:
        while len(self._items) > self._cap:
            self._items.popitem(last=False)
        # drop expired entries from the old end while there are some
        while self._items:
            key, expires = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[key]


# --------------------------------------------------------------------------
# Cookie backend


class CookieSessionStore(SessionStore):
    """The whole session in (possibly several) encrypted cookies."""

    MARKER_CAP = 100_000
    LOCK_CAP = 100_000

    def __init__(self, config: SessionConfig, clock: Clock = time.time):
        secret = _require_secret(config)
        self.cookie_name = config.cookie_name
        self.lifetime = config.lifetime
        self._clock = clock
        self._codec = CookieCodec(secret, config.previous_secrets, "session", clock)
        self._locks = _ExpiringMarkers(clock, self.LOCK_CAP)
        self._used = _ExpiringMarkers(clock, self.MARKER_CAP)

    async def load(self, cookies: Mapping[str, str]) -> Optional[Session]:
        token = read_chunked(self.cookie_name, cookies)
        if token is None:
            return None
        payload = self._codec.decode(self.cookie_name, token)
        if payload is None:
            log.debug("session cookie rejected (tampered, expired or another secret)")
            return None
        try:
            session = _decode_session(payload)
        except ValueError as exc:
            log.warning("session cookie has an unreadable payload: %s", exc)
            return None
        if session.expires_at <= self._clock():
            return None
        return session

    async def save(self, session: Session, cookies: Mapping[str, str]) -> CookieUpdate:
        now = self._clock()
        _fill_times(session, now, self.lifetime)
        present = cookie_names(self.cookie_name, cookies)
        max_age = float(math.floor(session.expires_at - now))
        if max_age < 1:
            return CookieUpdate((), tuple(present), 0.0)
        try:
            pairs = self._seal(session, max_age)
        except ValueError:
            if session.id_token is None:
                raise
            # The id token is only an end_session hint: better a session without it than none.
            log.warning("session too large for %d cookies; storing it without its id token", MAX_CHUNKS)
            pairs = self._seal(replace(session, id_token=None), max_age)
        names = {n for n, _ in pairs}
        return CookieUpdate(tuple(pairs), tuple(n for n in present if n not in names), max_age)

    def _seal(self, session: Session, max_age: float) -> List[Tuple[str, str]]:
        token = self._codec.encode(self.cookie_name, _encode_session(session), max_age)
        return chunk_cookie(self.cookie_name, token)

    async def clear(self, cookies: Mapping[str, str]) -> CookieUpdate:
        return CookieUpdate((), tuple(cookie_names(self.cookie_name, cookies)), 0.0)

    async def lock(self, session_id: str, ttl: float = 10.0) -> bool:
        return self._locks.add(session_id, ttl)

    async def unlock(self, session_id: str) -> None:
        self._locks.discard(session_id)

    async def ping(self) -> bool:
        return True

    async def mark_used(self, key: str, ttl: float) -> bool:
        return self._used.add(key, ttl)

    async def close(self) -> None:
        pass


# --------------------------------------------------------------------------
# Redis backend


redact_url = safe_url  # a Redis URL without its password, fit for a log line or an error


_UNLOCK_SCRIPT = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"""


class RedisSessionStore(SessionStore):
    """Sessions in Redis; the cookie carries only an encrypted ticket.

    The ticket cookie's plaintext is ``<ticket>.<session id>``: ``save`` of the
    same session (a refresh) overwrites ``gateway:session:<ticket>`` in place,
    but only while that key still exists, so a refresh racing a sign-out on
    another instance cannot bring the session back. A new session (new id)
    gets a new ticket, and the browser's previous session key is deleted.
    """

    def __init__(
        self,
        config: SessionConfig,
        url: str,
        clock: Clock = time.time,
        *,
        timeout: float = REDIS_TIMEOUT,
    ):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        secret = _require_secret(config)
        self.cookie_name = config.cookie_name
        self.lifetime = config.lifetime
        self.timeout = timeout
        self._clock = clock
        self._ticket_codec = CookieCodec(secret, config.previous_secrets, "ticket", clock)
        self._codec = CookieCodec(secret, config.previous_secrets, "session", clock)
        self._safe_url = redact_url(url)
        self._password = urlsplit(url).password or ""
        # One quick retry (a pooled connection may be stale after a Redis restart), no backoff:
        # an unreachable Redis must cost a request at most ~2 timeouts, not redis-py's default 3 backoffs.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._unlock = self._redis.register_script(_UNLOCK_SCRIPT)
        self._lock_tokens: Dict[str, str] = {}

    # keys

    @staticmethod
    def session_key(ticket: str) -> str:
        return f"{REDIS_KEY_PREFIX}session:{ticket}"

    @staticmethod
    def lock_key(session_id: str) -> str:
        return f"{REDIS_KEY_PREFIX}lock:{session_id}"

    @staticmethod
    def used_key(key: str) -> str:
        return f"{REDIS_KEY_PREFIX}used:{key}"

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        return text[:300]

    def _read_ticket(self, cookies: Mapping[str, str]) -> Optional[Tuple[str, str]]:
        token = read_chunked(self.cookie_name, cookies)
        if token is None:
            return None
        plain = self._ticket_codec.decode(self.cookie_name, token)
        if plain is None:
            return None
        try:
            ticket, sep, session_id = plain.decode("ascii").partition(".")
        except UnicodeDecodeError:
            return None
        if not sep or not ticket or not session_id:
            return None
        return ticket, session_id

    # SessionStore

    async def load(self, cookies: Mapping[str, str]) -> Optional[Session]:
        parsed = self._read_ticket(cookies)
        if parsed is None:
            return None
        ticket, session_id = parsed
        key = self.session_key(ticket)
        try:
            raw = await self._redis.get(key)
        except Exception as exc:
            log.warning("session store %s unreachable, treating the request as signed out: %s",
                        self._safe_url, self._describe(exc))
            return None
        if raw is None:
            return None
        payload = self._codec.decode(key, raw.decode("ascii", "replace"))
        if payload is None:
            log.warning("session in Redis could not be decrypted (secret changed?)")
            return None
        try:
            session = _decode_session(payload)
        except ValueError as exc:
            log.warning("session in Redis has an unreadable payload: %s", exc)
            return None
        if session.id != session_id or session.expires_at <= self._clock():
            return None
        return session

    async def save(self, session: Session, cookies: Mapping[str, str]) -> CookieUpdate:
        now = self._clock()
        _fill_times(session, now, self.lifetime)
        present = cookie_names(self.cookie_name, cookies)
        previous = self._read_ticket(cookies)
        ttl = int(math.floor(session.expires_at - now))
        if ttl < 1:
            if previous is not None:
                await self._delete(self.session_key(previous[0]))
            return CookieUpdate((), tuple(present), 0.0)
        payload = _encode_session(session)
        try:
            if previous is not None and previous[1] == session.id:
                ticket = previous[0]
                key = self.session_key(ticket)
                stored = await self._redis.set(key, self._codec.encode(key, payload, ttl), ex=ttl, xx=True)
                if not stored:
                    log.info("session was ended meanwhile (signed out elsewhere); not recreating it")
                    return CookieUpdate((), tuple(present), 0.0)
            else:
                ticket = await self._store_new(payload, ttl)
                if previous is not None:
                    await self._delete(self.session_key(previous[0]))
        except SessionStoreError:
            raise
        except Exception as exc:
            raise SessionStoreError(
                f"could not store the session in {self._safe_url}: {self._describe(exc)}"
            ) from None
        value = self._ticket_codec.encode(self.cookie_name, f"{ticket}.{session.id}".encode(), ttl)
        pairs = chunk_cookie(self.cookie_name, value)
        names = {n for n, _ in pairs}
        return CookieUpdate(tuple(pairs), tuple(n for n in present if n not in names), float(ttl))

    async def _store_new(self, payload: bytes, ttl: int) -> str:
        for _ in range(3):
            ticket = secrets.token_urlsafe(16)
            key = self.session_key(ticket)
            if await self._redis.set(key, self._codec.encode(key, payload, ttl), ex=ttl, nx=True):
                return ticket
        raise SessionStoreError("could not allocate a session ticket")

    async def _delete(self, key: str) -> None:
        try:
            await self._redis.delete(key)
        except Exception as exc:
            log.warning("could not delete a session from %s (it expires on its own): %s",
                        self._safe_url, self._describe(exc))

    async def clear(self, cookies: Mapping[str, str]) -> CookieUpdate:
        parsed = self._read_ticket(cookies)
        if parsed is not None:
            await self._delete(self.session_key(parsed[0]))
        return CookieUpdate((), tuple(cookie_names(self.cookie_name, cookies)), 0.0)

    async def lock(self, session_id: str, ttl: float = 10.0) -> bool:
        token = secrets.token_urlsafe(16)
        try:
            taken = await self._redis.set(self.lock_key(session_id), token, nx=True, px=max(1, math.ceil(ttl * 1000)))
        except Exception as exc:
            log.warning("could not take a refresh lock in %s: %s", self._safe_url, self._describe(exc))
            return False
        if taken:
            self._lock_tokens[session_id] = token
            return True
        return False

    async def unlock(self, session_id: str) -> None:
        token = self._lock_tokens.pop(session_id, None)
        if token is None:
            return
        try:
            await self._unlock(keys=[self.lock_key(session_id)], args=[token])
        except Exception as exc:
            log.warning("could not release a refresh lock in %s (it expires on its own): %s",
                        self._safe_url, self._describe(exc))

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), self.timeout))
        except Exception as exc:
            log.warning("session store %s is not answering: %s", self._safe_url, self._describe(exc))
            return False

    async def mark_used(self, key: str, ttl: float) -> bool:
        try:
            first = await self._redis.set(self.used_key(key), b"1", nx=True, px=max(1, math.ceil(ttl * 1000)))
        except Exception as exc:
            # fail closed: a marker we cannot record must not be accepted twice
            log.warning("could not record a one-time marker in %s: %s", self._safe_url, self._describe(exc))
            return False
        return bool(first)

    async def close(self) -> None:
        await self._redis.aclose()


# --------------------------------------------------------------------------
# Factory


def make_session_store(config: SessionConfig, clock: Clock = time.time) -> SessionStore:
    """The store that ``config.store`` names: ``cookie`` or ``redis://HOST:PORT/DB``."""
    _require_secret(config)
    store = config.store
    if store == "cookie":
        return CookieSessionStore(config, clock)
    if store.startswith(("redis://", "rediss://", "unix://")):
        return RedisSessionStore(config, store, clock)
    raise ValueError(
        f"unknown session store {redact_url(store)!r}: use 'cookie' or 'redis://HOST:PORT/DB'"
    )
