"""gateway.sessions: the cookie codec, chunking, and one contract run against every SessionStore.

``StoreContract`` is the behaviour every backend owes the login handlers (as
oauth2-proxy's ``pkg/sessions/tests/session_store_tests.go``); it runs against
``CookieSessionStore`` and against ``RedisSessionStore`` talking to a real
``redis-server`` on loopback (tests/support/redis_server.py). Expiry is tested
with an injected clock, never by sleeping a session's lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Dict, List, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SessionConfig
from gateway.sessions import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    CookieCodec,
    CookieSessionStore,
    CookieUpdate,
    RedisSessionStore,
    Session,
    SessionStore,
    SessionStoreError,
    chunk_cookie,
    cookie_names,
    make_session_store,
    new_session_id,
    read_chunked,
)
from tests.support.redis_server import redis_available, start_redis

pytestmark = pytest.mark.timeout(30)

SECRET = "current-secret-0123456789abcdef-0123456789"
OLD_SECRET = "previous-secret-0123456789abcdef-012345678"
OTHER_SECRET = "someone-elses-secret-0123456789abcdef-0123"
COOKIE = "_gateway_session"
LIFETIME = 3600.0

needs_redis = pytest.mark.skipif(not redis_available(), reason="redis-server is not installed")


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_session(**overrides: Any) -> Session:
    fields: Dict[str, Any] = dict(
        id=new_session_id(),
        provider="corp",
        sub="user-123",
        email="alice@example.com",
        groups=("admins", "sre"),
        preferred_username="alice",
        claims={"name": "Alice Example", "amr": ["pwd"], "tenant": {"id": 7}},
        id_token="eyJhbGciOiJSUzI1NiJ9.id-token-payload.signature",
        access_token="access-token-SECRET-value",
        refresh_token="refresh-token-SECRET-value",
        access_expires_at=1_700_000_300.0,
    )
    fields.update(overrides)
    return Session(**fields)


def big_token(n_bytes: int = 4500) -> str:
    """An incompressible token of about 4/3 * n_bytes characters (6 KB by default)."""
    return base64.urlsafe_b64encode(os.urandom(n_bytes)).decode().rstrip("=")


def apply(jar: Mapping[str, str], update: CookieUpdate) -> Dict[str, str]:
    """What the browser's cookie jar holds after the response carrying ``update``."""
    set_names = [name for name, _ in update.set]
    assert not set(set_names) & set(update.clear), "a cookie is both set and cleared"
    out = {k: v for k, v in jar.items() if k not in update.clear}
    out.update(update.set)
    return out


def tamper(value: str) -> str:
    """The same value with one character in the middle changed."""
    i = len(value) // 2
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def session_cookie_keys(jar: Mapping[str, str]) -> List[str]:
    return sorted(k for k in jar if k == COOKIE or k.startswith(COOKIE + "_"))


class StoreFactory:
    """Builds stores of one kind, with a shared injectable clock; closes them all at the end."""

    def __init__(self, store: str, clock: Clock):
        self.store = store
        self.clock = clock
        self.opened: List[SessionStore] = []

    def __call__(
        self,
        secret: str = SECRET,
        previous: tuple = (),
        cookie_name: str = COOKIE,
        lifetime: float = LIFETIME,
        **kwargs: Any,
    ) -> SessionStore:
        config = SessionConfig(
            secret=secret,
            previous_secrets=tuple(previous),
            cookie_name=cookie_name,
            lifetime=lifetime,
            store=self.store,
        )
        if kwargs:
            store: SessionStore = RedisSessionStore(config, self.store, self.clock, **kwargs)
        else:
            store = make_session_store(config, self.clock)
        self.opened.append(store)
        return store

    async def lapse(self, advance: float, redis_wait: float) -> None:
        """Let time pass: ``advance`` on the injected clock, which is all the cookie store reads;
        a Redis store's keys expire on the server's own clock, so for it also wait ``redis_wait``."""
        self.clock.advance(advance)
        if self.store != "cookie":
            await asyncio.sleep(redis_wait)

    async def aclose(self) -> None:
        for store in self.opened:
            await store.close()


def run_async(fn: Callable[..., Any]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop, closing every store it built."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            try:
                await fn(*args, **kwargs)
            finally:
                for value in kwargs.values():
                    if isinstance(value, StoreFactory):
                        await value.aclose()

        asyncio.run(main())

    return wrapper


# --------------------------------------------------------------------------
# The contract every store owes the login handlers


class StoreContract:
    chunked = True  # whether a big session spreads over several cookies

    @pytest.fixture
    def stores(self) -> StoreFactory:
        raise NotImplementedError

    @run_async
    async def test_save_load_round_trip(self, stores):
        store = stores()
        session = make_session()
        update = await store.save(session, {})
        assert session.created_at == stores.clock.now
        assert session.expires_at == stores.clock.now + LIFETIME
        assert update.clear == ()
        assert update.max_age == LIFETIME
        assert [name for name, _ in update.set] == [COOKIE]
        for secret in ("user-123", "alice", "access-token-SECRET-value", "refresh-token"):
            assert all(secret not in value for _, value in update.set)
        loaded = await store.load(apply({}, update))
        assert loaded == session
        assert isinstance(loaded.groups, tuple)

    @run_async
    async def test_no_cookie_no_session(self, stores):
        store = stores()
        assert await store.load({}) is None
        assert await store.load({"other": "x", COOKIE + "x": "y"}) is None
        assert await store.load({COOKIE: ""}) is None
        assert await store.load({COOKIE: "not a session"}) is None

    @run_async
    async def test_updated_session_replaces_the_old(self, stores):
        store = stores()
        session = make_session()
        jar = apply({}, await store.save(session, {}))
        created = session.created_at
        stores.clock.advance(60)
        refreshed = dataclasses.replace(session, access_token="new-access", refresh_token="new-refresh")
        jar = apply(jar, await store.save(refreshed, jar))
        loaded = await store.load(jar)
        assert loaded is not None
        assert (loaded.access_token, loaded.refresh_token) == ("new-access", "new-refresh")
        assert loaded.created_at == created and loaded.expires_at == created + LIFETIME

    @run_async
    async def test_tampered_cookie_is_refused(self, stores):
        store = stores()
        jar = apply({}, await store.save(make_session(), {}))
        assert await store.load({COOKIE: tamper(jar[COOKIE])}) is None
        assert await store.load({COOKIE: jar[COOKIE][:-4]}) is None
        assert await store.load({COOKIE: jar[COOKIE] + "AAAA"}) is None

    @run_async
    async def test_cookie_moved_to_another_name_is_refused(self, stores):
        store = stores()
        other = stores(cookie_name="other_session")
        jar = apply({}, await store.save(make_session(), {}))
        assert await other.load({"other_session": jar[COOKIE]}) is None

    @run_async
    async def test_expired_session_is_refused(self, stores):
        store = stores()
        jar = apply({}, await store.save(make_session(), {}))
        stores.clock.advance(LIFETIME - 1)
        assert await store.load(jar) is not None
        stores.clock.advance(2)
        assert await store.load(jar) is None

    @run_async
    async def test_saving_an_expired_session_only_clears(self, stores):
        store = stores()
        session = make_session()
        jar = apply({}, await store.save(session, {}))
        stores.clock.advance(LIFETIME + 10)
        update = await store.save(session, jar)
        assert update.set == () and update.clear == (COOKIE,)
        assert await store.load(apply(jar, update)) is None

    @run_async
    async def test_rotation_old_secret_still_accepted(self, stores):
        old = stores(secret=OLD_SECRET)
        new = stores(secret=SECRET, previous=(OLD_SECRET,))
        session = make_session()
        jar = apply({}, await old.save(session, {}))
        assert await new.load(jar) == session
        # re-saved under the new secret: the old-secret-only store can no longer read it
        jar = apply(jar, await new.save(session, jar))
        assert await new.load(jar) == session
        assert await old.load(jar) is None

    @run_async
    async def test_wrong_secret_is_refused(self, stores):
        store = stores()
        stranger = stores(secret=OTHER_SECRET, previous=(OLD_SECRET,))
        jar = apply({}, await store.save(make_session(), {}))
        assert await stranger.load(jar) is None

    @run_async
    async def test_large_id_token_round_trips(self, stores):
        store = stores()
        session = make_session(id_token=big_token())
        assert len(session.id_token) >= 6000
        update = await store.save(session, {})
        for name, value in update.set:
            assert len(name) + len(value) < 4000
        names = [name for name, _ in update.set]
        if self.chunked:
            assert 2 <= len(names) <= 3
            assert names == [f"{COOKIE}_{i}" for i in range(len(names))]
        else:
            assert names == [COOKIE]
        jar = apply({"unrelated": "1"}, update)
        assert await store.load(jar) == session
        cleared = await store.clear(jar)
        assert sorted(cleared.clear) == sorted(names) and cleared.set == ()
        assert session_cookie_keys(apply(jar, cleared)) == []

    @run_async
    async def test_shrinking_session_clears_stale_chunks(self, stores):
        store = stores()
        session = make_session(id_token=big_token())
        jar = apply({}, await store.save(session, {}))
        jar[f"{COOKIE}_9"] = "stale chunk from long ago"
        small = dataclasses.replace(session, id_token=None)
        update = await store.save(small, jar)
        assert [name for name, _ in update.set] == [COOKIE]
        jar = apply(jar, update)
        assert session_cookie_keys(jar) == [COOKIE]
        assert await store.load(jar) == small

    @run_async
    async def test_clear_then_load_is_none(self, stores):
        store = stores()
        jar = apply({"unrelated": "1"}, await store.save(make_session(), {}))
        update = await store.clear(jar)
        assert update.set == () and update.clear == (COOKIE,) and update.max_age == 0
        jar = apply(jar, update)
        assert jar == {"unrelated": "1"}
        assert await store.load(jar) is None
        assert (await store.clear({})).clear == ()

    @run_async
    async def test_lock_is_single_flight(self, stores):
        store = stores()
        sid, other = new_session_id(), new_session_id()
        assert await store.lock(sid) is True
        assert await store.lock(sid) is False
        assert await store.lock(other) is True
        await store.unlock(sid)
        assert await store.lock(sid) is True
        await store.unlock(sid)
        await store.unlock(other)
        await store.unlock("never-locked")
        # an abandoned lock lapses after its ttl
        assert await store.lock(sid, ttl=0.1) is True
        assert await store.lock(sid, ttl=0.1) is False
        await stores.lapse(1, redis_wait=0.2)
        assert await store.lock(sid, ttl=0.1) is True

    @run_async
    async def test_mark_used_once(self, stores):
        store = stores()
        key, other = new_session_id(), new_session_id()
        assert await store.mark_used(key, 0.2) is True
        assert await store.mark_used(key, 0.2) is False
        assert await store.mark_used(other, 0.2) is True
        await stores.lapse(1, redis_wait=0.3)
        assert await store.mark_used(key, 0.2) is True

    @run_async
    async def test_ping(self, stores):
        assert await stores().ping() is True


class TestCookieStore(StoreContract):
    chunked = True

    @pytest.fixture
    def stores(self) -> StoreFactory:
        return StoreFactory("cookie", Clock())

    def test_make_session_store_gives_cookie_store(self, stores):
        assert isinstance(stores(), CookieSessionStore)

    @run_async
    async def test_too_large_session_drops_its_id_token(self, stores, caplog):
        store = stores()
        session = make_session(id_token=big_token(MAX_CHUNKS * CHUNK_SIZE))
        with caplog.at_level(logging.WARNING, "gateway.sessions"):
            update = await store.save(session, {})
        assert "without its id token" in caplog.text
        assert session.id_token not in caplog.text
        loaded = await store.load(apply({}, update))
        assert loaded is not None and loaded.id_token is None and loaded.sub == session.sub

    @run_async
    async def test_compressible_session_is_compressed(self, stores):
        store = stores()
        session = make_session(claims={"roles": ["reader"] * 2000})
        update = await store.save(session, {})
        assert len(update.set) == 1 and len(update.set[0][1]) < 1000
        assert await store.load(apply({}, update)) == session

    @run_async
    async def test_reordered_chunks_are_refused(self, stores):
        store = stores()
        jar = apply({}, await store.save(make_session(id_token=big_token()), {}))
        jar[f"{COOKIE}_0"], jar[f"{COOKIE}_1"] = jar[f"{COOKIE}_1"], jar[f"{COOKIE}_0"]
        assert await store.load(jar) is None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@needs_redis
class TestRedisStore(StoreContract):
    chunked = False

    @pytest.fixture
    def stores(self, redis_server) -> StoreFactory:
        return StoreFactory(redis_server.url, Clock())

    def test_make_session_store_gives_redis_store(self, stores):
        assert isinstance(stores(), RedisSessionStore)

    @run_async
    async def test_ticket_cookie_is_short_and_redis_holds_only_ciphertext(self, stores):
        store = stores()
        session = make_session(id_token=big_token())
        update = await store.save(session, {})
        ((name, value),) = update.set
        assert name == COOKIE and len(value) <= 120
        ticket, _ = store._read_ticket({COOKIE: value})
        raw = await store._redis.get(RedisSessionStore.session_key(ticket))
        for secret in (session.sub, session.email, session.access_token, session.refresh_token, session.id_token):
            assert secret.encode() not in raw
        ttl = await store._redis.ttl(RedisSessionStore.session_key(ticket))
        assert LIFETIME - 5 <= ttl <= LIFETIME

    @run_async
    async def test_clear_deletes_the_key_so_replay_fails(self, stores):
        store = stores()
        jar = apply({}, await store.save(make_session(), {}))
        ticket, _ = store._read_ticket(jar)
        await store.clear(jar)
        assert await store._redis.exists(RedisSessionStore.session_key(ticket)) == 0
        assert await store.load(jar) is None  # the old cookie, replayed

    @run_async
    async def test_two_instances_share_sessions(self, stores):
        a, b = stores(), stores()
        session = make_session()
        jar = apply({}, await a.save(session, {}))
        assert await b.load(jar) == session
        refreshed = dataclasses.replace(session, access_token="refreshed-by-b")
        new_jar = apply(jar, await b.save(refreshed, jar))
        assert a._read_ticket(new_jar)[0] == a._read_ticket(jar)[0]  # same key, overwritten
        assert (await a.load(new_jar)).access_token == "refreshed-by-b"
        assert (await a.load(jar)).access_token == "refreshed-by-b"
        # sign-out on one instance ends the session on every instance
        await a.clear(new_jar)
        assert await b.load(new_jar) is None

    @run_async
    async def test_refresh_racing_sign_out_does_not_resurrect(self, stores):
        a, b = stores(), stores()
        session = make_session()
        jar = apply({}, await a.save(session, {}))
        await b.clear(jar)
        update = await a.save(dataclasses.replace(session, access_token="late"), jar)
        assert update.set == () and update.clear == (COOKIE,)
        assert await a.load(jar) is None

    @run_async
    async def test_new_login_replaces_the_previous_session(self, stores):
        store = stores()
        jar = apply({}, await store.save(make_session(), {}))
        old_ticket, _ = store._read_ticket(jar)
        newer = make_session(sub="someone-else")
        jar = apply(jar, await store.save(newer, jar))
        assert store._read_ticket(jar)[0] != old_ticket
        assert await store._redis.exists(RedisSessionStore.session_key(old_ticket)) == 0
        assert await store.load(jar) == newer

    @run_async
    async def test_lock_is_shared_between_instances(self, stores):
        a, b = stores(), stores()
        sid = new_session_id()
        assert await a.lock(sid) is True
        assert await b.lock(sid) is False
        await b.unlock(sid)  # b does not hold it: must not release a's lock
        assert await b.lock(sid) is False
        await a.unlock(sid)
        assert await b.lock(sid) is True
        await b.unlock(sid)

    @run_async
    async def test_mark_used_is_shared_between_instances(self, stores):
        a, b = stores(), stores()
        key = new_session_id()
        assert await a.mark_used(key, 30) is True
        assert await b.mark_used(key, 30) is False


@needs_redis
@run_async
async def test_redis_down_is_no_session_and_never_raises(tmp_path, caplog):
    with start_redis(tmp_path) as server:
        stores = StoreFactory(server.url, Clock())
        try:
            store = stores()
            session = make_session()
            jar = apply({}, await store.save(session, {}))
            assert await store.load(jar) == session
            server.stop()
            with caplog.at_level(logging.WARNING, "gateway.sessions"):
                assert await store.ping() is False
                assert await store.load(jar) is None
                assert await store.mark_used("state", 30) is False  # fail closed
                assert await store.lock(session.id) is False
                await store.unlock(session.id)
                update = await store.clear(jar)
                assert update.clear == (COOKIE,)
                with pytest.raises(SessionStoreError):
                    await store.save(make_session(), {})
            assert "unreachable" in caplog.text
            assert jar[COOKIE] not in caplog.text
            server.start()  # empty again: nothing is persisted
            assert await store.ping() is True
            assert await store.load(jar) is None
        finally:
            await stores.aclose()


@needs_redis
@run_async
async def test_redis_password_never_logged(tmp_path, caplog):
    with start_redis(tmp_path) as server:
        url = server.url.replace("redis://", "redis://:hunter2-password@")
        server.stop()
        stores = StoreFactory(url, Clock())
        try:
            store = stores()
            with caplog.at_level(logging.DEBUG, "gateway.sessions"):
                assert await store.ping() is False
                assert await store.load({COOKIE: "x"}) is None
                with pytest.raises(SessionStoreError) as info:
                    await store.save(make_session(), {})
            assert "hunter2" not in str(info.value)
            assert "127.0.0.1" in caplog.text
            assert "hunter2" not in caplog.text
        finally:
            await stores.aclose()


@needs_redis
@run_async
async def test_redis_stuck_ping_times_out(tmp_path):
    with start_redis(tmp_path) as server:
        stores = StoreFactory(server.url, Clock())
        try:
            store = stores(timeout=0.3)
            jar = apply({}, await store.save(make_session(), {}))
            server.pause()
            try:
                started = time.monotonic()
                assert await store.ping() is False
                assert await store.load(jar) is None
                assert time.monotonic() - started < 3
            finally:
                server.resume()
            assert await store.ping() is True
        finally:
            await stores.aclose()


# --------------------------------------------------------------------------
# make_session_store


def test_make_session_store_needs_a_secret():
    with pytest.raises(ValueError, match="session.secret is required"):
        make_session_store(SessionConfig(secret=None))
    with pytest.raises(ValueError, match="session.secret is required"):
        CookieSessionStore(SessionConfig(secret=""))


def test_make_session_store_unknown_store_hides_password():
    with pytest.raises(ValueError) as info:
        make_session_store(SessionConfig(secret=SECRET, store="memcached://u:pw123@host:1"))
    assert "pw123" not in str(info.value)
    assert "use 'cookie'" in str(info.value)


# --------------------------------------------------------------------------
# CookieCodec


def test_codec_round_trip_and_binding():
    clock = Clock()
    codec = CookieCodec(SECRET, clock=clock)
    token = codec.encode("c", b"hello", 60)
    assert codec.decode("c", token) == b"hello"
    assert "=" not in token and len(token) < 60
    assert codec.decode("d", token) is None  # name is associated data
    assert CookieCodec(SECRET, purpose="ticket", clock=clock).decode("c", token) is None
    assert CookieCodec(OTHER_SECRET, clock=clock).decode("c", token) is None
    assert CookieCodec(OTHER_SECRET, previous=(SECRET,), clock=clock).decode("c", token) == b"hello"
    assert codec.encode("c", b"hello", 60) != token  # random nonce
    clock.advance(59)
    assert codec.decode("c", token) == b"hello"
    clock.advance(1)
    assert codec.decode("c", token) is None


def test_codec_needs_a_secret():
    with pytest.raises(ValueError):
        CookieCodec("")


def _valid_token() -> str:
    return CookieCodec(SECRET).encode("c", b"payload", 60)


def _rewrite(token: str, edit: Callable[[bytes], bytes]) -> str:
    blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return base64.urlsafe_b64encode(edit(blob)).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "!!!!",
        "a",
        "AAAA",
        "=",
        "é€😀",
        "A" * 100,
        "A" * 200_000,
        _valid_token() + "==",
        _valid_token() + ".",
        _valid_token()[:-1],
        _valid_token()[:-8],
        _valid_token()[:20],
        _rewrite(_valid_token(), lambda b: bytes([2]) + b[1:]),  # wrong version
        _rewrite(_valid_token(), lambda b: bytes([0]) + b[1:]),
        _rewrite(_valid_token(), lambda b: b[:-1] + bytes([b[-1] ^ 1])),  # tag flipped
        _rewrite(_valid_token(), lambda b: b[:13]),  # nonce only
        None,
        b"bytes",
        12345,
    ],
)
def test_codec_refuses_bad_tokens(token):
    assert CookieCodec(SECRET).decode("c", token) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_codec_never_raises_on_text(token):
    assert CookieCodec(SECRET).decode("c", token) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=20))
def test_codec_never_raises_on_base64(blob, name):
    token = base64.urlsafe_b64encode(blob).decode().rstrip("=")
    assert CookieCodec(SECRET).decode(name, token) is None


# --------------------------------------------------------------------------
# Chunking


def test_chunk_cookie_small_and_large():
    assert chunk_cookie("s", "v" * CHUNK_SIZE) == [("s", "v" * CHUNK_SIZE)]
    value = "".join(chr(ord("a") + i % 26) for i in range(2 * CHUNK_SIZE + 5))
    chunks = chunk_cookie("s", value)
    assert [n for n, _ in chunks] == ["s_0", "s_1", "s_2"]
    assert all(len(v) <= CHUNK_SIZE for _, v in chunks)
    assert read_chunked("s", dict(chunks)) == value
    with pytest.raises(ValueError):
        chunk_cookie("s", "v" * (MAX_CHUNKS * CHUNK_SIZE + 1))


def test_read_chunked():
    assert read_chunked("s", {}) is None
    assert read_chunked("s", {"s": "whole"}) == "whole"
    assert read_chunked("s", {"s": "whole", "s_0": "x"}) == "whole"
    assert read_chunked("s", {"s_0": "a", "s_1": "b", "s_3": "d"}) == "ab"  # stops at the gap
    assert read_chunked("s", {"s_1": "b"}) is None
    many = {f"s_{i}": str(i % 10) for i in range(15)}
    assert read_chunked("s", many) == "0123456789"  # at most MAX_CHUNKS


def test_cookie_names():
    cookies = {"s_10": "", "other": "", "s": "", "s_2": "", "s_0": "", "s_x": "", "sx_1": "", "s_1_2": ""}
    assert cookie_names("s", cookies) == ["s", "s_0", "s_2", "s_10"]
    assert cookie_names("s", {}) == []
    assert cookie_names("a.b", {"a.b_0": "", "axb_0": ""}) == ["a.b_0"]


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=8), max_size=12))
def test_cookie_helpers_never_raise(cookies):
    read_chunked(COOKIE, cookies)
    for name in cookie_names(COOKIE, cookies):
        assert name in cookies


# --------------------------------------------------------------------------
# Session serialisation


def test_session_dict_round_trip():
    session = make_session(created_at=1.0, expires_at=2.0)
    assert Session.from_dict(session.to_dict()) == session
    minimal = Session.from_dict({"id": "i", "provider": "p", "sub": "s", "future_field": 1})
    assert minimal.groups == () and minimal.claims == {} and minimal.email is None


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "string",
        {},
        {"id": "i", "provider": "p"},
        {"id": "", "provider": "p", "sub": "s"},
        {"id": 1, "provider": "p", "sub": "s"},
        {"id": "i", "provider": "p", "sub": "s", "groups": "admins"},
        {"id": "i", "provider": "p", "sub": "s", "groups": [1]},
        {"id": "i", "provider": "p", "sub": "s", "claims": []},
        {"id": "i", "provider": "p", "sub": "s", "email": 5},
        {"id": "i", "provider": "p", "sub": "s", "expires_at": "soon"},
        {"id": "i", "provider": "p", "sub": "s", "expires_at": True},
        {"id": "i", "provider": "p", "sub": "s", "expires_at": float("nan")},
        {"id": "i", "provider": "p", "sub": "s", "access_expires_at": []},
    ],
)
def test_session_from_bad_dict(bad):
    with pytest.raises(ValueError):
        Session.from_dict(bad)
