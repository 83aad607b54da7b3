"""The native transport: plain-http upstreams over pooled keep-alive HTTP/1.1 connections.

``Exchange`` uses it for every ``http://`` upstream (``https://`` ones go
through ``curl``). It exists because per-request work is what limits a proxy
written in Python: Tornado's clients build an ``HTTPRequest``, copy headers
several times and configure libcurl for every request. Here a request is one
formatted head written to a pooled ``asyncio`` connection, and the response
is parsed by httptools (llhttp, a strict C parser) straight from the socket
into callbacks: ``on_head(status, reason, headers)`` once, then
``on_body(chunk)`` per de-chunked chunk, with ``pause()``/``resume()`` so a
slow client stops the upstream read (flow control).

Framing follows RFC 9112: no body for HEAD, 1xx, 204 and 304; chunked;
Content-Length; otherwise until the connection closes. A connection goes back
to the pool only after a complete, well-framed response that did not say
``Connection: close``; a malformed one fails the exchange and is closed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Awaitable, Callable, Deque, Optional

import httptools

from .transport import Receiver, Request, UpstreamError

MAX_HEAD = 64 * 1024
MAX_IDLE_PER_ORIGIN = 1024
IDLE_TIMEOUT = 30.0

HeadCallback = Callable[[int, str, list], None]
BodyCallback = Callable[[bytes], None]


class StaleConnection(Exception):
    """A pooled connection the upstream had closed: nothing was answered, the request may be sent again."""


class UpstreamProtocolError(Exception):
    """The upstream answered something that is not HTTP/1.x; ``kind`` as in UpstreamError."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Connection(asyncio.Protocol):
    """One TCP connection; handles one exchange at a time.

    Each response is parsed by a fresh ``httptools.HttpResponseParser`` (llhttp,
    strict): a malformed status line, chunk size or Content-Length, or both
    Content-Length and Transfer-Encoding, fail the exchange and close the
    connection. The parser's callbacks only record and deliver; whether the
    connection goes back to the pool is decided after each ``feed_data``.
    """

    def __init__(self, pool: "OriginPool"):
        self.pool = pool
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.idle_since = 0.0
        self.used = 0
        self._reset_exchange()
        self._write_paused = False
        self._drain_waiter: Optional[asyncio.Future] = None

    def _reset_exchange(self) -> None:
        self._done: Optional[asyncio.Future] = None
        self._on_head: Optional[HeadCallback] = None
        self._on_body: Optional[BodyCallback] = None
        self._parser: Any = None
        self._head_method = False
        self._reason = b""
        self._headers: list = []
        self._head_bytes = 0
        self._head_done = False  # the final head was parsed
        self._interim = False  # parsing a 1xx response, which is skipped
        self._complete = False  # the final response is over (decided by us for HEAD)
        self._extra = False  # bytes after the end of the response: never reuse
        self._announced = False  # the head announced a body (Transfer-Encoding, non-zero Content-Length)
        self._framed = False  # Content-Length or Transfer-Encoding present
        self._until_close = False  # the body ends when the connection does
        self._keep_alive = False
        self._error: Optional[UpstreamProtocolError] = None
        self.request_complete = True  # False while a request body is still being written
        self._got_bytes = False

    def dropped_unanswered(self, exc: "UpstreamProtocolError") -> bool:
        """The connection was reset before a byte of the answer: a pooled one the upstream had closed."""
        return exc.kind == "reset" and not self._got_bytes

    @property
    def failed(self) -> bool:
        """The current answer was malformed."""
        return self._error is not None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self._parser = None  # no cycle through it once the connection is gone
        self.pool._forget(self)
        if self._until_close and not self._complete and self._error is None:
            self._complete = True
            self._finish(reuse=False)
        elif self._done is not None and not self._done.done():
            self._done.set_exception(UpstreamProtocolError("reset", "upstream closed the connection"
                                                           + (f" ({exc})" if exc else "")))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("upstream closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        done = self._done
        if done is None or done.done() or self._parser is None:
            # Bytes while idle: the upstream is not speaking HTTP to us; never reuse it.
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("upstream switched protocols unasked")
        except httptools.HttpParserError as exc:
            self._fail(f"upstream sent a malformed response ({exc})")
        if self._error is not None:
            if not done.done():
                done.set_exception(self._error)
            self.close()
        elif self._complete:
            self._finish(reuse=self._keep_alive and not self._extra)
        elif not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail("upstream response head too large")
                done.set_exception(self._error)  # type: ignore[arg-type]
                self.close()

    # -- httptools callbacks ----------------------------------------------------

    def _fail(self, detail: str) -> None:
        if self._error is None:
            self._error = UpstreamProtocolError("reset", detail)

    def on_message_begin(self) -> None:
        if self._complete:
            self._extra = True  # a second response on one request
        self._reason = b""
        self._headers = []

    def on_status(self, data: bytes) -> None:
        self._reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        value = value.strip()
        if lower == b"content-length":
            self._framed = True
            self._announced = self._announced or value != b"0"
        elif lower == b"transfer-encoding":
            self._framed = self._announced = True
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        parser = self._parser
        code = parser.get_status_code()
        if 100 <= code < 200:
            if code == 101:
                self._fail("upstream switched protocols unasked")
            self._interim = True
            self._framed = self._announced = False
            return
        self._head_done = True
        self._keep_alive = parser.should_keep_alive()
        headers, self._headers = self._headers, []
        if self._on_head is not None:
            self._on_head(code, self._reason.decode("latin-1"), headers)
        if self._head_method or code in (204, 304):
            # A HEAD answer announcing a body could be followed by one from a sloppy upstream:
            # never let such bytes become the next client's answer.
            self._complete = True
            self._extra = self._extra or self._announced
        elif not self._framed:
            self._until_close = True

    def on_body(self, data: bytes) -> None:
        if self._complete:
            self._extra = True
        elif self._on_body is not None and data:
            self._on_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True

    # -- the exchange -----------------------------------------------------------

    def start(self, head: bytes, method: str, on_head: HeadCallback, on_body: BodyCallback) -> asyncio.Future:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset_exchange()
        self._done = loop.create_future()
        self._on_head, self._on_body = on_head, on_body
        self._head_method = method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self.used += 1
        self.transport.write(head)
        return self._done

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def pause(self) -> None:
        if self.transport is not None and not self.closed and self.transport.is_reading():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed and not self.transport.is_reading():
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, reuse: bool) -> None:
        done = self._done
        self._on_head = self._on_body = None
        self._parser = None  # one parser per response (and no cycle through it)
        # An answer that came before the whole request body was written leaves the rest of
        # that body on its way: such a connection must never carry another request.
        if reuse and not self.closed and self.request_complete:
            self.pool._release(self)
        else:
            self.close()
        if done is not None and not done.done():
            done.set_result(None)


class OriginPool:
    """Idle keep-alive connections to one (host, port)."""

    def __init__(self, host: str, port: int, max_idle: int = MAX_IDLE_PER_ORIGIN):
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: Deque[_Connection] = collections.deque()

    async def connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port), timeout
            )
        except asyncio.TimeoutError:
            raise UpstreamProtocolError("timeout", f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise UpstreamProtocolError("connect", f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock = protocol.transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        return protocol  # type: ignore[return-value]

    def take_idle(self) -> Optional[_Connection]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.resume()  # it may have been paused for a slow client on its last chunk
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class UpstreamClient:
    """Pools per origin; one instance per process, shared by every route and reload."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], OriginPool] = {}

    def pool(self, host: str, port: int) -> OriginPool:
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = OriginPool(host, port)
        return pool

    async def fetch(
        self,
        host: str,
        port: int,
        head: bytes,
        method: str,
        on_head: HeadCallback,
        on_body: BodyCallback,
        *,
        connect_timeout: float,
        deadline: float,
        body: Optional[Callable[["_Connection"], Awaitable[None]]] = None,
        retry_stale: bool = True,
        on_connection: Optional[Callable[["_Connection"], None]] = None,
    ) -> None:
        """Send ``head`` (and stream ``body``), deliver the response to the callbacks.

        A reused connection that the upstream had already closed fails before
        any response byte; such a request is retried once on a new connection
        when ``retry_stale`` (idempotent and bodiless) allows it.
        """
        loop = asyncio.get_running_loop()
        pool = self.pool(host, port)
        conn = pool.take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect(pool, connect_timeout, deadline)
        if on_connection is not None:
            on_connection(conn)
        try:
            await self._exchange(conn, head, method, on_head, on_body, body)
        except UpstreamProtocolError as exc:
            if not (reused and retry_stale and conn.dropped_unanswered(exc) and loop.time() < deadline):
                raise
            conn = await self._connect(pool, connect_timeout, deadline)
            if on_connection is not None:
                on_connection(conn)
            await self._exchange(conn, head, method, on_head, on_body, body)

    @staticmethod
    async def _connect(pool: "OriginPool", connect_timeout: float, deadline: float) -> "_Connection":
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamProtocolError("timeout", "the route's timeout passed before connecting")
        conn = await pool.connect(min(connect_timeout, remaining))
        if loop.time() >= deadline:
            conn.close()
            raise UpstreamProtocolError("timeout", "the route's timeout passed while connecting")
        return conn

    @staticmethod
    async def _exchange(conn: "_Connection", head: bytes, method: str, on_head: HeadCallback,
                        on_body: BodyCallback, body: Optional[Callable[["_Connection"], Awaitable[None]]]) -> None:
        if conn.closed:
            raise UpstreamProtocolError("reset", "upstream connection closed before the request")
        done = conn.start(head, method, on_head, on_body)
        if body is not None:
            conn.request_complete = False
            await body(conn)
            conn.request_complete = True
        await done

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def format_head(method: str, target: str, headers: list) -> bytes:
    """The request line and header block, refusing anything that could split a line."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    text = "\r\n".join(lines)
    # Exactly the line breaks joined in: one CR or LF more (a value's own CRLF included) would split a line.
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise UpstreamProtocolError("reset", "refusing a request head with a control character in it")
    return (text + "\r\n\r\n").encode("latin-1", "replace")


def format_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class NativeTransport:
    """One attempt at a plain-http upstream through the shared ``UpstreamClient``."""

    def __init__(self, client: UpstreamClient):
        self.client = client
        self._conn: Optional[_Connection] = None  # the connection in use
        self._receiver: Optional[Receiver] = None
        self._paused = False
        self._timed_out = False
        self._head_flush_pending = False

    @staticmethod
    def _head(origin: Any, request: Request) -> tuple[bytes, bool]:
        """The request head for ``origin``, and whether the body goes chunked."""
        headers = [("Host", request.preserve_host or origin.netloc)]
        headers.extend(request.headers)
        chunked = False
        if request.has_body:
            if request.content_length is not None:
                headers.append(("Content-Length", str(request.content_length)))
            else:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = True
        try:
            return format_head(request.method, origin.path + request.path_and_query, headers), chunked
        except UpstreamProtocolError as exc:
            raise UpstreamError("reset", exc.detail) from None

    def _failure(self, exc: Optional[BaseException], request: Request) -> Optional[BaseException]:
        """What a failed attempt raises: UpstreamError (a timeout once the route's timer fired)."""
        if self._timed_out:
            return UpstreamError("timeout", f"no complete answer within {request.timeout:g}s")
        if isinstance(exc, UpstreamProtocolError):
            return UpstreamError(exc.kind, exc.detail)
        if isinstance(exc, (ConnectionError, OSError)):
            return UpstreamError("reset", str(exc))
        return exc

    def send_now(self, origin: Any, request: Request, receiver: Receiver,
                 done: Callable[[Optional[BaseException]], None]) -> bool:
        """Start a bodiless request on an idle pooled connection, with no Task and no coroutine.

        The common case on a busy gateway. ``done`` is called once with None, the
        attempt's UpstreamError, or ``StaleConnection`` (the pooled connection was
        closed by the upstream before answering: retry the request the awaited way).
        Returns False, having started nothing, when no idle connection is at hand.
        """
        if request.body is not None or receiver.gone:  # gone: the awaited way ends it at once
            return False
        head, _ = self._head(origin, request)
        conn = self.client.pool(origin.host, origin.port).take_idle()
        if conn is None:
            return False
        self._receiver = receiver
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        timer = loop.call_at(deadline, self._on_timeout)
        self._on_connection(conn)

        def finished(fut: asyncio.Future) -> None:
            timer.cancel()
            self._conn = None
            self._receiver = None  # the exchange holds this transport: no cycle for the collector
            self._head_flush_pending = False
            exc = UpstreamProtocolError("reset", "cancelled") if fut.cancelled() else fut.exception()
            if exc is None:
                done(self._failure(exc, request) if self._timed_out else None)
            elif (isinstance(exc, UpstreamProtocolError) and conn.dropped_unanswered(exc) and not self._timed_out
                  and not receiver.gone and request.method in IDEMPOTENT and loop.time() < deadline):
                done(StaleConnection())
            else:
                done(self._failure(exc, request))

        conn.start(head, request.method, self._on_head, self._on_body).add_done_callback(finished)
        return True

    async def send(self, origin: Any, request: Request, receiver: Receiver) -> None:
        self._receiver = receiver
        head, chunked = self._head(origin, request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        timer = loop.call_at(deadline, self._on_timeout)
        body = request.body
        try:
            await self.client.fetch(
                origin.host, origin.port, head, request.method, self._on_head, self._on_body,
                connect_timeout=request.connect_timeout, deadline=deadline,
                body=(lambda conn: _send_body(conn, body, chunked)) if body is not None else None,
                retry_stale=not request.has_body and request.method in IDEMPOTENT,
                on_connection=self._on_connection,
            )
        except (UpstreamProtocolError, ConnectionError, OSError) as exc:
            raise self._failure(exc, request) from None
        finally:
            timer.cancel()
            self._conn = None
            self._receiver = None  # the exchange holds this transport: no cycle for the collector
            self._head_flush_pending = False  # the caller's finish sends whatever is left
        if self._timed_out:
            raise UpstreamError("timeout", f"no complete answer within {request.timeout:g}s")

    def _on_connection(self, conn: _Connection) -> None:
        self._conn = conn
        if self._timed_out or (self._receiver is not None and self._receiver.gone):
            conn.close()

    def _on_timeout(self) -> None:
        self._timed_out = True
        if self._conn is not None:
            self._conn.close()

    def _on_head(self, code: int, reason: str, headers: list) -> None:
        assert self._receiver is not None
        self._receiver.on_head(code, reason, headers, flush=False)
        self._head_flush_pending = True
        asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self) -> None:
        """Headers not yet sent with a body chunk go out now (slow bodies, long polls)."""
        receiver, conn = self._receiver, self._conn
        if conn is not None and conn.failed:
            return  # the answer turned out malformed: the client gets a 502 page instead
        if self._head_flush_pending and receiver is not None and not receiver.gone:
            self._head_flush_pending = False
            receiver.on_body(b"")

    def _on_body(self, chunk: bytes) -> None:
        self._head_flush_pending = False
        receiver = self._receiver
        assert receiver is not None
        if receiver.gone:
            if self._conn is not None:
                self._conn.close()
            return
        receiver.on_body(chunk)

    def pause(self) -> None:
        if self._conn is not None and not self._paused:
            self._paused = True
            self._conn.pause()

    def resume(self) -> None:
        if self._paused and self._conn is not None:
            self._paused = False
            self._conn.resume()

    def abort(self) -> None:
        if self._conn is not None:
            self._conn.close()


async def _send_body(conn: _Connection, body: Any, chunked: bool) -> None:
    while True:
        chunk = await body.get()
        if chunk is None:
            break
        if conn.closed:
            continue  # the upstream answered or left early; drain what the client sends
        conn.write(format_chunk(chunk) if chunked else chunk)
        await conn.drain()
    if chunked and not conn.closed:
        conn.write(b"0\r\n\r\n")
