"""Header policy for forwarding: what crosses the gateway, in each direction.

Pure functions, applied on the way out (``forwarded_request_headers``: the
client's request headers become the upstream's) and on the way back
(``response_headers``: the upstream's response headers become the client's),
by every transport alike. Hop-by-hop headers, and those named in
``Connection``, never cross; identity and gateway-set headers from a client
are dropped so only the gateway can set them.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

from tornado import httputil

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
    # Client addresses that CDNs, load balancers and frameworks believe: only the gateway says who called.
    "true-client-ip", "x-client-ip", "cf-connecting-ip", "client-ip", "x-cluster-client-ip", "fastly-client-ip",
    "x-originating-ip", "x-remote-ip", "x-remote-addr", "x-real-client-ip", "x-forwarded-client-ip",
    "x-envoy-external-address", "x-appengine-user-ip", "akamai-client-ip", "x-forwarded", "forwarded-for",
    "x-proxyuser-ip", "wl-proxy-client-ip", "proxy-client-ip",
})
SKIP_REQUEST = HOP_BY_HOP | IDENTITY_HEADERS | GATEWAY_SET | frozenset({"content-length", "expect"})


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


def cookie_header_without(values: list[str], own_cookie: str) -> str:
    """The client's Cookie header values joined, without the gateway's own cookies
    (``own_cookie`` and ``own_cookie + "_..."``), which upstreams must never see."""
    kept = []
    for value in values:
        for part in value.split(";"):
            name = part.split("=", 1)[0].strip()
            if name and not own_cookie_name(name, own_cookie):
                kept.append(part.strip())
    return "; ".join(kept)


def identity_headers(identity: Any, prefix: str) -> list[tuple[str, str]]:
    """The caller's identity as headers (``X-Forwarded-*`` to upstreams, ``X-Auth-Request-*`` for
    forward-auth), each value made safe by ``identity_value``."""
    out = [(prefix + "User", identity_value(identity.sub))]
    if identity.email:
        out.append((prefix + "Email", identity_value(identity.email)))
    if identity.groups:
        out.append((prefix + "Groups", ",".join(identity_value(g, list_item=True) for g in identity.groups)))
    if identity.preferred_username:
        out.append((prefix + "Preferred-Username", identity_value(identity.preferred_username)))
    return out


def forwarded_request_headers(
    incoming: httputil.HTTPHeaders, fwd: Any, request_id: str, identity: Any, own_cookie: Optional[str] = None,
    assertion: Optional[tuple[str, str]] = None, drop: frozenset = frozenset(),
) -> list[tuple[str, str]]:
    """Everything the upstream receives as headers, for the fast path and the handler path alike.

    The client's end-to-end headers (minus hop-by-hop, identity and gateway-owned
    ones, and minus the gateway's own cookies when ``own_cookie``, the session
    cookie name, is given, and minus ``drop``: every header an identity
    assertion may travel in), then X-Forwarded-For/-Proto/-Host, X-Request-Id,
    the caller's identity and its signed ``assertion`` (header, JWT).
    """
    extra = [
        ("X-Forwarded-For", fwd.chain),
        ("X-Forwarded-Proto", fwd.proto),
        ("X-Forwarded-Host", fwd.host),
        ("X-Request-Id", request_id),
    ]
    if identity is not None:
        extra.extend(identity_headers(identity, "X-Forwarded-"))
    if assertion is not None:
        extra.append(assertion)
    headers = upstream_header_list(incoming, extra, drop)
    if own_cookie is not None and "Cookie" in incoming:
        cookies = [value for name, value in headers if name.lower() == "cookie"]
        headers = [(name, value) for name, value in headers if name.lower() != "cookie"]
        kept = cookie_header_without(cookies, own_cookie)
        if kept:
            headers.append(("Cookie", kept))
    return headers


def own_cookie_name(name: str, own_cookie: str) -> bool:
    """The gateway's own cookies: the session cookie, its chunks, pending logins (``NAME`` and ``NAME_*``)."""
    return name == own_cookie or name.startswith(own_cookie + "_")


def response_headers(status: int, headers: Iterable[tuple[str, str]], request_id: str,
                     own_cookie: Optional[str] = None) -> list[tuple[str, str]]:
    """The upstream's response headers as the client receives them: without hop-by-hop ones and
    those named in Connection, without Content-Length on 204/304, with X-Request-Id when absent,
    and without any Set-Cookie for the gateway's own cookies (no app behind the gateway may fix
    or end a session)."""
    headers = list(headers)
    named: Any = ()
    for name, value in headers:
        if name.lower() == "connection":
            named = {t.strip().lower() for t in value.split(",")}
    out = []
    has_request_id = False
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        if lower == "content-length" and status in (204, 304):
            continue
        if lower == "x-request-id":
            has_request_id = True
        if lower == "set-cookie" and own_cookie:
            cookie = value.split(";", 1)[0].split("=", 1)[0].strip()
            if own_cookie_name(cookie, own_cookie):
                log.warning("dropped an upstream Set-Cookie for the gateway's own cookie %s", cookie[:64])
                continue
        out.append((name, value))
    if not has_request_id:
        out.append(("X-Request-Id", request_id))
    return out
