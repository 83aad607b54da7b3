"""gateway.providers.OAuth2Client (plain OAuth 2.0, ``type: oauth2``) over real HTTP on loopback.

A small tornado application plays the provider in-process on 127.0.0.1: a token endpoint and a
userinfo endpoint that record what they were sent and answer what the test sets. Nothing mocks the
HTTP client.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncTestCase, bind_unused_port, gen_test
from tornado.web import Application, RequestHandler

from gateway.config import ProviderConfig
from gateway.providers import (InvalidGrant, OAuth2Client, ProviderError, ProviderUnavailable, TokenRefused,
                               make_client, new_pkce)
from gateway.discovery import DiscoveryCache
from gateway.jwks import JWKSRegistry

pytestmark = pytest.mark.timeout(20)

CLIENT_ID = "gw:client+1"
CLIENT_SECRET = "a+b/c=d:e%f&g?h-0123456789"  # every character form-encoding must protect
REDIRECT = "http://127.0.0.1:8080/oauth2/callback"
NOW = 1_700_000_000.0


class FakeProvider:
    """What the endpoints answer and what they were sent."""

    def __init__(self) -> None:
        self.token_requests: List[Dict[str, Any]] = []
        self.userinfo_requests: List[Dict[str, str]] = []
        self.userinfo_uris: List[str] = []
        self.token_answer: Tuple[int, Any] = (200, {"access_token": "at-1", "token_type": "bearer",
                                                    "expires_in": 3600, "refresh_token": "rt-1", "scope": "profile"})
        self.userinfo_answer: Tuple[int, Any] = (200, {"id": 4711, "login": "jdoe", "mail": "jdoe@corp.example"})


class TokenHandler(RequestHandler):
    def initialize(self, fake: FakeProvider) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        pass

    def post(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode("ascii"), keep_blank_values=True).items()}
        self.fake.token_requests.append({"headers": dict(self.request.headers), "form": form,
                                         "content_type": self.request.headers.get("Content-Type", "")})
        answer(self, *self.fake.token_answer)


class UserInfoHandler(RequestHandler):
    def initialize(self, fake: FakeProvider) -> None:
        self.fake = fake

    def get(self) -> None:
        self.fake.userinfo_requests.append(dict(self.request.headers))
        self.fake.userinfo_uris.append(self.request.uri or "")
        answer(self, *self.fake.userinfo_answer)


def answer(handler: RequestHandler, status: int, body: Any) -> None:
    handler.set_status(status)
    if isinstance(body, (bytes, str)):
        if body:
            handler.write(body)
        return
    handler.set_header("Content-Type", "application/json")
    handler.write(json.dumps(body))


def basic_credentials(header: str) -> Tuple[str, str]:
    """Decode Basic credentials the way RFC 6749 2.3.1 says a server does: base64, split, form-decode."""
    scheme, _, value = header.partition(" ")
    assert scheme == "Basic"
    user, sep, password = base64.b64decode(value).decode("ascii").partition(":")
    assert sep == ":"
    return unquote_plus(user), unquote_plus(password)


class OAuth2ClientTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        sock, port = bind_unused_port()
        self.base = f"http://127.0.0.1:{port}"
        self.fake = FakeProvider()
        app = Application([("/token", TokenHandler, {"fake": self.fake}),
                           ("/api/me", UserInfoHandler, {"fake": self.fake})])
        self.server = HTTPServer(app)
        self.server.add_sockets([sock])
        self.http = AsyncHTTPClient(force_instance=True)

    def tearDown(self) -> None:
        self.server.stop()
        self.io_loop.run_sync(self.server.close_all_connections)
        self.http.close()
        super().tearDown()

    def config(self, **values: Any) -> ProviderConfig:
        base = dict(name="legacy", type="oauth2", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                    authorization_endpoint="https://sso.example/authorize?tenant=corp",
                    token_endpoint=self.base + "/token", userinfo_endpoint=self.base + "/api/me?fields=id,login,mail",
                    scopes=("profile", "user:email"),
                    claims=(("sub", "id"), ("preferred_username", "login"), ("email", "mail")))
        base.update(values)
        return ProviderConfig(**base)

    def client(self, **values: Any) -> OAuth2Client:
        return OAuth2Client(self.config(**values), self.http, redirect_uri=REDIRECT, clock=lambda: NOW)

    # -- the authorization request ------------------------------------------------

    @gen_test(timeout=5)
    async def test_authorization_url(self):
        verifier, challenge = new_pkce()
        url = await self.client().authorization_url(state="st-1", nonce="nn-1", code_challenge=challenge)
        parts = urlsplit(url)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", "https://sso.example/authorize")
        query = parse_qs(parts.query)
        self.assertTrue(all(len(v) == 1 for v in query.values()), query)
        self.assertEqual({k: v[0] for k, v in query.items()}, {
            "tenant": "corp",  # the endpoint's own query is kept
            "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
            "scope": "profile user:email", "state": "st-1",
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        self.assertNotIn("nonce", query)  # no ID token, so no nonce
        self.assertIn("scope=profile%20user%3Aemail", parts.query)

    @gen_test(timeout=5)
    async def test_make_client_picks_oauth2_and_has_no_sign_out(self):
        http = self.http
        client = make_client(self.config(), http, redirect_uri=REDIRECT, discovery=DiscoveryCache(http),
                             jwks=JWKSRegistry(http))
        self.assertIs(type(client), OAuth2Client)
        self.assertIsNone(await client.end_session_url(id_token_hint=None, post_logout_redirect_uri=REDIRECT,
                                                       state="s"))
        self.assertIsNone(await client.problem())

    # -- the code exchange and client authentication ----------------------------------

    @gen_test(timeout=5)
    async def test_sign_in_with_client_secret_basic(self):
        tokens, user = await self.client(token_endpoint_auth_method="client_secret_basic").sign_in(
            code="c-1", verifier="v" * 43, nonce="ignored", iss=None)
        [request] = self.fake.token_requests
        self.assertEqual(basic_credentials(request["headers"]["Authorization"]), (CLIENT_ID, CLIENT_SECRET))
        self.assertEqual(request["form"], {"grant_type": "authorization_code", "code": "c-1",
                                           "redirect_uri": REDIRECT, "code_verifier": "v" * 43})
        self.assertEqual(request["content_type"], "application/x-www-form-urlencoded")
        self.assertEqual(request["headers"]["Accept"], "application/json")
        self.assertEqual((tokens.access_token, tokens.refresh_token, tokens.id_token), ("at-1", "rt-1", None))
        self.assertEqual((tokens.expires_at, tokens.token_type, tokens.scope), (NOW + 3600, "Bearer", "profile"))
        # the user comes from the userinfo endpoint, asked with the access token just obtained
        [info] = self.fake.userinfo_requests
        self.assertEqual(info["Authorization"], "Bearer at-1")
        self.assertEqual((user.sub, user.user, user.preferred_username, user.email),
                         ("4711", "4711", "jdoe", "jdoe@corp.example"))

    @gen_test(timeout=5)
    async def test_basic_credentials_are_form_encoded_before_base64(self):
        await self.client(token_endpoint_auth_method="client_secret_basic").exchange_code("c", "v")
        header = self.fake.token_requests[0]["headers"]["Authorization"]
        raw = base64.b64decode(header.split(" ", 1)[1]).decode("ascii")
        # exactly one ":" separates the (encoded) id and secret; nothing reserved is left raw
        self.assertEqual(raw, "gw%3Aclient%2B1:a%2Bb%2Fc%3Dd%3Ae%25f%26g%3Fh-0123456789")

    @gen_test(timeout=5)
    async def test_default_client_authentication_is_basic(self):
        await self.client().exchange_code("c", "v")
        request = self.fake.token_requests[0]
        self.assertEqual(basic_credentials(request["headers"]["Authorization"]), (CLIENT_ID, CLIENT_SECRET))
        self.assertNotIn("client_secret", request["form"])

    @gen_test(timeout=5)
    async def test_sign_in_with_client_secret_post(self):
        await self.client(token_endpoint_auth_method="client_secret_post").sign_in(
            code="c-2", verifier="w" * 43, nonce="", iss=None)
        [request] = self.fake.token_requests
        self.assertNotIn("Authorization", request["headers"])
        self.assertEqual(request["form"], {"grant_type": "authorization_code", "code": "c-2",
                                           "redirect_uri": REDIRECT, "code_verifier": "w" * 43,
                                           "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})

    @gen_test(timeout=5)
    async def test_refresh_keeps_the_refresh_token_the_provider_did_not_rotate(self):
        self.fake.token_answer = (200, {"access_token": "at-2", "token_type": "Bearer", "expires_in": "120"})
        tokens = await self.client(token_endpoint_auth_method="client_secret_post").renew("rt-old", sub="4711")
        self.assertEqual(self.fake.token_requests[0]["form"], {
            "grant_type": "refresh_token", "refresh_token": "rt-old",
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
        self.assertEqual((tokens.access_token, tokens.refresh_token, tokens.expires_at), ("at-2", "rt-old", NOW + 120))

    # -- refusals ----------------------------------------------------------------

    async def refused(self, status: int, body: Any) -> ProviderError:
        self.fake.token_answer = (status, body)
        with self.assertRaises(ProviderError) as info:
            await self.client().exchange_code("c", "v")
        self.assertEqual(self.fake.userinfo_requests, [])
        return info.exception

    @gen_test(timeout=5)
    async def test_github_style_200_with_error_is_invalid_grant(self):
        error = await self.refused(200, {"error": "bad_verification_code",
                                         "error_description": "The code passed is incorrect or expired.",
                                         "error_uri": "https://docs.github.com/apps/troubleshooting"})
        self.assertIsInstance(error, InvalidGrant)
        self.assertEqual(error.reason, "invalid_grant")

    @gen_test(timeout=5)
    async def test_200_with_another_error_is_refused(self):
        error = await self.refused(200, {"error": "incorrect_client_credentials"})
        self.assertIsInstance(error, TokenRefused)
        self.assertNotIsInstance(error, InvalidGrant)
        self.assertEqual(error.reason, "incorrect_client_credentials")

    @gen_test(timeout=5)
    async def test_400_invalid_grant(self):
        error = await self.refused(400, {"error": "invalid_grant"})
        self.assertIsInstance(error, InvalidGrant)

    @gen_test(timeout=5)
    async def test_400_with_an_empty_body_is_refused(self):
        error = await self.refused(400, b"")
        self.assertIsInstance(error, TokenRefused)
        self.assertNotIsInstance(error, InvalidGrant)
        self.assertEqual(error.reason, "token_refused")

    @gen_test(timeout=5)
    async def test_401_invalid_client_is_refused(self):
        error = await self.refused(401, {"error": "invalid_client"})
        self.assertIsInstance(error, TokenRefused)
        self.assertEqual(error.reason, "invalid_client")

    @gen_test(timeout=5)
    async def test_500_is_unavailable(self):
        error = await self.refused(500, b"<html>oops</html>")
        self.assertIsInstance(error, ProviderUnavailable)
        self.assertNotIsInstance(error, TokenRefused)

    @gen_test(timeout=5)
    async def test_429_and_temporarily_unavailable_are_unavailable(self):
        self.assertIsInstance(await self.refused(429, b""), ProviderUnavailable)
        self.assertIsInstance(await self.refused(400, {"error": "temporarily_unavailable"}), ProviderUnavailable)

    @gen_test(timeout=5)
    async def test_200_that_is_not_json_or_has_no_access_token(self):
        error = await self.refused(200, b"access_token=at&token_type=bearer")  # form-encoded, not JSON
        self.assertNotIsInstance(error, (TokenRefused, ProviderUnavailable))
        error = await self.refused(200, {"token_type": "bearer"})
        self.assertEqual(error.reason, "no_access_token")
        error = await self.refused(200, {"access_token": "at", "token_type": "mac"})
        self.assertEqual(error.reason, "unsupported_token_type")

    @gen_test(timeout=5)
    async def test_an_unreachable_token_endpoint_is_unavailable(self):
        sock, port = bind_unused_port()
        sock.close()
        client = self.client(token_endpoint=f"http://127.0.0.1:{port}/token")
        with self.assertRaises(ProviderUnavailable):
            await client.exchange_code("c", "v")

    # -- userinfo ----------------------------------------------------------------

    async def sign_in_error(self) -> ProviderError:
        with self.assertRaises(ProviderError) as info:
            await self.client().sign_in(code="c", verifier="v", nonce="", iss=None)
        return info.exception

    @gen_test(timeout=5)
    async def test_userinfo_without_the_sub_field_is_no_subject(self):
        self.fake.userinfo_answer = (200, {"login": "jdoe", "sub": "not-the-mapped-field"})
        error = await self.sign_in_error()
        self.assertEqual(error.reason, "no_subject")
        self.assertIn("'id'", error.description)

    @gen_test(timeout=5)
    async def test_userinfo_401_is_refused(self):
        self.fake.userinfo_answer = (401, {"message": "Bad credentials"})
        error = await self.sign_in_error()
        self.assertNotIsInstance(error, ProviderUnavailable)
        self.assertEqual(error.reason, "userinfo_refused")

    @gen_test(timeout=5)
    async def test_userinfo_503_is_unavailable(self):
        self.fake.userinfo_answer = (503, b"")
        self.assertIsInstance(await self.sign_in_error(), ProviderUnavailable)

    @gen_test(timeout=5)
    async def test_userinfo_that_is_not_an_object(self):
        self.fake.userinfo_answer = (200, [{"id": 1}])
        self.assertEqual((await self.sign_in_error()).reason, "userinfo_malformed")

    @gen_test(timeout=5)
    async def test_userinfo_endpoint_query_is_kept(self):
        await self.client().sign_in(code="c", verifier="v", nonce="", iss=None)
        # the fields query of the configured endpoint reaches the provider (Facebook's /me needs it)
        self.assertEqual(self.fake.userinfo_uris, ["/api/me?fields=id,login,mail"])
        self.assertEqual(self.fake.userinfo_requests[0]["Accept"], "application/json")
