"""The admin port: /ping, /ready, /metrics and session control, never on the proxy port.

Probes for orchestrators and the Prometheus scrape; they read the
``Gateway`` and take no part in the request pipeline.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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


class SessionsHandler(PingHandler):
    """GET /sessions?sub=S: a user's sessions (sessions in Redis). The admin port has no authentication."""

    async def get(self) -> None:
        await self._answer(lambda logouts: logouts.list(self.get_argument("sub", "")))

    async def _answer(self, act: Any) -> None:
        logouts = self.gateway.runtime.logouts
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        if logouts is None:
            self.set_status(404)
            self.write(json.dumps({"error": "not_found", "error_description": "browser login is not configured"}))
            return
        answer = await act(logouts)
        self.set_status(answer.status)
        self.write(json.dumps(answer.body))


class RevokeHandler(SessionsHandler):
    """POST /sessions/revoke?sub=S or ?id=ID: end those sessions everywhere, as a back-channel logout would."""

    async def post(self) -> None:
        await self._answer(lambda logouts: logouts.revoke(sub=self.get_argument("sub", None),
                                                          session_id=self.get_argument("id", None)))


def make_admin_app(gateway: "Gateway") -> web.Application:
    kwargs = {"gateway": gateway}
    return web.Application(
        [(r"/ping", PingHandler, kwargs), (r"/ready", ReadyHandler, kwargs), (r"/metrics", MetricsHandler, kwargs),
         (r"/sessions", SessionsHandler, kwargs), (r"/sessions/revoke", RevokeHandler, kwargs)],
        log_function=lambda handler: None,
    )
