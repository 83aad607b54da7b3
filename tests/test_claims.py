"""Tests for gateway.claims (identity out of claim sets) and gateway.redact (URLs fit for a log)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import claims
from gateway.models import is_number
from gateway.redact import safe_url


def test_claim_walks_dotted_names_only_when_the_flat_one_is_absent():
    payload = {"realm_access": {"roles": ["a"]}, "a.b": 1, "a": {"b": 2}}
    assert claims.claim(payload, "realm_access.roles") == ["a"]
    assert claims.claim(payload, "a.b") == 1
    assert claims.claim(payload, "realm_access.missing") is None
    assert claims.claim({"x": "not-a-dict"}, "x.y") is None


@pytest.mark.parametrize("value,expected", [
    (["a", "b", 3, "", None], ("a", "b")), ("a, b  c", ("a", "b", "c")), ("", ()), (None, ()), ({"a": 1}, ()),
])
def test_groups(value, expected):
    assert claims.groups(value) == expected


@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), ("true", True), ("FALSE", False), ("no", None), (0, None), (None, None),
])
def test_email_verified(value, expected):
    assert claims.email_verified(value) is expected


@pytest.mark.parametrize("value,expected", [
    (1, True), (1.5, True), (True, False), (float("inf"), False), (float("nan"), False), (10 ** 400, False),
    (2 ** 53, True), (-(2 ** 53) - 1, False), ("1", False), (None, False),
])
def test_is_number_never_raises_on_huge_ints(value, expected):
    assert is_number(value) is expected


@pytest.mark.parametrize("url,expected", [
    ("https://user:pw@idp.example/path?code=secret#frag", "https://idp.example/path"),
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("http://[::1", "<invalid URL>"),
])
def test_safe_url_drops_secrets(url, expected):
    assert safe_url(url) == expected


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_safe_url_never_raises_and_never_keeps_a_query(text):
    out = safe_url(text)
    assert "?" not in out or out == "<invalid URL>"
