"""The session-store interface, and the store that keeps the whole session in the browser's cookies."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional, Tuple

from ..config import SessionConfig
from .codec import CookieCodec, chunk_cookie, cookie_names, read_chunked
from .model import (
    MAX_CHUNKS,
    Clock,
    Session,
    _decode_session,
    _encode_session,
    _fill_times,
    log,
)


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

    async def alive(self, session_id: str) -> bool:
        """Is the session with this id still stored? (A store that cannot tell says yes.)"""
        return True

    async def find(self, kind: str, value: str, provider: str = "") -> list:
        """Stored sessions a logout naming ``kind`` ("id", "psid", "sub", "user") ends; [] if it cannot tell."""
        return []

    async def end(self, sessions: list) -> int:
        """Delete the sessions ``find`` gave; the number ended."""
        return 0

    def subscribe(self, revocations: Any) -> None:
        """Hear other instances' revocations (a store shared by instances only)."""

    @abstractmethod
    async def put_handoff(self, key: str, payload: bytes, ttl: float) -> None:
        """Keep ``payload`` (already encrypted) for one ``take_handoff`` within ``ttl`` seconds."""

    @abstractmethod
    async def take_handoff(self, key: str) -> Optional[bytes]:
        """The payload put under ``key``, once: a second take, or one after ``ttl``, gets None."""

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
        # Sign-in handoffs to other hosts: in this process only (several processes need Redis).
        self._handoffs: "OrderedDict[str, Tuple[float, bytes]]" = OrderedDict()

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

    async def put_handoff(self, key: str, payload: bytes, ttl: float) -> None:
        now = self._clock()
        while self._handoffs and (len(self._handoffs) >= self.MARKER_CAP or next(iter(self._handoffs.values()))[0] <= now):
            self._handoffs.popitem(last=False)
        self._handoffs[key] = (now + ttl, payload)

    async def take_handoff(self, key: str) -> Optional[bytes]:
        entry = self._handoffs.pop(key, None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def close(self) -> None:
        pass


# --------------------------------------------------------------------------
# Redis backend
