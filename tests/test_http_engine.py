"""The proxy port's HTTP/1.1 connection layer, on both engines (``server.http_engine``).

Raw sockets against a real ``gateway serve``: pipelined requests answered in
order, 431 for a head over ``max_header_size``, ``Expect: 100-continue``,
HTTP/1.0 keep-alive rules, ``Connection: close``, chunked and large uploads
(streamed with backpressure), a slow head cut by ``header_timeout``, an idle
keep-alive connection cut by ``idle_timeout``, a WebSocket upgrade (the
engine's ``detach``), and many requests on one keep-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
from tornado import httpserver, web, websocket

from tests.support.e2e import wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import stop_gateway
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(40)

ENGINES = ["tornado", "httptools"]


class EchoSocket(websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class WSEcho:
    """A WebSocket echo upstream on its own loop and thread."""

    def start(self) -> "WSEcho":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            server = httpserver.HTTPServer(web.Application([(r"/.*", EchoSocket)]))
            server.add_sockets([sock])
            ready.set()
            loop.run_forever()
            server.stop()
            loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def upstream():
    up = Upstream("engine").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def ws_upstream():
    up = WSEcho().start()
    yield up
    up.stop()


@pytest.fixture(scope="module", params=ENGINES)
def gw(request, upstream, ws_upstream):
    proc = GatewayProcess(f"""\
server:
  http_engine: {request.param}
  max_header_size: 4KB
  idle_timeout: 1s
  header_timeout: 1s
  body_timeout: 2s
routes:
  - name: ws
    path: /ws
    upstream: http://127.0.0.1:{ws_upstream.port}
    auth: public
  - name: pub
    path: /pub
    upstream: {upstream.url}
    auth: public
  - name: slow
    path: /slow
    upstream: {upstream.url}
    auth: public
""")
    proc.engine = request.param  # type: ignore[attr-defined]
    try:
        proc.start()
        wait_ready(proc.admin_url)
        yield proc
    finally:
        stop_gateway(proc)


def connect(gw: GatewayProcess, timeout: float = 5.0) -> socket.socket:
    host, port = gw.url.split("://", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


class Reader:
    """Whole responses off one socket (Content-Length or chunked bodies, or up to EOF for HTTP/1.0)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._more():
                raise AssertionError(f"connection closed; have {self.buf[:200]!r}")
        got, _, self.buf = self.buf.partition(marker)
        return got

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise AssertionError("connection closed in a body")
        got, self.buf = self.buf[:n], self.buf[n:]
        return got

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        head = self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        if head_only or status in (100, 101, 204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self._exactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    return status, headers, body
                body += self._exactly(size)
                self._exactly(2)
        while self._more():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body


def closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the peer closes the connection (EOF or reset); fails after ``limit``."""
    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"connection still open after {limit}s") from None
    return time.monotonic() - start


def echoed(body: bytes) -> dict:
    return json.loads(body)


def test_pipelined_requests_are_answered_in_order(gw):
    with connect(gw) as sock:
        sock.sendall(b"".join(b"GET /pub/p%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(5))
                     + b"POST /pub/p5 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"
                     + b"GET /pub/p6 HTTP/1.1\r\nHost: gw\r\n\r\n")
        reader = Reader(sock)
        paths = []
        for _ in range(7):
            status, _, body = reader.response()
            assert status == 200
            paths.append(echoed(body)["path"])
        assert paths == [f"/pub/p{i}" for i in range(7)]


def test_many_requests_on_one_keep_alive_connection(gw):
    with connect(gw) as sock:
        reader = Reader(sock)
        for i in range(50):
            sock.sendall(b"GET /pub/k%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i)
            status, headers, body = reader.response()
            assert status == 200 and echoed(body)["path"] == f"/pub/k{i}"
            assert headers.get("connection", "").lower() != "close"


def test_a_head_over_max_header_size_is_refused(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/big HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 6000 + b"\r\n\r\n")
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    if gw.engine == "httptools":
        assert got.startswith(b"HTTP/1.1 431 "), got[:100]
    else:  # Tornado's server closes without an answer
        assert got == b"" or got.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")), got[:100]


def test_a_head_under_max_header_size_is_served(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/fits HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        status, _, body = Reader(sock).response()
        assert status == 200 and echoed(body)["headers"]["X-Big"] == "a" * 3000


def test_expect_100_continue(gw):
    with connect(gw) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST /pub/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        status, _, _ = reader.response(head_only=True)
        assert status == 100
        sock.sendall(b"hello")
        status, _, body = reader.response()
        assert status == 200 and echoed(body)["body_bytes"] == 5


def test_http10_closes_unless_keep_alive_is_asked(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/old HTTP/1.0\r\nHost: gw\r\n\r\n")
        status, headers, body = Reader(sock).response()
        assert status == 200 and echoed(body)["path"] == "/pub/old"
        closed_within(sock, 5)
    with connect(gw) as sock:
        reader = Reader(sock)
        for i in range(2):
            sock.sendall(b"GET /pub/ka%d HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n" % i)
            status, headers, body = reader.response()
            assert status == 200 and echoed(body)["path"] == f"/pub/ka{i}"
            assert headers.get("connection", "").lower() == "keep-alive"


def test_connection_close_is_honoured(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/bye HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, headers, _ = Reader(sock).response()
        assert status == 200 and headers.get("connection", "").lower() == "close"
        closed_within(sock, 5)


def test_chunked_upload(gw):
    with connect(gw) as sock:
        sock.sendall(b"POST /pub/chunked HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"a" * 10, b"b" * 1000, b"c" * 5):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = Reader(sock).response()
        assert status == 200 and echoed(body)["body_bytes"] == 1015


def test_a_large_upload_streams_through(gw):
    total = 16 * 1024 * 1024
    with connect(gw, timeout=20) as sock:
        sock.sendall(b"PUT /pub/large HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * 65536
        for _ in range(total // len(block)):
            sock.sendall(block)
        status, _, body = Reader(sock).response()
        assert status == 200 and echoed(body)["body_bytes"] == total


def test_a_slow_head_is_cut_by_header_timeout(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/slow HTTP/1.1\r\nHost: gw\r\n")
        assert closed_within(sock, 5) < 4


def test_an_idle_keep_alive_connection_is_closed(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/once HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert Reader(sock).response()[0] == 200
        assert closed_within(sock, 5) < 4


def test_a_bare_connection_is_closed_when_idle(gw):
    with connect(gw) as sock:
        assert closed_within(sock, 5) < 4


def test_malformed_request_is_400(gw):
    with connect(gw) as sock:
        sock.sendall(b"POST /pub/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        assert got.startswith(b"HTTP/1.1 400 "), got[:100]


def test_websocket_upgrade_is_relayed(gw):
    async def go() -> list:
        host = gw.url.split("://", 1)[1]
        conn = await websocket.websocket_connect(f"ws://{host}/ws/echo")
        got = []
        for message in ("one", "two", "x" * 100_000):
            await conn.write_message(message)
            got.append(await conn.read_message())
        await conn.write_message(b"\x00\x01", binary=True)
        got.append(await conn.read_message())
        conn.close()
        return got

    got = asyncio.run(asyncio.wait_for(go(), 15))
    assert got == ["one", "two", "x" * 100_000, b"\x00\x01"]


def test_the_connection_serves_http_again_after_a_refused_upgrade(gw):
    # An upgrade to a route that is not a WebSocket one: an ordinary answer, not a hang.
    with connect(gw) as sock:
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        status, _, _ = Reader(sock).response()
        assert status == 404


def test_no_host_header_is_400(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/x HTTP/1.1\r\n\r\n")
        status, _, _ = Reader(sock).response()
        assert status == 400
    assert not [line for line in gw.stderr_lines if "Traceback" in line]


def test_whitespace_around_a_header_value_is_not_part_of_it(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/ows HTTP/1.1\r\nHost: gw\r\nX-Padded: \t value \t\r\n\r\n")
        status, _, body = Reader(sock).response()
        assert status == 200 and echoed(body)["headers"]["X-Padded"] == "value"


def test_a_body_before_a_pipelined_head_does_not_count_as_head(gw):
    # A large body and the start of the next head in one read: only the head counts for max_header_size.
    with connect(gw) as sock:
        body = b"q" * 60000
        next_head = b"GET /pub/after HTTP/1.1\r\nHost: gw\r\n"
        sock.sendall(b"POST /pub/first HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body) + body + next_head)
        reader = Reader(sock)
        status, _, got = reader.response()
        assert status == 200 and echoed(got)["body_bytes"] == len(body)
        sock.sendall(b"X-More: " + b"m" * 1000 + b"\r\n" + b"X-Again: " + b"m" * 1000 + b"\r\n\r\n")
        status, _, got = reader.response()
        assert status == 200 and echoed(got)["path"] == "/pub/after"


def test_a_head_that_never_ends_is_refused(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Long: ")
        got = b""
        try:
            for _ in range(10):
                sock.sendall(b"v" * 1000)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert not got.startswith(b"HTTP/1.1 2"), got[:100]
        if gw.engine == "httptools":
            assert got.startswith(b"HTTP/1.1 431 ") or got == b"", got[:100]


def test_a_long_pipeline_of_refused_requests(gw):
    # Thousands of small requests in one write, each answered at once (404): all answered, in order.
    count = 3000
    with connect(gw, timeout=20) as sock:
        sock.sendall(b"".join(b"GET /none/%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(count)))
        reader = Reader(sock)
        for _ in range(count):
            assert reader.response()[0] == 404


def test_a_refusal_keeps_the_connection(gw):
    with connect(gw) as sock:
        reader = Reader(sock)
        for i in range(3):
            sock.sendall(b"GET /none/%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i)
            status, headers, _ = reader.response()
            assert status == 404 and headers.get("connection", "").lower() != "close"


def test_a_connection_idle_after_a_refusal_is_closed(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /none/idle HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert Reader(sock).response()[0] == 404
        assert closed_within(sock, 5) < 4


@pytest.fixture(scope="module", params=ENGINES)
def tls_gw(request, tmp_path_factory, upstream, ws_upstream):
    from tests.support.certs import CA

    tmp = tmp_path_factory.mktemp(f"tls-{request.param}")
    ca = CA()
    ca_file = ca.write(tmp / "ca.pem")
    cert_file, key_file = ca.issue("127.0.0.1", "localhost").write(tmp, "server")
    proc = GatewayProcess(f"""\
server:
  http_engine: {request.param}
  tls: {{cert: {cert_file}, key: {key_file}}}
routes:
  - name: ws
    path: /ws
    upstream: http://127.0.0.1:{ws_upstream.port}
    auth: public
  - name: pub
    path: /pub
    upstream: {upstream.url}
    auth: public
""")
    try:
        proc.start()
        assert proc.url.startswith("https://")
        yield proc, ca_file
    finally:
        stop_gateway(proc)


def test_tls_pipelining_and_a_websocket(tls_gw):
    import ssl

    gw, ca_file = tls_gw
    context = ssl.create_default_context(cafile=str(ca_file))
    host, port = gw.url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"".join(b"GET /pub/t%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(3)))
            reader = Reader(sock)
            assert [echoed(reader.response()[2])["path"] for _ in range(3)] == ["/pub/t0", "/pub/t1", "/pub/t2"]

    async def go() -> list:
        from tornado.httpclient import HTTPRequest

        conn = await websocket.websocket_connect(HTTPRequest(f"wss://{host}:{port}/ws/echo", ssl_options=context))
        got = []
        for message in ("over", "tls" * 30_000):
            await conn.write_message(message)
            got.append(await conn.read_message())
        conn.close()
        return got

    assert asyncio.run(asyncio.wait_for(go(), 15)) == ["over", "tls" * 30_000]


def test_a_client_that_leaves_mid_request_is_logged_499_not_as_an_upstream_failure(gw, upstream):
    """The exchange is cut because the client left: no "upstream reset" warning, no
    gateway_upstream_errors, and the access log says 499 (as nginx's does)."""
    from tests.support.e2e import request

    before = upstream.state["requests"]
    with connect(gw) as sock:
        sock.sendall(b"GET /slow/left?s=3 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: left-early\r\n\r\n")
        deadline = time.monotonic() + 5
        while upstream.state["requests"] == before and time.monotonic() < deadline:
            time.sleep(0.01)  # until the upstream has the request
        assert upstream.state["requests"] > before
    entry = gw.wait_log(lambda e: e.get("request_id") == "left-early", timeout=8)
    if gw.engine == "httptools":
        assert entry["status"] == 499 and entry["reason"] == "client closed the connection", entry
    else:  # Tornado's HTTP1Connection reads nothing while the answer is awaited: it sees no close, the answer
        assert entry["status"] == 200, entry  # is written into the closed connection when it comes
    assert not [line for line in gw.stderr_lines if "upstream" in line and "slow" in line], gw.stderr_lines[-5:]
    metrics = request(gw.admin_url, "GET", "/metrics").body.decode()
    assert not [line for line in metrics.splitlines()
                if line.startswith("gateway_upstream_errors_total") and 'route="slow"' in line], metrics
    with connect(gw) as sock:  # and the gateway serves on
        sock.sendall(b"GET /pub/after HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert Reader(sock).response()[0] == 200


def test_the_listener_waits_and_accepts_again_after_running_out_of_descriptors(monkeypatch):
    """accept() failing with EMFILE: a warning, no accepting for ACCEPT_RETRY, then the queued client is taken."""
    import errno

    from gateway import http1, http1_accept

    monkeypatch.setattr(http1_accept, "ACCEPT_RETRY", 0.02)
    real = socket.socket()
    real.bind(("127.0.0.1", 0))
    real.listen(8)

    class OutOfDescriptorsOnce:
        fails = 1

        def accept(self):
            if self.fails:
                self.fails -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return real.accept()

        def __getattr__(self, name):
            return getattr(real, name)

    async def scenario() -> tuple:
        server = http1.EngineServer(object(), max_header_size=8192, timeouts=lambda: (60.0, 60.0))  # type: ignore[arg-type]
        await server.add_sockets([OutOfDescriptorsOnce()])  # type: ignore[list-item]
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, real.getsockname())
        for _ in range(200):
            if server.connections:
                break
            await asyncio.sleep(0.01)
        accepted = len(server.connections)
        server.stop()
        for proto in list(server.connections):
            proto.close()
        client.close()
        return accepted, real.fileno()

    accepted, fileno = asyncio.run(scenario())
    assert accepted == 1
    assert fileno == -1  # stop() closed the listening socket: new connections are refused
