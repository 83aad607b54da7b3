"""Browser sessions: what a signed-in browser carries between requests.

This package sits below browser login (``login``), which only uses the
``SessionStore`` interface: ``model`` (the session and its serialised form),
``codec`` (the encrypted cookie format and chunking), ``store`` (the interface
and the cookie store), ``redis_store`` (Redis behind a ticket). Which backend
stores the session is decided once, by ``make_session_store(config.session)``::

    store = make_session_store(config.session)
    session = await store.load(cookies)            # Session or None, never raises
    update = await store.save(session, cookies)    # CookieUpdate: what to set, what to clear
    # login turns ``update`` into CookieOp values that the adapters send

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

import time

from ..config import SessionConfig
from .codec import CookieCodec, chunk_cookie, cookie_names, read_chunked
from .model import CHUNK_SIZE, MAX_CHUNKS, Clock, Session, new_session_id
from .redis_store import RedisSessionStore, redact_url
from .store import (
    CookieSessionStore,
    CookieUpdate,
    SessionStore,
    SessionStoreError,
    _require_secret,
)

__all__ = ["CHUNK_SIZE", "MAX_CHUNKS", "CookieCodec", "CookieSessionStore", "CookieUpdate", "RedisSessionStore",
           "Session", "SessionStore", "SessionStoreError", "chunk_cookie", "cookie_names", "make_session_store",
           "new_session_id", "read_chunked", "redact_url"]


def make_session_store(config: SessionConfig, clock: Clock = time.time) -> SessionStore:
    """The store that ``config.store`` names: ``cookie`` or ``redis://HOST:PORT/DB``."""
    _require_secret(config)
    store = config.store
    if store == "cookie":
        return CookieSessionStore(config, clock)
    if store.startswith(("redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://", "unix://")):
        return RedisSessionStore(config, store, clock)
    raise ValueError(
        f"unknown session store {redact_url(store)!r}: use 'cookie' or 'redis://HOST:PORT/DB'"
    )
