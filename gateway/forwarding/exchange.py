"""One request's trip to the upstream and back: the last step of the request path.

Runs after routing, authentication and authorization (``handlers`` and
``fastpath`` build it). The ``Exchange`` picks a transport by the upstream's
scheme (``native`` for http://, ``curl`` for https://), retries an idempotent
bodiless request that could not connect on the route's next upstream, writes
the answer through a ``ResponseSink`` with hop-by-hop headers dropped
(``headers.response_headers``), pauses the transport while the client reads
slower than the upstream sends, and aborts when the client leaves. Bodies
flow through in chunks both ways, never whole. A refused or reset upstream is
a 502, a timeout a 504.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Optional
from urllib.parse import urlsplit

from tornado import httputil
from tornado.httpclient import AsyncHTTPClient
from tornado.queues import Queue
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .curl import HIGH_WATER, CurlAsyncHTTPClient, CurlTransport
from .headers import response_headers
from .native import IDEMPOTENT, NativeTransport, StaleConnection, UpstreamClient
from .sinks import ResponseSink
from .transport import Request, Transport, UpstreamError

log = logging.getLogger("gateway.proxy")

MAX_CLIENTS = 1024
UNLIMITED_BODY = 1 << 62
LOW_WATER = 512 * 1024
UPLOAD_QUEUE_CHUNKS = 8


class Clients:
    """The HTTP clients every proxied request uses; created once per process."""

    def __init__(self) -> None:
        self.stream = SimpleAsyncHTTPClient(
            force_instance=True, max_clients=MAX_CLIENTS, max_body_size=UNLIMITED_BODY, max_buffer_size=HIGH_WATER
        )
        if CurlAsyncHTTPClient is not None:
            self.fast: AsyncHTTPClient = CurlAsyncHTTPClient(
                force_instance=True, max_clients=MAX_CLIENTS, max_body_size=UNLIMITED_BODY
            )
        else:  # pragma: no cover
            self.fast = self.stream

        self.native = UpstreamClient()
        self._origins: dict[str, Origin] = {}
        # upstream TLS verified under another name than the URL's host: a client that resolves that name
        self._renamed: dict[tuple, SimpleAsyncHTTPClient] = {}

    def origin(self, base: str) -> "Origin":
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = Origin.parse(base)
        return origin

    @property
    def keepalive(self) -> bool:
        return self.fast is not self.stream

    def transport(self, origin: "Origin", has_body: bool, tls: Any = None) -> Transport:
        """A new transport for one attempt at ``origin``."""
        if origin.plain:
            return NativeTransport(self.native)
        if has_body or not self.keepalive:
            stream = self.stream
            if tls is not None and tls.server_name and tls.server_name != origin.host:
                key = (tls.server_name, origin.host)
                stream = self._renamed.get(key)  # type: ignore[assignment]
                if stream is None:
                    stream = self._renamed[key] = SimpleAsyncHTTPClient(
                        force_instance=True, max_clients=MAX_CLIENTS, max_body_size=UNLIMITED_BODY,
                        max_buffer_size=HIGH_WATER, hostname_mapping={tls.server_name: origin.host})
            return CurlTransport(stream, streaming=True)
        return CurlTransport(self.fast, streaming=False)

    def close(self) -> None:
        for client in self._renamed.values():
            client.close()
        self.native.close()
        self.fast.close()
        if self.stream is not self.fast:
            self.stream.close()


class Origin(NamedTuple):
    """An upstream base URL, split once."""

    plain: bool  # http:// (the native client) rather than https://
    host: str
    port: int
    netloc: str
    path: str  # a base path the route's paths are appended to, without trailing "/"
    base: str  # the URL as configured

    @classmethod
    def parse(cls, base: str) -> "Origin":
        parts = urlsplit(base)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme == "http", host, port, parts.netloc, parts.path.rstrip("/"), base)


class Balancer:
    """Round-robin over a route's upstream URLs, starting each request at the next one."""

    def __init__(self, urls: Iterable[str], tls: Any = None):
        self.urls = tuple(urls)
        self.tls = tls  # the route's UpstreamTLS: how its https:// upstreams are verified
        self._counter = itertools.count()

    def order(self) -> "tuple[str, ...]":
        if len(self.urls) == 1:
            return self.urls
        start = next(self._counter) % len(self.urls)
        return self.urls[start:] + self.urls[:start]


class Exchange:
    """One request's trip to the upstream and back, written into a ``ResponseSink``.

    The caller calls ``feed`` for each body chunk (when the request has a
    body), then awaits ``run``; ``run`` raises UpstreamError only while
    nothing has been sent to the client, so the caller can still answer
    502/504 with a clean page.
    """

    def __init__(
        self,
        sink: ResponseSink,
        clients: Clients,
        balancer: Balancer,
        *,
        method: str,
        path_and_query: str,
        headers: list,
        content_length: Optional[int],
        has_body: bool,
        preserve_host: Optional[str],
        timeout: float,
        connect_timeout: float,
        own_cookie: Optional[str] = None,
        added_headers: tuple = (),
    ):
        self.sink = sink
        self.own_cookie = own_cookie  # the session cookie's name: upstreams may not set it
        # the gateway's own headers on the answer: Set-Cookie of a session refreshed on the way, HSTS
        self.added_headers = added_headers
        self.clients = clients
        self.balancer = balancer
        self._body_queue: Optional[Queue] = Queue(maxsize=UPLOAD_QUEUE_CHUNKS) if has_body else None
        self.request = Request(method, path_and_query, headers, content_length, has_body, self._body_queue,
                               preserve_host, timeout, connect_timeout, balancer.tls)
        self._count_body = method != "HEAD"
        self.upstream: Optional[str] = None  # the URL that answered (for the log)
        self.bytes_sent = 0
        self.started = False  # something was sent to the client (until then an error page can replace it)
        self.head_taken = False  # the upstream's head is recorded in the sink
        self._transport: Optional[Transport] = None
        self._aborted = False
        self._waiting_drain: Any = None  # the drained() future while the upstream is paused
        self._urls: Optional[tuple] = None  # the upstreams' order start_now took (each request advances it once)

    @property
    def gone(self) -> bool:
        return self._aborted or self.sink.gone

    # -- request body, fed by the caller --------------------------------------

    def feed(self, chunk: bytes) -> Awaitable[None]:
        """Queue a chunk of the request body; the returned future applies backpressure."""
        assert self._body_queue is not None
        return self._body_queue.put(chunk)

    def end_body(self) -> None:
        if self._body_queue is not None:
            self._body_queue.put(None)  # at once, or as soon as the upload queue has room

    # -- the exchange -----------------------------------------------------------

    def start_now(self, done: Callable[[Optional[BaseException]], None]) -> bool:
        """Begin a bodiless request on an idle keep-alive connection, without a Task (the common case).

        ``done`` gets None or what ``run`` would have raised. False when ``run`` must be
        awaited instead (a body, https://, no idle connection to the first upstream).
        """
        request = self.request
        urls = self._urls = self.balancer.order()
        origin = self.clients.origin(urls[0])
        if request.has_body or not origin.plain:
            return False
        transport = NativeTransport(self.clients.native)
        self.upstream, self._transport = urls[0], transport
        try:
            started = transport.send_now(origin, request, self, lambda exc: self._sent_now(exc, done))
        except UpstreamError:
            started = False  # a head that cannot be sent: run() raises it
        if not started:
            self._transport = None
        return started

    def _sent_now(self, exc: Optional[BaseException], done: Callable[[Optional[BaseException]], None]) -> None:
        if isinstance(exc, StaleConnection):  # the upstream had closed it: the awaited way retries
            asyncio.ensure_future(self._run_then(done))
            return
        done(exc if exc is not None else getattr(self.sink, "error", None))

    async def _run_then(self, done: Callable[[Optional[BaseException]], None]) -> None:
        try:
            await self.run()
        except Exception as exc:
            return done(exc)
        done(None)

    async def run(self) -> None:
        urls, self._urls = self._urls or self.balancer.order(), None  # start_now's order, if it took one
        request = self.request
        retriable = not request.has_body and request.method in IDEMPOTENT
        last: Optional[UpstreamError] = None
        for attempt, base in enumerate(urls):
            self.upstream = base
            origin = self.clients.origin(base)
            transport = self._transport = self.clients.transport(origin, request.has_body, request.tls)
            try:
                await transport.send(origin, request, self)
            except UpstreamError as exc:
                last = exc
                if self.started or not retriable or exc.kind != "connect" or attempt == len(urls) - 1:
                    raise
                log.warning("upstream %s unreachable (%s), trying the next one", base, exc.detail)
                continue
            error = getattr(self.sink, "error", None)
            if error is not None:
                raise error  # writing to the client failed
            return
        assert last is not None
        raise last

    # -- the answer, from the transport to the sink -------------------------------

    def on_head(self, status: int, reason: str, headers: list, flush: bool = True) -> None:
        """Copy the upstream's status and end-to-end headers to the client (and send them)."""
        self.head_taken = True
        sink = self.sink
        sink.start(status, reason.strip() or httputil.responses.get(status, "Unknown"),
                   response_headers(status, headers, sink.request_id, self.own_cookie)
                   + list(self.added_headers))
        if flush:  # otherwise the headers go out with the first body chunk, in one send
            self.on_body(b"")

    def on_body(self, chunk: bytes) -> Any:
        sink = self.sink
        if self._aborted or sink.gone:
            return None
        if chunk and self._count_body:
            self.bytes_sent += len(chunk)
        self.started = True
        sink.write(chunk)
        if sink.pending() > HIGH_WATER:
            if self._waiting_drain is None:
                self._pause()
            return self._waiting_drain
        return None

    def _pause(self) -> None:
        """The client is behind: stop reading the upstream until its buffer is empty."""
        transport = self._transport
        if transport is not None:
            transport.pause()
        fut = self._waiting_drain = self.sink.drained()
        if fut is not None:
            fut.add_done_callback(self._on_drained)

    def _on_drained(self, fut: Any) -> None:
        self._waiting_drain = None
        transport = self._transport
        if fut.cancelled() or fut.exception() is not None:
            self._aborted = True
            if transport is not None:
                transport.abort()
            return
        if transport is not None:
            transport.resume()

    def abort(self) -> None:
        """The client disconnected: stop feeding the upstream."""
        self._aborted = True
        if self._transport is not None:
            self._transport.abort()
        if self._body_queue is not None:
            try:
                self._body_queue.put_nowait(None)
            except Exception:
                pass
