"""Wiring: a validated Config becomes a running gateway (proxy app and admin app).

``Runtime`` is everything compiled from one config (route table, balancers,
token verifier); ``Gateway`` holds the current Runtime plus what outlives a
reload (HTTP clients, metrics, the access log). A reload builds a new
Runtime and swaps it in with one assignment, so requests already running
keep the one they started with. Tests call ``make_app`` too.
"""

from __future__ import annotations

import logging
from typing import IO, Any, Optional

from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .authn import Authenticator
from .config import Config
from .handlers import MetricsHandler, NotFoundHandler, PingHandler, ProxyHandler, ReadyHandler, log_request
from .proxy import Balancer, Clients
from .routing import RouteTable
from .telemetry import AccessLog, Metrics
from .tokens import TokenVerifier

log = logging.getLogger("gateway")


class Runtime:
    """Everything derived from one config; never mutated after construction."""

    def __init__(self, config: Config, http_client: AsyncHTTPClient):
        self.config = config
        self.routes = RouteTable(config.routes)
        self.balancers = {route.name: Balancer(route.upstreams) for route in config.routes}
        self.verifier = TokenVerifier(config.tokens, http_client)
        self.authn = Authenticator(self.verifier)
        self.login: Any = None  # browser login, when providers are configured
        self.drop_headers: frozenset = frozenset()

    async def start(self) -> None:
        await self.verifier.start()

    async def close(self) -> None:
        await self.verifier.close()


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        http_client: Optional[AsyncHTTPClient] = None,
        clients: Optional[Clients] = None,
        access_log: Optional[AccessLog] = None,
        log_stream: Optional[IO[str]] = None,
    ):
        # Identity-provider traffic (JWKS, discovery, code exchange) gets its own client,
        # so a slow provider never queues behind proxied requests.
        self.http = http_client or SimpleAsyncHTTPClient(force_instance=True, max_clients=64)
        self.clients = clients or Clients()
        self.metrics = Metrics()
        self.access_log = access_log or AccessLog(log_stream)
        self.runtime = Runtime(config, self.http)

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        await self.runtime.start()

    async def readiness(self) -> list[str]:
        """What is not ready yet; an empty list means ready."""
        problems = []
        if not await self.runtime.verifier.ready():
            problems.append("token signing keys not loaded yet")
        return problems

    async def close(self) -> None:
        await self.runtime.close()
        self.clients.close()
        self.http.close()


def make_app(gateway: Gateway) -> web.Application:
    """The proxy-port application: /oauth2/* endpoints, then everything else to the routes."""
    handlers: list[Any] = [
        (r"/oauth2(?:/.*)?", NotFoundHandler, {"gateway": gateway}),
        (r".*", ProxyHandler, {"gateway": gateway}),
    ]
    return web.Application(handlers, log_function=log_request, compress_response=False, xsrf_cookies=False)


def make_admin_app(gateway: Gateway) -> web.Application:
    kwargs = {"gateway": gateway}
    return web.Application(
        [(r"/ping", PingHandler, kwargs), (r"/ready", ReadyHandler, kwargs), (r"/metrics", MetricsHandler, kwargs)],
        log_function=lambda handler: None,
    )
