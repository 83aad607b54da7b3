"""The django-oauth-toolkit fixture (tests/support/dot_provider.py) on its own, without the gateway:
discovery, a sign-in and the code flow over plain HTTP, the ID token's claims and signature,
userinfo, a refresh with both client authentication methods, and an administrator's revocation.
"""

from __future__ import annotations

import base64
from typing import Iterator

import jwt
import pytest

from tests.support.dot_provider import DOTProvider, dot_missing, dot_user, start_dot_provider

pytestmark = [
    pytest.mark.skipif(dot_missing() is not None, reason=dot_missing() or ""),
    pytest.mark.timeout(60),
]

SECRET = "a+b/c=d:e%f&g?h-0123456789"  # every character form encoding changes
CALLBACK = "http://127.0.0.1:9/oauth2/callback"


@pytest.fixture(scope="module")
def dot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DOTProvider]:
    users = [dot_user("alice", "alice-pw", groups=["users", "ops"], first_name="Alice"),
             dot_user("bob", "bob-pw", groups=["users"])]
    with start_dot_provider(tmp_path_factory.mktemp("dot"), redirect_uris=[CALLBACK],
                            post_logout_redirect_uris=["http://127.0.0.1:9/"], client_secret=SECRET,
                            access_token_ttl=60, users=users) as provider:
        yield provider


def test_discovery_is_an_openid_provider_on_localhost(dot: DOTProvider) -> None:
    d = dot.discovery()
    assert d["issuer"] == dot.issuer == f"http://localhost:{dot.port}/o"
    for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "end_session_endpoint"):
        assert d[key].startswith(dot.issuer + "/"), (key, d[key])
    assert "RS256" in d["id_token_signing_alg_values_supported"]
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert {"client_secret_basic", "client_secret_post"} <= set(d["token_endpoint_auth_methods_supported"])
    assert d.get("authorization_response_iss_parameter_supported") is True
    assert {"email", "email_verified", "preferred_username", "groups"} <= set(d["claims_supported"])


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_code_flow_id_token_userinfo_and_refresh(dot: DOTProvider, method: str) -> None:
    tokens = dot.obtain_tokens("alice", redirect_uri=CALLBACK, auth_method=method, nonce="n-0123456789abcdef")
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 60
    assert tokens["access_token"].count(".") != 2, "DOT's access tokens are opaque, not JWTs"

    jwks = jwt.PyJWKClient(dot.discovery()["jwks_uri"].replace("localhost", "127.0.0.1"))
    key = jwks.get_signing_key_from_jwt(tokens["id_token"]).key
    claims = jwt.decode(tokens["id_token"], key, algorithms=["RS256"], audience="gateway", issuer=dot.issuer)
    assert claims["sub"] == str(dot.users["alice"])
    assert claims["nonce"] == "n-0123456789abcdef" and claims["at_hash"]
    assert claims["email"] == "alice@example.test" and claims["email_verified"] is True
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["ops", "users"]

    info = dot.userinfo(tokens["access_token"])
    assert info.status == 200
    assert info.json()["groups"] == ["ops", "users"] and info.json()["sub"] == str(dot.users["alice"])

    before = dot.count(f"token_auth:{method}")
    refreshed = dot.refresh(tokens["refresh_token"], method)
    assert refreshed.status == 200, refreshed.body[:300]
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"], "refresh tokens rotate"
    assert dot.count(f"token_auth:{method}") == before + 1
    # the used refresh token is spent
    assert dot.refresh(tokens["refresh_token"], method).status == 400


def test_wrong_secret_and_unencoded_basic_credentials_are_refused(dot: DOTProvider) -> None:
    opener = dot.sign_in_session("bob")
    query, verifier = dot.authorize(opener, redirect_uri=CALLBACK)
    assert query["iss"] == dot.issuer  # RFC 9207
    raw = base64.b64encode(f"gateway:{SECRET}".encode()).decode()  # not form-encoded first: '+' is a space
    r = dot.post("/o/token/", {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": CALLBACK,
                               "code_verifier": verifier}, {"Authorization": "Basic " + raw})
    assert r.status == 401 and r.json()["error"] == "invalid_client"


def test_revoked_user_cannot_refresh_or_sign_in(dot: DOTProvider) -> None:
    tokens = dot.obtain_tokens("bob", redirect_uri=CALLBACK)
    assert dot.stats()["live_refresh_tokens"]["bob"] >= 1
    assert dot.revoke_user("bob") >= 1
    assert dot.stats()["live_refresh_tokens"]["bob"] == 0
    r = dot.refresh(tokens["refresh_token"])
    assert r.status == 400 and r.json()["error"] == "invalid_grant"
    assert dot.userinfo(tokens["access_token"]).status == 401
    with pytest.raises(AssertionError, match="refused"):
        dot.sign_in_session("bob")
