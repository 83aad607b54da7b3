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
