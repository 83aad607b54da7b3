"""The proxy port's entry: every request starts here, on the bare HTTP/1.1 connection.

``GatewayApplication`` gives each request this delegate instead of Tornado's
router. It accepts and routes the request through ``pipeline`` (on the
normalised path, so ``/%6Fauth2/...`` and ``//oauth2/...`` reach the
gateway's own endpoints), then either:

* answers it here, without a ``RequestHandler``: a bodiless GET/HEAD that
  the pipeline can decide at once (a public route, a bearer token verified
  moments ago, or a refusal such as 400/404/405), or one with a bearer token
  to verify first (awaited here), proxied or refused through a
  ``ConnectionSink``; building a handler (default headers, ``_execute``,
  ETag logic) costs more than the proxying itself for those;
* or hands it, with the pipeline's route already decided, to the handler
  that needs the full machinery: ``ProxyHandler`` (bodies, cookies: sessions and
  login redirects), ``WebSocketRelay`` (upgrades) or an ``/oauth2`` endpoint.

Either way the answers come from ``pages.render`` and the log line from
``pipeline.record``: one implementation of each.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any, Optional, Union

from tornado import httputil

from . import pipeline
from .answers import Answer, Refusal
from .forwarding import ConnectionSink, Exchange, UpstreamError
from .pages import is_browser, render
from .pipeline import Accepted, Admitted, OwnEndpoint, RequestHead
from .routing import Match

log = logging.getLogger("gateway")

CLIENT_CLOSED = 499  # the access log's status of a request whose client left before any answer (nginx's)

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Gateway, Runtime


# What HTTPServerRequest checks as it is built (Tornado 6.5+); without these names it is built for every request.
_HOST_ABNF = getattr(getattr(httputil, "_ABNF", None), "host", None)
_CHECKS_LIKE_TORNADO = _HOST_ABNF is not None and hasattr(httputil, "_DEFAULT_PARSE_BODY_CONFIG")


@functools.lru_cache(maxsize=1024)  # few distinct Host headers: each checked once
def _tornado_host(host: str) -> bool:
    return _HOST_ABNF.fullmatch(host) is not None and "," not in host


def head_from(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders, connection: Any) -> RequestHead:
    """The pipeline's view of a request, refusing (``HTTPInputError``, a 400) what building an
    ``HTTPServerRequest`` refuses, without building one: a request answered here never needs it
    (its query arguments alone are parsed and deep-copied)."""
    method, uri, version = start_line
    if not _CHECKS_LIKE_TORNADO:  # pragma: no cover - a Tornado laid out otherwise
        request = httputil.HTTPServerRequest(connection=connection, start_line=start_line, headers=headers)
        return RequestHead(request.method or "GET", request.host, request.path, request.query, request.headers,
                           peer=request.remote_ip or "", protocol=request.protocol, uri=request.uri)
    host = headers.get("Host")
    if host is None:
        if version != "HTTP/1.0":
            raise httputil.HTTPInputError("Missing Host header")
        host = "127.0.0.1"  # HTTP/1.0 needs none
    if not _tornado_host(host):
        raise httputil.HTTPInputError("Invalid Host header")
    path, _, query = uri.partition("?")
    if query and query.count("&") >= httputil._DEFAULT_PARSE_BODY_CONFIG.urlencoded.max_arguments:
        raise httputil.HTTPInputError("Invalid query string: too many fields")
    context = getattr(connection, "context", None)
    return RequestHead(method or "GET", host, path, query, headers, peer=getattr(context, "remote_ip", None) or "",
                       protocol=getattr(context, "protocol", "http"), uri=uri)


class HeadWatch:
    """Keeps ``server.idle_timeout`` and ``server.header_timeout`` apart, for every connection at once.

    A connection waiting for a request head is registered here (a set add, no
    timer of its own: the hot path pays almost nothing). One sweep, every quarter
    of the shorter timeout, closes those with no byte after ``idle_timeout`` and
    those whose head, begun (first byte seen by a sweep), is not complete after
    ``header_timeout``.
    """

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway
        self.waiting: dict = {}  # delegate -> [since, first byte seen at]
        self.timer: Optional[asyncio.TimerHandle] = None

    def add(self, delegate: "FastDelegate") -> None:
        loop = asyncio.get_running_loop()
        self.waiting[delegate] = [loop.time(), None]
        if self.timer is None:
            self.timer = loop.call_later(self._interval(), self._sweep)

    def discard(self, delegate: "FastDelegate") -> None:
        self.waiting.pop(delegate, None)

    def _interval(self) -> float:
        server = self.gateway.runtime.config.server
        return max(0.05, min(server.idle_timeout, server.header_timeout) / 4)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        server = self.gateway.runtime.config.server
        for delegate, times in list(self.waiting.items()):
            stream = getattr(delegate.connection, "stream", None)
            if stream is None or stream.closed():
                del self.waiting[delegate]
                continue
            if times[1] is None and getattr(stream, "_read_buffer_size", 0):
                times[1] = now
            if (times[1] is None and now - times[0] >= server.idle_timeout) or (
                    times[1] is not None and now - times[1] >= server.header_timeout):
                del self.waiting[delegate]
                log.debug("closing a connection: server.%s", "idle_timeout" if times[1] is None else "header_timeout")
                delegate.connection.close()
        self.timer = loop.call_later(self._interval(), self._sweep) if self.waiting else None


class FastDelegate(httputil.HTTPMessageDelegate):
    """One request: answered on the bare connection, or handed to the handler that takes it."""

    exchange: Optional[Exchange] = None
    running = False
    nbytes = 0
    handler: Any = None  # the RequestHandler a request was handed to (it registers itself)
    _body_timer: Optional[asyncio.TimerHandle] = None
    _body_seen_at = 0.0
    client_gone = False  # the client closed the connection while its request was being proxied
    _deferred: Optional[tuple] = None  # a refusal decided at the head, answered at the message's end

    def __init__(self, app: Any, gateway: "Gateway", server_conn: object, request_conn: httputil.HTTPConnection):
        self.app = app
        self.gateway = gateway
        self.server_conn = server_conn
        self.connection = request_conn
        self.fallback: Optional[httputil.HTTPMessageDelegate] = None
        self.head_watch = app.head_watch
        if not getattr(request_conn, "times_itself", False):  # Tornado's HTTP1Connection: watched here
            self.head_watch.add(self)

    def headers_received(
        self, start_line: Union[httputil.RequestStartLine, httputil.ResponseStartLine], headers: httputil.HTTPHeaders
    ) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.head_watch.discard(self)
        head = self.head = head_from(start_line, headers, self.connection)
        runtime = self.gateway.runtime
        acc = pipeline.accept(head, runtime)
        found = pipeline.route(acc, runtime)
        fast = (head.method in pipeline.BODILESS and "Content-Length" not in headers
                and "Transfer-Encoding" not in headers and "Upgrade" not in headers)
        if fast and not isinstance(found, OwnEndpoint):
            outcome = pipeline.admit_now(acc, runtime, found) if isinstance(found, Match) else found
            if isinstance(outcome, Admitted):
                self._proxy(acc, runtime, outcome)
                return None
            if outcome is None and "Authorization" in headers and "Cookie" not in headers:
                # A bearer token to verify (a cache miss): awaited here, then answered like any other,
                # rather than through a RequestHandler (which costs more than the verification).
                self._admit_later(acc, runtime, found)
                return None
            if outcome is not None:
                if getattr(self.connection, "times_itself", False):
                    self._refuse(acc, runtime, outcome)  # type: ignore[arg-type]
                else:
                    # Tornado's HTTP1Connection closes after an answer finished before the request's end
                    # was read (headers_received comes first): answer in finish(), keeping the connection.
                    self._deferred = (acc, runtime, outcome)
                return None
        if "Content-Length" in headers or "Transfer-Encoding" in headers:
            self._watch_body(runtime.config.server.body_timeout)
        return self._hand_over(start_line, headers, acc, found)

    def _hand_over(self, start_line: Any, headers: Any, acc: Accepted, found: Any) -> Any:
        request = httputil.HTTPServerRequest(
            connection=self.connection, server_connection=self.server_conn, start_line=start_line, headers=headers,
        )
        handler = self.app.handler_for(found, headers.get("Upgrade", "").lower() == "websocket")
        kwargs = {"gateway": self.gateway, "accepted": acc, "found": found, "entry": self}
        self.fallback = self.app.get_handler_delegate(request, handler, kwargs)
        return self.fallback.headers_received(start_line, headers)

    # -- answered here ------------------------------------------------------------

    def _refuse(self, acc: Accepted, runtime: "Runtime", answer: Answer, begun: bool = False) -> None:
        self.acc = acc
        self.sink = ConnectionSink(self.connection, acc.request_id, self.head.method)
        if not begun:
            self._begin()
        self._answer(answer, runtime)
        self._done(answer.status)

    def _answer(self, answer: Answer, runtime: "Runtime") -> None:
        if getattr(answer, "reason", ""):
            self.acc.scope.reason = answer.reason  # type: ignore[union-attr]
        rendered = render(answer, browser=is_browser(self.head.headers), request_id=self.acc.request_id,
                          secure=runtime.secure_cookies, domain=runtime.cookie_domain,
                          added=runtime.added_headers)
        sink = self.sink
        sink.start(rendered.status, rendered.reason, rendered.headers)
        sink.write(rendered.body)
        sink.finish()
        self.nbytes = len(rendered.body)

    def _admit_later(self, acc: Accepted, runtime: "Runtime", found: Any) -> None:
        self.acc = acc
        self.runtime = runtime
        self._begin()  # in flight (and drained on shutdown) while its token is verified
        asyncio.ensure_future(self._admit(acc, runtime, found))

    async def _admit(self, acc: Accepted, runtime: "Runtime", found: Any) -> None:
        try:
            outcome = await pipeline.admit(acc, runtime, found=found)
        except Exception as exc:  # a bug: never a traceback to the client
            log.error("admitting a request failed: %s", type(exc).__name__, exc_info=True)
            acc.scope.reason = f"internal error: {type(exc).__name__}"
            outcome = Refusal(500, acc.scope.reason)
        if not self.running:
            return  # cut by shutdown meanwhile
        if isinstance(outcome, Admitted):
            return self._proxy(acc, runtime, outcome, begun=True)
        self._refuse(acc, runtime, outcome, begun=True)  # type: ignore[arg-type]

    def _proxy(self, acc: Accepted, runtime: "Runtime", admitted: Admitted, begun: bool = False) -> None:
        self.acc = acc
        self.runtime = runtime
        self.sink = ConnectionSink(self.connection, acc.request_id, self.head.method)
        self.exchange = pipeline.exchange_for(admitted, self.sink, self.gateway.clients, runtime)
        if not begun:
            self._begin()
        # On the loop's next turn: the requests read together all go upstream together and their
        # answers come back in one batch too (starting at once measured 20% more CPU per request).
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        assert self.exchange is not None
        if not self.running:
            return  # shutdown cut it before it began
        if self.client_gone:  # the client left while its token was verified: nothing to send upstream
            self.sink.close()
            return self._done(CLIENT_CLOSED)
        if not self.exchange.start_now(self._settle):
            asyncio.ensure_future(self._run())

    def _begin(self) -> None:
        self.running = True
        self.gateway.metrics.request_started()
        self.gateway.active.add(self)

    async def _run(self) -> None:
        assert self.exchange is not None
        try:
            await self.exchange.run()
        except Exception as exc:
            return self._settle(exc)
        self._settle(None)

    def _settle(self, error: Optional[BaseException]) -> None:
        """The exchange is over (``error`` as ``Exchange.run`` raised it): finish the answer and record it."""
        exchange, sink, scope = self.exchange, self.sink, self.acc.scope
        assert exchange is not None
        if self.client_gone and error is not None:
            # Its upstream exchange was cut because the client left: not the upstream's failure
            # (no warning, no gateway_upstream_errors), logged as nginx does, 499.
            sink.close()
            return self._done(sink.status if exchange.started else CLIENT_CLOSED)
        if isinstance(error, UpstreamError):
            answer = pipeline.upstream_failed(self.gateway, scope, error, exchange.upstream, exchange.started)
            if answer is not None and self.running:
                self._answer(answer, self.runtime)
                return self._done(answer.status)
            sink.close()
            return self._done(sink.status)
        if error is not None:  # the client left while writing, or a bug: never a traceback
            scope.reason = f"internal error: {type(error).__name__}"
            sink.close()
            return self._done(sink.status if exchange.started else 500)
        scope.upstream = exchange.upstream
        self.nbytes = exchange.bytes_sent
        if self.running:
            sink.finish()
        self._done(sink.status)

    def _done(self, status: int) -> None:
        if not self.running:
            return
        self.running = False
        self.gateway.active.discard(self)
        self.gateway.metrics.request_ended()
        pipeline.record(self.gateway, self.acc.scope, status, self.nbytes)

    def cut_for_shutdown(self) -> None:
        """Shutdown grace is over: 503 if nothing was sent yet, else close."""
        exchange = self.exchange
        if exchange is None or not self.running:
            return
        self.acc.scope.reason = "cut by shutdown"
        exchange.abort()
        if not exchange.started:
            self._answer(pipeline.SHUTDOWN, self.runtime)
            return self._done(503)
        self.sink.close()
        self._done(self.sink.status)

    # -- a request body that stops arriving (server.body_timeout) -----------------------

    def _watch_body(self, timeout: float) -> None:
        """Time the longest pause between body bytes; one timer per request, re-armed only when it fires."""
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._body_timeout = timeout
        self._body_seen_at = loop.time()
        self._body_timer = loop.call_later(timeout, self._check_body)

    def _check_body(self) -> None:
        loop = asyncio.get_running_loop()
        paused = loop.time() - self._body_seen_at
        if paused < self._body_timeout:
            self._body_timer = loop.call_later(self._body_timeout - paused, self._check_body)
            return
        self._body_timer = None
        handler = self.handler
        if handler is not None:
            handler.body_stalled(self._body_timeout)  # 408 and close, or close if the answer has begun
        else:
            self.connection.close()

    def _stop_watching(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # -- the rest of the message ---------------------------------------------------

    def data_received(self, chunk: bytes) -> Any:
        if self._body_timer is not None:
            self._body_seen_at = asyncio.get_running_loop().time()
        if self.fallback is not None:
            return self.fallback.data_received(chunk)
        return None  # a bodiless request has none

    def finish(self) -> None:
        self._stop_watching()
        if self.fallback is not None:
            self.fallback.finish()
        elif self._deferred is not None:
            deferred, self._deferred = self._deferred, None
            self._refuse(*deferred)

    def on_connection_close(self) -> None:
        self.head_watch.discard(self)
        self._stop_watching()
        if self.fallback is not None:
            self.fallback.on_connection_close()
            return
        if self.running:  # proxied, or its token still being verified
            self.client_gone = True
            self.acc.scope.reason = self.acc.scope.reason or "client closed the connection"
            if self.exchange is not None:
                self.exchange.abort()
