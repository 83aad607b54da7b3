"""gateway.providers.oidc against real providers on loopback, over real HTTP.

The development provider (``gateway.devidp``) runs in-process on 127.0.0.1 and
is driven the way a browser would: GET the authorize page, POST its form with
the password, read ``code``/``state``/``iss`` from the ``Location`` header.
A recording subclass alters its discovery document and notes how the client
authenticated at the token endpoint. Hand-crafted ID tokens come from
``fake_idp.FakeIdP``, whose keys the tests hold. Nothing mocks the HTTP client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from html.parser import HTMLParser
from typing import Any, Dict, Optional
from urllib.parse import parse_qs, parse_qsl, urlencode, urljoin, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import AsyncTestCase, bind_unused_port, gen_test
from tornado.web import Application

from tests.support.fake_idp import HMAC_SECRET, NOW, FakeIdP, SigningKey
from tests.support.tokens import make_token
from gateway.config import ProviderConfig, TokenIssuerConfig
from gateway.devidp import (AuthorizeHandler, DevIdentityProvider, DiscoveryHandler, JWKSHandler, LogoutHandler,
                            TokenHandler, UserInfoHandler)
from gateway.discovery import DiscoveryCache
from gateway.jwks import JWKSRegistry, KeysUnavailable
from gateway.providers import (KEPT_CLAIMS, InvalidGrant, OIDCClient, ProviderError, ProviderUnavailable, TokenSet,
                               new_pkce, random_token)
from gateway.tokens import TokenVerifier

pytestmark = pytest.mark.timeout(15)

CLIENT_ID = "gateway"
CLIENT_SECRET = "s3:cr+et/ %\u00e9&="  # Basic auth must form-encode it (RFC 6749 2.3.1)
REDIRECT = "http://127.0.0.1:8080/oauth2/callback"
AFTER_LOGOUT = "http://127.0.0.1:8080/"
USERS = {
    "alice": {"password": "wonderland", "sub": "u-alice", "email": "alice@example.com",
              "name": "Alice Liddell", "groups": ["admins", "sre"], "preferred_username": "alice"},
}


# -- a recording development provider ------------------------------------------------


class RecordingIdP(DevIdentityProvider):
    """The dev provider with an alterable discovery document and a log of token requests.

    ``overrides`` replace discovery members (None removes one). When the
    document does not advertise ``client_secret_basic``, a Basic header is
    refused, so a test passing proves the client used ``client_secret_post``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.overrides: Dict[str, Any] = {}
        self.token_auth: list[str] = []  # "basic" or "post", per token request
        self.userinfo_calls = 0
        self.token_status: Optional[int] = None  # answer the token endpoint with this status instead
        self.rotate_refresh_tokens = True

    def discovery(self) -> Dict[str, Any]:
        doc = super().discovery()
        doc.update(self.overrides)
        return {k: v for k, v in doc.items() if v is not None}

    def make_app(self) -> Application:
        handlers = [
            ("/.well-known/openid-configuration", DiscoveryHandler),
            ("/jwks", JWKSHandler),
            ("/authorize", AuthorizeHandler),
            ("/token", RecordingTokenHandler),
            ("/userinfo", RecordingUserInfoHandler),
            ("/logout", LogoutHandler),
        ]
        return Application([(re.escape(self.base_path + p), h, {"idp": self}) for p, h in handlers])


class RecordingTokenHandler(TokenHandler):
    idp: RecordingIdP

    def post(self) -> None:
        basic = "Authorization" in self.request.headers
        self.idp.token_auth.append("basic" if basic else "post")
        if self.idp.token_status is not None:
            return self.json({"error": "server_error"}, self.idp.token_status)
        methods = self.idp.discovery().get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if basic and "client_secret_basic" not in methods:
            return self.error("invalid_client", "client_secret_basic is not allowed", 401)
        super().post()

    def json(self, doc: Dict[str, Any], status: int = 200) -> None:
        if not self.idp.rotate_refresh_tokens and self.get_body_argument("grant_type", "") == "refresh_token":
            doc.pop("refresh_token", None)
        super().json(doc, status)


class RecordingUserInfoHandler(UserInfoHandler):
    idp: RecordingIdP

    def get(self) -> None:
        self.idp.userinfo_calls += 1
        super().get()


class FormParser(HTMLParser):
    """The sign-in form: its action and hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: Dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a.get("value", "")


def closed_port_url() -> str:
    sock, port = bind_unused_port()
    sock.close()
    return f"http://127.0.0.1:{port}"


class Login:
    def __init__(self, code: str, iss: Optional[str], verifier: str, nonce: str, state: str):
        self.code, self.iss, self.verifier, self.nonce, self.state = code, iss, verifier, nonce, state


class DevProviderTestCase(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        sock, port = bind_unused_port()
        self.issuer = f"http://127.0.0.1:{port}"
        self.idp = RecordingIdP(self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                redirect_uris=[REDIRECT], post_logout_redirect_uris=[AFTER_LOGOUT],
                                users=USERS, access_token_ttl=300)
        self.server = HTTPServer(self.idp.make_app())
        self.server.add_sockets([sock])
        self.http = AsyncHTTPClient(force_instance=True)
        self.discovery = DiscoveryCache(self.http)
        self.registry = JWKSRegistry(self.http)
        self.client = self.make_client()

    def tearDown(self) -> None:
        self.server.stop()
        self.io_loop.run_sync(self.server.close_all_connections)
        self.io_loop.run_sync(self.registry.close)
        self.http.close()
        super().tearDown()

    def make_client(self, **config: Any) -> OIDCClient:
        values = dict(name="dev", issuer=self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        values.update(config)
        return OIDCClient(ProviderConfig(**values), self.http, redirect_uri=REDIRECT,
                          discovery=DiscoveryCache(self.http) if config else self.discovery, jwks=self.registry)

    async def sign_in(self, client: Optional[OIDCClient] = None) -> Login:
        client = client or self.client
        verifier, challenge = new_pkce()
        state, nonce = random_token(), random_token()
        url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
        page = await self.http.fetch(url, follow_redirects=False, raise_error=False)
        self.assertEqual(page.code, 200, page.body[:300])
        form = FormParser()
        form.feed(page.body.decode())
        fields = dict(form.hidden, username="alice", password=USERS["alice"]["password"])
        response = await self.http.fetch(urljoin(url, form.action), method="POST", body=urlencode(fields),
                                         follow_redirects=False, raise_error=False)
        self.assertEqual(response.code, 302)
        location = response.headers["Location"]
        self.assertTrue(location.startswith(REDIRECT + "?"), location)
        query = dict(parse_qsl(urlsplit(location).query))
        self.assertEqual(query["state"], state)
        return Login(query["code"], query.get("iss"), verifier, nonce, state)


# -- the code flow against the dev provider ---------------------------------------


class CodeFlowTest(DevProviderTestCase):
    @gen_test(timeout=5)
    async def test_authorization_url(self):
        url = await self.client.authorization_url(state="st", nonce="nn", code_challenge="ch", prompt="login")
        parts = urlsplit(url)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", self.issuer + "/authorize")
        query = parse_qs(parts.query)
        self.assertEqual({k: v[0] for k, v in query.items()}, {
            "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
            "scope": "openid email profile", "state": "st", "nonce": "nn", "code_challenge": "ch",
            "code_challenge_method": "S256", "prompt": "login"})
        self.assertNotIn("prompt", await self.client.authorization_url(state="s", nonce="n", code_challenge="c"))
        self.assertNotIn("secret", url)

    def test_pkce_and_random_token(self):
        verifier, challenge = new_pkce()
        self.assertTrue(43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9_-]+", verifier))
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        self.assertEqual(challenge, expected)
        self.assertNotEqual(new_pkce()[0], verifier)
        self.assertGreaterEqual(len(random_token()), 43)
        self.assertNotEqual(random_token(), random_token())

    @gen_test(timeout=5)
    async def test_login_exchange_validate_and_claims(self):
        self.assertTrue(await self.client.ready())
        login = await self.sign_in()
        self.assertEqual(login.iss, self.issuer)
        self.client.check_authorization_response_iss(login.iss, await self.client.metadata())
        tokens = await self.client.exchange_code(login.code, login.verifier)
        self.assertIsInstance(tokens, TokenSet)
        self.assertTrue(tokens.access_token and tokens.id_token and tokens.refresh_token)
        self.assertEqual(tokens.token_type, "Bearer")
        self.assertIsNotNone(tokens.expires_at)
        self.assertNotIn(tokens.access_token, repr(tokens))
        self.assertEqual(self.idp.token_auth, ["basic"])  # advertised first, and the secret survived encoding

        claims = await self.client.validate_id_token(tokens.id_token, nonce=login.nonce,
                                                     access_token=tokens.access_token)
        self.assertEqual((claims["sub"], claims["iss"]), ("u-alice", self.issuer))
        with self.assertRaises(ProviderError) as caught:
            await self.client.validate_id_token(tokens.id_token, nonce="another-nonce")
        self.assertEqual(caught.exception.reason, "id_token_nonce")
        self.assertTrue(caught.exception.description.startswith("invalid id_token"))
        with self.assertRaises(ProviderError) as caught:
            await self.client.validate_id_token(tokens.id_token, nonce=login.nonce, access_token="not-it")
        self.assertEqual(caught.exception.reason, "id_token_at_hash")

        user = await self.client.user_claims(claims, tokens.access_token)
        self.assertEqual(user.sub, "u-alice")
        self.assertEqual(user.email, "alice@example.com")
        self.assertEqual(user.groups, ("admins", "sre"))
        self.assertEqual(user.preferred_username, "alice")
        self.assertEqual(self.idp.userinfo_calls, 0)  # the id_token had email and groups
        self.assertLessEqual(set(user.claims), set(KEPT_CLAIMS))
        self.assertEqual(user.claims["email_verified"], True)
        self.assertEqual(user.claims["name"], "Alice Liddell")
        json.dumps(user.claims)

    @gen_test(timeout=5)
    async def test_refresh_rotates_and_reuse_is_invalid_grant(self):
        login = await self.sign_in()
        tokens = await self.client.exchange_code(login.code, login.verifier)
        refreshed = await self.client.refresh(tokens.refresh_token)
        self.assertNotEqual(refreshed.refresh_token, tokens.refresh_token)
        self.assertTrue(refreshed.access_token and refreshed.id_token)
        claims = await self.client.validate_id_token(refreshed.id_token, nonce=None,
                                                     access_token=refreshed.access_token)
        self.assertEqual(claims["sub"], "u-alice")
        with self.assertRaises(InvalidGrant) as caught:
            await self.client.refresh(tokens.refresh_token)  # rotated away
        self.assertEqual(caught.exception.reason, "invalid_grant")
        self.assertEqual(self.idp.token_auth, ["basic"] * 3)

    @gen_test(timeout=5)
    async def test_refresh_keeps_refresh_token_when_not_rotated(self):
        self.idp.rotate_refresh_tokens = False
        login = await self.sign_in()
        tokens = await self.client.exchange_code(login.code, login.verifier)
        refreshed = await self.client.refresh(tokens.refresh_token)
        self.assertEqual(refreshed.refresh_token, tokens.refresh_token)
        self.assertNotEqual(refreshed.access_token, tokens.access_token)

    @gen_test(timeout=5)
    async def test_code_replay_is_invalid_grant(self):
        login = await self.sign_in()
        await self.client.exchange_code(login.code, login.verifier)
        with self.assertLogs("gateway.providers", logging.WARNING) as logs:
            with self.assertRaises(InvalidGrant):
                await self.client.exchange_code(login.code, login.verifier)
        text = "\n".join(logs.output)
        self.assertIn("invalid_grant", text)
        for secret in (login.code, login.verifier, CLIENT_SECRET):
            self.assertNotIn(secret, text)

    @gen_test(timeout=5)
    async def test_wrong_verifier_is_invalid_grant(self):
        login = await self.sign_in()
        with self.assertRaises(InvalidGrant) as caught:
            await self.client.exchange_code(login.code, new_pkce()[0])
        self.assertNotIn(login.code, str(caught.exception))

    @gen_test(timeout=5)
    async def test_wrong_client_secret_is_an_error_with_the_providers_code(self):
        client = self.make_client(client_secret="not-the-secret")
        login = await self.sign_in(client)
        with self.assertLogs("gateway.providers", logging.WARNING) as logs:
            with self.assertRaises(ProviderError) as caught:
                await client.exchange_code(login.code, login.verifier)
        self.assertNotIsInstance(caught.exception, (InvalidGrant, ProviderUnavailable))
        self.assertEqual(caught.exception.reason, "invalid_client")
        text = "\n".join(logs.output) + caught.exception.description
        for secret in (login.code, login.verifier, "not-the-secret"):
            self.assertNotIn(secret, text)

    @gen_test(timeout=5)
    async def test_rfc9207_iss(self):
        login = await self.sign_in()
        metadata = await self.client.metadata()
        self.assertIs(metadata["authorization_response_iss_parameter_supported"], True)
        self.client.check_authorization_response_iss(login.iss, metadata)
        for bad in (None, "https://evil.example", self.issuer + "/"):
            with self.assertRaises(ProviderError) as caught:
                self.client.check_authorization_response_iss(bad, metadata)
            self.assertEqual(caught.exception.description, "issuer mismatch")
        # Not advertised: may be absent, but when present it must still be the issuer.
        quiet = dict(metadata)
        del quiet["authorization_response_iss_parameter_supported"]
        self.client.check_authorization_response_iss(None, quiet)
        self.client.check_authorization_response_iss(self.issuer, quiet)
        with self.assertRaises(ProviderError):
            self.client.check_authorization_response_iss("https://evil.example", quiet)

    @gen_test(timeout=5)
    async def test_user_claims_completes_from_userinfo(self):
        login = await self.sign_in()
        tokens = await self.client.exchange_code(login.code, login.verifier)
        claims = await self.client.validate_id_token(tokens.id_token, nonce=login.nonce)
        thin = {k: v for k, v in claims.items() if k not in ("email", "groups", "email_verified")}
        user = await self.client.user_claims(thin, tokens.access_token)
        self.assertEqual(self.idp.userinfo_calls, 1)
        self.assertEqual((user.email, user.groups), ("alice@example.com", ("admins", "sre")))
        self.assertEqual(user.claims["email_verified"], True)
        self.assertEqual(await self.client.userinfo(tokens.access_token) is not None, True)

        with self.assertRaises(ProviderError) as caught:
            await self.client.user_claims(dict(thin, sub="u-mallory"), tokens.access_token)
        self.assertEqual(caught.exception.reason, "userinfo_sub_mismatch")

        with self.assertRaises(ProviderError) as caught:
            await self.client.userinfo("not-a-token")
        self.assertEqual(caught.exception.reason, "userinfo_refused")

    @gen_test(timeout=5)
    async def test_user_claims_mapping(self):
        client = self.make_client(groups_claim="realm_access.roles")
        nested = {"iss": self.issuer, "sub": "u-1", "email": "x@example.com", "email_verified": "false",
                  "realm_access": {"roles": ["a", "b", 3]}, "padding": "x" * 10000, "aud": CLIENT_ID,
                  "name": "n" * 5000}
        user = await client.user_claims(nested, "unused-access-token")  # has email and groups: no userinfo
        self.assertEqual(self.idp.userinfo_calls, 0)
        self.assertEqual(user.groups, ("a", "b"))
        self.assertIsNone(user.email)  # unverified email is not an identity
        self.assertEqual(user.claims, {"iss": self.issuer, "sub": "u-1", "groups": ["a", "b"]})
        user = await client.user_claims({"sub": "u-2", "realm_access": {"roles": "x, y"}}, None)
        self.assertEqual((user.email, user.groups), (None, ("x", "y")))

    @gen_test(timeout=5)
    async def test_allow_unverified_email_opts_out_per_provider(self):
        claims = {"iss": self.issuer, "sub": "u-1", "email": "x@example.com", "email_verified": False, "groups": []}
        self.assertIsNone((await self.make_client().user_claims(dict(claims), None)).email)
        lenient = self.make_client(allow_unverified_email=True)
        self.assertEqual((await lenient.user_claims(dict(claims), None)).email, "x@example.com")

    @gen_test(timeout=5)
    async def test_end_session_url(self):
        url = await self.client.end_session_url(id_token_hint="the.id.token", post_logout_redirect_uri=AFTER_LOGOUT,
                                                state="st-9")
        parts = urlsplit(url)
        self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}", self.issuer + "/logout")
        self.assertEqual({k: v[0] for k, v in parse_qs(parts.query).items()}, {
            "id_token_hint": "the.id.token", "post_logout_redirect_uri": AFTER_LOGOUT, "state": "st-9",
            "client_id": CLIENT_ID})
        url = await self.client.end_session_url(id_token_hint=None, post_logout_redirect_uri=None)
        self.assertEqual(parse_qs(urlsplit(url).query), {"client_id": [CLIENT_ID]})

    @gen_test(timeout=5)
    async def test_bearer_tokens_and_id_tokens_share_one_key_cache(self):
        verifier = TokenVerifier([TokenIssuerConfig(issuer=self.issuer, algorithms=("RS256",), audience=(CLIENT_ID,))],
                                 self.http, discovery=self.discovery, jwks_registry=self.registry)
        try:
            login = await self.sign_in()
            tokens = await self.client.exchange_code(login.code, login.verifier)
            await self.client.validate_id_token(tokens.id_token, nonce=login.nonce)
            identity = await verifier.verify(tokens.access_token)
            self.assertEqual(identity.sub, "u-alice")
            self.assertTrue(await verifier.ready())
            self.assertEqual(len(self.registry), 1)
            self.assertEqual(self.registry.get(self.issuer + "/jwks").fetch_count, 1)
            self.assertEqual(self.discovery.fetch_count, 1)
        finally:
            await verifier.close()


class DiscoveryVariantsTest(DevProviderTestCase):
    @gen_test(timeout=5)
    async def test_client_secret_post_when_only_that_is_advertised(self):
        self.idp.overrides["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
        login = await self.sign_in()
        tokens = await self.client.exchange_code(login.code, login.verifier)
        await self.client.refresh(tokens.refresh_token)
        self.assertEqual(self.idp.token_auth, ["post", "post"])

    @gen_test(timeout=5)
    async def test_basic_when_auth_methods_are_not_advertised(self):
        self.idp.overrides["token_endpoint_auth_methods_supported"] = None
        login = await self.sign_in()
        await self.client.exchange_code(login.code, login.verifier)
        self.assertEqual(self.idp.token_auth, ["basic"])

    @gen_test(timeout=5)
    async def test_no_usable_client_auth(self):
        self.idp.overrides["token_endpoint_auth_methods_supported"] = ["private_key_jwt"]
        with self.assertRaises(ProviderError) as caught:
            await self.client.exchange_code("c", "v" * 43)
        self.assertEqual(caught.exception.reason, "unsupported_client_auth")
        self.assertEqual(self.idp.token_auth, [])

    @gen_test(timeout=5)
    async def test_refuses_provider_without_s256(self):
        self.idp.overrides["code_challenge_methods_supported"] = ["plain"]
        with self.assertRaises(ProviderError) as caught:
            await self.client.authorization_url(state="s", nonce="n", code_challenge="c")
        self.assertEqual(caught.exception.reason, "pkce_unsupported")

    @gen_test(timeout=5)
    async def test_no_end_session_endpoint(self):
        self.idp.overrides["end_session_endpoint"] = None
        self.assertIsNone(await self.client.end_session_url(id_token_hint="t", post_logout_redirect_uri=AFTER_LOGOUT))

    @gen_test(timeout=5)
    async def test_no_userinfo_endpoint(self):
        self.idp.overrides["userinfo_endpoint"] = None
        self.assertIsNone(await self.client.userinfo("token"))
        user = await self.client.user_claims({"sub": "u-1"}, "token")
        self.assertEqual((user.email, user.groups), (None, ()))

    @gen_test(timeout=5)
    async def test_token_endpoint_5xx_is_provider_unavailable(self):
        login = await self.sign_in()
        self.idp.token_status = 503
        with self.assertRaises(ProviderUnavailable):
            await self.client.exchange_code(login.code, login.verifier)
        self.idp.token_status = 500
        with self.assertRaises(ProviderUnavailable):
            await self.client.refresh("some-refresh-token")


# -- the provider is down ---------------------------------------------------------------


class ProviderDownTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.http = AsyncHTTPClient(force_instance=True)
        self.registry = JWKSRegistry(self.http)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.registry.close)
        self.http.close()
        super().tearDown()

    def client(self, issuer: str) -> OIDCClient:
        config = ProviderConfig(name="down", issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        return OIDCClient(config, self.http, redirect_uri=REDIRECT, discovery=DiscoveryCache(self.http),
                          jwks=self.registry)

    @gen_test(timeout=5)
    async def test_discovery_unreachable(self):
        client = self.client(closed_port_url())
        self.assertFalse(await client.ready())
        calls = (lambda: client.metadata(),
                 lambda: client.authorization_url(state="s", nonce="n", code_challenge="c"),
                 lambda: client.exchange_code("code", "v" * 43), lambda: client.refresh("r"),
                 lambda: client.end_session_url(id_token_hint=None, post_logout_redirect_uri=None))
        for call in calls:
            with self.assertRaises(ProviderUnavailable) as caught:
                await call()
            self.assertEqual(caught.exception.description,
                             "The identity provider could not be reached. Try again in a moment.")

    @gen_test(timeout=5)
    async def test_token_and_key_endpoints_unreachable(self):
        fake = FakeIdP()
        try:
            down = closed_port_url()
            fake.discovery_body = json.dumps({
                "issuer": fake.issuer, "authorization_endpoint": fake.issuer + "/authorize",
                "token_endpoint": down + "/token", "jwks_uri": down + "/jwks",
                "userinfo_endpoint": down + "/userinfo"})
            client = self.client(fake.issuer)
            self.assertTrue(await client.ready())
            with self.assertRaises(ProviderUnavailable):
                await client.exchange_code("code", "v" * 43)
            with self.assertRaises(ProviderUnavailable):
                await client.userinfo("token")
            token = SigningKey("RS256", "k1").sign({"iss": fake.issuer, "sub": "u", "aud": CLIENT_ID,
                                                    "exp": 4_000_000_000, "iat": 1})
            with self.assertRaises(ProviderUnavailable):
                await client.validate_id_token(token, nonce=None)
        finally:
            await fake.close()


# -- hand-crafted ID tokens ---------------------------------------------------------------


class IdTokenChecksTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.rsa = SigningKey("RS256", "rsa-1")
        self.ec = SigningKey("ES256", "ec-1")
        self.fake = FakeIdP([self.rsa, self.ec])
        self.fake.discovery_body = json.dumps({
            "issuer": self.fake.issuer, "jwks_uri": self.fake.jwks_url,
            "authorization_endpoint": self.fake.issuer + "/authorize", "token_endpoint": self.fake.issuer + "/token",
            # advertising HS256 and none must not make them acceptable
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "HS256", "none"]})
        self.http = AsyncHTTPClient(force_instance=True)
        self.registry = JWKSRegistry(self.http)
        config = ProviderConfig(name="fake", issuer=self.fake.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.client = OIDCClient(config, self.http, redirect_uri=REDIRECT, discovery=DiscoveryCache(self.http),
                                 jwks=self.registry, clock=lambda: NOW, leeway=30)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.fake.close)
        self.io_loop.run_sync(self.registry.close)
        self.http.close()
        super().tearDown()

    def claims(self, **changes: Any) -> Dict[str, Any]:
        claims = {"iss": self.fake.issuer, "sub": "u-1", "aud": CLIENT_ID, "exp": NOW + 300, "iat": NOW - 5,
                  "nonce": "n-1"}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    async def refused(self, token: str, reason: str, nonce: Optional[str] = "n-1", **kwargs: Any) -> None:
        with self.assertRaises(ProviderError) as caught:
            await self.client.validate_id_token(token, nonce=nonce, **kwargs)
        self.assertNotIsInstance(caught.exception, ProviderUnavailable)
        self.assertEqual(caught.exception.reason, reason)
        self.assertTrue(caught.exception.description.startswith("invalid id_token: "))

    @gen_test(timeout=5)
    async def test_good_tokens(self):
        for key in (self.rsa, self.ec):
            claims = await self.client.validate_id_token(key.sign(self.claims()), nonce="n-1")
            self.assertEqual(claims["sub"], "u-1")
        both = self.claims(aud=[CLIENT_ID, "api"], azp=CLIENT_ID)
        await self.client.validate_id_token(self.rsa.sign(both), nonce="n-1")
        await self.client.validate_id_token(self.rsa.sign(self.claims(exp=NOW - 20)), nonce="n-1")  # within leeway
        await self.client.validate_id_token(self.rsa.sign(self.claims(nonce=None)), nonce=None)  # after refresh
        self.assertEqual(self.fake.jwks_fetches, 1)

    @gen_test(timeout=5)
    async def test_audience_and_azp(self):
        await self.refused(self.rsa.sign(self.claims(aud="someone-else")), "id_token_audience")
        await self.refused(self.rsa.sign(self.claims(aud=["someone-else", "api"])), "id_token_audience")
        await self.refused(self.rsa.sign(self.claims(aud=None)), "id_token_audience")
        await self.refused(self.rsa.sign(self.claims(aud=[CLIENT_ID, "api"])), "id_token_azp")
        await self.refused(self.rsa.sign(self.claims(azp="other-client")), "id_token_azp")
        await self.refused(self.rsa.sign(self.claims(aud=[CLIENT_ID, "api"], azp="api")), "id_token_azp")

    @gen_test(timeout=5)
    async def test_issuer_and_times(self):
        await self.refused(self.rsa.sign(self.claims(iss="https://evil.example")), "id_token_issuer")
        await self.refused(self.rsa.sign(self.claims(iss=self.fake.issuer + "/")), "id_token_issuer")
        await self.refused(self.rsa.sign(self.claims(exp=NOW - 31)), "id_token_expired")
        await self.refused(self.rsa.sign(self.claims(exp=None)), "id_token_malformed")
        await self.refused(self.rsa.sign(self.claims(iat=None)), "id_token_malformed")
        await self.refused(self.rsa.sign(self.claims(iat=NOW + 600)), "id_token_iat")
        await self.refused(self.rsa.sign(self.claims(sub=None)), "id_token_malformed")

    @gen_test(timeout=5)
    async def test_nonce(self):
        await self.refused(self.rsa.sign(self.claims(nonce="other")), "id_token_nonce")
        await self.refused(self.rsa.sign(self.claims(nonce=None)), "id_token_nonce")

    @gen_test(timeout=5)
    async def test_algorithms(self):
        unsigned = make_token(self.claims(), None, alg="none")
        await self.refused(unsigned, "id_token_alg")
        # Signed with a shared secret (as if the client secret), a mode we never accept.
        hmac_signed = make_token(self.claims(), HMAC_SECRET, headers={"kid": "rsa-1"})
        await self.refused(hmac_signed, "id_token_alg")
        # A key from the provider's set, but another key's signature.
        forged = SigningKey("RS256", "rsa-1", index=1).sign(self.claims())
        await self.refused(forged, "id_token_signature")
        await self.refused("not-a-jwt", "id_token_malformed")

    @gen_test(timeout=5)
    async def test_only_advertised_algorithms(self):
        self.fake.discovery_body = json.dumps({**json.loads(self.fake.discovery_body),
                                               "id_token_signing_alg_values_supported": ["ES256"]})
        await self.refused(self.rsa.sign(self.claims()), "id_token_alg")
        await self.client.validate_id_token(self.ec.sign(self.claims()), nonce="n-1")

    @gen_test(timeout=5)
    async def test_key_headers_are_ignored(self):
        attacker_key = SigningKey("RS256", "attacker", index=1)
        attacker = FakeIdP([attacker_key])
        try:
            token = attacker_key.sign(self.claims(), headers={
                "jku": attacker.jwks_url, "x5u": attacker.jwks_url, "jwk": attacker_key.jwk})
            await self.refused(token, "id_token_unknown_key")
            self.assertEqual(attacker.jwks_fetches, 0)
        finally:
            await attacker.close()

    @gen_test(timeout=5)
    async def test_at_hash(self):
        access = "an-access-token"
        digest = hashlib.sha256(access.encode()).digest()[:16]
        at_hash = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        token = self.rsa.sign(self.claims(at_hash=at_hash))
        await self.client.validate_id_token(token, nonce="n-1", access_token=access)
        await self.client.validate_id_token(token, nonce="n-1")  # no access token to compare
        await self.refused(token, "id_token_at_hash", access_token="another-token")


# -- the shared key-cache registry ---------------------------------------------------------


class RegistryTest(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.key = SigningKey("RS256", "rsa-1")
        self.fake = FakeIdP([self.key])
        self.http = AsyncHTTPClient(force_instance=True)
        self.registry = JWKSRegistry(self.http, unknown_kid_cooldown=30)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.fake.close)
        self.io_loop.run_sync(self.registry.close)
        self.http.close()
        super().tearDown()

    @gen_test(timeout=5)
    async def test_one_cache_per_uri(self):
        cache = self.registry.get(self.fake.jwks_url)
        self.assertIs(self.registry.get(self.fake.jwks_url), cache)
        self.assertIsNot(self.registry.get(self.fake.jwks_url + "?v=2"), cache)
        self.assertIn(self.fake.jwks_url, self.registry)
        self.assertEqual(len(self.registry), 2)
        await cache.get_key("rsa-1", "RS256")
        await self.registry.close()
        late = self.registry.get("http://127.0.0.1:1/jwks")  # after close: never fetches
        with self.assertRaises(Exception):
            await late.get_key("rsa-1", "RS256")
        self.assertEqual(late.fetch_count, 0)

    @gen_test(timeout=5)
    async def test_verifier_with_configured_jwks_uri_uses_the_registry(self):
        cfg = TokenIssuerConfig(issuer=self.fake.issuer, algorithms=("RS256",), audience=None,
                                jwks_uri=self.fake.jwks_url)
        verifier = TokenVerifier([cfg], self.http, jwks_registry=self.registry, clock=lambda: NOW)
        try:
            await verifier.start()
            self.assertTrue(await verifier.ready())
            token = self.key.sign({"iss": self.fake.issuer, "sub": "u-1", "exp": NOW + 60})
            self.assertEqual((await verifier.verify(token)).sub, "u-1")
            self.assertEqual(self.registry.get(self.fake.jwks_url).fetch_count, 1)
            self.assertEqual(self.fake.jwks_fetches, 1)
        finally:
            await verifier.close()

    @gen_test(timeout=5)
    async def test_verifier_backs_off_when_discovery_fails(self):
        issuer = closed_port_url()
        discovery = DiscoveryCache(self.http)
        verifier = TokenVerifier([TokenIssuerConfig(issuer=issuer, algorithms=("RS256",), audience=None)],
                                 self.http, discovery=discovery, jwks_registry=self.registry, clock=lambda: NOW)
        try:
            token = self.key.sign({"iss": issuer, "sub": "u-1", "exp": NOW + 60})
            for _ in range(3):
                with self.assertRaises(KeysUnavailable):
                    await verifier.verify(token)
            self.assertEqual(discovery.fetch_count, 1)  # not once per token
            self.assertFalse(await verifier.ready())
            self.assertEqual(len(self.registry), 0)
        finally:
            await verifier.close()
