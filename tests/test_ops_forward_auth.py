"""Forward-auth end to end: a REAL nginx (auth_request) and a REAL Caddy (forward_auth) in front
of an app, asking the REAL ``python -m gateway serve`` at ``/oauth2/auth``.

The configs are not written here: they are the code blocks of README.md's section
"## Forward-auth: nginx, Caddy, Traefik" (the ``yaml`` routes.yaml, the ``nginx`` server block
and the ``caddy`` site), with only the addresses replaced, so the README shows exactly what
is tested. Everything listens on 127.0.0.1 and free ports; nginx and Caddy run in the
foreground in a directory of the test's own and are stopped by PID.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

import pytest

from tests.support.e2e import request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import Daemon, ensure_caddy, ensure_nginx, stop_gateway, wait_port
from tests.support.tokens import bearer, gateway_env, hs_token
from tests.support.upstream import Upstream, free_port

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Forward-auth: nginx, Caddy, Traefik"
APP_HOST = "app.example.com"
CI_SECRET = "forward-auth-test-secret-0123456789abcdef"
README_GATEWAY = "127.0.0.1:8080"
README_APP = "127.0.0.1:3000"


def readme_blocks() -> dict:
    """The fenced code blocks of the forward-auth section of README.md, by language."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks: dict = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```$", text[start:end], flags=re.S | re.M):
        blocks.setdefault(lang, []).append(body)
    return blocks


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is no longer in the README snippet"
    return text.replace(old, new)


token = functools.partial(hs_token, iss="ci-runner", secret=CI_SECRET, email_domain="example.com",
                          groups=["dev", "ops"])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app():
    upstream = Upstream("app").start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(app):
    routes = readme_blocks()["yaml"][0]
    assert "routes:" in routes and "tokens:" in routes
    config = replace_once(routes, f"http://{README_APP}", app.url)
    gw = GatewayProcess(config, env=gateway_env(None, CI_JWT_SECRET=CI_SECRET)).start()
    wait_ready(gw.admin_url)
    yield gw
    stop_gateway(gw)


def gateway_hostport(gw: GatewayProcess) -> str:
    return gw.url.split("://", 1)[1]


NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server}
}}
"""


@pytest.fixture(scope="module")
def nginx(gateway, app, tmp_path_factory):
    binary = ensure_nginx()
    prefix = str(tmp_path_factory.mktemp("nginx"))
    port = free_port()
    server = readme_blocks()["nginx"][0]
    server = replace_once(server, "listen 80;", f"listen 127.0.0.1:{port};")
    server = replace_once(server, f"http://{README_GATEWAY}", f"http://{gateway_hostport(gateway)}")
    server = replace_once(server, f"http://{README_APP}", app.url)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(NGINX_MAIN.format(prefix=prefix, server=server))
    errlog = os.path.join(prefix, "error.log")
    check = subprocess.run([binary, "-t", "-q", "-p", prefix, "-e", errlog, "-c", conf],
                           capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stderr
    daemon = Daemon([binary, "-p", prefix, "-e", errlog, "-c", conf], cwd=prefix,
                    log_path=os.path.join(prefix, "stderr.log"))
    try:
        assert wait_port(port, 15, daemon.proc), daemon.log()
        yield f"http://127.0.0.1:{port}"
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def caddy(gateway, app, tmp_path_factory):
    binary = ensure_caddy()
    home = str(tmp_path_factory.mktemp("caddy"))
    port = free_port()
    site = readme_blocks()["caddy"][0]
    site = replace_once(site, f"{APP_HOST} {{", f"http://{APP_HOST}:{port} {{\n\tbind 127.0.0.1")
    site = replace_once(site, f"forward_auth {README_GATEWAY}", f"forward_auth {gateway_hostport(gateway)}")
    site = replace_once(site, f"reverse_proxy {README_APP}", f"reverse_proxy {app.url.split('://', 1)[1]}")
    caddyfile = os.path.join(home, "Caddyfile")
    with open(caddyfile, "w") as fh:
        fh.write("{\n\tadmin off\n\tauto_https off\n}\n\n" + site)
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"),
               XDG_DATA_HOME=os.path.join(home, "data"))
    daemon = Daemon([binary, "run", "--config", caddyfile, "--adapter", "caddyfile"], cwd=home,
                    log_path=os.path.join(home, "caddy.log"), env=env)
    try:
        assert wait_port(port, 15, daemon.proc), daemon.log()
        yield f"http://127.0.0.1:{port}"
    finally:
        daemon.stop()


@pytest.fixture(params=["nginx", "caddy"])
def front(request):
    return request.param, request.getfixturevalue(request.param)


# identity headers as the app receives them, per front proxy (what the README snippet copies)
USER_HEADER = {"nginx": "X-Forwarded-User", "caddy": "X-Auth-Request-User"}
EMAIL_HEADER = {"nginx": "X-Forwarded-Email", "caddy": "X-Auth-Request-Email"}
GROUPS_HEADER = {"nginx": "X-Forwarded-Groups", "caddy": "X-Auth-Request-Groups"}
SPOOFABLE = ("X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups",
             "X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups")


def call(base: str, path: str = "/", method: str = "GET", headers=None):
    given = dict(headers or {})
    items = [("Host", given.pop("Host", APP_HOST))] + list(given.items())
    return request(base, method, path, headers=items, timeout=10)


def app_headers(body: bytes) -> dict:
    import json

    return {k.lower(): v for k, v in json.loads(body)["headers"].items()}


# --------------------------------------------------------------------------- tests


def test_no_token_is_401_and_the_app_is_not_called(front, app):
    _, base = front
    before = app.state["requests"]
    resp = call(base, "/dashboard")
    assert resp.status == 401
    assert app.state["requests"] == before


def test_bad_token_is_401(front, app):
    _, base = front
    before = app.state["requests"]
    for bad in (token(secret="another-secret-that-is-long-enough-0123456789"), "not.a.jwt",
                token(exp=1)):
        resp = call(base, "/dashboard", headers=bearer(bad))
        assert resp.status == 401, bad
    assert app.state["requests"] == before


def test_good_token_reaches_the_app_with_the_identity(front, app):
    name, base = front
    before = app.state["requests"]
    resp = call(base, "/dashboard?x=1", headers=bearer(token('alice')))
    assert resp.status == 200, resp.body
    assert app.state["requests"] == before + 1  # from the proxy only: the gateway just answered the check
    seen = app_headers(resp.body)
    assert seen[USER_HEADER[name].lower()] == "alice"
    assert seen[EMAIL_HEADER[name].lower()] == "alice@example.com"
    assert seen[GROUPS_HEADER[name].lower()] == "dev,ops"
    assert resp.json()["uri"] == "/dashboard?x=1"


def test_token_failing_the_allow_rule_is_403(front, app):
    _, base = front
    before = app.state["requests"]
    resp = call(base, "/dashboard", headers=bearer(token('bob')))
    assert resp.status == 403
    assert app.state["requests"] == before


def test_the_method_reaches_the_gateway(front, app):
    """The rule allows alice GET/HEAD only: a POST proves X-Forwarded-Method got through."""
    _, base = front
    before = app.state["requests"]
    resp = call(base, "/dashboard", method="POST", headers={**bearer(token('alice')),
                                                            "Content-Length": "0"})
    assert resp.status == 403
    assert app.state["requests"] == before


def test_public_route_needs_no_token(front, app):
    name, base = front
    resp = call(base, "/healthz")
    assert resp.status == 200
    assert resp.json()["path"] == "/healthz"
    seen = app_headers(resp.body)
    for header in (USER_HEADER[name], EMAIL_HEADER[name], GROUPS_HEADER[name]):
        assert header.lower() not in seen, (header, seen.get(header.lower()))


def test_claims_the_token_lacks_are_not_invented(front, app):
    """A token without email or groups: those headers are absent at the app (Caddy < 2.9 would
    otherwise send the placeholder text itself)."""
    name, base = front
    bare = token("alice", email=None, groups=None)
    resp = call(base, "/dashboard", headers=bearer(bare))
    assert resp.status == 200
    seen = app_headers(resp.body)
    assert seen[USER_HEADER[name].lower()] == "alice"
    assert EMAIL_HEADER[name].lower() not in seen
    assert GROUPS_HEADER[name].lower() not in seen


def test_client_identity_headers_never_reach_the_app(front, app):
    """The headers the app trusts (the ones the snippet sets) carry the gateway's answer only."""
    name, base = front
    trusted = [USER_HEADER[name].lower(), EMAIL_HEADER[name].lower(), GROUPS_HEADER[name].lower()]
    spoof = {h: "mallory" for h in SPOOFABLE}
    resp = call(base, "/healthz", headers=spoof)  # public: the gateway sends no identity
    assert resp.status == 200
    seen = app_headers(resp.body)
    assert all(h not in seen for h in trusted), seen
    resp = call(base, "/dashboard", headers=dict(spoof, **bearer(token('alice'))))
    assert resp.status == 200
    seen = app_headers(resp.body)
    assert [seen.get(h) for h in trusted] == ["alice", "alice@example.com", "dev,ops"]


@pytest.mark.parametrize("path", ["/healthz/../dashboard", "/healthz/%2e%2e/dashboard", "/healthz/..%2fdashboard"])
def test_public_route_is_no_way_around_the_check(front, app, path):
    _, base = front
    before = app.state["requests"]
    resp = call(base, path)
    assert resp.status in (400, 401, 403, 404), (path, resp.status)
    if resp.status != 404:
        assert app.state["requests"] == before


def test_unknown_host_is_403_and_x_original_url_is_understood(gateway, nginx):
    """The contract of /oauth2/auth as the README table states it, asked directly and via nginx."""
    assert call(nginx, "/dashboard", headers={"Host": "other.example.com"}).status == 403
    good = bearer(token('alice'))
    direct = request(gateway.url, "GET", "/oauth2/auth",
                     headers=dict(good, **{"X-Original-URL": f"http://{APP_HOST}/dashboard"}))
    assert direct.status == 200 and direct.header("X-Auth-Request-User") == "alice"
    assert direct.header("X-Auth-Request-Email") == "alice@example.com"
    assert direct.header("X-Auth-Request-Groups") == "dev,ops"
    public = request(gateway.url, "GET", "/oauth2/auth", headers={"X-Original-URL": f"http://{APP_HOST}/healthz"})
    assert public.status == 200 and public.header("X-Auth-Request-User") is None
    other = request(gateway.url, "GET", "/oauth2/auth",
                    headers=dict(good, **{"X-Forwarded-Host": "other.example.com", "X-Forwarded-Uri": "/"}))
    assert other.status == 403


def test_gateway_logged_the_forward_auth_checks(gateway, nginx):
    entries = [e for e in gateway.access_log() if e.get("path") == "/dashboard" and e.get("route") == "app"]
    statuses = {e["status"] for e in entries}
    assert {200, 401, 403} <= statuses
    assert all("Bearer" not in line and "eyJ" not in line for line in gateway.stdout_lines)
