"""Graceful shutdown of the REAL ``python -m gateway serve`` on SIGTERM.

* an in-flight ``/slow?s=2`` request still completes with 200 after SIGTERM, while new
  connections are refused at once, and the process exits 0;
* with ``shutdown_grace: 1s`` a ``/slow?s=5`` request is cut and the process still exits 0
  within about 2 s of the signal.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.support.e2e import request, wait_ready, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import connect_refused, stop_gateway
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(40)


def config(upstream: str, grace: str) -> str:
    return f"""\
server:
  shutdown_grace: {grace}
routes:
  - name: app
    path: /
    upstream: {upstream}
    auth: public
"""


@pytest.fixture(scope="module")
def upstream():
    up = Upstream("slow").start()
    yield up
    up.stop()


def start_slow(url: str, seconds: float) -> dict:
    """GET /slow?s=SECONDS in a thread; the dict gets "status"/"body" or "error", and "done"."""
    out: dict = {}

    def run() -> None:
        try:
            resp = request(url, "GET", f"/slow?s={seconds}", timeout=seconds + 10)
            out["status"], out["body"] = resp.status, resp.body
        except Exception as exc:
            out["error"] = exc
        out["done"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def in_flight(gw: GatewayProcess) -> float:
    from tests.support.ops import metric_sum

    return metric_sum(gw.admin_url, "gateway_requests_in_flight")


def test_sigterm_lets_in_flight_request_finish_and_refuses_new_connections(upstream):
    gw = GatewayProcess(config(upstream.url, "10s")).start()
    try:
        wait_ready(gw.admin_url)
        port = int(gw.url.rsplit(":", 1)[1])
        slow = start_slow(gw.url, 2)
        wait_until(lambda: in_flight(gw) == 1, timeout=5)
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        # the listener closes at once: new connections are refused while the old one drains
        wait_until(lambda: connect_refused(port), timeout=2, interval=0.02)
        assert gw.alive(), "exited before the in-flight request was done"
        slow["thread"].join(10)
        assert slow.get("status") == 200, slow
        assert b'"/slow"' in slow["body"]
        assert gw.proc.wait(10) == 0
        exited = time.monotonic()
        assert slow["done"] - signalled >= 1.0  # it really was in flight for the drain
        assert exited - signalled < 5
        assert any("shutting down" in line for line in gw.stderr_lines)
        entry = gw.wait_log(lambda e: e.get("path") == "/slow")
        assert entry["status"] == 200
    finally:
        stop_gateway(gw)


def test_shutdown_grace_cuts_a_slow_request_and_still_exits_0(upstream):
    gw = GatewayProcess(config(upstream.url, "1s")).start()
    try:
        wait_ready(gw.admin_url)
        slow = start_slow(gw.url, 5)
        wait_until(lambda: in_flight(gw) == 1, timeout=5)
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        code = gw.proc.wait(10)
        exited = time.monotonic()
        assert code == 0
        assert exited - signalled < 2.5, exited - signalled
        assert exited - signalled >= 0.9  # it did wait for the grace period
        slow["thread"].join(5)
        # the client did not get the upstream's 200: the connection was cut (or a 5xx was sent)
        assert slow.get("status") != 200, slow
        assert slow["done"] - signalled < 3
    finally:
        stop_gateway(gw)


def test_request_cut_by_shutdown_is_not_an_internal_error(upstream):
    gw = GatewayProcess(config(upstream.url, "0.5s")).start()
    try:
        wait_ready(gw.admin_url)
        slow = start_slow(gw.url, 5)
        wait_until(lambda: in_flight(gw) == 1, timeout=5)
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
        slow["thread"].join(5)
        entry = gw.wait_log(lambda e: e.get("path") == "/slow")
        assert slow.get("status") in (None, 503), slow
        assert entry["status"] != 500 and entry.get("reason") != "internal error", entry
    finally:
        stop_gateway(gw)
