"""``server.workers: 2`` end to end: the REAL ``python -m gateway serve`` forks two workers.

Checks: two worker PIDs (children of the gateway process), requests succeed on new
connections whichever worker answers (HS256 tokens verified by each), a SIGKILLed worker is
replaced by a new PID within 5 s while requests keep succeeding, the admin /metrics merges
the counts of every worker (the killed one included), SIGHUP reloads every worker, SIGTERM
stops them all and the gateway exits 0.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.e2e import request, wait_ready, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import TOKENS_YAML, children, hs_token, metric_sum, pid_alive, stop_gateway
from tests.support.tokens import bearer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(60)


def config(upstream: str, *, extra: bool = False) -> str:
    text = f"""\
server:
  workers: 2
  shutdown_grace: 5s
{TOKENS_YAML}routes:
  - name: api
    path: /api
    upstream: {upstream}
    auth: token
    allow:
      - sub: [alice]
  - name: pub
    path: /pub
    upstream: {upstream}
    auth: public
"""
    if extra:
        text += f"""\
  - name: extra
    path: /extra
    upstream: {upstream}
    auth: public
"""
    return text


def write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def worker_pids(gw: GatewayProcess, count: int = 2, timeout: float = 10.0) -> list:
    return wait_until(lambda: (lambda kids: kids if len(kids) == count else None)(children(gw.proc.pid)),
                      timeout=timeout)


def listening_lines(gw: GatewayProcess) -> int:
    return sum(1 for line in list(gw.stderr_lines) if "gateway listening on" in line)


def requests_total(gw: GatewayProcess) -> float:
    return metric_sum(gw.admin_url, "gateway_requests_total")


@pytest.fixture(scope="module")
def upstream():
    up = Upstream("workers").start()
    yield up
    up.stop()


@pytest.fixture
def gw(upstream):
    proc = GatewayProcess(config(upstream.url))
    try:
        proc.start()
        yield proc
    finally:
        stop_gateway(proc)


def test_two_workers_serve_count_restart_reload_and_stop(gw, upstream):
    wait_until(lambda: listening_lines(gw) == 2, timeout=15)  # both workers accept
    wait_ready(gw.admin_url)
    pids = worker_pids(gw)
    assert gw.proc.pid not in pids and len(set(pids)) == 2

    # a verified HS256 token works whichever worker answers: every request on a new connection
    token = hs_token("alice")
    made = 0
    for i in range(40):
        resp = request(gw.url, "GET", f"/api/{i}", headers=bearer(token))
        assert resp.status == 200, (i, resp.status, resp.body)
        assert resp.json()["headers"]["X-Forwarded-User"] == "alice"
        made += 1
    assert request(gw.url, "GET", "/api/x", headers=bearer(hs_token("bob"))).status == 403
    assert request(gw.url, "GET", "/api/x").status == 401
    made += 2
    # /metrics (admin port, not counted) merges what both workers counted
    wait_until(lambda: requests_total(gw) == made, timeout=3)
    assert metric_sum(gw.admin_url, "gateway_requests_total", route="api", status="2xx") == 40

    # SIGKILL one worker: the supervisor starts a new one (new PID) within 5 s
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    for i in range(10):  # served by the survivor meanwhile
        assert request(gw.url, "GET", f"/pub/during/{i}").status == 200
        made += 1
    new_pids = wait_until(lambda: (lambda kids: kids if len(kids) == 2 and victim not in kids else None)(
        children(gw.proc.pid)), timeout=5)
    assert survivor in new_pids
    replacement = next(pid for pid in new_pids if pid != survivor)
    assert not pid_alive(victim)
    wait_until(lambda: listening_lines(gw) == 3, timeout=10)
    for i in range(30):
        resp = request(gw.url, "GET", f"/api/after/{i}", headers=bearer(token))
        assert resp.status == 200, (i, resp.status)
        made += 1
    # the dead worker's counts are kept: the merged total is still every request made
    wait_until(lambda: requests_total(gw) == made, timeout=3)
    assert gw.alive()

    # SIGHUP to the gateway reloads every worker
    assert request(gw.url, "GET", "/extra/x").status == 404
    made += 1
    write(gw.config_path, config(upstream.url, extra=True))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: sum("config reloaded (SIGHUP)" in line for line in list(gw.stderr_lines)) >= 2,
               timeout=10)
    for i in range(30):
        assert request(gw.url, "GET", f"/extra/{i}").status == 200, i
    assert metric_sum(gw.admin_url, "gateway_config_reloads_total", result="ok") >= 2

    # SIGTERM: every worker stops, the gateway exits 0
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    for pid in (survivor, replacement):
        wait_until(lambda: not pid_alive(pid), timeout=5)


def test_restarted_worker_runs_the_reloaded_config(gw, upstream):
    wait_until(lambda: listening_lines(gw) == 2, timeout=15)
    pids = worker_pids(gw)
    write(gw.config_path, config(upstream.url, extra=True))
    gw.signal(signal.SIGHUP)
    wait_until(lambda: sum("config reloaded (SIGHUP)" in line for line in list(gw.stderr_lines)) >= 2,
               timeout=10)
    assert request(gw.url, "GET", "/extra/x").status == 200
    for pid in pids:  # both, so that every answer below comes from a restarted worker
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (lambda kids: len(kids) == 2 and not set(kids) & set(pids))(children(gw.proc.pid)),
               timeout=10)
    wait_until(lambda: listening_lines(gw) == 4, timeout=10)
    statuses = [request(gw.url, "GET", f"/extra/{i}").status for i in range(10)]
    assert statuses == [200] * 10


def test_reuse_port_gives_each_worker_its_own_socket_and_spreads_connections():
    """``server.reuse_port: true``: both workers accept (the kernel spreads connections), all succeed."""
    upstream = Upstream("workers-reuseport").start()
    gw = GatewayProcess(config(upstream.url).replace("  workers: 2\n", "  workers: 2\n  reuse_port: true\n"))
    try:
        gw.start()
        wait_ready(gw.admin_url)
        pids = worker_pids(gw)
        answered_by = set()
        for _ in range(60):  # a new connection each time
            r = request(gw.url, "GET", "/pub/x")
            assert r.status == 200
        # each worker owns a listening socket on the gateway's port
        port = gw.url.rsplit(":", 1)[1]
        for pid in pids:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            answered_by.add(pid if any(i.startswith("socket:") for i in inodes) else None)
        assert None not in answered_by
        listening = open("/proc/net/tcp").read().splitlines()[1:]
        count = sum(1 for line in listening
                    if line.split()[1].endswith(":%04X" % int(port)) and line.split()[3] == "0A")
        assert count == 2, f"expected one listening socket per worker on port {port}, saw {count}"
        assert metric_sum(gw.admin_url, "gateway_requests_total") >= 60
    finally:
        stop_gateway(gw)
        upstream.stop()
