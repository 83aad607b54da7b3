"""End to end: WebSocket upgrades through the REAL ``python -m gateway serve`` process.

A real Tornado WebSocket upstream runs on 127.0.0.1 in a thread with its own
event loop (like tests/support/upstream.py). The client is
``tornado.websocket.websocket_connect``. One gateway serves the module; the
SIGTERM test starts a gateway of its own.

Upstream behaviour, chosen by the query string (the gateway forwards it):

* every connection is recorded under ``cid``: handshake headers, offered
  subprotocols, received close code and reason;
* text and binary messages are echoed; the text ``close-me`` makes the upstream
  close with 4001 "bye";
* ``mode=flood``: on open, send ``count`` binary messages of 64 KB as fast as
  the socket takes them, each starting with its 4-byte index.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import threading
import time
import uuid
from typing import Any, Optional

import pytest
from tornado import httpserver, web, websocket
from tornado.httpclient import HTTPClientError, HTTPRequest

from tests.support.e2e import IdPThread, RSSSampler, request, wait_ready, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.tokens import bearer, hs_token
from tests.support.upstream import refused_port

pytestmark = pytest.mark.timeout(60)

SECRET = "websocket-e2e-secret-" + "x" * 19  # 40 characters
assert len(SECRET) == 40
SESSION_SECRET = "a-session-secret-of-at-least-32-bytes-long!!"
FLOOD_COUNT = 200
FLOOD_SIZE = 64 * 1024
UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


# --------------------------------------------------------------------------- the upstream


class UpstreamSocket(websocket.WebSocketHandler):
    def initialize(self, state: dict) -> None:
        self.state = state

    def check_origin(self, origin: str) -> bool:
        return True

    @property
    def record(self) -> dict:
        cid = self.get_query_argument("cid", "none")
        return self.state["conns"].setdefault(cid, {})

    def select_subprotocol(self, subprotocols: list) -> Optional[str]:
        self.record["offered"] = list(subprotocols)
        return "chat.v2" if "chat.v2" in subprotocols else None

    def open(self, *args: Any) -> None:
        rec = self.record
        rec["headers"] = list(self.request.headers.get_all())
        rec["path"] = self.request.path
        rec["close"] = None
        if self.get_query_argument("mode", "") == "flood":
            count = int(self.get_query_argument("count", str(FLOOD_COUNT)))
            asyncio.ensure_future(self.flood(count))

    async def flood(self, count: int) -> None:
        filler = b"\xab" * (FLOOD_SIZE - 4)
        try:
            for i in range(count):
                await self.write_message(i.to_bytes(4, "big") + filler, binary=True)
            self.record["flood_done"] = True
        except websocket.WebSocketClosedError:
            self.record["flood_done"] = False

    async def on_message(self, message: Any) -> None:
        if message == "close-me":
            self.close(4001, "bye")
            return
        try:
            await self.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            pass

    def on_close(self) -> None:
        self.record["close"] = (self.close_code, self.close_reason)


class WSUpstream:
    def __init__(self) -> None:
        self.state: dict = {"conns": {}}
        self.port = 0
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def conn(self, cid: str) -> dict:
        return self.state["conns"].get(cid, {})

    def start(self) -> "WSUpstream":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            app = web.Application([(r".*", UpstreamSocket, {"state": self.state})])
            server = httpserver.HTTPServer(app)
            server.add_sockets([sock])
            self._ready.set()
            loop.run_forever()
            server.stop()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"ws-upstream-{self.port}")
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --------------------------------------------------------------------------- gateway and helpers


def config_text(upstream: str, issuer: str, dead_port: int) -> str:
    return f"""
server:
  shutdown_grace: 5s
session:
  secret: "{SESSION_SECRET}"
providers:
  corp:
    issuer: {issuer}
    client_id: gateway
    client_secret: not-a-real-secret
tokens:
  - issuer: ci
    secret: "{SECRET}"
    algorithms: [HS256]
    audience: any
routes:
  - name: ws
    path: /ws
    upstream: {upstream}
    auth: token
  - name: short
    path: /short
    upstream: {upstream}
    auth: token
    timeout: 1s
  - name: nows
    path: /nows
    upstream: {upstream}
    auth: token
    websocket: false
  - name: pub
    path: /pub
    upstream: {upstream}
    auth: public
  - name: app
    path: /app
    upstream: {upstream}
    auth: login
    providers: [corp]
  - name: down
    path: /down
    upstream: http://127.0.0.1:{dead_port}
    auth: public
"""


token = functools.partial(hs_token, iss="ci", secret=SECRET, email_domain="example.com", groups=["devs", "sre"])


def run(coro: Any, timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def cid() -> str:
    return uuid.uuid4().hex


async def connect(base: str, path: str, headers: Optional[dict] = None,
                  subprotocols: Optional[list] = None) -> websocket.WebSocketClientConnection:
    req = HTTPRequest("ws" + base[len("http"):] + path, headers=headers or {}, follow_redirects=False,
                      connect_timeout=5, request_timeout=10)
    return await websocket.websocket_connect(req, subprotocols=subprotocols)


def handshake_status(base: str, path: str, headers: Optional[dict] = None) -> int:
    async def go() -> int:
        try:
            conn = await connect(base, path, headers)
        except HTTPClientError as exc:
            return exc.code
        conn.close()
        return 101

    return run(go())


def header_values(record: dict, name: str) -> list:
    return [v for k, v in record.get("headers", []) if k.lower() == name.lower()]


class Env:
    upstream: WSUpstream
    idp: IdPThread
    gw: GatewayProcess
    config: str


@pytest.fixture(scope="module")
def env():
    e = Env()
    started: list = []
    try:
        e.upstream = WSUpstream().start()
        started.append(e.upstream)
        e.idp = IdPThread([])
        started.append(e.idp)
        issuer = e.idp.issuer
        e.idp.idp.discovery_body = json.dumps({
            "issuer": issuer,
            "jwks_uri": f"{issuer}/jwks",
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        })
        e.config = config_text(e.upstream.url, issuer, refused_port())
        e.gw = GatewayProcess(e.config)
        e.gw.start()
        started.append(e.gw)
        wait_ready(e.gw.admin_url)
        yield e
    finally:
        for thing in reversed(started):
            thing.stop()


# --------------------------------------------------------------------------- authentication of the handshake


def test_no_token_is_401(env: Env) -> None:
    assert handshake_status(env.gw.url, f"/ws/echo?cid={cid()}") == 401


@pytest.mark.parametrize("path", ["/ws/echo", "/app/socket"])
def test_no_token_with_browser_accept_is_401_never_a_redirect(env: Env, path: str) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Origin": env.gw.url}
    r = request(env.gw.url, "GET", path, headers=dict(UPGRADE_HEADERS, **browser))
    assert r.status == 401, (r.status, r.body)
    assert r.header("Location") is None
    assert r.header("WWW-Authenticate").startswith("Bearer")
    assert handshake_status(env.gw.url, path, browser) == 401


def test_login_route_redirects_plain_browser_requests(env: Env) -> None:
    # the control for the test above: the same route does redirect a page load
    r = request(env.gw.url, "GET", "/app/page", headers={"Accept": "text/html"})
    assert r.status == 302, (r.status, r.body)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-jwt",
        "Bearer " + token(secret="another-secret-that-is-forty-characters!"),
        "Bearer " + token(exp=int(time.time()) - 3600),
        "Basic YWxpY2U6cGFzc3dvcmQ=",
    ],
    ids=["garbage", "wrong secret", "expired", "basic"],
)
def test_bad_token_is_401(env: Env, authorization: str) -> None:
    c = cid()
    assert handshake_status(env.gw.url, f"/ws/echo?cid={c}", {"Authorization": authorization}) == 401
    r = request(env.gw.url, "GET", f"/ws/echo?cid={c}",
                headers=dict(UPGRADE_HEADERS, Authorization=authorization))
    assert r.status == 401
    if authorization.startswith("Bearer"):
        assert 'error="invalid_token"' in r.header("WWW-Authenticate")
    assert env.upstream.conn(c) == {}  # nothing reached the upstream


def test_login_route_accepts_bearer_token(env: Env) -> None:
    c = cid()

    async def go() -> Any:
        conn = await connect(env.gw.url, f"/app/socket?cid={c}", bearer(token("carol")))
        await conn.write_message("hi")
        reply = await conn.read_message()
        conn.close()
        return reply

    assert run(go()) == "hi"
    assert header_values(env.upstream.conn(c), "X-Forwarded-User") == ["carol"]


def test_websocket_disabled_route_is_403(env: Env) -> None:
    c = cid()
    assert handshake_status(env.gw.url, f"/nows/echo?cid={c}", bearer(token())) == 403
    assert env.upstream.conn(c) == {}


def session_cookie(sub: str = "sam") -> str:
    """A valid cookie-store session for the /app login route, sealed with the test's own secret."""
    from gateway.config import SessionConfig
    from gateway.sessions import CookieSessionStore, Session

    now = time.time()
    session = Session(id=cid(), provider="corp", sub=sub, email=f"{sub}@example.com", groups=(),
                      preferred_username=sub, claims={}, id_token=None, access_token=None, refresh_token=None,
                      access_expires_at=None, access_issued_at=now, created_at=now, expires_at=now + 600)
    update = run(CookieSessionStore(SessionConfig(secret=SESSION_SECRET)).save(session, {}))
    return "; ".join(f"{name}={value}" for name, value in update.set)


@pytest.mark.parametrize("origin,status", [
    (None, 101),  # not a browser: nothing to hijack
    ("{own}", 101),
    ("https://evil.example", 403),
    ("http://sub.127.0.0.1.nip.io", 403),
    ("null", 403),
])
def test_session_websocket_only_from_the_gateways_own_origin(env: Env, origin: Optional[str], status: int) -> None:
    headers = {"Cookie": session_cookie()}
    if origin is not None:
        headers["Origin"] = origin.format(own=env.gw.url)
    assert handshake_status(env.gw.url, "/app/echo", headers) == status


def test_bearer_websocket_is_not_limited_by_origin(env: Env) -> None:
    headers = {**bearer(token("alice")), "Origin": "https://other.example"}
    assert handshake_status(env.gw.url, "/ws/echo", headers) == 101


def test_upstream_down_is_502(env: Env) -> None:
    assert handshake_status(env.gw.url, "/down/echo") == 502


# --------------------------------------------------------------------------- relaying


def test_text_and_binary_echo(env: Env) -> None:
    c = cid()
    blob = bytes(range(256)) * 300

    async def go() -> list:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", bearer(token()))
        out = []
        for message in ("hello", "ünïcødé ✓", blob, b"", "x" * 100_000):
            await conn.write_message(message, binary=isinstance(message, bytes))
            out.append(await conn.read_message())
        conn.close()
        return out

    replies = run(go())
    assert replies[0] == "hello"
    assert replies[1] == "ünïcødé ✓"
    assert isinstance(replies[2], bytes) and replies[2] == blob
    assert replies[3] == b""
    assert replies[4] == "x" * 100_000
    assert env.upstream.conn(c)["path"] == "/ws/echo"


def test_identity_headers_reach_upstream_and_client_copies_are_stripped(env: Env) -> None:
    c = cid()
    spoofed = {
        "X-Forwarded-User": "mallory",
        "X-Forwarded-Email": "mallory@evil.example",
        "X-Forwarded-Groups": "admins",
        "X-Forwarded-Preferred-Username": "mallory",
    }

    async def go() -> None:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", dict(bearer(token("alice")), **spoofed))
        await conn.write_message("ping")
        assert await conn.read_message() == "ping"
        conn.close()

    run(go())
    rec = env.upstream.conn(c)
    assert header_values(rec, "X-Forwarded-User") == ["alice"]
    assert header_values(rec, "X-Forwarded-Email") == ["alice@example.com"]
    assert header_values(rec, "X-Forwarded-Groups") == ["devs,sre"]
    assert header_values(rec, "X-Forwarded-Preferred-Username") in ([], ["alice"])
    assert header_values(rec, "X-Request-Id")


def test_public_route_strips_client_identity_headers(env: Env) -> None:
    c = cid()

    async def go() -> None:
        conn = await connect(env.gw.url, f"/pub/echo?cid={c}",
                             {"X-Forwarded-User": "mallory", "X-Forwarded-Email": "m@evil.example"})
        await conn.write_message("x")
        assert await conn.read_message() == "x"
        conn.close()

    run(go())
    rec = env.upstream.conn(c)
    assert header_values(rec, "X-Forwarded-User") == []
    assert header_values(rec, "X-Forwarded-Email") == []


def test_close_code_from_upstream_reaches_client(env: Env) -> None:
    c = cid()

    async def go() -> tuple:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", bearer(token()))
        await conn.write_message("close-me")
        assert await conn.read_message() is None
        return conn.close_code, conn.close_reason

    assert run(go()) == (4001, "bye")


def test_close_code_from_client_reaches_upstream(env: Env) -> None:
    c = cid()

    async def go() -> None:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", bearer(token()))
        await conn.write_message("one")
        assert await conn.read_message() == "one"
        conn.close(4002, "client-bye")
        assert await conn.read_message() is None

    run(go())
    wait_until(lambda: env.upstream.conn(c).get("close") is not None, timeout=5)
    assert env.upstream.conn(c)["close"] == (4002, "client-bye")


@pytest.mark.parametrize(
    "offered, expected",
    [(["x-other", "chat.v2"], "chat.v2"), (["x-other"], None), (None, None)],
)
def test_subprotocol_negotiation(env: Env, offered: Optional[list], expected: Optional[str]) -> None:
    c = cid()

    async def go() -> Optional[str]:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", bearer(token()), subprotocols=offered)
        chosen = conn.selected_subprotocol
        await conn.write_message("p")
        assert await conn.read_message() == "p"
        conn.close()
        return chosen

    assert run(go()) == expected
    if offered:
        assert env.upstream.conn(c)["offered"] == offered


def test_route_timeout_does_not_cut_an_open_websocket(env: Env) -> None:
    # `timeout` bounds the handshake, not the life of the socket
    c = cid()

    async def go() -> list:
        conn = await connect(env.gw.url, f"/short/echo?cid={c}", bearer(token()))
        await conn.write_message("a")
        first = await conn.read_message()
        await asyncio.sleep(1.6)
        await conn.write_message("b")
        second = await conn.read_message()
        conn.close()
        return [first, second]

    assert run(go()) == ["a", "b"]


def test_backpressure_flood_to_slow_reader(env: Env) -> None:
    c = cid()
    pid = env.gw.proc.pid

    async def go() -> list:
        conn = await connect(env.gw.url, f"/ws/flood?mode=flood&cid={c}", bearer(token()))
        indexes = []
        for _ in range(FLOOD_COUNT):
            message = await conn.read_message()
            assert isinstance(message, bytes) and len(message) == FLOOD_SIZE
            indexes.append(int.from_bytes(message[:4], "big"))
            await asyncio.sleep(0.004)  # a slow reader
        conn.close()
        return indexes

    with RSSSampler(pid, interval=0.02) as sampler:
        indexes = run(go(), timeout=30)
    assert indexes == list(range(FLOOD_COUNT))
    assert env.upstream.conn(c).get("flood_done") is True
    assert sampler.samples > 0
    assert sampler.peak_kb < 150 * 1024, f"gateway RSS peaked at {sampler.peak_kb} KB"
    print(f"gateway peak RSS during flood: {sampler.peak_kb} KB over {sampler.samples} samples")


def test_access_log_line_for_websocket(env: Env) -> None:
    c = cid()

    async def go() -> None:
        conn = await connect(env.gw.url, f"/ws/echo?cid={c}", bearer(token("dave")))
        await conn.write_message("x")
        await conn.read_message()
        conn.close()

    run(go())
    entry = env.gw.wait_log(lambda e: c in (e.get("path") or "") or e.get("user") == "dave")
    assert entry["route"] == "ws"
    assert entry["user"] == "dave"
    assert "Bearer" not in json.dumps(entry)


# --------------------------------------------------------------------------- shutdown


@pytest.fixture(scope="module")
def sigterm_run(env: Env) -> dict:
    """A gateway of its own with one open WebSocket, then SIGTERM: what each side saw."""
    gw = GatewayProcess(env.config)
    gw.start()
    try:
        wait_ready(gw.admin_url)
        c = cid()

        async def go() -> tuple:
            conn = await connect(gw.url, f"/ws/echo?cid={c}", bearer(token()))
            await conn.write_message("before")
            assert await conn.read_message() == "before"
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert await conn.read_message() is None
            return conn.close_code, conn.close_reason, time.monotonic() - started

        code, reason, took = run(go())
        exit_status = gw.proc.wait(10)
        wait_until(lambda: env.upstream.conn(c).get("close") is not None, timeout=5)
        return {
            "client_close": (code, reason),
            "seconds": took,
            "exit_status": exit_status,
            "upstream_close": env.upstream.conn(c)["close"],
            "stderr": "\n".join(gw.stderr_lines[-20:]),
        }
    finally:
        gw.stop()


def test_sigterm_closes_websockets_with_1001_and_exits_0(sigterm_run: dict) -> None:
    assert sigterm_run["client_close"][0] == 1001, sigterm_run
    assert sigterm_run["seconds"] < 5
    assert sigterm_run["exit_status"] == 0, sigterm_run["stderr"]


def test_sigterm_closes_the_upstream_leg_with_1001(sigterm_run: dict) -> None:
    assert sigterm_run["upstream_close"] is not None
    assert sigterm_run["upstream_close"][0] == 1001, sigterm_run["upstream_close"]
