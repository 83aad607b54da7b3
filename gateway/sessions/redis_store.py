"""Sessions in Redis behind an encrypted ticket cookie, shared by every instance and worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import time
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ..config import SessionConfig
from ..redact import safe_url
from .redis_connect import connect
from .codec import CookieCodec, chunk_cookie, cookie_names, read_chunked
from .model import (
    REDIS_KEY_PREFIX,
    REDIS_TIMEOUT,
    Clock,
    Session,
    _decode_session,
    _encode_session,
    _fill_times,
    log,
)
from .store import CookieUpdate, SessionStore, SessionStoreError, _require_secret

REVOCATIONS_CHANNEL = REDIS_KEY_PREFIX + "revocations"

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
        secret = _require_secret(config)
        self.cookie_name = config.cookie_name
        self.lifetime = config.lifetime
        self.timeout = timeout
        self._clock = clock
        self._ticket_codec = CookieCodec(secret, config.previous_secrets, "ticket", clock)
        self._codec = CookieCodec(secret, config.previous_secrets, "session", clock)
        self._safe_url = redact_url(url)
        self._password = urlsplit(url).password or ""
        # One quick retry, no backoff (a Sentinel URL: a few quick ones, waiting for a new master):
        # see redis_connect.connect.
        self._redis = connect(url, timeout=timeout)
        self._unlock = self._redis.register_script(_UNLOCK_SCRIPT)
        self._lock_tokens: Dict[str, str] = {}
        self._listener: Optional["asyncio.Task[None]"] = None

    # keys

    @staticmethod
    def session_key(ticket: str) -> str:
        return f"{REDIS_KEY_PREFIX}session:{ticket}"

    @staticmethod
    def lock_key(session_id: str) -> str:
        return f"{REDIS_KEY_PREFIX}lock:{session_id}"

    @staticmethod
    def sid_key(session_id: str) -> str:
        return f"{REDIS_KEY_PREFIX}sid:{session_id}"

    @staticmethod
    def index_key(kind: str, provider: str, value: str) -> str:
        digest = hashlib.sha256(f"{kind}\0{provider}\0{value}".encode()).hexdigest()
        return f"{REDIS_KEY_PREFIX}idx:{digest}"

    async def _index(self, session: Session, ticket: str, ttl: int) -> None:
        meta = json.dumps({"t": ticket, "sub": session.sub, "provider": session.provider,
                           "created": session.created_at, "expires": session.expires_at}).encode()
        keys = [self.index_key("user", "", session.sub)]
        psub, psid = session.claims.get("sub"), session.claims.get("sid")
        if isinstance(psub, str) and psub:
            keys.append(self.index_key("sub", session.provider, psub))
        if isinstance(psid, str) and psid:
            keys.append(self.index_key("psid", session.provider, psid))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self.sid_key(session.id), meta, ex=ttl)
            for key in keys:
                pipe.sadd(key, session.id)
                pipe.expire(key, ttl, gt=True)  # the index lives as long as its longest session
                pipe.expire(key, ttl, nx=True)
            await pipe.execute()

    async def find(self, kind: str, value: str, provider: str = "") -> list:
        """Sessions (id, sub, provider, created, expires) that a logout naming ``kind``/``value`` ends."""
        if kind == "id":
            ids = [value]
        else:
            ids = [i.decode() for i in await self._redis.smembers(self.index_key(kind, provider, value))]
        found = []
        for session_id, raw in zip(ids, await self._redis.mget([self.sid_key(i) for i in ids]) if ids else []):
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
            except ValueError:
                continue
            found.append({"id": session_id, **{k: meta.get(k) for k in ("sub", "provider", "created", "expires")},
                          "ticket": meta.get("t")})
        return found

    async def end(self, sessions: list) -> int:
        """Delete these sessions (as ``find`` gave them) on every instance at once."""
        keys = []
        for entry in sessions:
            keys.append(self.sid_key(entry["id"]))
            if entry.get("ticket"):
                keys.append(self.session_key(entry["ticket"]))
        if not keys:
            return 0
        try:
            await self._redis.delete(*keys)
        except Exception as exc:
            raise SessionStoreError(f"could not end sessions in {self._safe_url}: {self._describe(exc)}") from None
        return len(sessions)

    def subscribe(self, revocations: Any) -> None:
        """Every instance hears every revocation: published here, received by the others' ``revocations``."""
        revocations.publish = self._publish
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen(revocations))

    async def _publish(self, entry: Any) -> None:
        try:
            await self._redis.publish(REVOCATIONS_CHANNEL, entry.to_line())
        except Exception as exc:
            log.warning("could not tell the other instances of a revocation through %s: %s", self._safe_url,
                        self._describe(exc))

    async def _listen(self, revocations: Any) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REVOCATIONS_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        try:
                            revocations.received(json.loads(message["data"]))
                        except ValueError:
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation subscription to %s lost (%s); again in 1 s", self._safe_url,
                            self._describe(exc))
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def alive(self, session_id: str) -> bool:
        try:
            return bool(await self._redis.exists(self.sid_key(session_id)))
        except Exception as exc:  # fail closed: a token whose session cannot be checked is refused
            log.warning("could not check a session in %s: %s", self._safe_url, self._describe(exc))
            return False

    @staticmethod
    def handoff_key(key: str) -> str:
        return f"{REDIS_KEY_PREFIX}handoff:{hashlib.sha256(key.encode()).hexdigest()}"

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
        try:  # the session by its id, and an index from what a logout may name it by to that id
            await self._index(session, ticket, ttl)
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
            await self._delete(self.sid_key(parsed[1]))
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

    async def put_handoff(self, key: str, payload: bytes, ttl: float) -> None:
        try:
            await self._redis.set(self.handoff_key(key), payload, px=max(1, math.ceil(ttl * 1000)))
        except Exception as exc:
            raise SessionStoreError(f"cannot store a sign-in handoff in {self._safe_url}: {self._describe(exc)}") from None

    async def take_handoff(self, key: str) -> Optional[bytes]:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:  # read and delete at once: single use
                value, _ = await pipe.get(self.handoff_key(key)).delete(self.handoff_key(key)).execute()
        except Exception as exc:
            log.warning("could not read a sign-in handoff from %s: %s", self._safe_url, self._describe(exc))
            return None
        return value if isinstance(value, bytes) else None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        await self._redis.aclose()


# --------------------------------------------------------------------------
# Factory
