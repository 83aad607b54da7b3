"""Hot reload of the REAL ``python -m gateway serve`` under load: SIGHUP and file changes.

One gateway with two routes serves 4 keep-alive clients hammering the ``stable`` route while the
test rewrites routes.yaml and sends SIGHUP ten times (adding and removing a third route, every
config valid) plus once with an invalid config. Not one request on the stable route may fail.
A second gateway checks the reload on a file change alone (no signal).
"""

from __future__ import annotations

import http.client
import re
import signal
import threading
import time

import pytest

from tests.support.e2e import request, wait_ready, wait_until
from tests.support.gateway_proc import GatewayProcess
from tests.support.ops import metric_sum, stop_gateway
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(60)

CLIENTS = 4
SIGHUPS = 10


def config(upstream: str, *, extra: bool, broken: bool = False) -> str:
    text = f"""\
server:
  shutdown_grace: 5s
routes:
  - name: stable
    path: /stable
    upstream: {upstream}
    auth: public
  - name: other
    path: /other
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
    if broken:
        # three independent mistakes: every one must be reported
        text += f"""\
  - name: broken
    path: /broken
    upstream: ftp://{upstream.split('://')[1]}
    auth: sometimes
    bogus_key: 1
"""
    return text


def write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


class Load:
    """``CLIENTS`` threads, each with one keep-alive connection, GET /stable/... in a loop."""

    def __init__(self, url: str):
        self.host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.port = int(port)
        self.ok = 0
        self.failures: list = []
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, index: int) -> None:
        conn = None
        n = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                    with self._lock:
                        self.connections += 1
                conn.request("GET", f"/stable/{index}/{n}")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or b'"/stable/' not in body:
                    with self._lock:
                        self.failures.append((resp.status, body[:200]))
                else:
                    with self._lock:
                        self.ok += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # any transport error is a failed request
                with self._lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
            n += 1
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def reload_lines(gw: GatewayProcess, why: str = "SIGHUP") -> int:
    return sum(1 for line in list(gw.stderr_lines) if f"config reloaded ({why})" in line)


def failed_lines(gw: GatewayProcess) -> int:
    return sum(1 for line in list(gw.stderr_lines) if "config reload (" in line and "failed" in line)


@pytest.fixture(scope="module")
def upstream():
    up = Upstream("reload").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def hup_run(upstream):
    """Runs the SIGHUP scenario once; the tests below check different parts of what it saw."""
    gw = GatewayProcess(config(upstream.url, extra=False)).start()
    wait_ready(gw.admin_url)
    seen: dict = {"extra_after_add": [], "extra_after_remove": [], "stable_during_broken": None}
    try:
        with Load(gw.url) as load:
            wait_until(lambda: load.ok >= 20, timeout=10)
            for i in range(SIGHUPS):
                if i == 5:  # once, in the middle: an invalid config
                    before = failed_lines(gw)
                    write(gw.config_path, config(upstream.url, extra=False, broken=True))
                    gw.signal(signal.SIGHUP)
                    wait_until(lambda: failed_lines(gw) > before, timeout=10)
                    seen["stable_during_broken"] = request(gw.url, "GET", "/stable/x").status
                    seen["broken_route"] = request(gw.url, "GET", "/broken/x").status
                adding = i % 2 == 0
                before = reload_lines(gw)
                write(gw.config_path, config(upstream.url, extra=adding))
                gw.signal(signal.SIGHUP)
                wait_until(lambda: reload_lines(gw) > before, timeout=10)
                status = request(gw.url, "GET", "/extra/x").status
                seen["extra_after_add" if adding else "extra_after_remove"].append(status)
                time.sleep(0.05)
            ok_before_end = load.ok
            wait_until(lambda: load.ok >= ok_before_end + 20, timeout=10)
        seen["load"] = load
        # Let the file watcher (2 s poll) see the final file too, then read the counters.
        time.sleep(2.5)
        seen["ok"] = metric_sum(gw.admin_url, "gateway_config_reloads_total", result="ok")
        seen["error"] = metric_sum(gw.admin_url, "gateway_config_reloads_total", result="error")
        seen["stable_total"] = metric_sum(gw.admin_url, "gateway_requests_total", route="stable")
        seen["stderr"] = list(gw.stderr_lines)
        seen["alive"] = gw.alive()
        seen["exit"] = gw.stop()
        yield seen
    finally:
        stop_gateway(gw)


def test_sighup_reload_under_load_drops_nothing(hup_run):
    load = hup_run["load"]
    assert load.failures == []
    assert load.ok > 100
    # the clients kept their keep-alive connections through every reload
    assert load.connections == CLIENTS
    assert hup_run["stable_total"] >= load.ok
    assert hup_run["exit"] == 0


def test_new_route_works_after_reload_and_removed_one_is_gone(hup_run):
    assert hup_run["extra_after_add"] == [200] * (SIGHUPS // 2)
    assert hup_run["extra_after_remove"] == [404] * (SIGHUPS // 2)


def test_invalid_config_is_logged_with_every_error_and_old_config_keeps_serving(hup_run):
    stderr = "\n".join(hup_run["stderr"])
    assert hup_run["stable_during_broken"] == 200
    assert hup_run["broken_route"] == 404  # the broken config never took effect
    assert "keeping the running config" in stderr
    errors = [line for line in hup_run["stderr"] if re.search(r"routes\.yaml:\d+: ", line)]
    text = "\n".join(errors)
    assert re.search(r"routes\.yaml:\d+: .*upstream", text), text
    assert re.search(r"routes\.yaml:\d+: .*auth", text), text
    assert re.search(r"routes\.yaml:\d+: .*bogus_key", text), text
    assert hup_run["alive"]


def test_reload_metrics_count_every_sighup(hup_run):
    assert hup_run["ok"] >= SIGHUPS
    assert hup_run["error"] >= 1


def test_reload_metrics_count_each_sighup_exactly_once(hup_run):
    assert (hup_run["ok"], hup_run["error"]) == (SIGHUPS, 1)
    assert not any("config reloaded (file changed)" in line for line in hup_run["stderr"])


def test_file_change_reloads_without_a_signal(upstream):
    gw = GatewayProcess(config(upstream.url, extra=False)).start()
    try:
        wait_ready(gw.admin_url)
        assert request(gw.url, "GET", "/extra/x").status == 404
        time.sleep(0.05)  # a distinct mtime even on coarse clocks; the size changes anyway
        write(gw.config_path, config(upstream.url, extra=True))
        started = time.monotonic()
        wait_until(lambda: request(gw.url, "GET", "/extra/x").status == 200, timeout=5, interval=0.1)
        assert time.monotonic() - started < 5
        assert reload_lines(gw, "file changed") == 1
        assert reload_lines(gw, "SIGHUP") == 0
        assert metric_sum(gw.admin_url, "gateway_config_reloads_total", result="ok") == 1
        assert request(gw.url, "GET", "/stable/x").status == 200
        assert gw.stop() == 0
    finally:
        stop_gateway(gw)
