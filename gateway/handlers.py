"""Tornado RequestHandlers for what the fast path hands over: bodies, sessions, /oauth2.

Thin adapters: the fast delegate has already accepted and routed the request
through ``pipeline`` and passes the result in; each handler asks the
pipeline (or browser login) what to do and applies the answer it returns
with ``answer``, which renders through ``pages`` like the fast path does.

``ProxyHandler`` streams a request body to the upstream as it arrives; the
``/oauth2`` handlers are the gateway's own endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs

from tornado import web

from . import pipeline
from .answers import Answer, Json, Redirect, Refusal
from .forwarding import Exchange, HandlerSink, UpstreamError, retrieve_outcome
from .pages import is_browser, render
from .pipeline import Accepted, Admitted
from .redirects import safe_redirect_path
from .routing import BadPath, Match, normalize_path

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Gateway, Runtime

log = logging.getLogger("gateway")


class GatewayHandler(web.RequestHandler):
    """Shared by every handler on the proxy port: the pipeline's scope, and answers."""

    bytes_out = 0

    def initialize(self, gateway: "Gateway", accepted: Accepted, found: Any = None, entry: Any = None) -> None:
        if entry is not None:
            entry.handler = self  # the connection's entry times a stalled body and tells us (body_stalled)
        self.gateway = gateway
        self.runtime: "Runtime" = gateway.runtime  # one config for the whole request, even across a reload
        self.accepted = accepted
        self.found = found
        self.scope = accepted.scope
        self.request_id = accepted.request_id

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def compute_etag(self) -> Optional[str]:
        return None  # the gateway's own answers are never cached, proxied ones carry the upstream's

    def answer(self, answer: Answer) -> None:
        """Apply what the pipeline or login decided: status, headers, cookies and body."""
        reason = getattr(answer, "reason", "")
        if reason:
            self.scope.reason = reason
        rendered = render(answer, browser=is_browser(self.request.headers), request_id=self.request_id,
                          secure=self.runtime.secure_cookies, domain=self.runtime.cookie_domain,
                          added=self.runtime.added_headers)
        self.clear()
        self.set_status(rendered.status, rendered.reason)
        seen = set()
        for name, value in rendered.headers:
            if name == "Content-Length":
                continue  # finish() sets it (and none for HEAD bodies it does not send)
            if name in seen:
                self.add_header(name, value)
            else:
                seen.add(name)
                self.set_header(name, value)  # over Tornado's defaults (Content-Type)
        self.bytes_out = len(rendered.body)
        self.finish(rendered.body if self.request.method != "HEAD" else b"")

    def body_stalled(self, timeout: float) -> None:
        """The client stopped sending its body (server.body_timeout): 408 and close."""
        log.info("request body stalled for %gs from %s: closing", timeout, self.scope.client_ip)
        if self._finished:
            self.request.connection.close()
            return
        self.answer(Refusal(408, f"request body stalled for {timeout:g}s", headers=(("Connection", "close"),)))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Never a stack trace: the log has it, the client gets a plain page."""
        try:
            self.answer(Refusal(status_code, "internal error" if status_code >= 500 else ""))
        except Exception:  # pragma: no cover - last resort
            self.finish()

    def data_received(self, chunk: bytes) -> Any:
        """The gateway's own endpoints take no body: it is read and dropped, never kept."""
        return None


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's log_function: the pipeline's record step, for every handler on the proxy port."""
    scope = getattr(handler, "scope", None)
    gateway = getattr(handler, "gateway", None)
    if scope is not None and gateway is not None:
        pipeline.record(gateway, scope, handler.get_status(), getattr(handler, "bytes_out", 0))


@web.stream_request_body
class ProxyHandler(GatewayHandler):
    """A proxied request that needs more than the fast path: a body, a session or a login redirect."""

    SUPPORTED_METHODS = (
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
        "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    )
    exchange: Optional[Exchange] = None
    _running: Optional["asyncio.Future[None]"] = None
    _counted = False
    _body_seen = 0
    _body_limit = 0

    async def prepare(self) -> None:
        self.gateway.metrics.request_started()
        self._counted = True
        self.gateway.active.add(self)
        outcome = await pipeline.admit(self.accepted, self.runtime, found=self.found)
        if not isinstance(outcome, Admitted):
            return self.answer(outcome)  # type: ignore[arg-type]
        plan = outcome.plan
        self.exchange = pipeline.exchange_for(outcome, HandlerSink(self), self.gateway.clients, self.runtime)
        if plan.has_body:  # start now so the body streams upstream as it arrives
            self._body_limit = pipeline.body_limit(outcome.route, self.runtime)
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
                self.answer(Refusal(413, f"body over the limit of {self._body_limit} bytes"))
            else:
                self.request.connection.close()
            return None
        return self.exchange.feed(chunk)

    def body_stalled(self, timeout: float) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.abort()
            if exchange.started:  # the upstream's answer is on its way: all we can do is cut it
                self.scope.reason = f"request body stalled for {timeout:g}s"
                self.request.connection.close()
                return
        super().body_stalled(timeout)

    def cut_for_shutdown(self) -> None:
        """The shutdown grace period is over: 503 if nothing was sent yet, else close."""
        if self._finished:
            return
        self.scope.reason = "cut by shutdown"
        exchange = self.exchange
        if exchange is not None:
            exchange.abort()
        if exchange is None or not exchange.started:
            self.answer(pipeline.SHUTDOWN)
        else:
            self.request.connection.close()

    async def _proxy(self, *args: Any) -> None:
        exchange = self.exchange
        if exchange is None or self._finished:
            return
        try:
            if self._running is not None:
                exchange.end_body()
                await self._running
            else:
                await exchange.run()
        except UpstreamError as exc:
            answer = pipeline.upstream_failed(self.gateway, self.scope, exc, exchange.upstream, exchange.started)
            if self._finished:  # already answered (413, shutdown)
                return
            if answer is not None:
                return self.answer(answer)
            self.request.connection.close()
            return
        self.scope.upstream = exchange.upstream
        self.bytes_out = exchange.bytes_sent
        if not self._finished:
            try:
                self.finish()
            except Exception:  # the client left mid-response
                pass

    get = head = post = put = patch = delete = options = _proxy
    propfind = proppatch = mkcol = copy = move = lock = unlock = report = search = _proxy

    def _uncount(self) -> None:
        self.gateway.active.discard(self)
        if self._counted:
            self._counted = False
            self.gateway.metrics.request_ended()

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()
        if self.exchange is not None:
            self.exchange.abort()
        super().on_connection_close()


@web.stream_request_body
class AnswerHandler(GatewayHandler):
    """The route step already answered (400, 404, 405, back from sign-out): send that, whatever the method."""

    SUPPORTED_METHODS = ProxyHandler.SUPPORTED_METHODS

    def prepare(self) -> None:
        self.answer(self.found)


# -- /oauth2/* on the proxy port ------------------------------------------------


@web.stream_request_body
class OAuthHandler(GatewayHandler):
    """Base for the gateway's own endpoints: login must be configured where it is needed.

    They take no body: one is read and dropped as it arrives (never buffered), and
    ``server.max_body_size`` holds for them as for every route.
    """

    _body_seen = 0

    def prepare(self) -> None:
        refusal = pipeline.check_length(self.request.headers, self.runtime.config.server.max_body_size)
        if refusal is not None:
            self.answer(refusal)

    def data_received(self, chunk: bytes) -> Any:
        self._body_seen += len(chunk)
        limit = self.runtime.config.server.max_body_size
        if limit and self._body_seen > limit and not self._finished:  # a chunked body: stop at the limit
            self.answer(Refusal(413, f"body over the limit of {limit} bytes", headers=(("Connection", "close"),)))
        return None

    def login(self) -> Any:
        login = self.runtime.login
        if login is None:
            self.answer(Refusal(404, "browser login is not configured",
                                description="Browser sign-in is not configured."))
        return login


class StartHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.login()
        if login is None:
            return
        rd = self.get_argument("rd", "/")
        # Sent on from a login route on another host (a handoff): that host's routes apply.
        handoff_host, binding = self.get_argument("host", None), self.get_argument("b", None)
        handoff = (handoff_host, binding) if handoff_host and binding else None
        route = None
        try:
            match = self.runtime.routes.match(handoff_host if handoff else self.request.host,
                                              normalize_path(rd.partition("?")[0]), "GET")
            route = match.route if isinstance(match, Match) and match.route.auth == "login" else None
        except BadPath:
            pass
        cookies = self.accepted.head.cookies
        self.answer(await login.begin(route, cookies, rd=rd, provider=self.get_argument("provider", None),
                                      host=self.request.host, handoff=handoff))


class CallbackHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.login()
        if login is None:
            return
        args = {key: values[0].decode("utf-8", "replace") for key, values in self.request.query_arguments.items()
                if values}
        answer, user = await login.finish(args, self.accepted.head.cookies)
        if user is not None:
            self.scope.user = user
        self.answer(answer)


class HandoffHandler(OAuthHandler):
    """The end of a sign-in that started on another host than public_url's (see LoginManager.begin)."""

    async def get(self) -> None:
        login = self.login()
        if login is None:
            return
        answer, user = await login.take_handoff({"code": self.get_argument("code", "")},
                                                self.accepted.head.cookies, self.request.host)
        if user is not None:
            self.scope.user = user
        self.answer(answer)


class SignOutHandler(OAuthHandler):
    async def get(self) -> None:
        login = self.runtime.login
        rd = self.get_argument("rd", None)
        if login is None:
            return self.answer(Redirect(safe_redirect_path(rd)))
        answer, session = await login.sign_out(rd, self.accepted.head.cookies)
        if session is not None:  # its WebSockets close as the revocation reaches every worker and instance
            self.scope.user = session.sub
        self.answer(answer)

    post = get


class UserInfoHandler(OAuthHandler):
    async def get(self) -> None:
        self.answer(await pipeline.identify(self.accepted, self.runtime))


class JWKSHandler(OAuthHandler):
    """/oauth2/jwks: the public keys of the gateway's own tokens and assertions."""

    def get(self) -> None:
        self.answer(pipeline.jwks(self.runtime))

    head = get


class FormHandler(OAuthHandler):
    """An endpoint that takes a small ``application/x-www-form-urlencoded`` POST body (kept up to MAX_FORM)."""

    MAX_FORM = 4096
    _form = b""

    def data_received(self, chunk: bytes) -> Any:
        if self.request.method == "POST" and len(self._form) + len(chunk) <= self.MAX_FORM:
            self._form += chunk
            return None
        self._body_seen = self.MAX_FORM + 1  # too large: refused by form()
        return None

    def form(self) -> Optional[dict]:
        """The form's fields, or None after answering why it cannot be read."""
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if self._body_seen > self.MAX_FORM:
            self.answer(Json({"error": "invalid_request", "error_description": "form too large"}, status=413))
            return None
        if ctype != "application/x-www-form-urlencoded":
            self.answer(Json({"error": "invalid_request", "error_description":
                              "send the form as application/x-www-form-urlencoded"}, status=400))
            return None
        fields = parse_qs(self._form.decode("utf-8", "replace"), keep_blank_values=True)
        if any(len(v) > 1 for v in fields.values()):
            self.answer(Json({"error": "invalid_request", "error_description": "repeated form field"}, status=400))
            return None
        return {k: v[0] for k, v in fields.items()}


class TokenHandler(FormHandler):
    """/oauth2/token: GET shows a signed-in person a token; POST redeems a CLI's code with its verifier."""

    async def get(self) -> None:
        self.answer(await pipeline.token_page(self.accepted, self.runtime))

    async def post(self) -> None:
        tokens = self.runtime.script_tokens
        if tokens is None:
            return self.answer(Refusal(404, "browser login is not configured"))
        fields = self.form()
        if fields is not None:
            self.answer(await tokens.cli_exchange(fields))


class BackchannelLogoutHandler(FormHandler):
    """/oauth2/backchannel_logout: the provider ends a session (OpenID Connect Back-Channel Logout 1.0)."""

    MAX_FORM = 16 * 1024

    async def post(self) -> None:
        logouts = self.runtime.logouts
        if logouts is None:
            return self.answer(Refusal(404, "browser login is not configured"))
        fields = self.form()
        if fields is not None:
            self.answer(await logouts.backchannel(fields))


class CLIHandler(OAuthHandler):
    """/oauth2/cli: the browser half of ``gateway login`` (RFC 8252 loopback redirect)."""

    async def get(self) -> None:
        args = {key: values[0].decode("utf-8", "replace") for key, values in self.request.query_arguments.items()
                if len(values) == 1}
        self.answer(await pipeline.cli_start(self.accepted, self.runtime, args))


class ForwardAuthHandler(OAuthHandler):
    """/oauth2/auth for nginx auth_request, Traefik ForwardAuth and Caddy forward_auth."""

    async def get(self) -> None:
        self.answer(await pipeline.forward_auth(self.accepted, self.runtime))

    head = get


OWN_HANDLERS = {
    "start": StartHandler, "callback": CallbackHandler, "handoff": HandoffHandler, "sign_out": SignOutHandler,
    "userinfo": UserInfoHandler, "auth": ForwardAuthHandler, "jwks": JWKSHandler, "token": TokenHandler,
    "cli": CLIHandler, "backchannel_logout": BackchannelLogoutHandler,
}
