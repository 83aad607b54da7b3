"""OpenID Connect Discovery: fetch and cache ``{issuer}/.well-known/openid-configuration``.

Used by ``tokens`` (an issuer without ``secret``, ``public_key`` or ``jwks_uri``
finds its ``jwks_uri`` here) and by the browser login code (authorization,
token and end-session endpoints). Nothing here runs on the request path
once a document is cached::

    cache = DiscoveryCache(AsyncHTTPClient())
    doc = await cache.get("https://idp.example.com")
    doc["jwks_uri"]

The HTTP client is always passed in. Errors are ``DiscoveryError`` with a
message fit for a log line: URLs are shown without their query string and
response bodies are never echoed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from .redact import safe_url

log = logging.getLogger("gateway.discovery")

WELL_KNOWN_PATH = "/.well-known/openid-configuration"
DEFAULT_DISCOVERY_TTL = 3600.0
DEFAULT_DISCOVERY_TIMEOUT = 10.0
DEFAULT_DISCOVERY_RETRY = 30.0  # after a failed refresh, serve the old document this long
MAX_DOCUMENT_BYTES = 1 << 20


class DiscoveryError(Exception):
    """The discovery document could not be fetched (``unreachable``) or is not acceptable."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def describe_fetch_error(exc: BaseException, url: str) -> str:
    """A short, secret-free description of a failed fetch of ``url``."""
    if isinstance(exc, HTTPClientError):
        text = f"HTTP {exc.code}" if exc.code != 599 else (exc.message or "no response")
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if url and url in text:
        text = text.replace(url, safe_url(url))
    return text[:200]


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + WELL_KNOWN_PATH


async def fetch_json(
    http_client: AsyncHTTPClient, url: str, *, timeout: float, what: str
) -> tuple[Any, HTTPResponse]:
    """GET ``url`` and parse JSON; returns ``(document, response)``.

    Raises ``DiscoveryError`` on a network error, a non-200 status, an
    oversized body or a body that is not JSON. ``what`` names the document in
    the message ("discovery document", "JWKS").
    """
    request = HTTPRequest(
        url,
        method="GET",
        headers={"Accept": "application/json"},
        connect_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        response = await http_client.fetch(request, raise_error=False)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise DiscoveryError(
            f"fetching {what} from {safe_url(url)} failed: {describe_fetch_error(exc, url)}", unreachable=True
        ) from None
    if response.code != 200:
        raise DiscoveryError(f"fetching {what} from {safe_url(url)} failed: HTTP {response.code}",
                             unreachable=response.code >= 500 or response.code == 429)
    body = response.body or b""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise DiscoveryError(f"{what} from {safe_url(url)} is too large ({len(body)} bytes)")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise DiscoveryError(f"{what} from {safe_url(url)} is not valid JSON") from None
    return document, response


async def fetch_discovery(
    http_client: AsyncHTTPClient, issuer: str, *, timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
    also: Tuple[str, ...] = (),
) -> Dict[str, Any]:
    """Fetch and check the discovery document of ``issuer``.

    The document must be a JSON object whose ``issuer`` is exactly the
    configured one (OpenID Connect Discovery 1.0, section 4.3): a trailing
    slash or a different scheme is a mismatch, because tokens carry the
    issuer string verbatim. ``also`` are other issuer strings the document may
    name (Microsoft's multi-tenant endpoints name a ``{tenantid}`` template).
    """
    url = discovery_url(issuer)
    document, _ = await fetch_json(http_client, url, timeout=timeout, what="discovery document")
    if not isinstance(document, dict):
        raise DiscoveryError(f"discovery document from {safe_url(url)} is not a JSON object")
    found = document.get("issuer")
    if found != issuer and found not in also:
        shown = repr(found)[:200] if isinstance(found, str) else "none"
        raise DiscoveryError(
            f"issuer mismatch: discovery says {shown}, config says {issuer!r} "
            f"(from {safe_url(url)}; the two must be equal exactly, trailing slash included)"
        )
    return document


class _Entry:
    __slots__ = ("document", "fresh_until")

    def __init__(self, document: Dict[str, Any], fresh_until: float):
        self.document = document
        self.fresh_until = fresh_until


class DiscoveryCache:
    """Discovery documents by issuer, refreshed after ``ttl`` seconds (monotonic).

    ``get`` returns a cached document while it is fresh. A stale one is
    refreshed (callers for the same issuer share one fetch); if that fails,
    the last good document is kept for ``retry_interval`` more seconds and a
    warning is logged. Without any good document, ``get`` raises
    ``DiscoveryError``.
    """

    def __init__(
        self,
        http_client: AsyncHTTPClient,
        *,
        ttl: float = DEFAULT_DISCOVERY_TTL,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        retry_interval: float = DEFAULT_DISCOVERY_RETRY,
    ):
        self._http = http_client
        self._ttl = ttl
        self._clock = clock
        self._timeout = timeout
        self._retry = retry_interval
        self._entries: Dict[str, _Entry] = {}
        self._inflight: Dict[str, "asyncio.Future[Dict[str, Any]]"] = {}
        self.fetch_count = 0  # fetches started, for metrics and tests

    def peek(self, issuer: str) -> Optional[Dict[str, Any]]:
        """The cached document, fresh or stale, without fetching."""
        entry = self._entries.get(issuer)
        return entry.document if entry is not None else None

    def has(self, issuer: str) -> bool:
        return issuer in self._entries

    def invalidate(self, issuer: str) -> None:
        """Make the next ``get`` refetch (the old document stays as a fallback)."""
        entry = self._entries.get(issuer)
        if entry is not None:
            entry.fresh_until = float("-inf")

    async def get(self, issuer: str, also: Tuple[str, ...] = ()) -> Dict[str, Any]:
        entry = self._entries.get(issuer)
        if entry is not None and self._clock() < entry.fresh_until:
            return entry.document
        task = self._inflight.get(issuer)
        if task is None:
            task = asyncio.ensure_future(self._refresh(issuer, also))
            self._inflight[issuer] = task
            task.add_done_callback(lambda t, i=issuer: self._done(i, t))
        return await asyncio.shield(task)

    def _done(self, issuer: str, task: "asyncio.Future[Dict[str, Any]]") -> None:
        if self._inflight.get(issuer) is task:
            del self._inflight[issuer]
        if not task.cancelled():
            task.exception()  # retrieved: a failure is re-raised to the awaiting callers

    async def _refresh(self, issuer: str, also: Tuple[str, ...]) -> Dict[str, Any]:
        self.fetch_count += 1
        try:
            document = await fetch_discovery(self._http, issuer, timeout=self._timeout, also=also)
        except DiscoveryError as exc:
            entry = self._entries.get(issuer)
            if entry is None:
                raise
            log.warning("%s; keeping the last good discovery document", exc)
            entry.fresh_until = self._clock() + self._retry
            return entry.document
        self._entries[issuer] = _Entry(document, self._clock() + self._ttl)
        return document
