"""End to end against a third-party OpenID Connect provider: django-oauth-toolkit (DOT) 3.4.1 on
Django 5.2 (tests/peers/dot, installed by scripts/peers/django-oauth-toolkit.sh).

Real processes on loopback only: DOT served by ``manage.py runserver`` (reached as
``http://localhost:PORT``, issuer ``http://localhost:PORT/o``), two ``python -m gateway serve``
(reached as ``http://127.0.0.1:PORT``, so provider and gateway cookies never mix), an echo upstream
and headless Chromium. One DOT, one upstream and one browser serve the module:

    gateway "basic" (cookie _gwd)   the client secret (with + / = : % & ?) sent as client_secret_basic;
                                    /app login, /ops login with allow group "ops", /api token, / public;
                                    ``tokens:`` accepts DOT's issuer with audience = the client_id
    gateway "post"  (cookie _gwp)   the same client with client_secret_post and user_claim:
                                    preferred_username (DOT's ``sub`` is the user's primary key)

DOT's access tokens are opaque strings, not JWTs (DOT has no JWT access-token format; its ID token
is its only JWT), so "bearer with the provider's access token" does not apply: the opaque token is
refused as a bearer token, and so is the ID token (it carries ``nonce`` and ``at_hash``).
DOT takes any whole number of seconds as ACCESS_TOKEN_EXPIRE_SECONDS: 3 s here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pytest
import yaml

from tests.support import tokens
from tests.support.browser_fixtures import LOOPBACK_ONLY_ARGS, browser_context, ctx, page  # noqa: F401
from tests.support.dot_provider import DOTProvider, dot_missing, dot_user, start_dot_provider
from tests.support.gateway_proc import ROOT, GatewayProcess
from tests.support.login_e2e import (
    CI_JWT_SECRET,
    SESSION_SECRET,
    RequestLog,
    api_get,
    cleared_cookies,
    cookie_header,
    cookies,
    free_port,
    gateway_yaml,
    hs_token,
    jwt_claims,
    provider_entry,
    start_gateway,
    wait_url,
)
from tests.support.upstream import Upstream


pytestmark = [
    pytest.mark.skipif(dot_missing() is not None, reason=dot_missing() or ""),
    pytest.mark.timeout(90),
]

ACCESS_TTL = 3
CLIENT_ID = "gateway"
CLIENT_SECRET = "a+b/c=d:e%f&g?h-0123456789"  # MUST keep + / = : % & ?
PASSWORDS = {"alice": "alice-pw-4d2a", "bob": "bob-pw-8e1f", "carol": "carol-pw-51c7"}
BASIC_COOKIE = "_gwd"
POST_COOKIE = "_gwp"


def is_cookie_of(prefix: str):
    return lambda name: name == prefix or name.startswith(prefix + "_")


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    dot: DOTProvider
    up: Upstream
    gw: GatewayProcess
    port: int
    post_port: int
    post_gw: Optional[GatewayProcess] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def post_url(self) -> str:
        return f"http://127.0.0.1:{self.post_port}"

    def pk(self, username: str) -> str:
        return str(self.dot.users[username])


def _routes(up: Upstream) -> list:
    return [
        {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
        {"name": "app", "path": "/app", "upstream": up.url, "auth": "login", "providers": ["dot"]},
        {"name": "ops", "path": "/ops", "upstream": up.url, "auth": "login", "providers": ["dot"],
         "allow": [{"group": ["ops"]}]},
        {"name": "api", "path": "/api", "upstream": up.url, "auth": "token"},
    ]


def _config(port: int, dot: DOTProvider, up: Upstream, cookie: str, **provider_keys: str) -> str:
    entry = provider_entry(dot.issuer, CLIENT_ID, CLIENT_SECRET, "Django")
    entry.update(provider_keys)
    config = yaml.safe_load(gateway_yaml(port, providers={"dot": entry}, routes=_routes(up), cookie_name=cookie))
    # bearer tokens from DOT: keys from its discovery document; its JWTs are ID tokens for this client
    config["tokens"].append({"issuer": dot.issuer, "algorithms": ["RS256"], "audience": [CLIENT_ID]})
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port, post_port = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p}" for p in (port, post_port)]
    users = [
        dot_user("alice", PASSWORDS["alice"], groups=["users", "ops"], first_name="Alice"),
        dot_user("bob", PASSWORDS["bob"], groups=["users"]),
        dot_user("carol", PASSWORDS["carol"], groups=["users"]),  # the one an administrator cuts off
    ]
    up = Upstream("app").start()
    try:
        with start_dot_provider(tmp_path_factory.mktemp("dot"), redirect_uris=[u + "/oauth2/callback" for u in urls],
                                post_logout_redirect_uris=[u + "/" for u in urls], client_secret=CLIENT_SECRET,
                                access_token_ttl=ACCESS_TTL, users=users, client_id=CLIENT_ID) as dot:
            gw = start_gateway(_config(port, dot, up, BASIC_COOKIE), port)
            try:
                yield Env(dot, up, gw, port, post_port)
            finally:
                gw.stop()
    finally:
        up.stop()


@pytest.fixture(scope="module")
def post_env(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The second gateway: client_secret_post and user_claim (keys a gateway without them refuses)."""
    cfg = _config(env.post_port, env.dot, env.up, POST_COOKIE,
                  token_endpoint_auth_method="client_secret_post", user_claim="preferred_username")
    check_file = tmp_path_factory.mktemp("gw-post") / "routes.yaml"
    check_file.write_text(cfg)
    check = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(check_file)], capture_output=True,
                           text=True, timeout=30, cwd=ROOT,
                           env={**os.environ, **tokens.gateway_env(SESSION_SECRET, CI_JWT_SECRET=CI_JWT_SECRET),
                                "PYTHONPATH": ROOT})
    if check.returncode != 0:
        pytest.fail("the gateway refuses a provider with token_endpoint_auth_method and user_claim:\n"
                    + check.stdout + check.stderr)
    gw = start_gateway(cfg, env.post_port)
    try:
        env.post_gw = gw
        yield env
    finally:
        gw.stop()
        env.post_gw = None


# --------------------------------------------------------------------------- helpers


def dot_sign_in(page: Any, username: str, password: str) -> None:
    """Fill DOT's sign-in page (django.contrib.auth's LoginView, tests/peers/dot) and submit it."""
    page.wait_for_selector('input[name="username"]')
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', password)
    page.get_by_role("button", name="Sign in").click()


def on_dot_login(env: Env, url: str) -> bool:
    return url.startswith(env.dot.login_url + "?next=")


def sign_in_at(env: Env, page: Any, base_url: str, path: str, username: str = "alice") -> None:
    page.goto(base_url + path)
    assert on_dot_login(env, page.url), page.url
    dot_sign_in(page, username, PASSWORDS[username])
    wait_url(page, base_url + path)


def sleep_past_expiry(signed_in: float) -> None:
    """Until the access token issued before ``signed_in`` (time.monotonic()) has expired."""
    time.sleep(max(0.0, ACCESS_TTL + 0.3 - (time.monotonic() - signed_in)))


def assert_loopback_only(ctx: Any) -> None:
    assert ctx.blocked_requests == [], f"the browser tried to leave loopback: {ctx.blocked_requests}"


def session_cookie(ctx: Any, base_url: str, name: str = BASIC_COOKIE) -> str:
    return cookie_header(ctx, base_url, only=is_cookie_of(name))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- sign-in


def test_sign_in_forwards_the_identity_to_the_upstream(env: Env, ctx: Any, page: Any) -> None:
    basic_before = env.dot.count("token_auth:client_secret_basic:ok")
    target = "/app/hello?x=1&y=%C3%A9"
    with RequestLog(ctx) as log:
        page.goto(env.url + target)
        assert on_dot_login(env, page.url), page.url
        assert page.title() == "Sign in"
        dot_sign_in(page, "alice", PASSWORDS["alice"])
        wait_url(page, env.url + target)

    auth = log.query_of(env.dot.issuer + "/authorize/?")
    assert auth["client_id"] == CLIENT_ID and auth["response_type"] == "code"
    assert auth["redirect_uri"] == env.url + "/oauth2/callback"
    assert auth["code_challenge_method"] == "S256" and auth["state"] and auth["nonce"]
    assert {"openid", "email", "profile", "groups"} <= set(auth["scope"].split())
    callback = log.query_of(env.url + "/oauth2/callback?")
    assert callback["iss"] == env.dot.issuer, "DOT sends the RFC 9207 iss parameter"

    seen = env.up.last("/app/hello")
    assert seen is not None, "the upstream never got the original request"
    assert seen["query"] == {"x": ["1"], "y": ["é"]}
    h = seen["headers"]
    assert h.get("X-Forwarded-User") == env.pk("alice"), "DOT's sub is the user's primary key"
    assert h.get("X-Forwarded-Email") == "alice@example.test"
    assert h.get("X-Forwarded-Groups") == "ops,users"
    assert h.get("X-Forwarded-Preferred-Username") == "alice"
    assert BASIC_COOKIE not in h.get("Cookie", "")

    # the secret with + / = : % & ? went as client_secret_basic, form-encoded first, and DOT took it
    assert env.dot.count("token_auth:client_secret_basic:ok") == basic_before + 1
    assert env.dot.count("token_auth:client_secret_basic:refused") == 0
    # provider cookies stay on localhost, the gateway's on 127.0.0.1
    assert not [n for n in cookies(ctx, env.url) if n.startswith("dot_")]
    assert not [n for n in cookies(ctx, env.dot.base_url) if is_cookie_of(BASIC_COOKIE)(n)]
    assert any(is_cookie_of(BASIC_COOKIE)(n) for n in cookies(ctx, env.url))

    info = page.evaluate("fetch('/oauth2/userinfo').then(r => r.json())")
    assert info["sub"] == env.pk("alice") and info["groups"] == ["ops", "users"]
    entry = env.gw.wait_log(lambda e: e.get("path") == "/app/hello" and e.get("status") == 200)
    assert entry["user"] == env.pk("alice")
    assert_loopback_only(ctx)


def test_group_rule_allows_ops_and_refuses_others(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, env.url, "/ops/panel", "alice")
    assert env.up.last("/ops/panel")["headers"].get("X-Forwarded-User") == env.pk("alice")

    ctx.clear_cookies()
    page.goto(env.url + "/ops/panel-bob")
    assert on_dot_login(env, page.url), page.url
    dot_sign_in(page, "bob", PASSWORDS["bob"])
    wait_url(page, env.url + "/ops/panel-bob")
    assert page.title().startswith("Access denied"), page.title()
    resp = page.reload()
    assert resp is not None and resp.status == 403
    assert env.up.received("/ops/panel-bob") == []
    r = api_get(env.url, "/ops/panel-bob", cookie=session_cookie(ctx, env.url))
    assert r.status == 403 and r.json()["error"] == "forbidden"
    # bob is signed in all the same: /app lets him through
    r = api_get(env.url, "/app/bob", cookie=session_cookie(ctx, env.url))
    assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == env.pk("bob")
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- refresh


def test_expired_access_token_is_refreshed_at_dot(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, env.url, "/app/r1")
    signed_in = time.monotonic()
    refreshes = env.dot.count("token:refresh_token:ok")
    sleep_past_expiry(signed_in)

    with RequestLog(ctx) as log:
        resp = page.goto(env.url + "/app/r2")
    assert resp is not None and resp.status == 200 and page.url == env.url + "/app/r2"
    assert not log.matching(env.dot.base_url), f"no trip through the provider: {log.urls}"
    assert env.up.last("/app/r2")["headers"].get("X-Forwarded-User") == env.pk("alice")
    assert env.dot.count("token:refresh_token:ok") > refreshes, "the expired access token was refreshed"
    assert env.dot.count("token:refresh_token:refused") == 0
    # an API call with the refreshed session works too
    r = api_get(env.url, "/app/r3", cookie=session_cookie(ctx, env.url))
    assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == env.pk("alice")
    assert_loopback_only(ctx)


def test_refresh_refused_after_the_admin_revokes_the_user_ends_the_session(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, env.url, "/app/c1", "carol")
    signed_in = time.monotonic()
    cookie = session_cookie(ctx, env.url)
    names = {part.split("=", 1)[0] for part in cookie.split("; ")}
    assert env.dot.revoke_user("carol") >= 1  # deactivated, and her refresh tokens revoked
    refused = env.dot.count("token:refresh_token:refused")
    sleep_past_expiry(signed_in)

    # an API call: the refresh is refused (400 invalid_grant), so 401 and the session cookies cleared
    r = api_get(env.url, "/app/c-api", cookie=cookie)
    assert r.status == 401, (r.status, r.body[:200])
    assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="gateway"')
    assert r.header("Location") is None
    assert names <= cleared_cookies(r), (names, r.all("Set-Cookie"))
    assert env.dot.count("token:refresh_token:refused") == refused + 1
    assert env.up.received("/app/c-api") == []

    # the browser, with the same session: back to the provider, whose sign-in page is all carol gets
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/c2")
        page.wait_for_load_state("load")
    assert on_dot_login(env, page.url), page.url
    assert log.matching(env.dot.issuer + "/authorize/?"), log.urls
    assert env.up.received("/app/c2") == []
    assert not [n for n in cookies(ctx, env.url) if is_cookie_of(BASIC_COOKIE)(n) and "_login_" not in n]
    dot_sign_in(page, "carol", PASSWORDS["carol"])
    page.wait_for_load_state("load")
    assert page.url.startswith(env.dot.login_url), page.url
    assert page.get_by_role("alert").count() == 1, "an inactive user cannot sign in"
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- sign-out


def test_sign_out_with_rd_ends_both_sessions_and_lands_on_rd(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, env.url, "/app/before")
    assert env.dot.stats()["live_refresh_tokens"]["alice"] >= 1
    logouts = env.dot.count("logout:ok")
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out?rd=/app/after?x=1")
        page.wait_for_url(lambda u: on_dot_login(env, u))
        page.wait_for_load_state("load")
    end = log.query_of(env.dot.issuer + "/logout/?")
    assert end["post_logout_redirect_uri"] == env.url + "/"  # the registered one, never rd
    assert end["client_id"] == CLIENT_ID
    hint = jwt_claims(end["id_token_hint"])
    assert hint["sub"] == env.pk("alice") and hint["aud"] == CLIENT_ID and hint["iss"] == env.dot.issuer
    assert env.dot.count("logout:ok") == logouts + 1
    # the browser went back through the gateway to rd, which needs a login again: DOT's form, as
    # DOT ended its own session too (and revoked alice's tokens, OIDC_RP_INITIATED_LOGOUT_DELETE_TOKENS)
    assert [u for u in log.urls if u == env.url + "/app/after?x=1"], log.urls
    assert env.dot.stats()["live_refresh_tokens"]["alice"] == 0
    assert not [n for n in cookies(ctx, env.url) if is_cookie_of(BASIC_COOKIE)(n) and "_login_" not in n]
    assert not [n for n in cookies(ctx, env.dot.base_url) if n == "dot_sessionid"]
    dot_sign_in(page, "alice", PASSWORDS["alice"])
    wait_url(page, env.url + "/app/after?x=1")
    assert_loopback_only(ctx)


def test_sign_out_without_rd_ends_on_the_signed_out_page(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, env.url, "/app/x")
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out")
        page.wait_for_url(lambda u: u.startswith(env.url + "/") and urllib.parse.urlsplit(u).path == "/")
        page.wait_for_load_state("load")
    assert log.matching(env.dot.issuer + "/logout/?"), log.urls
    assert page.title().startswith("Signed out"), page.title()
    assert not [n for n in cookies(ctx, env.url) if is_cookie_of(BASIC_COOKIE)(n)]
    assert page.evaluate("fetch('/oauth2/userinfo').then(r => r.status)") == 401
    page.goto(env.url + "/app/again")
    assert on_dot_login(env, page.url), "signed out at DOT too: its form again"
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- bearer tokens


def test_dot_tokens_are_refused_as_bearer_tokens(env: Env) -> None:
    tokens = env.dot.obtain_tokens("bob", redirect_uri=env.url + "/oauth2/callback")
    claims = jwt_claims(tokens["id_token"])
    # a genuine ID token of this very client: right issuer, audience, signature (RS256, DOT's JWKS)
    assert claims["iss"] == env.dot.issuer and claims["aud"] == CLIENT_ID
    assert claims.get("nonce") and claims.get("at_hash"), sorted(claims)
    for path in ("/api/x", "/app/x"):
        r = api_get(env.url, path, **bearer(tokens["id_token"]))
        assert r.status == 401, (path, r.status, r.body[:200])
        assert 'error="invalid_token"' in (r.header("WWW-Authenticate") or ""), path
    # DOT's access token is opaque (no JWT access tokens in DOT): not a token the gateway can verify
    assert tokens["access_token"].count(".") != 2
    r = api_get(env.url, "/api/x", **bearer(tokens["access_token"]))
    assert r.status == 401
    # the route itself takes good tokens
    r = api_get(env.url, "/api/x", **bearer(hs_token("robot")))
    assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == "robot"
    assert env.up.received("/api/x") and all(
        s["headers"].get("X-Forwarded-User") == "robot" for s in env.up.received("/api/x"))


# --------------------------------------------------------------------------- client_secret_post, user_claim


def test_client_secret_post_and_user_claim_preferred_username(post_env: Env, ctx: Any, page: Any) -> None:
    env = post_env
    post_before = env.dot.count("token_auth:client_secret_post:ok")
    basic_before = env.dot.count("token_auth:client_secret_basic")
    sign_in_at(env, page, env.post_url, "/app/p1")
    signed_in = time.monotonic()
    h = env.up.last("/app/p1")["headers"]
    assert h.get("X-Forwarded-User") == "alice", "user_claim: preferred_username instead of the numeric sub"
    assert h.get("X-Forwarded-Email") == "alice@example.test"
    assert h.get("X-Forwarded-Groups") == "ops,users"
    assert env.dot.count("token_auth:client_secret_post:ok") == post_before + 1, "the code went with client_secret_post"

    # the refresh authenticates the same way
    sleep_past_expiry(signed_in)
    resp = page.goto(env.post_url + "/app/p2")
    assert resp is not None and resp.status == 200
    assert env.up.last("/app/p2")["headers"].get("X-Forwarded-User") == "alice"
    assert env.dot.count("token_auth:client_secret_post:ok") == post_before + 2
    assert env.dot.count("token_auth:client_secret_basic") == basic_before, "never client_secret_basic"
    assert env.dot.count("token_auth:client_secret_post:refused") == 0
    entry = env.post_gw.wait_log(lambda e: e.get("path") == "/app/p2" and e.get("status") == 200)
    assert entry["user"] == "alice"
    assert_loopback_only(ctx)
