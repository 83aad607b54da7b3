"""``gateway doctor`` against real peers on loopback: one healthy setup, then one flaw at a time.

Every peer is a real process or server: oidc-provider 9.13.3 (tests/idp), a small discovery
server with one flaw per issuer (tests/support/doctor_provider.py: trailing-slash issuer, no
PKCE S256, a Date header 2 minutes or 20 s ahead), the echo upstream, redis-server, and for
the "in use" case a running ``gateway serve``. ``python -m gateway doctor -c FILE`` runs as a
subprocess; each case checks its stdout lines and exit status and must finish within 10 s.
"""

from __future__ import annotations

import copy
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.doctor_provider import DoctorProvider, start_doctor_provider
from tests.support.gateway_proc import GatewayProcess
from tests.support.oidc_provider import OIDCProvider, client, start_oidc_provider
from tests.support.redis_server import RedisServer, redis_available, start_redis
from tests.support.upstream import Upstream, refused_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)

SESSION_SECRET = "doctor-session-" + secrets.token_urlsafe(32)
CLIENT_SECRET = "doctor-client-" + secrets.token_urlsafe(24)
CI_SECRET = "doctor-ci-" + secrets.token_urlsafe(32)
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
CASE_LIMIT = 10.0


def _free_port() -> int:
    """A free port below the kernel's ephemeral range: the peers started later with port 0 (the provider,
    the upstream, Redis) can never be given it, so "free" stays true for the whole module."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) if os.path.exists(
        "/proc/sys/net/ipv4/ip_local_port_range") else 32768
    for _ in range(200):
        port = random.randint(max(1025, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


GW_PORT = _free_port()  # only written into the configs: nothing listens there unless a test says so
ADMIN_PORT = _free_port()
CALLBACK = f"http://127.0.0.1:{GW_PORT}/oauth2/callback"
HTTPS_CALLBACK = f"https://127.0.0.1:{GW_PORT}/oauth2/callback"


@dataclass
class Result:
    status: int
    lines: list[str]
    stderr: str
    seconds: float

    def with_level(self, level: str) -> list[str]:
        return [line for line in self.lines if line.startswith(level.ljust(4) + " ")]

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines)

    def show(self) -> str:
        return "\n".join(self.lines) + ("\n--- stderr:\n" + self.stderr if self.stderr else "")


def run_doctor(tmp_path: Path, config: dict) -> Result:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gateway", "doctor", "-c", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=CASE_LIMIT + 5)
    seconds = time.monotonic() - started
    result = Result(proc.returncode, proc.stdout.splitlines(), proc.stderr, seconds)
    assert seconds < CASE_LIMIT, f"doctor took {seconds:.1f} s:\n{result.show()}"
    for line in result.lines:
        assert line[:5] in ("ok   ", "warn ", "FAIL "), f"not a check line: {line!r}"
    assert SESSION_SECRET not in proc.stdout + proc.stderr and CLIENT_SECRET not in proc.stdout + proc.stderr
    return result


# -- peers ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: no local OpenID provider")
    clients = [
        client("gw", CLIENT_SECRET, [CALLBACK, HTTPS_CALLBACK]),
        client("gw-other", CLIENT_SECRET, ["http://127.0.0.1:1/somewhere-else/callback"]),
    ]
    with start_oidc_provider(tmp_path_factory.mktemp("idp"), clients=clients) as provider:
        yield provider


@pytest.fixture(scope="module")
def fake() -> Iterator[DoctorProvider]:
    with start_doctor_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream("doctor").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


# -- configs ----------------------------------------------------------------------------------------------


def healthy(idp: OIDCProvider, upstream: Upstream, redis: RedisServer) -> dict:
    return {
        "server": {"listen": f"127.0.0.1:{GW_PORT}", "public_url": f"http://127.0.0.1:{GW_PORT}",
                   "admin_listen": f"127.0.0.1:{ADMIN_PORT}"},
        "session": {"secret": SESSION_SECRET, "cookie_name": "_gw", "store": redis.url},
        "providers": {"corp": {"issuer": idp.issuer, "client_id": "gw", "client_secret": CLIENT_SECRET,
                               "scopes": ["openid", "email", "profile"]}},
        "tokens": [
            {"issuer": idp.issuer, "audience": "any", "algorithms": ["RS256"]},
            {"issuer": "ci-runner", "secret": CI_SECRET, "algorithms": ["HS256"], "audience": "any"},
        ],
        "signing": {"key": SIGNING_KEY},
        "routes": [
            {"name": "app", "path": "/app", "upstream": upstream.url, "auth": "login", "providers": ["corp"]},
            {"name": "api", "path": "/api", "upstream": upstream.url, "auth": "token"},
        ],
    }


def with_fake(fake: DoctorProvider, name: str, upstream: Upstream) -> dict:
    """One provider from the small discovery server (issuer ``name``), cookie sessions, nothing else live."""
    return {
        "server": {"listen": f"127.0.0.1:{GW_PORT}", "public_url": f"http://127.0.0.1:{GW_PORT}",
                   "admin_listen": "off"},
        "session": {"secret": SESSION_SECRET, "cookie_name": "_gw"},
        "providers": {"corp": {"issuer": fake.issuer(name), "client_id": "gw", "client_secret": CLIENT_SECRET}},
        "signing": {"key": SIGNING_KEY},
        "routes": [{"name": "app", "path": "/", "upstream": upstream.url, "auth": "login"}],
    }


# -- the healthy setup -------------------------------------------------------------------------------------


def test_healthy_setup_is_all_ok(tmp_path: Path, idp: OIDCProvider, upstream: Upstream, redis: RedisServer) -> None:
    result = run_doctor(tmp_path, healthy(idp, upstream, redis))
    assert result.status == 0, result.show()
    assert not result.with_level("warn") and not result.with_level("FAIL"), result.show()
    expected = [
        "ok   config: ",
        f"ok   listen 127.0.0.1:{GW_PORT}: free",
        f"ok   admin_listen 127.0.0.1:{ADMIN_PORT}: free",
        f"ok   provider corp: discovery {idp.issuer}/.well-known/openid-configuration, issuer {idp.issuer}",
        "ok   provider corp: PKCE S256 advertised",
        f"ok   provider corp: authorization request accepted for redirect_uri {CALLBACK} (HTTP 303 to a sign-in page",
        "ok   provider corp: ID token keys: 1 key from ",
        "ok   provider corp: token endpoint ",
        "ok   provider corp: clock skew ",
        f"ok   token issuer {idp.issuer}: 1 key for RS256 from discovery's jwks_uri",
        "ok   token issuer ci-runner: HMAC secret",
        f"ok   upstream {upstream.url} (routes app, api): answers HTTP 200",
        f"ok   session store {redis.url}: PING answered",
        "ok   cookies: not Secure",
        "ok   signing: signing.key ES256, kid ",
    ]
    for prefix in expected:
        assert result.has(prefix), f"no line starting {prefix!r}:\n{result.show()}"
    # in the order a person debugs
    order = ["config", "listen", "admin_listen", "provider", "token issuer", "upstream", "session store", "cookies",
             "signing"]
    firsts = [next(i for i, line in enumerate(result.lines) if line[5:].startswith(what)) for what in order]
    assert firsts == sorted(firsts), result.show()
    # the authorization request was sent, never followed into the login
    assert not any("/interaction/" in line and "FAIL" in line for line in result.lines)


# -- one flaw at a time ---------------------------------------------------------------------------------------


def test_provider_down_fails_fast(tmp_path: Path, idp: OIDCProvider, upstream: Upstream, redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    dead = f"http://127.0.0.1:{refused_port()}"
    config["providers"]["corp"]["issuer"] = dead
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert result.has(f"FAIL provider corp: fetching discovery document from {dead}/.well-known/openid-configuration "
                      "failed"), result.show()
    assert result.seconds < 5, result.show()
    assert result.has(f"ok   token issuer {idp.issuer}")  # the other checks still ran


def test_issuer_mismatch(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    result = run_doctor(tmp_path, with_fake(fake, "slash", upstream))
    assert result.status == 1, result.show()
    issuer = fake.issuer("slash")
    assert result.has(f"FAIL provider corp: issuer mismatch: discovery says '{issuer}/', config says '{issuer}'"), \
        result.show()


def test_redirect_uri_not_registered(tmp_path: Path, idp: OIDCProvider, upstream: Upstream,
                                     redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    config["providers"]["corp"]["client_id"] = "gw-other"
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert result.has(f"FAIL provider corp: provider refuses redirect_uri {CALLBACK}: register it"), result.show()
    assert len(result.with_level("FAIL")) == 1, result.show()


def test_upstream_refusing(tmp_path: Path, idp: OIDCProvider, upstream: Upstream, redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    port = refused_port()
    config["routes"][1]["upstream"] = f"http://127.0.0.1:{port}"
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert result.has(f"FAIL upstream http://127.0.0.1:{port} (route api): connection refused"), result.show()
    assert result.has(f"ok   upstream {upstream.url} (route app): answers HTTP 200"), result.show()


def test_redis_down(tmp_path: Path, idp: OIDCProvider, upstream: Upstream, redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    url = f"redis://127.0.0.1:{refused_port()}/0"
    config["session"]["store"] = url
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert result.has(f"FAIL session store {url}: PING failed"), result.show()


def test_https_public_url_without_tls_is_a_warning(tmp_path: Path, idp: OIDCProvider, upstream: Upstream,
                                                   redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    config["server"]["public_url"] = f"https://127.0.0.1:{GW_PORT}"
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()  # it works behind something that terminates TLS: a warn, not a FAIL
    assert result.has(f"warn cookies: public_url is https://127.0.0.1:{GW_PORT}, so cookies are Secure"), result.show()
    assert any("nothing terminates TLS in front" in line for line in result.with_level("warn")), result.show()
    assert result.has(f"ok   provider corp: authorization request accepted for redirect_uri {HTTPS_CALLBACK}")
    # the same behind a trusted proxy: fine
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    result = run_doctor(tmp_path, config)
    assert result.status == 0 and not result.with_level("warn"), result.show()
    assert result.has("ok   cookies: Secure (public_url https://"), result.show()


@pytest.mark.parametrize("name, level, status", [("skew120", "FAIL", 1), ("skew20", "warn", 0)])
def test_clock_skew(tmp_path: Path, fake: DoctorProvider, upstream: Upstream, name: str, level: str,
                    status: int) -> None:
    result = run_doctor(tmp_path, with_fake(fake, name, upstream))
    assert result.status == status, result.show()
    seconds = name[len("skew"):]
    skew = [line for line in result.lines if "clock skew" in line]
    assert len(skew) == 1 and skew[0].startswith(f"{level.ljust(4)} provider corp: clock skew "), result.show()
    assert abs(int(skew[0].split("clock skew ")[1].split(" s")[0]) - int(seconds)) <= 2, result.show()
    assert "ahead of this machine's" in skew[0]
    assert len(result.with_level("FAIL")) == (1 if level == "FAIL" else 0), result.show()
    assert not [line for line in result.with_level("warn") if line not in skew], result.show()


def test_pkce_not_advertised(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    result = run_doctor(tmp_path, with_fake(fake, "nopkce", upstream))
    assert result.status == 1, result.show()
    assert result.has('FAIL provider corp: PKCE S256 not advertised (code_challenge_methods_supported: ["plain"])'), \
        result.show()


def test_fake_provider_without_flaws_is_all_ok(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    result = run_doctor(tmp_path, with_fake(fake, "good", upstream))
    assert result.status == 0, result.show()
    assert not result.with_level("warn") and not result.with_level("FAIL"), result.show()
    assert result.has("ok   provider corp: authorization request accepted for redirect_uri "
                      f"{CALLBACK} (HTTP 200: a sign-in page)"), result.show()


def test_plain_oauth2_provider_endpoints(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    config = with_fake(fake, "good", upstream)
    base = fake.issuer("good")
    config["providers"]["corp"] = {"type": "oauth2", "client_id": "gw", "client_secret": CLIENT_SECRET,
                                   "authorization_endpoint": base + "/authorize", "token_endpoint": base + "/token",
                                   "userinfo_endpoint": base + "/userinfo", "claims": {"sub": "id"},
                                   "scopes": ["profile"]}
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()
    assert result.has(f"ok   provider corp: authorization request accepted for redirect_uri {CALLBACK}"), result.show()
    assert result.has(f"ok   provider corp: token endpoint {base}/token reachable (HTTP 400)"), result.show()
    assert result.has(f"ok   provider corp: userinfo endpoint {base}/userinfo reachable (HTTP 404)"), result.show()
    # a dead userinfo endpoint: sign-ins cannot complete
    config["providers"]["corp"]["userinfo_endpoint"] = f"http://127.0.0.1:{refused_port()}/me"
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert any(line.startswith("FAIL provider corp: userinfo endpoint") for line in result.lines), result.show()


def test_running_gateway_makes_the_listener_in_use(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    config = with_fake(fake, "good", upstream)
    gateway = GatewayProcess(yaml.safe_dump(config, sort_keys=False), listen=f"127.0.0.1:{GW_PORT}")
    gateway.start()
    try:
        result = run_doctor(tmp_path, config)
    finally:
        gateway.stop()
    assert result.status == 0, result.show()
    assert result.has(f"warn listen 127.0.0.1:{GW_PORT}: in use (is the gateway running?)"), result.show()


def test_config_errors_and_warnings(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    config = with_fake(fake, "good", upstream)
    broken = copy.deepcopy(config)
    broken["routes"][0]["upstrem"] = "http://127.0.0.1:1"
    result = run_doctor(tmp_path, broken)
    assert result.status == 1, result.show()
    assert result.lines[0].startswith("FAIL config: ") and "upstrem" in result.lines[0], result.show()
    assert all(line.startswith("FAIL config: ") for line in result.lines), result.show()  # nothing else is checked
    # a setup that loads but cannot work as meant: the config's own warning, as a warn line
    config["routes"].append({"name": "api", "path": "/api", "upstream": upstream.url, "auth": "token"})
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()
    assert any(line.startswith("warn config: ") and "no tokens: issuer" in line for line in result.lines), \
        result.show()


def test_signing_key_unset_while_login_signs_is_a_warning(tmp_path: Path, fake: DoctorProvider,
                                                         upstream: Upstream) -> None:
    config = with_fake(fake, "good", upstream)
    del config["signing"]
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()
    assert result.has("warn signing: signing.key is not set"), result.show()



# -- TLS: an https upstream, and server.tls against public_url ---------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """An HTTPS server on 127.0.0.1 (a thread of this process) with a self-signed certificate."""
    import http.server
    import ssl
    import threading

    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert, key
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_upstream_tls(tmp_path: Path, fake: DoctorProvider, upstream: Upstream,
                            tls_upstream: tuple[str, Path, Path]) -> None:
    url, cert, _ = tls_upstream
    config = with_fake(fake, "good", upstream)
    config["routes"].append({"name": "secure", "path": "/secure", "upstream": url, "auth": "login"})
    result = run_doctor(tmp_path, config)  # the system's trust store does not know this certificate
    assert result.status == 1, result.show()
    assert result.has(f"FAIL upstream {url} (route secure): TLS: its certificate does not verify"), result.show()
    config["routes"][1]["tls"] = {"ca": str(cert)}
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()
    assert result.has(f"ok   upstream {url} (route secure): answers HTTP 204 in "), result.show()
    config["routes"][1]["tls"] = {"ca": str(cert), "server_name": "other.test"}
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    line = next(line for line in result.lines if line.startswith(f"FAIL upstream {url}"))
    assert "does not verify" in line and "other.test" in line, result.show()


def test_server_tls_with_http_public_url(tmp_path: Path, fake: DoctorProvider, upstream: Upstream) -> None:
    cert, key = _self_signed(tmp_path)
    config = with_fake(fake, "good", upstream)
    config["server"]["tls"] = {"cert": str(cert), "key": str(key)}
    del config["server"]["public_url"]
    result = run_doctor(tmp_path, config)  # public_url defaults to https with server.tls: fine
    assert result.status == 0, result.show()
    assert result.has("ok   cookies: Secure (public_url https://"), result.show()
    config["server"]["public_url"] = f"http://127.0.0.1:{GW_PORT}"  # written out as http://: logins break
    result = run_doctor(tmp_path, config)
    assert result.status == 1, result.show()
    assert result.has(f"FAIL cookies: server.tls serves HTTPS but public_url is http://127.0.0.1:{GW_PORT}"), \
        result.show()
    del config["providers"], config["signing"]  # nothing logs in: only the cookies' Secure flag is off
    config["routes"][0]["auth"] = "public"
    result = run_doctor(tmp_path, config)
    assert result.status == 0, result.show()
    assert result.has("warn cookies: server.tls serves HTTPS but public_url is http://"), result.show()


# -- how an authorization endpoint's first answer is judged (as various providers answer) ----------------------


@pytest.mark.parametrize("code, location, body, level, says", [
    (302, "/u/login?state=abc", b"", "ok", "to a sign-in page"),  # Auth0, Okta: a login page of their own
    (200, None, b"<html><form action='/login?redirect_uri=x'>Sign in</form></html>", "ok", "a sign-in page"),
    (302, "https://tenant.example/error?error=invalid_request&error_description=Callback+URL+mismatch.",
     b"", "FAIL", "provider refuses redirect_uri"),
    (302, "{cb}?error=invalid_request&error_description=redirect_uri+is+not+allowed&state=x", b"", "FAIL",
     "provider refuses redirect_uri"),
    (302, "{cb}?error=invalid_request&error_description=code_challenge+required&state=x", b"", "FAIL",
     "PKCE S256 parameters"),
    (302, "{cb}?error=invalid_scope&state=x", b"", "FAIL", "refuses scopes"),
    (302, "{cb}?code=abc&state=x", b"", "ok", "redirects straight back"),
    (400, None, b"<h1>Error 400: redirect_uri_mismatch</h1><p>The redirect URI in the request does not match</p>",
     "FAIL", "provider refuses redirect_uri"),  # Google
    (400, None, b'{"error":"invalid_request","error_description":"Invalid parameter: redirect_uri"}', "FAIL",
     "provider refuses redirect_uri"),  # Keycloak
    (200, None, b"<p>AADSTS50011: The redirect URI specified in the request does not match</p>", "FAIL",
     "provider refuses redirect_uri"),  # Microsoft Entra ID shows its error page with 200
    (400, None, b"<p>error: invalid_client</p><p>client is invalid</p>", "FAIL", "does not know client_id gw"),
    (502, None, b"bad gateway", "FAIL", "answers HTTP 502"),
])
def test_authorization_answers(code: int, location: Any, body: bytes, level: str, says: str) -> None:
    from tornado.httpclient import HTTPRequest, HTTPResponse
    from tornado.httputil import HTTPHeaders

    from gateway.config import ProviderConfig
    from gateway.doctor import _judge_authorization

    url = "https://idp.example/authorize?client_id=gw&redirect_uri=x"
    headers = HTTPHeaders()
    if location:
        headers["Location"] = location.replace("{cb}", CALLBACK)
    response = HTTPResponse(HTTPRequest(url), code, headers=headers, buffer=__import__("io").BytesIO(body))
    provider = ProviderConfig(name="corp", issuer="https://idp.example", client_id="gw")
    finding = _judge_authorization("provider corp", provider, CALLBACK, "https://idp.example/authorize", url, response)
    assert finding.level == level and says in finding.text, finding.line()


def test_stuck_redis_is_a_fail_within_the_timeout(tmp_path: Path, idp: OIDCProvider, upstream: Upstream,
                                                  redis: RedisServer) -> None:
    config = healthy(idp, upstream, redis)
    redis.pause()  # connections are accepted, nothing answers
    try:
        result = run_doctor(tmp_path, config)
    finally:
        redis.resume()
    assert result.status == 1, result.show()
    assert result.has(f"FAIL session store {redis.url}: "), result.show()
    assert result.seconds < 8, result.show()
    assert "no answer to PING within 3 s" in next(line for line in result.lines if "session store" in line)
