"""End to end: GitHub, a plain OAuth 2.0 service and an OpenID Connect provider behind one gateway.

GitHub cannot run here, so its OAuth app flow and REST API are emulated on loopback
(tests/support/fake_github.py: the GitHub Enterprise Server layout under ``base_url``, real
field names, single-use codes, PKCE checked, paginated ``Link`` headers); the plain OAuth 2.0
service is tests/support/fake_oauth2.py and the OpenID Connect provider the certified
oidc-provider (tests/idp). The providers are reached as ``http://localhost:PORT`` and the
gateway as ``http://127.0.0.1:PORT``, so their cookies never mix; headless Chromium drives
every sign-in.

    /gh        login, providers [gh]                       (preset: github)
    /gh-sre    login, [gh], allow group acme/sre            (a team)
    /gh-acme   login, [gh], allow group acme                (an organisation)
    /gh-corp   login, [gh], allow email_domain corp.test
    /legacy    login, [legacy], allow group ops             (type: oauth2, claims mapping)
    /eng       login, [legacy], allow claim department: eng (a claim rule on a login route)
    /both      login, [corp, gh]                            (the chooser)
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
from tests.support.e2e import request
from tests.support.fake_github import FakeGitHub, github_sign_in, github_user, start_fake_github
from tests.support.fake_oauth2 import FakeOAuth2, oauth2_client, oauth2_sign_in, oauth2_user, start_fake_oauth2
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (HTML_ACCEPT, RequestLog, cookie_header, free_port, gateway_yaml,
                                     provider_entry, provider_sign_in, start_gateway, wait_url)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.upstream import Upstream

LOOPBACK_ONLY_ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(90),
]

COOKIE = "_gwp"
GH_SECRET = "gh-secret+/=:%&?-0123456789"
LEGACY_SECRET = "legacy-secret+/=:%&?-0123456789"
CORP_SECRET = "corp-secret-0123456789abcdef"
ACCESS_TTL = 4  # the plain OAuth 2.0 service's access tokens: refreshed after about 3.2 s
MANY_ORGS = [f"org-{i:02d}" for i in range(23)]  # with max_per_page 10: three pages of /user/orgs


@dataclass
class Env:
    gh: FakeGitHub
    legacy: FakeOAuth2
    idp: OIDCProvider
    gw: GatewayProcess
    up: Upstream
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    callback = url + "/oauth2/callback"
    gh_users = [
        github_user("alice", "alice-pw", id=4242, name="Alice", emails=["alice@corp.test", "alice@home.test"],
                    orgs=["acme", *MANY_ORGS], teams=["acme/sre", "beta/dev"]),
        github_user("bob", "bob-pw", id=77, orgs=["acme"], emails=["bob@corp.test"]),
        github_user("carol", "carol-pw", id=91, public_email="carol@corp.test",
                    emails=[{"email": "carol@corp.test", "primary": True, "verified": False, "visibility": "public"}]),
    ]
    legacy_users = [
        oauth2_user("dave", "dave-pw", id=501, email="dave@legacy.test", roles=["ops"], extra={"department": "eng"}),
        oauth2_user("erin", "erin-pw", id=502, roles=[], extra={"department": "sales"}),
        oauth2_user("frank", "frank-pw", id=503, roles=["ops"]),
        oauth2_user("nobody", "nobody-pw", field_names={"id": None}),  # no id: nobody to sign in
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path_factory.mktemp("keys") / "client.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public_jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": "gw-key-1",
                  "use": "sig", "alg": "ES256"}
    up = Upstream("app").start()
    try:
        with start_fake_github(tmp_path_factory.mktemp("gh"), clients={"Iv1.gateway": (GH_SECRET, [callback])},
                               users=gh_users, max_per_page=10) as gh, \
                start_fake_oauth2(tmp_path_factory.mktemp("legacy"),
                                  clients=[oauth2_client("gw-legacy", LEGACY_SECRET, [callback],
                                                         auth_method="client_secret_basic")],
                                  users=legacy_users, access_token_ttl=ACCESS_TTL) as legacy, \
                start_oidc_provider(tmp_path_factory.mktemp("idp"),
                                    clients=[client("gw", CORP_SECRET, [callback], post_logout_redirect_uris=[url + "/"]),
                                             client("gw-signed", "not-used-by-this-client-0123456789", [callback],
                                                    token_endpoint_auth_method="private_key_jwt",
                                                    token_endpoint_auth_signing_alg="ES256",
                                                    jwks={"keys": [public_jwk]})],
                                    users=[user("alice", "corp-pw", email="alice@corp.test", groups=["users"])],
                                    extra_config={"clientAuthMethods": ["client_secret_basic", "client_secret_post",
                                                                        "private_key_jwt"]}) as idp:
            gh_base = gh.base_url.replace("127.0.0.1", "localhost")
            legacy_base = legacy.url.replace("127.0.0.1", "localhost")
            providers = {
                "gh": {"preset": "github", "client_id": "Iv1.gateway", "client_secret": GH_SECRET,
                       "base_url": gh_base},
                "legacy": {"type": "oauth2", "authorization_endpoint": legacy_base + "/authorize",
                           "token_endpoint": legacy_base + "/token", "userinfo_endpoint": legacy_base + "/api/me",
                           "claims": {"sub": "id", "email": "mail", "preferred_username": "login", "groups": "roles"},
                           "client_id": "gw-legacy", "client_secret": LEGACY_SECRET, "scopes": ["profile"],
                           "display_name": "Legacy SSO"},
                "corp": provider_entry(idp.issuer, "gw", CORP_SECRET, "Corp"),
                "signed": {"issuer": idp.issuer, "client_id": "gw-signed", "token_endpoint_auth_method": "private_key_jwt",
                           "client_private_key": str(key_file), "client_key_id": "gw-key-1"},
            }

            def route(name: str, providers: list, **more: Any) -> dict:
                return {"name": name, "path": "/" + name, "upstream": up.url, "auth": "login",
                        "providers": providers, **more}

            routes = [
                {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
                route("gh", ["gh"]),
                route("gh-sre", ["gh"], allow=[{"group": "acme/sre"}]),
                route("gh-acme", ["gh"], allow=[{"group": "acme"}]),
                route("gh-corp", ["gh"], allow=[{"email_domain": "corp.test"}]),
                route("legacy", ["legacy"], allow=[{"group": "ops"}]),
                route("eng", ["legacy"], allow=[{"claim": {"department": "eng"}}]),
                route("both", ["corp", "gh"]),
                route("signed", ["signed"]),
            ]
            gw = start_gateway(gateway_yaml(port, providers=providers, routes=routes, cookie_name=COOKIE), port)
            try:
                yield Env(gh, legacy, idp, gw, up, port)
            finally:
                gw.stop()
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    with chromium_browser(args=LOOPBACK_ONLY_ARGS) as context:
        yield context


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    browser_context.clear_cookies()
    browser_context.blocked_requests.clear()
    page = browser_context.new_page()
    yield page
    page.close()
    assert browser_context.blocked_requests == [], browser_context.blocked_requests


def headers_at(env: Env, path: str) -> dict:
    seen = env.up.last(path)
    assert seen is not None, f"the upstream never saw {path}"
    return seen["headers"]


def github_login(env: Env, page: Any, path: str, login: str, password: str) -> None:
    page.goto(env.url + path)
    assert urllib.parse.urlsplit(page.url).path in ("/login", "/login/oauth/authorize"), page.url
    github_sign_in(page, login, password)
    page.wait_for_url(lambda u: u.startswith(env.url + "/"))
    page.wait_for_load_state("load")


def legacy_login(env: Env, page: Any, path: str, login: str, password: str) -> None:
    page.goto(env.url + path)
    oauth2_sign_in(page, login, password)
    page.wait_for_url(lambda u: u.startswith(env.url + "/"))
    page.wait_for_load_state("load")


# --------------------------------------------------------------------------- GitHub


def test_github_sign_in_forwards_the_numeric_id_login_verified_email_orgs_and_teams(env: Env, page: Any) -> None:
    env.gh.reset_stats()
    with RequestLog(page.context) as log:
        github_login(env, page, "/gh/home", "alice", "alice-pw")
    assert page.url == env.url + "/gh/home"
    authorize = log.query_of(env.gh.base_url.replace("127.0.0.1", "localhost") + "/login/oauth/authorize?")
    assert authorize["scope"] == "read:user user:email read:org"
    assert authorize["code_challenge_method"] == "S256" and len(authorize["state"]) >= 32
    assert "nonce" not in authorize
    seen = headers_at(env, "/gh/home")
    assert seen["X-Forwarded-User"] == "4242"  # the id, not the login: logins can be renamed and reused
    assert seen["X-Forwarded-Preferred-Username"] == "alice"
    assert seen["X-Forwarded-Email"] == "alice@corp.test"  # the primary verified address
    groups = seen["X-Forwarded-Groups"].split(",")
    assert {"acme", "acme/sre", "beta", "beta/dev"} <= set(groups)
    assert set(MANY_ORGS) <= set(groups), "every page of /user/orgs"
    stats = env.gh.stats()
    assert stats.get("pkce_verified") == 1 and stats.get("token_ok") == 1
    assert stats.get("api:/user/orgs", 0) >= 3, stats  # followed rel="next" over three pages


def test_github_team_and_organisation_rules(env: Env, page: Any) -> None:
    github_login(env, page, "/gh-sre/x", "alice", "alice-pw")
    assert page.url == env.url + "/gh-sre/x"
    page.context.clear_cookies()
    github_login(env, page, "/gh-sre/x", "bob", "bob-pw")
    assert page.title().startswith("Access denied") or "403" in page.title() or page.locator("h1").count()
    assert request(env.url, "GET", "/gh-sre/x", {"Cookie": cookie_header(page.context, env.url),
                                                  "Accept": HTML_ACCEPT}).status == 403
    page.goto(env.url + "/gh-acme/y")  # bob is in the organisation acme, though in none of its teams
    wait_url(page, env.url + "/gh-acme/y")
    assert headers_at(env, "/gh-acme/y")["X-Forwarded-User"] == "77"


def test_github_unverified_primary_email_is_not_an_identity(env: Env, page: Any) -> None:
    github_login(env, page, "/gh/carol", "carol", "carol-pw")
    seen = headers_at(env, "/gh/carol")
    assert seen["X-Forwarded-User"] == "91"
    assert "X-Forwarded-Email" not in seen  # her public profile email is unverified too
    r = request(env.url, "GET", "/gh-corp/x", {"Cookie": cookie_header(page.context, env.url), "Accept": HTML_ACCEPT})
    assert r.status == 403


def test_github_callback_and_code_are_single_use(env: Env, page: Any) -> None:
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/oauth2/callback?" in r.url else None)
    github_login(env, page, "/gh/once", "alice", "alice-pw")
    assert callbacks, "the browser came back through the callback"
    before = env.gh.stats()
    replay = request(env.url, "GET", urllib.parse.urlsplit(callbacks[-1]).path + "?" +
                     urllib.parse.urlsplit(callbacks[-1]).query,
                     {"Cookie": cookie_header(page.context, env.url), "Accept": HTML_ACCEPT})
    assert replay.status == 400
    assert env.gh.stats().get("token_ok") == before.get("token_ok"), "a replayed callback never redeems a code"


# --------------------------------------------------------------------------- plain OAuth 2.0


def test_plain_oauth2_sign_in_maps_userinfo_fields_and_applies_group_rules(env: Env, page: Any) -> None:
    legacy_login(env, page, "/legacy/app", "dave", "dave-pw")
    assert page.url == env.url + "/legacy/app"
    seen = headers_at(env, "/legacy/app")
    assert seen["X-Forwarded-User"] == "501"
    assert seen["X-Forwarded-Email"] == "dave@legacy.test"
    assert seen["X-Forwarded-Preferred-Username"] == "dave"
    assert seen["X-Forwarded-Groups"] == "ops"
    stats = env.legacy.stats()
    assert stats.get("pkce_verified", 0) >= 1
    page.context.clear_cookies()
    legacy_login(env, page, "/legacy/app", "erin", "erin-pw")
    assert request(env.url, "GET", "/legacy/app", {"Cookie": cookie_header(page.context, env.url),
                                                    "Accept": HTML_ACCEPT}).status == 403


def test_claim_rules_work_on_login_routes(env: Env, page: Any) -> None:
    legacy_login(env, page, "/eng/board", "dave", "dave-pw")
    assert page.url == env.url + "/eng/board"
    page.context.clear_cookies()
    legacy_login(env, page, "/eng/board", "erin", "erin-pw")
    assert request(env.url, "GET", "/eng/board", {"Cookie": cookie_header(page.context, env.url),
                                                   "Accept": HTML_ACCEPT}).status == 403


def test_a_userinfo_answer_without_the_subject_field_is_a_clear_error(env: Env, page: Any) -> None:
    page.goto(env.url + "/legacy/who")
    oauth2_sign_in(page, "nobody", "nobody-pw")
    page.wait_for_url(lambda u: u.startswith(env.url + "/oauth2/callback"))
    assert "no 'id'" in page.content()
    assert not [c for c in page.context.cookies(env.url) if c["name"] == COOKIE], "no session with an empty user"


def _wait_for_expiry(seconds: float) -> None:
    time.sleep(seconds)  # the provider's real token lifetime: it cannot be told another clock


def test_refresh_and_a_revoked_user_ends_the_session(env: Env, page: Any) -> None:
    legacy_login(env, page, "/legacy/r", "frank", "frank-pw")
    refreshed_before = env.legacy.stats().get("refresh_ok", 0)
    _wait_for_expiry(ACCESS_TTL)
    page.goto(env.url + "/legacy/r2")
    wait_url(page, env.url + "/legacy/r2")
    assert env.legacy.stats().get("refresh_ok", 0) == refreshed_before + 1

    env.legacy.revoke_user("frank")
    env.legacy.set_refresh_error_mode("empty")  # a 400 with an empty body, as Glewlwyd answers
    try:
        _wait_for_expiry(ACCESS_TTL)
        jar = cookie_header(page.context, env.url)
        api = request(env.url, "GET", "/legacy/api", {"Cookie": jar, "Accept": "application/json"})
        assert api.status == 401
        refused = env.legacy.stats().get("refresh_refused", 0)
        again = request(env.url, "GET", "/legacy/api", {"Cookie": jar, "Accept": "application/json"})
        assert again.status == 401
        assert env.legacy.stats().get("refresh_refused", 0) == refused, "an ended session asks the provider no more"
        page.goto(env.url + "/legacy/r3")
        assert urllib.parse.urlsplit(page.url).path == "/authorize", page.url  # back to sign-in
    finally:
        env.legacy.set_refresh_error_mode("json")


# --------------------------------------------------------------------------- both kinds together


def test_the_chooser_offers_an_openid_provider_and_github(env: Env, page: Any) -> None:
    page.goto(env.url + "/both/x")
    labels = [a.inner_text().strip() for a in page.locator("main a").all()]
    assert "Corp" in " ".join(labels) and "GitHub" in " ".join(labels), labels
    page.get_by_role("link", name="GitHub").click()
    github_sign_in(page, "alice", "alice-pw")
    wait_url(page, env.url + "/both/x")
    assert headers_at(env, "/both/x")["X-Forwarded-User"] == "4242"
    page.context.clear_cookies()
    page.goto(env.url + "/both/y")
    page.get_by_role("link", name="Corp").click()
    provider_sign_in(page, "alice", "corp-pw")
    wait_url(page, env.url + "/both/y")
    assert headers_at(env, "/both/y")["X-Forwarded-User"] == "alice"


def test_private_key_jwt_client_authentication(env: Env, page: Any) -> None:
    """RFC 7523: no client secret at all; the token request carries a JWT signed with the client's key."""
    page.goto(env.url + "/signed/x")
    provider_sign_in(page, "alice", "corp-pw")
    wait_url(page, env.url + "/signed/x")
    assert headers_at(env, "/signed/x")["X-Forwarded-User"] == "alice"
