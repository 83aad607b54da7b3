"""Where an upstream's answer is written: the client side of an exchange.

``Exchange`` (and the transports under it) write the response through a
``ResponseSink``, never into Tornado objects, so the same forwarding code
serves a full ``RequestHandler`` (``HandlerSink``) and the fast path's bare
HTTP/1.1 connection (``ConnectionSink``). Backpressure is measured here, and
only here: how much is handed to the client connection but not yet on its
socket (``pending``), and a future for when it all is (``drained``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional, Protocol

from tornado import httputil
from tornado.concurrent import Future

# HTTPHeaders.add's checks (RFC 9110 field-name and field-value, as Tornado spells them), made once per
# name and once per head: a value is VCHAR/obs-text with inner spaces and tabs, and never a line break.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VCHAR = r"[\x21-\x7e\x80-\xff]"
_VALUES = re.compile(rf"(?:(?:|{_VCHAR}|{_VCHAR}(?:{_VCHAR}| |\t)*{_VCHAR})\n)*")
_spelled = getattr(httputil, "_normalize_header", str)


@functools.lru_cache(maxsize=1024)
def header_name(name: str) -> str:
    """``name`` as Tornado spells it ("content-type" -> "Content-Type"); ``HTTPInputError`` for
    what is not a token, as ``HTTPHeaders.add`` refuses it (a refusal is not cached)."""
    if not _TOKEN.fullmatch(name):
        raise httputil.HTTPInputError(f"Invalid header name {name!r}")
    return _spelled(name)


def checked_lines(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers with Tornado's spelling of their names, refusing (``HTTPInputError``) what
    ``HTTPHeaders.add`` refuses: the fast path's answer needs no HTTPHeaders of its own."""
    out = [(header_name(name), value) for name, value in headers]
    joined = "".join([value + "\n" for _, value in headers])
    if joined.count("\n") != len(headers) or not _VALUES.fullmatch(joined):  # a line break is refused either way
        bad = next(value for _, value in headers if "\n" in value or not _VALUES.fullmatch(value + "\n"))
        raise httputil.HTTPInputError(f"Invalid header value {bad!r}")
    return out


class ResponseSink(Protocol):
    """The response side of one exchange. HEAD answers carry no body bytes, whatever is written."""

    request_id: str
    started: bool  # head sent or recorded
    gone: bool  # the client went away / a write failed
    status: int

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """Status line and headers; nothing is sent until ``write``."""

    def write(self, chunk: bytes) -> None:
        """Send now (b"" sends just the head if not sent yet); never raises: a gone client sets ``gone``."""

    def pending(self) -> int:
        """Bytes handed to the connection, not yet on the socket."""

    def drained(self) -> Optional[Future]:
        """Resolves once everything written so far is on the socket; None if the client is gone."""

    def finish(self) -> None:
        """End the response (sends the head if nothing was sent)."""

    def close(self) -> None:
        """Drop the client connection."""


def retrieve_outcome(fut: Any) -> None:
    """Mark a future's outcome as seen (no "exception never retrieved"); failures are handled elsewhere."""
    if not fut.cancelled():
        fut.exception()


def _unsent(stream: Any) -> int:
    try:
        return len(stream._write_buffer) if stream is not None else 0
    except (AttributeError, TypeError):  # pragma: no cover - a Tornado without it
        return 0


class _StreamSink:
    """What both sinks share: an IOStream underneath to measure and to wait for."""

    request_id: str
    started = False
    gone = False
    error: Optional[BaseException] = None  # what a failed write raised (not part of the protocol)

    _connection: Any = None  # the HTTP/1.1 connection the answer goes out on

    def _stream(self) -> Any:
        return getattr(self._connection, "stream", None)

    def pending(self) -> int:
        return _unsent(self._stream())

    def drained(self) -> Optional[Future]:
        """An empty IOStream write resolves once everything before it is on the socket (the future
        of a handler's flush does not: Tornado resolves the latest one when the oldest completes)."""
        stream = self._stream()
        if stream is None or stream.closed():
            return None
        try:
            fut = stream.write(b"")
        except Exception:
            self.gone = True
            return None
        fut.add_done_callback(self._on_drained)
        return fut

    def _on_drained(self, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.gone = True

    def _failed(self, exc: BaseException) -> None:
        self.gone = True
        self.error = exc


class HandlerSink(_StreamSink):
    """A response written through a Tornado ``RequestHandler``.

    The one place that touches a handler's internals: ``_headers`` is replaced
    (no Tornado default header reaches the client) and the connection's
    IOStream ``_write_buffer`` is measured for backpressure.
    """

    def __init__(self, handler: Any):
        self.handler = handler
        self._connection = getattr(handler.request, "connection", None)
        self.request_id = handler.request_id
        self._head = handler.request.method == "HEAD"

    @property
    def status(self) -> int:
        return self.handler.get_status()

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.started = True
        handler = self.handler
        handler.set_status(status, reason)
        out = handler._headers = httputil.HTTPHeaders()  # nothing of Tornado's defaults
        for name, value in headers:
            out.add(name, value)

    def write(self, chunk: bytes) -> None:
        if self.gone:
            return
        handler = self.handler
        if chunk:
            if self._head:
                return
            handler.write(chunk)
        try:
            fut = handler.flush()
        except Exception as exc:  # the client went away
            self._failed(exc)
            return
        fut.add_done_callback(retrieve_outcome)

    def finish(self) -> None:
        if not self.handler._finished:
            self.handler.finish()

    def close(self) -> None:
        connection = self.handler.request.connection
        if connection is not None:
            connection.close()


class ConnectionSink(_StreamSink):
    """A response written straight to a bare ``HTTP1Connection`` (the fast path, no handler)."""

    def __init__(self, connection: Any, request_id: str, method: str):
        self.connection = self._connection = connection
        self.request_id = request_id
        self._head = method == "HEAD"
        self.status = 200
        self.reason = "OK"
        self._lines: list[tuple[str, str]] = []
        self.headers_written = False
        self.finished = False
        # the gateway's own connection takes the header lines as they are; Tornado's wants HTTPHeaders
        self._write_lines = getattr(connection, "write_head_lines", None)

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.started = True
        self.status, self.reason = status, reason
        self._lines = checked_lines(headers)

    def write(self, chunk: bytes) -> None:
        if self.gone:
            return
        if chunk and self._head:
            return
        try:
            self._send(chunk).add_done_callback(retrieve_outcome)
        except Exception as exc:  # the client went away, or the response is over
            self._failed(exc)

    def _send(self, chunk: bytes) -> Any:
        if self.finished:
            raise RuntimeError("response already finished")
        if not self.headers_written:
            self.headers_written = True
            if self._write_lines is not None:
                return self._write_lines(self.status, self.reason, self._lines, chunk)
            headers = httputil.HTTPHeaders()
            for name, value in self._lines:
                headers.add(name, value)
            return self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", self.status, self.reason),
                                                 headers, chunk)
        return self.connection.write(chunk)

    def finish(self) -> None:
        if self.finished:
            return
        if not self.headers_written:
            self._send(b"").add_done_callback(retrieve_outcome)
        self.finished = True
        self.connection.finish()

    def close(self) -> None:
        self.connection.close()
