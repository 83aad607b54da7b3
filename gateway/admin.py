"""The admin port: /ping, /ready and /metrics, never on the proxy port.

Probes for orchestrators and the Prometheus scrape; they read the
``Gateway`` and take no part in the request pipeline.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from tornado import web

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Gateway


class PingHandler(web.RequestHandler):
    def initialize(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("OK\n")

    head = get


class ReadyHandler(PingHandler):
    async def get(self) -> None:
        problems = await self.gateway.readiness()
        self.set_header("Content-Type", "application/json")
        if problems:
            self.set_status(503)
        self.write(json.dumps({"ready": not problems, "problems": problems}))

    head = get


class MetricsHandler(PingHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.gateway.metrics.exposition())

    head = get


def make_admin_app(gateway: "Gateway") -> web.Application:
    kwargs = {"gateway": gateway}
    return web.Application(
        [(r"/ping", PingHandler, kwargs), (r"/ready", ReadyHandler, kwargs), (r"/metrics", MetricsHandler, kwargs)],
        log_function=lambda handler: None,
    )
