"""Tornado request handlers: the proxy port's catch-all, and the admin port's probes.

``ProxyHandler`` reads top to bottom as the request path: accept (request ID,
client address), match a route, authenticate, authorize, then proxy; the
access log line is written by ``log_request`` when the response is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from urllib.parse import urlencode, urlsplit
from typing import TYPE_CHECKING, Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST
from tornado import httputil, template, web

from . import forwarded
from .authn import is_browser
from .redirects import safe_redirect_path
from .config import AUTH_PUBLIC
from .models import AuthError, Identity
from .policy import authorize
from .forwarding import (Exchange, HandlerSink, UpstreamError, forwarded_request_headers, identity_value,
                         retrieve_outcome)
from .routing import BadPath, Match, MethodNotAllowed, normalize_path, valid_host_header
from .telemetry import RequestScope, request_id

if TYPE_CHECKING:  # pragma: no cover
    from .app import Gateway, Runtime

log = logging.getLogger("gateway")

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "templates")
WWW_AUTHENTICATE = 'Bearer realm="gateway"'

TITLES = {
    400: ("Bad request", "The request could not be understood."),
    401: ("Sign-in required", "You need to sign in to see this page."),
    403: ("Access denied", "You are signed in, but you do not have access to this page."),
    404: ("Not found", "There is nothing here."),
    405: ("Method not allowed", "This method is not accepted here."),
    413: ("Request too large", "The request body is larger than this site accepts."),
    500: ("Something went wrong", "The gateway could not handle this request."),
    502: ("Bad gateway", "The service behind this address could not be reached. Try again in a moment."),
    503: ("Service unavailable", "The service is not available right now. Try again in a moment."),
    504: ("Gateway timeout", "The service behind this address took too long to answer. Try again in a moment."),
}
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "request_too_large", 500: "server_error", 502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout",
}


_templates = template.Loader(TEMPLATE_PATH)


def render_error(request: httputil.HTTPServerRequest, status: int, request_id: str, *, description: str = "",
                 retry_url: str = "", retry_label: str = "Try again", signed_in_as: str = "",
                 sign_out_url: str = "") -> tuple[bool, bytes]:
    """The body of an error answer: a small HTML page for browsers, RFC 6750-style JSON otherwise."""
    title, message = TITLES.get(status, ("Error", "The request failed."))
    if status == 401 or not is_browser(request.headers):
        body = {"error": ERROR_CODES.get(status, "error"), "error_description": description or message}
        return False, json.dumps(body).encode()
    return True, _templates.load("error.html").generate(
        status=status, title=title, message=description or message, retry_url=retry_url,
        retry_label=retry_label, request_id=request_id, signed_in_as=signed_in_as, sign_out_url=sign_out_url,
    )


class GatewayHandler(web.RequestHandler):
    """Shared by every handler on the proxy port: the scope, and error output."""

    scope: RequestScope
    bytes_out = 0

    def initialize(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.runtime: "Runtime" = gateway.runtime  # one config for the whole request, even across a reload
        req = self.request
        fwd = forwarded.resolve(
            req.remote_ip or "", req.protocol, req.host,
            req.headers.get("X-Forwarded-For"), req.headers.get("X-Forwarded-Proto"),
            req.headers.get("X-Forwarded-Host"), self.runtime.config.server.trusted_proxies,
        )
        self.forwarded = fwd
        self.request_id = request_id(req.headers.get("X-Request-Id"))
        self.scope = RequestScope(self.request_id, fwd.client_ip, req.method or "", req.host, req.path)

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def get_template_path(self) -> str:
        return TEMPLATE_PATH

    def wants_html(self) -> bool:
        return is_browser(self.request.headers)

    def fail(self, status: int, reason: str = "", *, description: str = "", headers: Optional[dict] = None,
             retry_url: str = "", retry_label: str = "Try again", signed_in_as: str = "",
             sign_out_url: str = "") -> None:
        """Answer with a small HTML page for browsers or RFC 6750-style JSON for APIs."""
        if reason:
            self.scope.reason = reason
        self.clear()
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Request-Id", self.request_id)
        is_html, payload = render_error(
            self.request, status, self.request_id, description=description, retry_url=retry_url,
            retry_label=retry_label, signed_in_as=signed_in_as, sign_out_url=sign_out_url,
        )
        self.set_header("Content-Type", "text/html; charset=utf-8" if is_html else "application/json")
        self.bytes_out = len(payload)
        self.finish(payload if self.request.method != "HEAD" else b"")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Never a stack trace: the log has it, the client gets a plain page."""
        try:
            self.fail(status_code, "internal error" if status_code >= 500 else "")
        except Exception:  # pragma: no cover - last resort
            self.finish()

    identity: Optional[Identity] = None

    async def admit(self, *, check_body: bool = False, websocket: bool = False) -> Optional[Match]:
        """Steps 1-4 of the request path: match, (size), authenticate, authorize.

        Returns the match when the request may go on; otherwise the response
        (404, 413, 401, a login redirect, 403) has been sent and it returns None.
        """
        gw, rt, req, scope = self.gateway, self.runtime, self.request, self.scope
        # 1. match a route on the host and the normalised path
        if not valid_host_header(req.host):
            self.fail(400, "bad Host header")
            return None
        try:
            path = normalize_path(req.path)
        except BadPath as exc:
            self.fail(400, f"bad path: {exc}")
            return None
        match = rt.routes.match(req.host, path, req.method or "GET")
        if match is None:
            self.fail(404, "no route")
            return None
        if isinstance(match, MethodNotAllowed):
            self.fail(405, f"method {req.method} not allowed here",
                      headers={"Allow": ", ".join(sorted(match.allowed))})
            return None
        route = match.route
        scope.route = route.name
        if websocket and not route.websocket:
            self.fail(403, "websocket disabled on this route", description="WebSockets are not allowed here.")
            return None

        # 2. refuse an oversized body before anything reaches the upstream
        if check_body:
            limit = route.max_body_size if route.max_body_size is not None else rt.config.server.max_body_size
            length = _content_length(req.headers.get("Content-Length"))
            if length == -1:
                self.fail(400, "bad content-length")
                return None
            if limit and length is not None and length > limit:
                self.fail(413, f"body of {length} bytes over the limit of {limit}")
                return None

        # 3. authenticate and 4. authorize (public routes do neither)
        if route.auth != AUTH_PUBLIC:
            result = await rt.authn.authenticate(self, route)
            if result.error is not None:
                self.deny_token(result.error)
                return None
            if result.identity is None:
                await self.unauthenticated(route, allow_redirect=not websocket)
                return None
            self.identity = result.identity
            scope.user = result.identity.sub
            decision = authorize(route.allow, result.identity, req.method or "GET")
            if not decision.allowed:
                gw.metrics.auth_failures.labels(route.name, "forbidden").inc()
                log.info("denied %s to %s on route %s: %s", req.method, result.identity.sub, route.name, decision.reason)
                ident = result.identity
                sign_out = ""
                if ident.source == "session":
                    sign_out = "/oauth2/sign_out?" + urlencode({"rd": safe_redirect_path(req.uri)})
                self.fail(403, decision.reason, signed_in_as=ident.email or ident.preferred_username or ident.sub,
                          sign_out_url=sign_out)
                return None
        return match

    def upstream_headers(self) -> Any:
        headers = httputil.HTTPHeaders()
        for name, value in self.upstream_header_list():
            headers.add(name, value)
        return headers

    def upstream_header_list(self) -> list[tuple[str, str]]:
        """What the upstream receives: the client's end-to-end headers, then the gateway's own."""
        login = self.runtime.login
        return forwarded_request_headers(self.request.headers, self.forwarded, self.request_id, self.identity,
                                         login.cookie_name if login is not None else None)

    def deny_token(self, error: AuthError) -> None:
        """RFC 6750: a token was sent and is not acceptable."""
        route = self.scope.route or "-"
        self.gateway.metrics.auth_failures.labels(route, error.reason).inc()
        header = f'{WWW_AUTHENTICATE}, error="invalid_token", error_description="{error.description}"'
        self.fail(401, f"invalid token: {error.reason}", description=error.description,
                  headers={"WWW-Authenticate": header})
        self.scope.reason = f"invalid token: {error.reason}"

    async def unauthenticated(self, route: Any, allow_redirect: bool = True) -> None:
        self.gateway.metrics.auth_failures.labels(route.name, "unauthenticated").inc()
        login = self.runtime.login
        if (login is not None and allow_redirect and route.auth == "login" and self.wants_html()
                and self.request.method in ("GET", "HEAD")):
            return await login.begin(self, route)
        self.fail(401, "no credentials", description="a bearer token is required",
                  headers={"WWW-Authenticate": WWW_AUTHENTICATE})



@web.stream_request_body
class ProxyHandler(GatewayHandler):
    """Every request on the proxy port that is not under /oauth2."""

    SUPPORTED_METHODS = (
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
        "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    )
    exchange: Optional[Exchange] = None
    _running: Optional["asyncio.Future[None]"] = None
    _body_seen = 0
    _body_limit = 0

    async def prepare(self) -> None:
        self.gateway.metrics.in_flight.inc()
        self._counted = True
        self.gateway.active.add(self)
        match = await self.admit(check_body=True)
        if match is None:
            return
        # 5. proxy: start now so a request body streams as it arrives
        req, route = self.request, match.route
        length = _content_length(req.headers.get("Content-Length"))
        has_body = bool(length) or "chunked" in req.headers.get("Transfer-Encoding", "").lower()
        query = req.query
        self.exchange = Exchange(
            HandlerSink(self), self.gateway.clients, self.runtime.balancers[route.name],
            method=req.method or "GET",
            path_and_query=match.upstream_path + ("?" + query if query else ""),
            headers=self.upstream_header_list(),
            content_length=length if length else None,
            has_body=has_body,
            preserve_host=req.host if route.preserve_host else None,
            timeout=route.timeout,
            connect_timeout=route.connect_timeout,
        )
        if has_body:
            limit = route.max_body_size if route.max_body_size is not None else self.runtime.config.server.max_body_size
            self._body_limit = limit or 0
            self._running = asyncio.ensure_future(self.exchange.run())
            self._running.add_done_callback(retrieve_outcome)  # awaited by _proxy too

    def data_received(self, chunk: bytes) -> Any:
        if self.exchange is None or self._finished:
            return None
        self._body_seen += len(chunk)
        if self._body_limit and self._body_seen > self._body_limit:
            # A chunked body has no Content-Length to refuse up front: stop at the limit.
            self.exchange.abort()
            if not self.exchange.started:
                self.fail(413, f"body over the limit of {self._body_limit} bytes")
            else:
                self.request.connection.close()
            return None
        return self.exchange.feed(chunk)

    def cut_for_shutdown(self) -> None:
        """The shutdown grace period is over: 503 if nothing was sent yet, else close."""
        if self._finished:
            return
        self.scope.reason = "cut by shutdown"
        exchange = self.exchange
        if exchange is not None:
            exchange.abort()
        if exchange is None or not exchange.started:
            self.fail(503, "cut by shutdown", headers={"Connection": "close", "Retry-After": "1"})
        else:
            self.request.connection.close()

    async def _proxy(self, *args: Any) -> None:
        exchange = self.exchange
        if exchange is None or self._finished:
            return
        scope = self.scope
        try:
            if self._running is not None:
                exchange.end_body()
                await self._running
            else:
                await exchange.run()
        except UpstreamError as exc:
            scope.upstream = exchange.upstream
            self.gateway.metrics.upstream_errors.labels(scope.route or "-", exc.kind).inc()
            log.warning("upstream %s for route %s: %s (%s)", exc.kind, scope.route, exchange.upstream, exc.detail)
            if self._finished:  # already answered (413, shutdown)
                return
            if not exchange.started:
                return self.fail(exc.status, f"upstream {exc.kind}")
            scope.reason = f"upstream {exc.kind} mid-response"
            self.request.connection.close()
            return
        scope.upstream = exchange.upstream
        self.bytes_out = exchange.bytes_sent
        if not self._finished:
            try:
                self.finish()
            except Exception:  # the client left mid-response
                pass

    get = head = post = put = patch = delete = options = _proxy
    propfind = proppatch = mkcol = copy = move = lock = unlock = report = search = _proxy

    def on_finish(self) -> None:
        self.gateway.active.discard(self)
        if getattr(self, "_counted", False):
            self._counted = False
            self.gateway.metrics.in_flight.dec()

    def on_connection_close(self) -> None:  # type: ignore[no-redef]
        self.gateway.active.discard(self)
        if self.exchange is not None:
            self.exchange.abort()
        if getattr(self, "_counted", False):
            self._counted = False
            self.gateway.metrics.in_flight.dec()
        super().on_connection_close()


def _content_length(value: Optional[str]) -> Optional[int]:
    """Content-Length as an int; None when absent, -1 when malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return -1
    return int(value)


class NotFoundHandler(GatewayHandler):
    def prepare(self) -> None:
        self.fail(404, "no route")


# -- /oauth2/* on the proxy port ------------------------------------------------


class OAuthHandler(GatewayHandler):
    """Base for the gateway's own endpoints: never cached, login must be configured where needed."""

    def login(self) -> Any:
        login = self.runtime.login
        if login is None:
            self.fail(404, "browser login is not configured", description="Browser sign-in is not configured.")
        return login


class StartHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.login()
        if login is None:
            return
        rd = self.get_argument("rd", "/")
        route = None
        try:
            match = self.runtime.routes.match(self.request.host, normalize_path(rd.partition("?")[0]), "GET")
            route = match.route if isinstance(match, Match) and match.route.auth == "login" else None
        except BadPath:
            pass
        await login.begin(self, route, rd=rd, provider=self.get_argument("provider", None))


class CallbackHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.login()
        if login is not None:
            await login.finish(self)


class SignOutHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.runtime.login
        if login is None:
            return self.redirect(safe_redirect_path(self.get_argument("rd", "/")))
        await login.sign_out(self)

    post = get


class UserInfoHandler(OAuthHandler):
    async def get(self) -> None:
        result = await self.runtime.authn.authenticate(self, None)
        if result.identity is None:
            desc = result.error.description if result.error else "not signed in"
            header = WWW_AUTHENTICATE + (', error="invalid_token"' if result.error else "")
            return self.fail(401, "no identity", description=desc, headers={"WWW-Authenticate": header})
        ident = result.identity
        self.scope.user = ident.sub
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({
            "sub": ident.sub, "email": ident.email, "groups": list(ident.groups),
            "preferred_username": ident.preferred_username, "issuer": ident.issuer, "source": ident.source,
        }))


class ForwardAuthHandler(OAuthHandler):
    """/oauth2/auth for nginx auth_request, Traefik ForwardAuth and Caddy forward_auth."""

    async def get(self) -> None:
        req = self.request
        host = req.headers.get("X-Forwarded-Host") or req.host
        uri = req.headers.get("X-Forwarded-Uri")
        original = req.headers.get("X-Original-URL")
        if uri is None and original:
            parts = urlsplit(original)
            host = parts.netloc or host
            uri = parts.path or "/"
        method = req.headers.get("X-Forwarded-Method") or req.headers.get("X-Original-Method") or "GET"
        try:
            path = normalize_path((uri or "/").partition("?")[0])
        except BadPath as exc:
            return self.fail(403, f"forward-auth: bad path: {exc}")
        match = self.runtime.routes.match(host, path, method)
        if match is None or isinstance(match, MethodNotAllowed):
            return self.fail(403, "forward-auth: no route for this method and path")
        route = match.route
        self.scope.route = route.name
        self.scope.path = path
        if route.auth == AUTH_PUBLIC:
            self.set_status(200)
            return self.finish()
        result = await self.runtime.authn.authenticate(self, route)
        if result.identity is None:
            header = WWW_AUTHENTICATE + (', error="invalid_token"' if result.error else "")
            self.gateway.metrics.auth_failures.labels(route.name, result.error.reason if result.error else "unauthenticated").inc()
            return self.fail(401, "forward-auth: not authenticated", headers={"WWW-Authenticate": header})
        ident = result.identity
        self.scope.user = ident.sub
        decision = authorize(route.allow, ident, method)
        if not decision.allowed:
            self.gateway.metrics.auth_failures.labels(route.name, "forbidden").inc()
            return self.fail(403, decision.reason)
        self.set_status(200)
        self.set_header("X-Auth-Request-User", identity_value(ident.sub))
        if ident.email:
            self.set_header("X-Auth-Request-Email", identity_value(ident.email))
        if ident.groups:
            self.set_header("X-Auth-Request-Groups", ",".join(identity_value(g, list_item=True) for g in ident.groups))
        if ident.preferred_username:
            self.set_header("X-Auth-Request-Preferred-Username", identity_value(ident.preferred_username))
        self.set_header("Cache-Control", "no-store")
        self.finish()

    head = get


# -- admin port -----------------------------------------------------------------


class PingHandler(web.RequestHandler):
    def initialize(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("OK\n")


class ReadyHandler(PingHandler):
    async def get(self) -> None:
        problems = await self.gateway.readiness()
        self.set_header("Content-Type", "application/json")
        if problems:
            self.set_status(503)
        self.write(json.dumps({"ready": not problems, "problems": problems}))


class MetricsHandler(PingHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.gateway.metrics.exposition())


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's log_function: one access-log line and the metrics, for every handler."""
    scope = getattr(handler, "scope", None)
    gateway = getattr(handler, "gateway", None)
    if scope is None or gateway is None:
        return
    duration = time.monotonic() - scope.start
    status = handler.get_status()
    gateway.metrics.observe(scope, status, duration)
    gateway.access_log.write(scope, status, getattr(handler, "bytes_out", 0), duration)
