"""The interface between an ``Exchange`` and the client library that reaches the upstream.

An exchange picks one transport per attempt by the origin's scheme
(``native`` for http://, ``curl`` for https://), hands it the ``Request``,
and gets the answer back through the ``Receiver`` callbacks: one head, then
body chunks. Flow control goes the other way: the exchange calls ``pause``
while the client is behind and ``resume`` once it caught up; ``abort`` when
the client left. Whatever state a client library needs stays in its transport.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol

from tornado.queues import Queue


class Request(NamedTuple):
    """What every transport sends: the same for each attempt of one exchange."""

    method: str
    path_and_query: str
    headers: list  # (name, value) pairs, without Host and framing headers
    content_length: Optional[int]
    has_body: bool
    body: Optional[Queue]  # chunks of the request body, then None; None when bodiless
    preserve_host: Optional[str]
    timeout: float
    connect_timeout: float
    tls: Any = None  # the route's UpstreamTLS for https:// upstreams (CA, client certificate, server_name)


class Receiver(Protocol):
    """The exchange, as a transport sees it."""

    head_taken: bool  # the final response head was handed over

    @property
    def gone(self) -> bool:
        """The client went away: stop transferring."""

    def on_head(self, status: int, reason: str, headers: list, flush: bool = True) -> None:
        """The final (non-1xx) response head; with ``flush`` it is sent to the client at once."""

    def on_body(self, chunk: bytes) -> Optional[Any]:
        """A body chunk (b"" sends a pending head); returns a future to wait for when the client is behind."""


class Transport(Protocol):
    """One attempt at one upstream. ``send`` raises ``UpstreamError`` for a failed attempt."""

    async def send(self, origin: Any, request: Request, receiver: Receiver) -> None: ...

    def pause(self) -> None:
        """Stop reading the upstream (the client is behind)."""

    def resume(self) -> None:
        """Read the upstream again."""

    def abort(self) -> None:
        """The client left: end the transfer."""


class UpstreamError(Exception):
    """The upstream gave no usable answer; ``kind`` is "timeout", "connect", "tls" or "reset"."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502
