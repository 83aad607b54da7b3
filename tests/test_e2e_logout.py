"""End to end: every way a session ends closes every door, on every instance and every worker.

Real processes on loopback: oidc-provider with back-channel logout (its client registers
``<gateway>/oauth2/backchannel_logout`` and requires ``sid``), real ``redis-server``, headless
Chromium, and gateways with ``server.workers: 2``:

* A and B: one gateway (public_url A), two instances sharing sessions in Redis;
* C: the cookie store, two workers, sessions of 6 s (for the expiry case).

Each instance's routes: ``/app`` (login, WebSocket echo upstream too), ``/api`` (token).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
from tests.support.e2e import request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import (CI_JWT_SECRET, HTML_ACCEPT, cookie_header, free_port, gateway_yaml, jwt_claims,
                                     provider_entry, provider_sign_in, wait_url)
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider, user
from tests.support.redis_server import redis_available, start_redis
from tests.support import tokens
from tests.support.ws_echo import WebSocketThread

LOOPBACK_ONLY_ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
EVENT = "http://schemas.openid.net/event/backchannel-logout"
SECRET = "logout-client-secret-0123456789ab"
SESSION_SECRET = "logout-session-secret-0123456789abcdefghijkl"
COOKIE = "_gwl"
SHORT_LIFETIME = 6
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider"),
    pytest.mark.timeout(120),
]


@dataclass
class Env:
    idp: OIDCProvider
    a: GatewayProcess
    b: GatewayProcess
    c: GatewayProcess
    ws: WebSocketThread
    ports: dict

    def url(self, which: str) -> str:
        return f"http://127.0.0.1:{self.ports[which]}"


def _gateway(port: int, public_port: int, idp: OIDCProvider, upstream: str, store: str, lifetime: str) -> GatewayProcess:
    routes = [
        {"name": "app", "path": "/app", "upstream": upstream, "auth": "login"},
        {"name": "api", "path": "/api", "upstream": upstream, "auth": "token"},
    ]
    provider = {**provider_entry(idp.issuer, "gw", SECRET), "backchannel_logout": True,
                "scopes": ["openid", "email", "profile", "offline_access"]}
    config = yaml.safe_load(gateway_yaml(port, providers={"corp": provider}, routes=routes, cookie_name=COOKIE,
                                         store=store, lifetime=lifetime))
    config["server"]["public_url"] = f"http://127.0.0.1:{public_port}"
    config["server"]["workers"] = 2
    config["server"]["admin_listen"] = "127.0.0.1:0"
    config["signing"] = {"key": SIGNING_KEY}  # the instances of one gateway share it
    gw = GatewayProcess(yaml.safe_dump(config, sort_keys=False), env=tokens.gateway_env(SESSION_SECRET, CI_JWT_SECRET=CI_JWT_SECRET),
                        listen=f"127.0.0.1:{port}", admin=True)
    gw.start()
    wait_ready(gw.admin_url, timeout=30)
    return gw


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not redis_available():
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    ports = {"a": free_port(), "b": free_port(), "c": free_port()}
    with WebSocketThread() as ws, start_redis(tmp_path_factory.mktemp("redis")) as redis:
        clients = [
            client("gw", SECRET, [f"http://127.0.0.1:{ports['a']}/oauth2/callback",
                                  f"http://127.0.0.1:{ports['c']}/oauth2/callback"],
                   post_logout_redirect_uris=[f"http://127.0.0.1:{ports['a']}/", f"http://127.0.0.1:{ports['c']}/"],
                   backchannel_logout_uri=f"http://127.0.0.1:{ports['a']}/oauth2/backchannel_logout",
                   backchannel_logout_session_required=True),
        ]
        with start_oidc_provider(tmp_path_factory.mktemp("idp"), clients=clients,
                                 users=[user("alice", "alice-pw", email="alice@example.test", groups=["users"]),
                                        user("bob", "bob-pw", email="bob@example.test")],
                                 extra_config={"backchannelLogout": True}) as idp:
            started = []
            try:
                started.append(_gateway(ports["a"], ports["a"], idp, ws.upstream_url, redis.url, "1h"))
                started.append(_gateway(ports["b"], ports["a"], idp, ws.upstream_url, redis.url, "1h"))
                started.append(_gateway(ports["c"], ports["c"], idp, ws.upstream_url, "cookie", f"{SHORT_LIFETIME}s"))
                yield Env(idp, *started, ws=ws, ports=ports)
            finally:
                for gw in started:
                    gw.stop()


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


def sign_in(env: Env, page: Any, which: str = "a", login: str = "alice") -> str:
    page.goto(env.url(which) + "/app/home")
    provider_sign_in(page, login, f"{login}-pw")
    wait_url(page, env.url(which) + "/app/home")
    return cookie_header(page.context, env.url(which))


def status(env: Env, which: str, jar: str, path: str = "/app/check") -> int:
    """A fresh connection each time, so the requests spread over both workers."""
    return request(env.url(which), "GET", path, {"Cookie": jar, "Accept": "application/json",
                                                 "Connection": "close"}).status


def all_refused(env: Env, which: str, jar: str, tries: int = 8) -> bool:
    return all(status(env, which, jar) == 401 for _ in range(tries))


def eventually(check: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def own_token(env: Env, which: str, jar: str) -> str:
    r = request(env.url(which), "GET", "/oauth2/token", {"Cookie": jar, "Accept": "application/json"})
    assert r.status == 200, r.body[:200]
    return r.json()["access_token"]


def bearer_status(env: Env, which: str, token: str) -> int:
    return request(env.url(which), "GET", "/api/x", {"Authorization": "Bearer " + token,
                                                     "Connection": "close"}).status


def ws_url(env: Env, which: str) -> str:
    return "ws" + env.url(which)[len("http"):] + "/app/ws"


def admin(gw: GatewayProcess, method: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(gw.admin_url + path, method=method, data=b"" if method == "POST" else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# --------------------------------------------------------------------------- the provider logs out


def test_a_logout_at_the_provider_closes_every_door_on_every_instance_and_worker(env: Env, page: Any) -> None:
    jar = sign_in(env, page)
    first = request(env.url("a"), "GET", "/app/check", {"Cookie": jar, "Accept": "application/json", "Connection": "close"})
    assert first.status == 200, first.body[:300]
    assert status(env, "a", jar) == 200 and status(env, "b", jar) == 200
    token = own_token(env, "a", jar)
    assert bearer_status(env, "b", token) == 200
    sockets = [env.ws.open(ws_url(env, which), {"Cookie": jar}) for which in ("a", "b", "a", "b")]
    assert all(s.echo("hello") == "hello" for s in sockets)

    # the person signs out at the provider itself (not through the gateway): it tells us by back channel
    page.goto(env.idp.issuer + "/session/end")
    page.wait_for_load_state("load")
    assert eventually(lambda: all_refused(env, "a", jar) and all_refused(env, "b", jar)), (
        "session ended everywhere", [l for l in env.a.stdout_lines if "backchannel" in l][-3:],
        env.idp.log_path.read_text()[-1500:])
    assert [s.close_code(timeout=3) for s in sockets] == [1008] * 4
    assert bearer_status(env, "a", token) == 401 and bearer_status(env, "b", token) == 401


# --------------------------------------------------------------------------- bad logout tokens


def _logout_claims(env: Env, **changes: Any) -> dict:
    now = int(time.time())
    claims = {"iss": env.idp.issuer, "aud": "gw", "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex,
              "sub": "alice", "sid": "some-provider-session", "events": {EVENT: {}}}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _post_logout(env: Env, token: Any) -> Any:
    body = urllib.parse.urlencode({"logout_token": token} if token is not None else {}).encode()
    return request(env.url("a"), "POST", "/oauth2/backchannel_logout",
                   {"Content-Type": "application/x-www-form-urlencoded"}, body)


BAD_TOKENS = {
    "bad signature": lambda env: env.idp.sign(_logout_claims(env))[:-6] + "AAAAAA",
    "wrong aud": lambda env: env.idp.sign(_logout_claims(env, aud="someone-else")),
    "wrong iss": lambda env: env.idp.sign(_logout_claims(env, iss=env.idp.issuer + "/other")),
    "nonce present": lambda env: env.idp.sign(_logout_claims(env, nonce="n-1")),
    "no events": lambda env: env.idp.sign(_logout_claims(env, events=None)),
    "wrong event": lambda env: env.idp.sign(_logout_claims(env, events={"urn:other": {}})),
    "neither sid nor sub": lambda env: env.idp.sign(_logout_claims(env, sid=None, sub=None)),
    "no jti": lambda env: env.idp.sign(_logout_claims(env, jti=None)),
    "iat an hour ago": lambda env: env.idp.sign(_logout_claims(env, iat=int(time.time()) - 3600)),
    "expired": lambda env: env.idp.sign(_logout_claims(env, exp=int(time.time()) - 300)),
    "alg none": lambda env: "eyJhbGciOiJub25lIn0." + __import__("base64").urlsafe_b64encode(
        json.dumps(_logout_claims(env)).encode()).decode().rstrip("=") + ".",
    "not a JWT": lambda env: "garbage",
    "missing": lambda env: None,
}


def test_every_invalid_logout_token_is_400_and_ends_nothing(env: Env, page: Any) -> None:
    jar = sign_in(env, page, login="bob")
    bob_sid = None
    for name, make in BAD_TOKENS.items():
        token = make(env)
        if isinstance(token, str) and token.count(".") == 2 and name not in ("alg none", "bad signature"):
            claims = jwt_claims(token)
            if claims.get("sub") == "alice":  # aim every bad token at a real session: bob's
                claims = {**claims, "sub": "bob"}
                token = env.idp.sign({k: v for k, v in claims.items() if k != "sid"})
        r = _post_logout(env, token)
        assert r.status == 400, (name, r.status, r.body[:200])
        assert r.header("Cache-Control") == "no-store" and r.json()["error"], name
    assert status(env, "a", jar) == 200, "no bad token ended bob's session"
    # a valid one works once; the same jti again is a replay
    valid = env.idp.sign(_logout_claims(env, sub="carol", sid=None))
    assert _post_logout(env, valid).status == 200
    replayed = _post_logout(env, valid)
    assert replayed.status == 400 and "used before" in replayed.json()["error_description"]
    del bob_sid


# --------------------------------------------------------------------------- the gateway's own sign-out


def test_sign_out_revokes_the_refresh_token_at_the_provider(env: Env, page: Any) -> None:
    jar = sign_in(env, page)
    before = env.idp.stats()["revocation_requests"]
    r = request(env.url("a"), "GET", "/oauth2/sign_out?rd=/app/", {"Cookie": jar, "Accept": HTML_ACCEPT})
    assert r.status in (302, 303)
    assert eventually(lambda: env.idp.stats()["revocation_requests"] == before + 1)
    assert all_refused(env, "b", jar)


def test_with_the_cookie_store_a_signed_out_cookie_is_refused_by_every_worker(env: Env, page: Any) -> None:
    jar = sign_in(env, page, "c")
    oks = [status(env, "c", jar) for _ in range(6)]
    assert oks == [200] * 6
    socket = env.ws.open(ws_url(env, "c"), {"Cookie": jar})
    r = request(env.url("c"), "GET", "/oauth2/sign_out?rd=/app/", {"Cookie": jar, "Accept": HTML_ACCEPT})
    assert r.status in (302, 303)
    assert eventually(lambda: all_refused(env, "c", jar, tries=10)), "the replayed cookie works nowhere"
    assert socket.close_code(timeout=3) == 1008


def test_the_end_of_a_session_closes_its_websocket(env: Env, page: Any) -> None:
    jar = sign_in(env, page, "c")
    socket = env.ws.open(ws_url(env, "c"), {"Cookie": jar})
    assert socket.echo("still here") == "still here"
    assert socket.close_code(timeout=SHORT_LIFETIME + 3) == 1008  # at the session's end, not later


# --------------------------------------------------------------------------- the admin


def test_admin_lists_and_revokes_a_users_sessions(env: Env, page: Any) -> None:
    jar = sign_in(env, page)
    code, listed = admin(env.a, "GET", "/sessions?sub=alice")
    assert code == 200 and listed["sessions"], listed
    entry = listed["sessions"][0]
    assert set(entry) == {"id", "sub", "provider", "created", "expires"} and entry["provider"] == "corp"
    assert entry["created"].endswith("Z") and jar.split("=", 1)[1][:20] not in json.dumps(listed)
    code, revoked = admin(env.b, "POST", "/sessions/revoke?sub=alice")  # any instance can end any session
    assert code == 200 and revoked["revoked"] >= 1
    assert eventually(lambda: all_refused(env, "a", jar) and all_refused(env, "b", jar))
    assert admin(env.a, "GET", "/sessions?sub=alice")[1]["sessions"] == []
    assert admin(env.a, "POST", "/sessions/revoke")[0] == 400
    code, body = admin(env.c, "GET", "/sessions?sub=alice")
    assert code == 501 and "redis" in body["error_description"]
    proxy = request(env.url("a"), "GET", "/sessions?sub=alice", {"Accept": "application/json"})
    assert proxy.status == 404, "never on the proxy port"
