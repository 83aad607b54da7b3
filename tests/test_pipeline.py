"""Tests for gateway.pipeline: the request path's decisions, table-driven, without sockets.

A ``Runtime`` is compiled from a real config (HS256 issuer, no network
needed); each case builds a ``RequestHead`` and asserts what the pipeline
returns: ``Admitted`` with its plan, an ``OwnEndpoint`` or the answer.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from gateway import pipeline
from gateway.answers import Empty, Refusal
from gateway.config import loads
from gateway.forwarding import UpstreamError
from gateway.pipeline import Admitted, OwnEndpoint, RequestHead
from gateway.routing import Match
from gateway.runtime import Gateway, Runtime

SECRET = "pipeline-test-secret-0123456789abcdefghij"
CONFIG = f"""
server:
  listen: 127.0.0.1:8080
  admin_listen: "off"
tokens:
  - issuer: ci
    secret: "{SECRET}"
    algorithms: [HS256]
    audience: any
routes:
  - name: api
    path: /api
    upstream: http://127.0.0.1:9000
    auth: token
    strip_prefix: true
    max_body_size: 1KB
    allow:
      - sub: alice
  - name: corp
    path: /corp
    upstream: http://127.0.0.1:9000
    auth: token
    allow:
      - email_domain: example.com
  - name: ro
    path: /ro
    upstream: http://127.0.0.1:9000
    auth: public
    methods: [GET]
    websocket: false
  - name: site
    path: /
    upstream: http://127.0.0.1:9001
    auth: public
"""


def token(sub: str = "alice", **claims) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "ci", "sub": sub, "iat": now, "exp": now + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def runtime():
    client = SimpleAsyncHTTPClient(force_instance=True)
    rt = Runtime(loads(CONFIG, env={}), client)
    yield rt
    client.close()


def head(path: str = "/", method: str = "GET", host: str = "gw.test", query: str = "", **headers: str) -> RequestHead:
    h = HTTPHeaders()
    for name, value in headers.items():
        h.add(name.replace("_", "-"), value)
    return RequestHead(method, host, path, query, h, peer="127.0.0.1")


def run(coro):
    return asyncio.run(coro)


def decide(rt, h: RequestHead):
    acc = pipeline.accept(h, rt)
    return acc, run(pipeline.admit(acc, rt))


# -- route: the gateway's own endpoints on the normalised path ---------------------------

OWN = [
    ("/oauth2/userinfo", "userinfo"),
    ("/%6Fauth2/userinfo", "userinfo"),
    ("/%6f%61uth2/auth", "auth"),
    ("//oauth2/userinfo", "userinfo"),
    ("/oauth2//auth", "auth"),
    ("/x/../oauth2/sign_out", "sign_out"),
    ("/./oauth2/start", "start"),
    ("/oauth2/callback/", "callback"),
    ("/oauth2/%73ign_out", "sign_out"),
]


@pytest.mark.parametrize("path,name", OWN)
def test_own_endpoints_are_found_on_the_normalised_path(runtime, path, name):
    acc = pipeline.accept(head(path), runtime)
    assert pipeline.route(acc, runtime) == OwnEndpoint(name)


@pytest.mark.parametrize("path", ["/oauth2", "/oauth2/", "/oauth2/nope", "/%6Fauth2/x/y"])
def test_unknown_paths_under_oauth2_are_404_never_an_upstream(runtime, path):
    acc = pipeline.accept(head(path), runtime)
    found = pipeline.route(acc, runtime)
    assert isinstance(found, Refusal) and found.status == 404


@given(st.lists(st.sampled_from(["", ".", "x", "..", "oauth2", "%6Fauth2", "%6fauth2", "a", "userinfo"]),
                min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_no_spelling_of_oauth2_reaches_a_route(segments):
    rt = _RT
    path = "/" + "/".join(segments)
    acc = pipeline.accept(head(path), rt)
    found = pipeline.route(acc, rt)
    try:
        normal = pipeline.normalize_path(path)
    except Exception:
        assert isinstance(found, Refusal) and found.status == 400
        return
    if normal == "/oauth2" or normal.startswith("/oauth2/"):
        assert not isinstance(found, Match), (path, found)


_RT = Runtime(loads(CONFIG, env={}), SimpleAsyncHTTPClient(force_instance=True))


ROUTE_REFUSALS = [
    (dict(host="bad host"), 400, "bad Host header"),
    (dict(host="a:b:c"), 400, "bad Host header"),
    (dict(path="/a%2Fb"), 400, "bad path"),
    (dict(path="/a;jsessionid=1"), 400, "bad path"),
    (dict(path="/../etc"), 400, "bad path"),
    (dict(path="/%C0%AE%C0%AE/etc"), 400, "bad path: invalid UTF-8"),
    (dict(path="/docs/%E0%80%AE"), 400, "bad path: invalid UTF-8"),
    (dict(host="secure.example.."), 400, "bad Host header"),
    (dict(host=".example"), 400, "bad Host header"),
    (dict(path="/ro/x", method="POST"), 405, "method POST not allowed here"),
]


@pytest.mark.parametrize("kwargs,status,reason", ROUTE_REFUSALS)
def test_route_refusals(runtime, kwargs, status, reason):
    acc = pipeline.accept(head(**kwargs), runtime)
    found = pipeline.route(acc, runtime)
    assert isinstance(found, Refusal) and found.status == status and found.reason.startswith(reason)


def test_405_names_the_allowed_methods(runtime):
    acc = pipeline.accept(head("/ro/x", method="DELETE"), runtime)
    found = pipeline.route(acc, runtime)
    assert dict(found.headers) == {"Allow": "GET, HEAD"}


# -- admit: authenticate, authorize, plan -------------------------------------------------


def test_public_route_is_admitted_at_once_with_a_plan(runtime):
    acc = pipeline.accept(head("/docs/a", query="q=1", X_Forwarded_User="mallory"), runtime)
    found = pipeline.route(acc, runtime)
    out = pipeline.admit_now(acc, runtime, found)
    assert isinstance(out, Admitted) and out.identity is None and out.route.name == "site"
    assert out.plan.path_and_query == "/docs/a?q=1" and not out.plan.has_body
    names = [n.lower() for n, _ in out.plan.headers]
    assert "x-forwarded-user" not in names  # a client's identity header never passes
    assert ("X-Request-Id", acc.request_id) in out.plan.headers
    assert acc.scope.route == "site"


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "", "Bearer"])
def test_token_route_without_a_bearer_token_is_a_bare_401(runtime, authorization):
    h = head("/api/x") if authorization is None else head("/api/x", Authorization=authorization)
    _, out = decide(runtime, h)
    assert isinstance(out, Refusal) and out.status == 401
    assert out.reason == ("no credentials" if authorization != "Bearer" else "invalid token: malformed")


def test_token_route_without_a_token_needs_the_full_path_then_is_401(runtime):
    acc = pipeline.accept(head("/api/x"), runtime)
    assert pipeline.admit_now(acc, runtime, pipeline.route(acc, runtime)) is None
    _, out = decide(runtime, head("/api/x"))
    assert isinstance(out, Refusal) and out.status == 401
    assert dict(out.headers)["WWW-Authenticate"] == 'Bearer realm="gateway"'


@pytest.mark.parametrize("authorization,reason", [
    ("Bearer not-a-jwt", "invalid token"),
    ("Bearer a b", "invalid token"),
    (f"Bearer {jwt.encode({'iss': 'ci', 'sub': 'alice', 'exp': 1}, SECRET, algorithm='HS256')}", "invalid token"),
    (f"Bearer {jwt.encode({'iss': 'ci', 'sub': 'alice', 'exp': 10 ** 40}, 'another-secret-0123456789abcdefghijkl', algorithm='HS256')}",
     "invalid token"),
])
def test_bad_tokens_are_401_invalid_token(runtime, authorization, reason):
    acc, out = decide(runtime, head("/api/x", Authorization=authorization))
    assert isinstance(out, Refusal) and out.status == 401 and out.reason.startswith(reason)
    assert 'error="invalid_token"' in dict(out.headers)["WWW-Authenticate"]
    assert acc.scope.failure is not None


def test_valid_token_is_admitted_with_identity_and_strip_prefix(runtime):
    acc, out = decide(runtime, head("/api/v1/x", Authorization="Bearer " + token("alice")))
    assert isinstance(out, Admitted) and out.identity.sub == "alice"
    assert out.plan.path_and_query == "/v1/x"
    assert ("X-Forwarded-User", "alice") in out.plan.headers
    assert acc.scope.user == "alice"


def test_cached_token_is_admitted_now(runtime):
    raw = token("alice", jti="cached")
    decide(runtime, head("/api/x", Authorization="Bearer " + raw))
    acc = pipeline.accept(head("/api/x", Authorization="Bearer " + raw), runtime)
    out = pipeline.admit_now(acc, runtime, pipeline.route(acc, runtime))
    assert isinstance(out, Admitted) and out.identity.sub == "alice"


def test_forbidden_is_403_and_counts_as_forbidden(runtime):
    acc, out = decide(runtime, head("/api/x", Authorization="Bearer " + token("bob")))
    assert isinstance(out, Refusal) and out.status == 403
    assert acc.scope.failure == "forbidden"
    # a token, not a session: nobody is "signed in" and there is no sign-out link
    assert out.signed_in_as == "" and out.sign_out_url == "" and "token" in out.description


@pytest.mark.parametrize("length,status", [("2000", 413), ("²", 400), ("1e3", 400), ("-1", 400), ("", 400), ("+5", 400), ("0x10", 400)])
def test_bodies_over_the_limit_or_malformed_lengths_are_refused(runtime, length, status):
    acc, out = decide(runtime, head("/api/x", method="POST", Authorization="Bearer " + token(), Content_Length=length))
    assert isinstance(out, Refusal) and out.status == status


def test_chunked_body_is_planned_as_streamed(runtime):
    _, out = decide(runtime, head("/api/x", method="POST", Authorization="Bearer " + token(),
                                  Transfer_Encoding="chunked"))
    assert isinstance(out, Admitted) and out.plan.has_body and out.plan.content_length is None


def test_websocket_on_a_route_that_disables_it_is_403(runtime):
    acc = pipeline.accept(head("/ro/live"), runtime)
    out = run(pipeline.admit(acc, runtime, websocket=True))
    assert isinstance(out, Refusal) and out.status == 403
    acc = pipeline.accept(head("/live"), runtime)
    assert isinstance(run(pipeline.admit(acc, runtime, websocket=True)), Admitted)  # allowed by default


@pytest.mark.parametrize("verified,admitted", [(True, True), ("true", True), (None, True), (False, False),
                                               ("false", False), ("FALSE", False)])
def test_unverified_email_in_a_bearer_token_is_no_identity(runtime, verified, admitted):
    extra = {"email": "eve@example.com"}
    if verified is not None:
        extra["email_verified"] = verified
    acc, out = decide(runtime, head("/corp/x", Authorization="Bearer " + token("eve", **extra)))
    assert isinstance(out, Admitted) is admitted, out
    if admitted:
        assert ("X-Forwarded-Email", "eve@example.com") in out.plan.headers
    else:
        assert out.status == 403


def test_issuer_may_allow_unverified_email():
    config = CONFIG.replace("    audience: any\n", "    audience: any\n    allow_unverified_email: true\n", 1)
    rt = Runtime(loads(config, env={}), SimpleAsyncHTTPClient(force_instance=True))
    _, out = decide(rt, head("/corp/x", Authorization="Bearer " + token("eve", email="eve@example.com",
                                                                        email_verified=False)))
    assert isinstance(out, Admitted) and out.identity.email == "eve@example.com"


# -- forward-auth --------------------------------------------------------------------


def test_forward_auth_public_token_and_refusals(runtime):
    acc = pipeline.accept(head("/oauth2/auth", X_Forwarded_Host="gw.test", X_Forwarded_Uri="/docs"), runtime)
    assert run(pipeline.forward_auth(acc, runtime)) == Empty(200)

    acc = pipeline.accept(head("/oauth2/auth", X_Forwarded_Uri="/api/x", Authorization="Bearer " + token()), runtime)
    out = run(pipeline.forward_auth(acc, runtime))
    assert isinstance(out, Empty) and dict(out.headers)["X-Auth-Request-User"] == "alice"

    acc = pipeline.accept(head("/oauth2/auth", X_Forwarded_Uri="/api/x"), runtime)
    out = run(pipeline.forward_auth(acc, runtime))
    assert isinstance(out, Refusal) and out.status == 401

    acc = pipeline.accept(head("/oauth2/auth", X_Forwarded_Uri="/api/x", Authorization="Bearer " + token("bob")),
                          runtime)
    assert run(pipeline.forward_auth(acc, runtime)).status == 403

    acc = pipeline.accept(head("/oauth2/auth", X_Forwarded_Uri="/a%2Fb"), runtime)
    assert run(pipeline.forward_auth(acc, runtime)).status == 403


# -- after the exchange ---------------------------------------------------------------


def test_upstream_failure_is_an_answer_only_while_nothing_was_sent(runtime, caplog):
    gateway = Gateway(loads(CONFIG, env={}))
    try:
        acc = pipeline.accept(head("/docs"), runtime)
        out = pipeline.upstream_failed(gateway, acc.scope, UpstreamError("timeout", "slow"), "http://u", False)
        assert isinstance(out, Refusal) and out.status == 504
        assert pipeline.upstream_failed(gateway, acc.scope, UpstreamError("reset", "rst"), "http://u", True) is None
        assert acc.scope.reason == "upstream reset mid-response"
        assert sum("upstream timeout" in r.getMessage() for r in caplog.records) == 1
    finally:
        run(gateway.close())


def test_shutdown_answer_says_when_to_retry_and_closes():
    assert pipeline.SHUTDOWN.status == 503
    assert dict(pipeline.SHUTDOWN.headers) == {"Connection": "close", "Retry-After": "1"}


# -- cookies ------------------------------------------------------------------------------


@given(st.lists(st.text(max_size=30), max_size=4))
@settings(max_examples=200, deadline=None)
def test_cookie_headers_never_raise(values):
    assert isinstance(pipeline.parse_cookies(values), dict)


def test_websocket_origins_of_a_session():
    config = CONFIG.replace("    websocket: false\n", "    websocket_origins: [https://App.example.com]\n", 1)
    rt = Runtime(loads(config, env={}), SimpleAsyncHTTPClient(force_instance=True))
    acc = pipeline.accept(head("/ro/x", host="gw.test"), rt)
    r = pipeline.route(acc, rt).route
    assert r.websocket_origins == ("https://app.example.com",)
    allowed = lambda origin: pipeline.websocket_origin_allowed(acc, r, rt, origin)  # noqa: E731
    assert allowed("http://gw.test") and allowed("https://app.example.com") and allowed(None)
    assert not allowed("https://evil.example") and not allowed("http://gw.test.evil.example")


@pytest.mark.parametrize("value", ["[https://a.example/path]", "[a.example]", "[ftp://a.example]", "https://x"])
def test_websocket_origins_must_be_origins(value):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        loads(CONFIG.replace("    websocket: false\n", f"    websocket_origins: {value}\n", 1), env={})
    assert "websocket_origins" in caught.value.errors[0]
