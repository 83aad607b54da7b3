"""Self-tests of the plain OAuth 2.0 provider emulator (tests/support/fake_oauth2.py): plain HTTP, no gateway."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

import pytest

from tests.support.fake_oauth2 import oauth2_client, oauth2_user, start_fake_oauth2
from tests.support.fake_oauth_base import OPENER, FormClient, hidden_fields, pkce_challenge

pytestmark = pytest.mark.timeout(60)

SECRET = "a+b/c=d:e%f&g?h-0123456789"
CALLBACK = "http://127.0.0.1:9/oauth2/callback"
VERIFIER = "verifier-" + "y" * 40


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Any:
    clients = [
        oauth2_client("any", SECRET, [CALLBACK]),
        oauth2_client("basic-only", SECRET, [CALLBACK, CALLBACK + "2"], auth_method="client_secret_basic"),
        oauth2_client("post-only", SECRET, [CALLBACK], auth_method="client_secret_post"),
    ]
    users = [
        oauth2_user("alice", "alice-pw", id=42, email="alice@corp.test", roles=["ops", "dev"]),
        oauth2_user("bob", "bob-pw", field_names={"id": "data.uid", "email": "data.email", "roles": None}),
        oauth2_user("carol", "carol-pw"),
    ]
    with start_fake_oauth2(tmp_path_factory.mktemp("op"), clients=clients, users=users, access_token_ttl=5) as server:
        yield server


def post(url: str, data: dict[str, str], headers: Optional[dict[str, str]] = None) -> tuple[int, Any, str]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode(), headers=headers or {})
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read().decode()


def basic(client_id: str, secret: str = SECRET) -> dict[str, str]:
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def new_code(op: Any, client_id: str = "any", login: str = "alice", **extra: str) -> str:
    params = {"redirect_uri": CALLBACK, "scope": "profile email", "state": "st",
              "code_challenge": pkce_challenge(VERIFIER), "code_challenge_method": "S256", **extra}
    location = op.authorize(client_id, login, f"{login}-pw", **params)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query.get("state") == ["st"], location
    return query["code"][0]


def token(op: Any, code: str, client_id: str = "any", how: str = "post", **fields: str) -> tuple[int, Any, Any]:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER,
            **fields}
    headers: dict[str, str] = {}
    if how == "post":
        data.update(client_id=client_id, client_secret=SECRET)
    elif how == "basic":
        headers = basic(client_id)
    status, h, text = post(op.token_url, {k: v for k, v in data.items() if v is not None}, headers)
    return status, h, (json.loads(text) if text else None)


def refresh(op: Any, refresh_token: str, client_id: str = "any", **fields: str) -> tuple[int, Any, Any]:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id,
            "client_secret": SECRET, **fields}
    status, h, text = post(op.token_url, data)
    return status, h, (json.loads(text) if text else None)


def me(op: Any, access_token: Optional[str]) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    try:
        with OPENER.open(urllib.request.Request(op.userinfo_url, headers=headers), timeout=5) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, json.loads(err.read() or b"null")


def test_code_flow_answers_rfc6749_json_and_userinfo(op: Any) -> None:
    status, headers, body = token(op, new_code(op))
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 5 and body["scope"] == "profile email"
    assert "id_token" not in body
    assert me(op, body["access_token"])[2] == {"id": 42, "login": "alice", "mail": "alice@corp.test",
                                               "name": "Alice", "roles": ["ops", "dev"]}


def test_field_names_are_configurable_and_nest(op: Any) -> None:
    body = token(op, new_code(op, login="bob"))[2]
    profile = me(op, body["access_token"])[2]
    assert profile["login"] == "bob" and profile["data"]["email"] == "bob@example.test"
    assert isinstance(profile["data"]["uid"], int) and "roles" not in profile and "id" not in profile


def test_no_openid_connect(op: Any) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server", "/jwks"):
        try:
            with OPENER.open(op.url + path, timeout=5):
                raise AssertionError(path)
        except urllib.error.HTTPError as err:
            with err:
                assert err.code == 404


def test_codes_are_single_use_and_reuse_revokes_the_tokens(op: Any) -> None:
    code = new_code(op)
    first = token(op, code)[2]
    status, _, body = token(op, code)
    assert status == 400 and body["error"] == "invalid_grant"
    assert me(op, first["access_token"])[0] == 401
    assert refresh(op, first["refresh_token"])[0] == 400


def test_codes_expire(op: Any) -> None:
    code = new_code(op)
    op.advance_clock(61)
    try:
        assert token(op, code)[2]["error"] == "invalid_grant"
    finally:
        op.advance_clock(-61)


def test_pkce_is_required_and_checked(op: Any) -> None:
    status, _, body = token(op, new_code(op), code_verifier="z" * 43)
    assert status == 400 and body["error"] == "invalid_grant"
    status, _, body = token(op, new_code(op), code_verifier=None)
    assert status == 400 and body["error"] == "invalid_request"
    for extra in ({"code_challenge": ""}, {"code_challenge_method": "plain"}):
        params = {"redirect_uri": CALLBACK, "state": "st", "code_challenge": pkce_challenge(VERIFIER),
                  "code_challenge_method": "S256", **extra}
        location = op.authorize("any", "alice", "alice-pw", **{k: v for k, v in params.items() if v})
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        assert query["error"] == ["invalid_request"] and query["state"] == ["st"] and "code" not in query


def test_redirect_uri_is_exact(op: Any) -> None:
    client = FormClient(op.url)
    base = {"response_type": "code", "client_id": "any", "code_challenge": pkce_challenge(VERIFIER),
            "code_challenge_method": "S256"}
    for bad in (CALLBACK + "/deeper", CALLBACK.replace(":9/", ":10/")):
        status, location, _ = client.call(op.authorize_url + "?" + urllib.parse.urlencode({**base, "redirect_uri": bad}))
        assert status == 400 and not location
    status, location, _ = client.call(op.authorize_url + "?" + urllib.parse.urlencode({**base, "client_id": "basic-only"}))
    assert status == 400  # two registered: redirect_uri is needed
    status, _, body = token(op, new_code(op), redirect_uri=CALLBACK + "2")
    assert status == 400 and body["error"] == "invalid_grant"


def test_client_secret_basic_and_post(op: Any) -> None:
    assert token(op, new_code(op, "basic-only"), "basic-only", how="basic")[0] == 200
    assert token(op, new_code(op, "post-only"), "post-only", how="post")[0] == 200
    status, headers, body = token(op, new_code(op, "basic-only"), "basic-only", how="post")
    assert status == 401 and body["error"] == "invalid_client" and "WWW-Authenticate" not in headers
    status, headers, body = token(op, new_code(op, "post-only"), "post-only", how="basic")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    raw = {"Authorization": "Basic " + base64.b64encode(f"any:{SECRET}".encode()).decode()}  # not form-encoded
    data = {"grant_type": "authorization_code", "code": new_code(op), "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    assert post(op.token_url, data, raw)[0] == 401
    both = {**data, "code": new_code(op), "client_id": "any", "client_secret": SECRET}
    status, _, text = post(op.token_url, both, basic("any"))
    assert status == 400 and json.loads(text)["error"] == "invalid_request"
    stats = op.stats()
    assert stats["client_auth:client_secret_basic"] >= 2 and stats["client_auth:client_secret_post"] >= 2


def test_unsupported_grant_and_missing_client(op: Any) -> None:
    status, _, text = post(op.token_url, {"grant_type": "password", "client_id": "any", "client_secret": SECRET})
    assert status == 400 and json.loads(text)["error"] == "unsupported_grant_type"
    status, _, text = post(op.token_url, {"grant_type": "authorization_code", "code": "x"})
    assert status == 401 and json.loads(text)["error"] == "invalid_client"


def test_refresh_rotates_and_access_tokens_expire(op: Any) -> None:
    body = token(op, new_code(op))[2]
    op.advance_clock(6)
    try:
        status, headers, _ = me(op, body["access_token"])
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        status, _, new = refresh(op, body["refresh_token"])
        assert status == 200 and new["refresh_token"] != body["refresh_token"]
        assert me(op, new["access_token"])[0] == 200
        status, _, old = refresh(op, body["refresh_token"])
        assert status == 400 and old["error"] == "invalid_grant"
        status, _, narrower = refresh(op, new["refresh_token"], scope="email")
        assert status == 200 and narrower["scope"] == "email"
        assert refresh(op, narrower["refresh_token"], scope="admin")[2]["error"] == "invalid_scope"
    finally:
        op.advance_clock(-6)


def test_revoked_user_refresh_fails_json_then_empty_body(op: Any) -> None:
    one, two = token(op, new_code(op, login="carol"))[2], token(op, new_code(op, login="carol"))[2]
    assert op.revoke_user("carol") == 4
    assert me(op, one["access_token"])[0] == 401
    status, headers, body = refresh(op, one["refresh_token"])
    assert status == 400 and body == {"error": "invalid_grant",
                                      "error_description": "The refresh token is invalid, expired or revoked."}
    op.set_refresh_error_mode("empty")
    try:
        status, headers, body = refresh(op, two["refresh_token"])
        assert status == 400 and body is None and headers.get("Content-Length") == "0"
    finally:
        op.set_refresh_error_mode("json")


def test_fail_next_refresh(op: Any) -> None:
    body = token(op, new_code(op))[2]
    op.fail_next_refresh()
    assert refresh(op, body["refresh_token"])[0] == 400
    assert refresh(op, body["refresh_token"])[0] == 200


def test_session_cookie_skips_the_form_and_cancel_is_access_denied(op: Any) -> None:
    client = FormClient(op.url)
    params = {"redirect_uri": CALLBACK, "state": "st", "code_challenge": pkce_challenge(VERIFIER),
              "code_challenge_method": "S256"}
    op.authorize("any", "alice", "alice-pw", client=client, **params)
    pages = op.stats()["login_page"]
    assert "code=" in op.authorize("any", "alice", "ignored", client=client, **params)
    assert op.stats()["login_page"] == pages
    fresh = FormClient(op.url)
    _, _, form = fresh.call(op.authorize_url + "?" + urllib.parse.urlencode({"response_type": "code", "client_id": "any",
                                                                            **params}))
    status, location, _ = fresh.call("/authorize", {**hidden_fields(form), "action": "cancel"})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert status == 302 and query["error"] == ["access_denied"] and query["state"] == ["st"]


def test_userinfo_needs_a_bearer_token(op: Any) -> None:
    status, headers, body = me(op, None)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="fake-oauth2"'
    assert me(op, "at_unknown")[0] == 401


def test_chromium_signs_in(tmp_path: Any) -> None:
    from tests.support.browser import chromium_browser, wait_for_chromium
    from tests.support.fake_oauth2 import oauth2_sign_in
    from tests.support.upstream import Upstream

    if wait_for_chromium(timeout=30) is None:
        pytest.skip("/usr/bin/chromium is not installed")
    up = Upstream("callback").start()
    try:
        callback = f"{up.url}/cb"
        with start_fake_oauth2(tmp_path, clients=[oauth2_client("gw", SECRET, [callback])],
                               users=[oauth2_user("alice", "alice-pw")]) as op, chromium_browser() as context:
            page = context.new_page()
            query = urllib.parse.urlencode({"response_type": "code", "client_id": "gw", "redirect_uri": callback,
                                            "state": "st", "code_challenge": pkce_challenge(VERIFIER),
                                            "code_challenge_method": "S256"})
            page.goto(f"{op.authorize_url}?{query}")
            oauth2_sign_in(page, "alice", "alice-pw")
            page.wait_for_url(f"{callback}?*")
            code = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["code"][0]
            data = {"grant_type": "authorization_code", "code": code, "redirect_uri": callback,
                    "code_verifier": VERIFIER}
            status, _, text = post(op.token_url, data, basic("gw"))
            assert status == 200 and "access_token" in json.loads(text)
    finally:
        up.stop()
