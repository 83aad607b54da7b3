"""Self-tests of the GitHub emulator (tests/support/fake_github.py) with plain HTTP: no gateway."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

import pytest

from tests.support.fake_github import github_user, redirect_allowed, start_fake_github
from tests.support.fake_oauth_base import OPENER, FormClient, hidden_fields, pkce_challenge

pytestmark = pytest.mark.timeout(60)

SECRET = "a+b/c=d:e%f&g?h-0123456789"
CALLBACK = "http://127.0.0.1:9/oauth2/callback"
VERIFIER = "v3r1f1er-" + "x" * 40
ORGS = [f"org{i:02d}" for i in range(35)]


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    users = [
        github_user("alice", "alice-pw", id=1001, name="Alice Example", orgs=ORGS, teams=["acme/ops", "acme/dev"],
                    emails=["alice@corp.test", {"email": "a@home.test", "verified": False}],
                    public_email="alice@corp.test"),
        github_user("bob", "bob-pw"),
    ]
    with start_fake_github(tmp_path_factory.mktemp("gh"), clients={"gateway": (SECRET, [CALLBACK])},
                           users=users) as server:
        yield server


def call(url: str, data: Optional[dict[str, str]] = None, headers: Optional[dict[str, str]] = None,
         method: Optional[str] = None) -> tuple[int, Any, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"User-Agent": "self-test", **(headers or {})}, method=method)
    try:
        with OPENER.open(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read().decode()


def code_from(location: str, state: str = "st") -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["state"] == [state], location
    return query["code"][0]


def new_code(gh: Any, login: str = "alice", scope: str = "read:org user:email", pkce: bool = True, **extra: str) -> str:
    params = {"redirect_uri": CALLBACK, "scope": scope, "state": "st", **extra}
    if pkce:
        params.update(code_challenge=pkce_challenge(VERIFIER), code_challenge_method="S256")
    return code_from(gh.authorize("gateway", login, f"{login}-pw", **params))


def exchange(gh: Any, code: str, accept: str = "application/json", **fields: str) -> tuple[int, Any, Any]:
    data = {"client_id": "gateway", "client_secret": SECRET, "code": code, "redirect_uri": CALLBACK,
            "code_verifier": VERIFIER, **fields}
    data = {k: v for k, v in data.items() if v is not None}
    status, headers, text = call(gh.token_url, data, {"Accept": accept})
    if "json" in accept:
        return status, headers, json.loads(text)
    return status, headers, text


def token_for(gh: Any, **kw: str) -> str:
    status, _, body = exchange(gh, new_code(gh, **kw))
    assert status == 200 and "access_token" in body, body
    return body["access_token"]


def api(gh: Any, path: str, token: Optional[str], scheme: str = "Bearer", **headers: str) -> tuple[int, Any, Any]:
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    status, h, text = call(gh.api_url + path, headers=headers)
    return status, h, json.loads(text)


# -- the redirect_uri rule of "Authorizing OAuth apps" ---------------------------------------


@pytest.mark.parametrize("redirect, ok", [
    ("http://example.com/path", True),
    ("http://example.com/path/subdir/other", True),
    ("http://oauth.example.com/path", True),
    ("http://oauth.example.com/path/subdir/other", True),
    ("http://example.com/bar", False),
    ("http://example.com/", False),
    ("http://example.com:8080/path", False),
    ("http://oauth.example.com:8080/path", False),
    ("http://example.org", False),
    ("http://example.com/pathology", False),
    ("https://example.com/path", False),
    ("http://evilexample.com/path", False),
])
def test_redirect_rule_matches_githubs_documented_examples(redirect: str, ok: bool) -> None:
    assert redirect_allowed("http://example.com/path", redirect) is ok


def test_loopback_callbacks_allow_any_port_but_not_another_path() -> None:
    assert redirect_allowed("http://127.0.0.1/path", "http://127.0.0.1:1234/path")
    assert redirect_allowed("http://127.0.0.1:8080/cb", "http://127.0.0.1:9090/cb/x")
    assert not redirect_allowed("http://127.0.0.1/path", "http://127.0.0.1:1234/other")
    assert not redirect_allowed("http://127.0.0.1/path", "http://localhost:1234/path")


# -- web flow ----------------------------------------------------------------------------------


def test_web_flow_json_answer_and_pkce_counted(gh: Any) -> None:
    before = gh.stats().get("pkce_verified", 0)
    status, headers, body = exchange(gh, new_code(gh))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert list(body) == ["access_token", "scope", "token_type"]
    assert body["access_token"].startswith("gho_") and body["token_type"] == "bearer"
    assert body["scope"] == "read:org,user:email"
    assert gh.stats()["pkce_verified"] == before + 1


def test_default_answer_is_form_encoded_and_xml_on_request(gh: Any) -> None:
    status, headers, text = exchange(gh, new_code(gh), accept="*/*")
    assert status == 200 and headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    fields = urllib.parse.parse_qs(text)
    assert set(fields) == {"access_token", "scope", "token_type"} and fields["token_type"] == ["bearer"]
    status, headers, text = exchange(gh, new_code(gh), accept="application/xml")
    assert headers["Content-Type"].startswith("application/xml")
    assert re.fullmatch(r"<OAuth><access_token>gho_\w+</access_token><scope>read:org,user:email</scope>"
                        r"<token_type>bearer</token_type></OAuth>", text)


def test_codes_are_single_use_and_errors_answer_200(gh: Any) -> None:
    code = new_code(gh)
    assert exchange(gh, code)[0] == 200
    status, _, body = exchange(gh, code)
    assert status == 200
    assert body == {"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired.",
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
                                 "troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}
    status, _, text = exchange(gh, code, accept="")
    assert urllib.parse.parse_qs(text)["error"] == ["bad_verification_code"]


def test_codes_expire_after_ten_minutes(gh: Any) -> None:
    fresh, stale = new_code(gh), new_code(gh)
    gh.advance_clock(601)
    assert exchange(gh, stale)[2]["error"] == "bad_verification_code"
    gh.advance_clock(-601)
    assert "access_token" in exchange(gh, fresh)[2]


def test_pkce_wrong_or_missing_verifier_is_refused_and_burns_the_code(gh: Any) -> None:
    code = new_code(gh)
    assert exchange(gh, code, code_verifier="w" * 43)[2]["error"] == "bad_verification_code"
    assert exchange(gh, code)[2]["error"] == "bad_verification_code"  # the code is gone
    assert exchange(gh, new_code(gh), code_verifier=None)[2]["error"] == "bad_verification_code"
    assert gh.stats()["token_error:pkce"] >= 2


def test_without_pkce_the_exchange_needs_no_verifier(gh: Any) -> None:
    assert "access_token" in exchange(gh, new_code(gh, pkce=False), code_verifier=None)[2]


def test_plain_pkce_method_is_refused_at_authorize(gh: Any) -> None:
    location = gh.authorize("gateway", "alice", "alice-pw", redirect_uri=CALLBACK, state="st",
                            code_challenge=VERIFIER[:43], code_challenge_method="plain")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert location.startswith(CALLBACK) and query["error"] == ["invalid_request"] and query["state"] == ["st"]


def test_client_credentials_in_body_or_basic(gh: Any) -> None:
    assert exchange(gh, new_code(gh), client_secret="wrong")[2]["error"] == "incorrect_client_credentials"
    code = new_code(gh)
    basic = base64.b64encode(f"gateway:{urllib.parse.quote_plus(SECRET)}".encode()).decode()
    data = {"code": code, "redirect_uri": CALLBACK, "code_verifier": VERIFIER}
    status, _, text = call(gh.token_url, data, {"Accept": "application/json", "Authorization": f"Basic {basic}"})
    assert "access_token" in json.loads(text)
    raw = base64.b64encode(f"gateway:{SECRET}".encode()).decode()  # not form-encoded first: RFC 6749 §2.3.1
    status, _, text = call(gh.token_url, {**data, "code": new_code(gh)},
                           {"Accept": "application/json", "Authorization": f"Basic {raw}"})
    assert json.loads(text)["error"] == "incorrect_client_credentials"


def test_redirect_uri_mismatch_at_authorize_and_token(gh: Any) -> None:
    location = gh.authorize("gateway", "alice", "alice-pw", redirect_uri="http://127.0.0.1:9/elsewhere", state="s1")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert location.startswith(CALLBACK + "?")
    assert query["error"] == ["redirect_uri_mismatch"] and query["state"] == ["s1"]
    code = new_code(gh, redirect_uri=CALLBACK + "/deeper")  # allowed: below the callback
    assert exchange(gh, code)[2]["error"] == "redirect_uri_mismatch"  # but not the one it was issued for


def test_denied_authorization_redirects_with_access_denied(gh: Any) -> None:
    client = FormClient(gh.url)
    query = urllib.parse.urlencode({"client_id": "gateway", "redirect_uri": CALLBACK, "state": "s2", "scope": "repo"})
    status, location, _ = client.call(f"{gh.authorize_url}?{query}")
    status, location, _ = client.call("/session", {**_fields(client, location), "login": "bob", "password": "bob-pw"})
    status, _, consent = client.call(location)
    assert 'id="js-oauth-cancel-btn"' in consent and 'id="js-oauth-authorize-btn"' in consent
    status, location, _ = client.call("/login/oauth/authorize", {**hidden_fields(consent), "authorize": "0"})
    query_back = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query_back["error"] == ["access_denied"] and query_back["state"] == ["s2"]


def _fields(client: FormClient, login_location: str) -> dict[str, str]:
    status, _, form = client.call(login_location)
    assert status == 200 and 'id="login_field"' in form and 'name="commit"' in form
    return hidden_fields(form)


def test_signed_in_user_with_granted_scopes_skips_the_pages(gh: Any) -> None:
    client = FormClient(gh.url)
    first = gh.authorize("gateway", "bob", "bob-pw", client=client, redirect_uri=CALLBACK, scope="user", state="st")
    pages = gh.stats().get("consent_page", 0)
    again = gh.authorize("gateway", "bob", "wrong", client=client, redirect_uri=CALLBACK, scope="user", state="st")
    assert code_from(first) != code_from(again)
    assert gh.stats().get("consent_page", 0) == pages


def test_wrong_password_shows_the_form_again(gh: Any) -> None:
    with pytest.raises(AssertionError, match="sign-in refused"):
        gh.authorize("gateway", "alice", "nope", redirect_uri=CALLBACK)


def test_unknown_client_is_a_404_page(gh: Any) -> None:
    status, _, text = call(f"{gh.authorize_url}?client_id=nobody")
    assert status == 404 and "<html" in text


# -- REST API ------------------------------------------------------------------------------------


def test_user_resource_and_headers(gh: Any) -> None:
    token = token_for(gh)
    status, headers, user = api(gh, "/user", token, **{"X-GitHub-Api-Version": "2022-11-28"})
    assert status == 200
    assert user["login"] == "alice" and user["id"] == 1001 and user["name"] == "Alice Example"
    assert user["email"] == "alice@corp.test" and user["node_id"] == "MDQ6VXNlcjEwMDE="
    assert user["url"] == f"{gh.api_url}/users/alice" and user["type"] == "User"
    assert "plan" not in user  # private fields need the user scope
    assert headers["X-OAuth-Scopes"] == "read:org, user:email"
    assert headers["X-GitHub-Api-Version-Selected"] == "2022-11-28"
    assert api(gh, "/user", token, scheme="token")[0] == 200
    assert "plan" in api(gh, "/user", token_for(gh, scope="user"))[2]


def test_emails_need_the_user_email_scope(gh: Any) -> None:
    status, _, emails = api(gh, "/user/emails", token_for(gh))
    assert status == 200
    assert emails == [
        {"email": "alice@corp.test", "primary": True, "verified": True, "visibility": "private"},
        {"email": "a@home.test", "primary": False, "verified": False, "visibility": None},
    ]
    status, _, body = api(gh, "/user/emails", token_for(gh, scope="read:org"))
    assert status == 404 and body["message"] == "Not Found"


def test_orgs_and_teams_need_read_org(gh: Any) -> None:
    token = token_for(gh, scope="user:email")
    assert api(gh, "/user/orgs", token)[0] == 403
    assert api(gh, "/user/teams", token)[0] == 403
    status, _, teams = api(gh, "/user/teams", token_for(gh))
    assert status == 200
    assert [(t["organization"]["login"], t["slug"]) for t in teams] == [("acme", "ops"), ("acme", "dev")]


def test_orgs_paginate_with_githubs_link_header(gh: Any) -> None:
    token = token_for(gh)
    status, headers, first = api(gh, "/user/orgs", token)
    assert status == 200 and len(first) == 30
    assert headers["Link"] == (f'<{gh.api_url}/user/orgs?page=2>; rel="next", '
                               f'<{gh.api_url}/user/orgs?page=2>; rel="last"')
    status, headers, middle = api(gh, "/user/orgs?per_page=10&page=2", token)
    assert [o["login"] for o in middle] == ORGS[10:20]
    assert headers["Link"] == ", ".join([
        f'<{gh.api_url}/user/orgs?per_page=10&page=1>; rel="prev"',
        f'<{gh.api_url}/user/orgs?per_page=10&page=3>; rel="next"',
        f'<{gh.api_url}/user/orgs?per_page=10&page=4>; rel="last"',
        f'<{gh.api_url}/user/orgs?per_page=10&page=1>; rel="first"',
    ])
    logins, url = [], f"{gh.api_url}/user/orgs?per_page=7"
    while url:
        status, h, text = call(url, headers={"Authorization": f"Bearer {token}"})
        logins += [o["login"] for o in json.loads(text)]
        m = re.search(r'<([^>]+)>; rel="next"', h.get("Link", ""))
        url = m.group(1) if m else ""
    assert logins == ORGS + ["acme"]  # a team's organisation is one of the user's
    status, headers, everything = api(gh, "/user/orgs?per_page=500", token)
    assert len(everything) == 36 and "Link" not in headers  # per_page is capped at 100


def test_bad_credentials_and_missing_authentication(gh: Any) -> None:
    status, _, body = api(gh, "/user", "gho_notatoken")
    assert status == 401 and body["message"] == "Bad credentials"
    status, _, body = api(gh, "/user", None)
    assert status == 401 and body["message"] == "Requires authentication"
    status, _, _ = api(gh, "/user", token_for(gh), scheme="Basic")
    assert status == 401


def test_user_agent_is_required_and_api_version_checked(gh: Any) -> None:
    req = urllib.request.Request(gh.api_url + "/user", headers={"Authorization": f"Bearer {token_for(gh)}"})
    req.remove_header("User-agent")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.addheaders = []
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(req, timeout=5)
    with err.value:
        assert err.value.code == 403
    assert api(gh, "/user", token_for(gh), **{"X-GitHub-Api-Version": "1999-01-01"})[0] == 400


def test_revoke_token_and_login(gh: Any) -> None:
    one, two = token_for(gh, login="bob", scope="user"), token_for(gh, login="bob", scope="user")
    assert gh.revoke(one) == 1
    assert api(gh, "/user", one)[0] == 401 and api(gh, "/user", two)[0] == 200
    gh.revoke(login="bob")
    assert api(gh, "/user", two)[0] == 401


def test_request_log_has_no_secrets(gh: Any) -> None:
    exchange(gh, new_code(gh))
    logged = json.dumps(gh.requests())
    assert SECRET not in logged and VERIFIER not in logged and '"client_secret"' in logged


# -- expiring user tokens (GitHub App style) -------------------------------------------------------


def test_expiring_tokens_refresh_and_rotate(tmp_path: Any) -> None:
    with start_fake_github(tmp_path, clients={"gateway": (SECRET, [CALLBACK])}, users=[github_user("alice", "alice-pw")],
                           expiring_tokens=True, access_token_ttl=5, refresh_token_ttl=100) as gh:
        status, _, body = exchange(gh, new_code(gh, scope=""))
        assert list(body) == ["access_token", "expires_in", "refresh_token", "refresh_token_expires_in",
                              "scope", "token_type"]
        assert body["access_token"].startswith("ghu_") and body["refresh_token"].startswith("ghr_")
        assert body["expires_in"] == 5 and body["refresh_token_expires_in"] == 100
        gh.advance_clock(6)
        assert api(gh, "/user", body["access_token"])[0] == 401
        refresh = {"client_id": "gateway", "client_secret": SECRET, "grant_type": "refresh_token",
                   "refresh_token": body["refresh_token"]}
        new = json.loads(call(gh.token_url, refresh, {"Accept": "application/json"})[2])
        assert api(gh, "/user", new["access_token"])[0] == 200
        assert json.loads(call(gh.token_url, refresh, {"Accept": "application/json"})[2])["error"] == "bad_refresh_token"
        gh.revoke(login="alice")
        again = {**refresh, "refresh_token": new["refresh_token"]}
        assert json.loads(call(gh.token_url, again, {"Accept": "application/json"})[2])["error"] == "bad_refresh_token"
        assert gh.stats()["refresh_ok"] == 1


# -- the pages in a real browser ----------------------------------------------------------------------


def test_chromium_signs_in_and_authorizes(tmp_path: Any) -> None:
    from tests.support.browser import chromium_browser, wait_for_chromium
    from tests.support.fake_github import github_sign_in
    from tests.support.upstream import Upstream

    if wait_for_chromium(timeout=30) is None:
        pytest.skip("/usr/bin/chromium is not installed")
    up = Upstream("callback").start()
    try:
        callback = f"{up.url}/cb"
        with start_fake_github(tmp_path, clients={"gateway": (SECRET, [callback])},
                               users=[github_user("alice", "alice-pw")]) as gh, chromium_browser() as context:
            page = context.new_page()
            query = urllib.parse.urlencode({"client_id": "gateway", "redirect_uri": callback + "/x", "state": "st",
                                            "scope": "read:org", "login": "alice",
                                            "code_challenge": pkce_challenge(VERIFIER), "code_challenge_method": "S256"})
            page.goto(f"{gh.authorize_url}?{query}")
            assert page.input_value("#login_field") == "alice"  # the login hint
            github_sign_in(page, "alice", "alice-pw")
            page.wait_for_url(f"{callback}/x?*")
            code = code_from(page.url)
            assert "access_token" in exchange(gh, code, redirect_uri=callback + "/x")[2]
            page.goto(f"{gh.authorize_url}?{query}")  # signed in, scopes granted: straight back
            page.wait_for_url(f"{callback}/x?*")
            assert gh.stats()["consent_page"] == 1 and gh.stats()["sign_in"] == 1
    finally:
        up.stop()
