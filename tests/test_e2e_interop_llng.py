"""End to end against LemonLDAP::NG 2.16 (Debian bookworm), a third-party OpenID Connect provider.

Real processes on loopback only: LemonLDAP::NG's portal (``llng-fastcgi-server`` behind an nginx
of the test's own, tests/support/llng_provider.py, installed by scripts/peers/lemonldap-ng.sh),
``python -m gateway serve``, an echo upstream and headless Chromium. The portal is
``http://localhost:PORT/`` (its issuer ends with a slash, and the gateway is configured with
exactly that string), the gateways are ``http://127.0.0.1:PORT``, so their cookies never mix.

Users come from LemonLDAP::NG's Demo backend (password = login): dwho (groups timelords, users)
and rtyler (earthlings, users). Relying parties registered at the portal:

    gateway          the main gateway's client: access tokens live ACCESS_TTL seconds (JWTs),
                     refresh tokens, PKCE required; a secret of letters and digits
    gateway-special  a secret with ``+/=:%&?`` (client_secret_post and client_secret_basic gateways)
    cli              the test's own client: its tokens are sent to the gateway as bearer tokens

Routes of the main gateway:

    /      public
    /app   login
    /ops   login, allow group "timelords" (dwho yes, rtyler 403)
    /api   token (issuer LemonLDAP::NG, audience "cli")
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pytest
import yaml

from tests.support.browser_fixtures import LOOPBACK_ONLY_ARGS, browser_context, ctx, page  # noqa: F401
from tests.support.gateway_proc import GatewayProcess
from tests.support.llng_provider import (
    DEMO_USERS,
    LLNGProvider,
    llng_missing,
    relying_party,
    sign_in,
    start_llng,
)
from tests.support.login_e2e import (
    RequestLog,
    api_get,
    cleared_cookies,
    cookie_header,
    cookies,
    free_port,
    jwt_claims,
    start_gateway,
    wait_url,
)
from tests.support.upstream import Upstream


pytestmark = [
    pytest.mark.skipif(llng_missing() is not None, reason=str(llng_missing())),
    pytest.mark.timeout(90),
]

ACCESS_TTL = 3  # seconds; LemonLDAP::NG takes any positive number (0 means "the global default")
COOKIE = "_gwl"
SECRET = "llng-gateway-client-secret-0123456789abcdef"
SPECIAL_SECRET = "a+b/c=d:e%f&g?h-0123456789"
CLI_SECRET = "llng-cli-client-secret-0123456789abcdef"
SCOPES = ["openid", "email", "profile", "groups"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_gateway_cookie(name: str) -> bool:
    return name == COOKIE or name.startswith(COOKIE + "_")


def is_session_cookie(name: str) -> bool:
    """The session itself (or one of its chunks), not a pending login's state cookie."""
    return name == COOKIE or re.fullmatch(re.escape(COOKIE) + r"_\d+", name) is not None


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    llng: LLNGProvider
    up: Upstream
    gw: GatewayProcess
    port: int
    ports: dict  # name -> port of the gateways the tests start themselves

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def cli_redirect(self) -> str:
        return self.up.url + "/cli/callback"


def provider(issuer: str, client_id: str, secret: str, **extra: Any) -> dict:
    return {"issuer": issuer, "client_id": client_id, "client_secret": secret, "scopes": list(SCOPES),
            "groups_claim": "groups", **extra}


def gateway_config(port: int, up: Upstream, llng: LLNGProvider, corp: dict) -> str:
    url = f"http://127.0.0.1:{port}"
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": url, "admin_listen": "off"},
        "session": {"secret": "${GATEWAY_SESSION_SECRET}", "cookie_name": COOKIE, "lifetime": "1h"},
        "providers": {"corp": {"post_logout_redirect_uri": url + "/", **corp}},
        "tokens": [{"issuer": llng.issuer, "algorithms": ["RS256"], "audience": ["cli"]}],
        "routes": [
            {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
            {"name": "app", "path": "/app", "upstream": up.url, "auth": "login", "providers": ["corp"]},
            {"name": "ops", "path": "/ops", "upstream": up.url, "auth": "login", "providers": ["corp"],
             "allow": [{"group": ["timelords"]}]},
            {"name": "api", "path": "/api", "upstream": up.url, "auth": "token"},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    port = free_port()
    ports = {name: free_port() for name in ("post", "basic", "user_claim")}
    url = f"http://127.0.0.1:{port}"
    up = Upstream("app").start()
    others = [f"http://127.0.0.1:{p}" for p in ports.values()]
    rps = [
        relying_party("gateway", "gateway", SECRET, [url + "/oauth2/callback", others[2] + "/oauth2/callback"],
                      post_logout_redirect_uris=[url + "/", others[2] + "/"], access_token_ttl=ACCESS_TTL),
        relying_party("gateway-special", "gateway-special", SPECIAL_SECRET,
                      [u + "/oauth2/callback" for u in others[:2]],
                      post_logout_redirect_uris=[u + "/" for u in others[:2]], access_token_ttl=ACCESS_TTL),
        relying_party("cli", "cli", CLI_SECRET, [up.url + "/cli/callback"], require_pkce=False),
    ]
    try:
        with start_llng(rps) as llng:
            assert llng.discovery()["issuer"] == llng.issuer and llng.issuer.endswith("/")
            gw = start_gateway(gateway_config(port, up, llng, provider(llng.issuer, "gateway", SECRET)), port)
            try:
                yield Env(llng, up, gw, port, ports)
            finally:
                gw.stop()
    finally:
        up.stop()


# --------------------------------------------------------------------------- helpers


def on_portal(env: Env, url: str) -> bool:
    return url.startswith(env.llng.url + "/")


def sign_in_at(env: Env, page: Any, path: str, user: str = "dwho", base_url: Optional[str] = None) -> float:
    """Open ``path`` on a gateway, sign in at the portal, land back on ``path``; time.monotonic() then."""
    base_url = base_url or env.url
    exchanges = len(env.llng.token_requests())
    page.goto(base_url + path)
    assert on_portal(env, page.url), page.url
    sign_in(page, user, user)
    wait_url(page, base_url + path)
    signed_in = time.monotonic()
    env.llng.token_requests(exchanges + 1)  # its code exchange is in the portal's log
    return signed_in


def sleep_past_expiry(signed_in: float) -> None:
    """Until the access token issued at ``signed_in`` has expired, whatever margin the gateway uses."""
    time.sleep(max(0.0, ACCESS_TTL + 0.5 - (time.monotonic() - signed_in)))


def groups_of(header: Optional[str]) -> set:
    return set((header or "").split(",")) - {""}


def assert_identity(seen: Optional[dict], user: str, forwarded_user: Optional[str] = None) -> None:
    assert seen is not None, "the request never reached the upstream"
    h = seen["headers"]
    demo = DEMO_USERS[user]
    assert h.get("X-Forwarded-User") == (forwarded_user or user), h
    assert h.get("X-Forwarded-Email") == demo["email"], h
    assert h.get("X-Forwarded-Preferred-Username") == user, h
    # the Demo backend's groups come in no fixed order
    assert groups_of(h.get("X-Forwarded-Groups")) == set(demo["groups"]), h


def portal_session(ctx: Any, env: Env) -> str:
    """The id of this browser's SSO session at the portal (its "lemonldap" cookie), known to the portal."""
    sso = cookies(ctx, env.llng.url)["lemonldap"]["value"]
    assert sso in env.llng.session_ids("_user=dwho")
    return sso


def assert_loopback_only(ctx: Any) -> None:
    assert ctx.blocked_requests == [], f"the browser tried to leave loopback: {ctx.blocked_requests}"


def cli_tokens(env: Env, page: Any, user: str = "dwho") -> dict:
    """The test's own authorization code flow with the "cli" client; the token endpoint's answer."""
    state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    query = urllib.parse.urlencode({
        "client_id": "cli", "response_type": "code", "redirect_uri": env.cli_redirect,
        "scope": " ".join(SCOPES), "state": state, "nonce": nonce,
    })
    page.goto(env.llng.discovery()["authorization_endpoint"] + "?" + query)
    if on_portal(env, page.url):
        sign_in(page, user, user)
    page.wait_for_url(lambda u: u.startswith(env.cli_redirect + "?"))
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert params.get("state") == state, params
    form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": params["code"],
                                   "redirect_uri": env.cli_redirect, "client_id": "cli",
                                   "client_secret": CLI_SECRET}).encode()
    req = urllib.request.Request(env.llng.discovery()["token_endpoint"], data=form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with _OPENER.open(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert jwt_claims(answer["id_token"])["nonce"] == nonce
    return answer


def jwt_header(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# --------------------------------------------------------------------------- sign-in


def test_discovery_issuer_ends_with_a_slash_and_the_gateway_uses_it_verbatim(env: Env) -> None:
    doc = env.llng.discovery()
    assert doc["issuer"] == f"http://localhost:{env.llng.port}/"
    assert doc["authorization_endpoint"] == env.llng.url + "/oauth2/authorize"
    assert {"client_secret_basic", "client_secret_post"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert "S256" in doc["code_challenge_methods_supported"]
    keys = env.llng.get_json("/oauth2/jwks")["keys"]
    assert [k["kty"] for k in keys] == ["RSA"]


def test_sign_in_forwards_the_identity_to_the_upstream(env: Env, ctx: Any, page: Any) -> None:
    exchanges = len(env.llng.token_requests())
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/hello?x=1")
        assert on_portal(env, page.url), page.url
        sign_in(page, "dwho", "dwho")
        wait_url(page, env.url + "/app/hello?x=1")
    auth = log.query_of(env.llng.url + "/oauth2/authorize?")
    assert auth["client_id"] == "gateway"
    assert auth["redirect_uri"] == env.url + "/oauth2/callback"
    assert auth["code_challenge_method"] == "S256" and auth["code_challenge"]
    assert auth["state"] and auth["nonce"]
    assert len(log.matching(env.url + "/oauth2/callback?")) == 1

    seen = env.up.last("/app/hello")
    assert_identity(seen, "dwho")
    assert seen["query"] == {"x": ["1"]}
    assert not [c for c in seen["headers"].get("Cookie", "").split("; ") if is_gateway_cookie(c.split("=")[0])]
    # the gateway's session is on 127.0.0.1, the portal's SSO cookie on localhost
    assert [n for n in cookies(ctx, env.url) if is_gateway_cookie(n)]
    assert "lemonldap" in cookies(ctx, env.llng.url)
    assert "lemonldap" not in cookies(ctx, env.url)

    info = page.evaluate("fetch('/oauth2/userinfo').then(r => r.json())")
    assert info["sub"] == "dwho" and info["email"] == "dwho@badwolf.org"
    assert set(info["groups"]) == {"timelords", "users"}
    assert env.llng.token_requests(exchanges + 1)[exchanges:] == [200], "one code exchange"
    assert_loopback_only(ctx)


def test_group_rule_allows_a_member_and_refuses_others_with_403(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/ops/panel", "dwho")
    assert_identity(env.up.last("/ops/panel"), "dwho")

    ctx.clear_cookies()  # signed out everywhere: rtyler signs in at the portal
    before = len(env.up.received("/ops/panel"))
    page.goto(env.url + "/ops/panel")
    assert on_portal(env, page.url), page.url
    sign_in(page, "rtyler", "rtyler")
    wait_url(page, env.url + "/ops/panel")
    assert page.title().startswith("Access denied"), page.title()
    resp = page.reload()
    assert resp is not None and resp.status == 403
    assert len(env.up.received("/ops/panel")) == before, "rtyler never reached the upstream"
    r = api_get(env.url, "/ops/panel", cookie=cookie_header(ctx, env.url, only=is_gateway_cookie))
    assert r.status == 403 and r.json()["error"] == "forbidden"
    # /app has no rule: rtyler is let in there, with its own identity
    page.goto(env.url + "/app/rose")
    wait_url(page, env.url + "/app/rose")
    assert_identity(env.up.last("/app/rose"), "rtyler")
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- refresh


def test_expired_access_token_is_refreshed_at_the_portal(env: Env, ctx: Any, page: Any) -> None:
    signed_in = sign_in_at(env, page, "/app/before-refresh")
    tokens_before = len(env.llng.token_requests())
    sleep_past_expiry(signed_in)
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/after-refresh")
        wait_url(page, env.url + "/app/after-refresh")
    assert not log.matching(env.llng.url), f"no new sign-in at the portal: {log.urls}"
    assert_identity(env.up.last("/app/after-refresh"), "dwho")
    statuses = env.llng.token_requests(tokens_before + 1)[tokens_before:]
    assert statuses and statuses[0] == 200, f"one successful refresh at the token endpoint: {statuses}"
    # and the refreshed session works again at once, without another refresh
    page.goto(env.url + "/app/after-refresh-2")
    wait_url(page, env.url + "/app/after-refresh-2")
    assert len(env.llng.token_requests()) == tokens_before + 1
    assert_loopback_only(ctx)


@pytest.mark.parametrize("tokens_too, portal_says", [
    (True, "Unable to find OIDC session"),                        # 400 invalid_request
    (False, "Unable to find user session tied to Refresh Token"),  # 400 invalid_grant
], ids=["sso-session-and-tokens-deleted", "sso-session-deleted"])
def test_refresh_after_the_admin_revokes_the_user_ends_the_session(
        env: Env, ctx: Any, page: Any, tokens_too: bool, portal_says: str) -> None:
    case = "tokens" if tokens_too else "sso"
    api_path, page_path = f"/app/revoked-api-{case}", f"/app/revoked-page-{case}"
    signed_in = sign_in_at(env, page, "/app/before-revoke")
    cookie = cookie_header(ctx, env.url, only=is_gateway_cookie)
    names = {part.split("=", 1)[0] for part in cookie.split("; ")}
    revoked = env.llng.revoke_user("dwho", tokens=tokens_too)
    assert revoked["sso"] and bool(revoked["tokens"]) == tokens_too, revoked
    assert env.llng.session_ids("_user=dwho") == []
    sleep_past_expiry(signed_in)
    tokens_before = len(env.llng.token_requests())
    logged_before = env.llng.log_text().count(portal_says)

    # an API call with the session: the portal refuses the refresh (400), so 401, cookies cleared
    r = api_get(env.url, api_path, cookie=cookie)
    assert env.llng.token_requests(tokens_before + 1)[tokens_before:] == [400], env.llng.token_requests()
    assert env.llng.log_text().count(portal_says) == logged_before + 1, env.llng.log_text()[-2000:]
    assert r.status == 401, (r.status, r.body[:300])
    assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="gateway"')
    assert r.header("Location") is None
    assert names <= cleared_cookies(r), (names, r.all("Set-Cookie"))
    assert env.up.received(api_path) == []

    # the browser's page load: back to the portal's login form (its SSO session is gone too)
    page.goto(env.url + page_path)
    page.wait_for_load_state("load")
    assert on_portal(env, page.url), page.url
    page.wait_for_selector('input[name="user"]')
    assert env.up.received(page_path) == []
    # signing in again works and lands where the person was going
    sign_in(page, "dwho", "dwho")
    wait_url(page, env.url + page_path)
    assert_identity(env.up.last(page_path), "dwho")
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- sign-out


def test_sign_out_with_rd_ends_the_portal_session_and_lands_on_rd(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/x")
    sso = portal_session(ctx, env)
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out?rd=" + urllib.parse.quote("/goodbye?x=1", safe=""))
        wait_url(page, env.url + "/goodbye?x=1")
    end = log.query_of(env.llng.url + "/oauth2/logout?")
    assert end["post_logout_redirect_uri"] == env.url + "/"
    assert jwt_claims(end["id_token_hint"])["sub"] == "dwho"
    assert env.up.last("/goodbye") is not None
    assert not [n for n in cookies(ctx, env.url) if is_gateway_cookie(n)]
    assert sso not in env.llng.session_ids("_user=dwho"), "the portal's SSO session ended too"
    # so the next visit asks for the password again
    page.goto(env.url + "/app/x")
    assert on_portal(env, page.url), page.url
    page.wait_for_selector('input[name="user"]')
    assert_loopback_only(ctx)


def test_sign_out_without_rd_ends_on_the_signed_out_page(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/y")
    sso = portal_session(ctx, env)
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out")
        page.wait_for_url(lambda u: u.startswith(env.url + "/") and urllib.parse.urlsplit(u).path == "/")
    assert log.matching(env.llng.url + "/oauth2/logout?"), log.urls
    assert page.title().startswith("Signed out"), page.title()
    assert page.get_by_role("link", name="Sign in again").get_attribute("href") == "/oauth2/start?rd=%2F"
    assert not [n for n in cookies(ctx, env.url) if is_gateway_cookie(n)]
    assert sso not in env.llng.session_ids("_user=dwho"), "the portal's SSO session ended too"
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- bearer tokens


def test_its_jwt_access_token_is_accepted_as_a_bearer_token(env: Env, ctx: Any, page: Any) -> None:
    answer = cli_tokens(env, page)
    access = answer["access_token"]
    header, claims = jwt_header(access), jwt_claims(access)
    assert header["alg"] == "RS256"
    # LemonLDAP::NG 2.16 types its JWT access tokens "JWT", not RFC 9068's "at+jwt"
    assert header.get("typ") == "JWT", header
    assert claims["iss"] == env.llng.issuer and claims["sub"] == "dwho"
    assert "nonce" not in claims and "at_hash" not in claims
    r = api_get(env.url, "/api/orders", Authorization="Bearer " + access)
    assert r.status == 200, (r.status, r.body[:300])
    assert_identity(env.up.last("/api/orders"), "dwho")


def test_its_id_token_is_refused_as_a_bearer_token(env: Env, ctx: Any, page: Any) -> None:
    answer = cli_tokens(env, page)
    id_token = answer["id_token"]
    claims = jwt_claims(id_token)
    assert claims["iss"] == env.llng.issuer and claims["aud"] in ("cli", ["cli"])
    assert "nonce" in claims and "at_hash" in claims
    before = len(env.up.received("/api/orders"))
    r = api_get(env.url, "/api/orders", Authorization="Bearer " + id_token)
    assert r.status == 401, (r.status, r.body[:300])
    assert 'error="invalid_token"' in (r.header("WWW-Authenticate") or "")
    assert len(env.up.received("/api/orders")) == before


# --------------------------------------------------------------------------- client authentication


@pytest.fixture
def extra_gateway(env: Env, request: pytest.FixtureRequest) -> Iterator[Any]:
    """start(name, corp) -> a gateway on env.ports[name] with the provider entry ``corp``."""
    started: list[GatewayProcess] = []

    def start(name: str, corp: dict) -> GatewayProcess:
        port = env.ports[name]
        gw = start_gateway(gateway_config(port, env.up, env.llng, corp), port)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def test_special_secret_with_client_secret_post(env: Env, ctx: Any, page: Any, extra_gateway: Any) -> None:
    extra_gateway("post", provider(env.llng.issuer, "gateway-special", SPECIAL_SECRET,
                                   token_endpoint_auth_method="client_secret_post"))
    base = env.url_of("post")
    tokens_before = len(env.llng.token_requests())
    signed_in = sign_in_at(env, page, "/app/post", base_url=base)
    assert_identity(env.up.last("/app/post"), "dwho")
    assert env.llng.token_requests(tokens_before + 1)[tokens_before:] == [200]
    # the refresh authenticates the same way
    sleep_past_expiry(signed_in)
    page.goto(base + "/app/post-refreshed")
    wait_url(page, base + "/app/post-refreshed")
    assert_identity(env.up.last("/app/post-refreshed"), "dwho")
    assert env.llng.token_requests(tokens_before + 2)[tokens_before:] == [200, 200]
    assert_loopback_only(ctx)


def test_special_secret_with_client_secret_basic_is_refused_by_the_portal(
        env: Env, ctx: Any, page: Any, extra_gateway: Any) -> None:
    """LemonLDAP::NG 2.16 cannot take such a secret in HTTP Basic: it neither decodes the RFC 6749
    2.3.1 form-encoding of the credentials nor reads base64 past a "+" or "/" (its pattern is
    ``Basic (\\w+)``) and splits the pair at every ":". The gateway sends the RFC's form and must
    fail cleanly: an error page with a way to retry, no session, no loop."""
    # the portal's side, first: neither the RFC's encoding nor the raw secret is accepted in Basic
    for user, password in ((urllib.parse.quote_plus("gateway-special", safe=""),
                            urllib.parse.quote_plus(SPECIAL_SECRET, safe="")),
                           ("gateway-special", SPECIAL_SECRET)):
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        req = urllib.request.Request(env.llng.url + "/oauth2/token",
                                     data=b"grant_type=refresh_token&refresh_token=none",
                                     headers={"Authorization": "Basic " + basic})
        with pytest.raises(urllib.error.HTTPError) as refused:
            _OPENER.open(req, timeout=10)
        assert refused.value.code == 401
        assert json.loads(refused.value.read())["error"] == "invalid_client"

    extra_gateway("basic", provider(env.llng.issuer, "gateway-special", SPECIAL_SECRET,
                                    token_endpoint_auth_method="client_secret_basic"))
    base = env.url_of("basic")
    tokens_before = len(env.llng.token_requests())
    with RequestLog(ctx) as log:
        page.goto(base + "/app/basic")
        assert on_portal(env, page.url), page.url
        sign_in(page, "dwho", "dwho")
        page.wait_for_url(lambda u: u.startswith(base + "/oauth2/callback?"))
        page.wait_for_load_state("load")
    assert env.llng.token_requests(tokens_before + 1)[tokens_before:] == [401]
    # one authorization request (the portal's login form posts back to that same URL): no loop
    assert len(set(log.matching(env.llng.url + "/oauth2/authorize?"))) == 1, "no loop back to the portal"
    assert env.up.last("/app/basic") is None
    assert not [n for n in cookies(ctx, base) if is_session_cookie(n)], cookies(ctx, base)
    assert page.locator('a[href^="/oauth2/start?"]').count() >= 1, page.content()[:500]
    assert_loopback_only(ctx)


def test_user_claim_picks_the_forwarded_user(env: Env, ctx: Any, page: Any, extra_gateway: Any) -> None:
    extra_gateway("user_claim", provider(env.llng.issuer, "gateway", SECRET, user_claim="email"))
    base = env.url_of("user_claim")
    sign_in_at(env, page, "/app/claim", base_url=base)
    assert_identity(env.up.last("/app/claim"), "dwho", forwarded_user="dwho@badwolf.org")
    assert_loopback_only(ctx)
