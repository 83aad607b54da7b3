"""End to end: routing, path normalisation, proxying, streaming memory, CLI, reload, shutdown.

Every test talks HTTP to the REAL ``python -m gateway serve`` process
(tests/support/gateway_proc.py) in front of real loopback upstreams
(tests/support/upstream.py). One gateway serves most of the module; the
streaming-memory, reload and shutdown tests start their own, and the
``gateway check`` / invalid-config tests run the CLI as a subprocess.

Failover, as the gateway implements it (gateway/forwarding/exchange.py ``Exchange.run``):
a request moves on to a route's next upstream only when the connection was
refused AND the method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE)
AND the request has no body. Anything else (POST, or any request with a
body, which has been streamed to the first upstream already) that meets a
dead upstream is answered 502 — ``test_failover_never_replays_a_request_with_a_body``
pins that down.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Optional

import jwt
import pytest

from tests.support.fake_idp import HMAC_SECRET
from tests.support.e2e import RSSSampler, request, rss_kb, wait_until
from tests.support.gateway_proc import ROOT, GatewayProcess
from tests.support.upstream import Upstream, refused_port

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024


def hs_token(sub: str = "alice", **extra: Any) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "ci-runner", "sub": sub, "aud": "api", "iat": now, "exp": now + 600, **extra},
                      HMAC_SECRET, algorithm="HS256")


def bearer(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rid() -> str:
    return "p-" + uuid.uuid4().hex[:20]


def _values(echo: dict, name: str) -> list:
    return [v for k, v in echo["header_list"] if k.lower() == name.lower()]


# --------------------------------------------------------------------------- the module's gateway


class Env:
    gw: GatewayProcess
    one: Upstream
    two: Upstream
    admin_up: Upstream
    dead_port: int

    def get(self, path: str, headers: Any = None, **kw: Any):
        return request(self.gw.url, "GET", path, headers, **kw)

    def send(self, method: str, path: str, headers: Any = None, body: Any = None, **kw: Any):
        return request(self.gw.url, method, path, headers, body, **kw)

    def log_for(self, request_id: str) -> dict:
        return self.gw.wait_log(lambda e: e.get("request_id") == request_id)


def config_text(e: Env) -> str:
    return f"""
server:
  shutdown_grace: 3s
tokens:
  - issuer: ci-runner
    secret: "{HMAC_SECRET}"
    algorithms: [HS256]
    audience: api
routes:
  - name: pub
    path: /pub
    upstream: {e.one.url}
    strip_prefix: true
    auth: public
  - name: app
    path: /app
    upstream: {e.one.url}
    auth: public
  - name: appdeep
    path: /app/deep
    upstream: {e.two.url}
    auth: public
  - name: svc
    host: svc.example.test
    path: /
    upstream: {e.two.url}
    auth: public
  - name: wild
    host: "*.wild.test"
    path: /
    upstream: {e.one.url}
    auth: public
  - name: strip
    path: /strip
    upstream: {e.one.url}
    strip_prefix: true
    auth: public
  - name: preserve
    path: /preserve
    upstream: {e.one.url}
    preserve_host: true
    auth: public
  - name: ro
    path: /ro
    upstream: {e.one.url}
    methods: [GET, HEAD]
    auth: public
  - name: admin
    path: /admin
    upstream: {e.admin_up.url}
    auth: token
    allow:
      - sub: admin-user
  - name: rr
    path: /rr
    upstream: [{e.one.url}, {e.two.url}]
    strip_prefix: true
    auth: public
  - name: failover
    path: /failover
    upstream: [http://127.0.0.1:{e.dead_port}, {e.one.url}]
    strip_prefix: true
    auth: public
"""


@pytest.fixture(scope="module")
def env():
    e = Env()
    started: list = []
    try:
        e.one = Upstream("one").start()
        started.append(e.one)
        e.two = Upstream("two").start()
        started.append(e.two)
        e.admin_up = Upstream("admin").start()
        started.append(e.admin_up)
        e.dead_port = refused_port()
        e.gw = GatewayProcess(config_text(e))
        e.gw.start()
        started.append(e.gw)
        yield e
    finally:
        for thing in reversed(started):
            thing.stop()


# --------------------------------------------------------------------------- routing


def test_longest_prefix_wins_on_segment_boundaries(env):
    cases = [
        ("/app", "app", "one"),
        ("/app/", "app", "one"),
        ("/app/x/y", "app", "one"),
        ("/app/deep", "appdeep", "two"),
        ("/app/deep/x", "appdeep", "two"),
        ("/app/deeper", "app", "one"),  # /app/deep matches whole segments only
    ]
    for path, route, server in cases:
        request_id = rid()
        r = env.get(path, {"X-Request-Id": request_id})
        assert r.status == 200, path
        assert r.json()["server"] == server, path
        assert r.json()["path"] == path  # no strip_prefix: the path as sent
        assert env.log_for(request_id)["route"] == route, path


@pytest.mark.parametrize("path", ["/apple", "/apple/x", "/ap", "/", "/pubx", "/admins"])
def test_no_partial_segment_match(env, path):
    before = (env.one.state["requests"], env.two.state["requests"], env.admin_up.state["requests"])
    r = env.get(path, bearer(hs_token("admin-user")))
    assert r.status == 404, path
    assert (env.one.state["requests"], env.two.state["requests"], env.admin_up.state["requests"]) == before


def test_host_routes(env):
    cases = [
        ("svc.example.test", "/anything", "svc", "two"),
        ("SVC.Example.Test:8080", "/anything", "svc", "two"),
        ("svc.example.test", "/app/x", "svc", "two"),  # a route with host beats one without
        ("a.wild.test", "/x", "wild", "one"),
        ("b.a.wild.test", "/x", "wild", "one"),
        ("other.test", "/app/x", "app", "one"),  # no host route: the host-less routes
    ]
    for host, path, route, server in cases:
        request_id = rid()
        r = env.get(path, {"Host": host, "X-Request-Id": request_id})
        assert r.status == 200, (host, path)
        assert r.json()["server"] == server, (host, path)
        assert env.log_for(request_id)["route"] == route, (host, path)
    for host in ("other.test", "wild.test", "svc.example.test.evil"):
        assert env.get("/anything", {"Host": host}).status == 404, host


def test_strip_prefix(env):
    echo = env.get("/strip/v1/x?q=1").json()
    assert echo["path"] == "/v1/x"
    assert echo["uri"] == "/v1/x?q=1"
    assert env.get("/strip").json()["path"] == "/"
    assert env.get("/strip/").json()["path"] == "/"


def test_preserve_host(env):
    echo = env.get("/preserve/x", {"Host": "custom.example"}).json()
    assert _values(echo, "Host") == ["custom.example"]
    echo = env.get("/pub/x", {"Host": "custom.example"}).json()
    assert _values(echo, "Host") == [env.one.url.split("://", 1)[1]]
    assert _values(echo, "X-Forwarded-Host") == ["custom.example"]


def test_route_methods(env):
    assert env.get("/ro/x").status == 200
    assert env.send("HEAD", "/ro/x").status == 200
    before = env.one.state["requests"]
    for method in ("POST", "PUT", "DELETE"):
        r = env.send(method, "/ro/x", body=b"data")
        assert r.status in (404, 405), (method, r.status)
    assert env.one.state["requests"] == before


# --------------------------------------------------------------------------- path normalisation


@pytest.mark.parametrize(
    "path",
    [
        "/pub/../admin/x",
        "/pub/%2e%2e/admin/x",
        "/pub/%2E%2E/admin/x",
        "/pub/.%2e/admin/x",
        "/pub/./../admin/x",
        "/pub/..;/admin/x",
        "/pub/%2e%2e;/admin/x",
        "/pub//../admin/x",
        "//admin/x",
        "/pub/%2e%2e%2fadmin/x",
        "/pub/..%2Fadmin/x",
        "/pub/..%5Cadmin/x",
        "/pub/..\\admin/x",
        "/../admin/x",
        "/pub/../../admin/x",
    ],
)
def test_traversal_never_reaches_admin_upstream_through_public_route(env, path):
    before_admin = env.admin_up.state["requests"]
    before_one = env.one.state["requests"]
    request_id = rid()
    r = env.get(path, {"X-Request-Id": request_id})
    assert r.status in (400, 401), (path, r.status, r.body)
    assert env.admin_up.state["requests"] == before_admin
    assert env.one.state["requests"] == before_one  # nor the public upstream with a climbing path
    entry = env.log_for(request_id)
    if r.status == 401:
        assert entry["route"] == "admin"


def test_traversal_resolved_to_admin_route_uses_its_auth(env):
    r = env.get("/pub/%2e%2e/admin/x", bearer(hs_token("admin-user")))
    assert r.status == 200
    echo = r.json()
    assert echo["server"] == "admin" and echo["path"] == "/admin/x"
    r = env.get("/pub/../admin/x", bearer(hs_token("alice")))
    assert r.status == 403


@pytest.mark.parametrize("path", ["/pub/a%2Fb", "/pub/a%2fb", "/pub/a%5Cb", "/pub/a%00b", "/pub/%0d%0aX"])
def test_encoded_separators_and_controls_are_400(env, path):
    before = env.one.state["requests"]
    r = env.get(path)
    assert r.status == 400, path
    assert env.one.state["requests"] == before


def test_unreserved_escapes_are_normalised(env):
    echo = env.get("/pub/%61bc/%7Euser/a%20b").json()
    assert echo["path"] in ("/abc/~user/a%20b", "/abc/~user/a b")


# --------------------------------------------------------------------------- proxy behaviour


def test_multiple_set_cookie_headers_preserved(env):
    r = env.get("/pub/cookies")
    assert r.status == 200
    assert r.all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"]


def test_hop_by_hop_response_headers_removed(env):
    r = env.get("/pub/hopbyhop")
    assert r.status == 200
    assert r.header("X-End-To-End") == "kept"
    assert r.header("X-Private-Hop") is None
    assert r.header("Keep-Alive") is None
    assert "x-private-hop" not in (r.header("Connection") or "").lower()


def test_hop_by_hop_request_headers_not_forwarded(env):
    r = env.get("/pub/echo", [
        ("Connection", "X-Secret, x-other-secret"),
        ("X-Secret", "1"),
        ("X-Other-Secret", "2"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Connection", "keep-alive"),
        ("Keep-Alive", "timeout=300"),
        ("Trailer", "X-Checksum"),
        ("X-Kept", "yes"),
    ])
    assert r.status == 200
    echo = r.json()
    sent = {k.lower() for k, _ in echo["header_list"]}
    for name in ("x-secret", "x-other-secret", "te", "proxy-authorization", "proxy-connection", "keep-alive",
                 "trailer"):
        assert name not in sent, name
    assert "dXNlcjpwYXNz" not in r.body.decode()
    assert _values(echo, "X-Kept") == ["yes"]


def test_redirect_passed_through_not_followed(env):
    before = env.one.state["requests"]
    r = env.get("/pub/redirect")
    assert r.status == 302
    assert r.header("Location").endswith("/elsewhere")
    time.sleep(0.1)
    assert env.one.state["requests"] == before + 1


@pytest.mark.parametrize("accept_encoding", [None, "gzip"])
def test_gzip_passed_through_compressed(env, accept_encoding):
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    r = env.get("/pub/gzip", headers)
    assert r.status == 200
    assert r.header("Content-Encoding") == "gzip"
    assert r.body[:2] == b"\x1f\x8b"
    assert gzip.decompress(r.body) == b"hello compressed world"


def test_query_string_preserved(env):
    query = "a=1&b=two%20words&a=3&empty=&enc=%2F%3F%26&plus=x+y"
    echo = env.get("/pub/q?" + query).json()
    assert echo["uri"] == "/q?" + query
    assert echo["query"]["a"] == ["1", "3"]
    assert echo["query"]["b"] == ["two words"]
    assert echo["query"]["enc"] == ["/?&"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_methods_with_body_forwarded(env, method):
    body = os.urandom(1000)
    r = env.send(method, "/pub/m", {"Content-Type": "application/octet-stream"}, body)
    assert r.status == 200, r.body
    echo = r.json()
    assert echo["method"] == method
    assert echo["body_bytes"] == 1000
    assert _values(echo, "Content-Length") == ["1000"]


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "PROPFIND"])
def test_methods_without_body_forwarded(env, method):
    r = env.send(method, "/pub/m")
    assert r.status == 200
    assert r.json()["method"] == method
    assert r.json()["body_bytes"] == 0


def test_head(env):
    before = env.one.state["requests"]
    r = env.send("HEAD", "/pub/h", timeout=5)
    assert r.status == 200
    assert r.body == b""
    assert r.header("Content-Type") == "application/json"
    assert env.one.state["requests"] == before + 1
    assert env.get("/pub/after-head").status == 200


def test_chunked_upload_reaches_upstream_fully(env):
    piece = os.urandom(65536)
    count = 80  # 5 MB

    def chunks():
        for _ in range(count):
            yield piece
        yield b"tail"

    r = env.send("POST", "/pub/upload", {"Content-Type": "application/octet-stream"}, chunks(), chunked=True,
                 timeout=30)
    assert r.status == 200, r.body
    assert r.json()["body_bytes"] == count * len(piece) + 4


def test_round_robin_alternates(env):
    servers = [env.get("/rr/x").json()["server"] for _ in range(6)]
    assert sorted(servers) == ["one"] * 3 + ["two"] * 3
    assert all(a != b for a, b in zip(servers, servers[1:])), servers


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "DELETE"])
def test_failover_for_idempotent_requests_without_body(env, method):
    for _ in range(6):
        r = env.send(method, "/failover/x")
        assert r.status == 200, (method, r.status)
        if method != "HEAD":
            assert r.json()["server"] == "one"


def test_failover_never_replays_a_request_with_a_body(env):
    """POST (and any request with a body) is not retried: half of them meet the dead upstream first."""
    statuses = []
    for _ in range(6):
        r = env.send("POST", "/failover/x", body=b"payload")
        statuses.append(r.status)
        if r.status == 200:
            assert r.json()["body_bytes"] == len(b"payload")
    assert sorted(statuses) == [200] * 3 + [502] * 3, statuses
    statuses = [env.send("PUT", "/failover/x", body=b"payload").status for _ in range(4)]
    assert sorted(statuses) == [200] * 2 + [502] * 2, statuses


# --------------------------------------------------------------------------- streaming memory


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def _upload(url: str, path: str, total: int, piece: int = MB, method: str = "PUT") -> tuple[int, bytes]:
    """PUT (or ``method``) ``total`` generated bytes with Content-Length, one ``piece`` at a time."""
    conn = _connection(url, 30)
    block = b"\xab" * piece
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Length", str(total))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.endheaders()
        sent = 0
        while sent < total:
            n = min(piece, total - sent)
            conn.send(block if n == piece else block[:n])
            sent += n
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _download(url: str, path: str, *, method: str = "GET", body: Optional[bytes] = None,
              slow_bytes: int = 0, timeout: float = 10) -> tuple[int, int]:
    """Read the response in 256 KB reads, counting bytes; the first ``slow_bytes`` slowly (10 ms per read)."""
    conn = _connection(url, timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        received = 0
        while True:
            try:
                data = resp.read(256 * 1024)
            except TimeoutError:
                raise AssertionError(f"download stalled after {received} bytes") from None
            if not data:
                break
            received += len(data)
            if received < slow_bytes:
                time.sleep(0.01)
        return resp.status, received
    finally:
        conn.close()


@pytest.fixture(scope="module")
def big():
    """A dedicated gateway (and upstream) for the 300 MB transfers, so RSS measures only them."""
    up = Upstream("big").start()
    gw = GatewayProcess(f"""
server:
  shutdown_grace: 2s
routes:
  - name: big
    path: /
    upstream: {up.url}
    auth: public
    timeout: 60s
""")
    try:
        gw.start()
        yield gw, up
    finally:
        gw.stop()
        up.stop()


TOTAL = 300 * MB
RSS_LIMIT_KB = 100 * 1024


@pytest.mark.parametrize("method,path,status", [("POST", "/oauth2/sign_out", 302), ("GET", "/oauth2/auth", 200),
                                                ("GET", "/oauth2/userinfo", 401), ("POST", "/%6Fauth2/start", 405)])
def test_a_body_sent_to_the_gateways_own_endpoints_is_never_buffered(big, method, path, status):
    """64 MB to an endpoint that takes no body: read and dropped, so the process does not grow by it."""
    gw, up = big
    before = up.state["requests"]
    baseline = rss_kb(gw.proc.pid)
    with RSSSampler(gw.proc.pid, 0.005) as sampler:
        got, _ = _upload(gw.url, path, 64 * MB, method=method)
    assert got == status
    assert sampler.peak_kb - baseline < 16 * 1024, (baseline, sampler.peak_kb)
    assert up.state["requests"] == before  # none of it went upstream


def test_streaming_upload_300mb_in_bounded_memory(big):
    gw, up = big
    before = up.state["bytes_in"]
    with RSSSampler(gw.proc.pid, 0.005) as sampler:
        status, body = _upload(gw.url, "/upload", TOTAL)
    assert status == 200, body
    assert up.state["bytes_in"] - before == TOTAL
    assert json.loads(body)["body_bytes"] == TOTAL
    assert sampler.samples >= 3
    assert sampler.peak_kb < RSS_LIMIT_KB, f"peak RSS {sampler.peak_kb // 1024} MB"
    assert gw.alive()


def test_streaming_download_300mb_with_a_body_in_bounded_memory(big):
    """A request with a body takes the streaming-upload client path; the first 16 MB are read slowly."""
    gw, up = big
    with RSSSampler(gw.proc.pid, 0.005) as sampler:
        status, received = _download(gw.url, f"/stream?bytes={TOTAL}", method="POST", body=b"x",
                                     slow_bytes=16 * MB)
    assert status == 200
    assert received == TOTAL
    assert sampler.peak_kb < RSS_LIMIT_KB, f"peak RSS {sampler.peak_kb // 1024} MB"
    assert gw.alive()


def test_streaming_download_300mb_in_bounded_memory(big):
    """GET (no body): the keep-alive upstream client, paused and resumed. The first 16 MB are read slowly."""
    gw, up = big
    with RSSSampler(gw.proc.pid, 0.005) as sampler:
        status, received = _download(gw.url, f"/stream?bytes={TOTAL}", slow_bytes=16 * MB, timeout=5)
    assert status == 200
    assert received == TOTAL
    assert sampler.peak_kb < RSS_LIMIT_KB, f"peak RSS {sampler.peak_kb // 1024} MB"
    assert gw.alive()


def test_slow_reader_gets_the_whole_get_download(big):
    gw, up = big
    status, received = _download(gw.url, f"/stream?bytes={48 * MB}", slow_bytes=32 * MB, timeout=5)
    assert (status, received) == (200, 48 * MB)


@pytest.mark.parametrize("method, body", [("GET", None), ("POST", b"x")], ids=["keepalive-client", "upload-client"])
def test_slow_reader_download_is_back_pressured_not_buffered(method, body):
    """A client reading ~25 MB/s from a fast upstream: the gateway must hold at most its high-water mark.

    Both upstream client paths: without a request body (keep-alive client) and with one.
    """
    up = Upstream("slow-reader").start()
    gw = GatewayProcess(f"""
server:
  shutdown_grace: 2s
routes:
  - name: big
    path: /
    upstream: {up.url}
    auth: public
""")
    try:
        gw.start()
        assert _download(gw.url, f"/stream?bytes={4 * MB}") == (200, 4 * MB)  # warm up
        baseline = rss_kb(gw.proc.pid)
        total = 160 * MB
        with RSSSampler(gw.proc.pid, 0.005) as sampler:
            status, received = _download(gw.url, f"/stream?bytes={total}", method=method, body=body,
                                         slow_bytes=total)
        assert (status, received) == (200, total)
        growth_mb = (sampler.peak_kb - baseline) // 1024
        assert growth_mb < 32, f"RSS grew {growth_mb} MB above {baseline // 1024} MB while streaming to a slow reader"
        assert sampler.peak_kb < RSS_LIMIT_KB
    finally:
        gw.stop()
        up.stop()


# --------------------------------------------------------------------------- CLI: check / serve / GATEWAY_CONFIG


BAD_CONFIG = """\
server:
  listen: nonsense
tokens:
  - issuer: ci
    algorithms: [none]
    audience: any
    secret: short
routes:
  - name: a
    path: /a
    upstream: ftp://x
    auth: bogus
    tiemout: 5s
  - name: b
    path: /b
    upstream: ${MISSING_UPSTREAM_FOR_E2E_TEST}
"""
BAD_LINES = {2: "listen", 5: "none", 7: "secret", 11: "upstream", 12: "auth", 13: "tiemout",
             16: "MISSING_UPSTREAM_FOR_E2E_TEST"}

GOOD_CONFIG = """\
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
routes:
  - name: a
    path: /a
    upstream: http://127.0.0.1:9
    auth: public
"""


def _cli(args: list, *, cwd: str, env_extra: Optional[dict] = None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "MISSING_UPSTREAM_FOR_E2E_TEST")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def _assert_every_error(output: str, path: str) -> None:
    for line, word in BAD_LINES.items():
        matching = [l for l in output.splitlines() if l.startswith(f"{path}:{line}: ")]
        assert matching, f"no error for line {line}:\n{output}"
        assert word in matching[0], matching[0]
    lines = [l for l in output.splitlines() if re.match(re.escape(path) + r":\d+: ", l)]
    assert len(lines) >= len(BAD_LINES)


def test_check_prints_every_error_with_file_and_line_and_exits_1():
    d = tempfile.mkdtemp(prefix="gw-e2e-cli-")
    path = _write(d, "bad.yaml", BAD_CONFIG)
    result = _cli(["check", "-c", path], cwd=d)
    assert result.returncode == 1
    _assert_every_error(result.stdout + result.stderr, path)
    assert "Traceback" not in result.stderr


def test_check_good_config_exits_0():
    d = tempfile.mkdtemp(prefix="gw-e2e-cli-")
    path = _write(d, "good.yaml", GOOD_CONFIG)
    result = _cli(["check", "-c", path], cwd=d)
    assert result.returncode == 0, result.stderr


def test_serve_with_invalid_config_exits_1_without_starting():
    d = tempfile.mkdtemp(prefix="gw-e2e-cli-")
    path = _write(d, "bad.yaml", BAD_CONFIG)
    result = _cli(["serve", "-c", path, "--listen", "127.0.0.1:0", "--admin-listen", "off"], cwd=d)
    assert result.returncode == 1
    _assert_every_error(result.stdout + result.stderr, path)
    assert "listening" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_config_env_var_names_the_file():
    d = tempfile.mkdtemp(prefix="gw-e2e-cli-")
    bad = _write(d, "bad.yaml", BAD_CONFIG)
    good = _write(d, "good.yaml", GOOD_CONFIG)
    result = _cli(["check"], cwd=d, env_extra={"GATEWAY_CONFIG": bad})
    assert result.returncode == 1
    _assert_every_error(result.stdout + result.stderr, bad)
    result = _cli(["check"], cwd=d, env_extra={"GATEWAY_CONFIG": good})
    assert result.returncode == 0, result.stderr
    # and serve starts from it (no -c)
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env.update(GATEWAY_CONFIG=good, PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=d, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines: list = []

        def pump():
            for line in proc.stderr:  # type: ignore[union-attr]
                lines.append(line)

        threading.Thread(target=pump, daemon=True).start()
        wait_until(lambda: any("listening on" in l for l in lines), timeout=20)
        assert any(good in l for l in lines), lines
        url = re.search(r"listening on (http://\S+)", "".join(lines)).group(1)
        assert request(url, "GET", "/nothing-here").status == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_default_config_is_routes_yaml_in_the_working_directory():
    d = tempfile.mkdtemp(prefix="gw-e2e-cli-")
    _write(d, "routes.yaml", BAD_CONFIG)
    result = _cli(["check"], cwd=d)
    assert result.returncode == 1
    assert "routes.yaml:2: " in result.stderr + result.stdout


# --------------------------------------------------------------------------- SIGHUP and SIGTERM


def test_sighup_reload_adds_routes_and_keeps_the_old_config_when_invalid():
    up = Upstream("reload").start()
    base = f"""
routes:
  - name: a
    path: /a
    upstream: {up.url}
    auth: public
"""
    gw = GatewayProcess(base)
    try:
        gw.start()
        assert request(gw.url, "GET", "/a/x").status == 200
        assert request(gw.url, "GET", "/b/x").status == 404
        with open(gw.config_path, "w") as fh:
            fh.write(base + f"""
  - name: b
    path: /b
    upstream: {up.url}
    auth: public
""")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: any("reloaded (SIGHUP)" in l for l in gw.stderr_lines), timeout=10)
        r = request(gw.url, "GET", "/b/x")
        assert r.status == 200 and r.json()["path"] == "/b/x"

        with open(gw.config_path, "w") as fh:
            fh.write(base + "\n  - name: c\n    path: /c\n    upstream: ftp://nope\n    auth: bogus\n")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: any("SIGHUP" in l and "failed" in l for l in gw.stderr_lines), timeout=10)
        time.sleep(0.1)
        errors = [l for l in gw.stderr_lines if l.strip().startswith(gw.config_path + ":")]
        assert any("upstream" in l for l in errors), gw.stderr_lines
        assert any("auth" in l for l in errors), gw.stderr_lines
        assert all(re.search(re.escape(gw.config_path) + r":\d+: ", l) for l in errors), errors
        # the old config (with /b) keeps serving
        assert request(gw.url, "GET", "/a/x").status == 200
        assert request(gw.url, "GET", "/b/x").status == 200
        assert request(gw.url, "GET", "/c/x").status == 404
        assert gw.alive()
    finally:
        gw.stop()
        up.stop()


def test_config_file_change_reloads_without_a_signal():
    up = Upstream("watch").start()
    base = f"""
routes:
  - name: a
    path: /a
    upstream: {up.url}
    auth: public
"""
    gw = GatewayProcess(base)
    try:
        gw.start()
        assert request(gw.url, "GET", "/b/x").status == 404
        with open(gw.config_path, "w") as fh:
            fh.write(base + f"""
  - name: b
    path: /b
    upstream: {up.url}
    auth: public
""")
        wait_until(lambda: request(gw.url, "GET", "/b/x").status == 200, timeout=10, interval=0.2)
        assert request(gw.url, "GET", "/a/x").status == 200
    finally:
        gw.stop()
        up.stop()


def test_reload_does_not_claim_listen_addresses_changed():
    up = Upstream("reload-warn").start()
    base = f"""
routes:
  - name: a
    path: /a
    upstream: {up.url}
    auth: public
"""
    gw = GatewayProcess(base)
    try:
        gw.start()
        with open(gw.config_path, "w") as fh:
            fh.write(base + f"""
  - name: b
    path: /b
    upstream: {up.url}
    auth: public
""")
        gw.signal(signal.SIGHUP)
        wait_until(lambda: any("reloaded (SIGHUP)" in l for l in gw.stderr_lines), timeout=10)
        assert request(gw.url, "GET", "/b/x").status == 200
        assert not [l for l in gw.stderr_lines if "listen addresses changed" in l]
    finally:
        gw.stop()
        up.stop()


def test_sigterm_lets_in_flight_requests_finish_then_exits_0():
    up = Upstream("drain").start()
    gw = GatewayProcess(f"""
routes:
  - name: a
    path: /
    upstream: {up.url}
    auth: public
""")
    try:
        gw.start()
        result: dict = {}

        def slow():
            try:
                r = request(gw.url, "GET", "/slow?s=2", timeout=20)
                result["status"], result["body"] = r.status, r.json()
            except Exception as exc:  # pragma: no cover - reported below
                result["error"] = repr(exc)

        before = up.state["requests"]
        t = threading.Thread(target=slow)
        t.start()
        wait_until(lambda: up.state["requests"] > before, timeout=5)
        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            request(gw.url, "GET", "/x", timeout=2)
        t.join(15)
        assert result.get("status") == 200, result
        assert result["body"]["path"] == "/slow"
        assert gw.proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
    finally:
        gw.stop()
        up.stop()
