"""Request IDs, the JSON access log and Prometheus metrics.

Runs at both ends of the request path: an ID is assigned when a request is
accepted, and one log line plus the metrics are written when it finishes.
The log carries the path without its query string and never a header value,
so tokens, codes and cookies cannot reach it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector, generate_latest,
    multiprocess,
)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_ID_PREFIX = os.urandom(10).hex()  # per process: IDs must be unique, they need not be secret
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def request_id(incoming: Optional[str]) -> str:
    """Pass on a sane client-supplied X-Request-Id, or make a new one (32 hex digits)."""
    if incoming and _REQUEST_ID_RE.match(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


@dataclass
class RequestScope:
    """What one request collects on its way through the gateway, for the log and metrics."""

    request_id: str
    client_ip: str
    method: str
    host: str
    path: str
    start: float = field(default_factory=time.monotonic)
    route: Optional[str] = None
    user: Optional[str] = None
    upstream: Optional[str] = None
    reason: Optional[str] = None  # why the request was denied or failed
    failure: Optional[str] = None  # the gateway_auth_failures reason, when authentication or policy refused it


def enable_multiprocess(directory: str) -> None:
    """Count in prometheus-client's per-process files under ``directory`` (several workers, one /metrics).

    Metrics created after this call (each worker's, after the fork) use them.
    """
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()


def _process_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, file descriptors), python_gc_* and python_info."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)


class JsonLogFormatter(logging.Formatter):
    """The operational log as one JSON object per line (``server.log_format: json``), for log shippers.

    Messages are the gateway's own: they never carry a token, cookie or secret.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]  # the last line, no traceback
        return _compact(entry)


def use_log_format(log_format: str) -> None:
    """Switch the root logger's handlers to ``text`` or ``json`` lines."""
    if log_format != "json":
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonLogFormatter())


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, method and status class.",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from accepting a request to its last byte, by route.",
            ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by route and kind (connect, reset, timeout).",
            ["route", "kind"], registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures", "Rejected credentials and denied requests, by route and reason.",
            ["route", "reason"], registry=r,
        )
        self.reloads = Counter(
            "gateway_config_reloads", "Configuration reloads by result (ok, error).", ["result"], registry=r,
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being handled now.", registry=r,
                               multiprocess_mode="livesum")
        _process_collectors(r)
        self._children: dict[tuple, tuple] = {}  # (route, method, status class) -> (request counter, latency)

    def exposition(self) -> bytes:
        """The text format for /metrics: this process's registry, or every worker's when there are several."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            _process_collectors(registry)  # of the process answering: prometheus cannot merge them
            return generate_latest(registry)
        return generate_latest(self.registry)

    def observe(self, scope: RequestScope, status: int, duration: float) -> None:
        key = (scope.route or "-", scope.method if scope.method in _KNOWN_METHODS else "OTHER", status // 100)
        children = self._children.get(key)
        if children is None:  # labels() hashes and locks on every call: once per label set instead
            children = self._children[key] = (self.requests.labels(key[0], key[1], f"{key[2]}xx"),
                                               self.latency.labels(key[0]))
        children[0].inc()
        children[1].observe(duration)


# One encoder for every log line: json.dumps(..., separators=...) builds a new one per call.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_PLAIN = re.compile(r'[ !#-\[\]-~]*')  # printable ASCII but '"' and '\\': a JSON string as it is


def _string(value: Optional[str]) -> str:
    """A JSON string (or null); the access log's fields are nearly always plain, and quoted as they are."""
    if value is None:
        return "null"
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    return _compact(value)


class AccessLog:
    """One JSON object per line on ``stream`` (stdout by default).

    Lines are flushed at most ``FLUSH_DELAY`` seconds after they are written,
    so a busy gateway makes one write system call per batch, not per request.
    """

    FLUSH_DELAY = 0.05

    def __init__(self, stream: Optional[IO[str]] = None):
        self.stream = stream or sys.stdout
        self._flush_scheduled = False
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        """The current UTC time with milliseconds; the date and second are formatted once per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _flush(self) -> None:
        self._flush_scheduled = False
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def write(self, scope: RequestScope, status: int, nbytes: int, duration: float) -> None:
        reason = f',"reason":{_string(scope.reason)}' if scope.reason else ""
        line = (f'{{"time":"{self._now()}","request_id":{_string(scope.request_id)},'
                f'"client_ip":{_string(scope.client_ip)},"method":{_string(scope.method)},'
                f'"host":{_string(scope.host)},"path":{_string(scope.path)},"route":{_string(scope.route)},'
                f'"status":{int(status)},"bytes":{int(nbytes)},"duration_ms":{round(duration * 1000, 3)!r},'
                f'"upstream":{_string(scope.upstream)},"user":{_string(scope.user)}{reason}}}\n')
        try:
            self.stream.write(line)
        except (OSError, ValueError):
            return  # a closed stdout must not break request handling
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_DELAY, self._flush)
            except RuntimeError:  # no loop (tests writing directly): flush now
                self._flush()
