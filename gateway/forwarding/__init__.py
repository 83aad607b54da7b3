"""Forwarding an admitted request to its upstream and streaming the answer back.

The last step of the request path. ``headers`` is the header policy both ways,
``sinks`` where the answer is written (a handler or a bare connection),
``transport`` the interface to the client libraries (``native`` for http://,
``curl`` for https://), and ``exchange`` the one object callers use.
"""

from .curl import HIGH_WATER
from .exchange import LOW_WATER, Balancer, Clients, Exchange, Origin
from .headers import (
    GATEWAY_SET,
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    connection_tokens,
    cookie_header_without,
    forwarded_request_headers,
    identity_headers,
    identity_value,
    response_headers,
    upstream_header_list,
)
from .sinks import ConnectionSink, HandlerSink, ResponseSink, retrieve_outcome
from .transport import Request, Transport, UpstreamError

__all__ = [
    "HIGH_WATER", "LOW_WATER", "Balancer", "Clients", "Exchange", "Origin", "GATEWAY_SET", "HOP_BY_HOP",
    "IDENTITY_HEADERS", "connection_tokens", "cookie_header_without", "forwarded_request_headers", "identity_headers",
    "identity_value",
    "response_headers", "upstream_header_list", "ConnectionSink", "HandlerSink", "ResponseSink", "retrieve_outcome",
    "Request", "Transport", "UpstreamError",
]
