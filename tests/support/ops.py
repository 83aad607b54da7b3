"""Helpers for the operations tests (tests/test_ops*.py).

* ``hs_token()``: an HS256 bearer token for the ``ops-ci`` issuer the ops configs accept;
* ``metric_samples()`` / ``metric_sum()``: read the Prometheus text of the admin ``/metrics``;
* ``children()``: the child PIDs of a process, from /proc (workers, nginx workers);
* ``Daemon``: a foreground server process (nginx, Caddy) started in a session of its own
  and stopped by PID (itself, then any child it left behind), never by name;
* ``ensure_caddy()``: the Caddy binary, or a skip telling how to install it;
* ``wait_port()`` / ``connect_refused()``: socket-level checks.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Iterable, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import tokens
from tests.support.e2e import request

HS_ISSUER = "ops-ci"
HS_SECRET = "ops-test-secret-0123456789-abcdefghijklmnop"  # >= 32 bytes
SESSION_SECRET = "ops-session-secret-0123456789-abcdefghijkl"

TOKENS_YAML = f"""\
tokens:
  - issuer: {HS_ISSUER}
    secret: {HS_SECRET}
    algorithms: [HS256]
    audience: any
"""


hs_token = functools.partial(tokens.hs_token, iss=HS_ISSUER, secret=HS_SECRET)


# --------------------------------------------------------------------------- metrics


def metric_samples(admin_url: str, name: str) -> list:
    """Every sample called ``name`` on /metrics, as (labels dict, value)."""
    resp = request(admin_url, "GET", "/metrics", timeout=5)
    assert resp.status == 200, resp.status
    out = []
    for family in text_string_to_metric_families(resp.body.decode()):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), sample.value))
    return out


def metric_sum(admin_url: str, name: str, **labels: str) -> float:
    return sum(value for got, value in metric_samples(admin_url, name)
               if all(got.get(k) == v for k, v in labels.items()))


# --------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children), sorted."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as fh:
                found.extend(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_port(port: int, timeout: float = 10.0, proc: Optional[subprocess.Popen] = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener closed with it in its queue
        return True


class Daemon:
    """A server that runs in the foreground (``daemon off`` nginx, ``caddy run``).

    Started in a new session so a Ctrl-C of pytest does not race our cleanup; stopped
    by PID: SIGTERM (then SIGKILL), then any child it left behind.
    """

    def __init__(self, argv: list[str], *, cwd: str, log_path: str, env: Optional[dict] = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        kids = children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        kill_pids([pid for pid in kids if pid_alive(pid)])
        self._log.close()


def stop_gateway(gw: Any, timeout: float = 10.0) -> None:
    """``GatewayProcess.stop`` plus its workers (by PID) if the parent went away without them."""
    if gw.proc is None:
        return
    kids = children(gw.proc.pid) if gw.proc.poll() is None else []
    gw.stop(timeout)
    kill_pids([pid for pid in kids if pid_alive(pid)])


def ensure_caddy() -> str:
    """The caddy binary (Debian package ``caddy``), or skip the test."""
    path = "/usr/bin/caddy"
    if os.path.exists(path):
        return path
    found = shutil.which("caddy")
    if found:
        return found
    pytest.skip("caddy not installed: run scripts/test.sh")
    raise AssertionError  # pragma: no cover


def ensure_nginx() -> str:
    for path in ("/usr/sbin/nginx", shutil.which("nginx")):
        if path and os.path.exists(path):
            return path
    pytest.skip("nginx not installed: run scripts/test.sh")
    raise AssertionError  # pragma: no cover
