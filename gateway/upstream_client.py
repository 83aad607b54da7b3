"""A small HTTP/1.1 client for plain-http upstreams, with pooled keep-alive connections.

Used by ``proxy.Exchange`` for every ``http://`` upstream (``https://`` ones
go through Tornado's curl client). It exists because per-request work is
what limits a proxy written in Python: Tornado's clients build an
``HTTPRequest``, copy headers several times and configure libcurl for every
request. Here a request is one formatted head written to a pooled
``asyncio`` connection, and the response is parsed straight from the socket
buffer into callbacks: ``on_head(status, reason, headers)`` once, then
``on_body(chunk)`` per chunk, with ``pause()``/``resume()`` so a slow client
stops the upstream read (flow control), then the awaited ``fetch`` returns.

Framing follows RFC 9112: no body for HEAD, 1xx, 204 and 304; chunked;
Content-Length; otherwise until the connection closes. A connection goes back
to the pool only after a complete, well-framed response that did not say
``Connection: close``.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Any, Awaitable, Callable, Deque, Optional

MAX_HEAD = 64 * 1024
_LINE_BREAKERS = re.compile(r"[\x00\r\n]")
MAX_IDLE_PER_ORIGIN = 128
IDLE_TIMEOUT = 30.0

HeadCallback = Callable[[int, str, list], None]
BodyCallback = Callable[[bytes], None]


class UpstreamProtocolError(Exception):
    """The upstream answered something that is not HTTP/1.x; ``kind`` as in proxy.UpstreamError."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Connection(asyncio.Protocol):
    """One TCP connection; handles one exchange at a time."""

    def __init__(self, pool: "OriginPool"):
        self.pool = pool
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.idle_since = 0.0
        self.used = 0
        self._buf = bytearray()
        self._reset_exchange()
        self._write_paused = False
        self._drain_waiter: Optional[asyncio.Future] = None

    def _reset_exchange(self) -> None:
        self._done: Optional[asyncio.Future] = None
        self._on_head: Optional[HeadCallback] = None
        self._on_body: Optional[BodyCallback] = None
        self._state = "idle"  # idle, head, body-length, body-chunked, body-close, done
        self._remaining = 0
        self._head_method = False
        self._keep_alive = False
        self.request_complete = True  # False while a request body is still being written
        self._got_bytes = False
        self._chunk_state = "size"

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.pool._forget(self)
        if self._state == "body-close":
            self._state = "done"
            self._finish(reuse=False)
        elif self._done is not None and not self._done.done():
            kind = "reset"
            self._done.set_exception(UpstreamProtocolError(kind, "upstream closed the connection"
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
        if self._done is None or self._done.done():
            # Bytes while idle: the upstream is not speaking HTTP to us; never reuse it.
            self.close()
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except UpstreamProtocolError as exc:
            if not self._done.done():
                self._done.set_exception(exc)
            self.close()

    # -- the exchange -----------------------------------------------------------

    def start(self, head: bytes, method: str, on_head: HeadCallback, on_body: BodyCallback) -> asyncio.Future:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset_exchange()
        self._done = loop.create_future()
        self._on_head, self._on_body = on_head, on_body
        self._head_method = method == "HEAD"
        self._state = "head"
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

    # -- parsing ----------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            state = self._state
            if state == "head":
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD:
                        raise UpstreamProtocolError("reset", "upstream response head too large")
                    return
                head = bytes(self._buf[:end])
                del self._buf[: end + 4]
                if not self._head_parsed(head):
                    continue  # a 1xx interim response: read the next head
                if self._state == "done":
                    return
            elif state == "body-length":
                if not self._buf:
                    return
                take = min(self._remaining, len(self._buf))
                chunk = bytes(self._buf[:take])
                del self._buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "done"
                self._deliver(chunk)
                if self._state == "done":
                    self._finish(reuse=self._keep_alive and not self._buf)
                    return
            elif state == "body-chunked":
                if not self._parse_chunked():
                    return
            elif state == "body-close":
                if self._buf:
                    chunk = bytes(self._buf)
                    self._buf.clear()
                    self._deliver(chunk)
                return
            else:
                if self._buf:  # bytes beyond the response: not reusable
                    self.close()
                return

    def _head_parsed(self, head: bytes) -> bool:
        """Parse status line and headers; returns False for a 1xx interim response."""
        try:
            text = head.decode("latin-1")
        except Exception:  # pragma: no cover - latin-1 decodes anything
            raise UpstreamProtocolError("reset", "undecodable response head")
        lines = text.split("\r\n")
        status_line = lines[0]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise UpstreamProtocolError("reset", "upstream sent an invalid status line")
        version, code = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers: list = []
        length: Optional[int] = None
        chunked = False
        conn_close = version == "HTTP/1.0"
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t":  # obsolete line folding: join to the previous value
                if headers:
                    name, value = headers[-1]
                    headers[-1] = (name, value + " " + line.strip())
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise UpstreamProtocolError("reset", "upstream sent an invalid header line")
            value = value.strip()
            lower = name.lower()
            if lower == "content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise UpstreamProtocolError("reset", "upstream sent an invalid Content-Length")
                length = int(value)
            elif lower == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lower == "connection":
                tokens = {t.strip().lower() for t in value.split(",")}
                if "close" in tokens:
                    conn_close = True
                elif "keep-alive" in tokens and version == "HTTP/1.0":
                    conn_close = False
            headers.append((name, value))
        if 100 <= code < 200:
            if code == 101:
                raise UpstreamProtocolError("reset", "upstream switched protocols unasked")
            return False
        self._keep_alive = not conn_close
        assert self._on_head is not None
        self._on_head(code, reason, headers)
        if self._head_method or code in (204, 304):
            # A HEAD answer announcing a body could be followed by one from a sloppy upstream:
            # never let such bytes become the next client's answer.
            announced = chunked or bool(length)
            self._state = "done"
            self._finish(reuse=self._keep_alive and not self._buf and not announced)
        elif chunked:
            self._state = "body-chunked"
            self._chunk_state = "size"
        elif length is not None:
            self._remaining = length
            self._state = "body-length"
            if length == 0:
                self._state = "done"
                self._finish(reuse=self._keep_alive and not self._buf)
        else:
            self._keep_alive = False
            self._state = "body-close"
        return True

    def _parse_chunked(self) -> bool:
        """Decode as much chunked body as is buffered; False when more bytes are needed."""
        buf = self._buf
        while True:
            if self._chunk_state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 4096:
                        raise UpstreamProtocolError("reset", "upstream sent an invalid chunk size")
                    return False
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise UpstreamProtocolError("reset", "upstream sent an invalid chunk size") from None
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    self._remaining = size
                    self._chunk_state = "data"
            elif self._chunk_state == "data":
                if not buf:
                    return False
                take = min(self._remaining, len(buf))
                chunk = bytes(buf[:take])
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = "data-end"
                self._deliver(chunk)
                if self.closed:
                    return False
            elif self._chunk_state == "data-end":
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise UpstreamProtocolError("reset", "upstream sent a malformed chunk")
                del buf[:2]
                self._chunk_state = "size"
            else:  # trailer section: lines until an empty one (trailers are dropped)
                end = buf.find(b"\r\n")
                if end < 0:
                    return False
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._state = "done"
                    self._finish(reuse=self._keep_alive and not buf)
                    return False

    def _deliver(self, chunk: bytes) -> None:
        if chunk and self._on_body is not None:
            self._on_body(chunk)

    def _finish(self, reuse: bool) -> None:
        done = self._done
        self._on_head = self._on_body = None
        # An answer that came before the whole request body was written leaves the rest of
        # that body on its way: such a connection must never carry another request.
        if reuse and not self.closed and self.request_complete:
            self._state = "idle"
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
            stale = reused and not conn._got_bytes and exc.kind == "reset"
            if not (stale and retry_stale and loop.time() < deadline):
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
    if _LINE_BREAKERS.search(text.replace("\r\n", "  ")):
        raise UpstreamProtocolError("reset", "refusing a request head with a control character in it")
    return (text + "\r\n\r\n").encode("latin-1", "replace")


def format_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


__all__ = ["UpstreamClient", "UpstreamProtocolError", "format_head", "format_chunk", "Any"]
