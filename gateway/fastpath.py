"""The common case without a RequestHandler: a bodiless request that can be admitted at once.

Most traffic through an authentication proxy is GET/HEAD on a public route or
with a bearer token the gateway verified moments ago. For those, building a
Tornado ``RequestHandler`` (default headers, the ``_execute`` coroutine,
ETag logic, ``finish``) costs more than the proxying itself, so
``GatewayApplication`` gives them this delegate instead: it reads the same
request path top to bottom (accept, match, authenticate from the verified-
token cache, authorize, proxy, log) and writes straight to the HTTP/1.1
connection. Anything else (a body, a WebSocket, ``/oauth2``, a login
session, a token not yet verified, every refusal, every error page) is
handed to the full ``ProxyHandler`` path before anything is written, so
there is one implementation of each answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from tornado import httputil

from . import forwarded
from .config import AUTH_PUBLIC
from .models import Identity
from .policy import authorize
from .forwarding import ConnectionSink, Exchange, UpstreamError, forwarded_request_headers
from .routing import BadPath, Match, normalize_path, valid_host_header
from .telemetry import RequestScope, request_id
from .tokens import bearer_from_header

if TYPE_CHECKING:  # pragma: no cover
    from .app import Gateway

FAST_METHODS = frozenset({"GET", "HEAD"})


class FastDelegate(httputil.HTTPMessageDelegate):
    """One request on the fast path, or a hand-over to the full handler."""

    def __init__(self, app: Any, gateway: "Gateway", server_conn: object, request_conn: httputil.HTTPConnection):
        self.app = app
        self.gateway = gateway
        self.server_conn = server_conn
        self.connection = request_conn
        self.fallback: Optional[httputil.HTTPMessageDelegate] = None
        self.exchange: Optional[Exchange] = None

    def headers_received(
        self, start_line: Union[httputil.RequestStartLine, httputil.ResponseStartLine], headers: httputil.HTTPHeaders
    ) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        request = httputil.HTTPServerRequest(
            connection=self.connection, server_connection=self.server_conn,
            start_line=start_line, headers=headers,
        )
        self.request = request
        plan = self._admit(request)
        if plan is None:
            return self._hand_over(request, start_line, headers)
        self._start(*plan)
        return None

    # -- accept, match, authenticate, authorize: or leave it to ProxyHandler ------

    def _admit(self, request: httputil.HTTPServerRequest) -> Optional[tuple]:
        method = request.method
        headers = request.headers
        if method not in FAST_METHODS or "Content-Length" in headers or "Transfer-Encoding" in headers:
            return None
        if "Upgrade" in headers or request.path.startswith("/oauth2"):
            return None
        runtime = self.gateway.runtime
        if not valid_host_header(request.host):
            return None
        try:
            path = normalize_path(request.path)
        except BadPath:
            return None
        match = runtime.routes.match(request.host, path, method)
        if not isinstance(match, Match):
            return None
        route = match.route
        identity: Optional[Identity] = None
        if route.auth != AUTH_PUBLIC:
            try:
                raw = bearer_from_header(headers.get("Authorization"))
            except Exception:
                return None
            if raw is None:
                return None  # a session, a login redirect or a 401: the full path decides
            identity = runtime.verifier.verify_cached(raw)
            if identity is None or not authorize(route.allow, identity, method).allowed:
                return None
        return runtime, match, identity

    def _hand_over(self, request: httputil.HTTPServerRequest, start_line: Any, headers: Any) -> Any:
        self.fallback = self.app.find_handler(request)
        return self.fallback.headers_received(start_line, headers)

    # -- proxy ---------------------------------------------------------------------

    def _start(self, runtime: Any, match: Any, identity: Optional[Identity]) -> None:
        request = self.request
        headers = request.headers
        rid = request_id(headers.get("X-Request-Id"))
        fwd = forwarded.resolve(
            request.remote_ip or "", request.protocol, request.host, headers.get("X-Forwarded-For"),
            headers.get("X-Forwarded-Proto"), headers.get("X-Forwarded-Host"), runtime.config.server.trusted_proxies,
        )
        route = match.route
        self.scope = RequestScope(rid, fwd.client_ip, request.method or "GET", request.host, request.path)
        self.scope.route = route.name
        if identity is not None:
            self.scope.user = identity.sub
        login = runtime.login
        upstream_headers = forwarded_request_headers(headers, fwd, rid, identity,
                                                     login.cookie_name if login is not None else None)
        self.response = ConnectionSink(request.connection, rid, request.method or "GET")
        query = request.query
        self.exchange = Exchange(
            self.response, self.gateway.clients, runtime.balancers[route.name],
            method=request.method or "GET",
            path_and_query=match.upstream_path + ("?" + query if query else ""),
            headers=upstream_headers, content_length=None, has_body=False,
            preserve_host=request.host if route.preserve_host else None,
            timeout=route.timeout, connect_timeout=route.connect_timeout,
        )
        self.gateway.metrics.in_flight.inc()
        self.gateway.active.add(self)
        self.running = True
        asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        scope, response = self.scope, self.response
        try:
            await exchange.run()
        except UpstreamError as exc:
            scope.upstream = exchange.upstream
            self.gateway.metrics.upstream_errors.labels(scope.route or "-", exc.kind).inc()
            if not exchange.started and self.running:
                self._error_page(exc.status, f"upstream {exc.kind}")
                return self._done(status=exc.status)
            scope.reason = f"upstream {exc.kind} mid-response"
            self._close()
            return self._done(status=response.status)
        except Exception as exc:  # the client left while writing, or a bug: never a traceback
            scope.reason = f"internal error: {type(exc).__name__}"
            self._close()
            return self._done(status=response.status if response.headers_written else 500)
        scope.upstream = exchange.upstream
        if self.running:
            try:
                response.finish()
            except Exception:
                self._close()
        self._done(status=response.status)

    def _error_page(self, status: int, reason: str) -> None:
        from .handlers import render_error

        self.scope.reason = reason
        is_html, body = render_error(self.request, status, self.scope.request_id)
        response = self.response
        response.start(status, httputil.responses.get(status, "Error"), [
            ("Content-Type", "text/html; charset=utf-8" if is_html else "application/json"),
            ("Cache-Control", "no-store"), ("X-Request-Id", self.scope.request_id), ("Content-Length", str(len(body))),
        ])
        response.write(body)  # nothing for HEAD: the sink knows
        self.bytes_error = len(body)
        try:
            response.finish()
        except Exception:
            self._close()

    def _close(self) -> None:
        if self.request.connection is not None:
            self.request.connection.close()

    def _done(self, status: int) -> None:
        if not self.running:
            return
        self.running = False
        self.gateway.active.discard(self)
        self.gateway.metrics.in_flight.dec()
        duration = time.monotonic() - self.scope.start
        exchange = self.exchange
        nbytes = exchange.bytes_sent if exchange is not None and exchange.started else getattr(self, "bytes_error", 0)
        self.gateway.metrics.observe(self.scope, status, duration)
        self.gateway.access_log.write(self.scope, status, nbytes, duration)

    def cut_for_shutdown(self) -> None:
        """Shutdown grace is over: 503 if nothing was sent yet, else close."""
        exchange = self.exchange
        if exchange is None or not self.running:
            return
        self.scope.reason = "cut by shutdown"
        exchange.abort()
        if not exchange.started:
            self._error_page(503, "cut by shutdown")
        else:
            self._close()
        self._done(status=503 if not exchange.started else self.response.status)

    # -- the rest of the message ---------------------------------------------------

    def data_received(self, chunk: bytes) -> Any:
        if self.fallback is not None:
            return self.fallback.data_received(chunk)
        return None  # a bodiless request has none

    def finish(self) -> None:
        if self.fallback is not None:
            self.fallback.finish()

    def on_connection_close(self) -> None:
        if self.fallback is not None:
            self.fallback.on_connection_close()
            return
        if self.exchange is not None and self.running:
            self.exchange.abort()
            self.scope.reason = self.scope.reason or "client closed the connection"
