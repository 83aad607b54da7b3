"""Run the real ``gateway serve`` process from the CLI, for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# GATEWAY_TEST_HTTP_ENGINE=httptools (or tornado) runs every gateway a test starts on that engine
# (server.http_engine), unless the test's config names one itself.
ENGINE_ENV = "GATEWAY_TEST_HTTP_ENGINE"


def with_engine(config_text: str, engine: Optional[str] = None) -> str:
    """The config with ``server.http_engine`` set (from ``engine`` or the environment), if not set already."""
    engine = engine or os.environ.get(ENGINE_ENV, "")
    if not engine:
        return config_text
    import yaml

    data = yaml.safe_load(config_text)
    if not isinstance(data, dict):
        return config_text
    server = data.get("server")
    if server is None:
        server = data["server"] = {}
    if not isinstance(server, dict) or "http_engine" in server:
        return config_text
    server["http_engine"] = engine
    return yaml.safe_dump(data, sort_keys=False)


LISTEN_RE = re.compile(r"gateway listening on (https?://[^ ]+) \(admin: ([^,]+),")


class GatewayProcess:
    """``python -m gateway serve -c FILE --listen 127.0.0.1:0``; collects stdout (access log) and stderr.

    ``listen`` overrides the ``--listen`` address (default ``127.0.0.1:0``, a free port), for tests
    that must know the port in advance, e.g. to put it in ``server.public_url``.
    """

    def __init__(self, config_text: str, *, env: Optional[dict] = None, workdir: Optional[str] = None,
                 admin: bool = True, start_timeout: float = 20.0, listen: str = "127.0.0.1:0"):
        self.workdir = workdir or tempfile.mkdtemp(prefix="gw-e2e-")
        self.config_path = os.path.join(self.workdir, "routes.yaml")
        with open(self.config_path, "w") as f:
            f.write(with_engine(config_text))
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env["PYTHONPATH"] = ROOT + os.pathsep + self.env.get("PYTHONPATH", "")
        self.admin = admin
        self.listen = listen
        self.start_timeout = start_timeout
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.url = ""
        self.admin_url = ""
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "GatewayProcess":
        args = [sys.executable, "-m", "gateway", "serve", "-c", self.config_path, "--listen", self.listen,
                "--admin-listen", "127.0.0.1:0" if self.admin else "off"]
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        listening = threading.Event()

        def pump(stream, sink, watch):
            for line in stream:
                sink.append(line.rstrip("\n"))
                if watch:
                    m = LISTEN_RE.search(line)
                    if m:
                        self.url, self.admin_url = m.group(1), m.group(2)
                        listening.set()

        threading.Thread(target=pump, args=(self.proc.stdout, self.stdout_lines, False), daemon=True).start()
        threading.Thread(target=pump, args=(self.proc.stderr, self.stderr_lines, True), daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not listening.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                self.stop()
                raise RuntimeError("gateway did not start:\n" + "\n".join(self.stderr_lines))
            listening.wait(0.05)
        return self

    def access_log(self) -> list[dict]:
        out = []
        for line in list(self.stdout_lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_log(self, predicate, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.access_log():
                if predicate(entry):
                    return entry
            time.sleep(0.02)
        raise AssertionError("no matching access-log line; have:\n" + "\n".join(self.stdout_lines[-20:]))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
