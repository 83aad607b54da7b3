"""What a WebSocket upgrade takes over from the httptools engine: the connection as a Tornado stream.

``Message.detach()`` (gateway.http1) returns a ``TransportStream``: the part of
a Tornado ``IOStream`` that Tornado's WebSocket protocol uses, on the same
asyncio transport (so it works the same with TLS), with the bytes that
arrived after the upgrade head handed over.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Optional

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

# Bytes held for a reader that is not reading (and pipelined requests held): past this, reading pauses.
QUEUED_LIMIT = 256 * 1024


class _Unsent:
    """``len()`` of it is how many bytes the transport still holds (what sinks read as ``_write_buffer``)."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any):
        self.transport = transport

    def __len__(self) -> int:
        try:
            return self.transport.get_write_buffer_size()
        except Exception:
            return 0


class TransportStream:
    """The part of a Tornado ``IOStream`` the gateway and Tornado's WebSocket protocol use, over a transport.

    While the connection speaks HTTP it is ``connection.stream`` (sinks measure
    ``_write_buffer`` and wait on ``write(b"")``); after ``detach()`` it also
    reads (``read_bytes``), fed by the protocol with whatever arrives.
    """

    def __init__(self, proto: Any):  # the gateway.http1 H1Protocol the stream writes through
        self._proto = proto
        self.io_loop = IOLoop.current()
        self.error: Optional[BaseException] = None
        self._buffer = bytearray()
        self._want: Optional[tuple[int, bool, asyncio.Future]] = None
        self._close_callback: Optional[Callable[[], None]] = None
        self._write_buffer = _Unsent(proto.transport)

    @property
    def _read_buffer_size(self) -> int:
        return len(self._buffer)

    @property
    def socket(self) -> Any:
        return self._proto.transport.get_extra_info("socket")

    def closed(self) -> bool:
        return self._proto.closed

    def write(self, data: bytes) -> "asyncio.Future[None]":
        return self._proto.send(data)

    def read_bytes(self, num_bytes: int, partial: bool = False) -> "asyncio.Future[bytes]":
        fut = self._proto.loop.create_future()
        if self._want is not None:
            raise RuntimeError("Already reading")
        self._want = (num_bytes, partial, fut)
        self._try_read()
        if self._want is not None and self._proto.closed:
            self._want = None
            fut.set_exception(StreamClosedError(real_error=self.error))
        return fut

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._try_read()
        if len(self._buffer) > QUEUED_LIMIT:
            self._proto.pause_for("stream")

    def _try_read(self) -> None:
        want = self._want
        if want is None:
            return
        n, partial, fut = want
        have = len(self._buffer)
        if have >= n or (partial and have):
            take = min(n, have)
            data = bytes(self._buffer[:take])
            del self._buffer[:take]
            self._want = None
            if not fut.done():
                fut.set_result(data)
            if len(self._buffer) <= QUEUED_LIMIT:
                self._proto.resume_for("stream")

    def _lost(self, exc: Optional[BaseException]) -> None:
        self.error = exc
        if self._want is not None:
            fut = self._want[2]
            self._want = None
            if not fut.done():
                fut.set_exception(StreamClosedError(real_error=exc))
        cb, self._close_callback = self._close_callback, None
        if cb is not None:
            self._proto.loop.call_soon(cb)

    def set_close_callback(self, callback: Optional[Callable[[], None]]) -> None:
        self._close_callback = callback

    def set_nodelay(self, value: bool) -> None:
        sock = self.socket
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)
            except OSError:
                pass

    def reading(self) -> bool:
        return self._want is not None

    def writing(self) -> bool:
        return bool(len(self._write_buffer))

    def close(self, exc_info: Any = False) -> None:
        self._proto.close()
