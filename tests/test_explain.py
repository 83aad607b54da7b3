"""gateway explain: a table of requests x configs with the expected verdict, route and failing condition,
the --token cases (valid, expired, forged), and the command itself (output, --json, exit codes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import loads
from gateway.explain import ExplainError, explain
from tests.support.tokens import hs_token

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[1]
SECRET = "explain-hmac-secret-0123456789abcdefgh"
CONFIG = f"""
tokens:
  - {{issuer: ci, secret: "{SECRET}", algorithms: [HS256], audience: any}}
routes:
  - {{name: public, path: /public, upstream: "http://127.0.0.1:9000", auth: public}}
  - {{name: admin, path: /admin, upstream: "http://127.0.0.1:9000", auth: token,
     allow: [{{group: ops, method: [GET]}}, {{sub: root}}]}}
  - {{name: billing, path: /billing, upstream: "http://127.0.0.1:9000", auth: token,
     allow: [{{email_domain: example.com, claim: {{tier: [gold]}}}}], max_body_size: 10}}
  - {{name: api-host, host: api.example.com, path: /, upstream: "http://127.0.0.1:9001", auth: token,
     strip_prefix: true}}
  - {{name: reports, path: /reports, upstream: "http://127.0.0.1:9000", auth: token, methods: [GET]}}
"""
ALICE = {"sub": "alice", "groups": ["ops"], "email": "alice@example.com", "tier": "gold"}


def run(method: str, url: str, headers=(), **kw):
    return asyncio.run(explain(loads(CONFIG, env={}), method, url, headers, **kw))


@pytest.mark.parametrize("method, url, headers, claims, status, route, failing", [
    ("GET", "http://gw/public/x", (), None, None, "public", None),
    ("GET", "http://gw/admin/users", (), ALICE, None, "admin", None),
    ("POST", "http://gw/admin/users", (), ALICE, 403, "admin", "rule 1: method; rule 2: sub"),
    ("GET", "http://gw/admin/users", (), {"sub": "bob"}, 403, "admin", "rule 1: group; rule 2: sub"),
    ("DELETE", "http://gw/admin/x", (), {"sub": "root"}, None, "admin", None),
    ("GET", "http://gw/admin/x", (), None, 401, "admin", None),
    ("GET", "http://gw/billing", (), ALICE, None, "billing", None),
    ("GET", "http://gw/billing", (), {**ALICE, "tier": "silver"}, 403, "billing", "rule 1: claim tier"),
    ("GET", "http://gw/billing", (), {**ALICE, "email_verified": False}, 403, "billing", "rule 1: email_domain"),
    ("POST", "http://gw/billing", ("Content-Length: 100",), ALICE, 413, "billing", None),
    ("GET", "http://api.example.com/admin/x", (), {"sub": "bob"}, None, "api-host", None),  # host route first
    ("GET", "http://gw/admin", ("Host: api.example.com:8443",), {"sub": "bob"}, None, "api-host", None),
    ("DELETE", "http://gw/reports/1", (), ALICE, 405, None, None),
    ("GET", "http://gw/nothing", (), ALICE, 404, None, None),
    ("GET", "http://gw/public/%2e%2e/admin", (), None, 401, "admin", None),  # encoded dots normalised
    ("GET", "http://gw/public/..%2fadmin", (), None, 400, None, None),
    ("GET", "http://gw/oauth2/userinfo", (), None, None, None, None),
])
def test_the_table(method, url, headers, claims, status, route, failing):
    story = run(method, url, headers, claims=json.dumps(claims) if claims is not None else None)
    verdict = story["verdict"]
    assert verdict["status"] == status, story
    assert verdict["forwarded"] is (status is None and route is not None)
    assert (story.get("route") or {}).get("name") == route
    if failing:
        assert failing in verdict["reason"]


def test_each_condition_shows_the_value_it_compared():
    story = run("POST", "http://gw/admin/x", claims=json.dumps(ALICE))
    rule1 = story["rules"][0]["conditions"]
    assert rule1 == [
        {"condition": "method", "compared": "POST", "accepted": ["GET"], "result": "fail"},
        {"condition": "group", "compared": ["ops"], "accepted": ["ops"], "result": "pass"},
    ]


def test_the_upstream_headers_are_the_gateways_own():
    story = run("GET", "http://api.example.com/v1/x?q=1", ("X-Forwarded-User: mallory", "Authorization: Bearer abc"),
                claims=json.dumps({"sub": "bob", "groups": ["a", "b"]}))
    headers = dict(story["upstream"]["headers"])
    assert story["upstream"]["path"] == "/v1/x?q=1"
    assert headers["X-Forwarded-User"] == "bob" and headers["X-Forwarded-Groups"] == "a,b"
    assert headers["Authorization"] == "Bearer [redacted]", "never a credential in the output"


@pytest.mark.parametrize("token, status, reason", [
    (lambda: hs_token("alice", iss="ci", secret=SECRET, aud="x", groups=["ops"]), None, None),
    (lambda: hs_token("alice", iss="ci", secret=SECRET, aud="x", lifetime=-600), 401, "expired"),
    (lambda: hs_token("alice", iss="ci", secret="another-secret-0123456789abcdefgh", aud="x"), 401, "bad_signature"),
    (lambda: "not.a.jwt", 401, "malformed"),
])
def test_token_cases(token, status, reason):
    story = run("GET", "http://gw/admin/x", token=token())
    assert story["verdict"]["status"] == status, story
    if reason:
        assert reason in story["verdict"]["reason"]
    else:
        assert story["identity"]["sub"] == "alice" and story["identity_from"].startswith("--token")


@pytest.mark.parametrize("kw, message", [
    ({"claims": "{not json"}, "--claims is not JSON"),
    ({"claims": "[1, 2]"}, "must be a JSON object"),
    ({"claims": "{}"}, "--claims: token has no sub"),
])
def test_bad_input_is_a_clear_error(kw, message):
    with pytest.raises(ExplainError, match=message):
        run("GET", "http://gw/admin/x", **kw)
    with pytest.raises(ExplainError, match="must be http"):
        run("GET", "ftp://gw/x")
    with pytest.raises(ExplainError, match="Name: value"):
        run("GET", "http://gw/x", ("no colon here",))


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "routes.yaml"
    config.write_text(CONFIG)
    return subprocess.run([sys.executable, "-m", "gateway", "explain", "-c", str(config), *args], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=20)


def test_the_command_lines_and_exit_codes(tmp_path: Path):
    refused = _cli(tmp_path, "POST", "http://gw/admin/users", "--claims", json.dumps(ALICE))
    assert refused.returncode == 1
    assert '  method: "POST" in ["GET"]: fail' in refused.stdout
    assert "verdict   refused 403" in refused.stdout
    forwarded = _cli(tmp_path, "GET", "http://gw/admin/users", "--claims", json.dumps(ALICE), "--json")
    assert forwarded.returncode == 0
    story = json.loads(forwarded.stdout)
    assert story["verdict"]["forwarded"] is True and story["route"]["name"] == "admin"
    bad = _cli(tmp_path, "GET", "http://gw/admin/users", "--claims", "{")
    assert bad.returncode == 1 and "--claims is not JSON" in bad.stderr and "Traceback" not in bad.stderr
    both = _cli(tmp_path, "GET", "http://gw/x", "--claims", "{}", "--token", "x")
    assert both.returncode == 2  # argparse: not both
    start = time.monotonic()
    assert _cli(tmp_path, "GET", "http://gw/public/x").returncode == 0
    assert time.monotonic() - start < 15
