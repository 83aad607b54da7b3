"""End to end: browser login through the real gateway against a real, certified OpenID provider.

Everything is a real process on loopback: oidc-provider 9.13.3 (tests/idp, reached as
``http://localhost:PORT``), ``python -m gateway serve`` (reached as ``http://127.0.0.1:PORT``,
so the two never share cookies), an echo upstream, and headless Chromium driven by
Playwright with every non-loopback request aborted.

One provider, one gateway and one browser serve the whole module; each test starts
with an empty cookie jar (so also signed out at the provider). The gateway has two
named providers on the same issuer (clients ``gw`` and ``gw-partners``) and these routes:

    /        public
    /app     login, providers [corp]
    /both    login, providers [corp, partners]    (chooser)
    /admin   login, providers [corp], allow group "ops" (nobody has it: 403)

The refresh, invalid_grant, provider-down, Redis and ``gateway demo`` cases are in
tests/test_e2e_login_ops.py. Screenshots for the README are written to docs/ (chooser.png, forbidden.png; sign-in.png and
demo.png come from the ``gateway demo`` test in tests/test_e2e_login_ops.py).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import Error as PlaywrightError

from tests.support.browser_fixtures import LOOPBACK_ONLY_ARGS, browser_context, ctx, page  # noqa: F401
from tests.support.e2e import request
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (
    HTML_ACCEPT,
    RequestLog,
    api_get,
    cleared_cookies,
    cookie_header,
    cookies,
    cookies_from_set_cookie,
    free_port,
    gateway_yaml,
    hs_token,
    jwt_claims,
    provider_entry,
    provider_sign_in,
    start_gateway,
    wait_url,
)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.upstream import Upstream


pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(90),
]

# Screenshots go to docs/ (shown in the README) only when asked: GATEWAY_UPDATE_SCREENSHOTS=1.
DOCS = (Path(__file__).resolve().parents[1] / "docs" if os.environ.get("GATEWAY_UPDATE_SCREENSHOTS")
        else Path(tempfile.gettempdir()) / "gateway-screenshots")
DOCS.mkdir(parents=True, exist_ok=True)
COOKIE = "_gw"
CORP_SECRET = "corp-client-secret-0123456789"
PARTNERS_SECRET = "partners-client-secret-0123456789"
ALICE_PW = "alice-pw-7c1e"
BOB_PW = "bob-pw-93af"
# bob's "name" claim is random (incompressible) text, so his ID token is over 6 KB even after
# the gateway compresses the session: the session cookie must be split into chunks.
BOB_NAME = "Bob " + secrets.token_urlsafe(3400)


def is_session_cookie(name: str) -> bool:
    return name == COOKIE or re.fullmatch(re.escape(COOKIE) + r"_\d+", name) is not None


def is_gateway_cookie(name: str) -> bool:
    return name == COOKIE or name.startswith(COOKIE + "_")


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    idp: OIDCProvider
    gw: GatewayProcess
    up: Upstream
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback(self) -> str:
        return self.url + "/oauth2/callback"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clients = [
        client("gw", CORP_SECRET, [url + "/oauth2/callback"], post_logout_redirect_uris=[url + "/"]),
        client("gw-partners", PARTNERS_SECRET, [url + "/oauth2/callback"], post_logout_redirect_uris=[url + "/"]),
    ]
    users = [
        user("alice", ALICE_PW, email="alice@example.test", groups=["users", "admins"], name="Alice Example"),
        user("bob", BOB_PW, email="bob@example.test", groups=["users"], name=BOB_NAME),
    ]
    up = Upstream("app").start()
    try:
        with start_oidc_provider(tmp_path_factory.mktemp("idp"), clients=clients, users=users) as idp:
            routes = [
                {"name": "root", "path": "/", "upstream": up.url, "auth": "public"},
                {"name": "app", "path": "/app", "upstream": up.url, "auth": "login", "providers": ["corp"]},
                {"name": "both", "path": "/both", "upstream": up.url, "auth": "login",
                 "providers": ["corp", "partners"]},
                {"name": "admin", "path": "/admin", "upstream": up.url, "auth": "login", "providers": ["corp"],
                 "allow": [{"group": ["ops"]}]},
            ]
            providers = {
                "corp": provider_entry(idp.issuer, "gw", CORP_SECRET, "Corp"),
                "partners": provider_entry(idp.issuer, "gw-partners", PARTNERS_SECRET, "Partners"),
            }
            gw = start_gateway(gateway_yaml(port, providers=providers, routes=routes, cookie_name=COOKIE), port)
            try:
                yield Env(idp, gw, up, port)
            finally:
                gw.stop()
    finally:
        up.stop()


def sign_in_at(env: Env, page: Any, path: str, login: str = "alice", password: str = ALICE_PW) -> None:
    """Open ``path`` on the gateway, sign in at the provider, and land back on ``path``."""
    page.goto(env.url + path)
    assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
    provider_sign_in(page, login, password)
    wait_url(page, env.url + path)


def assert_loopback_only(ctx: Any) -> None:
    assert ctx.blocked_requests == [], f"the browser tried to leave loopback: {ctx.blocked_requests}"


def upstream_cookie_names(seen: dict) -> list[str]:
    raw = seen["headers"].get("Cookie", "")
    return [part.split("=", 1)[0].strip() for part in raw.split(";") if part.strip()]


def session_cookie_for_http(ctx: Any, env: Env) -> str:
    return cookie_header(ctx, env.url, only=is_gateway_cookie)


def start_via_http(env: Env, rd: str = "/app/x") -> tuple[dict, dict]:
    """GET /oauth2/start like a browser would; (authorization request params, state cookies set)."""
    r = api_get(env.url, "/oauth2/start?" + urllib.parse.urlencode({"rd": rd, "provider": "corp"}),
                accept=HTML_ACCEPT)
    assert r.status == 302, (r.status, r.body[:300])
    location = r.header("Location") or ""
    assert location.startswith(env.idp.issuer + "/auth?"), location
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    return params, {n: v for n, v in cookies_from_set_cookie(r).items() if n.startswith(COOKIE + "_login_")}


# --------------------------------------------------------------------------- the login itself


def test_login_returns_to_the_original_url_with_the_identity_at_the_upstream(env: Env, ctx: Any, page: Any) -> None:
    ctx.add_cookies([{"name": "app_pref", "value": "dark", "url": env.url}])
    target = "/app/deep/page?x=1&y=%C3%A9"
    with RequestLog(ctx) as log:
        page.goto(env.url + target)
        assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
        assert page.title() == "Sign in"

        # the pending login lives in its own state cookie, bound to this browser
        pending = [c for c in ctx.cookies(env.url) if c["name"].startswith(COOKIE + "_login_")]
        assert len(pending) == 1, pending
        assert re.fullmatch(re.escape(COOKIE) + r"_login_[0-9a-f]{16}", pending[0]["name"])
        assert pending[0]["httpOnly"] and pending[0]["sameSite"] == "Lax" and not pending[0]["secure"]

        provider_sign_in(page, "alice", ALICE_PW)
        wait_url(page, env.url + target)

    auth = log.query_of(env.idp.issuer + "/auth?")
    assert auth["client_id"] == "gw"
    assert auth["response_type"] == "code"
    assert auth["redirect_uri"] == env.callback
    assert auth["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", auth["code_challenge"])
    assert len(auth["state"]) >= 16 and len(auth["nonce"]) >= 16
    assert {"openid", "email", "profile", "groups"} <= set(auth["scope"].split())
    assert len(log.matching(env.callback)) == 1

    # the upstream got the original request, with the identity, and never the gateway's cookies
    seen = env.up.last("/app/deep/page")
    assert seen is not None, "the upstream never received the original URL"
    assert seen["query"] == {"x": ["1"], "y": ["é"]}
    h = seen["headers"]
    assert h.get("X-Forwarded-User") == "alice"
    assert h.get("X-Forwarded-Email") == "alice@example.test"
    assert h.get("X-Forwarded-Groups") == "users,admins"
    assert h.get("X-Forwarded-Preferred-Username") == "alice"
    names = upstream_cookie_names(seen)
    assert "app_pref" in names
    assert not [n for n in names if is_gateway_cookie(n)], names
    assert COOKIE not in h.get("Cookie", "")

    # the session cookie: HttpOnly, SameSite=Lax, not Secure on http; the state cookie is gone
    jar = cookies(ctx, env.url)
    session = [c for n, c in jar.items() if is_session_cookie(n)]
    assert session, f"no session cookie in {sorted(jar)}"
    for c in session:
        assert c["httpOnly"] is True, c["name"]
        assert c["sameSite"] == "Lax", c["name"]
        assert c["secure"] is False, c["name"]
        assert c["path"] == "/", c["name"]
        assert c["expires"] > 0, "a session cookie with a lifetime, not a browser-session cookie"
    assert not [n for n in jar if n.startswith(COOKIE + "_login_")], sorted(jar)

    # /oauth2/userinfo from the page's own script
    info = page.evaluate("fetch('/oauth2/userinfo').then(r => r.json())")
    assert info["sub"] == "alice"
    assert info["email"] == "alice@example.test"
    assert info["groups"] == ["users", "admins"]
    assert info["preferred_username"] == "alice"

    entry = env.gw.wait_log(lambda e: e.get("path") == "/app/deep/page" and e.get("status") == 200)
    assert entry["user"] == "alice"
    assert entry["route"] == "app"
    assert_loopback_only(ctx)


def test_two_tabs_log_in_at_once(env: Env, ctx: Any, page: Any) -> None:
    other = ctx.new_page()
    page.goto(env.url + "/app/tab-one")
    other.goto(env.url + "/app/tab-two")
    for p in (page, other):
        assert p.url.startswith(env.idp.issuer + "/interaction/"), p.url
    pending = [c["name"] for c in ctx.cookies(env.url) if c["name"].startswith(COOKIE + "_login_")]
    assert len(pending) == 2, f"each tab has its own pending login: {pending}"

    for p in (page, other):
        p.fill('input[name="login"]', "alice")
        p.fill('input[name="password"]', ALICE_PW)
    page.get_by_role("button", name="Sign in").click()
    other.get_by_role("button", name="Sign in").click()
    wait_url(page, env.url + "/app/tab-one")
    wait_url(other, env.url + "/app/tab-two")

    for path in ("/app/tab-one", "/app/tab-two"):
        seen = env.up.last(path)
        assert seen is not None, f"{path} never reached the upstream"
        assert seen["headers"].get("X-Forwarded-User") == "alice"
    assert not [c for c in ctx.cookies(env.url) if c["name"].startswith(COOKIE + "_login_")]
    # both tabs are signed in with the one session
    for p in (page, other):
        assert p.evaluate("fetch('/oauth2/userinfo').then(r => r.status)") == 200
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- browsers vs API clients


def test_api_calls_and_xhr_get_401_while_a_page_load_is_redirected(env: Env, ctx: Any, page: Any) -> None:
    before = len(env.up.received("/app/x"))
    cases = {
        "json": {"accept": "application/json"},
        "any": {"accept": "*/*"},
        "xhr": {"accept": HTML_ACCEPT, "X_Requested_With": "XMLHttpRequest"},
        "fetch": {"accept": HTML_ACCEPT, "Sec_Fetch_Mode": "cors"},
    }
    for label, kw in cases.items():
        r = api_get(env.url, "/app/x", **kw)
        assert r.status == 401, (label, r.status, r.header("Location"))
        assert r.header("Location") is None, label
        assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="gateway"'), label
        assert "invalid_token" not in (r.header("WWW-Authenticate") or ""), label
        assert (r.header("Content-Type") or "").startswith("application/json"), label
        assert "error" in r.json(), label
    post = request(env.url, "POST", "/app/x", {"Accept": HTML_ACCEPT}, b"a=1")
    assert post.status == 401, "a form POST cannot be replayed after login: 401, not a redirect"

    # a page load (text/html, navigate) goes to the provider, with state, nonce and PKCE
    r = api_get(env.url, "/app/x?q=1", accept=HTML_ACCEPT, Sec_Fetch_Mode="navigate")
    assert r.status == 302, r.status
    location = r.header("Location") or ""
    assert location.startswith(env.idp.issuer + "/auth?"), location
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert params["code_challenge_method"] == "S256" and params["state"] and params["nonce"]
    state_headers = [h for h in r.all("Set-Cookie") if h.startswith(COOKIE + "_login_")]
    assert len(state_headers) == 1, r.all("Set-Cookie")
    attrs = [a.strip().lower() for a in state_headers[0].split(";")[1:]]
    assert "httponly" in attrs and "samesite=lax" in attrs and "path=/" in attrs
    assert "secure" not in attrs, "http public URL: no Secure attribute"
    assert (r.header("Cache-Control") or "").find("no-store") >= 0
    assert len(env.up.received("/app/x")) == before, "nothing reached the upstream unauthenticated"

    # the same from a real page's script: fetch() is CORS mode, so 401 and no redirect
    page.goto(env.url + "/public-page")
    status, www = page.evaluate(
        "fetch('/app/x').then(r => [r.status, r.headers.get('www-authenticate')])")
    assert status == 401 and www.startswith('Bearer realm="gateway"')
    xhr = page.evaluate("""() => new Promise(done => {
        const x = new XMLHttpRequest(); x.open('GET', '/app/x');
        x.setRequestHeader('Accept', 'text/html'); x.setRequestHeader('X-Requested-With', 'XMLHttpRequest');
        x.onload = () => done(x.status); x.send(); })""")
    assert xhr == 401
    assert_loopback_only(ctx)


def test_bearer_token_is_accepted_on_a_login_route(env: Env) -> None:
    token = hs_token("robot", email="robot@ci.example", groups=["ci"], preferred_username="robot-user")
    for accept in ("application/json", HTML_ACCEPT):
        r = api_get(env.url, "/app/api/thing", accept=accept, Authorization=f"Bearer {token}")
        assert r.status == 200, (accept, r.status, r.body[:200])
        h = r.json()["headers"]
        assert h.get("X-Forwarded-User") == "robot"
        assert h.get("X-Forwarded-Email") == "robot@ci.example"
        assert h.get("X-Forwarded-Groups") == "ci"
        assert h.get("X-Forwarded-Preferred-Username") == "robot-user"

    r = api_get(env.url, "/oauth2/userinfo", Authorization=f"Bearer {token}")
    assert r.status == 200 and r.json()["sub"] == "robot"

    # a bad token is refused outright (never a redirect to login, even for text/html)
    bad = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    r = api_get(env.url, "/app/api/thing", accept=HTML_ACCEPT, Authorization=f"Bearer {bad}")
    assert r.status == 401 and 'error="invalid_token"' in (r.header("WWW-Authenticate") or "")

    # allow rules apply to tokens too
    r = api_get(env.url, "/admin/x", Authorization=f"Bearer {token}")
    assert r.status == 403 and r.json()["error"] == "forbidden"


def test_userinfo_without_identity_is_401_json(env: Env) -> None:
    r = api_get(env.url, "/oauth2/userinfo")
    assert r.status == 401
    assert (r.header("WWW-Authenticate") or "").startswith('Bearer realm="gateway"')
    assert "error" in r.json()
    # a made-up session cookie is no identity either
    r = api_get(env.url, "/oauth2/userinfo", cookie=f"{COOKIE}=bm90LWEtc2Vzc2lvbg")
    assert r.status == 401


# --------------------------------------------------------------------------- sign-out


def test_sign_out_ends_both_sessions_and_comes_back(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/before-sign-out")
    assert any(is_session_cookie(n) for n in cookies(ctx, env.url))
    ended_before = env.idp.stats()["end_session_requests"]

    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out?rd=/")
        page.wait_for_url(lambda u: urllib.parse.urlsplit(u).netloc == f"127.0.0.1:{env.port}"
                          and urllib.parse.urlsplit(u).path == "/")
        page.wait_for_load_state("load")

    end = log.query_of(env.idp.issuer + "/session/end?")
    assert end["post_logout_redirect_uri"] == env.url + "/"
    hint = jwt_claims(end["id_token_hint"])
    assert hint["sub"] == "alice" and hint["aud"] == "gw" and hint["iss"] == env.idp.issuer
    assert env.idp.stats()["end_session_requests"] > ended_before
    assert env.up.last("/") is not None, "came back to the gateway's public root"

    jar = cookies(ctx, env.url)
    assert not [n for n in jar if is_gateway_cookie(n)], f"gateway cookies left: {sorted(jar)}"
    assert page.evaluate("fetch('/oauth2/userinfo').then(r => r.status)") == 401

    # the protected page asks for a login again (the provider's session ended too: its form)
    page.goto(env.url + "/app/after-sign-out")
    assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
    assert page.title() == "Sign in"

    # POST works too, and without a session it just goes to rd
    r = request(env.url, "POST", "/oauth2/sign_out?rd=/app/bye", {"Accept": HTML_ACCEPT})
    assert r.status in (302, 303) and r.header("Location") == "/app/bye"
    assert_loopback_only(ctx)


def test_sign_out_with_rd_sends_the_registered_uri_and_lands_on_rd(env: Env, ctx: Any, page: Any) -> None:
    """The provider only knows <public_url>/: rd travels with us and the browser ends on it."""
    sign_in_at(env, page, "/app/before")
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out?rd=/app/after?x=1")
        page.wait_for_url(lambda u: urllib.parse.urlsplit(u).path.startswith("/interaction/")
                          or u == env.url + "/app/after?x=1")
    end = log.query_of(env.idp.issuer + "/session/end?")
    assert end["post_logout_redirect_uri"] == env.url + "/"  # registered, never <public_url>/app/after
    # the protected page asks for a login again: the provider's sign-in form
    assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
    assert [u for u in log.urls if urllib.parse.urlsplit(u).path == "/app/after"], log.urls
    left = [n for n in cookies(ctx, env.url) if is_gateway_cookie(n) and "_login_" not in n]
    assert not left, left  # only the new login's pending state, no session and no sign-out note
    assert_loopback_only(ctx)


def test_sign_out_without_rd_ends_on_a_signed_out_page(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/x")
    with RequestLog(page.context) as log:
        page.goto(env.url + "/oauth2/sign_out")
        page.wait_for_url(lambda u: u.startswith(env.url + "/") and urllib.parse.urlsplit(u).path == "/")
    assert page.title().startswith("Signed out")
    end = log.query_of(env.idp.issuer + "/session/end?")
    assert len(end.get("state", "")) >= 16, "the sign-out request always carries a state"
    assert page.get_by_role("link", name="Sign in again").get_attribute("href") == "/oauth2/start?rd=%2F"
    assert not [n for n in cookies(ctx, env.url) if is_gateway_cookie(n)]
    # a second visit to / is the site again, not the page
    before = env.up.last("/")
    page.goto(env.url + "/")
    assert env.up.last("/") is not before


# --------------------------------------------------------------------------- the callback's checks


def test_callback_checks_error_then_code_then_state(env: Env) -> None:
    tokens_before = env.idp.stats()["token_requests"]
    # error first: even with a (bogus) code and state, the provider's error is what is reported
    r = api_get(env.url, "/oauth2/callback?error=access_denied&code=abc&state=nope", accept=HTML_ACCEPT)
    assert r.status == 403, r.status
    assert b'href="/oauth2/start?' in r.body
    r = api_get(env.url, "/oauth2/callback?error=server_error&state=nope", accept=HTML_ACCEPT)
    assert r.status == 400 and b'href="/oauth2/start?' in r.body
    # then the code
    params, state_cookies = start_via_http(env, "/app/code-missing")
    cookie = "; ".join(f"{n}={v}" for n, v in state_cookies.items())
    r = api_get(env.url, "/oauth2/callback?" + urllib.parse.urlencode({"state": params["state"]}),
                accept=HTML_ACCEPT, cookie=cookie)
    assert r.status == 400 and b'href="/oauth2/start?' in r.body
    # the retry link goes back to where the person was going
    assert b"code-missing" in r.body
    assert env.idp.stats()["token_requests"] == tokens_before, "nothing was exchanged"


def test_forged_state_is_a_400_page_with_a_try_again_link(env: Env, ctx: Any, page: Any) -> None:
    tokens_before = env.idp.stats()["token_requests"]
    # no state cookie at all
    r = api_get(env.url, "/oauth2/callback?code=abc&state=forged-state-value", accept=HTML_ACCEPT)
    assert r.status == 400 and (r.header("Content-Type") or "").startswith("text/html")
    assert b'href="/oauth2/start?' in r.body

    # a real pending login, but the state in the URL is another one
    params, state_cookies = start_via_http(env, "/app/forged")
    assert len(state_cookies) == 1
    cookie = "; ".join(f"{n}={v}" for n, v in state_cookies.items())
    r = api_get(env.url, "/oauth2/callback?code=abc&state=" + params["state"][:-2] + "xy",
                accept=HTML_ACCEPT, cookie=cookie)
    assert r.status == 400
    # the right state with a tampered state cookie
    (name, value), = state_cookies.items()
    mid = len(value) // 2
    tampered = value[:mid] + ("A" if value[mid] != "A" else "B") + value[mid + 1:]
    r = api_get(env.url, "/oauth2/callback?code=abc&state=" + urllib.parse.quote(params["state"]),
                accept=HTML_ACCEPT, cookie=f"{name}={tampered}")
    assert r.status == 400
    # a state minted for another browser (this one has no cookie for it)
    page.goto(env.url + "/oauth2/callback?code=abc&state=" + urllib.parse.quote(params["state"]))
    assert page.title().startswith("Bad request"), page.title()
    link = page.get_by_role("link", name=re.compile("sign in again", re.I))
    assert link.count() == 1
    assert link.get_attribute("href").startswith("/oauth2/start?")
    assert env.idp.stats()["token_requests"] == tokens_before, "a forged state never reaches the token endpoint"
    link.click()
    page.wait_for_load_state("load")
    assert page.title().startswith("Sign in"), page.title()  # the chooser or the provider's form
    assert_loopback_only(ctx)


def test_replayed_callback_and_replayed_code_are_refused(env: Env, ctx: Any, page: Any) -> None:
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/replay-me")
        assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
        # what an attacker with access to this browser's cookies could keep: the pending-login cookie
        kept_state = {c["name"]: c["value"] for c in ctx.cookies(env.url) if c["name"].startswith(COOKIE + "_login_")}
        provider_sign_in(page, "alice", ALICE_PW)
        wait_url(page, env.url + "/app/replay-me")
    callbacks = log.matching(env.callback + "?")
    assert len(callbacks) == 1, callbacks
    callback_url = callbacks[0]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback_url).query))
    assert query["code"] and query["state"]
    path_and_query = callback_url[len(env.url):]
    stats = env.idp.stats()

    # 1. the same callback URL again in the same browser (its state cookie was used up)
    resp = page.goto(callback_url)
    assert resp is not None and resp.status == 400
    assert page.get_by_role("link", name=re.compile("sign in again", re.I)).count() == 1

    # 2. an attacker who kept the state cookie replays the whole callback: single use
    state_cookie = "; ".join(f"{n}={v}" for n, v in kept_state.items())
    assert state_cookie
    r = api_get(env.url, path_and_query, accept=HTML_ACCEPT, cookie=state_cookie)
    assert r.status == 400, r.status
    assert not [n for n in cookies_from_set_cookie(r) if is_session_cookie(n)]
    assert env.idp.stats()["token_requests"] == stats["token_requests"], "a replayed state is refused before any exchange"

    # 3. the used code under a fresh, valid state: the provider refuses it, no session
    params, fresh = start_via_http(env, "/app/code-replay")
    fresh_cookie = "; ".join(f"{n}={v}" for n, v in fresh.items())
    replay = {"code": query["code"], "state": params["state"]}
    if "iss" in query:
        replay["iss"] = query["iss"]
    r = api_get(env.url, "/oauth2/callback?" + urllib.parse.urlencode(replay), accept=HTML_ACCEPT, cookie=fresh_cookie)
    assert r.status == 400, r.status
    assert b'href="/oauth2/start?' in r.body
    assert not [n for n in cookies_from_set_cookie(r) if is_session_cookie(n)], r.all("Set-Cookie")
    after = env.idp.stats()
    assert after["token_requests"] == stats["token_requests"] + 1
    assert after["failed_token_requests"] == stats["failed_token_requests"] + 1
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- open redirects

EVIL_RD = [
    "//evil.com",
    "//evil.com/app",
    "/\\evil.com",
    "\\\\evil.com",
    "https://evil.com",
    "http:evil.com",
    "/%2F%2Fevil.com",
    "%2F%2Fevil.com",
    "/%5Cevil.com",
    "%2F%5Cevil.com",
    "/%252F%252Fevil.com",
    "javascript:alert(document.domain)",
    "/%09/evil.com",
    "///evil.com",
]


def _raw_query(rd: str) -> str:
    """``rd`` as it would be typed into a URL: already-encoded parts stay as they are."""
    return urllib.parse.quote(rd, safe="%/:")


def test_login_never_redirects_off_origin(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/first")  # now the provider signs us in without a form
    origin = ("http", f"127.0.0.1:{env.port}")
    wrong = []
    for rd in EVIL_RD:
        try:
            page.goto(f"{env.url}/oauth2/start?provider=corp&rd={_raw_query(rd)}")
            page.wait_for_load_state("load")
        except PlaywrightError as exc:  # e.g. ERR_NAME_NOT_RESOLVED: it tried to go to evil.com
            wrong.append((rd, str(exc).splitlines()[0]))
            continue
        final = urllib.parse.urlsplit(page.url)
        if (final.scheme, final.netloc) != origin or final.path.startswith(("//", "/\\")):
            wrong.append((rd, page.url))
    assert not wrong, f"left the origin: {wrong}"
    # a legitimate same-origin path with a query is kept exactly
    page.goto(f"{env.url}/oauth2/start?provider=corp&rd=" + urllib.parse.quote("/app/ok?x=1&y=2", safe=""))
    wait_url(page, env.url + "/app/ok?x=1&y=2")
    assert_loopback_only(ctx)
    assert not [u for u in ctx.blocked_requests if "evil" in u]


@pytest.mark.parametrize("rd", EVIL_RD)
def test_sign_out_rd_is_same_origin_only(env: Env, rd: str) -> None:
    r = api_get(env.url, f"/oauth2/sign_out?rd={_raw_query(rd)}", accept=HTML_ACCEPT)
    assert r.status in (302, 303)
    location = r.header("Location") or ""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(env.url + "/", location))
    assert (target.scheme, target.netloc) == ("http", f"127.0.0.1:{env.port}"), location
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert "evil" not in location


# --------------------------------------------------------------------------- several providers


def test_chooser_then_the_session_remembers_its_provider(env: Env, ctx: Any, page: Any) -> None:
    resp = page.goto(env.url + "/both/x")
    assert resp is not None and resp.status == 200
    assert page.url == env.url + "/both/x", "the chooser is served in place"
    links = page.get_by_role("link", name=re.compile(r"^Sign in with"))
    assert sorted(links.all_inner_texts()) == ["Sign in with Corp", "Sign in with Partners"]
    assert not any(is_session_cookie(c["name"]) for c in ctx.cookies(env.url))
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "chooser.png"))

    with RequestLog(ctx) as log:
        page.get_by_role("link", name="Sign in with Partners").click()
        provider_sign_in(page, "alice", ALICE_PW)
        wait_url(page, env.url + "/both/x")
    assert log.query_of(env.idp.issuer + "/auth?")["client_id"] == "gw-partners"
    seen = env.up.last("/both/x")
    assert seen is not None and seen["headers"].get("X-Forwarded-User") == "alice"

    # /app accepts only corp: the partners session does not count there, so corp signs in
    with RequestLog(ctx) as log:
        page.goto(env.url + "/app/only-corp")
        wait_url(page, env.url + "/app/only-corp")
    auths = log.matching(env.idp.issuer + "/auth?")
    assert len(auths) == 1, auths
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(auths[0]).query))["client_id"] == "gw"
    assert env.up.last("/app/only-corp")["headers"].get("X-Forwarded-User") == "alice"

    # now a corp session: /both accepts it as it is
    with RequestLog(ctx) as log:
        page.goto(env.url + "/both/y")
        wait_url(page, env.url + "/both/y")
    assert not log.matching(env.idp.issuer), log.urls

    r = api_get(env.url, "/oauth2/start?rd=/both/x&provider=nope", accept=HTML_ACCEPT)
    assert r.status == 400
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- authorization


def test_signed_in_but_not_allowed_gets_the_403_page(env: Env, ctx: Any, page: Any) -> None:
    page.goto(env.url + "/admin/panel")
    provider_sign_in(page, "alice", ALICE_PW)
    wait_url(page, env.url + "/admin/panel")
    assert page.title().startswith("Access denied"), page.title()
    resp = page.reload()
    assert resp is not None and resp.status == 403
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "forbidden.png"))
    assert env.up.received("/admin/panel") == []

    r = api_get(env.url, "/admin/panel", cookie=session_cookie_for_http(ctx, env))
    assert r.status == 403 and r.json()["error"] == "forbidden"
    entry = env.gw.wait_log(lambda e: e.get("path") == "/admin/panel" and e.get("status") == 403)
    assert entry["user"] == "alice" and entry.get("reason"), entry
    assert_loopback_only(ctx)


# --------------------------------------------------------------------------- a big ID token


def test_large_id_token_is_split_into_cookies_under_4096_bytes(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/big", "bob", BOB_PW)
    jar = cookies(ctx, env.url)
    chunks = sorted((n for n in jar if is_session_cookie(n)), key=lambda n: (len(n), n))
    assert COOKIE not in jar and len(chunks) >= 2, f"expected chunks {COOKIE}_0, {COOKIE}_1, ...: {sorted(jar)}"
    assert chunks == [f"{COOKIE}_{i}" for i in range(len(chunks))]
    for n in chunks:
        c = jar[n]
        assert len(n) + 1 + len(c["value"]) < 4096, (n, len(c["value"]))
        assert c["httpOnly"] and c["sameSite"] == "Lax" and not c["secure"]

    seen = env.up.last("/app/big")
    assert seen is not None
    assert seen["headers"].get("X-Forwarded-User") == "bob"
    assert seen["headers"].get("X-Forwarded-Email") == "bob@example.test"
    assert not [n for n in upstream_cookie_names(seen) if is_gateway_cookie(n)]

    # the reassembled session also works for a script's request
    r = api_get(env.url, "/app/big-api", cookie=session_cookie_for_http(ctx, env))
    assert r.status == 200 and r.json()["headers"].get("X-Forwarded-User") == "bob"

    # sign-out clears every chunk, and the full ID token went to the provider as the hint
    with RequestLog(ctx) as log:
        page.goto(env.url + "/oauth2/sign_out?rd=/")
        page.wait_for_url(lambda u: urllib.parse.urlsplit(u).netloc == f"127.0.0.1:{env.port}"
                          and urllib.parse.urlsplit(u).path == "/")
    hint = log.query_of(env.idp.issuer + "/session/end?")["id_token_hint"]
    assert len(hint) > 6000 and jwt_claims(hint)["sub"] == "bob"
    left = [n for n in cookies(ctx, env.url) if is_gateway_cookie(n)]
    assert not left, f"chunks left after sign-out: {left}"
    assert_loopback_only(ctx)


def test_sign_out_response_clears_every_chunk(env: Env, ctx: Any, page: Any) -> None:
    sign_in_at(env, page, "/app/big2", "bob", BOB_PW)
    jar_cookie = session_cookie_for_http(ctx, env)
    names = {part.split("=", 1)[0] for part in jar_cookie.split("; ")}
    assert len(names) >= 2
    r = request(env.url, "GET", "/oauth2/sign_out?rd=/", {"Accept": HTML_ACCEPT, "Cookie": jar_cookie})
    assert r.status in (302, 303)
    assert names <= cleared_cookies(r), (names, r.all("Set-Cookie"))
