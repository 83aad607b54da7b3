"""End to end: the gateway's own tokens, with the real provider, real Chromium and real redis-server.

Two gateways on loopback sign with the same configured P-256 key and share sessions in Redis
(so "refused after sign-out" holds on both), and a third one with another key stands for "another
instance". Routes:

    /app    login, identity_assertion: true                 (X-Gateway-Assertion, aud "app")
    /svc    token, identity_assertion {header: X-Id, audience: billing}
    /api    token                                           (accepts the gateway's own tokens)
    /open   public
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
from tests.support.e2e import request
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (HTML_ACCEPT, cookie_header, free_port, gateway_yaml, provider_entry,
                                     provider_sign_in, start_gateway, wait_url)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.redis_server import redis_available, start_redis
from tests.support.upstream import Upstream

LOOPBACK_ONLY_ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(90),
]

SECRET = "own-tokens-client-secret-0123456789"
COOKIE = "_gwt"


def _pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class Env:
    idp: OIDCProvider
    a: GatewayProcess
    b: GatewayProcess
    other: GatewayProcess
    up: Upstream
    ports: tuple
    key: Any

    def url(self, which: str = "a") -> str:
        return f"http://127.0.0.1:{self.ports['abo'.index(which)]}"


def _config(port: int, providers: dict, routes: list, store: str, key_file: Path, public_url: str) -> str:
    config = yaml.safe_load(gateway_yaml(port, providers=providers, routes=routes, cookie_name=COOKIE, store=store))
    config["server"]["public_url"] = public_url  # instances of one gateway share it (and so the issuer)
    config["signing"] = {"key": str(key_file), "token_lifetime": "30m"}
    return yaml.safe_dump(config, sort_keys=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not redis_available():
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    ports = (free_port(), free_port(), free_port())
    keys = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (keys / "signing.pem").write_text(_pem(key))
    (keys / "other.pem").write_text(_pem(ec.generate_private_key(ec.SECP256R1())))
    callbacks = [f"http://127.0.0.1:{p}/oauth2/callback" for p in ports]
    up = Upstream("app").start()
    try:
        with start_redis(tmp_path_factory.mktemp("redis")) as redis, start_oidc_provider(
                tmp_path_factory.mktemp("idp"),
                clients=[client("gw", SECRET, callbacks, post_logout_redirect_uris=[f"http://127.0.0.1:{p}/" for p in ports])],
                users=[user("alice", "alice-pw", email="alice@example.test", groups=["users", "ops"])]) as idp:
            providers = {"corp": provider_entry(idp.issuer, "gw", SECRET)}
            routes = [
                {"name": "open", "path": "/open", "upstream": up.url, "auth": "public"},
                {"name": "app", "path": "/app", "upstream": up.url, "auth": "login", "identity_assertion": True},
                {"name": "svc", "path": "/svc", "upstream": up.url, "auth": "token",
                 "identity_assertion": {"header": "X-Id", "audience": "billing"}},
                {"name": "api", "path": "/api", "upstream": up.url, "auth": "token"},
            ]
            started = []
            try:
                for port, key_name in zip(ports, ("signing.pem", "signing.pem", "other.pem")):
                    started.append(start_gateway(_config(port, providers, routes, redis.url, keys / key_name,
                                                         f"http://127.0.0.1:{ports[0]}"), port))
                yield Env(idp, started[0], started[1], started[2], up, ports, key)
            finally:
                for gw in started:
                    gw.stop()
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    with chromium_browser(args=LOOPBACK_ONLY_ARGS) as context:
        yield context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    browser.clear_cookies()
    page = browser.new_page()
    yield page
    page.close()


def sign_in(env: Env, page: Any, path: str = "/app/home") -> str:
    page.goto(env.url() + path)
    provider_sign_in(page, "alice", "alice-pw")
    wait_url(page, env.url() + path)
    return cookie_header(page.context, env.url())


def get_token(env: Env, jar: str) -> dict:
    r = request(env.url(), "GET", "/oauth2/token", {"Cookie": jar, "Accept": "application/json"})
    assert r.status == 200, (r.status, r.body[:200])
    assert r.header("Cache-Control") == "no-store"
    return r.json()


def bearer(token: str) -> dict:
    return {"Authorization": "Bearer " + token, "Accept": "application/json"}


# --------------------------------------------------------------------------- keys and assertions


def test_jwks_publishes_the_public_key_under_its_thumbprint(env: Env) -> None:
    r = request(env.url(), "GET", "/oauth2/jwks")
    assert r.status == 200 and r.header("Cache-Control") == "public, max-age=300"
    keys = r.json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and keys[0]["use"] == "sig"
    assert "d" not in keys[0]
    numbers = env.key.public_key().public_numbers()
    canonical = json.dumps({"crv": "P-256", "kty": "EC",
                            "x": jwt.utils.base64url_encode(numbers.x.to_bytes(32, "big")).decode(),
                            "y": jwt.utils.base64url_encode(numbers.y.to_bytes(32, "big")).decode()},
                           separators=(",", ":"), sort_keys=True)
    import hashlib
    assert keys[0]["kid"] == jwt.utils.base64url_encode(hashlib.sha256(canonical.encode()).digest()).decode()
    assert request(env.url("b"), "GET", "/oauth2/jwks").json() == r.json(), "instances with one key agree"


def test_an_upstream_verifies_the_identity_assertion_with_pyjwt(env: Env, page: Any) -> None:
    sign_in(env, page, "/app/one")
    assertion = env.up.last("/app/one")["headers"]["X-Gateway-Assertion"]
    # What an upstream does: its keys from /oauth2/jwks, then audience, issuer and expiry.
    keys = jwt.PyJWKClient(env.url() + "/oauth2/jwks")
    claims = jwt.decode(assertion, keys.get_signing_key_from_jwt(assertion).key, algorithms=["ES256"],
                        audience="app", issuer=env.url())
    assert claims["sub"] == "alice" and claims["email"] == "alice@example.test"
    assert claims["groups"] == ["users", "ops"] and 0 < claims["exp"] - claims["iat"] <= 300
    page.goto(env.url() + "/app/two")
    assert env.up.last("/app/two")["headers"]["X-Gateway-Assertion"] == assertion, "cached, not signed per request"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(assertion, keys.get_signing_key_from_jwt(assertion).key, algorithms=["ES256"], audience="svc")


def test_a_client_sent_assertion_is_removed_on_every_route(env: Env, page: Any) -> None:
    forged = {"X-Gateway-Assertion": "forged.jwt.value", "X-Id": "forged", "X_Gateway_Assertion": "x"}
    assert request(env.url(), "GET", "/open/x", forged).status == 200
    seen = env.up.last("/open/x")["headers"]
    assert not {"X-Gateway-Assertion", "X-Id", "X_Gateway_Assertion"} & set(seen), seen
    token = get_token(env, sign_in(env, page))["access_token"]
    assert request(env.url(), "GET", "/svc/pay", {**forged, **bearer(token)}).status == 200
    seen = env.up.last("/svc/pay")["headers"]
    assert seen["X-Id"] != "forged" and "X-Gateway-Assertion" not in seen
    claims = jwt.decode(seen["X-Id"], env.key.public_key(), algorithms=["ES256"], audience="billing",
                        issuer=env.url())  # every instance's issuer is the public_url
    assert claims["sub"] == "alice"


# --------------------------------------------------------------------------- tokens for scripts


def test_the_token_endpoint_without_a_session(env: Env) -> None:
    api = request(env.url(), "GET", "/oauth2/token", {"Accept": "application/json"})
    assert api.status == 401
    browser = request(env.url(), "GET", "/oauth2/token", {"Accept": HTML_ACCEPT})
    assert browser.status == 302 and (browser.header("Location") or "").startswith(env.idp.issuer)


def test_a_token_for_scripts_works_on_token_and_login_routes_and_not_elsewhere(env: Env, page: Any) -> None:
    body = get_token(env, sign_in(env, page))
    assert body["token_type"] == "Bearer" and 1700 < body["expires_in"] <= 1800
    claims = jwt.decode(body["access_token"], env.key.public_key(), algorithms=["ES256"], audience="gateway",
                        issuer=env.url())
    assert claims["sub"] == "alice" and claims["sid"] and claims["groups"] == ["users", "ops"]
    token = body["access_token"]
    assert request(env.url(), "GET", "/api/x", bearer(token)).status == 200
    assert env.up.last("/api/x")["headers"]["X-Forwarded-User"] == "alice"
    assert request(env.url(), "GET", "/app/x", bearer(token)).status == 200  # a login route, no cookie
    assert request(env.url("b"), "GET", "/api/x", bearer(token)).status == 200  # same key, shared sessions
    other = request(env.url("o"), "GET", "/api/x", bearer(token))
    assert other.status == 401, "an instance with another key refuses it"
    forged = jwt.encode({**claims, "sub": "admin"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": jwt.get_unverified_header(token)["kid"]})
    assert request(env.url(), "GET", "/api/x", bearer(forged)).status == 401


def test_the_token_page_shows_a_copy_button_and_a_curl_example(env: Env, page: Any) -> None:
    sign_in(env, page)
    page.goto(env.url() + "/oauth2/token")
    token = page.locator("#token").input_value()
    assert token.count(".") == 2
    assert page.get_by_role("button", name="Copy the token").count() == 1
    assert "curl -H" in page.content()


def test_a_token_is_refused_once_its_session_is_signed_out(env: Env, page: Any) -> None:
    jar = sign_in(env, page)
    token = get_token(env, jar)["access_token"]
    assert request(env.url("b"), "GET", "/api/x", bearer(token)).status == 200
    out = request(env.url(), "GET", "/oauth2/sign_out?rd=/open/", {"Cookie": jar, "Accept": HTML_ACCEPT})
    assert out.status in (302, 303)
    for which in ("a", "b"):  # Redis: every instance knows
        refused = request(env.url(which), "GET", "/api/x", bearer(token))
        assert refused.status == 401
        assert "has ended" in (refused.header("WWW-Authenticate") or "") + refused.body.decode()


# --------------------------------------------------------------------------- gateway login


def _cli(env_dir: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "XDG_CONFIG_HOME": str(env_dir),
                                                "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))


def test_gateway_login_then_gateway_token_with_curl(env: Env, page: Any, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "login", env.url() + "/some/path/", "--no-browser",
                             "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith(env.url() + "/oauth2/cli?"), url
        page.goto(url)
        provider_sign_in(page, "alice", "alice-pw")
        page.wait_for_url(lambda u: u.startswith("http://127.0.0.1:") and "/callback?" in u)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"signed in as alice to {env.url()}" in out
    stored = tmp_path / "gateway" / "tokens.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    printed = _cli(tmp_path, "token", env.url())
    assert printed.returncode == 0
    token = printed.stdout.strip()
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {token}",
                           env.url() + "/api/from-curl"], capture_output=True, text=True, timeout=20)
    assert curl.stdout == "200"
    assert env.up.last("/api/from-curl")["headers"]["X-Forwarded-User"] == "alice"
    assert _cli(tmp_path, "logout", env.url()).returncode == 0
    assert _cli(tmp_path, "token", env.url()).returncode == 1


@pytest.mark.parametrize("query", [
    {"port": "0"}, {"port": "65536"}, {"port": "80a"}, {"port": "-1"}, {"port": "8080/evil"},
    {"port": "8080@evil.example"}, {"port": " 8080"}, {"port": "080"}, {"port": ""}, {},
])
def test_the_cli_endpoint_redirects_nowhere_but_a_loopback_port(env: Env, page: Any, query: dict) -> None:
    jar = sign_in(env, page)
    args = {**query, "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256"}
    r = request(env.url(), "GET", "/oauth2/cli?" + urllib.parse.urlencode(args), {"Cookie": jar, "Accept": HTML_ACCEPT})
    assert r.status == 400, (r.status, r.header("Location"))


def test_the_cli_endpoint_ignores_any_other_target_in_the_query(env: Env, page: Any) -> None:
    jar = sign_in(env, page)
    query = urllib.parse.urlencode({"port": "8123", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                                    "redirect_uri": "https://evil.example/", "host": "evil.example",
                                    "code_challenge_method": "S256"})
    r = request(env.url(), "GET", "/oauth2/cli?" + query, {"Cookie": jar, "Accept": HTML_ACCEPT})
    assert r.status == 302
    location = urllib.parse.urlsplit(r.header("Location") or "")
    assert (location.scheme, location.netloc, location.path) == ("http", "127.0.0.1:8123", "/callback")
    assert list(urllib.parse.parse_qs(location.query)) == ["code"]


def test_a_cli_code_needs_its_verifier_and_works_once(env: Env, page: Any) -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
    challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    jar = sign_in(env, page)

    def code() -> str:
        r = request(env.url(), "GET", "/oauth2/cli?" + urllib.parse.urlencode(
            {"port": "8123", "code_challenge": challenge, "code_challenge_method": "S256"}),
            {"Cookie": jar, "Accept": HTML_ACCEPT})
        return urllib.parse.parse_qs(urllib.parse.urlsplit(r.header("Location") or "").query)["code"][0]

    def redeem(c: str, v: str) -> Any:
        return request(env.url(), "POST", "/oauth2/token", {"Content-Type": "application/x-www-form-urlencoded",
                                                             "Accept": "application/json"},
                       urllib.parse.urlencode({"code": c, "code_verifier": v}).encode())

    wrong = redeem(code(), "x" * 43)
    assert wrong.status == 400 and wrong.json()["error"] == "invalid_grant"
    good = code()
    first = redeem(good, verifier)
    assert first.status == 200 and first.json()["token_type"] == "Bearer"
    again = redeem(good, verifier)
    assert again.status == 400 and again.json()["error"] == "invalid_grant"
    assert redeem("", verifier).json()["error"] == "invalid_request"
    bad_type = request(env.url(), "POST", "/oauth2/token", {"Content-Type": "application/json"}, b"{}")
    assert bad_type.status == 400
