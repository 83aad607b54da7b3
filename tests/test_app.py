"""In-process tests of the proxy-port application (``gateway.app.make_app``), with tornado.testing.

The gateway runs in the test's own IOLoop in front of a real Tornado upstream
on loopback, so the adapters (fast delegate, handlers) are exercised without
a subprocess: the gateway's own endpoints on every path spelling, one answer
for shutdown and upstream errors whichever path a request took.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncHTTPTestCase, ExpectLog, bind_unused_port, gen_test

from gateway.app import make_app
from gateway.config import loads
from gateway.runtime import Gateway


class Upstream(web.RequestHandler):
    hits: list = []

    async def get(self, *args: str) -> None:
        Upstream.hits.append(self.request.path)
        if self.request.path.startswith("/slow"):
            await asyncio.sleep(5)
        if self.request.path.startswith("/set-cookie"):
            for value in ("_gateway_session=fixed; Path=/", "_gateway_session_1=x", "_gateway_session_login_a=",
                          "app=1; Path=/"):
                self.add_header("Set-Cookie", value)
        self.write({"path": self.request.path, "headers": dict(self.request.headers.get_all())})

    post = get


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class GatewayAppTest(AsyncHTTPTestCase):
    def setUp(self) -> None:
        Upstream.hits = []
        super().setUp()

    def get_app(self) -> web.Application:
        sock, port = bind_unused_port()
        self.upstream = HTTPServer(web.Application([(r"/.*", Upstream)]))
        self.upstream.add_sockets([sock])
        config = loads(f"""
server:
  listen: 127.0.0.1:8080
  admin_listen: "off"
routes:
  - name: dead
    path: /dead
    upstream: http://127.0.0.1:{closed_port()}
    auth: public
  - name: site
    path: /
    upstream: http://127.0.0.1:{port}
    auth: public
""", env={})
        self.log = io.StringIO()
        self.gateway = Gateway(config, log_stream=self.log)
        return make_app(self.gateway)

    def tearDown(self) -> None:
        self.upstream.stop()
        self.io_loop.run_sync(self.gateway.close)
        super().tearDown()

    def access_log(self) -> list:
        self.io_loop.run_sync(lambda: asyncio.sleep(0.06))  # the access log flushes in batches
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def test_public_route_is_proxied(self) -> None:
        resp = self.fetch("/docs?x=1")
        assert resp.code == 200 and json.loads(resp.body)["path"] == "/docs"
        assert self.access_log()[-1]["route"] == "site"

    def test_upstream_cannot_set_the_gateways_own_cookies_on_either_path(self) -> None:
        for method, body in (("GET", None), ("POST", b"x")):
            with ExpectLog("gateway.proxy", "dropped an upstream Set-Cookie for the gateway's own cookie"):
                resp = self.fetch("/set-cookie", method=method, body=body)
            assert resp.code == 200
            assert resp.headers.get_list("Set-Cookie") == ["app=1; Path=/"], method

    def test_client_sent_address_headers_never_reach_the_upstream(self) -> None:
        sent = {"True-Client-IP": "1.1.1.1", "CF-Connecting-IP": "1.1.1.1", "X-Client-IP": "1.1.1.1",
                "Fastly-Client-IP": "1.1.1.1", "X-Cluster-Client-IP": "1.1.1.1", "Client-IP": "1.1.1.1"}
        seen = json.loads(self.fetch("/echo", headers=sent).body)["headers"]
        assert not set(sent) & set(seen), seen
        assert seen["X-Forwarded-For"] == "127.0.0.1"

    def test_every_spelling_of_oauth2_reaches_the_gateway_not_the_upstream(self) -> None:
        for path in ["/oauth2/userinfo", "/%6Fauth2/userinfo", "//oauth2/userinfo", "/x/../oauth2/userinfo",
                     "/oauth2/%75serinfo"]:
            resp = self.fetch(path)
            assert resp.code == 401, path
            assert json.loads(resp.body)["error"] == "unauthorized", path
        for path in ["/oauth2/nope", "/%6Fauth2/", "//oauth2"]:
            assert self.fetch(path).code == 404, path
        assert Upstream.hits == []

    def test_own_endpoint_with_a_body_is_answered_without_keeping_it(self) -> None:
        resp = self.fetch("/%6Fauth2/sign_out", method="POST", body=b"x" * 100_000, follow_redirects=False)
        assert resp.code == 302 and resp.headers["Location"] == "/"
        assert Upstream.hits == []

    def test_refusals_on_the_fast_path_and_the_handler_path_are_the_same_answer(self) -> None:
        fast = self.fetch("/a%2Fb")
        slow = self.fetch("/a%2Fb", method="POST", body=b"data")
        assert fast.code == slow.code == 400
        assert fast.body == slow.body
        for name in ("Content-Type", "Cache-Control"):
            assert fast.headers[name] == slow.headers[name]

    def test_upstream_refused_is_502_and_logged_on_the_fast_path_too(self) -> None:
        with ExpectLog("gateway", "upstream connect for route dead"):
            resp = self.fetch("/dead/x")
        assert resp.code == 502
        with ExpectLog("gateway", "upstream connect for route dead"):
            resp = self.fetch("/dead/x", method="POST", body=b"x")
        assert resp.code == 502
        assert [e["status"] for e in self.access_log()] == [502, 502]

    @gen_test(timeout=10)
    async def test_shutdown_cut_is_503_with_retry_after_and_close_on_the_fast_path(self) -> None:
        request = self.http_client.fetch(self.get_url("/slow/x"), raise_error=False)
        while not Upstream.hits:
            await asyncio.sleep(0.01)
        assert len(self.gateway.active) == 1
        for adapter in list(self.gateway.active):
            adapter.cut_for_shutdown()
        resp = await request
        assert resp.code == 503
        assert resp.headers["Retry-After"] == "1" and resp.headers["Connection"] == "close"

    @gen_test(timeout=10)
    async def test_shutdown_cut_is_the_same_on_the_handler_path(self) -> None:
        request = self.http_client.fetch(self.get_url("/slow/x"), method="POST", body=b"x", raise_error=False)
        while not Upstream.hits:
            await asyncio.sleep(0.01)
        for adapter in list(self.gateway.active):
            adapter.cut_for_shutdown()
        resp = await request
        assert resp.code == 503
        assert resp.headers["Retry-After"] == "1" and resp.headers["Connection"] == "close"


def test_403_page_for_a_bearer_token_does_not_say_signed_in():
    from gateway.answers import Refusal
    from gateway.pages import render

    from gateway import pipeline

    class _Ident:
        source, sub, email, preferred_username = "token", "bob", None, None

    class _Acc:
        head = type("H", (), {"method": "GET", "uri": "/x"})()
        scope = type("S", (), {"failure": None})()

    refusal = pipeline.forbidden(_Acc(), type("R", (), {"name": "r"})(), _Ident(), "no rule")  # type: ignore[arg-type]
    page = render(refusal, browser=True, request_id="r").body.decode()
    assert isinstance(refusal, Refusal) and refusal.status == 403
    assert "signed in" not in page.lower() and "Sign out" not in page
    assert "token you sent" in page
