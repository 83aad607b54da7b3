"""End to end: the hardening from the security review, against the REAL ``gateway serve``.

One gateway process (tests/support/gateway_proc.py) serves the whole module, in
front of:

* ``echo``: the echo upstream (tests/support/upstream.py), for what reaches an upstream;
* ``slow``: a second echo upstream, only for the route with ``timeout: 2s``;
* ``raw``: a sloppy HTTP/1.1 server written here on raw sockets. It answers
  ``POST /early`` at once, without reading the request body, and then goes on
  parsing whatever follows on that connection as the next request; every request
  head it parses is recorded with the number of the connection it came on.

Every test here fails against the gateway/ of the commit before the hardening (f95b323)
and passes with it, except ``test_slow_client_then_fast_requests``: the slow-download
scenario of the review, kept as an end-to-end check, does not by itself end an answer
while the upstream connection is paused (that needs the last chunk to be the one that
crosses the gateway's HIGH_WATER); ``test_connection_paused_on_its_last_chunk_is_resumed_before_reuse``
drives exactly that and fails without the fix.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.support.e2e import request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.tokens import bearer, hs_token
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(60)

ISSUER = "ci"
SECRET = "hardening-e2e-secret-0123456789abcdefghi"  # 40 characters
assert len(SECRET) == 40
ADMIN_HOST = "admin.example.com"
SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\nX-Forwarded-User: root\r\n\r\n"


# --------------------------------------------------------------------------- helpers


token = functools.partial(hs_token, iss=ISSUER, secret=SECRET, aud="api")


def rid() -> str:
    return "h-" + uuid.uuid4().hex[:20]


def values(echo: dict, name: str) -> List[str]:
    """Every value the upstream received under ``name`` (case-insensitive, '-' and '_' kept apart)."""
    return [v for k, v in echo["header_list"] if k.lower() == name.lower()]


def underscore_aliases(echo: dict, name: str) -> List[Tuple[str, str]]:
    """Header lines whose name is ``name`` spelled with at least one '_' instead of '-'."""
    return [(k, v) for k, v in echo["header_list"]
            if "_" in k and k.lower().replace("_", "-") == name.lower()]


def read_response(sock: socket.socket, buf: bytes = b"") -> Tuple[int, Dict[str, str], bytes, bytes]:
    """One HTTP/1.1 answer from a raw socket: (status, headers lower-cased, body, bytes left over)."""

    def fill(need_marker: Optional[bytes] = None, need_len: int = 0) -> None:
        nonlocal buf
        while (need_marker is not None and need_marker not in buf) or (need_marker is None and len(buf) < need_len):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed; have {buf[:200]!r}")
            buf += data

    fill(b"\r\n\r\n")
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        n = int(headers["content-length"])
        fill(need_len=n)
        body, buf = buf[:n], buf[n:]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            fill(b"\r\n")
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            fill(need_len=size + 2)
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    return status, headers, body, buf


# --------------------------------------------------------------------------- the sloppy raw upstream


class RawUpstream:
    """A keep-alive HTTP/1.1 server on raw sockets, one thread per connection.

    ``POST /early`` is answered at once without reading its body (what is left of
    that body is then parsed as the next request, as a careless server would);
    anything else has its Content-Length body read and is answered with JSON
    ``{"path", "conn", "headers"}``. ``records`` holds every parsed request head.
    """

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._conns: List[socket.socket] = []
        self._next = 0
        self._stopped = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RawUpstream":
        threading.Thread(target=self._accept, daemon=True, name=f"raw-upstream-{self.port}").start()
        return self

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._next += 1
                cid = self._next
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, cid), daemon=True).start()

    def _serve(self, conn: socket.socket, cid: int) -> None:
        conn.settimeout(30)
        buf = b""
        try:
            while True:
                while True:
                    while buf.startswith(b"\r\n"):  # RFC 9112 2.2: empty lines before a request line
                        buf = buf[2:]
                    if b"\r\n\r\n" in buf:
                        break
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                method, target = parts[0], parts[1] if len(parts) > 1 else ""
                headers = []
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers.append((name.strip(), value.strip()))
                with self._lock:
                    self.records.append({"conn": cid, "method": method, "target": target, "headers": headers})
                if target == "/early":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nearly")
                    continue
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                body = json.dumps({"path": target, "conn": cid, "headers": headers}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            conn.close()

    def targets(self) -> List[str]:
        with self._lock:
            return [r["target"] for r in self.records]

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


# --------------------------------------------------------------------------- the module's gateway


class Env:
    gw: GatewayProcess
    echo: Upstream
    slow: Upstream
    raw: RawUpstream
    paced: socket.socket  # listener of the test-driven upstream of route "paced"

    @property
    def addr(self) -> Tuple[str, int]:
        parts = urllib.parse.urlsplit(self.gw.url)
        return parts.hostname, parts.port

    def send(self, method: str, path: str, headers: Any = None, body: Any = None, **kw: Any):
        return request(self.gw.url, method, path, headers, body, **kw)

    def log_for(self, request_id: str) -> dict:
        return self.gw.wait_log(lambda e: e.get("request_id") == request_id)


def config_text(e: Env) -> str:
    return f"""
server:
  shutdown_grace: 1s
tokens:
  - issuer: {ISSUER}
    secret: "{SECRET}"
    algorithms: [HS256]
    audience: any
routes:
  - name: adminhost
    host: {ADMIN_HOST}
    path: /
    upstream: {e.echo.url}
    auth: token
  - name: admin
    path: /admin
    upstream: {e.echo.url}
    auth: token
    methods: [GET, POST]
  - name: api
    path: /api
    upstream: {e.echo.url}
    auth: token
  - name: pub
    path: /pub
    upstream: {e.echo.url}
    strip_prefix: true
    auth: public
  - name: raw
    path: /raw
    upstream: {e.raw.url}
    strip_prefix: true
    auth: public
  - name: slowroute
    path: /t
    upstream: {e.slow.url}
    strip_prefix: true
    timeout: 2s
    auth: public
  - name: paced
    path: /paced
    upstream: http://127.0.0.1:{e.paced.getsockname()[1]}
    strip_prefix: true
    timeout: 10s
    auth: public
  - name: root
    path: /
    upstream: {e.echo.url}
    auth: public
"""


@pytest.fixture(scope="module")
def env():
    e = Env()
    started: list = []
    try:
        e.echo = Upstream("echo").start()
        started.append(e.echo)
        e.slow = Upstream("slow").start()
        started.append(e.slow)
        e.raw = RawUpstream().start()
        started.append(e.raw)
        e.paced = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        e.paced.bind(("127.0.0.1", 0))
        e.paced.listen(16)
        e.paced.settimeout(5)
        started.append(e.paced)  # socket.close() on the way out
        e.gw = GatewayProcess(config_text(e))
        e.gw.start()
        started.append(e.gw)
        wait_ready(e.gw.admin_url)
        yield e
    finally:
        for thing in reversed(started):
            thing.close() if isinstance(thing, socket.socket) else thing.stop()


# --------------------------------------------------------------------------- 1. smuggling via the pool


def test_early_answer_does_not_pool_the_connection_still_carrying_the_body(env):
    """An upstream answering before the body is sent must not get the rest of that body
    as a request on a pooled connection that then serves another client."""
    part1 = b"\r\n"
    length = len(part1) + len(SMUGGLED)
    host, port = env.addr
    a = socket.create_connection((host, port), timeout=5)
    try:
        a.sendall(
            f"POST /raw/early HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {length}\r\n\r\n".encode() + part1
        )
        status, _, body, _ = read_response(a)
        assert (status, body) == (200, b"early")

        b = request(env.gw.url, "GET", "/raw/victim", timeout=5)
        assert b.status == 200, b.body
        assert b.json()["path"] == "/victim"

        a.sendall(SMUGGLED)  # the rest of A's body: a request in disguise
        # Give the upstream time to parse whatever reaches it, and a client C a go on the pool.
        time.sleep(0.5)
        c = request(env.gw.url, "GET", "/raw/after", timeout=5)
        assert c.status == 200 and c.json()["path"] == "/after", c.body
    finally:
        a.close()
    time.sleep(0.2)

    records = list(env.raw.records)
    assert "/admin/secret" not in env.raw.targets(), records
    assert not any(v == "root" for r in records for k, v in r["headers"] if k.lower() == "x-forwarded-user"), records
    early = [r["conn"] for r in records if r["target"] == "/early"]
    victim = [r["conn"] for r in records if r["target"] == "/victim"]
    assert len(early) == 1 and len(victim) == 1, records
    assert early[0] != victim[0], "B's request went over the connection still carrying A's body"


# --------------------------------------------------------------------------- 2. CR/LF and friends in claims


EVIL_USERNAME = "bob\r\nX-Forwarded-User: root"
EMAIL = "b\u00f3b@example.com"
EMAIL_ON_WIRE = EMAIL.encode("utf-8").decode("latin-1")  # UTF-8 bytes, read back as latin-1


def evil_token() -> str:
    return token("alice-sub", preferred_username=EVIL_USERNAME, groups=["dev,admins", "ops"], email=EMAIL)


def test_claims_cannot_add_header_lines_or_groups(env):
    r = env.send("GET", "/api/claims", bearer(evil_token()))
    assert r.status == 200, r.body
    echo = r.json()
    assert values(echo, "X-Forwarded-User") == ["alice-sub"]
    assert values(echo, "X-Forwarded-Preferred-Username") == ["bob%0D%0AX-Forwarded-User: root"]
    assert values(echo, "X-Forwarded-Groups") == ["dev%2Cadmins,ops"]
    assert values(echo, "X-Forwarded-Email") == [EMAIL_ON_WIRE]
    for name, value in echo["header_list"]:
        assert "\r" not in value and "\n" not in value, (name, value)


def test_forward_auth_claim_headers_have_no_line_breaks(env):
    r = env.send("GET", "/oauth2/auth", {**bearer(evil_token()), "X-Forwarded-Uri": "/api/x",
                                         "X-Forwarded-Method": "GET"})
    assert r.status == 200, r.body
    assert r.all("X-Auth-Request-User") == ["alice-sub"]
    assert r.all("X-Auth-Request-Preferred-Username") == ["bob%0D%0AX-Forwarded-User: root"]
    assert r.all("X-Auth-Request-Groups") == ["dev%2Cadmins,ops"]
    assert r.all("X-Auth-Request-Email") == [EMAIL_ON_WIRE]
    for name, value in r.header_list:
        assert "\r" not in value and "\n" not in value, (name, value)
        assert name.lower() != "x-forwarded-user"


# --------------------------------------------------------------------------- 3. underscore spellings


UNDERSCORED = [("X_Forwarded_User", "root"), ("X-Forwarded_Groups", "admins"), ("X_Forwarded_For", "1.2.3.4"),
               ("X_Custom", "1")]


@pytest.mark.parametrize("path,auth", [("/pub/underscore", False), ("/api/underscore", True)], ids=["public", "token"])
def test_underscore_spellings_of_protected_headers_are_dropped(env, path, auth):
    headers = list(UNDERSCORED) + (list(bearer(token("carol")).items()) if auth else [])
    r = env.send("GET", path, headers)
    assert r.status == 200, r.body
    echo = r.json()
    for name in ("X-Forwarded-User", "X-Forwarded-Groups", "X-Forwarded-For"):
        assert underscore_aliases(echo, name) == [], name
    assert values(echo, "X-Forwarded-User") == (["carol"] if auth else [])
    assert values(echo, "X-Forwarded-Groups") == []
    assert all("1.2.3.4" not in v for v in values(echo, "X-Forwarded-For"))
    assert all(v not in ("root", "admins", "1.2.3.4") for _, v in echo["header_list"]), echo["header_list"]
    # an ordinary header with an underscore still goes through
    assert [v for k, v in echo["header_list"] if k.lower() == "x_custom"] == ["1"]


# --------------------------------------------------------------------------- 4. routing / method-override headers


OVERRIDES = [
    ("X-Original-URL", "/admin/secret"),
    ("X-Rewrite-URL", "/admin/secret"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Forwarded-Prefix", "/evil-prefix"),
    ("X-Forwarded-Port", "4444"),
    ("X-Original-Method", "DELETE"),
]


def test_routing_and_method_override_headers_are_stripped(env):
    r = env.send("GET", "/pub/overrides", OVERRIDES + [("X-Ordinary", "kept")])
    assert r.status == 200, r.body
    echo = r.json()
    assert echo["method"] == "GET" and echo["path"] == "/overrides"
    for name, value in OVERRIDES:
        assert values(echo, name) == [], name
        assert all(v != value for _, v in echo["header_list"]), (name, echo["header_list"])
    assert values(echo, "X-Ordinary") == ["kept"]


# --------------------------------------------------------------------------- 5. methods


@pytest.mark.parametrize("method", ["DELETE", "PUT"])
def test_method_left_out_by_a_route_gets_405_not_the_public_root(env, method):
    before = len(env.echo.received("/admin/x"))
    request_id = rid()
    r = env.send(method, "/admin/x", {"X-Request-Id": request_id}, b"")
    assert r.status == 405, (r.status, r.body[:200])
    allow = {m.strip() for m in (r.header("Allow") or "").split(",")}
    assert allow == {"GET", "HEAD", "POST"}, r.header("Allow")
    assert env.log_for(request_id)["status"] == 405
    assert len(env.echo.received("/admin/x")) == before


def test_head_goes_with_get(env):
    before = len(env.echo.received("/admin/x"))
    request_id = rid()
    r = env.send("HEAD", "/admin/x", {"X-Request-Id": request_id})
    assert r.status == 401, r.status
    entry = env.log_for(request_id)
    assert entry["route"] == "admin" and entry["status"] == 401, entry
    assert len(env.echo.received("/admin/x")) == before
    ok = env.send("HEAD", "/admin/x", bearer(token("dave")))
    assert ok.status == 200


# --------------------------------------------------------------------------- 6. path parameters


@pytest.mark.parametrize("path", ["/admin;x/users", "/pub;a=b"])
def test_path_parameters_refused(env, path):
    before = env.echo.state["requests"]
    r = env.send("GET", path)
    assert r.status == 400, (r.status, r.body[:200])
    r = env.send("GET", path, bearer(token("erin")))
    assert r.status == 400, (r.status, r.body[:200])
    time.sleep(0.1)
    assert env.echo.state["requests"] == before
    seen = [x["uri"] for x in env.echo.received()]
    assert not any(";" in uri for uri in seen), seen


# --------------------------------------------------------------------------- 7. bad Host headers


@pytest.mark.parametrize("host", [f"{ADMIN_HOST}:evil", "a:80:80"])
def test_bad_host_headers_refused(env, host):
    before = env.echo.state["requests"]
    r = env.send("GET", "/x", {"Host": host})
    assert r.status == 400, (r.status, r.body[:200])
    r = env.send("GET", "/pub/x", {"Host": host})
    assert r.status == 400, (r.status, r.body[:200])
    time.sleep(0.1)
    assert env.echo.state["requests"] == before
    # the same host without the junk is routed as usual
    assert env.send("GET", "/x", {"Host": ADMIN_HOST}).status == 401


# --------------------------------------------------------------------------- 8. slow client, then the pool


def test_slow_client_then_fast_requests(env):
    """An 8 MB download read at 2 MB/s, then five fast requests on new client connections."""
    total = 8 * 1024 * 1024
    rate = 2 * 1024 * 1024  # bytes per second
    host, port = env.addr
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    s.settimeout(10)
    s.connect((host, port))
    try:
        s.sendall(f"GET /pub/stream?bytes={total} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(4096)
            assert data, "closed before the head"
            buf += data
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        chunked = b"transfer-encoding: chunked" in head.lower()
        received = len(rest)
        start = time.monotonic()
        deadline = start + 20
        done = lambda: rest.endswith(b"0\r\n\r\n") if chunked else received >= total  # noqa: E731
        while not done():
            assert time.monotonic() < deadline, f"slow download stuck at {received} bytes"
            data = s.recv(16 * 1024)
            assert data, f"closed after {received} bytes"
            received += len(data)
            if chunked:
                rest = (rest + data)[-16:]
            ahead = received / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if not chunked:
            assert received == total
    finally:
        s.close()

    for i in range(5):
        t0 = time.monotonic()
        try:
            r = env.send("GET", f"/pub/ping{i}", timeout=3)
        except OSError as exc:  # socket.timeout included
            pytest.fail(f"ping {i} after the slow download: {exc!r} after {time.monotonic() - t0:.1f}s")
        elapsed = time.monotonic() - t0
        assert r.status == 200, r.body
        assert r.json()["path"] == f"/ping{i}"
        assert elapsed < 2.0, f"ping {i} took {elapsed:.2f}s"


LOOPBACK_HEX = ("0100007F", "7F000001")  # 127.0.0.1 as /proc/net/tcp prints it (either byte order)


def tcp_queues() -> Dict[Tuple[int, int], Tuple[int, int]]:
    """(local port, remote port) -> (tx_queue, rx_queue) of every established 127.0.0.1 TCP socket."""
    out: Dict[Tuple[int, int], Tuple[int, int]] = {}
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            local, remote, state, queues = f[1], f[2], f[3], f[4]
            if state != "01" or local.split(":")[0] not in LOOPBACK_HEX or remote.split(":")[0] not in LOOPBACK_HEX:
                continue
            tx, rx = (int(x, 16) for x in queues.split(":"))
            out[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = (tx, rx)
    return out


def serve_pongs(listener: socket.socket, conns: List[socket.socket], stop: threading.Event) -> None:
    """Answer every request on ``conns`` (and on newly accepted connections) with a 200 "pong"."""

    def serve(conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\npong")
                except OSError:
                    return

    for conn in conns:
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        conns.append(conn)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_connection_paused_on_its_last_chunk_is_resumed_before_reuse(env):
    """Deterministic form of case 8: the chunk that pushes the client's write buffer past
    HIGH_WATER (so the upstream connection is paused) is also the end of the answer, so
    the connection goes back to the pool while paused. The next request on it must not hang.

    The test is the upstream here: it sends one chunk at a time (each < 64 KB, so the
    gateway reads it in one go), measures how much the gateway holds in its own buffer
    for the stalled client (what it wrote minus what sits in the kernel's socket
    queues, from /proc/net/tcp), and sends the last chunk + terminator only when that
    chunk alone crosses HIGH_WATER.
    """
    from gateway.forwarding import HIGH_WATER

    host, gw_port = env.addr
    up_port = env.paced.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    client.settimeout(10)
    client.connect((host, gw_port))
    client_port = client.getsockname()[1]
    conns: List[socket.socket] = []
    stop = threading.Event()
    try:
        client.sendall(f"GET /paced/download HTTP/1.1\r\nHost: {host}:{gw_port}\r\n\r\n".encode())
        up, peer = env.paced.accept()
        conns.append(up)
        gw_up_port = peer[1]
        up.settimeout(5)
        req = b""
        while b"\r\n\r\n" not in req:
            data = up.recv(65536)
            assert data, "gateway closed the upstream connection"
            req += data
        assert req.startswith(b"GET /download "), req[:100]
        up.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            assert data, "gateway closed the client connection"
            head += data
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        gw_chunked = b"transfer-encoding: chunked" in head.lower()
        consumed = len(rest)  # body bytes of the gateway's answer the client has read (0 from here on)
        written = 0  # body bytes (with the gateway's chunk framing) the gateway has written toward the client

        def settle() -> None:
            deadline = time.monotonic() + 5
            while True:
                q = tcp_queues()
                if q.get((gw_up_port, up_port), (0, 1))[1] == 0 and q.get((up_port, gw_up_port), (1, 0))[0] == 0:
                    break
                assert time.monotonic() < deadline, "the gateway stopped reading the upstream too early"
                time.sleep(0.001)
            time.sleep(0.004)  # let the gateway hand the chunk to the client stream

        def held_by_gateway() -> int:
            q = tcp_queues()
            return written - consumed - q[(gw_port, client_port)][0] - q[(client_port, gw_port)][1]

        def send_chunk(size: int, last: bool = False) -> None:
            nonlocal written
            up.sendall(f"{size:x}\r\n".encode() + b"\0" * size + b"\r\n" + (b"0\r\n\r\n" if last else b""))
            written += size + (len(f"{size:x}") + 4 if gw_chunked else 0)

        # Fill up to a little below HIGH_WATER with chunks that cannot cross it; the estimate may be
        # off by what the kernel still takes, hence the margin the last chunk goes beyond HIGH_WATER.
        piece, margin = 60_000, 30_000
        for _ in range(1000):
            settle()
            held = held_by_gateway()
            last = HIGH_WATER - held + margin
            if last <= piece:
                break
            send_chunk(min(piece, last - 50_000))
        else:
            pytest.fail("the gateway's client buffer never approached HIGH_WATER")
        send_chunk(last, last=True)  # crosses HIGH_WATER and ends the answer, in one read
        settle()  # the gateway has taken it before the client reads anything


        # the client now reads the whole answer
        tail = rest[-16:]
        deadline = time.monotonic() + 10
        while not (tail.endswith(b"0\r\n\r\n") if gw_chunked else False):
            assert time.monotonic() < deadline, "download did not complete"
            data = client.recv(65536)
            if not data:
                break
            tail = (tail + data)[-16:]
    finally:
        client.close()

    server = threading.Thread(target=serve_pongs, args=(env.paced, conns, stop), daemon=True)
    server.start()
    try:
        for i in range(5):
            t0 = time.monotonic()
            try:
                r = env.send("GET", f"/paced/ping{i}", timeout=2)
            except OSError as exc:
                pytest.fail(f"ping {i} after the paused answer: {exc!r} after {time.monotonic() - t0:.1f}s")
            elapsed = time.monotonic() - t0
            assert (r.status, r.body) == (200, b"pong"), (r.status, r.body[:200])
            assert elapsed < 2.0, f"ping {i} took {elapsed:.2f}s"
    finally:
        stop.set()
        server.join(2)
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------- 9. one deadline across the retry


def test_timed_out_request_on_a_pooled_connection_is_not_retried(env):
    # warm a pooled keep-alive connection to the slow upstream
    assert env.send("GET", "/t/warm").status == 200
    before = env.slow.state["requests"]
    t0 = time.monotonic()
    try:
        r = env.send("GET", "/t/slow?s=10", timeout=6)
    except OSError as exc:
        pytest.fail(f"no answer within 6s ({exc!r}): the timed-out request was retried without a deadline")
    elapsed = time.monotonic() - t0
    assert r.status == 504, (r.status, r.body[:200])
    assert elapsed < 3.5, f"504 after {elapsed:.2f}s"
    time.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
    assert env.slow.state["requests"] - before == 1, "the slow request reached the upstream more than once"


# --------------------------------------------------------------------------- 10. malformed WebSocket handshakes


@pytest.mark.parametrize("extra", [[], [("Sec-WebSocket-Version", "13")]], ids=["no-key-no-version", "no-key"])
def test_malformed_websocket_handshake_refused_before_the_upstream(env, extra):
    before = env.echo.state["requests"]
    r = env.send("GET", "/pub/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade")] + extra, timeout=5)
    assert r.status == 400, (r.status, r.body[:200])
    time.sleep(0.3)
    assert env.echo.state["requests"] == before
    assert env.echo.received("/ws") == []
