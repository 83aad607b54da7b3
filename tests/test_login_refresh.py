"""LoginManager's refresh policy, in-process, with an injected clock (no sleeps).

A plain OAuth 2.0 provider runs as a tornado application on 127.0.0.1 (no ID tokens to sign):
its token endpoint answers the code exchange, and answers refreshes the way each test sets
(new tokens, 400 with an empty body, an OAuth error, 5xx) while counting them. The session lives
in the cookie store; each test carries the cookies the way a browser would, applying every cookie
update an answer makes.

The policy under test: a refused refresh (any 4xx) ends the session; an unreachable provider keeps
it, retried with a doubling backoff (not on every request), but never past the access token's
expiry + ``session.refresh_grace``; a successful refresh clears the backoff.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncTestCase, bind_unused_port, gen_test
from tornado.web import Application, RequestHandler

from gateway.answers import CookieOp, Redirect
from gateway.config import loads
from gateway.discovery import DiscoveryCache
from gateway.jwks import JWKSRegistry
from gateway.login import RETRY_FIRST, RETRY_MAX, LoginManager

pytestmark = pytest.mark.timeout(30)

SECRET = "0123456789abcdef0123456789abcdef"
CLIENT_SECRET = "a+b/c=d:e%f&g?h-0123456789"
COOKIE = "_gwt"
ACCESS_TTL = 300.0  # the fake provider's access tokens; the gateway refreshes them in their last 60 s
GRACE = 60.0
DUE = ACCESS_TTL - 60.0  # seconds after sign-in at which the first refresh is due


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Provider:
    """The fake provider's state: how it answers refreshes, and what it was asked."""

    def __init__(self) -> None:
        self.refresh_answer: Tuple[int, Any] = (200, None)  # None: new tokens
        self.refreshes: List[Dict[str, str]] = []
        self.issued = 0

    def tokens(self) -> Dict[str, Any]:
        self.issued += 1
        return {"access_token": f"at-{self.issued}", "refresh_token": f"rt-{self.issued}",
                "token_type": "Bearer", "expires_in": int(ACCESS_TTL)}


class TokenHandler(RequestHandler):
    def initialize(self, provider: Provider) -> None:
        self.provider = provider

    def check_xsrf_cookie(self) -> None:
        pass

    def post(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode("ascii")).items()}
        if form.get("grant_type") == "authorization_code":
            return self.answer(200, self.provider.tokens())
        self.provider.refreshes.append(form)
        status, body = self.provider.refresh_answer
        self.answer(status, self.provider.tokens() if body is None else body)

    def answer(self, status: int, body: Any) -> None:
        self.set_status(status)
        if isinstance(body, bytes):
            if body:
                self.write(body)
            return
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))


class UserInfoHandler(RequestHandler):
    def get(self) -> None:
        self.write({"id": "u-1", "login": "alice", "mail": "alice@example.test"})


class Jar(dict):
    """A browser's cookies for the gateway."""

    def apply(self, ops: Tuple[CookieOp, ...]) -> None:
        for op in ops:
            if op.value is None:
                self.pop(op.name, None)
            else:
                self[op.name] = op.value

    def session_cookies(self) -> List[str]:
        return [n for n in self if n == COOKIE or (n.startswith(COOKIE + "_") and not n.startswith(COOKIE + "_login_"))]


class RefreshPolicyTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        sock, port = bind_unused_port()
        base = f"http://127.0.0.1:{port}"
        self.provider = Provider()
        app = Application([("/token", TokenHandler, {"provider": self.provider}), ("/me", UserInfoHandler)])
        self.server = HTTPServer(app)
        self.server.add_sockets([sock])
        self.config = loads(f"""\
server:
  public_url: http://127.0.0.1:8080
session:
  secret: {SECRET}
  cookie_name: {COOKIE}
  refresh_grace: {int(GRACE)}s
providers:
  legacy:
    type: oauth2
    authorization_endpoint: {base}/authorize
    token_endpoint: {base}/token
    userinfo_endpoint: {base}/me
    claims: {{sub: id, preferred_username: login, email: mail}}
    client_id: gw
    client_secret: "{CLIENT_SECRET}"
    scopes: [profile]
routes:
  - {{name: app, path: /app, upstream: "http://127.0.0.1:9", auth: login, providers: [legacy]}}
""")
        self.route = self.config.routes[0]
        self.http = AsyncHTTPClient(force_instance=True)
        self.jwks = JWKSRegistry(self.http)
        self.clock = Clock()
        self.login = LoginManager(self.config, self.http, self.jwks, DiscoveryCache(self.http), clock=self.clock)
        self.jar = Jar()

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.login.close)
        self.io_loop.run_sync(self.jwks.close)
        self.server.stop()
        self.io_loop.run_sync(self.server.close_all_connections)
        self.http.close()
        super().tearDown()

    # -- helpers -----------------------------------------------------------------

    async def sign_in(self) -> None:
        """The browser's round trip: /oauth2/start, the provider, /oauth2/callback."""
        start = await self.login.begin(self.route, self.jar, "/app")
        self.assertIsInstance(start, Redirect)
        self.jar.apply(start.cookies)
        state = parse_qs(urlsplit(start.location).query)["state"][0]
        done, sub = await self.login.finish({"code": "code-1", "state": state}, self.jar)
        self.assertIsInstance(done, Redirect, done)
        self.assertEqual((done.location, sub), ("/app", "u-1"))
        self.jar.apply(done.cookies)
        self.assertEqual(self.jar.session_cookies(), [COOKIE])
        self.signed_in = self.clock.now

    async def request(self) -> Optional[str]:
        """One request on the login route: the user it is for (None: no session), its cookie updates applied."""
        identity, ops = await self.login.load_identity(self.jar, self.route)
        self.jar.apply(ops)
        self.last_ops = ops
        return None if identity is None else identity.sub

    def at(self, seconds_after_sign_in: float) -> None:
        self.clock.now = self.signed_in + seconds_after_sign_in

    @property
    def calls(self) -> int:
        return len(self.provider.refreshes)

    # -- before anything is due ------------------------------------------------------

    @gen_test(timeout=10)
    async def test_no_refresh_before_it_is_due(self):
        await self.sign_in()
        self.at(DUE - 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual((self.calls, self.last_ops), (0, ()))

    @gen_test(timeout=10)
    async def test_a_due_refresh_renews_the_tokens_and_the_cookie(self):
        await self.sign_in()
        before = self.jar[COOKIE]
        self.at(DUE + 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.provider.refreshes, [{"grant_type": "refresh_token", "refresh_token": "rt-1"}])
        self.assertNotEqual(self.jar[COOKIE], before)  # the renewed session went back into the cookie
        # the new token is good for ACCESS_TTL from now: nothing more until it is due again
        self.at(DUE + 1 + DUE - 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 1)
        self.at(DUE + 1 + DUE + 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.provider.refreshes[-1]["refresh_token"], "rt-2")  # the rotated one

    # -- refused: the session ends ---------------------------------------------------

    async def assert_refusal_ends_the_session(self, status: int, body: Any) -> None:
        await self.sign_in()
        self.provider.refresh_answer = (status, body)
        self.at(ACCESS_TTL + 5)  # expired
        self.assertIsNone(await self.request())
        self.assertEqual(self.calls, 1)
        self.assertIn(CookieOp(COOKIE), self.last_ops)  # the session cookie is cleared
        self.assertEqual(self.jar.session_cookies(), [])
        # the browser has no session now: nothing more is tried at the provider
        self.assertIsNone(await self.request())
        self.assertEqual(self.calls, 1)

    @gen_test(timeout=10)
    async def test_refresh_refused_with_400_and_an_empty_body_ends_the_session(self):
        await self.assert_refusal_ends_the_session(400, b"")

    @gen_test(timeout=10)
    async def test_refresh_refused_with_invalid_request_ends_the_session(self):
        await self.assert_refusal_ends_the_session(400, {"error": "invalid_request"})

    @gen_test(timeout=10)
    async def test_refresh_refused_with_invalid_grant_ends_the_session(self):
        await self.assert_refusal_ends_the_session(400, {"error": "invalid_grant",
                                                         "error_description": "Token is not active"})

    @gen_test(timeout=10)
    async def test_refresh_refused_with_401_invalid_client_ends_the_session(self):
        await self.assert_refusal_ends_the_session(401, {"error": "invalid_client"})

    @gen_test(timeout=10)
    async def test_a_refusal_before_expiry_ends_the_session_too(self):
        await self.sign_in()
        self.provider.refresh_answer = (400, {"error": "invalid_grant"})
        self.at(DUE + 1)  # due, not yet expired
        self.assertIsNone(await self.request())
        self.assertEqual(self.jar.session_cookies(), [])

    @gen_test(timeout=10)
    async def test_an_old_copy_of_the_cookie_is_refused_again(self):
        await self.sign_in()
        old = dict(self.jar)
        self.provider.refresh_answer = (400, {"error": "invalid_grant"})
        self.at(ACCESS_TTL + 5)
        self.assertIsNone(await self.request())
        self.jar = Jar(old)  # a tab (or anyone) that kept the cookie: the session stays ended ...
        self.assertIsNone(await self.request())
        self.assertEqual(self.calls, 1)  # ... without asking the provider again

    # -- unavailable: kept, with backoff, within the grace ------------------------------------

    @gen_test(timeout=10)
    async def test_5xx_keeps_the_session_and_backs_off(self):
        await self.sign_in()
        self.provider.refresh_answer = (503, b"")
        self.at(DUE + 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 1)
        self.assertEqual(self.last_ops, ())  # the session is kept as it is
        # more requests during the backoff: the token endpoint is not asked again
        for _ in range(5):
            self.assertEqual(await self.request(), "u-1")
        self.at(DUE + 1 + RETRY_FIRST - 0.1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 1)
        # once the backoff has passed: one more try
        self.at(DUE + 1 + RETRY_FIRST + 0.1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 2)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 2)

    @gen_test(timeout=10)
    async def test_the_backoff_doubles_up_to_its_maximum(self):
        await self.sign_in()
        self.provider.refresh_answer = (500, {"error": "server_error"})
        t = DUE + 1
        self.at(t)
        self.assertEqual(await self.request(), "u-1")
        delay = RETRY_FIRST
        waits = []
        while t + delay < ACCESS_TTL + GRACE:
            self.at(t + delay - 0.05)
            await self.request()
            self.assertEqual(self.calls, len(waits) + 1, f"asked again before the {delay} s backoff")
            t += delay
            self.at(t + 0.01)
            self.assertEqual(await self.request(), "u-1")
            waits.append(delay)
            self.assertEqual(self.calls, len(waits) + 1)
            delay = min(delay * 2, RETRY_MAX)
        self.assertEqual(waits[:4], [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4, RETRY_FIRST * 8])

    @gen_test(timeout=10)
    async def test_the_session_works_past_expiry_within_the_grace(self):
        await self.sign_in()
        self.provider.refresh_answer = (502, b"bad gateway")
        self.at(ACCESS_TTL + GRACE - 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 1)

    @gen_test(timeout=10)
    async def test_past_expiry_plus_grace_while_down_the_session_ends(self):
        await self.sign_in()
        self.provider.refresh_answer = (503, b"")
        self.at(DUE + 1)
        self.assertEqual(await self.request(), "u-1")
        # the retry is due and fails again, now past the grace: the session ends
        self.at(ACCESS_TTL + GRACE + 1)
        self.assertIsNone(await self.request())
        self.assertEqual(self.calls, 2)
        self.assertIn(CookieOp(COOKIE), self.last_ops)
        self.assertEqual(self.jar.session_cookies(), [])

    @gen_test(timeout=10)
    async def test_past_the_grace_during_a_backoff_the_session_ends_without_asking(self):
        await self.sign_in()
        self.provider.refresh_answer = (503, b"")
        t = DUE + 1
        self.at(t)
        await self.request()
        # fail until the next retry would come after the end of the grace
        delay = RETRY_FIRST
        while t + delay <= ACCESS_TTL + GRACE:
            t += delay
            self.at(t)
            self.assertEqual(await self.request(), "u-1")
            delay = min(delay * 2, RETRY_MAX)
        calls = self.calls
        self.at(ACCESS_TTL + GRACE + 0.5)
        self.assertLess(ACCESS_TTL + GRACE + 0.5, t + delay, "still inside the backoff")
        self.assertIsNone(await self.request())
        self.assertEqual(self.calls, calls, "the session ended without another try")
        self.assertEqual(self.jar.session_cookies(), [])

    @gen_test(timeout=10)
    async def test_an_unreachable_provider_is_unavailable_too(self):
        await self.sign_in()
        self.server.stop()
        await self.server.close_all_connections()
        self.at(DUE + 1)
        self.assertEqual(await self.request(), "u-1")
        self.at(ACCESS_TTL + GRACE + 1)
        self.assertIsNone(await self.request())

    # -- recovery -------------------------------------------------------------------

    @gen_test(timeout=10)
    async def test_a_successful_refresh_after_a_failure_clears_the_backoff(self):
        await self.sign_in()
        self.provider.refresh_answer = (503, b"")
        self.at(DUE + 1)
        await self.request()
        self.at(DUE + 1 + RETRY_FIRST + 0.1)
        await self.request()  # second failure: the next wait would be 2 * RETRY_FIRST
        self.assertEqual(self.calls, 2)
        self.provider.refresh_answer = (200, None)
        renewed_at = DUE + 1 + RETRY_FIRST + 0.1 + RETRY_FIRST * 2 + 0.1
        self.at(renewed_at)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 3)
        self.assertIn(COOKIE, {op.name for op in self.last_ops if op.value is not None})
        self.assertEqual(self.provider.refreshes[-1]["refresh_token"], "rt-1")
        # the renewed token is not refreshed again until it is due
        self.at(renewed_at + DUE - 1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 3)
        # the provider goes down again: the backoff starts over at RETRY_FIRST, not where it was
        self.provider.refresh_answer = (503, b"")
        t = renewed_at + DUE + 1
        self.at(t)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 4)
        self.assertEqual(self.provider.refreshes[-1]["refresh_token"], "rt-2")  # the renewed session's
        self.at(t + RETRY_FIRST + 0.1)
        self.assertEqual(await self.request(), "u-1")
        self.assertEqual(self.calls, 5)
        # and the grace is counted from the renewed token's expiry, not the first one's
        self.at(renewed_at + ACCESS_TTL + GRACE - 1)
        self.assertEqual(await self.request(), "u-1")
