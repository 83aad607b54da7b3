"""The ``httptools`` engine: HTTP/1.1 server connections on asyncio Protocols, under Tornado's interfaces.

``server.http_engine: httptools`` serves the proxy port with this module
instead of Tornado's ``HTTPServer``. Each TCP (or TLS) connection is an
``asyncio.Protocol`` whose bytes go through llhttp (``httptools``); each
request on it is a ``Message``, Tornado's ``httputil.HTTPConnection``, and is
handed to the application's ``start_request`` delegate exactly as Tornado's
own server does, so the ``Application``, its handlers and the WebSocket code
do not know the difference.

What Tornado's server did and this one keeps:

* requests on a connection are answered one at a time, in order: a
  pipelined request is parsed and held (reading pauses once a few of them
  are waiting) until the answer before it is finished;
* a delegate whose ``headers_received`` / ``data_received`` returns an
  unfinished future pauses reading from the socket until it resolves (upload
  backpressure);
* ``Expect: 100-continue``, chunked request bodies, ``Connection: close``
  and HTTP/1.0 keep-alive, a chunked answer when no Content-Length is given;
* ``detach()`` for WebSocket upgrades returns a ``TransportStream``, the part
  of a Tornado ``IOStream`` that Tornado's WebSocket protocol uses, over the
  same transport (so it works the same with TLS);
* ``server.idle_timeout`` (no request on an open connection),
  ``server.header_timeout`` (a head begun and not finished), both swept by one
  timer for all connections; ``max_header_size`` (431);
  ``max_connections`` (503 and close); stop accepting on drain.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
from typing import Any, Callable, Optional

import httptools
from tornado import httputil
from tornado.iostream import StreamClosedError

from .http1_accept import Listener
from .http1_stream import QUEUED_LIMIT, TransportStream, _Unsent  # noqa: F401

# HTTPHeaders keeps each name's lines in _as_list and the joined values in _combined_cache (Tornado 6.5+),
# under the names its own (cached) _normalize_header spells: filled directly, with that same function.
_DIRECT_HEADERS = (all(hasattr(httputil.HTTPHeaders(), slot) for slot in ("_as_list", "_combined_cache"))
                   and callable(getattr(httputil, "_normalize_header", None)))
_header_case = getattr(httputil, "_normalize_header", str)


class RequestHeaders(httputil.HTTPHeaders):
    """A request's HTTPHeaders as the parser fills them (``_as_list`` directly), with ``get``
    answered in one step: the pipeline asks a dozen headers per request, and Mapping's generic
    ``get`` goes through ``__getitem__`` and a KeyError for every absent one (``in`` is
    HTTPHeaders' own, already one step)."""

    def __init__(self) -> None:  # nothing to copy in: HTTPHeaders' update() is skipped
        self._as_list = {}
        self._combined_cache = {}

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        values = self._as_list.get(_header_case(name))
        if values is None:
            return default
        if len(values) == 1:
            return values[0]
        return self[name]  # several lines: HTTPHeaders' joined value (and its cache)


log = logging.getLogger("gateway")
app_log = logging.getLogger("tornado.application")

WRITE_HIGH = 256 * 1024
WRITE_LOW = 16 * 1024
TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections")
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"

_HEAD, _DATA, _END = 0, 1, 2


class _HeadTooLarge(Exception):
    pass


class Context:
    """What ``HTTPServerRequest`` reads from ``connection.context``."""

    __slots__ = ("remote_ip", "protocol", "address")

    def __init__(self, address: Any, protocol: str):
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"
        self.protocol = protocol

    def __str__(self) -> str:
        return self.remote_ip


def _can_keep_alive(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
    connection = headers.get("Connection")
    if connection is not None:
        connection = connection.lower()
    if start_line.version == "HTTP/1.1":
        return connection != "close"
    if "Content-Length" in headers or start_line.method in ("HEAD", "GET") or (
            headers.get("Transfer-Encoding", "").lower() == "chunked"):
        return connection == "keep-alive"
    return False


class Message(httputil.HTTPConnection):
    """One request on a connection and its answer: Tornado's ``HTTPConnection`` for the delegate."""

    times_itself = True  # idle and header timeouts are this engine's (fastpath.HeadWatch is not needed)
    delegate: Optional[httputil.HTTPMessageDelegate] = None
    start_line: httputil.RequestStartLine
    headers: httputil.HTTPHeaders
    waiting = False  # the delegate's last call returned an unfinished future
    read_finished = False
    write_finished = False
    disconnect_on_finish = False
    upgrade = False
    bodiless = False  # no body follows the head: an answer given before its end is read keeps the connection
    chunking = False
    expect_continue = False
    code = 0
    remaining: Optional[int] = None
    queued = 0  # body bytes held for the delegate
    _close_callback: Optional[Callable[[], None]] = None

    def __init__(self, proto: "H1Protocol"):
        self.proto = proto
        self.context = proto.context
        self.stream = proto.stream
        self.inbox: collections.deque = collections.deque()

    # -- from the parser ----------------------------------------------------------

    def push(self, event: tuple) -> None:
        self.inbox.append(event)
        if self.delegate is not None and not self.waiting:
            self.pump()

    def pump(self) -> None:
        """Hand the delegate what has arrived, until it asks to wait (a future) or nothing is left."""
        inbox = self.inbox
        proto = self.proto
        while inbox and not self.waiting:
            if proto.closed or proto.detached is not None:
                return
            event = inbox.popleft()
            kind = event[0]
            try:
                if kind == _DATA:
                    self.queued -= len(event[1])
                    if self.expect_continue:
                        self._continue()
                    ret = self.delegate.data_received(event[1]) if not self.write_finished else None  # type: ignore
                elif kind == _HEAD:
                    ret = self.delegate.headers_received(self.start_line, self.headers)  # type: ignore
                else:
                    self.read_finished = True
                    self.expect_continue = False
                    ret = None
                    if not self.write_finished:
                        self.delegate.finish()  # type: ignore
            except httputil.HTTPInputError as exc:  # e.g. no Host header: 400, as Tornado's server answers
                log.info("malformed request from %s: %s", self.context.remote_ip, exc)
                self._failed(BAD_REQUEST if self.code == 0 else None)
                return
            except Exception:
                app_log.error("Uncaught exception in %s", type(self.delegate).__name__, exc_info=True)
                self._failed()
                return
            if ret is not None and not ret.done():
                self.waiting = True
                proto.pause_for("delegate")
                ret.add_done_callback(self._resume)
                return
        if self.expect_continue and not self.read_finished and self.delegate is not None:
            self._continue()  # the head is taken and nothing of the body is here: ask for it
        proto.resume_for("delegate")

    def _continue(self) -> None:
        self.expect_continue = False
        if not self.write_finished and not self.proto.closed:
            self.proto.transport.write(CONTINUE)

    def _resume(self, fut: Any) -> None:
        self.waiting = False
        if not fut.cancelled() and fut.exception() is not None:
            app_log.error("Uncaught exception in %s", type(self.delegate).__name__, exc_info=fut.exception())
            self._failed()
            return
        self.pump()

    def _failed(self, answer: Optional[bytes] = None) -> None:
        """The delegate raised: like Tornado, tell it the connection is gone and close (after ``answer``)."""
        if answer is not None and not self.proto.closed:
            self.proto.transport.write(answer)
        delegate, self.delegate = self.delegate, None
        self.inbox.clear()
        if delegate is not None and not self.write_finished:
            try:
                delegate.on_connection_close()
            except Exception:
                app_log.error("Uncaught exception", exc_info=True)
        self.proto.close()

    def lost(self) -> None:
        """The connection closed before this answer was finished."""
        if self.write_finished or self.delegate is None:
            return
        cb, self._close_callback = self._close_callback, None
        delegate = self.delegate
        try:
            if cb is not None:
                cb()
                if not self.read_finished:
                    delegate.on_connection_close()
            else:
                delegate.on_connection_close()
        except Exception:
            app_log.error("Uncaught exception", exc_info=True)

    # -- HTTPConnection: the answer --------------------------------------------------

    def set_close_callback(self, callback: Optional[Callable[[], None]]) -> None:
        self._close_callback = callback

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders,
                      chunk: Optional[bytes] = None) -> "asyncio.Future[None]":
        lines = list(headers.get_all())
        text = "".join([f"{name}{value}" for name, value in lines])
        if "\r" in text or "\n" in text:
            raise ValueError("Illegal characters (CR or LF) in header")
        return self.write_head_lines(start_line.code, start_line.reason, lines, chunk)

    def write_head_lines(self, code: int, reason: str, headers: list[tuple[str, str]],
                         chunk: Optional[bytes] = None) -> "asyncio.Future[None]":
        """``write_headers`` for lines already checked and spelled as HTTPHeaders would hold them
        (``sinks.checked_lines``): the fast path's answers, without an HTTPHeaders in between."""
        self.code = code
        request = self.start_line
        version = request.version
        head = request.method == "HEAD"
        lengths = [value for name, value in headers if name == "Content-Length"]
        self.chunking = (version == "HTTP/1.1" and not head and code not in (204, 304)
                         and not (100 <= code < 200) and not lengths)
        connection = None
        if version == "HTTP/1.1":
            if self.disconnect_on_finish and code != 101:
                connection = "close"
        elif self.headers.get("Connection", "").lower() == "keep-alive":
            connection = "Keep-Alive"
        if connection is not None:
            headers = [line for line in headers if line[0] != "Connection"] + [("Connection", connection)]
        if self.chunking:
            headers = [line for line in headers if line[0] != "Transfer-Encoding"] + [("Transfer-Encoding", "chunked")]
        if head or code == 304:
            self.remaining = 0
        elif lengths:
            self.remaining = int(",".join(lengths))  # several: refused, as HTTPHeaders' joined value is
        else:
            self.remaining = None
        text = "\r\n".join([f"HTTP/1.1 {code} {reason}", *[f"{name}: {value}" for name, value in headers]])
        if "\r" in reason or "\n" in reason:
            raise ValueError("Illegal characters (CR or LF) in the status line")
        data = text.encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._format(chunk)
        return self.proto.send(data)

    def _format(self, chunk: bytes) -> bytes:
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.proto.close()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        return self.proto.send(self._format(chunk))

    def finish(self) -> None:
        proto = self.proto
        if self.remaining is not None and self.remaining != 0 and not proto.closed:
            proto.close()
            raise httputil.HTTPOutputError(f"Tried to write {self.remaining} bytes less than Content-Length")
        if self.chunking and not proto.closed:
            proto.transport.write(b"0\r\n\r\n")
        self.write_finished = True
        self._close_callback = None
        if self.code == 101:
            return  # detach() comes next
        if not (self.read_finished or self.bodiless) or self.upgrade:
            self.disconnect_on_finish = True
        if self.disconnect_on_finish or proto.draining:
            proto.close()
        else:
            proto.answered(self)

    def detach(self) -> TransportStream:
        return self.proto.detach(self)

    def set_max_body_size(self, max_body_size: int) -> None:
        """Tornado's ``HTTP1Connection`` has it; the gateway's limits are the pipeline's (413)."""

    def set_body_timeout(self, timeout: float) -> None:
        """Tornado's ``HTTP1Connection`` has it; server.body_timeout is the fast delegate's."""

    def close(self) -> None:
        self.proto.close()


class H1Protocol(asyncio.Protocol):
    """One client connection: the parser's callbacks build ``Message``s, answered one after another."""

    transport: Any = None
    closed = False
    detached: Optional[TransportStream] = None
    parsing: Optional[Message] = None  # the message the parser is in
    active: Optional[Message] = None  # the message being answered
    head_started = 0.0  # when the head being parsed began (0: not in a head)
    idle_since = 0.0  # when the connection last had nothing to do (0: busy)
    head_size = 0
    draining = False  # the server is shutting down: no keep-alive after the current answer
    error: Optional[bytes] = None  # a parse error to answer once the earlier answers are out
    _after_upgrade: Optional[bytearray] = None
    _begun = False  # a message began during the current feed_data

    def __init__(self, server: "EngineServer"):
        self.server = server
        self.loop = server.loop
        self.queue: collections.deque = collections.deque()
        self.queued_bytes = 0
        self.paused: set = set()
        self.write_paused = False
        self.drain_waiters: list = []
        self._url = b""
        self._headers: Optional[httputil.HTTPHeaders] = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if server.max_connections and len(server.connections) >= server.max_connections:
            peer = transport.get_extra_info("peername")
            log.warning("connection from %s refused: %d connections open (server.max_connections)",
                        peer[0] if peer else "?", len(server.connections))
            self.closed = True
            transport.write(TOO_MANY)
            transport.close()
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.context = Context(transport.get_extra_info("peername"), "https" if server.tls else "http")
        self.stream = TransportStream(self)
        self.parser = httptools.HttpRequestParser(self)
        self.idle_since = self.loop.time()
        server.watch()

    def data_received(self, data: bytes) -> None:
        if self.detached is not None:
            self.detached._feed(data)
            return
        if self._after_upgrade is not None:  # bytes of the upgraded protocol, for detach()
            self._after_upgrade += data
            if len(self._after_upgrade) > QUEUED_LIMIT:
                self.pause_for("upgrade")
            return
        if self.closed or self.error is not None:
            return
        self._begun = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade = bytearray(data[exc.args[0]:])
            return
        except _HeadTooLarge:
            return self._refuse(TOO_LARGE, "request head larger than server.max_header_size")
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                return self._refuse(TOO_LARGE, "request head larger than server.max_header_size")
            app_log.error("Uncaught exception while parsing a request", exc_info=True)
            return self._refuse(BAD_REQUEST, "malformed request")
        except httptools.HttpParserError as exc:
            return self._refuse(BAD_REQUEST, f"malformed request: {exc}")
        except Exception:  # a callback failed (a bug): never leave the connection half-parsed
            app_log.error("Uncaught exception while parsing a request", exc_info=True)
            return self._refuse(BAD_REQUEST, "malformed request")
        # A head still incomplete: count what arrives for it (the read it began in is not counted, as the
        # bytes before its start are unknown; the callbacks count names and values exactly).
        if self.head_started and not self._begun:
            self.head_size += len(data)
            if self.head_size > self.server.max_header_size + 4:
                self._refuse(TOO_LARGE, "request head larger than server.max_header_size")

    def eof_received(self) -> Optional[bool]:
        return False  # like Tornado: the client's end of the stream ends the connection

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self.server.connections.discard(self)
        waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(StreamClosedError(real_error=exc))
                fut.exception()
        if self.detached is not None:
            self.detached._lost(exc)
            return
        active, self.active = self.active, None
        self.queue.clear()
        if active is not None:
            active.lost()
        try:
            self.server.delegate.on_close(self)
        except Exception:  # pragma: no cover
            pass

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_started = self.loop.time()
        self.idle_since = 0.0
        self.head_size = 0
        self._begun = True
        self._url = b""
        self._headers = RequestHeaders() if _DIRECT_HEADERS else httputil.HTTPHeaders()
        self._hsize = 0
        self.parsing = Message(self)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hsize += len(url)
        if self._hsize > self.server.max_header_size:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hsize += len(name) + len(value) + 4
        if self._hsize > self.server.max_header_size:
            raise _HeadTooLarge()
        # llhttp drops the leading whitespace of a value, not the trailing (RFC 9110 5.5: both are not part of it).
        # llhttp has validated the name (a token) and the value (no control character but HTAB) as
        # HTTPHeaders.add would, by regex, again: the lists are filled directly.
        text = value.decode("latin1").rstrip(" \t")
        headers = self._headers
        assert headers is not None
        if not _DIRECT_HEADERS:  # pragma: no cover - a Tornado whose HTTPHeaders is laid out otherwise
            headers.add(name.decode("latin1"), text)
            return
        norm = _header_case(name.decode("latin1"))
        values = headers._as_list.get(norm)
        if values is None:
            headers._as_list[norm] = [text]
        else:
            headers._combined_cache.pop(norm, None)
            values.append(text)

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        parser = self.parser
        msg = self.parsing
        assert msg is not None and self._headers is not None
        headers = self._headers
        msg.start_line = start_line = httputil.RequestStartLine(
            parser.get_method().decode("latin1"), self._url.decode("latin1"), "HTTP/" + parser.get_http_version())
        msg.headers = headers
        msg.disconnect_on_finish = not _can_keep_alive(start_line, headers)
        msg.upgrade = parser.should_upgrade()
        msg.bodiless = "Transfer-Encoding" not in headers and headers.get("Content-Length", "0") == "0"
        msg.expect_continue = headers.get("Expect") == "100-continue" and start_line.version == "HTTP/1.1"
        msg.inbox.append((_HEAD,))
        if self.active is None:
            self._activate(msg)
        else:
            self.queue.append(msg)
            self._hold()

    def on_body(self, body: bytes) -> None:
        msg = self.parsing
        assert msg is not None
        msg.queued += len(body)
        if msg is not self.active:
            self.queued_bytes += len(body)
            self._hold()
        msg.push((_DATA, body))

    def on_message_complete(self) -> None:
        msg, self.parsing = self.parsing, None
        assert msg is not None
        msg.push((_END,))
        if self.active is None and not self.closed:  # answered before its end was parsed: now idle
            self.idle_since = self.loop.time()

    # -- requests in order --------------------------------------------------------------------

    def _activate(self, msg: Message) -> None:
        if self.closed:
            return
        self.active = msg
        self.idle_since = 0.0
        try:
            msg.delegate = self.server.delegate.start_request(self, msg)
        except Exception:
            app_log.error("Uncaught exception in start_request", exc_info=True)
            self.close()
            return
        msg.pump()

    def _hold(self) -> None:
        if self.queue and (len(self.queue) > 8 or self.queued_bytes > QUEUED_LIMIT):
            self.pause_for("queue")

    def answered(self, msg: Message) -> None:
        """``msg``'s answer is finished (keep-alive): the next request, or wait for one."""
        if self.active is not msg:
            return
        self.active = None
        msg.delegate = None  # done with: no cycle (message -> delegate -> message) left for the collector
        if self.queue:
            nxt = self.queue.popleft()
            self.queued_bytes = sum(m.queued for m in self.queue)
            if not self.queue or self.queued_bytes <= QUEUED_LIMIT:
                self.resume_for("queue")
            # Not from inside the finish() of the answer before (no recursion through a long pipeline).
            self.active = nxt
            self.loop.call_soon(self._activate, nxt)
            return
        self.resume_for("queue")
        if self.error is not None:
            self.transport.write(self.error)
            self.close()
            return
        if self.parsing is None:
            self.idle_since = self.loop.time()

    def _refuse(self, answer: bytes, why: str) -> None:
        log.info("%s from %s: closing", why, self.context.remote_ip)
        self.error = answer
        self.head_started = 0.0
        if self.active is None:
            self.transport.write(answer)
            self.close()

    # -- reading and writing -------------------------------------------------------------------

    def pause_for(self, why: str) -> None:
        if not self.paused and not self.closed:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass
        self.paused.add(why)

    def resume_for(self, why: str) -> None:
        if why in self.paused:
            self.paused.discard(why)
            if not self.paused and not self.closed:
                try:
                    self.transport.resume_reading()
                except (RuntimeError, AttributeError):
                    pass

    def send(self, data: bytes) -> "asyncio.Future[None]":
        fut = self.loop.create_future()
        if self.closed:
            fut.set_exception(StreamClosedError())
            fut.exception()
            return fut
        if data:
            self.transport.write(data)
        if self.write_paused:
            self.drain_waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        transport = self.transport
        # Unsent bytes are flushed first, unless the client has stopped reading them.
        if transport.get_write_buffer_size() > WRITE_HIGH:
            transport.abort()
        else:
            transport.close()

    def detach(self, msg: Message) -> TransportStream:
        stream = self.stream
        self.detached = stream
        self.active = None
        self.server.connections.discard(self)
        self.paused.clear()
        try:
            self.transport.resume_reading()
        except (RuntimeError, AttributeError):
            pass
        rest, self._after_upgrade = self._after_upgrade, None
        if rest:
            self.loop.call_soon(stream._feed, bytes(rest))
        return stream

    # -- timeouts -------------------------------------------------------------------------------

    def check(self, now: float, idle_timeout: float, header_timeout: float) -> None:
        if self.head_started and now - self.head_started >= header_timeout and self.active is None:
            log.debug("closing a connection: server.header_timeout")
            self.close()
        elif self.idle_since and now - self.idle_since >= idle_timeout:
            log.debug("closing a connection: server.idle_timeout")
            self.close()


class EngineServer:
    """The proxy port on the httptools engine: listeners, the connections, and the timeout sweep."""

    def __init__(self, delegate: httputil.HTTPServerConnectionDelegate, *, max_header_size: int,
                 max_connections: int = 0, tls: Optional[ssl.SSLContext] = None,
                 timeouts: Callable[[], tuple[float, float]]):
        self.delegate = delegate
        self.max_header_size = max_header_size
        self.max_connections = max_connections
        self.tls = tls
        self.timeouts = timeouts  # () -> (idle_timeout, header_timeout), read at every sweep (reload)
        self.loop = asyncio.get_running_loop()
        self.connections: set[H1Protocol] = set()
        self.servers: list[Listener] = []
        self._timer: Optional[asyncio.TimerHandle] = None

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            self.servers.append(Listener(self.loop, sock, lambda: H1Protocol(self), self.tls))

    def stop(self) -> None:
        """Stop accepting; idle keep-alive connections are closed, busy ones after their answer."""
        for listener in self.servers:
            listener.close()
        self.servers = []
        for proto in list(self.connections):
            proto.draining = True
            if proto.active is None and proto.parsing is None:
                proto.close()

    def watch(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self._interval(), self._sweep)

    def _interval(self) -> float:
        idle, header = self.timeouts()
        return max(0.05, min(idle, header) / 4)

    def _sweep(self) -> None:
        now = self.loop.time()
        idle, header = self.timeouts()
        for proto in list(self.connections):
            proto.check(now, idle, header)
        self._timer = self.loop.call_later(self._interval(), self._sweep) if self.connections else None

