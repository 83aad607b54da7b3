"""Tests for gateway.admin: the probes and /metrics, in process (tornado.testing)."""

from __future__ import annotations

import json

from tornado.testing import AsyncHTTPTestCase

from gateway.admin import make_admin_app
from gateway.config import loads
from gateway.runtime import Gateway

CONFIG = """
server:
  listen: 127.0.0.1:8080
routes:
  - name: site
    path: /
    upstream: http://127.0.0.1:9
    auth: public
"""


class AdminTest(AsyncHTTPTestCase):
    def get_app(self):
        self.gateway = Gateway(loads(CONFIG, env={}))
        return make_admin_app(self.gateway)

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.gateway.close)
        super().tearDown()

    def test_ping_and_ready(self) -> None:
        assert self.fetch("/ping").body == b"OK\n"
        ready = self.fetch("/ready")
        assert ready.code == 200 and json.loads(ready.body) == {"ready": True, "problems": []}

    def test_head_answers_on_every_probe_without_a_body(self) -> None:
        for path in ("/ping", "/ready", "/metrics"):
            resp = self.fetch(path, method="HEAD")
            assert resp.code == 200, path
            assert resp.body == b"", path
            assert int(resp.headers["Content-Length"]) > 0, path

    def test_metrics_include_process_and_gc_figures(self) -> None:
        text = self.fetch("/metrics").body.decode()
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
        for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                     "python_gc_collections_total", "python_info", "gateway_requests_in_flight"):
            assert name in names, name
