"""End to end: sign-in for login routes on several hosts, with and without ``session.cookie_domain``.

Chromium reaches every host name through ``--host-resolver-rules`` (all on 127.0.0.1); the
OpenID Connect provider is oidc-provider on ``localhost``. Two gateways:

* "handoff": public_url ``http://auth.test:P``, a login route on host ``app.test`` and one on
  ``*.apps.test``; the callback on auth.test hands the session to the host where the login
  started with a single-use code bound to the browser.
* "domain": public_url ``http://auth.example.test:Q`` with ``cookie_domain: .example.test``; one
  sign-in on ``a.example.test`` serves ``b.example.test`` too.
"""

from __future__ import annotations

import shutil
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
from tests.support.e2e import request
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (HTML_ACCEPT, cookie_header, cookies_from_set_cookie, free_port, gateway_yaml, provider_entry,
                                     provider_sign_in, start_gateway, wait_url)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.upstream import Upstream

HOSTS = ["auth.test", "app.test", "one.apps.test", "evil.test", "auth.example.test", "a.example.test",
         "b.example.test"]
ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=" + ", ".join(f"MAP {h} 127.0.0.1" for h in HOSTS)
                        + ", MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(90),
]

SECRET_A = "hosts-client-a-secret-0123456789"
SECRET_B = "hosts-client-b-secret-0123456789"
COOKIE = "_gwh"


@dataclass
class Env:
    idp: OIDCProvider
    handoff: GatewayProcess
    domain: GatewayProcess
    up: Upstream
    p: int
    q: int

    def direct(self, host: str) -> str:
        """Where a plain HTTP client reaches the gateway that serves ``host`` (send Host: yourself)."""
        return f"http://127.0.0.1:{self.q if host.endswith('example.test') else self.p}"

    def at(self, host: str, path: str = "/") -> str:
        port = self.q if host.endswith("example.test") else self.p
        return f"http://{host}:{port}{path}"


def _config(port: int, public_url: str, providers: dict, routes: list, cookie_domain: str = "") -> str:
    import yaml
    config = yaml.safe_load(gateway_yaml(port, providers=providers, routes=routes, cookie_name=COOKIE))
    config["server"]["public_url"] = public_url
    if cookie_domain:
        config["session"]["cookie_domain"] = cookie_domain
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    p, q = free_port(), free_port()
    up = Upstream("app").start()
    try:
        with start_oidc_provider(
            tmp_path_factory.mktemp("idp"),
            clients=[client("gw-a", SECRET_A, [f"http://auth.test:{p}/oauth2/callback"]),
                     client("gw-b", SECRET_B, [f"http://auth.example.test:{q}/oauth2/callback"])],
            users=[user("alice", "alice-pw", email="alice@example.test", groups=["users"])],
        ) as idp:
            handoff_routes = [
                {"name": "app", "host": "app.test", "path": "/", "upstream": up.url, "auth": "login"},
                {"name": "apps", "host": "*.apps.test", "path": "/", "upstream": up.url, "auth": "login"},
                {"name": "any", "path": "/any", "upstream": up.url, "auth": "login"},
            ]
            domain_routes = [
                {"name": "a", "host": "a.example.test", "path": "/", "upstream": up.url, "auth": "login"},
                {"name": "b", "host": "b.example.test", "path": "/", "upstream": up.url, "auth": "login"},
            ]
            gw_a = start_gateway(_config(p, f"http://auth.test:{p}", {"corp": provider_entry(idp.issuer, "gw-a", SECRET_A)},
                                         handoff_routes), p)
            try:
                gw_b = start_gateway(_config(q, f"http://auth.example.test:{q}",
                                             {"corp": provider_entry(idp.issuer, "gw-b", SECRET_B)}, domain_routes,
                                             cookie_domain=".example.test"), q)
                try:
                    yield Env(idp, gw_a, gw_b, up, p, q)
                finally:
                    gw_b.stop()
            finally:
                gw_a.stop()
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    with chromium_browser(args=ARGS, allowed_hosts=["127.0.0.1", "localhost", *HOSTS]) as context:
        yield context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    browser.clear_cookies()
    page = browser.new_page()
    yield page
    page.close()


def test_a_login_route_on_another_host_gets_the_session_by_a_handoff(env: Env, page: Any) -> None:
    handoffs: list[str] = []
    page.on("request", lambda r: handoffs.append(r.url) if "/oauth2/handoff?" in r.url else None)
    page.goto(env.at("app.test", "/inbox?x=1"))
    assert page.url.startswith(env.idp.issuer + "/interaction/"), page.url
    provider_sign_in(page, "alice", "alice-pw")
    wait_url(page, env.at("app.test", "/inbox?x=1"))
    seen = env.up.last("/inbox")
    assert seen is not None and seen["headers"]["X-Forwarded-User"] == "alice"
    assert len(handoffs) == 1 and urllib.parse.urlsplit(handoffs[0]).netloc == f"app.test:{env.p}"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(handoffs[0]).query)
    assert list(query) == ["code"], "only a code travels: never the session"
    names = {c["name"]: c["domain"] for c in page.context.cookies()}
    assert names.get(COOKIE) == "app.test", names  # the session lives on the host where the login started
    assert not [c for c in page.context.cookies(env.at("auth.test")) if c["name"] == COOKIE]

    # single use: the same handoff URL again is refused, and changes nothing
    replay = request(env.direct("app.test"), "GET", urllib.parse.urlsplit(handoffs[0]).path + "?" +
                     urllib.parse.urlsplit(handoffs[0]).query,
                     {"Cookie": cookie_header(page.context, env.at("app.test", "/")), "Accept": HTML_ACCEPT,
                      "Host": f"app.test:{env.p}"})
    assert replay.status == 400

    # a wildcard route's host works the same way
    page.goto(env.at("one.apps.test", "/w"))
    wait_url(page, env.at("one.apps.test", "/w"))  # signed in at the provider already: no form
    assert env.up.last("/w")["headers"]["X-Forwarded-User"] == "alice"


def test_a_handoff_code_is_usable_only_by_the_browser_that_started_the_login(env: Env, page: Any) -> None:
    """Browser A starts the login (plain HTTP, keeping its cookies); Chromium finishes it at the
    provider with A's pending-login cookie but without A's binding cookie on app.test."""
    first = request(env.direct("app.test"), "GET", "/stolen", {"Accept": HTML_ACCEPT, "Host": f"app.test:{env.p}"})
    assert first.status == 302
    binding = cookies_from_set_cookie(first)
    assert list(binding) == [COOKIE + "_handoff"]
    start = urllib.parse.urlsplit(first.header("Location") or "")
    assert start.netloc == f"auth.test:{env.p}" and start.path == "/oauth2/start"
    second = request(env.direct("auth.test"), "GET", start.path + "?" + start.query,
                     {"Accept": HTML_ACCEPT, "Host": f"auth.test:{env.p}"})
    assert second.status == 302 and (second.header("Location") or "").startswith(env.idp.issuer)
    page.context.add_cookies([{"name": n, "value": v, "url": env.at("auth.test")}
                              for n, v in cookies_from_set_cookie(second).items()])
    handoffs: list[str] = []
    page.on("request", lambda r: handoffs.append(r.url) if "/oauth2/handoff?" in r.url else None)
    page.goto(second.header("Location") or "")
    provider_sign_in(page, "alice", "alice-pw")
    try:
        page.wait_for_url(lambda u: "/oauth2/handoff?" in u)
    except Exception:
        raise AssertionError(f"stuck at {page.url}: {page.content()[:1500]}")
    page.wait_for_load_state("load")
    assert "another browser" in page.content()  # Chromium holds no binding for this login
    assert not [c for c in page.context.cookies(env.at("app.test")) if c["name"] == COOKIE]
    # and the code is spent: even browser A, with its binding, cannot use it any more
    code = urllib.parse.urlsplit(handoffs[0])
    late = request(env.direct("app.test"), "GET", code.path + "?" + code.query,
                   {"Accept": HTML_ACCEPT, "Host": f"app.test:{env.p}",
                    "Cookie": "; ".join(f"{n}={v}" for n, v in binding.items())})
    assert late.status == 400 and not any(h.startswith(COOKIE + "=") for h in late.all("Set-Cookie"))


def test_logins_on_hosts_no_route_names_are_refused(env: Env) -> None:
    # a route without a host answers any Host: a login there must not hand a session to that host
    r = request(env.direct("app.test"), "GET", "/any/x", {"Accept": HTML_ACCEPT, "Host": f"evil.test:{env.p}"})
    assert r.status == 400
    forged = request(env.direct("auth.test"), "GET", "/oauth2/start?" + urllib.parse.urlencode(
        {"rd": "/", "host": "evil.test", "b": "A" * 43}), {"Accept": HTML_ACCEPT, "Host": f"auth.test:{env.p}"})
    assert forged.status == 400
    garbage = request(env.direct("app.test"), "GET", "/oauth2/handoff?code=" + "x" * 43,
                      {"Accept": HTML_ACCEPT, "Host": f"app.test:{env.p}"})
    assert garbage.status == 400


def test_cookie_domain_serves_every_host_under_it_with_one_sign_in(env: Env, page: Any) -> None:
    page.goto(env.at("a.example.test", "/first"))
    provider_sign_in(page, "alice", "alice-pw")
    try:
        wait_url(page, env.at("a.example.test", "/first"))
    except Exception:
        raise AssertionError(f"stuck at {page.url}: {page.content()[:800]}") from None
    domains = {c["domain"] for c in page.context.cookies() if c["name"] == COOKIE}
    assert domains == {".example.test"}, domains
    page.goto(env.at("b.example.test", "/second"))
    wait_url(page, env.at("b.example.test", "/second"))  # no trip to the provider
    assert env.up.last("/second")["headers"]["X-Forwarded-User"] == "alice"
