"""Interim: the forwarding package's API over today's proxy module (replaced by the package split)."""

from __future__ import annotations

from typing import Any, Optional

from tornado import httputil

from ..proxy import (  # noqa: F401
    HIGH_WATER, Balancer, Clients, Exchange, UpstreamError, identity_value, retrieve_outcome, upstream_header_list,
)
from .. import proxy as _proxy


class _OwnCookies:
    def __init__(self, name: str):
        self.cookie_name = name

    def upstream_cookie_header(self, values: list) -> str:
        kept = []
        for value in values:
            for part in value.split(";"):
                name = part.split("=", 1)[0].strip()
                if not name or name == self.cookie_name or name.startswith(self.cookie_name + "_"):
                    continue
                kept.append(part.strip())
        return "; ".join(kept)


def forwarded_request_headers(incoming: Any, fwd: Any, request_id: str, identity: Any,
                              own_cookie: Optional[str] = None) -> list:
    return _proxy.forwarded_request_headers(incoming, fwd, request_id, identity,
                                            _OwnCookies(own_cookie) if own_cookie else None)


def HandlerSink(handler: Any) -> Any:  # noqa: N802
    return handler


class ConnectionSink:
    def __init__(self, request_connection: Any, request_id: str, method: str):
        self.connection = request_connection
        self.request = type("R", (), {"connection": request_connection})()
        self.request_id = request_id
        self.method = method
        self.status = 200
        self.reason = "OK"
        self._headers = httputil.HTTPHeaders()
        self._chunks: list = []
        self.headers_written = False
        self.finished = False

    def set_status(self, code: int, reason: str) -> None:
        self.status, self.reason = code, reason

    def start(self, status: int, reason: str, headers: list) -> None:
        self.status, self.reason = status, reason
        self._headers = httputil.HTTPHeaders()
        for n, v in headers:
            self._headers.add(n, v)

    def write(self, chunk: bytes) -> None:
        if chunk and self.method != "HEAD":
            self._chunks.append(chunk)

    def flush(self) -> Any:
        chunk = b"".join(self._chunks)
        self._chunks.clear()
        if not self.headers_written:
            self.headers_written = True
            return self.connection.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", self.status, self.reason), self._headers, chunk)
        return self.connection.write(chunk)

    def finish(self) -> None:
        if self.finished:
            return
        if not self.headers_written or self._chunks:
            self.flush().add_done_callback(retrieve_outcome)
        self.finished = True
        self.connection.finish()

    def close(self) -> None:
        self.connection.close()
