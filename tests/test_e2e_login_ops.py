"""End to end, the operational side of browser login: refresh, invalid_grant, a provider that is
down, two gateway instances sharing sessions through a real ``redis-server``, and ``gateway demo``.

Real processes on loopback only (see tests/test_e2e_login.py for the conventions): an
oidc-provider whose access tokens live only ACCESS_TTL seconds (tests that need a refresh
sleep until the token has expired), ``python -m gateway
serve`` instances, an echo upstream, ``redis-server`` and headless Chromium.
"""

from __future__ import annotations

import os
import tempfile
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.browser_fixtures import LOOPBACK_ONLY_ARGS, browser_context, ctx, page  # noqa: F401
from tests.support.e2e import Response, request
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (
    RequestLog,
    api_get,
    cleared_cookies,
    cookie_header,
    cookies,
    free_port,
    gateway_yaml,
    hs_token,
    provider_entry,
    provider_sign_in,
    start_gateway,
    stopped_process,
    wait_url,
)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.redis_server import redis_available, start_redis
from tests.support.upstream import Upstream


pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(90),
]

ROOT = Path(__file__).resolve().parents[1]
# Screenshots go to docs/ (shown in the README) only when asked: GATEWAY_UPDATE_SCREENSHOTS=1.
DOCS = (Path(__file__).resolve().parents[1] / "docs" if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS")
        else Path(tempfile.gettempdir()) / "gateway-screenshots")
DOCS.mkdir(parents=True, exist_ok=True)
ACCESS_TTL = 3
SECRET = "ops-client-secret-0123456789"
ALICE_PW = "alice-pw-0b5d"
COOKIE = "_gws"
REDIS_COOKIE = "_gwr"


def is_cookie_of(prefix: str):
    return lambda name: name == prefix or name.startswith(prefix + "_")


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    idp: OIDCProvider
    up: Upstream
    gw: GatewayProcess
    port: int
    port_a: int
    port_b: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port, port_a, port_b = free_port(), free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in (port, port_a, port_b)]
    clients = [client("gw", SECRET, [u + "/oauth2/callback" for u in urls],
                      post_logout_redirect_uris=[u + "/" for u in urls])]
    users = [user("alice", ALICE_PW, email="alice@example.test", groups=["users", "admins"])]
    up = Upstream("app").start()
    try:
        with start_oidc_provider(tmp_path_factory.mktemp("idp"), clients=clients, users=users,
                                 access_token_ttl=ACCESS_TTL) as idp:
            cfg = gateway_yaml(port, providers={"corp": provider_entry(idp.issuer, "gw", SECRET)},
                               routes=_routes(up), cookie_name=COOKIE)
            gw = start_gateway(cfg, port)
            try:
                yield Env(idp, up, gw, port, port_a, port_b)
            finally:
                gw.stop()
    finally:
        up.stop()


def _routes(up: Upstream) -> list:
    return [
        {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
        {"name": "app", "path": "/app", "upstream": up.url, "auth": "login"},
    ]


def sign_in_at(base_url: str, idp: OIDCProvider, page: Any, path: str) -> None:
    page.goto(base_url + path)
    assert page.url.startswith(idp.issuer + "/interaction/"), page.url
    provider_sign_in(page, "alice", ALICE_PW)
    wait_url(page, base_url + path)


def sleep_past_expiry(signed_in: float) -> None:
    """Sleep until the access token issued before ``signed_in`` (time.monotonic()) has expired, so
    the next request with the session must refresh it, whatever margin the gateway refreshes at."""
    time.sleep(max(0.0, ACCESS_TTL + 0.3 - (time.monotonic() - signed_in)))


def assert_loopback_only(ctx: Any) -> None:
    assert ctx.blocked_requests == [], f"the browser tried to leave loopback: {ctx.blocked_requests}"


def concurrently(calls: list) -> tuple[list, list]:
    """Start the zero-argument callables at once; (results, filled in order as they finish; the threads)."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    return results, threads


def join_all(threads: list, timeout: float = 30.0) -> float:
    start = time.monotonic()
    for t in threads:
        t.join(max(0.1, timeout - (time.monotonic() - start)))
    return time.monotonic() - start


# --------------------------------------------------------------------------- refresh


def test_access_token_is_refreshed_after_its_short_lifetime(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env.url, env.idp, page, "/app/r1")
    signed_in = time.monotonic()
    refreshes = env.idp.stats()["refresh_requests"]
    sleep_past_expiry(signed_in)

    with RequestLog(ctx) as log:
        resp = page.goto(env.url + "/app/r2")
    assert resp is not None and resp.status == 200
    assert page.url == env.url + "/app/r2"
    assert not log.matching(env.idp.issuer), f"no trip through the provider: {log.urls}"
    assert env.up.last("/app/r2")["headers"].get("X-Forwarded-User") == "alice"
    assert env.idp.stats()["refresh_requests"] > refreshes, "the expired access token was refreshed"
    # the refreshed session went back into the browser's cookie
    assert resp.header_value("set-cookie") and COOKIE in resp.header_value("set-cookie")
    assert_loopback_only(ctx)


def test_concurrent_requests_share_one_refresh(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env.url, env.idp, page, "/app/c")
    signed_in = time.monotonic()
    cookie = cookie_header(ctx, env.url, only=is_cookie_of(COOKIE))
    sleep_past_expiry(signed_in)
    before = env.idp.stats()["refresh_requests"]
    assert env.idp.proc is not None
    # the provider is frozen while the requests arrive, so they are all waiting on the same refresh
    with stopped_process(env.idp.proc.pid):
        results, threads = concurrently([lambda i=i: api_get(env.url, f"/app/c{i}", cookie=cookie) for i in range(6)])
        time.sleep(1.0)
    join_all(threads)
    for i, r in enumerate(results):
        assert isinstance(r, Response), r
        assert r.status == 200, (i, r.status, r.body[:200])
        assert r.json()["headers"].get("X-Forwarded-User") == "alice"
    assert env.idp.stats()["refresh_requests"] == before + 1, "one refresh for all concurrent requests"
    assert any(COOKIE in h for r in results for h in r.all("Set-Cookie")), "the refreshed session is sent back"


# --------------------------------------------------------------------------- invalid_grant


def test_invalid_grant_ends_the_session_without_a_loop(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env.url, env.idp, page, "/app/ig")
    signed_in = time.monotonic()
    cookie = cookie_header(ctx, env.url, only=is_cookie_of(COOKIE))
    sleep_past_expiry(signed_in)  # so the next request needs a refresh
    names = {part.split("=", 1)[0] for part in cookie.split("; ")}
    failures = env.idp.stats()["forced_refresh_failures"]

    # an API call with the cookie: the refresh is refused, so 401 and the session cookies are cleared
    env.idp.fail_next_refresh()
    r = api_get(env.url, "/app/ig-api", cookie=cookie)
    assert r.status == 401, (r.status, r.body[:200])
    assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="gateway"')
    assert r.header("Location") is None
    assert names <= cleared_cookies(r), (names, r.all("Set-Cookie"))
    assert env.idp.stats()["forced_refresh_failures"] == failures + 1
    assert env.up.received("/app/ig-api") == []

    # the browser: its refresh token is gone at the provider -> back to login once, then the page
    env.idp.revoke_refresh_tokens("alice")
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/ig-after")
        wait_url(page, env.url + "/app/ig-after")
    assert len(log.matching(env.idp.issuer + "/auth?")) == 1, log.urls
    assert len(log.matching(env.url + "/oauth2/callback?")) == 1, log.urls
    assert env.up.last("/app/ig-after")["headers"].get("X-Forwarded-User") == "alice"
    assert_loopback_only(ctx)


def test_a_fresh_login_is_not_refreshed_away(env: Env, ctx: Any, page: Any) -> None:
    """With a provider that refuses every refresh, a fresh sign-in still reaches the page: a token
    obtained a moment ago is not refreshed (which would fail, end the session, and loop)."""
    from playwright.sync_api import Error as PlaywrightError

    env.idp.fail_next_refresh(50)  # the provider refuses every refresh from now on
    try:
        with RequestLog(ctx) as log:
            page.goto(env.url + "/app/fresh")
            provider_sign_in(page, "alice", ALICE_PW)
            try:
                wait_url(page, env.url + "/app/fresh", timeout=4_000)
            except PlaywrightError:
                pass
            page.wait_for_timeout(300)
    finally:
        env.idp.fail_next_refresh(0)
    auths = log.matching(env.idp.issuer + "/auth?")
    assert page.url == env.url + "/app/fresh" and len(auths) == 1, (
        f"{len(auths)} authorization requests and {len(log.matching(env.url + '/oauth2/callback?'))} callbacks "
        f"for one sign-in; the browser ended at {page.url}")
    assert env.up.last("/app/fresh") is not None


# --------------------------------------------------------------------------- provider down


def test_provider_down_gives_a_503_page_and_other_routes_keep_working(
        tmp_path: Path, env: Env, ctx: Any, page: Any) -> None:
    port, idp_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    issuer = f"http://localhost:{idp_port}"
    idp = OIDCProvider(tmp_path / "idp", port=idp_port,
                       clients=[client("gw", SECRET, [url + "/oauth2/callback"])],
                       users=[user("alice", ALICE_PW)])
    cfg = gateway_yaml(port, providers={"corp": provider_entry(issuer, "gw", SECRET)},
                       routes=_routes(env.up), cookie_name="_gwd")
    gw = start_gateway(cfg, port, ready=False)  # the provider is not running yet
    try:
        # 1. never reachable so far: a browser gets a 503 page offering to try again
        resp = page.goto(url + "/app/down")
        assert resp is not None and resp.status == 503, resp and resp.status
        assert page.title().startswith("Service unavailable"), page.title()
        retry = page.get_by_role("link", name=re.compile("try again", re.I))
        assert retry.count() == 1 and retry.get_attribute("href").startswith("/oauth2/start?")
        ready = request(gw.admin_url, "GET", "/ready")
        assert ready.status == 503 and "corp" in ready.body.decode()
        # ... and the gateway keeps serving everything else
        assert api_get(url, "/public/x").status == 200
        r = api_get(url, "/app/api", Authorization=f"Bearer {hs_token('robot')}")
        assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == "robot"
        assert api_get(url, "/app/api").status == 401

        # 2. the provider comes up: "Try again" signs in and returns to the page
        idp.start()
        assert idp.issuer == issuer
        retry.click()
        provider_sign_in(page, "alice", ALICE_PW)
        wait_url(page, url + "/app/down")
        assert env.up.last("/app/down")["headers"].get("X-Forwarded-User") == "alice"

        # 3. the provider dies between the sign-in form and the callback: 503 at the callback
        ctx.clear_cookies()
        page.goto(url + "/app/mid")
        assert page.url.startswith(issuer + "/interaction/"), page.url
        action = urllib.parse.urljoin(page.url, page.locator("form").get_attribute("action"))
        resp = ctx.request.post(action, form={"login": "alice", "password": ALICE_PW}, max_redirects=0)
        location = resp.headers.get("location", "")
        for _ in range(10):  # follow the provider's redirects, stop before the gateway's callback
            assert resp.status in (302, 303), (resp.status, resp.text()[:300])
            target = urllib.parse.urljoin(resp.url, location)
            if target.startswith(url + "/oauth2/callback?"):
                break
            resp = ctx.request.get(target, max_redirects=0)
            location = resp.headers.get("location", "")
        else:
            pytest.fail("never redirected to the gateway's callback")
        idp.stop()
        resp = page.goto(target)
        assert resp is not None and resp.status == 503, resp and resp.status
        assert page.get_by_role("link", name=re.compile("try again", re.I)).count() == 1
        assert not [c for c in ctx.cookies(url) if c["name"] in ("_gwd", "_gwd_0")], "no session"
        assert api_get(url, "/public/still-up").status == 200
        assert gw.alive()
        assert not [line for line in gw.stderr_lines if "Traceback" in line], "\n".join(gw.stderr_lines)
    finally:
        gw.stop()
        idp.stop()
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- Redis: two instances


@dataclass
class Pair:
    redis_url: str
    a: GatewayProcess
    b: GatewayProcess


@pytest.fixture(scope="module")
def pair(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if not redis_available():
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        providers = {"corp": provider_entry(env.idp.issuer, "gw", SECRET)}
        a = start_gateway(gateway_yaml(env.port_a, providers=providers, routes=_routes(env.up),
                                       cookie_name=REDIS_COOKIE, store=server.url), env.port_a)
        try:
            b = start_gateway(gateway_yaml(env.port_b, providers=providers, routes=_routes(env.up),
                                           cookie_name=REDIS_COOKIE, store=server.url), env.port_b)
            try:
                yield Pair(server.url, a, b)
            finally:
                b.stop()
        finally:
            a.stop()


def _redis_session_keys(url: str) -> list:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sorted(client.keys("gateway:session:*"))
    finally:
        client.close()


def test_redis_sessions_are_shared_by_two_instances(env: Env, pair: Pair, ctx: Any, page: Any) -> None:
    import redis

    a_url, b_url = pair.a.url, pair.b.url
    sign_in_at(a_url, env.idp, page, "/app/on-a")
    jar = cookies(ctx, a_url)
    assert REDIS_COOKIE in jar, sorted(jar)
    assert len(jar[REDIS_COOKIE]["value"]) < 400, "the cookie holds a ticket, not the session"
    assert jar[REDIS_COOKIE]["httpOnly"] and jar[REDIS_COOKIE]["sameSite"] == "Lax"
    keys = _redis_session_keys(pair.redis_url)
    assert len(keys) == 1, keys
    stored = redis.Redis.from_url(pair.redis_url)
    try:
        value = stored.get(keys[0]) or b""
    finally:
        stored.close()
    assert b"alice" not in value and b"eyJ" not in value, "the session in Redis is encrypted"

    # the same browser on instance B (cookies are per host, not per port): signed in already
    with RequestLog(ctx) as log:
        resp = page.goto(b_url + "/app/on-b")
    assert resp is not None and resp.status == 200 and page.url == b_url + "/app/on-b"
    assert not log.matching(env.idp.issuer), log.urls
    assert env.up.last("/app/on-b")["headers"].get("X-Forwarded-User") == "alice"
    copied = cookie_header(ctx, b_url, only=is_cookie_of(REDIS_COOKIE))
    r = api_get(b_url, "/app/api-on-b", cookie=copied)
    assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == "alice"

    # sign out on B: the session is gone on A too, even for someone who kept a copy of the cookie
    page.goto(b_url + "/oauth2/sign_out?rd=/")
    page.wait_for_url(lambda u: u.startswith(b_url + "/"))
    assert not [n for n in cookies(ctx, b_url) if is_cookie_of(REDIS_COOKIE)(n)]
    assert _redis_session_keys(pair.redis_url) == []
    r = api_get(a_url, "/app/api-on-a", cookie=copied)
    assert r.status == 401, "a signed-out session is refused by every instance"
    assert_loopback_only(ctx)


def test_concurrent_refresh_across_instances_is_done_once_and_promptly(
        env: Env, pair: Pair, ctx: Any, page: Any) -> None:
    """Requests on A and B at once: one refresh (Redis lock); the instance that lost the lock picks up
    the refreshed session as soon as it is stored, and never writes the older one back over it."""
    sign_in_at(pair.a.url, env.idp, page, "/app/both-instances")
    login_done = time.monotonic()
    jar = {c["name"]: c["value"] for c in ctx.cookies(pair.a.url) if is_cookie_of(REDIS_COOKIE)(c["name"])}
    cookie = "; ".join(f"{n}={v}" for n, v in jar.items())
    signed_in = time.time()
    sleep_past_expiry(login_done)
    before = env.idp.stats()["refresh_requests"]
    assert env.idp.proc is not None
    with stopped_process(env.idp.proc.pid):
        calls = [lambda base=base, i=i: request(base, "GET", f"/app/x{i}", {"Accept": "application/json",
                                                                            "Cookie": cookie}, timeout=20)
                 for i, base in enumerate([pair.a.url, pair.b.url] * 3)]
        results, threads = concurrently(calls)
        time.sleep(1.0)
    resumed = time.time()
    elapsed = join_all(threads)
    for r in results:
        assert isinstance(r, Response) and r.status == 200, r
    assert env.idp.stats()["refresh_requests"] == before + 1, "one refresh across both instances"
    # what Redis holds now is the refreshed session, not the one from before the refresh
    stored = _load_redis_session(pair.redis_url, jar)
    assert stored is not None and stored.access_expires_at is not None
    assert stored.access_expires_at > resumed + ACCESS_TTL - 1.0, (
        f"stored token expiry is {stored.access_expires_at - signed_in:.1f}s after sign-in, i.e. the "
        f"pre-refresh session (the refresh happened {resumed - signed_in:.1f}s after sign-in)")
    assert elapsed < 5.0, f"requests waited {elapsed:.1f}s for a refresh that took milliseconds"


def _load_redis_session(url: str, jar: dict) -> Any:
    """The session Redis holds for these cookies, read with the gateway's own store (and secret)."""
    import asyncio

    from gateway.config import SessionConfig
    from gateway.sessions import RedisSessionStore
    from tests.support.login_e2e import SESSION_SECRET

    async def load() -> Any:
        store = RedisSessionStore(SessionConfig(secret=SESSION_SECRET, cookie_name=REDIS_COOKIE, store=url), url)
        try:
            return await store.load(jar)
        finally:
            await store.close()

    out: list = []
    # Playwright's sync API owns this thread's event loop: run the coroutine on a thread of its own
    t = threading.Thread(target=lambda: out.append(asyncio.run(load())))
    t.start()
    t.join(10)
    return out[0] if out else None


# --------------------------------------------------------------------------- gateway demo


def test_gateway_demo_can_be_signed_into(ctx: Any, page: Any, tmp_path: Path) -> None:
    env_vars = dict(os.environ)
    env_vars["PYTHONPATH"] = str(ROOT) + os.pathsep + env_vars.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", "0"], cwd=tmp_path,
                            env=env_vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    announced = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Ctrl-C" in line:  # the banner is printed once the gateway accepts connections
                announced.set()

    readers = [threading.Thread(target=pump, daemon=True),
               threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True)]
    for t in readers:
        t.start()
    try:
        assert announced.wait(20), "gateway demo printed nothing:\n" + "".join(lines)
        text = "".join(lines)
        assert "never for production" in text and "Ctrl-C" in text
        url = re.search(r"Open\s+(http://127\.0\.0\.1:\d+)/", text).group(1)
        sign_in = re.search(r'user "([^"]+)", password "([^"]+)"', text)
        username, password = sign_in.group(1), sign_in.group(2)

        page.goto(url + "/")
        assert not page.url.startswith(url + "/"), "sent to the demo provider's sign-in page"
        assert page.title().startswith("Sign in"), page.title()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "sign-in.png"))
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(url + "/")
        page.get_by_text("demo@example.com").first.wait_for()
        assert "Hello, demo@example.com" in page.inner_text("h1")
        assert "X-Forwarded-User" in page.content()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "demo.png"), full_page=True)
        assert_loopback_only(ctx)
    finally:
        proc.terminate()  # by its PID
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for t in readers:
            t.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
