"""The native transport's strict response parsing (httptools), end to end.

The REAL ``gateway serve`` (tests/support/gateway_proc.py) forwards to ``Scripted``,
an upstream on raw sockets on 127.0.0.1 that answers each path with fixed bytes,
malformed ones included, and records which of its connections carried each
request and which ones the gateway closed. A malformed answer must be a 502 when
nothing was sent yet (a closed client connection otherwise), its upstream
connection must be closed rather than pooled, and no upstream framing byte may
ever reach the client; well-formed answers (chunked, HEAD, 204/304, 1xx, bodies
delimited by the connection's end) must be relayed exactly, and keep-alive reuse
must go on working.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple

import pytest

from tests.support.e2e import request, wait_ready
from tests.support.gateway_proc import GatewayProcess

pytestmark = pytest.mark.timeout(30)

SCRIPTS: Dict[str, Tuple[bytes, bool]] = {
    # path: (answer bytes, whether the upstream closes after them)
    "/neg-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n", False),
    "/hex-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", False),
    "/cl-te": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", False),
    "/bad-status": (b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "/not-http": (b"SPDY/9 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "/two-cl": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", False),
    "/short": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", True),
    "/chunk-then-bad": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n-1\r\nXX\r\n0\r\n\r\n", False),
    "/chunked": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n", False),
    "/ka": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nka", False),
    "/head": (b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Type: text/plain\r\n\r\n", False),
    "/204": (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False),
    "/304": (b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", False),
    "/continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal", False),
    "/http10": (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", True),
    "/close-delimited": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 70000, True),
}


class Scripted:
    """Answers every request on a connection with ``SCRIPTS[path]``; records (path, connection id)."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, int]] = []
        self.closed_by_peer: set = set()
        self._cv = threading.Condition()
        self._next = 0
        self._conns: List[socket.socket] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> "Scripted":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.sock.close()
        for conn in list(self._conns):
            try:
                conn.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._cv:
                self._next += 1
                cid = self._next
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, cid), daemon=True).start()

    def _serve(self, conn: socket.socket, cid: int) -> None:
        conn.settimeout(20)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        with self._cv:
                            self.closed_by_peer.add(cid)
                            self._cv.notify_all()
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                with self._cv:
                    self.seen.append((path, cid))
                    self._cv.notify_all()
                answer, close = SCRIPTS[path]
                conn.sendall(answer)
                if close:
                    conn.close()
                    return
        except OSError:  # reset by the gateway
            with self._cv:
                self.closed_by_peer.add(cid)
                self._cv.notify_all()
        finally:
            conn.close()

    def conn_of(self, path: str) -> int:
        with self._cv:
            return [cid for p, cid in self.seen if p == path][-1]

    def wait_closed(self, cid: int, timeout: float = 5.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: cid in self.closed_by_peer, timeout)


@pytest.fixture(scope="module")
def env():
    upstream = Scripted().start()
    gw: Optional[GatewayProcess] = None
    try:
        gw = GatewayProcess(f"""
server:
  shutdown_grace: 1s
routes:
  - name: raw
    path: /r
    upstream: {upstream.url}
    strip_prefix: true
    timeout: 5s
    auth: public
""").start()
        wait_ready(gw.admin_url)
        yield gw, upstream
    finally:
        if gw is not None:
            gw.stop()
        upstream.stop()


def addr(gw: GatewayProcess) -> Tuple[str, int]:
    parts = urllib.parse.urlsplit(gw.url)
    return parts.hostname, parts.port


def raw_exchange(gw: GatewayProcess, head: bytes, timeout: float = 10.0) -> bytes:
    """Send ``head`` on a new client connection; everything the gateway sends until it closes."""
    sock = socket.create_connection(addr(gw), timeout=timeout)
    try:
        sock.sendall(head)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return out
            out += data
        raise AssertionError("the gateway did not close the client connection")
    finally:
        sock.close()


# --------------------------------------------------------------------------- malformed answers


@pytest.mark.parametrize("path", ["/neg-chunk", "/hex-chunk", "/cl-te", "/bad-status", "/not-http", "/two-cl"])
@pytest.mark.parametrize("method", ["GET", "POST"])  # the fast path and the full handler
def test_malformed_answer_is_a_502_and_its_connection_is_closed(env, path, method):
    gw, upstream = env
    resp = request(gw.url, method, "/r" + path, body=b"x" if method == "POST" else None)
    assert resp.status == 502
    assert b"ab" not in resp.body and b"abc" not in resp.body
    assert upstream.wait_closed(upstream.conn_of(path)), "a malformed answer's connection was kept"
    follow = request(gw.url, "GET", "/r/ka")
    assert (follow.status, follow.body) == (200, b"ka")
    assert upstream.conn_of("/ka") != upstream.conn_of(path), "a malformed answer's connection was reused"


def test_answer_shorter_than_its_content_length_closes_the_client_connection(env):
    gw, upstream = env
    out = raw_exchange(gw, b"GET /r/short HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 10" in head.lower()
    assert body == b"hello", "the client must see a truncated body and a closed connection, not a clean end"


def test_bad_chunk_after_a_good_one_closes_the_client_connection_with_no_framing_bytes(env):
    gw, upstream = env
    conn = http.client.HTTPConnection(*addr(gw), timeout=10)
    try:
        conn.request("GET", "/r/chunk-then-bad")
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == b"hello"
    finally:
        conn.close()
    assert upstream.wait_closed(upstream.conn_of("/chunk-then-bad"))


# --------------------------------------------------------------------------- well-formed answers


def test_chunked_answer_is_dechunked_and_reframed(env):
    gw, upstream = env
    out = raw_exchange(gw, b"GET /r/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"ext=1" not in body and b"X-Trailer" not in body
    if b"transfer-encoding: chunked" in head.lower():  # re-framed by the gateway, chunk by chunk
        decoded, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
    else:
        decoded = body
    assert decoded == b"Wikipedia"
    assert request(gw.url, "GET", "/r/chunked").body == b"Wikipedia"


def test_keep_alive_reuses_the_upstream_connection(env):
    gw, upstream = env
    assert request(gw.url, "GET", "/r/ka").body == b"ka"
    first = upstream.conn_of("/ka")
    assert request(gw.url, "GET", "/r/ka").body == b"ka"
    assert upstream.conn_of("/ka") == first


def test_head_answer_has_content_length_and_no_body(env):
    gw, upstream = env
    conn = http.client.HTTPConnection(*addr(gw), timeout=10)
    try:
        conn.request("HEAD", "/r/head")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "42"
        assert resp.read() == b""
        conn.request("GET", "/r/ka")  # the same client connection: no stray body bytes before this answer
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ka")
    finally:
        conn.close()


@pytest.mark.parametrize("path,status", [("/204", 204), ("/304", 304)])
def test_204_and_304_have_no_body_and_keep_both_connections(env, path, status):
    gw, upstream = env
    conn = http.client.HTTPConnection(*addr(gw), timeout=10)
    try:
        conn.request("GET", "/r" + path)
        resp = conn.getresponse()
        assert resp.status == status and resp.read() == b""
        conn.request("GET", "/r" + path)
        resp = conn.getresponse()
        assert resp.status == status and resp.read() == b""
    finally:
        conn.close()
    cids = [cid for p, cid in upstream.seen if p == path]
    assert cids[-1] == cids[-2], "an answer without a body keeps its upstream connection"


def test_interim_1xx_answers_are_skipped(env):
    gw, upstream = env
    resp = request(gw.url, "GET", "/r/continue")
    assert (resp.status, resp.body, resp.header("X-Final")) == (200, b"final", "yes")
    assert resp.header("Link") is None


@pytest.mark.parametrize("path,body", [("/http10", b"until the end"), ("/close-delimited", b"x" * 70000)])
def test_body_delimited_by_the_connection_closing(env, path, body):
    gw, upstream = env
    resp = request(gw.url, "GET", "/r" + path)
    assert (resp.status, resp.body) == (200, body)


# -- the request head sent upstream -------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.forwarding.native import UpstreamProtocolError, format_head  # noqa: E402

_PIECE = st.lists(st.sampled_from([*"aZ09 -:;,=/%\t\r\n\x00\x7f\xe9", "\r\n", "\r\nX-Injected: 1"]),
                  max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(["GET", "POST"]), target=_PIECE,
       headers=st.lists(st.tuples(_PIECE.filter(bool), _PIECE), max_size=5))
def test_format_head_refuses_any_line_break_or_nul_and_keeps_every_line(method, target, headers):
    """A CR, LF or NUL anywhere (a CRLF inside a value too, which would add a header line) is refused;
    anything else is sent as exactly one line per header."""
    pieces = [target] + [part for pair in headers for part in pair]
    breaking = any(ch in piece for piece in pieces for ch in "\r\n\x00")
    try:
        head = format_head(method, target, headers)
    except UpstreamProtocolError:
        assert breaking
        return
    assert not breaking
    lines = head.decode("latin-1").split("\r\n")
    assert lines[-2:] == ["", ""]
    assert lines[0] == f"{method} {target} HTTP/1.1"
    assert lines[1:-2] == [f"{n}: {v}".encode("latin-1", "replace").decode("latin-1") for n, v in headers]


def test_format_head_refuses_a_value_carrying_its_own_crlf():
    with pytest.raises(UpstreamProtocolError):
        format_head("GET", "/", [("X-A", "1\r\nX-Injected: yes")])
