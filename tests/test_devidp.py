"""Tests for gateway.devidp: the development OpenID Connect provider behind ``gateway demo``.

The provider runs on 127.0.0.1 (tornado.testing) and is driven with a real
AsyncHTTPClient over loopback, the way a browser and the gateway would use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from html import unescape
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import jwt
from tornado.testing import AsyncHTTPTestCase, gen_test

from gateway.devidp import DevIdentityProvider

CLIENT_ID = "gateway"
CLIENT_SECRET = "s3cret:with/odd+chars"  # exercises RFC 6749 2.3.1 form-encoding in Basic auth
REDIRECT = "http://127.0.0.1:8080/oauth2/callback"
AFTER_LOGOUT = "http://127.0.0.1:8080/"
USERS = {
    "alice": {"password": "wonderland", "sub": "u-alice", "email": "alice@example.com",
              "name": "Alice Liddell", "groups": ["admins", "sre"], "preferred_username": "alice"},
    "bob": {"password": "builder", "sub": "u-bob", "email": "bob@example.com",
            "name": "Bob", "groups": [], "preferred_username": "bob"},
}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hidden_fields(html: str) -> dict:
    return {unescape(n): unescape(v) for n, v in
            re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', html)}


class DevIdPTest(AsyncHTTPTestCase):
    def get_app(self):
        self.issuer = f"http://127.0.0.1:{self.get_http_port()}"
        self.idp = DevIdentityProvider(
            self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[REDIRECT],
            post_logout_redirect_uris=[AFTER_LOGOUT], users=USERS, access_token_ttl=300)
        return self.idp.make_app()

    async def fetch_(self, path, **kwargs):
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("raise_error", False)
        return await self.http_client.fetch(self.get_url(path), **kwargs)

    def authorize_params(self, challenge, **overrides):
        params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
                  "scope": "openid email profile", "state": "st-1", "nonce": "n-1",
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    async def sign_in(self, challenge, username="alice", password="wonderland", **overrides):
        page = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge, **overrides)))
        self.assertEqual(page.code, 200)
        fields = hidden_fields(page.body.decode())
        fields.update(username=username, password=password)
        return await self.fetch_("/authorize", method="POST", body=urlencode(fields))

    async def get_code(self, **overrides):
        verifier, challenge = pkce()
        response = await self.sign_in(challenge, **overrides)
        self.assertEqual(response.code, 302)
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        return query["code"][0], verifier

    async def token(self, form, basic=True, auth=None):
        headers = {}
        if basic:
            raw = f"{quote_plus(CLIENT_ID)}:{quote_plus(auth or CLIENT_SECRET)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        else:
            form = {**form, "client_id": CLIENT_ID, "client_secret": auth or CLIENT_SECRET}
        response = await self.fetch_("/token", method="POST", body=urlencode(form), headers=headers)
        self.assertEqual(response.headers["Cache-Control"], "no-store")
        return response, json.loads(response.body)

    async def exchange(self, code, verifier, **kwargs):
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": verifier}
        return await self.token(form, **kwargs)

    @gen_test
    async def test_discovery_and_jwks(self):
        doc = json.loads((await self.fetch_("/.well-known/openid-configuration")).body)
        self.assertEqual(doc["issuer"], self.issuer)
        for name, path in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"),
                           ("jwks_uri", "/jwks"), ("userinfo_endpoint", "/userinfo"),
                           ("end_session_endpoint", "/logout")]:
            self.assertEqual(doc[name], self.issuer + path)
        self.assertEqual(doc["code_challenge_methods_supported"], ["S256"])
        self.assertEqual(doc["id_token_signing_alg_values_supported"], ["RS256"])
        self.assertIs(doc["authorization_response_iss_parameter_supported"], True)
        keys = json.loads((await self.fetch_("/jwks")).body)["keys"]
        self.assertEqual(len(keys), 1)
        self.assertEqual((keys[0]["kty"], keys[0]["alg"]), ("RSA", "RS256"))
        self.assertTrue(keys[0]["kid"])
        self.assertNotIn("d", keys[0])

    @gen_test
    async def test_authorize_renders_accessible_form(self):
        _, challenge = pkce()
        response = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge)))
        self.assertEqual(response.code, 200)
        html = response.body.decode()
        self.assertIn("not for production", html)
        self.assertIn('<label for="username">', html)
        self.assertIn('<label for="password">', html)
        self.assertIn('value="alice"', html)  # the first user is prefilled
        self.assertNotRegex(html, r'(src|href)="https?:')  # no external assets
        fields = hidden_fields(html)
        self.assertEqual(fields["state"], "st-1")
        self.assertTrue(fields["form_token"])

    @gen_test
    async def test_bad_client_or_redirect_uri_is_a_page_not_a_redirect(self):
        _, challenge = pkce()
        for overrides in ({"redirect_uri": "https://evil.example/cb"}, {"client_id": "other"},
                          {"redirect_uri": REDIRECT + "/x"}, {"redirect_uri": None}):
            response = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge, **overrides)))
            self.assertEqual(response.code, 400, overrides)
            self.assertNotIn("Location", response.headers)

    @gen_test
    async def test_other_authorize_errors_redirect_back(self):
        _, challenge = pkce()
        cases = [({"code_challenge": None}, "invalid_request"),
                 ({"code_challenge_method": "plain"}, "invalid_request"),
                 ({"code_challenge_method": None}, "invalid_request"),
                 ({"scope": "email"}, "invalid_scope"),
                 ({"response_type": "token"}, "unsupported_response_type")]
        for overrides, error in cases:
            response = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge, **overrides)))
            self.assertEqual(response.code, 302, overrides)
            location = response.headers["Location"]
            self.assertTrue(location.startswith(REDIRECT + "?"))
            query = parse_qs(urlsplit(location).query)
            self.assertEqual(query["error"], [error])
            self.assertEqual(query["state"], ["st-1"])
            self.assertNotIn("code", query)

    @gen_test
    async def test_wrong_password_gives_no_code(self):
        _, challenge = pkce()
        response = await self.sign_in(challenge, password="wrong")
        self.assertIn(response.code, (200, 401))
        self.assertNotIn("Location", response.headers)
        self.assertIn("Wrong username or password", response.body.decode())
        response = await self.sign_in(challenge, username="nobody", password="wonderland")
        self.assertNotIn("Location", response.headers)

    @gen_test
    async def test_form_token_is_single_use_and_params_cannot_be_altered(self):
        _, challenge = pkce()
        page = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge)))
        fields = {**hidden_fields(page.body.decode()), "username": "alice", "password": "wonderland"}
        altered = {**fields, "redirect_uri": "https://evil.example/cb"}
        self.assertEqual((await self.fetch_("/authorize", method="POST", body=urlencode(altered))).code, 400)
        page = await self.fetch_("/authorize?" + urlencode(self.authorize_params(challenge)))
        fields = {**hidden_fields(page.body.decode()), "username": "alice", "password": "wonderland"}
        self.assertEqual((await self.fetch_("/authorize", method="POST", body=urlencode(fields))).code, 302)
        self.assertEqual((await self.fetch_("/authorize", method="POST", body=urlencode(fields))).code, 400)
        fields["form_token"] = "forged"
        self.assertEqual((await self.fetch_("/authorize", method="POST", body=urlencode(fields))).code, 400)

    @gen_test
    async def test_right_password_redirects_with_code_state_and_iss(self):
        _, challenge = pkce()
        response = await self.sign_in(challenge)
        self.assertEqual(response.code, 302)
        location = response.headers["Location"]
        self.assertTrue(location.startswith(REDIRECT + "?"))
        query = parse_qs(urlsplit(location).query)
        self.assertEqual(query["state"], ["st-1"])
        self.assertEqual(query["iss"], [self.issuer])
        self.assertTrue(query["code"][0])

    @gen_test
    async def test_token_exchange_with_basic_auth_and_id_token_verifies_against_jwks(self):
        code, verifier = await self.get_code()
        response, body = await self.exchange(code, verifier, basic=True)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["token_type"], "Bearer")
        self.assertEqual(body["expires_in"], 300)
        self.assertTrue(body["refresh_token"])
        jwks = jwt.PyJWKClient(self.get_url("/jwks"))
        # PyJWKClient fetches synchronously; do it off the event loop.
        key = await self.io_loop.run_in_executor(None, jwks.get_signing_key_from_jwt, body["id_token"])
        claims = jwt.decode(body["id_token"], key.key, algorithms=["RS256"], audience=CLIENT_ID,
                            issuer=self.issuer)
        self.assertEqual(claims["nonce"], "n-1")
        self.assertEqual(claims["sub"], "u-alice")
        self.assertEqual(claims["azp"], CLIENT_ID)
        self.assertEqual(claims["email"], "alice@example.com")
        self.assertIs(claims["email_verified"], True)
        self.assertEqual(claims["groups"], ["admins", "sre"])
        self.assertEqual(claims["preferred_username"], "alice")
        self.assertIn("auth_time", claims)
        access = jwt.decode(body["access_token"], key.key, algorithms=["RS256"], audience=CLIENT_ID,
                            issuer=self.issuer)
        self.assertEqual((access["sub"], access["email"]), ("u-alice", "alice@example.com"))
        self.assertEqual(access["groups"], ["admins", "sre"])

    @gen_test
    async def test_token_exchange_with_post_auth(self):
        code, verifier = await self.get_code()
        response, body = await self.exchange(code, verifier, basic=False)
        self.assertEqual(response.code, 200, body)
        self.assertIn("id_token", body)

    @gen_test
    async def test_bad_client_secret_is_invalid_client(self):
        code, verifier = await self.get_code()
        for basic in (True, False):
            response, body = await self.exchange(code, verifier, basic=basic, auth="wrong")
            self.assertEqual((response.code, body["error"]), (401, "invalid_client"))
        response, body = await self.exchange(code, verifier)  # the code survived failed client auth
        self.assertEqual(response.code, 200, body)

    @gen_test
    async def test_wrong_verifier_is_invalid_grant(self):
        code, _ = await self.get_code()
        response, body = await self.exchange(code, pkce()[0])
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))

    @gen_test
    async def test_wrong_redirect_uri_is_invalid_grant(self):
        code, verifier = await self.get_code()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT + "x",
                "code_verifier": verifier}
        response, body = await self.token(form)
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))

    @gen_test
    async def test_code_replay_is_invalid_grant(self):
        code, verifier = await self.get_code()
        first, _ = await self.exchange(code, verifier)
        self.assertEqual(first.code, 200)
        response, body = await self.exchange(code, verifier)
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))

    @gen_test
    async def test_expired_code_is_invalid_grant(self):
        now = [1_700_000_000.0]
        self.idp.clock = lambda: now[0]
        code, verifier = await self.get_code()
        now[0] += 61
        response, body = await self.exchange(code, verifier)
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))

    @gen_test
    async def test_refresh_rotates_and_old_token_fails(self):
        code, verifier = await self.get_code()
        _, first = await self.exchange(code, verifier)
        response, second = await self.token({"grant_type": "refresh_token",
                                             "refresh_token": first["refresh_token"]})
        self.assertEqual(response.code, 200, second)
        self.assertNotEqual(second["refresh_token"], first["refresh_token"])
        claims = self.idp.verify(second["id_token"])
        self.assertEqual(claims["sub"], "u-alice")
        response, body = await self.token({"grant_type": "refresh_token",
                                           "refresh_token": first["refresh_token"]})
        self.assertEqual((response.code, body["error"]), (400, "invalid_grant"))
        response, _ = await self.token({"grant_type": "refresh_token",
                                        "refresh_token": second["refresh_token"]}, basic=False)
        self.assertEqual(response.code, 200)

    @gen_test
    async def test_unsupported_grant_type(self):
        response, body = await self.token({"grant_type": "password"})
        self.assertEqual((response.code, body["error"]), (400, "unsupported_grant_type"))

    @gen_test
    async def test_userinfo(self):
        code, verifier = await self.get_code()
        _, tokens = await self.exchange(code, verifier)
        response = await self.fetch_("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
        self.assertEqual(response.code, 200)
        info = json.loads(response.body)
        self.assertEqual(info["sub"], "u-alice")
        self.assertEqual(info["email"], "alice@example.com")
        self.assertEqual(info["groups"], ["admins", "sre"])
        for headers in ({}, {"Authorization": "Bearer " + tokens["access_token"][:-4] + "AAAA"},
                        {"Authorization": "Bearer " + tokens["id_token"].split(".")[0] + ".e30.x"}):
            response = await self.fetch_("/userinfo", headers=headers)
            self.assertEqual(response.code, 401)
            self.assertIn("invalid_token", response.headers["WWW-Authenticate"])

    @gen_test
    async def test_logout(self):
        code, verifier = await self.get_code()
        _, tokens = await self.exchange(code, verifier)
        query = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": AFTER_LOGOUT,
                           "state": "bye"})
        response = await self.fetch_("/logout?" + query)
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers["Location"], AFTER_LOGOUT + "?state=bye")
        _, body = await self.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        self.assertEqual(body["error"], "invalid_grant")  # sign-out ended the refresh token
        response = await self.fetch_("/logout?" + urlencode({"post_logout_redirect_uri": "https://evil.example/"}))
        self.assertEqual(response.code, 400)
        self.assertNotIn("Location", response.headers)
        response = await self.fetch_("/logout")
        self.assertEqual(response.code, 200)
        self.assertIn("You are signed out", response.body.decode())

    @gen_test
    async def test_access_log_never_holds_tokens_or_codes(self):
        code, verifier = await self.get_code()
        _, tokens = await self.exchange(code, verifier)
        forged = tokens["id_token"][:-4] + "AAAA"
        with self.assertLogs("tornado.access", "WARNING") as logs:
            response = await self.fetch_("/logout?" + urlencode({"id_token_hint": forged, "state": "s3cr3t"}))
            self.assertEqual(response.code, 400)
            response = await self.fetch_("/authorize?" + urlencode({"client_id": "nope", "code": code}))
            self.assertGreaterEqual(response.code, 400)
        text = "\n".join(logs.output)
        self.assertIn("/logout", text)
        for secret in (forged, tokens["id_token"][:40], "s3cr3t", code):
            self.assertNotIn(secret, text)


def test_default_user_and_generated_password():
    idp = DevIdentityProvider("http://127.0.0.1:1/", client_id="c", client_secret="s", redirect_uris=[REDIRECT])
    assert idp.issuer == "http://127.0.0.1:1"
    (user,) = idp.users.values()
    assert len(user["password"]) >= 16
    assert DevIdentityProvider.generate_password() != DevIdentityProvider.generate_password()


class IssuerWithPathTest(AsyncHTTPTestCase):
    """Endpoints live under the issuer's path."""

    def get_app(self):
        self.issuer = f"http://127.0.0.1:{self.get_http_port()}/idp"
        self.idp = DevIdentityProvider(self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                       redirect_uris=[REDIRECT], users=USERS)
        return self.idp.make_app()

    @gen_test
    async def test_paths(self):
        fetch = self.http_client.fetch
        doc = json.loads((await fetch(self.get_url("/idp/.well-known/openid-configuration"))).body)
        self.assertEqual(doc["jwks_uri"], self.issuer + "/jwks")
        self.assertEqual((await fetch(doc["jwks_uri"])).code, 200)
        response = await fetch(self.get_url("/jwks"), raise_error=False)
        self.assertEqual(response.code, 404)
        _, challenge = pkce()
        query = urlencode({"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "code",
                           "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256"})
        page = (await fetch(doc["authorization_endpoint"] + "?" + query)).body.decode()
        self.assertIn('action="/idp/authorize"', page)
