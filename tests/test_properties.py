"""Property tests over classes of hostile input, through the real parsing and token paths.

* Request heads (methods, targets, header names and values, framing) are sent
  as raw bytes to the REAL ``gateway serve``: every answer is a 4xx, a 401/403
  or the upstream's, never a 5xx from the gateway, never a traceback in the
  log, and the process keeps serving.
* Claim sets (types, sizes, nesting) are signed as bearer tokens and decided
  by the pipeline: ``Admitted`` or a 401/403, never an exception.

CI runs a bounded number of examples; ``GATEWAY_PROPERTY_EXAMPLES=5000 python -m
pytest tests/test_properties.py`` (or ``bench/properties.sh``) is the longer run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from gateway import pipeline
from gateway.answers import Refusal
from gateway.config import loads
from gateway.runtime import Runtime
from tests.support.e2e import request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import stop_gateway
from tests.support.upstream import Upstream

EXAMPLES = int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "150"))
SECRET = "property-test-secret-0123456789abcdefghij"
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 5))


def routes(upstream: str) -> str:
    return f"""
server:
  max_body_size: 1KB
  header_timeout: 2s
  body_timeout: 1s
tokens:
  - issuer: ci
    secret: "{SECRET}"
    algorithms: [HS256]
    audience: any
routes:
  - name: api
    path: /api
    upstream: {upstream}
    auth: token
    allow:
      - email_domain: example.com
  - name: pub
    path: /
    upstream: {upstream}
    auth: public
"""


@pytest.fixture(scope="module")
def gateway():
    up = Upstream("props").start()
    gw = GatewayProcess(routes(up.url))
    try:
        gw.start()
        wait_ready(gw.admin_url)
        yield gw
    finally:
        stop_gateway(gw)
        up.stop()


# -- request heads -----------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
                                     "PROPFIND", "get", "G\x00T", ""]),
                    st.text(TOKEN_CHARS, min_size=1, max_size=12))
segments = st.one_of(st.sampled_from(["", ".", "..", "%2e%2e", "%2F", "%5c", "%C0%AE", "%ff", "%", "%zz", "api", "oauth2",
                                      "%6Fauth2", "userinfo", ";x", "a b", "\\", "\x7f", "é", "?", "#", "*"]),
                      st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=8))
targets = st.one_of(st.lists(segments, max_size=5).map(lambda parts: "/" + "/".join(parts)),
                    st.sampled_from(["*", "http://evil.example/api", "//api", "api", "/%", "/" + "a" * 3000]))
header_names = st.one_of(st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Authorization", "Cookie",
                                          "Upgrade", "Connection", "Expect", "X-Forwarded-For", "X-Request-Id",
                                          "X-Forwarded-User", "Accept", "Content-Type", "Bad Name", "", "Hö"]),
                         st.text(TOKEN_CHARS, min_size=1, max_size=16))
header_values = st.one_of(st.sampled_from(["0", "10", "-1", "²", "1e3", " 5", "5, 5", "chunked", "gzip, chunked",
                                           "chunked, gzip", "Bearer x", "Bearer", "websocket", "close", "100-continue",
                                           "text/html", "\x00", "a\r\nInjected: 1", "é", "x" * 9000]),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40))
bodies = st.one_of(st.just(b""), st.binary(max_size=64), st.sampled_from([b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                                                                          b"-1\r\n", b"zz\r\n"]))
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 extra", "", "http/1.1"])


def raw_request(method: str, target: str, version: str, headers: list, body: bytes) -> bytes:
    line = f"{method} {target} {version}".rstrip() + "\r\n"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (line + head + "\r\n").encode("latin-1", "replace") + body


def exchange(gw: GatewayProcess, data: bytes) -> bytes:
    host, port = gw.url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and len(got) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return got


@given(method=methods, target=targets, version=versions,
       headers=st.lists(st.tuples(header_names, header_values), max_size=8), body=bodies,
       host=st.sampled_from([True, False]))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
def test_no_request_head_gets_a_5xx_or_a_traceback(gateway, method, target, version, headers, body, host):
    if host:
        headers = [("Host", "gw.test")] + headers
    got = exchange(gateway, raw_request(method, target, version, headers, body))
    if got.startswith(b"HTTP/1."):
        status = int(got.split(b" ", 2)[1])
        assert status < 500, got[:300]  # the upstream is up and answers 200: any 5xx is the gateway's
    assert not [line for line in gateway.stderr_lines if "Traceback" in line or "Uncaught exception" in line]


def test_the_gateway_still_serves_after_the_hostile_heads(gateway):
    assert request(gateway.url, "GET", "/alive").status == 200


# -- claim sets ---------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
              st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, 1e308, "false", "true", "", "x" * 5000])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
claim_names = st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "email", "email_verified", "groups",
                               "preferred_username", "nonce", "at_hash", "jti"])

_RT = Runtime(loads(routes("http://127.0.0.1:9"), env={}), SimpleAsyncHTTPClient(force_instance=True))


@given(st.dictionaries(claim_names, json_values, max_size=10), st.booleans())
@settings(max_examples=EXAMPLES * 2, deadline=None)
def test_no_claim_set_breaks_the_token_path(claims, sane_base):
    now = int(time.time())
    payload = {"iss": "ci", "sub": "alice", "exp": now + 600, "iat": now} if sane_base else {}
    payload.update(claims)
    try:
        raw = jwt.encode(payload, SECRET, algorithm="HS256")
    except (TypeError, ValueError, OverflowError):
        return  # not encodable as JSON: no client could send it
    h = HTTPHeaders({"Host": "gw.test", "Authorization": "Bearer " + raw})
    acc = pipeline.accept(pipeline.RequestHead("GET", "gw.test", "/api/x", "", h, peer="127.0.0.1"), _RT)
    out = asyncio.run(pipeline.admit(acc, _RT))
    if isinstance(out, pipeline.Admitted):
        assert out.identity is not None and isinstance(out.identity.sub, str) and out.identity.sub
        assert out.identity.email is None or out.identity.email.endswith("example.com")
    else:
        assert isinstance(out, Refusal) and out.status in (401, 403), out
