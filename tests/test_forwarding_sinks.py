"""gateway/forwarding/sinks.py: the two ResponseSink adapters, against fake Tornado objects.

What the exchange relies on: nothing is sent before ``write``; the head goes out
with the first chunk in one send; HEAD answers carry no body bytes; a failed
write never raises but sets ``gone``; ``pending`` and ``drained`` measure the
client connection's stream.
"""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest
from tornado.concurrent import Future
from tornado.httputil import HTTPHeaders

from gateway.forwarding.sinks import ConnectionSink, HandlerSink, ResponseSink


class Done:
    """A completed write, usable without an event loop."""

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


def done() -> Done:
    return Done()


class FakeStream:
    def __init__(self) -> None:
        self._write_buffer = bytearray()
        self.is_closed = False
        self.drains: List[Future] = []

    def closed(self) -> bool:
        return self.is_closed

    def write(self, data: bytes) -> Future:
        fut: Future = Future()
        self.drains.append(fut)
        return fut


class FakeConnection:
    """The part of tornado.http1connection.HTTP1Connection the sink uses."""

    def __init__(self) -> None:
        self.stream = FakeStream()
        self.sent: List[Any] = []
        self.finished = self.closed = False

    def write_headers(self, start: Any, headers: HTTPHeaders, chunk: bytes) -> Done:
        self.sent.append((start.code, start.reason, list(headers.get_all()), chunk))
        return done()

    def write(self, chunk: bytes) -> Done:
        self.sent.append(chunk)
        return done()

    def finish(self) -> None:
        self.finished = True

    def close(self) -> None:
        self.closed = True


class FakeRequest:
    def __init__(self, method: str) -> None:
        self.method = method
        self.connection = FakeConnection()


class FakeHandler:
    """The part of a tornado RequestHandler the sink uses."""

    def __init__(self, method: str = "GET") -> None:
        self.request = FakeRequest(method)
        self.request_id = "rid"
        self._headers = HTTPHeaders({"Server": "TornadoServer/6"})
        self._status = 200
        self._finished = False
        self.written: List[bytes] = []
        self.flushes = 0
        self.fail_flush = False

    def set_status(self, code: int, reason: str) -> None:
        self._status, self.reason = code, reason

    def get_status(self) -> int:
        return self._status

    def write(self, chunk: bytes) -> None:
        self.written.append(chunk)

    def flush(self) -> Done:
        if self.fail_flush:
            raise RuntimeError("Cannot flush after finish()")
        self.flushes += 1
        return done()

    def finish(self) -> None:
        self._finished = True


HEAD_LIST = [("Content-Type", "text/plain"), ("X-Request-Id", "rid")]


@pytest.mark.parametrize("method,body", [("GET", b"hello"), ("HEAD", b"")])
def test_connection_sink_sends_head_with_first_chunk(method, body):
    conn = FakeConnection()
    sink: ResponseSink = ConnectionSink(conn, "rid", method)
    sink.start(201, "Created", HEAD_LIST)
    assert sink.started and sink.status == 201 and conn.sent == []
    sink.write(b"hello")
    sink.write(b"")
    sink.finish()
    assert conn.sent[0] == (201, "Created", HEAD_LIST, body)
    assert conn.finished and not sink.gone


def test_connection_sink_finish_alone_sends_the_head():
    conn = FakeConnection()
    sink = ConnectionSink(conn, "rid", "GET")
    sink.start(204, "No Content", [])
    sink.finish()
    assert conn.sent == [(204, "No Content", [], b"")] and conn.finished


def test_connection_sink_write_after_finish_sets_gone_without_raising():
    conn = FakeConnection()
    sink = ConnectionSink(conn, "rid", "GET")
    sink.start(200, "OK", [])
    sink.finish()
    sink.write(b"late")
    assert sink.gone
    sink.close()
    assert conn.closed


@pytest.mark.parametrize("method,written", [("GET", [b"abc"]), ("HEAD", [])])
def test_handler_sink_replaces_tornado_headers_and_flushes(method, written):
    handler = FakeHandler(method)
    sink = HandlerSink(handler)
    sink.start(404, "Not Found", HEAD_LIST)
    assert list(handler._headers.get_all()) == HEAD_LIST and sink.status == 404
    sink.write(b"abc")
    assert handler.written == written
    sink.write(b"")
    assert handler.flushes == (2 if method == "GET" else 1)
    sink.finish()
    assert handler._finished


def test_handler_sink_failed_flush_sets_gone():
    handler = FakeHandler()
    handler.fail_flush = True
    sink = HandlerSink(handler)
    sink.start(200, "OK", [])
    sink.write(b"x")
    assert sink.gone and isinstance(sink.error, RuntimeError)
    sink.write(b"y")  # ignored once gone
    assert handler.written == [b"x"]


@pytest.mark.parametrize("make", [lambda: HandlerSink(FakeHandler()),
                                  lambda: ConnectionSink(FakeConnection(), "rid", "GET")])
def test_pending_and_drained_measure_the_stream(make):
    async def check() -> None:
        sink = make()
        stream = sink._stream()
        stream._write_buffer += b"x" * 100
        assert sink.pending() == 100
        fut = sink.drained()
        assert fut is stream.drains[-1] and not sink.gone
        fut.set_exception(ConnectionResetError())
        await asyncio.sleep(0)  # done callbacks run on the loop
        assert sink.gone  # a failed drain means the client is gone
        stream.is_closed = True
        assert sink.drained() is None

    asyncio.run(check())


# -- the fast path's header lines: HTTPHeaders.add's verdicts and spelling, without an HTTPHeaders --

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tornado.httputil import HTTPInputError  # noqa: E402

from gateway.forwarding.sinks import checked_lines  # noqa: E402

_NAMES = st.one_of(st.sampled_from(["content-type", "X-Request-Id", "set-cookie", "ETAG", "x_y", "a b", "", "é",
                                    "x:y", "WWW-authenticate"]), st.text(alphabet="aZ-_:!\t ", max_size=5))
_VALUES = st.one_of(st.sampled_from(["", "text/html", " lead", "trail ", "a\tb", "a\r\nb", "\x00", "é", "ÿ", "Ā",
                                     "\x7f", "a  b"]), st.text(alphabet="ab \t\r\n\x01é\u0100", max_size=5))


def _tornado_lines(headers):
    out = HTTPHeaders()
    try:
        for name, value in headers:
            out.add(name, value)
    except HTTPInputError:
        return ("refused",)
    return ("ok", sorted(out.get_all()))


def _our_lines(headers):
    try:
        return ("ok", sorted(checked_lines(headers)))
    except HTTPInputError:
        return ("refused",)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=4))
def test_checked_lines_refuse_and_spell_what_httpheaders_add_does(headers):
    assert _our_lines(headers) == _tornado_lines(headers)
