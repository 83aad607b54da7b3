"""The shared helpers themselves: one import path, and the token/env fixtures of tests/conftest.py."""

from __future__ import annotations

import sys

import jwt

from tests.support.tokens import claims, hs_token


def test_no_helper_module_is_imported_under_a_second_name() -> None:
    doubles = sorted(name for name in sys.modules
                     if name in ("support", "fake_idp", "conftest")
                     or name.startswith("support.") or name.startswith("fake_idp."))
    assert doubles == []
    assert "tests.support.tokens" in sys.modules


def test_make_token_signs_the_claims_with_hs_secret(make_token, hs_secret, bearer) -> None:
    body = claims("ci", "alice", aud="api", email=None, groups=["dev"])
    assert set(body) == {"iss", "sub", "aud", "iat", "exp", "groups"}  # None claims are left out
    assert body["exp"] - body["iat"] == 600
    token = make_token(body)
    assert jwt.decode(token, hs_secret, algorithms=["HS256"], audience="api") == body
    assert bearer(token) == {"Authorization": f"Bearer {token}"}


def test_hs_token_email_domain_defaults_the_email_only() -> None:
    decoded = jwt.decode(hs_token("bob", iss="ci", secret="s" * 32, email_domain="example.com"),
                         "s" * 32, algorithms=["HS256"])
    assert decoded["email"] == "bob@example.com" and decoded["iss"] == "ci"
    decoded = jwt.decode(hs_token("bob", iss="ci", secret="s" * 32, email_domain="example.com", email=None),
                         "s" * 32, algorithms=["HS256"])
    assert "email" not in decoded


def test_gateway_env(gateway_env) -> None:
    assert set(gateway_env()) == {"GATEWAY_SESSION_SECRET"}
    assert len(gateway_env()["GATEWAY_SESSION_SECRET"].encode()) >= 32
    assert gateway_env("x" * 32, OIDC_CLIENT_SECRET="y") == {"GATEWAY_SESSION_SECRET": "x" * 32,
                                                              "OIDC_CLIENT_SECRET": "y"}
    assert gateway_env(None, CI_JWT_SECRET="c") == {"CI_JWT_SECRET": "c"}
