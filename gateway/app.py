"""The proxy port's Tornado application: every request enters through the fast delegate.

There is no regex routing table: ``FastDelegate`` accepts and routes each
request through ``pipeline`` (the gateway's own ``/oauth2`` endpoints on the
normalised path included) and asks ``handler_for`` which handler takes what
it does not answer itself. Tests and ``server`` call ``make_app``.
"""

from __future__ import annotations

from typing import Any

from tornado import httputil, web

from .fastpath import FastDelegate, HeadWatch
from .handlers import OWN_HANDLERS, ProxyHandler, AnswerHandler, log_request
from .pipeline import Outcome, OwnEndpoint
from .routing import Match
from .runtime import Gateway
from .websocket import WebSocketRelay


def handler_for(found: Outcome, upgrade: bool) -> type:
    """Which handler takes a request the fast delegate hands over."""
    if isinstance(found, OwnEndpoint):
        return OWN_HANDLERS[found.name]
    if not isinstance(found, Match):
        return AnswerHandler
    return WebSocketRelay if upgrade else ProxyHandler


class GatewayApplication(web.Application):
    """Every request starts on the fast path (``FastDelegate``), which hands the rest to a handler."""

    def __init__(self, gateway: Gateway, **kwargs: Any):
        super().__init__([], **kwargs)
        self.gateway = gateway
        self.head_watch = HeadWatch(gateway)

    handler_for = staticmethod(handler_for)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> Any:
        return FastDelegate(self, self.gateway, server_conn, request_conn)


def make_app(gateway: Gateway) -> web.Application:
    return GatewayApplication(gateway, log_function=log_request, compress_response=False, xsrf_cookies=False)
