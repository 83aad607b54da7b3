"""Forwarding an authorized request to its upstream and streaming the answer back.

The last step of the request path (after routing, authentication and
authorization). Bodies flow through in chunks both ways, never whole:

* requests without a body go through ``CurlAsyncHTTPClient`` (when pycurl is
  installed), which keeps connections to upstreams alive;
* requests with a body go through ``SimpleAsyncHTTPClient`` with a
  ``body_producer`` fed by the handler's ``data_received``, so an upload is
  forwarded as it arrives;
* response chunks are written to the client as they arrive; when the client
  reads slower than the upstream sends, the upstream transfer is paused
  (curl) or not read (simple client) until the client catches up.

Hop-by-hop headers, and those named in ``Connection``, are dropped both
ways. A refused or reset upstream is a 502, a timeout a 504, and an
idempotent request that could not connect is retried on the route's next
upstream.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Optional
from urllib.parse import urlsplit

from tornado import httputil, ioloop
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.queues import Queue
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError, SimpleAsyncHTTPClient

try:  # pycurl is part of the default install; without it nothing is reused
    import pycurl
    from tornado.curl_httpclient import CurlAsyncHTTPClient
except ImportError:  # pragma: no cover - exercised only on installs without pycurl
    pycurl = None
    CurlAsyncHTTPClient = None

from .upstream_client import UpstreamClient, UpstreamProtocolError, format_chunk, format_head

log = logging.getLogger("gateway.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
IDENTITY_HEADERS = frozenset(
    {
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
    }
)
# Set by the gateway itself, so a client's copy is never passed on.
GATEWAY_SET = frozenset({
    "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "x-real-ip", "forwarded",
    # Headers some frameworks route or authorize on; a client must not choose them behind the gateway.
    "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-method", "x-original-url",
    "x-original-method", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override",
})
SKIP_REQUEST = HOP_BY_HOP | IDENTITY_HEADERS | GATEWAY_SET | frozenset({"content-length", "expect"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

MAX_CLIENTS = 1024
UNLIMITED_BODY = 1 << 62
# Pause reading from the upstream while this much is written but not yet sent.
HIGH_WATER = 2 * 1024 * 1024
LOW_WATER = 512 * 1024
UPLOAD_QUEUE_CHUNKS = 8

CURL_TIMEOUT_CODES = frozenset({28})  # CURLE_OPERATION_TIMEDOUT
CURL_CONNECT_CODES = frozenset({6, 7})  # CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT


def retrieve_outcome(fut: Any) -> None:
    """Mark a future's outcome as seen (no "exception never retrieved"); failures are handled elsewhere."""
    if not fut.cancelled():
        fut.exception()


def _discard(chunk: bytes) -> None:
    """Curl bodies are taken by our WRITEFUNCTION; this only makes Tornado stream, not buffer."""


class UpstreamError(Exception):
    """The upstream gave no usable answer; ``kind`` is "timeout", "connect" or "reset"."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502


class Clients:
    """The two HTTP clients every proxied request uses; created once per process."""

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

    def origin(self, base: str) -> "Origin":
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = Origin.parse(base)
        return origin

    @property
    def keepalive(self) -> bool:
        return self.fast is not self.stream

    def close(self) -> None:
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

    @classmethod
    def parse(cls, base: str) -> "Origin":
        parts = urlsplit(base)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme == "http", host, port, parts.netloc, parts.path.rstrip("/"))


class Balancer:
    """Round-robin over a route's upstream URLs, starting each request at the next one."""

    def __init__(self, urls: Iterable[str]):
        self.urls = tuple(urls)
        self._counter = itertools.count()

    def order(self) -> "tuple[str, ...]":
        if len(self.urls) == 1:
            return self.urls
        start = next(self._counter) % len(self.urls)
        return self.urls[start:] + self.urls[:start]


def connection_tokens(headers: httputil.HTTPHeaders) -> set[str]:
    """Header names listed in Connection, which are hop-by-hop for this message."""
    tokens = set()
    for value in headers.get_list("Connection"):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


def upstream_header_list(
    incoming: httputil.HTTPHeaders, extra: Iterable[tuple[str, str]], drop: frozenset = frozenset()
) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop, identity and gateway-owned ones, plus ``extra``."""
    skip = SKIP_REQUEST | drop
    named = connection_tokens(incoming) if "Connection" in incoming else ()
    out = [(name, value) for name, value in incoming.get_all()
           if (lower := name.lower()) not in skip and lower not in named
           and ("_" not in lower or lower.replace("_", "-") not in skip)]  # CGI maps _ and - alike
    out.extend(extra)
    return out


def identity_value(value: str, *, list_item: bool = False) -> str:
    """A claim as a header value: control characters (and commas in list items) percent-encoded,
    non-ASCII sent as its UTF-8 bytes, so no claim can add a header line or a group."""
    if value.isascii() and value.isprintable() and not (list_item and "," in value):
        return value
    out = "".join(
        f"%{ord(ch):02X}" if ord(ch) < 0x20 or ord(ch) == 0x7F or (list_item and ch in ",%") else ch
        for ch in value
    )
    return out.encode("utf-8").decode("latin-1")


def forwarded_request_headers(
    incoming: httputil.HTTPHeaders, fwd: Any, request_id: str, identity: Any, login: Any = None
) -> list[tuple[str, str]]:
    """Everything the upstream receives as headers, for the fast path and the handler path alike.

    The client's end-to-end headers (minus hop-by-hop, identity and gateway-owned
    ones, and minus the gateway's own cookies when browser login is on), then
    X-Forwarded-For/-Proto/-Host, X-Request-Id and the caller's identity.
    """
    extra = [
        ("X-Forwarded-For", fwd.chain),
        ("X-Forwarded-Proto", fwd.proto),
        ("X-Forwarded-Host", fwd.host),
        ("X-Request-Id", request_id),
    ]
    if identity is not None:
        extra.append(("X-Forwarded-User", identity_value(identity.sub)))
        if identity.email:
            extra.append(("X-Forwarded-Email", identity_value(identity.email)))
        if identity.groups:
            extra.append(("X-Forwarded-Groups", ",".join(identity_value(g, list_item=True) for g in identity.groups)))
        if identity.preferred_username:
            extra.append(("X-Forwarded-Preferred-Username", identity_value(identity.preferred_username)))
    headers = upstream_header_list(incoming, extra)
    if login is not None and "Cookie" in incoming:
        cookies = [value for name, value in headers if name.lower() == "cookie"]
        headers = [(name, value) for name, value in headers if name.lower() != "cookie"]
        kept = login.upstream_cookie_header(cookies)
        if kept:
            headers.append(("Cookie", kept))
    return headers


class Exchange:
    """One request's trip to the upstream and back, written into a RequestHandler.

    The handler calls ``feed`` for each body chunk (when the request has a
    body), then awaits ``run``; ``run`` raises UpstreamError only while
    nothing has been sent to the client, so the handler can still answer
    502/504 with a clean page.
    """

    def __init__(
        self,
        handler: Any,
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
    ):
        self.handler = handler
        self.clients = clients
        self.balancer = balancer
        self.method = method
        self.path_and_query = path_and_query
        self.headers = headers
        self.content_length = content_length
        self.has_body = has_body
        self.preserve_host = preserve_host
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.upstream: Optional[str] = None  # the URL that answered (for the log)
        self.bytes_sent = 0
        self.started = False  # response headers written to the client
        self._status_line: Optional[str] = None
        self._response_headers = httputil.HTTPHeaders()
        self._conn: Any = None  # the native client's connection, while in use
        self._native_paused = False
        self._timed_out = False
        self._head_flush_pending = False
        self._body_queue: Optional[Queue] = Queue(maxsize=UPLOAD_QUEUE_CHUNKS) if has_body else None
        self._curl: Any = None
        self._curl_paused = False
        self._pending: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._drain_scheduled = False
        self._fetch_done = False
        self._waiting_drain = False
        self._curl_hold = False  # curl must stay paused until the client has drained
        self._client_gone = False
        self._write_error: Optional[BaseException] = None

    # -- request body, fed by the handler ------------------------------------

    def feed(self, chunk: bytes) -> Awaitable[None]:
        """Queue a chunk of the request body; the returned future applies backpressure."""
        assert self._body_queue is not None
        return self._body_queue.put(chunk)

    def end_body(self) -> None:
        if self._body_queue is not None:
            self._body_queue.put(None)  # at once, or as soon as the upload queue has room

    async def _produce(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        assert self._body_queue is not None
        while True:
            chunk = await self._body_queue.get()
            if chunk is None:
                return
            await write(chunk)

    # -- the exchange ---------------------------------------------------------

    async def run(self) -> None:
        urls = self.balancer.order()
        retriable = not self.has_body and self.method in IDEMPOTENT
        last: Optional[UpstreamError] = None
        for attempt, base in enumerate(urls):
            self.upstream = base
            try:
                await self._fetch_once(base)
                return
            except UpstreamError as exc:
                last = exc
                if self.started or not retriable or exc.kind != "connect" or attempt == len(urls) - 1:
                    raise
                log.warning("upstream %s unreachable (%s), trying the next one", base, exc.detail)
        assert last is not None
        raise last

    async def _fetch_once(self, base: str) -> None:
        origin = self.clients.origin(base)
        if origin.plain:
            return await self._fetch_native(origin)
        self._status_line = None
        self._response_headers = httputil.HTTPHeaders()
        headers = httputil.HTTPHeaders()
        for name, value in self.headers:
            headers.add(name, value)
        if self.preserve_host:
            headers["Host"] = self.preserve_host
        if self.content_length is not None:
            headers["Content-Length"] = str(self.content_length)
        use_stream = self.has_body or not self.clients.keepalive
        request = HTTPRequest(
            base + self.path_and_query,
            method=self.method,
            headers=headers,
            body_producer=self._produce if self.has_body else None,
            header_callback=self._on_header_line if use_stream else None,
            streaming_callback=self._on_chunk_stream if use_stream else _discard,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            validate_cert=True,
            request_timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            prepare_curl_callback=None if use_stream else self._on_curl,
        )
        client = self.clients.stream if use_stream else self.clients.fast
        self._fetch_done = False
        try:
            response = await client.fetch(request, raise_error=False)
        except HTTPTimeoutError as exc:
            raise UpstreamError("timeout", str(exc)) from None
        except HTTPStreamClosedError as exc:
            raise UpstreamError("reset", str(exc)) from None
        except HTTPClientError as exc:
            raise self._classify_curl(exc) from None
        except (ConnectionRefusedError, OSError) as exc:
            kind = "connect" if isinstance(exc, (ConnectionRefusedError, ConnectionAbortedError)) or not self.started else "reset"
            raise UpstreamError(kind if isinstance(exc, ConnectionRefusedError) else "reset", str(exc)) from None
        except StreamClosedError as exc:
            raise UpstreamError("reset", str(exc)) from None
        finally:
            self._fetch_done = True
            self._curl = None
            self._drain()  # whatever libcurl delivered before it finished
        if response.code == 599:  # pragma: no cover - clients raise instead
            raise UpstreamError("reset", str(response.error))
        if not self.started:
            # No body arrived (e.g. 204, HEAD, empty 200): headers are still pending.
            if self._status_line is None:
                self._status_line = f"HTTP/1.1 {response.code} {response.reason}"
                self._response_headers = response.headers
            self._start_response()
        if self._write_error is not None:
            raise self._write_error

    # -- plain-http upstreams: the pooled keep-alive client ------------------------

    async def _fetch_native(self, origin: "Origin") -> None:
        headers = [("Host", self.preserve_host or origin.netloc)]
        headers.extend(self.headers)
        chunked = False
        if self.has_body:
            if self.content_length is not None:
                headers.append(("Content-Length", str(self.content_length)))
            else:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = True
        try:
            head = format_head(self.method, origin.path + self.path_and_query, headers)
        except UpstreamProtocolError as exc:
            raise UpstreamError("reset", exc.detail) from None
        loop = asyncio.get_running_loop()
        self._timed_out = False
        deadline = loop.time() + self.timeout
        timer = loop.call_at(deadline, self._on_native_timeout)
        try:
            await self.clients.native.fetch(
                origin.host, origin.port, head, self.method, self._on_native_head, self._on_native_body,
                connect_timeout=self.connect_timeout, deadline=deadline,
                body=(lambda conn: self._send_body(conn, chunked)) if self.has_body else None,
                retry_stale=not self.has_body and self.method in IDEMPOTENT,
                on_connection=self._on_native_connection,
            )
        except UpstreamProtocolError as exc:
            if self._timed_out:
                raise UpstreamError("timeout", f"no complete answer within {self.timeout:g}s") from None
            raise UpstreamError(exc.kind, exc.detail) from None
        except (ConnectionError, OSError) as exc:
            if self._timed_out:
                raise UpstreamError("timeout", f"no complete answer within {self.timeout:g}s") from None
            raise UpstreamError("reset", str(exc)) from None
        finally:
            timer.cancel()
            self._conn = None
            self._head_flush_pending = False  # the handler's finish sends whatever is left
        if self._timed_out:
            raise UpstreamError("timeout", f"no complete answer within {self.timeout:g}s")
        if self._write_error is not None:
            raise self._write_error

    def _on_native_connection(self, conn: Any) -> None:
        self._conn = conn
        if self._timed_out or self._client_gone:
            conn.close()

    def _on_native_timeout(self) -> None:
        self._timed_out = True
        if self._conn is not None:
            self._conn.close()

    async def _send_body(self, conn: Any, chunked: bool) -> None:
        assert self._body_queue is not None
        while True:
            chunk = await self._body_queue.get()
            if chunk is None:
                break
            if conn.closed:
                continue  # the upstream answered or left early; drain what the client sends
            conn.write(format_chunk(chunk) if chunked else chunk)
            await conn.drain()
        if chunked and not conn.closed:
            conn.write(b"0\r\n\r\n")

    def _on_native_head(self, code: int, reason: str, headers: list) -> None:
        self._start_response_from(code, reason, headers, flush=False)
        self._head_flush_pending = True
        asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self) -> None:
        """Headers not yet sent with a body chunk go out now (slow bodies, long polls)."""
        if self._head_flush_pending and not self._client_gone:
            self._head_flush_pending = False
            self._write(b"")

    def _on_native_body(self, chunk: bytes) -> None:
        self._head_flush_pending = False
        if self._client_gone:
            if self._conn is not None:
                self._conn.close()
            return
        self._write(chunk)

    def _classify_curl(self, exc: HTTPClientError) -> UpstreamError:
        errno = getattr(exc, "errno", None)
        if errno in CURL_TIMEOUT_CODES or exc.code == 599 and "timed out" in str(exc).lower():
            return UpstreamError("timeout", str(exc))
        if errno in CURL_CONNECT_CODES and not self.started:
            return UpstreamError("connect", str(exc))
        return UpstreamError("reset", str(exc))

    # -- response, from the upstream to the client ---------------------------

    def _on_curl(self, curl: Any) -> None:
        """Take over curl's header and body callbacks.

        Tornado may deliver a small body before the queued header lines, and its
        own pausing cannot be combined with ours; so libcurl's callbacks only
        record here, and ``_drain`` writes to the client from the IOLoop.
        """
        self._curl = curl
        curl.setopt(pycurl.HEADERFUNCTION, self._on_curl_header)
        curl.setopt(pycurl.WRITEFUNCTION, self._on_curl_body)

    def _on_curl_body(self, chunk: bytes) -> Optional[int]:
        # Runs inside libcurl: queue, or pause the transfer while the client is behind.
        if self._client_gone:
            return 0  # abort the transfer: nobody is reading
        if self._curl_hold or self._queued > HIGH_WATER:
            self._curl_paused = True
            return pycurl.WRITEFUNC_PAUSE  # libcurl hands us this chunk again on resume
        self._pending.append(chunk)
        self._queued += len(chunk)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            ioloop.IOLoop.current().add_callback(self._drain)
        return None

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._pending and not self.started:
            self._start_response(flush=False)
        while self._pending:
            chunk = self._pending.popleft()
            self._queued -= len(chunk)
            self._write(chunk)
        if self._curl_paused and not self._curl_hold:
            self._resume_curl()  # paused only because our queue was full

    def _on_curl_header(self, raw: bytes) -> None:
        # Runs inside libcurl: only record, never call into the handler here.
        self._on_header_line(raw.decode("latin1"), start=False)

    def _on_header_line(self, line: str, start: bool = True) -> None:
        if line.startswith("HTTP/"):
            self._status_line = line.strip()
            self._response_headers = httputil.HTTPHeaders()
        elif line in ("\r\n", "\n"):
            code = self._status_code()
            if start and code is not None and code >= 200 and not self.started:
                self._start_response()
        elif self._status_line is not None:
            try:
                self._response_headers.parse_line(line)
            except httputil.HTTPInputError:
                pass  # a malformed header line from the upstream is dropped

    def _status_code(self) -> Optional[int]:
        if not self._status_line:
            return None
        parts = self._status_line.split(" ", 2)
        try:
            return int(parts[1])
        except (IndexError, ValueError):
            return None

    def _start_response(self, flush: bool = True) -> None:
        parts = (self._status_line or "HTTP/1.1 502 Bad Gateway").split(" ", 2)
        code = int(parts[1])
        reason = parts[2].strip() if len(parts) > 2 else ""
        self._start_response_from(code, reason, list(self._response_headers.get_all()), flush)

    def _start_response_from(self, code: int, reason: str, headers: list, flush: bool = True) -> None:
        """Copy the upstream's status and end-to-end headers to the client (and send them)."""
        self.started = True
        handler = self.handler
        handler.set_status(code, reason.strip() or httputil.responses.get(code, "Unknown"))
        out = handler._headers = httputil.HTTPHeaders()  # nothing of Tornado's defaults
        named: Any = ()
        has_request_id = False
        for name, value in headers:
            lower = name.lower()
            if lower == "connection":
                named = {t.strip().lower() for t in value.split(",")}
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                continue
            if lower == "content-length" and code in (204, 304):
                continue
            if lower == "x-request-id":
                has_request_id = True
            out.add(name, value)
        if not has_request_id:
            out["X-Request-Id"] = handler.request_id
        if flush:  # otherwise the headers go out with the first body chunk, in one send
            self._write(b"")

    def _resume_curl(self) -> None:
        if self._curl_paused and self._curl is not None and not self._fetch_done:
            self._curl_paused = False
            try:
                self._curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                return
            self.clients.fast._set_timeout(0)  # type: ignore[attr-defined]

    def _on_chunk_stream(self, chunk: bytes) -> Optional[Awaitable[None]]:
        if not self.started:
            self._start_response()
        self._write(chunk)
        if self._unflushed > HIGH_WATER:
            return self._drained()  # the simple client stops reading until the client has it all
        return None

    @property
    def _unflushed(self) -> int:
        """Bytes handed to the client connection and not yet on the socket."""
        stream = self._stream()
        try:
            return len(stream._write_buffer) if stream is not None else 0
        except (AttributeError, TypeError):  # pragma: no cover - a Tornado without it
            return 0

    def _stream(self) -> Any:
        connection = getattr(self.handler.request, "connection", None)
        return getattr(connection, "stream", None)

    def _drained(self) -> Any:
        """A future resolved once everything written so far is on the socket.

        An empty IOStream write does exactly that (the future of a handler's
        flush does not: Tornado resolves the latest one when the oldest write
        completes).
        """
        stream = self._stream()
        if stream is None or stream.closed():
            return None
        try:
            fut = stream.write(b"")
        except Exception:
            self._client_gone = True
            return None
        fut.add_done_callback(self._on_drained)
        return fut

    def _write(self, chunk: bytes) -> None:
        if self._client_gone:
            return
        handler = self.handler
        if chunk:
            if self.method == "HEAD":
                return
            handler.write(chunk)
            self.bytes_sent += len(chunk)
        try:
            fut = handler.flush()
        except Exception as exc:  # the client went away
            self._client_gone = True
            self._write_error = exc
            return
        fut.add_done_callback(retrieve_outcome)
        if self._unflushed > HIGH_WATER and not self._waiting_drain:
            self._pause_upstream()

    def _pause_upstream(self) -> None:
        """The client is behind: stop reading the upstream until its buffer is empty."""
        if self._conn is not None and not self._native_paused:
            self._native_paused = True
            self._conn.pause()
        if self._curl is not None:
            self._curl_hold = True
        self._waiting_drain = True
        self._drained()

    def _on_drained(self, fut: Any) -> None:
        self._waiting_drain = False
        if fut.cancelled() or fut.exception() is not None:
            self._client_gone = True
            if self._conn is not None:
                self._conn.close()
            return
        self._curl_hold = False
        self._resume_curl()
        if self._native_paused and self._conn is not None:
            self._native_paused = False
            self._conn.resume()

    def abort(self) -> None:
        """The client disconnected: stop feeding the upstream."""
        self._client_gone = True
        if self._conn is not None:
            self._conn.close()
        self._curl_hold = False
        self._resume_curl()  # a paused transfer resumes only to be aborted by _on_curl_body
        if self._body_queue is not None:
            try:
                self._body_queue.put_nowait(None)
            except Exception:
                pass
