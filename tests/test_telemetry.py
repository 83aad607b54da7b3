"""Tests for gateway.telemetry: the access-log line and request IDs."""

from __future__ import annotations

import io
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telemetry import AccessLog, RequestScope, request_id


def test_access_log_time_has_milliseconds_and_no_secrets():
    stream = io.StringIO()
    log = AccessLog(stream)
    scope = RequestScope("rid", "127.0.0.1", "GET", "h", "/p")
    for _ in range(3):
        log.write(scope, 200, 5, 0.0012)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(entries) == 3
    for entry in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry["time"]
        assert entry["duration_ms"] == 1.2 and "reason" not in entry


def test_request_ids_pass_sane_client_values_only():
    assert request_id("abc-123") == "abc-123"
    for bad in ("", "a b", "x" * 129, "a\r\nb", None):
        made = request_id(bad)
        assert re.fullmatch(r"[0-9a-f]{32}", made), made


def test_json_log_format_is_one_object_per_line():
    import logging

    from gateway.telemetry import JsonLogFormatter

    record = logging.LogRecord("gateway", logging.WARNING, __file__, 1, "upstream %s for route %s", ("timeout", "api"),
                               None)
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "gateway"
    assert entry["message"] == "upstream timeout for route api"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonLogFormatter().format(record))
    assert entry["error"] == "ValueError: boom" and "Traceback" not in json.dumps(entry)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.one_of(st.none(), st.text()), st.integers(0, 599), st.floats(0, 1e6))
def test_any_access_log_line_is_one_json_object_with_the_fields_as_given(path, user, status, duration):
    # The line is formatted by hand (no dict, no encoder per request): it must still be JSON for any input.
    out = io.StringIO()
    scope = RequestScope("rid", "127.0.0.1", "GET", "h", path)
    scope.user = user
    AccessLog(out).write(scope, status, 5, duration)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    entry = json.loads(text)
    assert entry["path"] == path and entry["user"] == user and entry["status"] == status
    assert entry["duration_ms"] == round(duration * 1000, 3)
    assert text.isascii()


def _samples(exposition: bytes, prefix: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name.startswith(prefix) and not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


_request = st.tuples(st.sampled_from(["api", "pub", None]), st.sampled_from(["GET", "POST", "BREW"]),
                     st.sampled_from([200, 204, 302, 401, 404, 502]),
                     st.one_of(st.floats(0, 100, allow_nan=False), st.sampled_from([0.001, 0.0025, 1.0, 60.0])))


@settings(max_examples=60, deadline=None)
@given(st.lists(_request, max_size=30))
def test_plain_metrics_export_what_prometheus_client_would(observed):
    """The integer counts, exported at scrape time, equal prometheus-client's own Counter and Histogram."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from gateway.telemetry import _BUCKETS, Metrics

    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter("gateway_requests", "x", ["route", "method", "status"], registry=reference)
    latency = Histogram("gateway_request_duration_seconds", "x", ["route"], registry=reference, buckets=_BUCKETS)
    for route, method, status, duration in observed:
        metrics.observe(RequestScope("rid", "127.0.0.1", method, "h", "/", route=route), status, duration)
        known = method if method != "BREW" else "OTHER"
        requests.labels(route or "-", known, f"{status // 100}xx").inc()
        latency.labels(route or "-").observe(duration)
    from prometheus_client import generate_latest

    ours, theirs = metrics.exposition(), generate_latest(reference)
    for prefix in ("gateway_requests_total", "gateway_request_duration_seconds"):
        got, want = _samples(ours, prefix), _samples(theirs, prefix)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_metrics_count_failures_reloads_and_requests_in_flight():
    from gateway.telemetry import Metrics

    metrics = Metrics()
    metrics.request_started()
    metrics.request_started()
    metrics.request_ended()
    metrics.count_auth_failure("api", "expired")
    metrics.count_auth_failure("api", "expired")
    metrics.count_upstream_error("api", "connect")
    metrics.count_reload("ok")
    text = metrics.exposition()
    assert _samples(text, "gateway_requests_in_flight") == {("gateway_requests_in_flight", ()): 1.0}
    assert _samples(text, "gateway_auth_failures_total") == {
        ("gateway_auth_failures_total", (("reason", "expired"), ("route", "api"))): 2.0}
    assert _samples(text, "gateway_upstream_errors_total") == {
        ("gateway_upstream_errors_total", (("kind", "connect"), ("route", "api"))): 1.0}
    assert _samples(text, "gateway_config_reloads_total") == {
        ("gateway_config_reloads_total", (("result", "ok"),)): 1.0}
