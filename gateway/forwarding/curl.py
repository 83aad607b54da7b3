"""The https:// transports: Tornado's CurlAsyncHTTPClient, and SimpleAsyncHTTPClient for bodies.

``Exchange`` uses these for every ``https://`` upstream (plain http goes
through ``native``). A bodiless request goes through curl, which keeps TLS
connections alive; our own libcurl header and write callbacks only record,
and the IOLoop hands the answer to the exchange, pausing the transfer while
the client is behind. A request with a body goes through the simple client
with a ``body_producer`` fed from the exchange's body queue, so an upload is
forwarded as it arrives (also the fallback for installs without pycurl).
"""

from __future__ import annotations

import collections
import functools
import os
import ssl
from typing import Any, Optional

from tornado import httputil, ioloop
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from .transport import Receiver, Request, UpstreamError

try:  # pycurl is part of the default install; without it nothing is reused
    import pycurl
    from tornado.curl_httpclient import CurlAsyncHTTPClient
except ImportError:  # pragma: no cover - exercised only on installs without pycurl
    pycurl = None
    CurlAsyncHTTPClient = None

# Pause reading from the upstream while this much is written but not yet sent.
HIGH_WATER = 2 * 1024 * 1024

CURL_TIMEOUT_CODES = frozenset({28})  # CURLE_OPERATION_TIMEDOUT
CURL_CONNECT_CODES = frozenset({6, 7})  # CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT
# SSL_CONNECT_ERROR, PEER_FAILED_VERIFICATION, SSL_CERTPROBLEM, SSL_CIPHER, SSL_CACERT, SSL_CACERT_BADFILE,
# SSL_ISSUER_ERROR, SSL_CLIENTCERT
CURL_TLS_CODES = frozenset({35, 51, 58, 59, 60, 77, 83, 98})
CURLOPT_CA_CACHE_TIMEOUT = 321  # not named by pycurl 7.45


def tls_problem(text: str) -> str:
    """What went wrong in a TLS handshake with an upstream, in words an operator acts on."""
    lower = text.lower()
    if "expired" in lower:
        why = "its certificate has expired"
    elif "hostname" in lower or "subject name" in lower or "does not match" in lower:
        why = "its certificate is for another name (set tls.server_name, or fix the URL)"
    elif "self-signed" in lower or "self signed" in lower or "local issuer" in lower or "unknown ca" in lower:
        why = "its certificate is signed by a CA the gateway does not trust (set tls.ca)"
    elif "certificate required" in lower or "handshake failure" in lower or "bad certificate" in lower:
        why = "it wants a client certificate the gateway did not present, or refused it (tls.cert and tls.key)"
    else:
        why = "the TLS handshake failed"
    return f"{why}: {text[:200]}"


def _system_ca() -> Optional[str]:
    """The system's CA bundle, as Python's ssl finds it (SSL_CERT_FILE first). libcurl builds differ in
    where they look (a wheel's built-in path may not exist here), so curl is told this one."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile,
                      "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


SYSTEM_CA = _system_ca()

_CONTEXTS: dict = {}  # (settings, file stamps) -> SSLContext: built once, again when a file changes


def _stamp(path: str) -> tuple:
    try:
        info = os.stat(path)
    except OSError:
        return (path,)
    return (path, info.st_mtime_ns, info.st_size)


def _ssl_context(tls: Any) -> ssl.SSLContext:
    """The simple client's TLS (requests with a body): verified, TLS 1.2 at least, the route's CA and client cert."""
    key = (tls, tuple(_stamp(p) for p in (tls.ca, tls.cert, tls.key) if p) if tls is not None else ())
    context = _CONTEXTS.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=(tls.ca or None) if tls is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls is not None and tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
        if len(_CONTEXTS) > 256:
            _CONTEXTS.clear()
        _CONTEXTS[key] = context
    return context


def _discard(chunk: bytes) -> None:
    """Curl bodies are taken by our WRITEFUNCTION; this only makes Tornado stream, not buffer."""


class CurlTransport:
    """One attempt at an https:// upstream: curl without a body, the simple client with one."""

    def __init__(self, client: AsyncHTTPClient, streaming: bool):
        self.client = client
        self.streaming = streaming  # the simple client, with header/streaming callbacks
        self._receiver: Optional[Receiver] = None
        self._status_line: Optional[str] = None
        self._response_headers = httputil.HTTPHeaders()
        self._curl: Any = None
        self._curl_paused = False
        self._curl_hold = False  # curl must stay paused until the client has drained
        self._pending: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._drain_scheduled = False
        self._fetch_done = False

    async def send(self, origin: Any, request: Request, receiver: Receiver) -> None:
        self._receiver = receiver
        self._status_line = None
        self._response_headers = httputil.HTTPHeaders()
        headers = httputil.HTTPHeaders()
        for name, value in request.headers:
            headers.add(name, value)
        tls = request.tls
        url = origin.base + request.path_and_query
        if request.preserve_host:
            headers["Host"] = request.preserve_host
        elif tls is not None and tls.server_name and tls.server_name != origin.host:
            # Verified (and sent as SNI) under server_name, connected to the URL's host, Host as configured.
            headers["Host"] = origin.netloc
            url = f"https://{tls.server_name}:{origin.port}{origin.path}{request.path_and_query}"
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        body = request.body
        use_stream = self.streaming

        async def produce(write: Any) -> None:
            assert body is not None
            while True:
                chunk = await body.get()
                if chunk is None:
                    return
                await write(chunk)

        http_request = HTTPRequest(
            url,
            method=request.method,
            headers=headers,
            body_producer=produce if request.has_body else None,
            header_callback=self._on_header_line if use_stream else None,
            streaming_callback=self._on_chunk_stream if use_stream else _discard,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            validate_cert=True,
            request_timeout=request.timeout,
            connect_timeout=request.connect_timeout,
            prepare_curl_callback=None if use_stream else functools.partial(self._on_curl, origin, tls),
            ca_certs=(tls.ca if tls is not None and tls.ca else SYSTEM_CA),
            client_cert=(tls.cert or None) if tls is not None else None,
            client_key=(tls.key or None) if tls is not None else None,
            ssl_options=_ssl_context(tls) if use_stream else None,
        )
        self._fetch_done = False
        try:
            response = await self.client.fetch(http_request, raise_error=False)
        except HTTPTimeoutError as exc:
            raise UpstreamError("timeout", str(exc)) from None
        except HTTPStreamClosedError as exc:
            raise UpstreamError("reset", str(exc)) from None
        except HTTPClientError as exc:
            raise self._classify_curl(exc) from None
        except ssl.SSLError as exc:  # the simple client (requests with a body): the handshake failed
            raise UpstreamError("tls", tls_problem(str(exc))) from None
        except (ConnectionRefusedError, OSError) as exc:
            raise UpstreamError("connect" if isinstance(exc, ConnectionRefusedError) else "reset", str(exc)) from None
        except StreamClosedError as exc:
            raise UpstreamError("reset", str(exc)) from None
        finally:
            self._fetch_done = True
            self._curl = None
            self._drain()  # whatever libcurl delivered before it finished
        if response.code == 599:  # pragma: no cover - clients raise instead
            raise UpstreamError("reset", str(response.error))
        if not receiver.head_taken:
            # No body arrived (e.g. 204, HEAD, empty 200): headers are still pending.
            if self._status_line is None:
                self._status_line = f"HTTP/1.1 {response.code} {response.reason}"
                self._response_headers = response.headers
            self._start_response()

    def _classify_curl(self, exc: HTTPClientError) -> UpstreamError:
        errno = getattr(exc, "errno", None)
        if errno in CURL_TLS_CODES:
            return UpstreamError("tls", tls_problem(str(exc)))
        if errno in CURL_TIMEOUT_CODES or exc.code == 599 and "timed out" in str(exc).lower():
            return UpstreamError("timeout", str(exc))
        if errno in CURL_CONNECT_CODES and not (self._receiver is not None and self._receiver.head_taken):
            return UpstreamError("connect", str(exc))
        return UpstreamError("reset", str(exc))

    # -- curl: libcurl's callbacks only record; the IOLoop delivers ------------------

    def _on_curl(self, origin: Any, tls: Any, curl: Any) -> None:
        """TLS 1.2 at least, the route's server_name, and curl's header and body callbacks taken over.

        Tornado may deliver a small body before the queued header lines, and its
        own pausing cannot be combined with ours; so libcurl's callbacks only
        record here, and ``_drain`` hands the answer over from the IOLoop.
        """
        curl.setopt(pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2)
        if tls is not None and tls.ca:
            # libcurl keeps a parsed CA file for a day (CURLOPT_CA_CACHE_TIMEOUT): a changed tls.ca must count at once
            try:
                curl.setopt(CURLOPT_CA_CACHE_TIMEOUT, 0)
            except pycurl.error:  # pragma: no cover - a libcurl older than 7.87 has no such cache
                pass
        if tls is not None and tls.server_name and tls.server_name != origin.host:
            curl.setopt(pycurl.CONNECT_TO, [f"{tls.server_name}:{origin.port}:{origin.host}:{origin.port}"])
        self._curl = curl
        curl.setopt(pycurl.HEADERFUNCTION, self._on_curl_header)
        curl.setopt(pycurl.WRITEFUNCTION, self._on_curl_body)

    def _on_curl_body(self, chunk: bytes) -> Optional[int]:
        # Runs inside libcurl: queue, or pause the transfer while the client is behind.
        if self._receiver is None or self._receiver.gone:
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
        receiver = self._receiver
        if self._pending and receiver is not None and not receiver.head_taken:
            self._start_response(flush=False)
        while self._pending:
            chunk = self._pending.popleft()
            self._queued -= len(chunk)
            assert receiver is not None
            receiver.on_body(chunk)
        if self._curl_paused and not self._curl_hold:
            self._resume_curl()  # paused only because our queue was full

    def _on_curl_header(self, raw: bytes) -> None:
        # Runs inside libcurl: only record, never call into the exchange here.
        self._on_header_line(raw.decode("latin1"), start=False)

    def _resume_curl(self) -> None:
        if self._curl_paused and self._curl is not None and not self._fetch_done:
            self._curl_paused = False
            try:
                self._curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                return
            self.client._set_timeout(0)  # type: ignore[attr-defined]

    # -- header lines (both clients) and the simple client's body -----------------------

    def _on_header_line(self, line: str, start: bool = True) -> None:
        if line.startswith("HTTP/"):
            self._status_line = line.strip()
            self._response_headers = httputil.HTTPHeaders()
        elif line in ("\r\n", "\n"):
            code = self._status_code()
            if start and code is not None and code >= 200 and self._receiver is not None and not self._receiver.head_taken:
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
        assert self._receiver is not None
        self._receiver.on_head(code, reason, list(self._response_headers.get_all()), flush)

    def _on_chunk_stream(self, chunk: bytes) -> Any:
        receiver = self._receiver
        assert receiver is not None
        if not receiver.head_taken:
            self._start_response()
        return receiver.on_body(chunk)  # the simple client stops reading until the future resolves

    # -- flow control --------------------------------------------------------------------

    def pause(self) -> None:
        if self._curl is not None:
            self._curl_hold = True

    def resume(self) -> None:
        self._curl_hold = False
        self._resume_curl()

    def abort(self) -> None:
        self._curl_hold = False
        self._resume_curl()  # a paused transfer resumes only to be aborted by _on_curl_body
