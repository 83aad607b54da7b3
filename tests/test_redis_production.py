"""The Redis session store as run in production: TLS (``rediss://``) and Sentinel
(``redis+sentinel://``, ``rediss+sentinel://``), against real ``redis-server`` and
``redis-sentinel`` processes on loopback (tests/support/redis_ha.py).

* TLS: a CA and a server certificate made here; sessions stored and loaded through
  ``RedisSessionStore``; a wrong CA is refused (the store reports unavailable, nothing raises
  where it must not); a server that asks for client certificates gets ours.
* Sentinel: a master, a replica (``replicaof``) and two sentinels (quorum 1,
  down-after-milliseconds 500). Sessions saved before a failover (replicated first) are still
  there after it, new ones are saved on the new master, and a loop of load/save calls running
  through the failover never fails for long: ``SENTINEL FAILOVER``, the master killed (SIGKILL)
  and the master hung (SIGSTOP). Each prints what it measured (run with ``-s`` to see it).
* A real gateway process signed in through Chromium and oidc-provider, with its sessions in
  Redis through Sentinel: the master is killed, and the same browser is still signed in.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import pytest

from gateway.config import SessionConfig
from gateway.sessions import RedisSessionStore, Session, SessionStoreError, new_session_id
from gateway.sessions.redis_connect import SENTINEL_WAIT
from tests.support.redis_ha import (
    TLSFiles,
    ping,
    make_tls,
    redis_node,
    redis_sentinel_path,
    redis_server_path,
    sentinel_cluster,
    tls_conf,
)

pytestmark = [
    pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed (Debian package redis-server)"),
    pytest.mark.skipif(redis_sentinel_path() is None,
                       reason="redis-sentinel is not installed (Debian package redis-sentinel)"),
    pytest.mark.timeout(60),
]

SECRET = "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a"
COOKIE = "_gwp"
FAILING_BOUND = 10.0  # seconds: the longest a loop of calls may keep failing during a failover


def run(coro: Any) -> Any:
    """Run ``coro`` on an event loop of its own thread (Playwright's sync API may own this one's)."""
    out: list = []
    errors: list = []

    def target() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(50)
    if errors:
        raise errors[0]
    assert out, "the coroutine did not finish within 50 s"
    return out[0]


def new_store(url: str) -> RedisSessionStore:
    return RedisSessionStore(SessionConfig(secret=SECRET, cookie_name=COOKIE, store=url), url)


def new_session(sub: str) -> Session:
    return Session(id=new_session_id(), provider="corp", sub=sub, email=f"{sub}@example.test")


async def save_new(store: RedisSessionStore, sub: str) -> dict:
    """A new session for ``sub``; the cookies a browser would send back."""
    update = await store.save(new_session(sub), {})
    return dict(update.set)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def start_tls_node(directory: Path, tls: TLSFiles, name: str, extra: Optional[List[str]] = None) -> Any:
    """A TLS-only redis-server (plain port 0) as a context manager; a clear skip if this build has no TLS."""
    def lines(port: int) -> List[str]:
        return tls_conf(tls, port) + list(extra or [])
    return redis_node(directory, name, lines, tls=tls)


# --------------------------------------------------------------------------- TLS


def test_tls_sessions_round_trip_with_our_ca(tmp_path: Path, tls: TLSFiles) -> None:
    with start_tls_node(tmp_path, tls, "tls") as node:
        url = f"rediss://127.0.0.1:{node.port}/0?ssl_ca_certs={tls.ca}"

        async def scenario() -> None:
            store = new_store(url)
            try:
                assert await store.ping()
                jar = await save_new(store, "alice")
                loaded = await store.load(jar)
                assert loaded is not None and loaded.sub == "alice"
            finally:
                await store.close()
            # the host name is checked too: localhost is in the certificate as well as 127.0.0.1
            by_name = new_store(f"rediss://localhost:{node.port}/0?ssl_ca_certs={tls.ca}")
            try:
                assert await by_name.load(jar) is not None
            finally:
                await by_name.close()

        run(scenario())
        client = node.client()
        assert len(client.keys("gateway:session:*")) == 1
        assert not ping(node.port, None), "a plain-text client gets no answer from the TLS port"


def test_tls_with_a_wrong_ca_is_refused_and_reported_unavailable(
    tmp_path: Path, tls: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    with start_tls_node(tmp_path, tls, "tls") as node:
        wrong = f"rediss://127.0.0.1:{node.port}/0?ssl_ca_certs={tls.wrong_ca}"
        unverified = f"rediss://127.0.0.1:{node.port}/0?ssl_ca_certs={tls.wrong_ca}&ssl_cert_reqs=none"

        async def scenario() -> None:
            store = new_store(wrong)
            try:
                assert await store.ping() is False
                with pytest.raises(SessionStoreError, match="could not store the session in rediss://127.0.0.1"):
                    await store.save(new_session("mallory"), {})
                assert await store.load({COOKIE: "x"}) is None  # an unreadable cookie: no Redis call
            finally:
                await store.close()
            # ssl_cert_reqs=none: encrypted, not verified (the option says so)
            lax = new_store(unverified)
            try:
                jar = await save_new(lax, "bob")
                assert (await lax.load(jar)).sub == "bob"  # type: ignore[union-attr]
            finally:
                await lax.close()
            # and the session saved that way cannot be read through the verifying URL
            strict = new_store(wrong)
            try:
                assert await strict.load(jar) is None
            finally:
                await strict.close()

        with caplog.at_level(logging.WARNING, logger="gateway.sessions"):
            run(scenario())
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "certificate verify failed" in text.lower(), text
        assert "unreachable, treating the request as signed out" in text, text


def test_tls_client_certificate_when_the_server_asks_for_one(tmp_path: Path, tls: TLSFiles) -> None:
    with start_tls_node(tmp_path, tls, "mtls", ["tls-auth-clients yes"]) as node:
        base = f"rediss://127.0.0.1:{node.port}/0?ssl_ca_certs={tls.ca}"
        with_cert = f"{base}&ssl_certfile={tls.cert}&ssl_keyfile={tls.key}"

        async def scenario() -> None:
            without = new_store(base)
            try:
                assert await without.ping() is False
            finally:
                await without.close()
            store = new_store(with_cert)
            try:
                jar = await save_new(store, "carol")
                assert (await store.load(jar)).sub == "carol"  # type: ignore[union-attr]
            finally:
                await store.close()

        run(scenario())


# --------------------------------------------------------------------------- Sentinel


@dataclass
class Through:
    """What a loop of load/save calls saw while a failover happened."""

    failover_s: float
    calls: List[tuple] = field(default_factory=list)  # (start, end, ok)

    @property
    def failures(self) -> int:
        return sum(1 for c in self.calls if not c[2])

    @property
    def longest_failing_s(self) -> float:
        """From the start of a failing call to the start of the next call that worked."""
        longest, first_bad = 0.0, None
        for start, end, ok in self.calls:
            if not ok and first_bad is None:
                first_bad = start
            elif ok and first_bad is not None:
                longest, first_bad = max(longest, start - first_bad), None
        if first_bad is not None:
            longest = max(longest, self.calls[-1][1] - first_bad)
        return longest

    @property
    def longest_call_s(self) -> float:
        return max(end - start for start, end, _ in self.calls)

    def summary(self, label: str) -> str:
        return (f"{label}: failover {self.failover_s:.2f}s; {len(self.calls)} load+save calls, "
                f"{self.failures} failed, longest failing window {self.longest_failing_s:.2f}s, "
                f"longest call {self.longest_call_s:.2f}s")


async def churn(store: RedisSessionStore, jar: dict, sub: str, stop: asyncio.Event, calls: list) -> None:
    while not stop.is_set():
        start = time.monotonic()
        ok = False
        try:
            loaded = await store.load(jar)  # None when Redis cannot be reached
            ok = loaded is not None and loaded.sub == sub
            if ok:
                await save_new(store, "during")
        except SessionStoreError:
            ok = False
        calls.append((start, time.monotonic(), ok))
        await asyncio.sleep(0.005)


def through_failover(cluster: Any, trigger: Any, label: str) -> Through:
    """Sessions saved and replicated, then ``trigger()`` (returns (started, new master known)) while
    a loop loads and saves; then every session saved before is loaded, and a new one saved."""

    async def scenario() -> Through:
        store = new_store(cluster.url)
        try:
            before = [await save_new(store, f"before-{i}") for i in range(20)]
            await asyncio.to_thread(cluster.wait_replicated)
            old = cluster.current_master_port()
            stop, calls = asyncio.Event(), []
            task = asyncio.create_task(churn(store, before[0], "before-0", stop, calls))
            await asyncio.sleep(0.2)
            started, known = await asyncio.to_thread(trigger)
            await asyncio.sleep(0.5)
            stop.set()
            await task
            seen = Through(known - started, calls)

            assert any(s <= known and e >= started for s, e, _ in calls), "no call ran during the failover"
            new = cluster.current_master_port()
            assert new != old
            for i, jar in enumerate(before):
                loaded = await store.load(jar)
                assert loaded is not None and loaded.sub == f"before-{i}", f"session {i} lost in the failover"
            after = await save_new(store, "after")
            assert (await store.load(after)).sub == "after"  # type: ignore[union-attr]
            assert cluster.by_port(new).client().info("replication")["role"] == "master"
            return seen
        finally:
            await store.close()

    seen = run(scenario())
    print("\n" + seen.summary(label))
    # calls may fail while there is no master at all, never for longer than that lasted
    assert seen.longest_failing_s < FAILING_BOUND, seen.summary(label)
    assert seen.longest_failing_s <= seen.failover_s + 0.5, seen.summary(label)
    # a call waits for the new master, but not forever: SENTINEL_WAIT plus the attempt under way
    assert seen.longest_call_s < SENTINEL_WAIT + 2 * 2.0 + 1.0, seen.summary(label)
    return seen


def test_sentinel_failover_command(tmp_path: Path) -> None:
    with sentinel_cluster(tmp_path) as cluster:
        old = cluster.current_master_port()
        seen = through_failover(cluster, cluster.failover, "SENTINEL FAILOVER")
        assert seen.failures == 0, seen.summary("SENTINEL FAILOVER")
        # the old master is now a replica of the new one, and has the sessions saved since
        cluster.wait_old_master_is_replica(old)
        cluster.wait_replicated()
        keys = cluster.by_port(old).client().keys("gateway:session:*")
        assert len(keys) >= 22, len(keys)


def test_sentinel_master_killed(tmp_path: Path) -> None:
    with sentinel_cluster(tmp_path) as cluster:
        through_failover(cluster, cluster.kill_master, "master SIGKILL")


def test_sentinel_master_hung(tmp_path: Path) -> None:
    """SIGSTOP: reads time out instead of being refused; the retry must still find the new master."""
    with sentinel_cluster(tmp_path) as cluster:
        through_failover(cluster, cluster.pause_master, "master SIGSTOP")


def test_rediss_sentinel_tls_to_sentinels_and_master(tmp_path: Path, tls: TLSFiles) -> None:
    with sentinel_cluster(tmp_path, sentinels=1, tls=tls) as cluster:
        assert cluster.url.startswith("rediss+sentinel://")
        seen = through_failover(cluster, cluster.failover, "rediss+sentinel SENTINEL FAILOVER")
        assert seen.failures == 0

        # a sentinel URL with the wrong CA finds nothing (the sentinels' certificates fail)
        async def wrong() -> bool:
            store = new_store(cluster.url.replace(tls.ca, tls.wrong_ca))
            try:
                return await store.ping()
            finally:
                await store.close()

        assert run(wrong()) is False


# --------------------------------------------------------------------------- a real gateway, through Sentinel


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider")
def test_gateway_signed_in_browser_survives_a_master_kill(tmp_path: Path) -> None:
    from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
    from tests.support.login_e2e import (
        RequestLog,
        free_port,
        gateway_yaml,
        provider_entry,
        provider_sign_in,
        start_gateway,
        wait_url,
    )
    from tests.support.oidc_provider import client, start_oidc_provider, user
    from tests.support.upstream import Upstream

    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    client_secret = "sentinel-client-secret-0123456789"
    password = "alice-pw-7c1e"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    loopback_only = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
    up = Upstream("app").start()
    routes = [
        {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
        {"name": "app", "path": "/app", "upstream": up.url, "auth": "login"},
    ]
    try:
        with sentinel_cluster(tmp_path / "redis") as cluster, \
                start_oidc_provider(tmp_path / "idp",
                                    clients=[client("gw", client_secret, [base + "/oauth2/callback"])],
                                    users=[user("alice", password, email="alice@example.test",
                                                groups=["users"])]) as idp:
            cfg = gateway_yaml(port, providers={"corp": provider_entry(idp.issuer, "gw", client_secret)},
                               routes=routes, cookie_name=COOKIE, store=cluster.url)
            gw = start_gateway(cfg, port)  # ready: its session store answered PING through the sentinels
            try:
                with chromium_browser(args=loopback_only) as ctx:
                    page = ctx.new_page()
                    page.goto(base + "/app/before")
                    assert page.url.startswith(idp.issuer + "/interaction/"), page.url
                    provider_sign_in(page, "alice", password)
                    wait_url(page, base + "/app/before")
                    assert up.last("/app/before")["headers"].get("X-Forwarded-User") == "alice"
                    cluster.wait_replicated()
                    old = cluster.current_master_port()
                    assert len(cluster.by_port(old).client().keys("gateway:session:*")) == 1

                    # the master dies; the next page load comes at once, before the sentinels know
                    killed = time.monotonic()
                    cluster.by_port(old).kill()
                    with RequestLog(ctx) as log:
                        resp = page.goto(base + "/app/during")
                    answered = time.monotonic() - killed
                    assert resp is not None and resp.status == 200, (resp and resp.status, page.url)
                    assert page.url == base + "/app/during"
                    assert not log.matching(idp.issuer), f"sent back to the provider: {log.urls}"
                    assert up.last("/app/during")["headers"].get("X-Forwarded-User") == "alice"

                    known = cluster.wait_new_master(old) - killed
                    new = cluster.current_master_port()
                    with RequestLog(ctx) as log:
                        resp = page.goto(base + "/app/after")
                    assert resp is not None and resp.status == 200 and page.url == base + "/app/after"
                    assert not log.matching(idp.issuer), log.urls
                    headers = up.last("/app/after")["headers"]
                    assert headers.get("X-Forwarded-User") == "alice"
                    assert headers.get("X-Forwarded-Email") == "alice@example.test"
                    assert len(cluster.by_port(new).client().keys("gateway:session:*")) == 1
                    assert ctx.blocked_requests == [], ctx.blocked_requests
                    print(f"\ngateway through Sentinel: master killed; the page load made right after it "
                          f"answered 200 (still signed in) in {answered:.2f}s; every sentinel named the new "
                          f"master {known:.2f}s after the kill")
            finally:
                gw.stop()
    finally:
        up.stop()
