"""Connection and request limits of the REAL ``python -m gateway serve``, from raw sockets.

``server:`` max_body_size (and a route's own), max_header_size, idle_timeout, header_timeout
and max_connections. Every check also makes sure the process keeps serving other clients.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.e2e import request, wait_ready, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import stop_gateway
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(40)

GET = b"GET /pub/x HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.fixture(scope="module")
def upstream():
    up = Upstream("limits").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(upstream):
    proc = GatewayProcess(f"""\
server:
  max_body_size: 4KB
  max_header_size: 8KB
  idle_timeout: 1s
  header_timeout: 1s
  body_timeout: 1s
routes:
  - name: small
    path: /small
    upstream: {upstream.url}
    auth: public
    max_body_size: 1KB
  - name: pub
    path: /pub
    upstream: {upstream.url}
    auth: public
""")
    try:
        proc.start()
        wait_ready(proc.admin_url)
        yield proc
    finally:
        stop_gateway(proc)


def addr(gw: GatewayProcess) -> tuple:
    host, port = gw.url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def connect(gw: GatewayProcess, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(addr(gw), timeout=timeout)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head + Content-Length body) from a keep-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def wait_closed(sock: socket.socket, limit: float) -> tuple:
    """Block until the peer closes (EOF or reset); returns (seconds, bytes read meanwhile)."""
    sock.settimeout(limit)
    start = time.monotonic()
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"connection still open after {limit}s") from None
    return time.monotonic() - start, got


def served(gw: GatewayProcess) -> bool:
    return request(gw.url, "GET", "/pub/alive", timeout=5).status == 200


# --------------------------------------------------------------------------- body size


def test_route_max_body_size_refuses_before_the_upstream(gw, upstream):
    before = upstream.state["requests"]
    resp = request(gw.url, "POST", "/small/upload", body=b"x" * 2048)
    assert resp.status == 413
    assert resp.json()["error"] == "request_too_large"
    assert upstream.state["requests"] == before  # the upstream never saw it
    assert request(gw.url, "POST", "/small/upload", body=b"x" * 1000).status == 200
    assert upstream.state["requests"] == before + 1
    entry = gw.wait_log(lambda e: e.get("route") == "small" and e.get("status") == 413)
    assert "limit" in entry.get("reason", "")


def test_server_max_body_size_applies_to_routes_without_their_own(gw, upstream):
    before = upstream.state["requests"]
    assert request(gw.url, "POST", "/pub/upload", body=b"x" * 5000).status == 413
    assert upstream.state["requests"] == before
    assert request(gw.url, "POST", "/pub/upload", body=b"x" * 3000).status == 200


def test_route_max_body_size_also_limits_chunked_bodies(gw, upstream):
    resp = request(gw.url, "POST", "/small/chunked", body=[b"x" * 1024, b"y" * 1024], chunked=True)
    assert resp.status == 413
    assert not [r for r in upstream.received("/chunked") if r["body_bytes"] > 1024]


# --------------------------------------------------------------------------- header size


def test_oversized_request_head_is_refused_and_the_gateway_keeps_serving(gw):
    ok = connect(gw)
    ok.sendall(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Fill: " + b"a" * 6000 + b"\r\n\r\n")
    assert status_of(read_response(ok)) == 200  # 6 KB of headers are fine
    ok.close()
    big = connect(gw)
    big.sendall(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 16384 + b"\r\n\r\n")
    seconds, got = wait_closed(big, 5)
    big.close()
    # What happens: Tornado stops reading at 8 KB without a complete head and closes the
    # connection without an answer (no 431). Either is a refusal; no 2xx may come back.
    assert got == b"" or status_of(got) in (400, 431), got[:100]
    assert seconds < 2
    assert gw.alive() and served(gw)


# --------------------------------------------------------------------------- timeouts


def test_idle_keepalive_connection_is_closed_after_idle_timeout(gw):
    sock = connect(gw)
    sock.sendall(GET)
    response = read_response(sock)
    assert status_of(response) == 200 and b"connection: close" not in response.lower()
    seconds, got = wait_closed(sock, 5)
    sock.close()
    assert got == b""
    assert 0.7 <= seconds <= 2.2, seconds


def _stall_and_serve_others(gw: GatewayProcess, sock: socket.socket, feeder=None) -> tuple:
    """While ``sock`` stalls, other clients must be served; returns (seconds to close, statuses)."""
    result: dict = {}

    def watch() -> None:
        result["closed"] = wait_closed(sock, 5)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.monotonic()
    watcher.start()
    statuses = []
    while watcher.is_alive() and time.monotonic() - start < 5:
        statuses.append(request(gw.url, "GET", "/pub/meanwhile", timeout=5).status)
        if feeder is not None:
            feeder()
        time.sleep(0.1)
    watcher.join(6)
    assert "closed" in result, "the stalled connection was never closed"
    return result["closed"], statuses


def test_half_sent_request_head_is_cut_after_header_timeout(gw):
    sock = connect(gw)
    sock.sendall(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nX-Partial: ")  # ... and nothing more
    (seconds, got), statuses = _stall_and_serve_others(gw, sock)
    sock.close()
    assert got == b"" or status_of(got) in (400, 408), got[:100]
    assert 0.7 <= seconds <= 2.2, seconds
    assert len(statuses) >= 3 and set(statuses) == {200}


def test_trickled_request_head_is_cut_after_header_timeout(gw):
    """Slowloris: one byte every 0.1 s keeps the connection busy, yet the head must be complete in 1 s."""
    sock = connect(gw)
    sock.sendall(b"GET /pub/x HTTP/1.1\r\n")
    trickle = iter(b"X-Slow: " + b"z" * 200)

    def feed() -> None:
        try:
            sock.send(bytes([next(trickle)]))
        except (StopIteration, OSError):
            pass

    (seconds, got), statuses = _stall_and_serve_others(gw, sock, feed)
    sock.close()
    assert got == b"" or status_of(got) in (400, 408), got[:100]
    assert seconds <= 2.2, seconds
    assert set(statuses) == {200}


STALLED_BODIES = [  # (head, first body bytes, the status, answered at once?)
    (b"POST /pub/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 3000\r\n\r\n", b"0123456789", 408, False),
    (b"POST /pub/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\n0123456789\r\n",
     408, False),
    (b"POST /oauth2/sign_out HTTP/1.1\r\nHost: gw\r\nContent-Length: 3000\r\n\r\n", b"0123456789", 408, False),
    (b"PUT /nowhere%2Fx HTTP/1.1\r\nHost: gw\r\nContent-Length: 3000\r\n\r\n", b"0123456789", 400, True),
    (b"POST /pub/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n", b"0123456789", 413, True),
]


@pytest.mark.parametrize("head,start,status,at_once", STALLED_BODIES,
                         ids=["proxied", "chunked", "own-endpoint", "refused", "too-large"])
def test_stalled_request_body_gets_408_and_is_closed_after_body_timeout(gw, head, start, status, at_once):
    """The head and a few body bytes, then nothing: the slot is freed after body_timeout, not held forever."""
    sock = connect(gw)
    sock.sendall(head + start)
    (seconds, got), statuses = _stall_and_serve_others(gw, sock)
    sock.close()
    assert status_of(got) == status, got[:200]
    if at_once:  # refused before the body mattered: answered and closed without waiting for it
        assert seconds < 0.7, seconds
    else:
        assert 0.7 <= seconds <= 3.0, seconds
        assert b"Connection: close" in got
        assert statuses and set(statuses) == {200}
    assert set(statuses) <= {200} and served(gw)


def test_trickled_body_within_body_timeout_is_forwarded_whole(gw, upstream):
    sock = connect(gw, timeout=10)
    sock.sendall(b"POST /pub/slow-upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 30\r\n\r\n")
    for _ in range(3):  # 10 bytes every 0.5 s: each pause is under the 1 s timeout, the whole over it
        sock.sendall(b"0123456789")
        time.sleep(0.5)
    response = read_response(sock)
    sock.close()
    assert status_of(response) == 200, response[:200]
    assert upstream.last("/pub/slow-upload")["body_bytes"] == 30


# --------------------------------------------------------------------------- max_connections


def test_max_connections_answers_503_then_serves_again(upstream):
    gw = GatewayProcess(f"""\
server:
  max_connections: 3
routes:
  - name: pub
    path: /pub
    upstream: {upstream.url}
    auth: public
""", admin=True)
    held = []
    try:
        gw.start()
        wait_ready(gw.admin_url)
        for _ in range(3):
            sock = connect(gw)
            sock.sendall(GET)
            assert status_of(read_response(sock)) == 200
            held.append(sock)
        fourth = connect(gw)
        fourth.sendall(GET)
        response = read_response(fourth)
        assert status_of(response) == 503, response[:200]
        assert b"retry-after" in response.lower()
        assert wait_closed(fourth, 3)[1] == b""
        fourth.close()
        deadline = time.monotonic() + 5  # the log line may reach us after the answer does
        while not any("server.max_connections" in line for line in gw.stderr_lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("server.max_connections" in line for line in gw.stderr_lines)
        # the three held connections still work
        for sock in held:
            sock.sendall(GET)
            assert status_of(read_response(sock)) == 200
        # one closes: a new connection is served again (once the gateway has seen the close)
        held.pop().close()

        def new_one_served() -> bool:
            sock = connect(gw)
            try:
                sock.sendall(GET)
                return status_of(read_response(sock)) == 200
            finally:
                sock.close()

        wait_until(new_one_served, timeout=5, interval=0.1)
        assert gw.alive()
    finally:
        for sock in held:
            sock.close()
        stop_gateway(gw)


@pytest.mark.parametrize("path", ["/oauth2/sign_out", "/oauth2/userinfo", "/%6Fauth2/auth"])
def test_max_body_size_holds_for_the_gateways_own_endpoints(gw, path):
    sock = connect(gw)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 100)
    response = read_response(sock)
    sock.close()
    assert status_of(response) == 413, response[:200]
    chunked = connect(gw)
    chunked.sendall(f"POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                    + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n")
    response = read_response(chunked)
    chunked.close()
    assert status_of(response) == 413, response[:200]
    assert served(gw)


# --------------------------------------------------------------------------- idle and header timeouts apart


def _gateway_with(upstream, idle: str, header: str) -> GatewayProcess:
    proc = GatewayProcess(f"""\
server:
  idle_timeout: {idle}
  header_timeout: {header}
routes:
  - name: pub
    path: /pub
    upstream: {upstream.url}
    auth: public
""")
    proc.start()
    wait_ready(proc.admin_url)
    return proc


def test_a_slow_head_may_take_header_timeout_even_when_idle_timeout_is_shorter(upstream):
    gw = _gateway_with(upstream, "1s", "4s")
    try:
        sock = connect(gw, timeout=10)
        head = b"GET /pub/slow-head HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 20 + b"\r\n\r\n"
        for byte in head[:-4]:  # about 2 s for the head: past idle_timeout, within header_timeout
            sock.send(bytes([byte]))
            time.sleep(2.0 / len(head))
        sock.send(head[-4:])
        response = read_response(sock)
        assert status_of(response) == 200, response[:200]
        # ... and an idle keep-alive connection still goes after idle_timeout, not header_timeout
        seconds, _ = wait_closed(sock, 4)
        sock.close()
        assert 0.7 <= seconds <= 2.2, seconds
    finally:
        stop_gateway(gw)


def test_an_idle_connection_may_stay_idle_timeout_even_when_header_timeout_is_shorter(upstream):
    gw = _gateway_with(upstream, "4s", "1s")
    try:
        idle = connect(gw, timeout=10)
        time.sleep(2.0)  # past header_timeout, with no byte sent: still open
        idle.sendall(GET)
        assert status_of(read_response(idle)) == 200
        idle.close()
        half = connect(gw, timeout=10)
        half.sendall(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\n")  # a head begun and never ended
        seconds, got = wait_closed(half, 5)
        half.close()
        assert got == b"" or status_of(got) in (400, 408), got[:100]
        assert 0.7 <= seconds <= 2.0, seconds
    finally:
        stop_gateway(gw)
