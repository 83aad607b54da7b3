"""Tests for the secret rules of gateway.config: long enough, and never a well-known placeholder."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, loads
from gateway.config.source import is_placeholder

CONFIG = """
session:
  secret: "{secret}"
routes:
  - name: site
    path: /
    upstream: http://127.0.0.1:9000
    auth: public
"""

PLACEHOLDERS = [
    "change-me-change-me-change-me-change-me",
    "CHANGE-ME-placeholder-session-secret-at-least-32-bytes",
    "changemechangemechangemechangeme",
    "secretsecretsecretsecretsecretsecret",
    "password-password-password-password",
    "x" * 32,
    "0" * 40,
    "abcabcabcabcabcabcabcabcabcabcabcab",
    "12345678123456781234567812345678",
    "my-secret-key-my-secret-key-my-secret-key",
    "replace-me-with-a-real-secret-please!!",
    "your-secret-here-at-least-32-bytes-long",
]


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_placeholders_are_refused_with_how_to_generate_one(value):
    with pytest.raises(ConfigError) as caught:
        loads(CONFIG.format(secret=value), env={})
    (message,) = caught.value.errors
    assert message == ("routes.yaml:3: session: secret is a well-known placeholder, not a secret "
                       "(generate one with: openssl rand -base64 32)")


@given(st.integers(min_value=32, max_value=64))
@settings(max_examples=50, deadline=None)
def test_generated_secrets_are_accepted(nbytes):
    value = secrets.token_urlsafe(nbytes)
    assert not is_placeholder(value)
    assert loads(CONFIG.format(secret=value), env={}).session.secret == value


def test_token_issuer_secrets_follow_the_same_rule():
    text = CONFIG.format(secret=secrets.token_urlsafe(32)) + """
tokens:
  - issuer: ci
    secret: "secret-secret-secret-secret-secret"
    algorithms: [HS256]
    audience: any
"""
    with pytest.raises(ConfigError) as caught:
        loads(text, env={})
    assert "tokens[0]" in caught.value.errors[0] and "well-known placeholder" in caught.value.errors[0]
