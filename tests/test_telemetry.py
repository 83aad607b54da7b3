"""Tests for gateway.telemetry: the access-log line and request IDs."""

from __future__ import annotations

import io
import json
import re

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
