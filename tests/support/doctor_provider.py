"""A tiny OpenID Connect discovery server with one flaw per issuer, for ``gateway doctor`` tests.

Run as its own process (``python -m tests.support.doctor_provider``): it listens
on a free 127.0.0.1 port, prints ``READY <port>`` and serves, for each name
below, an issuer ``http://127.0.0.1:PORT/<name>`` with a discovery document,
a sign-in page at ``/<name>/authorize`` (200), a token endpoint and a JWKS:

    good      nothing wrong
    slash     the document's issuer has a trailing slash (``.../slash/``)
    nopkce    code_challenge_methods_supported: ["plain"]
    skew120   every answer's Date header is 2 minutes ahead
    skew20    every answer's Date header is 20 s ahead (more than half the 30 s leeway)

Use ``start_doctor_provider()``: a context manager that stops the process by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ("good", "slash", "nopkce", "skew120", "skew20")
SKEW = {"skew120": 120.0, "skew20": 20.0}


class DoctorProvider:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

    def issuer(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def start_doctor_provider(timeout: float = 10.0) -> Iterator[DoctorProvider]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.doctor_provider"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    provider = DoctorProvider(proc, 0)
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # the first line comes at once, or the process died
            match = re.match(r"READY (\d+)", line)
            if match:
                provider.port = int(match.group(1))
                break
            if not line and proc.poll() is not None:
                raise RuntimeError("doctor_provider exited before it was ready")
        else:
            raise RuntimeError("doctor_provider not ready in time")
        yield provider
    finally:
        provider.stop()


def _serve() -> None:
    import asyncio

    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm
    from tornado import httputil, web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    jwks = {"keys": [{**jwk, "kid": "doctor-1", "use": "sig", "alg": "ES256"}]}

    class Base(web.RequestHandler):
        def set_default_headers(self) -> None:
            name = self.request.path.strip("/").split("/")[0]
            self.base = f"http://127.0.0.1:{port}/{name}"
            self.set_header("Date", httputil.format_timestamp(time.time() + SKEW.get(name, 0.0)))

    class Discovery(Base):
        def get(self, name: str) -> None:
            self.write({
                "issuer": self.base + ("/" if name == "slash" else ""),
                "authorization_endpoint": self.base + "/authorize",
                "token_endpoint": self.base + "/token",
                "jwks_uri": self.base + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "code_challenge_methods_supported": ["plain"] if name == "nopkce" else ["S256"],
            })

    class Authorize(Base):
        def get(self, name: str) -> None:
            self.write("<!doctype html><title>Sign in</title><form method=post><input name=login>"
                       "<input name=password type=password><button>Sign in</button></form>")

    class Token(Base):
        def get(self, name: str) -> None:
            self.set_status(400)
            self.write({"error": "invalid_request"})

    class Keys(Base):
        def get(self, name: str) -> None:
            self.write(jwks)

    names = "|".join(NAMES)
    app = web.Application([
        (rf"/({names})/\.well-known/openid-configuration", Discovery),
        (rf"/({names})/authorize", Authorize),
        (rf"/({names})/token", Token),
        (rf"/({names})/jwks", Keys),
    ])
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]

    async def main() -> None:
        server = HTTPServer(app)
        server.add_sockets(sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print(f"READY {port}", flush=True)
        await stop.wait()
        server.stop()

    asyncio.run(main())


if __name__ == "__main__":
    _serve()
