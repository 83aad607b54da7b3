"""TLS to upstreams (routes[].tls): a private CA, server_name, expired and misnamed certificates, mutual TLS.

The upstreams are tornado HTTPS servers on 127.0.0.1 in a thread of their own, with certificates
made by the test (tests/support/certs.py); the gateway is the real process.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml
from tornado import httpserver, netutil, web

from tests.support.certs import CA
from tests.support.e2e import request
from tests.support.gateway_proc import GatewayProcess
from tests.support.tokens import gateway_env

pytestmark = pytest.mark.timeout(60)


class _Echo(web.RequestHandler):
    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(self.request.headers.get("Host"))
        self.write({"host": self.request.headers.get("Host"), "path": self.request.path})

    def post(self) -> None:
        self.seen.append(self.request.headers.get("Host"))
        self.write({"length": len(self.request.body)})


class Upstreams:
    """HTTPS servers on one event loop thread; ``start(cert, client_ca=None)`` gives the port."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list = []
        self.connections = 0
        self.seen: list = []

    def start(self, cert: Any, tmp: Path, name: str, client_ca: Optional[Path] = None) -> int:
        cert_file, key_file = cert.write(tmp, name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert_file), str(key_file))
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(client_ca))
        owner = self

        class Counting(httpserver.HTTPServer):
            def handle_stream(self, stream: Any, address: Any) -> None:
                owner.connections += 1
                super().handle_stream(stream, address)

        async def go() -> int:
            server = Counting(web.Application([(r"/.*", _Echo, {"seen": self.seen})]), ssl_options=context)
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            server.add_sockets(sockets)
            self.servers.append(server)
            return sockets[0].getsockname()[1]

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        async def go() -> None:
            for server in self.servers:
                server.stop()
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("tls")
    ca, other_ca, client_ca = CA("upstream CA"), CA("someone else's CA"), CA("client CA")
    ca_file, client_ca_file = ca.write(tmp / "ca.pem"), client_ca.write(tmp / "client-ca.pem")
    client_cert, client_key = client_ca.issue("gateway", client=True).write(tmp, "client")
    ups = Upstreams()
    ports = {
        "good": ups.start(ca.issue("127.0.0.1", "localhost"), tmp, "good"),
        "named": ups.start(ca.issue("upstream.test"), tmp, "named"),
        "expired": ups.start(ca.issue("127.0.0.1", days=-1), tmp, "expired"),
        "stranger": ups.start(other_ca.issue("127.0.0.1"), tmp, "stranger"),
        "mtls": ups.start(ca.issue("127.0.0.1"), tmp, "mtls", client_ca=client_ca_file),
    }

    def route(name: str, port: int, **tls: Any) -> dict:
        entry = {"name": name, "path": "/" + name, "upstream": f"https://127.0.0.1:{port}", "auth": "public"}
        if tls:
            entry["tls"] = tls
        return entry

    routes = [
        route("verified", ports["good"], ca=str(ca_file)),
        route("system-store", ports["good"]),
        route("wrong-name", ports["named"], ca=str(ca_file)),
        route("server-name", ports["named"], ca=str(ca_file), server_name="upstream.test"),
        route("expired", ports["expired"], ca=str(ca_file)),
        route("unknown-ca", ports["stranger"], ca=str(ca_file)),
        route("mtls", ports["mtls"], ca=str(ca_file), cert=str(client_cert), key=str(client_key)),
        route("no-client-cert", ports["mtls"], ca=str(ca_file)),
        route("rotating", ports["stranger"], ca=str(ca.write(tmp / "rotating-ca.pem"))),
    ]
    gw = GatewayProcess(yaml.safe_dump({"routes": routes}), env=gateway_env())
    try:
        gw.start()
        yield {"gw": gw, "ups": ups, "ports": ports, "tmp": tmp, "other_ca": other_ca}
    finally:
        gw.stop()
        ups.stop()


def get(env: dict, path: str, body: Optional[bytes] = None) -> Any:
    return request(env["gw"].url, "POST" if body is not None else "GET", path,
                   {"Content-Type": "application/octet-stream"} if body is not None else {}, body)


def log_says(env: dict, route: str, words: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(f"upstream tls for route {route}" in line and words in line for line in env["gw"].stderr_lines):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("body", [None, b"x" * 200_000], ids=["bodiless", "with a body"])
def test_an_upstream_verified_by_the_private_ca(env: dict, body: Optional[bytes]) -> None:
    r = get(env, "/verified/x", body)
    assert r.status == 200, r.body[:300]
    assert r.json().get("length", 200_000) == 200_000


@pytest.mark.parametrize("body", [None, b"y" * 1000], ids=["bodiless", "with a body"])
def test_server_name_is_the_name_verified(env: dict, body: Optional[bytes]) -> None:
    r = get(env, "/server-name/x", body)
    assert r.status == 200, r.body[:300]
    assert env["ups"].seen[-1] == f"127.0.0.1:{env['ports']['named']}", "Host stays the URL's"


@pytest.mark.parametrize("route, words", [
    ("system-store", "a CA the gateway does not trust"),
    ("unknown-ca", "a CA the gateway does not trust"),
    ("wrong-name", "for another name"),
    ("expired", "expired"),
])
@pytest.mark.parametrize("body", [None, b"z" * 1000], ids=["bodiless", "with a body"])
def test_a_certificate_that_does_not_verify_is_a_502_that_says_why(env: dict, route: str, words: str,
                                                                     body: Optional[bytes]) -> None:
    r = get(env, f"/{route}/x", body)
    assert r.status == 502
    assert log_says(env, route, words), env["gw"].stderr_lines[-5:]


def test_mutual_tls(env: dict) -> None:
    assert get(env, "/mtls/x").status == 200
    assert get(env, "/mtls/x", b"body").status == 200
    assert get(env, "/no-client-cert/x").status == 502
    assert get(env, "/no-client-cert/x", b"body").status == 502


def test_connections_to_an_https_upstream_are_kept_alive(env: dict) -> None:
    before = env["ups"].connections
    for _ in range(30):
        assert get(env, "/verified/again").status == 200
    assert env["ups"].connections - before <= 3, "reused, not one connection per request"


def test_a_changed_ca_file_is_picked_up_like_a_changed_routes_yaml(env: dict) -> None:
    assert get(env, "/rotating/x").status == 502
    env["other_ca"].write(env["tmp"] / "rotating-ca.pem")  # the operator trusts the upstream's CA now
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if get(env, "/rotating/x").status == 200:
            break
        time.sleep(0.2)
    assert get(env, "/rotating/x").status == 200, env["gw"].stderr_lines[-6:]
    assert get(env, "/rotating/x", b"with a body too").status == 200


def test_without_ca_the_system_trust_store_is_used_for_every_request(env: dict, tmp_path: Path) -> None:
    """The same store for bodiless requests (curl) and uploads (Python's TLS): SSL_CERT_FILE names it here."""
    routes = [{"name": "system", "path": "/system", "upstream": f"https://127.0.0.1:{env['ports']['good']}",
               "auth": "public"}]
    gw = GatewayProcess(yaml.safe_dump({"routes": routes}),
                        env={**gateway_env(), "SSL_CERT_FILE": str(env["tmp"] / "ca.pem")})
    try:
        gw.start()
        assert request(gw.url, "GET", "/system/x").status == 200
        assert request(gw.url, "POST", "/system/x", {"Content-Type": "text/plain"}, b"body").status == 200
    finally:
        gw.stop()
