"""The gateway serving HTTPS itself (server.tls): TLS 1.2+, HSTS, a new certificate on reload without
dropping connections, and Chromium signing in over https with Secure cookies.

Certificates come from a private CA made by the test (tests/support/certs.py).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium
from tests.support.certs import CA
from tests.support.gateway_proc import GatewayProcess
from tests.support.login_e2e import free_port, provider_entry, provider_sign_in
from tests.support.oidc_provider import client, start_oidc_provider, user
from tests.support.tokens import gateway_env
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(90)


def _client_context(ca_file: Path, **kw: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    for name, value in kw.items():
        setattr(context, name, value)
    return context


def _get(port: int, context: ssl.SSLContext, path: str = "/open/x", conn: Any = None) -> tuple[Any, Any]:
    conn = conn or http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return conn, resp


def _serial(conn: http.client.HTTPSConnection) -> int:
    from cryptography import x509
    der = conn.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture()
def tls_gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, int, CA, Path, Path]]:
    ca = CA()
    ca_file = ca.write(tmp_path / "ca.pem")
    cert_file, key_file = ca.issue("127.0.0.1", "localhost").write(tmp_path, "server")
    up = Upstream("app").start()
    port = free_port()
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "tls": {"cert": str(cert_file), "key": str(key_file)},
                   "hsts": "180d"},
        "routes": [{"name": "open", "path": "/open", "upstream": up.url, "auth": "public"}],
    }
    gw = GatewayProcess(yaml.safe_dump(config), env=gateway_env(), listen=f"127.0.0.1:{port}")
    try:
        gw.start()
        assert gw.url == f"https://127.0.0.1:{port}"
        yield gw, port, ca, ca_file, tmp_path
    finally:
        gw.stop()
        up.stop()


def test_https_with_tls_1_2_at_least_and_hsts(tls_gateway: Any) -> None:
    gw, port, ca, ca_file, _ = tls_gateway
    conn, resp = _get(port, _client_context(ca_file))
    assert resp.status == 200
    assert resp.getheader("Strict-Transport-Security") == f"max-age={180 * 86400}"
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _client_context(ca_file, minimum_version=ssl.TLSVersion.TLSv1,
                              maximum_version=ssl.TLSVersion.TLSv1_1)
        try:
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(port, old)
    # plain HTTP on the TLS port is no answer at all, and the process lives on
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain.request("GET", "/open/x")
        plain.getresponse().read()
    assert _get(port, _client_context(ca_file))[1].status == 200
    assert gw.proc.poll() is None


def test_a_new_certificate_on_reload_without_dropping_connections(tls_gateway: Any) -> None:
    gw, port, ca, ca_file, tmp = tls_gateway
    context = _client_context(ca_file)
    kept, resp = _get(port, context)
    first = _serial(kept)
    new_cert = ca.issue("127.0.0.1", "localhost")
    new_cert.write(tmp, "server")  # the same file names, new contents
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    second = first
    while time.monotonic() < deadline and second == first:
        conn, _ = _get(port, context)
        second = _serial(conn)
        conn.close()
        time.sleep(0.1)
    assert second == new_cert.cert.serial_number != first
    _, again = _get(port, context, conn=kept)  # the connection opened before the reload still works
    assert again.status == 200 and _serial(kept) == first
    kept.close()


def test_a_certificate_and_key_that_do_not_match_is_a_config_error(tmp_path: Path) -> None:
    ca = CA()
    cert_file, _ = ca.issue("127.0.0.1").write(tmp_path, "a")
    _, other_key = ca.issue("127.0.0.1").write(tmp_path, "b")
    from gateway.config import ConfigError, loads
    with pytest.raises(ConfigError) as info:
        loads(yaml.safe_dump({"server": {"tls": {"cert": str(cert_file), "key": str(other_key)}},
                              "routes": [{"name": "r", "path": "/", "upstream": "http://127.0.0.1:9",
                                          "auth": "public"}]}), env={})
    assert [e.split(":", 2)[2] for e in info.value.errors] == [" server: tls: key does not belong to the certificate in cert"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OpenID provider")
def test_chromium_signs_in_over_https_with_secure_cookies(tmp_path: Path) -> None:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    ca = CA()
    cert_file, key_file = ca.issue("127.0.0.1", "localhost").write(tmp_path, "server")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    up = Upstream("app").start()
    try:
        with start_oidc_provider(tmp_path / "idp", clients=[client("gw", "tls-client-secret-0123456789",
                                                                   [url + "/oauth2/callback"])],
                                 users=[user("alice", "alice-pw")]) as idp:
            config = {
                "server": {"listen": f"127.0.0.1:{port}", "tls": {"cert": str(cert_file), "key": str(key_file)}},
                "session": {"secret": "${GATEWAY_SESSION_SECRET}", "cookie_name": "_gws"},
                "providers": {"corp": provider_entry(idp.issuer, "gw", "tls-client-secret-0123456789")},
                "routes": [{"name": "app", "path": "/app", "upstream": up.url, "auth": "login"}],
            }
            gw = GatewayProcess(yaml.safe_dump(config), env=gateway_env(), listen=f"127.0.0.1:{port}")
            gw.start()
            try:
                args = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
                # Chromium cannot be told of a private CA without a certificate database: it ignores
                # certificate errors here, while every check above verifies against the CA.
                with chromium_browser(args=args, ignore_https_errors=True) as context:
                    page = context.new_page()
                    page.goto(url + "/app/home")
                    provider_sign_in(page, "alice", "alice-pw")
                    page.wait_for_url(url + "/app/home")
                    cookies = [c for c in context.cookies(url) if c["name"].startswith("_gws")]
                    assert cookies and all(c["secure"] and c["httpOnly"] for c in cookies), cookies
                    seen = up.last("/app/home")
                    assert seen["headers"]["X-Forwarded-User"] == "alice"
                    assert seen["headers"]["X-Forwarded-Proto"] == "https"
            finally:
                gw.stop()
    finally:
        up.stop()
