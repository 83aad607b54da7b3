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
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector, generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BUCKET_LABELS = tuple(floatToGoString(b) for b in _BUCKETS) + ("+Inf",)
_HELP = {
    "requests": "Requests answered, by route, method and status class.",
    "latency": "Time from accepting a request to its last byte, by route.",
    "upstream_errors": "Upstream failures by route and kind (connect, reset, timeout).",
    "auth_failures": "Rejected credentials and denied requests, by route and reason.",
    "reloads": "Configuration reloads by result (ok, error).",
    "in_flight": "Requests being handled now.",
}


class Metrics(Collector):
    """The gateway's metrics, counted in plain integers and turned into Prometheus families at scrape time.

    prometheus-client's Counter and Histogram take a lock and walk label
    dictionaries on every increment; with one event loop per process there
    is nothing to lock, so a request costs a dictionary lookup and three
    additions instead. Several workers need prometheus-client's shared files:
    ``for_process`` then returns :class:`SharedMetrics`.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        self.in_flight = 0
        self._requests: dict[tuple[str, str, int], list] = {}  # (route, method, status class) -> [count, route's latency]
        self._latency: dict[str, list] = {}  # route -> one count per bucket (not cumulative), then the sum
        self._upstream_errors: dict[tuple[str, str], int] = {}
        self._auth_failures: dict[tuple[str, str], int] = {}
        self._reloads: dict[str, int] = {}
        self.registry.register(self)  # collect() is called at each scrape
        _process_collectors(self.registry)

    @staticmethod
    def for_process(registry: Optional[CollectorRegistry] = None) -> "Metrics":
        """Plain counts in this process, or shared files when ``enable_multiprocess`` was called (workers)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return SharedMetrics(registry)
        return Metrics(registry)

    def request_started(self) -> None:
        self.in_flight += 1

    def request_ended(self) -> None:
        self.in_flight -= 1

    def observe(self, scope: RequestScope, status: int, duration: float) -> None:
        key = (scope.route or "-", scope.method if scope.method in _KNOWN_METHODS else "OTHER", status // 100)
        entry = self._requests.get(key)
        if entry is None:
            latency = self._latency.get(key[0])
            if latency is None:
                latency = self._latency[key[0]] = [0] * (len(_BUCKETS) + 1) + [0.0]
            entry = self._requests[key] = [0, latency]
        entry[0] += 1
        latency = entry[1]
        latency[bisect_left(_BUCKETS, duration)] += 1
        latency[-1] += duration

    def count_upstream_error(self, route: str, kind: str) -> None:
        key = (route, kind)
        self._upstream_errors[key] = self._upstream_errors.get(key, 0) + 1

    def count_auth_failure(self, route: str, reason: str) -> None:
        key = (route, reason)
        self._auth_failures[key] = self._auth_failures.get(key, 0) + 1

    def count_reload(self, result: str) -> None:
        self._reloads[result] = self._reloads.get(result, 0) + 1

    def exposition(self) -> bytes:
        """The text format for /metrics."""
        return generate_latest(self.registry)

    def collect(self) -> list:
        """This process's counts as Prometheus metric families, for the registry's scrape."""
        requests = CounterMetricFamily("gateway_requests", _HELP["requests"], labels=["route", "method", "status"])
        for (route, method, status_class), entry in sorted(self._requests.items()):
            requests.add_metric([route, method, f"{status_class}xx"], entry[0])
        latency = HistogramMetricFamily("gateway_request_duration_seconds", _HELP["latency"], labels=["route"])
        for route, counts in sorted(self._latency.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            latency.add_metric([route], list(zip(_BUCKET_LABELS, cumulative)), counts[-1])
        upstream = CounterMetricFamily("gateway_upstream_errors", _HELP["upstream_errors"], labels=["route", "kind"])
        for labels, value in sorted(self._upstream_errors.items()):
            upstream.add_metric(list(labels), value)
        failures = CounterMetricFamily("gateway_auth_failures", _HELP["auth_failures"], labels=["route", "reason"])
        for labels, value in sorted(self._auth_failures.items()):
            failures.add_metric(list(labels), value)
        reloads = CounterMetricFamily("gateway_config_reloads", _HELP["reloads"], labels=["result"])
        for result, value in sorted(self._reloads.items()):
            reloads.add_metric([result], value)
        in_flight = GaugeMetricFamily("gateway_requests_in_flight", _HELP["in_flight"], value=self.in_flight)
        return [requests, latency, upstream, failures, reloads, in_flight]


class SharedMetrics(Metrics):
    """Metrics of one of several workers, in prometheus-client's per-process files, merged on /metrics.

    Each increment goes to the files at once, so a worker that is killed has
    already counted everything it answered.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None):
        r = registry or CollectorRegistry()
        self._requests_counter = Counter("gateway_requests", _HELP["requests"], ["route", "method", "status"], registry=r)
        self._latency_histogram = Histogram("gateway_request_duration_seconds", _HELP["latency"], ["route"],
                                            registry=r, buckets=_BUCKETS)
        self._upstream_counter = Counter("gateway_upstream_errors", _HELP["upstream_errors"], ["route", "kind"],
                                         registry=r)
        self._failure_counter = Counter("gateway_auth_failures", _HELP["auth_failures"], ["route", "reason"],
                                        registry=r)
        self._reload_counter = Counter("gateway_config_reloads", _HELP["reloads"], ["result"], registry=r)
        self._in_flight_gauge = Gauge("gateway_requests_in_flight", _HELP["in_flight"], registry=r,
                                      multiprocess_mode="livesum")
        self._children: dict[tuple, tuple] = {}  # labels() hashes and locks on every call: once per label set instead

    def request_started(self) -> None:
        self._in_flight_gauge.inc()

    def request_ended(self) -> None:
        self._in_flight_gauge.dec()

    def observe(self, scope: RequestScope, status: int, duration: float) -> None:
        key = (scope.route or "-", scope.method if scope.method in _KNOWN_METHODS else "OTHER", status // 100)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._requests_counter.labels(key[0], key[1], f"{key[2]}xx"),
                                               self._latency_histogram.labels(key[0]))
        children[0].inc()
        children[1].observe(duration)

    def count_upstream_error(self, route: str, kind: str) -> None:
        self._upstream_counter.labels(route, kind).inc()

    def count_auth_failure(self, route: str, reason: str) -> None:
        self._failure_counter.labels(route, reason).inc()

    def count_reload(self, result: str) -> None:
        self._reload_counter.labels(result).inc()

    def exposition(self) -> bytes:
        """Every worker's counts, merged from the shared files."""
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        _process_collectors(registry)  # of the process answering: prometheus cannot merge them
        return generate_latest(registry)


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
