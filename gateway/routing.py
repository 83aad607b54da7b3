"""Routing: which configured route, if any, answers a request, and what path it forwards.

The first step of the request path, before authentication: the handler calls
``normalize_path`` on the raw path from the request line (a ``BadPath`` is a
400), then ``RouteTable.match(host, path, method)`` (``None`` is a 404). The
route's policy is then applied to the *same* normalised path that is
forwarded upstream (``Match.upstream_path``), so the gateway and the upstream
can never disagree about which route a request belongs to. Pure code: no
Tornado, no I/O.

    >>> table = RouteTable([RouteConfig("api", "/api", ("http://127.0.0.1:9000",),
    ...                                 strip_prefix=True)])
    >>> found = table.match("gw.example.com:8080", normalize_path("/api/v1/%2e/x"), "GET")
    >>> found.route.name, found.upstream_path
    ('api', '/v1/x')

Precedence is deterministic: routes whose host is the request's exact host come
first, then wildcard hosts (the longer suffix first), then routes without a host;
within each class the longest path prefix wins, and between routes with the same
host and path the one earlier in the config. A route whose ``methods`` does not
include the request method is skipped and the search goes on.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .config import RouteConfig

__all__ = ["BadPath", "Match", "MethodNotAllowed", "RouteTable", "normalize_path", "normalize_host",
           "valid_host_header"]


class BadPath(ValueError):
    """A request path the gateway refuses to interpret (answered with 400)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- path normalisation -----------------------------------------------------

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# pchar (RFC 3986 3.3) other than "%": may appear raw and is kept as it is.
_RAW_OK = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_HEX = frozenset("0123456789abcdefABCDEF")
# Bytes that must never appear, raw or percent-encoded: "/" and "\" would let a
# segment smuggle a separator past us to an upstream that decodes it; controls
# (NUL, CR, LF, ...) have no business in a path and break logs and parsers.
_FORBIDDEN_ENCODED = {0x2F: "encoded slash", 0x5C: "encoded backslash"}
# Raw characters that cannot be part of a path as the request line delivers it.
_FORBIDDEN_RAW = {"\\": "backslash", "?": "query separator", "#": "fragment separator"}

# Already canonical: only raw pchars, no "%", no empty segment, and no segment
# that is (or, before a ";", starts as) "." or "..". Linear: segments are
# delimited by "/" which the segment class excludes.
_CANONICAL = re.compile(r"(?:/(?!\.\.?(?:[/;]|\Z))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)*/?")


def normalize_path(raw: str) -> str:
    """Return the canonical form of a raw request path, or raise ``BadPath``.

    ``raw`` is the path from the request line, still percent-encoded, without
    query string (Tornado decodes the request line as latin-1, so each
    character is one byte). Steps, in this order:

    * percent-escapes of unreserved characters (ALPHA DIGIT ``-._~``) are
      decoded, every other escape is kept with upper-case hex (``%25`` stays
      ``%25``: nothing is ever decoded twice); an escape of ``/``, ``\\`` or a
      control character is refused, as is a malformed escape;
    * raw bytes that are not pchars (space, ``"``, ``{``, non-ASCII, ...) are
      percent-encoded; a raw ``\\``, ``?``, ``#`` or control character is
      refused;
    * empty segments are dropped (``//`` becomes ``/``);
    * ``.`` and ``..`` segments are resolved (RFC 3986 5.2.4); ``..`` above
      the root is refused, and so is a segment like ``..;x`` that a servlet
      container would read as ``..`` with a path parameter;
    * a trailing slash is kept (and a trailing dot segment leaves one).
    """
    if not raw.startswith("/"):
        raise BadPath("path does not start with /")
    if ";" in raw:
        # Servlet containers read /admin;x as /admin: matching must not see another route than they do.
        raise BadPath("path parameters (;) are not accepted")
    if _CANONICAL.fullmatch(raw):
        return raw
    pieces = raw.split("/")
    out: List[str] = []
    last = len(pieces) - 1
    trailing_slash = False
    for index in range(1, len(pieces)):
        segment = _canonical_segment(pieces[index])
        if segment == "" or segment == ".":
            pass
        elif segment == "..":
            if not out:
                raise BadPath("path climbs above the root")
            out.pop()
        else:
            if segment.split(";", 1)[0] in (".", ".."):
                raise BadPath("dot segment with a path parameter")
            out.append(segment)
            continue
        if index == last:
            trailing_slash = True
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing_slash else "")


def _canonical_segment(segment: str) -> str:
    """One segment (no "/") in canonical form; see ``normalize_path``."""
    if "%" not in segment and all(c in _RAW_OK for c in segment):
        return segment
    parts: List[str] = []
    high = False  # a byte >= 0x80: the segment's bytes must then be valid UTF-8
    i = 0
    n = len(segment)
    while i < n:
        c = segment[i]
        if c == "%":
            hex_digits = segment[i + 1 : i + 3]
            if len(hex_digits) != 2 or not (hex_digits[0] in _HEX and hex_digits[1] in _HEX):
                raise BadPath("malformed percent-escape")
            value = int(hex_digits, 16)
            if value in _FORBIDDEN_ENCODED:
                raise BadPath(_FORBIDDEN_ENCODED[value])
            if value < 0x20 or value == 0x7F:
                raise BadPath("encoded control character")
            high = high or value > 0x7F
            decoded = chr(value)
            parts.append(decoded if decoded in _UNRESERVED else "%" + hex_digits.upper())
            i += 3
            continue
        if c in _RAW_OK:
            parts.append(c)
        elif c in _FORBIDDEN_RAW:
            raise BadPath(_FORBIDDEN_RAW[c])
        else:
            code = ord(c)
            if code < 0x20 or code == 0x7F:
                raise BadPath("control character")
            if code > 0xFF:
                raise BadPath("character is not a latin-1 byte")
            high = high or code > 0x7F
            parts.append("%%%02X" % code)
        i += 1
    canonical = "".join(parts)
    if high:
        # Overlong and invalid sequences (%C0%AE, %E0%80%AE, %FF) are refused like an encoded "/":
        # a lenient decoder behind the gateway could read them as "." or "/".
        try:
            unquote_to_bytes(canonical).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath("invalid UTF-8 in path") from None
    return canonical


# --- hosts --------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # a gateway sees few distinct Host headers; each is read once
def normalize_host(host: str) -> str:
    """The host part of a Host header: port removed, lower-case, one trailing dot removed.

    ``"Example.COM.:8443"`` -> ``"example.com"``, ``"[::1]:8080"`` -> ``"[::1]"``.
    """
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            return host[: end + 1]
        return host
    name, colon, port = host.rpartition(":")
    if colon and ":" not in name and (port == "" or port.isdigit()):
        host = name
    if host.endswith("."):
        host = host[:-1]
    return host


def _config_host(host: str) -> str:
    """A route's configured host in the form ``normalize_host`` produces."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):  # a bare IPv6 literal
        return "[" + host + "]"
    return host[:-1] if host.endswith(".") else host


# --- the table ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """The route answering a request, and the path to send upstream."""

    route: RouteConfig
    upstream_path: str


class _Bucket:
    """Routes sharing one host class, indexed by their (normalised) path prefix."""

    __slots__ = ("by_path", "max_len")

    def __init__(self) -> None:
        self.by_path: Dict[str, Tuple[Tuple[RouteConfig, str], ...]] = {}
        self.max_len = 0

    def add(self, route: RouteConfig, path: str) -> None:
        self.by_path[path] = self.by_path.get(path, ()) + ((route, path),)
        self.max_len = max(self.max_len, len(path))

    def find(self, path: str, method: str) -> "Optional[Match | MethodNotAllowed]":
        """The route of the longest whole-segment prefix of ``path`` that has routes.

        When the routes at that prefix do not allow ``method``, the answer is
        MethodNotAllowed: a shorter prefix (perhaps a public route) must never
        catch a method the more specific route left out.
        """
        by_path = self.by_path
        if not by_path:
            return None
        # Candidate prefixes, longest first: the path without its trailing
        # slash, then each shorter whole-segment prefix, then "/". Prefixes
        # longer than any route path are skipped without being built.
        prefix = path[:-1] if len(path) > 1 and path.endswith("/") else path
        if len(prefix) > self.max_len:
            if prefix[self.max_len] == "/":
                prefix = prefix[: self.max_len]
            else:
                prefix = prefix[: prefix.rfind("/", 0, self.max_len)]
        while True:
            entries = by_path.get(prefix or "/")
            if entries is not None:
                allowed: set = set()
                for route, route_path in entries:
                    methods = route.methods
                    if methods is None or method in methods or (method == "HEAD" and "GET" in methods):
                        return Match(route, _upstream_path(route, route_path, path))
                    allowed |= methods
                    if "GET" in methods:
                        allowed.add("HEAD")
                return MethodNotAllowed(frozenset(allowed))
            if not prefix or prefix == "/":
                return None
            prefix = prefix[: prefix.rfind("/")]


# A name is dot-separated non-empty labels with at most one trailing dot: "a..b" or ".a"
# would otherwise miss every host route and fall through to a route without a host.
_HOST_HEADER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)?)(?::[0-9]{1,5})?")


@functools.lru_cache(maxsize=1024)
def valid_host_header(host: str) -> bool:
    """A Host header the gateway can route on: a name (no empty label) or IP literal, at most one numeric port."""
    return _HOST_HEADER.fullmatch(host) is not None


@dataclass(frozen=True)
class MethodNotAllowed:
    """The path belongs to routes that do not take this method (answered 405 with Allow)."""

    allowed: frozenset


def _upstream_path(route: RouteConfig, route_path: str, path: str) -> str:
    if not route.strip_prefix or route_path == "/":
        return path
    return path[len(route_path) :] or "/"


class RouteTable:
    """The routes of one config, compiled for ``match``; immutable once built."""

    def __init__(self, routes: Sequence[RouteConfig]):
        self.routes: Tuple[RouteConfig, ...] = tuple(routes)
        self._exact: Dict[str, _Bucket] = {}
        self._wildcard: Dict[str, _Bucket] = {}  # ".example.com" -> bucket
        self._any = _Bucket()
        for route in self.routes:
            path = self._route_path(route)
            if route.host is None:
                bucket = self._any
            else:
                host = _config_host(route.host)
                if host.startswith("*."):
                    bucket = self._wildcard.setdefault(host[1:], _Bucket())
                else:
                    bucket = self._exact.setdefault(host, _Bucket())
            bucket.add(route, path)

    @staticmethod
    def _route_path(route: RouteConfig) -> str:
        try:
            path = normalize_path(route.path)
        except BadPath as exc:
            raise ValueError(f"route {route.name!r}: bad path {route.path!r}: {exc.reason}") from None
        return path.rstrip("/") or "/"

    def considered(self, host: str, path: str, method: str) -> list[Tuple[RouteConfig, bool, str]]:
        """Every route with whether it could take this request and why not (for ``gateway explain``).

        ``match`` decides; this only describes: among the routes that could,
        host routes (exact, then wildcard) come before host-less ones, and the
        longest path prefix wins.
        """
        host = normalize_host(host)
        out = []
        for route in self.routes:
            route_path = self._route_path(route)
            pattern = _config_host(route.host) if route.host else None
            if pattern is not None and not (host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])
                                                                 and host != pattern[2:])):
                out.append((route, False, f"host {route.host} is not {host}"))
            elif not (route_path == "/" or path == route_path or path.startswith(route_path + "/")):
                out.append((route, False, f"path {route_path} is not a whole-segment prefix of {path}"))
            elif route.methods is not None and method.upper() not in route.methods and not (
                    method.upper() == "HEAD" and "GET" in route.methods):
                out.append((route, False, f"methods {', '.join(sorted(route.methods))} leave out {method.upper()}"))
            else:
                how = "exact host" if pattern and not pattern.startswith("*.") else (
                    "wildcard host" if pattern else "any host")
                out.append((route, True, f"{how}, path prefix {route_path} ({len(route_path)} characters)"))
        return out

    def match(self, host: str, path: str, method: str) -> "Optional[Match | MethodNotAllowed]":
        """The route for a request, or None (404).

        ``host`` is the Host header as sent (port and trailing dot allowed),
        ``path`` the output of ``normalize_path``; ``method`` is compared
        upper-cased, as the policy does.
        """
        host = normalize_host(host)
        method = method.upper()
        bucket = self._exact.get(host)
        if bucket is not None:
            found = bucket.find(path, method)
            if found is not None:
                return found
        if self._wildcard:
            dot = host.find(".", 1)
            while dot != -1:
                bucket = self._wildcard.get(host[dot:])
                if bucket is not None:
                    found = bucket.find(path, method)
                    if found is not None:
                        return found
                dot = host.find(".", dot + 1)
        return self._any.find(path, method)
