"""End to end: bearer tokens, identity headers, policy, admin port and access log.

Everything here talks HTTP to the REAL ``python -m gateway serve`` process
(tests/support/gateway_proc.py) in front of real loopback upstreams
(tests/support/upstream.py) and real loopback issuers (tests/support/fake_idp.py on a
thread of their own). One gateway serves the whole module; a second one, with
``trusted_proxies``, is started only for the X-Forwarded-* trust test.

Issuers configured on the module's gateway:

* ``ci-runner``: HS256 with a shared secret;
* the RSA FakeIdP: RS256, keys from ``jwks_uri``;
* the EC FakeIdP: ES256, keys from its discovery document (issuer = its URL);
* ``pem-issuer``: RS256, a PEM public key file next to routes.yaml;
* the rotation FakeIdP: RS256 via ``jwks_uri``, used only by the key-rotation test
  (an unknown ``kid`` triggers at most one refetch per cooldown, so no other
  test may send it unknown kids).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import tempfile
import time
import uuid
from typing import Any, Dict, Optional

import jwt
import pytest

from tests.support.fake_idp import HMAC_SECRET, SigningKey
from tests.support import tokens
from tests.support.e2e import IdPThread, request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.tokens import bearer, make_token
from tests.support.upstream import Upstream, refused_port

pytestmark = pytest.mark.timeout(60)

AUD = "api"
HS_ISSUER = "ci-runner"
PEM_ISSUER = "pem-issuer"
IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
)
AUTH_REQUEST_HEADERS = (
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
)


# --------------------------------------------------------------------------- tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


claims = functools.partial(tokens.claims, aud=AUD)
hs_token = functools.partial(tokens.hs_token, iss=HS_ISSUER, secret=HMAC_SECRET, aud=AUD)


def forge(header: Dict[str, Any], payload: Dict[str, Any], sign=None) -> str:
    """A JWT built by hand: ``sign(signing_input) -> bytes`` or an empty signature."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    signature = sign(signing_input.encode()) if sign else b""
    return signing_input + "." + b64url(signature)


def rid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


# --------------------------------------------------------------------------- fixtures


class Env:
    """Everything the module's gateway runs against."""

    gw: GatewayProcess
    one: Upstream
    two: Upstream
    admin_up: Upstream
    rsa: IdPThread
    ec: IdPThread
    rot: IdPThread
    rsa_key: SigningKey
    ec_key: SigningKey
    pem_key: SigningKey
    rot_key: SigningKey
    dead_port: int

    def get(self, path: str, headers: Optional[Dict[str, str]] = None, **kw: Any):
        return request(self.gw.url, "GET", path, headers, **kw)

    def log_for(self, request_id: str) -> dict:
        return self.gw.wait_log(lambda e: e.get("request_id") == request_id)

    def good_request_works(self) -> None:
        r = self.get("/api/ok", bearer(hs_token("after-check")))
        assert r.status == 200, r.body
        assert r.json()["headers"]["X-Forwarded-User"] == "after-check"
        assert self.gw.alive()


def config_text(e: Env, *, trusted: str = "[]") -> str:
    return f"""
server:
  trusted_proxies: {trusted}
tokens:
  - issuer: {HS_ISSUER}
    secret: "{HMAC_SECRET}"
    algorithms: [HS256]
    audience: {AUD}
  - issuer: {e.rsa.issuer}
    jwks_uri: {e.rsa.jwks_url}
    algorithms: [RS256]
    audience: {AUD}
  - issuer: {e.ec.issuer}
    algorithms: [ES256]
    audience: [{AUD}, other-api]
  - issuer: {PEM_ISSUER}
    public_key: pem.pub
    algorithms: [RS256]
    audience: {AUD}
  - issuer: {e.rot.issuer}
    jwks_uri: {e.rot.jwks_url}
    algorithms: [RS256]
    audience: {AUD}
routes:
  - name: api
    path: /api
    upstream: {e.one.url}
    strip_prefix: true
    auth: token
  - name: slowapi
    path: /slowapi
    upstream: {e.one.url}
    strip_prefix: true
    auth: token
    timeout: 1s
  - name: deadapi
    path: /deadapi
    upstream: http://127.0.0.1:{e.dead_port}
    auth: token
    connect_timeout: 2s
  - name: admin
    path: /admin
    upstream: {e.admin_up.url}
    auth: token
    allow:
      - sub: admin-user
  - name: rules
    path: /rules
    upstream: {e.two.url}
    strip_prefix: true
    auth: token
    allow:
      - email_domain: example.com
        group: [admins, sre]
      - claim: {{tenant: acme}}
        method: [GET, HEAD]
      - sub: [special-sub]
  - name: pub
    path: /pub
    upstream: {e.one.url}
    strip_prefix: true
    auth: public
"""


@pytest.fixture(scope="module")
def env():
    e = Env()
    started: list = []
    try:
        e.one = Upstream("one").start()
        started.append(e.one)
        e.two = Upstream("two").start()
        started.append(e.two)
        e.admin_up = Upstream("admin").start()
        started.append(e.admin_up)
        e.rsa_key = SigningKey("RS256", "rsa-1", index=0)
        e.ec_key = SigningKey("ES256", "ec-1", index=0)
        e.pem_key = SigningKey("RS256", "pem-1", index=1)
        e.rot_key = SigningKey("RS256", "rot-1", index=0)
        e.rsa = IdPThread([e.rsa_key])
        started.append(e.rsa)
        e.ec = IdPThread([e.ec_key])
        started.append(e.ec)
        e.rot = IdPThread([e.rot_key])
        started.append(e.rot)
        e.dead_port = refused_port()
        workdir = tempfile.mkdtemp(prefix="gw-e2e-tokens-")
        with open(os.path.join(workdir, "pem.pub"), "w") as fh:
            fh.write(e.pem_key.public_pem)
        e.gw = GatewayProcess(config_text(e), workdir=workdir)
        e.gw.start()
        started.append(e.gw)
        wait_ready(e.gw.admin_url)
        yield e
    finally:
        for thing in reversed(started):
            thing.stop()


# --------------------------------------------------------------------------- the contract table


def test_no_route_is_404(env):
    r = env.get("/nowhere/at/all", bearer(hs_token()))
    assert r.status == 404
    r = env.get("/apix", bearer(hs_token()))  # /api matches whole segments only
    assert r.status == 404


@pytest.mark.parametrize("accept", [None, "text/html,application/xhtml+xml"])
def test_token_route_without_token_is_401_with_bare_challenge(env, accept):
    headers = {"X-Request-Id": rid()}
    if accept:
        headers["Accept"] = accept
    before = env.one.state["requests"]
    r = env.get("/api/anything", headers)
    assert r.status == 401
    assert r.all("WWW-Authenticate") == ['Bearer realm="gateway"']
    assert r.header("Content-Type").startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "error_description"}
    assert isinstance(body["error"], str) and body["error"]
    assert r.header("X-Request-Id") == headers["X-Request-Id"]
    assert env.one.state["requests"] == before
    entry = env.log_for(headers["X-Request-Id"])
    assert entry["status"] == 401 and entry["route"] == "api" and entry["user"] is None


def test_other_auth_schemes_count_as_no_token(env):
    r = env.get("/api/x", {"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status == 401
    assert r.all("WWW-Authenticate") == ['Bearer realm="gateway"']


def test_token_route_with_bad_token_is_401_invalid_token(env):
    r = env.get("/api/anything", bearer(hs_token(lifetime=-3600)))
    assert r.status == 401
    (challenge,) = r.all("WWW-Authenticate")
    assert challenge.startswith('Bearer realm="gateway"')
    assert 'error="invalid_token"' in challenge
    body = r.json()
    assert body["error"] and body["error_description"]


def test_forbidden_api_gets_json_and_the_log_names_the_failed_rules(env):
    request_id = rid()
    before = env.admin_up.state["requests"]
    r = env.get("/admin/panel", {**bearer(hs_token("alice")), "X-Request-Id": request_id})
    assert r.status == 403
    assert r.header("Content-Type").startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "error_description"}
    assert env.admin_up.state["requests"] == before
    entry = env.log_for(request_id)
    assert entry["status"] == 403 and entry["user"] == "alice" and entry["route"] == "admin"
    reason = entry.get("reason") or ""
    assert "rule 1" in reason and "sub" in reason, reason
    # ... and the reason stays out of the response
    text = r.body.decode()
    assert "rule 1" not in text and "no allow rule" not in text and "admin-user" not in text


def test_forbidden_browser_gets_html(env):
    request_id = rid()
    r = env.get("/admin/panel", {**bearer(hs_token("alice")), "Accept": "text/html", "X-Request-Id": request_id})
    assert r.status == 403
    assert r.header("Content-Type").startswith("text/html")
    text = r.body.decode()
    assert "<html" in text.lower()
    assert "rule 1" not in text and "no allow rule" not in text and "admin-user" not in text
    assert "rule 1" in (env.log_for(request_id).get("reason") or "")


def test_allowed_identity_reaches_the_admin_upstream(env):
    r = env.get("/admin/panel", bearer(hs_token("admin-user")))
    assert r.status == 200
    assert r.json()["server"] == "admin" and r.json()["path"] == "/admin/panel"


def test_upstream_refusing_is_502(env):
    request_id = rid()
    r = env.get("/deadapi/x", {**bearer(hs_token()), "X-Request-Id": request_id})
    assert r.status == 502
    assert r.header("Content-Type").startswith("application/json")
    entry = env.log_for(request_id)
    assert entry["status"] == 502


def test_upstream_reset_is_502(env):
    r = env.get("/api/reset", bearer(hs_token()))
    assert r.status == 502
    assert env.gw.alive()


def test_upstream_over_route_timeout_is_504(env):
    t0 = time.monotonic()
    r = env.get("/slowapi/slow?s=3", bearer(hs_token()), timeout=10)
    elapsed = time.monotonic() - t0
    assert r.status == 504
    assert elapsed < 2.8, elapsed
    assert env.get("/slowapi/slow?s=0.1", bearer(hs_token())).status == 200


@pytest.mark.parametrize("code", [200, 201, 202, 204, 304, 400, 404, 409, 500, 503])
def test_upstream_status_passed_through(env, code):
    r = env.get(f"/api/status/{code}", bearer(hs_token()))
    assert r.status == code
    if code in (204, 304):
        assert r.body == b""
    else:
        assert r.json()["server"] == "one"  # the upstream's body, not a gateway page


# --------------------------------------------------------------------------- issuers


def good_tokens(env) -> Dict[str, str]:
    return {
        "hs256-secret": hs_token("hs-user"),
        "rs256-jwks_uri": env.rsa_key.sign(claims(env.rsa.issuer, "rs-user")),
        "es256-discovery": env.ec_key.sign(claims(env.ec.issuer, "ec-user", aud="other-api")),
        "rs256-pem-file": env.pem_key.sign(claims(PEM_ISSUER, "pem-user")),
    }


@pytest.mark.parametrize("kind", ["hs256-secret", "rs256-jwks_uri", "es256-discovery", "rs256-pem-file"])
def test_each_issuer_accepts_its_good_token(env, kind):
    token = good_tokens(env)[kind]
    expected_sub = jwt.decode(token, options={"verify_signature": False})["sub"]
    r = env.get("/api/whoami", bearer(token))
    assert r.status == 200, r.body
    assert r.json()["headers"]["X-Forwarded-User"] == expected_sub
    # the repeated (cached) token works too
    assert env.get("/api/whoami", bearer(token)).status == 200


def test_discovery_issuer_fetched_its_discovery_document(env):
    assert env.ec.idp.discovery_fetches >= 1
    assert env.ec.idp.jwks_fetches >= 1


# --------------------------------------------------------------------------- bad tokens


def _bad_tokens(env) -> Dict[str, Any]:
    """name -> (headers, expected reason label in the access log)."""
    rsa_pub_pem = env.rsa_key.public_pem.encode()
    pem_pub_pem = env.pem_key.public_pem.encode()
    other_rsa = SigningKey("RS256", "rsa-1", index=2)  # same kid as the real key, different key

    def hmac_with(secret: bytes):
        return lambda data: hmac.new(secret, data, hashlib.sha256).digest()

    valid_rs = env.rsa_key.sign(claims(env.rsa.issuer))
    head, payload, sig = valid_rs.split(".")
    tampered_payload = b64url(json.dumps(claims(env.rsa.issuer, "admin-user")).encode())
    big_claims = claims(HS_ISSUER, padding="x" * 16000)
    cases: Dict[str, Any] = {
        "expired": (bearer(hs_token(lifetime=-3600)), "expired"),
        "not-yet-valid": (bearer(hs_token(nbf=int(time.time()) + 3600)), "not_yet_valid"),
        "wrong-aud": (bearer(hs_token(aud="someone-else")), "audience"),
        "no-aud": (bearer(hs_token(aud=None)), "audience"),
        "wrong-iss": (bearer(make_token(claims("https://evil.example"), HMAC_SECRET)), "issuer"),
        "bad-signature-other-key": (bearer(other_rsa.sign(claims(env.rsa.issuer))), "signature"),
        "bad-signature-tampered": (bearer(f"{head}.{tampered_payload}.{sig}"), "signature"),
        "hs256-wrong-secret": (bearer(make_token(claims(HS_ISSUER), "x" * 40)), "signature"),
        "alg-none": (bearer(forge({"alg": "none", "typ": "JWT"}, claims(HS_ISSUER))), "algorithm"),
        "alg-None-case": (bearer(forge({"alg": "None", "typ": "JWT"}, claims(env.rsa.issuer))), "algorithm"),
        "hs256-with-rsa-jwks-public-key": (
            bearer(forge({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(env.rsa.issuer),
                         hmac_with(rsa_pub_pem))),
            "algorithm",
        ),
        "hs256-with-pem-public-key": (
            bearer(forge({"alg": "HS256", "typ": "JWT"}, claims(PEM_ISSUER), hmac_with(pem_pub_pem))),
            "algorithm",
        ),
        "rs256-on-hmac-issuer": (bearer(env.rsa_key.sign(claims(HS_ISSUER))), "algorithm"),
        "unknown-kid": (bearer(SigningKey("RS256", "no-such-kid", index=0).sign(claims(env.rsa.issuer))), "kid"),
        "malformed-base64": (bearer("eyJhbGciOiJIUzI1NiJ9.e30x!x.c2ln"), "malformed"),
        "malformed-segments": (bearer("a.b.c"), "malformed"),
        "malformed-base64-payload": (bearer("eyJhbGciOiJIUzI1NiJ9.A.c2ln"), "malformed"),
        "malformed-json-payload": (bearer("eyJhbGciOiJIUzI1NiJ9.e30x.c2ln"), "malformed"),
        "not-a-jwt": (bearer("not-a-jwt"), "malformed"),
        "sixteen-kb": (bearer(make_token(big_claims, HMAC_SECRET)), "large"),
        "non-json-header": (bearer(b64url(b"this is not json") + "." + payload + "." + sig), "malformed"),
        "array-header": (bearer(b64url(b"[1,2]") + "." + payload + "." + sig), "malformed"),
        "bearer-two-tokens": ({"Authorization": "Bearer a b"}, "malformed"),
        "bearer-empty": ({"Authorization": "Bearer "}, None),
        "bearer-comma": ({"Authorization": f"Bearer {hs_token()}, Bearer {hs_token()}"}, "malformed"),
    }
    assert len(big_claims["padding"]) >= 16000
    return cases


BAD_TOKEN_CASES = [
    "expired", "not-yet-valid", "wrong-aud", "no-aud", "wrong-iss", "bad-signature-other-key",
    "bad-signature-tampered", "hs256-wrong-secret", "alg-none", "alg-None-case",
    "hs256-with-rsa-jwks-public-key", "hs256-with-pem-public-key", "rs256-on-hmac-issuer", "unknown-kid",
    "malformed-base64", "malformed-segments", "malformed-base64-payload", "malformed-json-payload", "not-a-jwt", "sixteen-kb", "non-json-header", "array-header",
    "bearer-two-tokens", "bearer-empty", "bearer-comma",
]


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
def test_bad_token_is_401_and_the_gateway_keeps_serving(env, case):
    headers, reason = _bad_tokens(env)[case]
    request_id = rid()
    before = env.one.state["requests"]
    r = env.get("/api/secret", {**headers, "X-Request-Id": request_id})
    assert r.status == 401, (case, r.body)
    (challenge,) = r.all("WWW-Authenticate")
    assert challenge.startswith('Bearer realm="gateway"')
    if reason is not None:  # a token was sent
        assert 'error="invalid_token"' in challenge, challenge
    body = r.json()
    assert body["error"] and body["error_description"]
    assert env.one.state["requests"] == before
    entry = env.log_for(request_id)
    assert entry["status"] == 401 and entry["user"] is None
    if reason is not None:
        assert reason in (entry.get("reason") or ""), entry
    env.good_request_works()


def test_two_authorization_headers_are_refused(env):
    good = hs_token()
    r = env.get("/api/x", [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")])
    assert r.status == 401
    assert 'error="invalid_token"' in r.header("WWW-Authenticate")
    r = env.get("/api/x", [("Authorization", f"Bearer {good}"), ("Authorization", "Bearer other")])
    assert r.status == 401
    env.good_request_works()


def test_jku_header_is_never_fetched(env):
    attacker_key = SigningKey("RS256", "evil-kid", index=2)
    attacker = IdPThread([attacker_key])
    try:
        for kid in ("evil-kid", "rsa-1"):
            token = attacker_key.sign(
                claims(env.rsa.issuer, "admin-user"), headers={"jku": attacker.jwks_url, "kid": kid}
            )
            r = env.get("/admin/x", bearer(token))
            assert r.status == 401
            assert 'error="invalid_token"' in r.header("WWW-Authenticate")
            # x5u and jwk headers are not trusted either
            token = attacker_key.sign(
                claims(env.rsa.issuer, "admin-user"),
                headers={"x5u": attacker.jwks_url, "jwk": attacker_key.jwk, "kid": kid},
            )
            assert env.get("/admin/x", bearer(token)).status == 401
        time.sleep(0.2)
        assert attacker.total_requests() == 0, dict(attacker.idp.requests)
    finally:
        attacker.stop()
    env.good_request_works()


def test_key_rotation_new_kid_is_accepted_after_refetch(env):
    rot = env.rot
    old = env.rot_key.sign(claims(rot.issuer, "rot-user"))
    assert env.get("/api/r", bearer(old)).status == 200
    fetches = rot.idp.jwks_fetches
    new_key = SigningKey("RS256", "rot-2", index=3)
    rot.idp.keys = [new_key]
    r = env.get("/api/r", bearer(new_key.sign(claims(rot.issuer, "rot-user-2"))))
    assert r.status == 200, r.body
    assert r.json()["headers"]["X-Forwarded-User"] == "rot-user-2"
    assert rot.idp.jwks_fetches == fetches + 1


# --------------------------------------------------------------------------- headers to the upstream


def _values(echo: dict, name: str) -> list:
    return [v for k, v in echo["header_list"] if k.lower() == name.lower()]


def test_identity_headers_reach_the_upstream_and_client_copies_are_removed(env):
    token = hs_token(
        "user-123", email="alice@example.com", groups=["admins", "sre"], preferred_username="alice",
    )
    spoofed = [
        ("X-Forwarded-User", "evil"),
        ("x-forwarded-user", "evil2"),
        ("X-Forwarded-Email", "evil@evil.example"),
        ("X-FORWARDED-GROUPS", "root"),
        ("X-Forwarded-Preferred-Username", "root"),
        ("X-Auth-Request-User", "evil"),
        ("X-Auth-Request-Email", "evil@evil.example"),
        ("X-Auth-Request-Groups", "root"),
        ("X-Auth-Request-Preferred-Username", "root"),
    ]
    r = env.get("/api/echo", [("Authorization", f"Bearer {token}")] + spoofed)
    assert r.status == 200
    echo = r.json()
    assert _values(echo, "X-Forwarded-User") == ["user-123"]
    assert _values(echo, "X-Forwarded-Email") == ["alice@example.com"]
    assert _values(echo, "X-Forwarded-Groups") == ["admins,sre"]
    assert _values(echo, "X-Forwarded-Preferred-Username") == ["alice"]
    for name in AUTH_REQUEST_HEADERS:
        assert _values(echo, name) == [], name


def test_identity_headers_absent_when_claims_missing_and_spoofs_removed(env):
    r = env.get("/api/echo", [("Authorization", f"Bearer {hs_token('bare')}"),
                              ("X-Forwarded-Email", "evil@evil.example"), ("X-Forwarded-Groups", "root")])
    echo = r.json()
    assert _values(echo, "X-Forwarded-User") == ["bare"]
    assert _values(echo, "X-Forwarded-Email") == []
    assert _values(echo, "X-Forwarded-Groups") == []


@pytest.mark.parametrize("with_token", [False, True])
def test_public_route_strips_every_client_sent_identity_header(env, with_token):
    spoofed = [(name, "evil") for name in IDENTITY_HEADERS + AUTH_REQUEST_HEADERS]
    spoofed += [(name.lower(), "evil") for name in IDENTITY_HEADERS]
    if with_token:
        spoofed.append(("Authorization", f"Bearer {hs_token('someone', email='a@example.com')}"))
    r = env.get("/pub/echo", spoofed)
    assert r.status == 200
    echo = r.json()
    for name in IDENTITY_HEADERS + AUTH_REQUEST_HEADERS:
        assert _values(echo, name) == [], name


def test_forwarded_headers_from_the_real_client_when_no_proxy_is_trusted(env):
    request_id = rid()
    r = env.get("/api/echo", [
        ("Authorization", f"Bearer {hs_token()}"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Request-Id", request_id),
    ])
    echo = r.json()
    gw_netloc = env.gw.url.split("://", 1)[1]
    assert _values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert _values(echo, "X-Forwarded-Proto") == ["http"]
    assert _values(echo, "X-Forwarded-Host") == [gw_netloc]
    assert "203.0.113.9" not in json.dumps(echo["header_list"])
    assert env.log_for(request_id)["client_ip"] == "127.0.0.1"


def test_forwarded_headers_believed_from_a_trusted_proxy(env):
    workdir = tempfile.mkdtemp(prefix="gw-e2e-trusted-")
    with open(os.path.join(workdir, "pem.pub"), "w") as fh:
        fh.write(env.pem_key.public_pem)
    gw = GatewayProcess(config_text(env, trusted="[127.0.0.1/32]"), workdir=workdir)
    try:
        gw.start()
        request_id = rid()
        r = request(gw.url, "GET", "/pub/echo", [
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "app.example.com"),
            ("X-Request-Id", request_id),
        ])
        assert r.status == 200
        echo = r.json()
        assert _values(echo, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
        assert _values(echo, "X-Forwarded-Proto") == ["https"]
        assert _values(echo, "X-Forwarded-Host") == ["app.example.com"]
        assert gw.wait_log(lambda e: e.get("request_id") == request_id)["client_ip"] == "203.0.113.9"
        assert gw.stop() == 0
    finally:
        gw.stop()


def test_request_id_generated_when_absent(env):
    r = env.get("/api/echo", bearer(hs_token()))
    generated = r.header("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", generated or ""), generated
    assert _values(r.json(), "X-Request-Id") == [generated]
    env.log_for(generated)


def test_request_id_passed_through_when_sane(env):
    sent = "req-abc.123_XYZ"
    r = env.get("/api/echo", {**bearer(hs_token()), "X-Request-Id": sent})
    assert r.header("X-Request-Id") == sent
    assert _values(r.json(), "X-Request-Id") == [sent]


@pytest.mark.parametrize("insane", ["has spaces in it", "x" * 300, "semi;colon", "quote\"d"])
def test_request_id_replaced_when_not_sane(env, insane):
    r = env.get("/api/echo", {**bearer(hs_token()), "X-Request-Id": insane})
    generated = r.header("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", generated or ""), generated
    assert _values(r.json(), "X-Request-Id") == [generated]


def test_request_id_on_gateway_answers(env):
    r = env.get("/api/x")  # 401
    assert re.fullmatch(r"[0-9a-f]{32}", r.header("X-Request-Id") or "")
    r = env.get("/nowhere")
    assert r.status == 404
    assert re.fullmatch(r"[0-9a-f]{32}", r.header("X-Request-Id") or "")


# --------------------------------------------------------------------------- allow rules


@pytest.mark.parametrize(
    "method, sub, extra, expected",
    [
        # rule 1: email_domain AND group
        ("GET", "alice", {"email": "alice@example.com", "groups": ["admins"]}, 200),
        ("POST", "alice", {"email": "Alice@EXAMPLE.com", "groups": ["users", "sre"]}, 200),
        ("GET", "bob", {"email": "bob@example.com", "groups": ["users"]}, 403),  # group fails
        ("GET", "dave", {"email": "dave@example.org", "groups": ["admins"]}, 403),  # domain fails
        ("GET", "eve", {"email": "eve@sub.example.com", "groups": ["admins"]}, 403),  # not a subdomain match
        # rule 2: claim AND method
        ("GET", "carol", {"email": "carol@other.org", "tenant": "acme"}, 200),
        ("HEAD", "carol", {"email": "carol@other.org", "tenant": "acme"}, 200),
        ("POST", "carol", {"email": "carol@other.org", "tenant": "acme"}, 403),  # method fails
        ("GET", "carol", {"tenant": "umbrella"}, 403),  # claim fails
        ("GET", "carol", {"tenant": ["umbrella", "acme"]}, 200),  # a list claim: any item
        # rule 3: sub
        ("DELETE", "special-sub", {}, 200),
        ("GET", "not-special", {}, 403),
    ],
)
def test_allow_rules(env, method, sub, extra, expected):
    request_id = rid()
    before = env.two.state["requests"]
    r = request(env.gw.url, method, "/rules/thing",
                {**bearer(hs_token(sub, **extra)), "X-Request-Id": request_id})
    assert r.status == expected, r.body
    entry = env.log_for(request_id)
    assert entry["user"] == sub
    if expected == 200:
        assert env.two.state["requests"] == before + 1
    else:
        assert env.two.state["requests"] == before
        reason = entry.get("reason") or ""
        for index in (1, 2, 3):
            assert f"rule {index}" in reason, reason


# --------------------------------------------------------------------------- admin port


def test_admin_ping_and_ready(env):
    r = request(env.gw.admin_url, "GET", "/ping")
    assert r.status == 200
    r = request(env.gw.admin_url, "GET", "/ready")
    assert r.status == 200


def test_admin_metrics(env):
    env.get("/api/ok", bearer(hs_token()))
    env.get("/api/reset", bearer(hs_token()))
    env.get("/api/ok", bearer(hs_token(lifetime=-3600)))
    env.get("/api/ok")
    r = request(env.gw.admin_url, "GET", "/metrics")
    assert r.status == 200
    text = r.body.decode()

    def series(name: str) -> list:
        return [line for line in text.splitlines() if line.startswith(name + "{")]

    requests = series("gateway_requests_total")
    assert any('route="api"' in s and 'method="GET"' in s and "status=" in s for s in requests), requests
    assert series("gateway_request_duration_seconds_bucket") or series("gateway_request_duration_seconds_count")
    assert any('kind="' in s and 'route="api"' in s for s in series("gateway_upstream_errors_total"))
    failures = series("gateway_auth_failures_total")
    assert any('reason="' in s for s in failures), failures
    assert len({re.search(r'reason="([^"]*)"', s).group(1) for s in failures}) >= 2, failures


@pytest.mark.parametrize("path", ["/metrics", "/ping", "/ready"])
def test_admin_endpoints_are_not_on_the_proxy_port(env, path):
    r = env.get(path)
    assert r.status == 404
    assert b"gateway_requests_total" not in r.body


# --------------------------------------------------------------------------- access log


LOG_FIELDS = {"time", "request_id", "client_ip", "method", "host", "path", "route", "status", "bytes",
              "duration_ms", "upstream", "user"}


def test_access_log_line_fields(env):
    request_id = rid()
    r = env.get("/api/logme?x=1", {**bearer(hs_token("log-user")), "X-Request-Id": request_id})
    assert r.status == 200
    entry = env.log_for(request_id)
    assert LOG_FIELDS <= set(entry), set(entry)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", entry["time"])
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["method"] == "GET"
    assert entry["host"] == env.gw.url.split("://", 1)[1]
    assert entry["path"] == "/api/logme"
    assert entry["route"] == "api"
    assert entry["status"] == 200
    assert entry["bytes"] == len(r.body)
    assert isinstance(entry["duration_ms"], (int, float)) and entry["duration_ms"] >= 0
    assert entry["upstream"] == env.one.url
    assert entry["user"] == "log-user"
    # exactly one line for it
    assert sum(1 for e in env.gw.access_log() if e.get("request_id") == request_id) == 1


def test_access_log_one_line_per_request(env):
    ids = [rid() for _ in range(5)]
    paths = ["/api/a", "/pub/b", "/nowhere", "/admin/c", "/api/status/204"]
    for request_id, path in zip(ids, paths):
        env.get(path, {**bearer(hs_token()), "X-Request-Id": request_id})
    for request_id in ids:
        env.log_for(request_id)
    log = env.gw.access_log()
    for request_id in ids:
        assert sum(1 for e in log if e.get("request_id") == request_id) == 1


def test_tokens_and_secrets_never_logged(env):
    secret = "SECRET" + uuid.uuid4().hex
    good = hs_token("logsafe", email="logsafe@example.com")
    bad = hs_token("logsafe", lifetime=-3600)
    rs = env.rsa_key.sign(claims(env.rsa.issuer, "logsafe-rs"))
    ids = []
    for token, path in [
        (good, f"/api/q?access_token={secret}"),
        (bad, f"/api/q?access_token={secret}"),
        (rs, f"/admin/q?access_token={secret}&code={secret}"),
        ("garbage." + secret, f"/api/q?token={secret}"),
    ]:
        request_id = rid()
        ids.append(request_id)
        env.get(path, {**bearer(token), "X-Request-Id": request_id, "Cookie": f"session={secret}"})
    r = env.get(f"/pub/x?access_token={secret}", {"Authorization": f"Bearer {secret}"})
    assert r.status == 200
    for request_id in ids:
        entry = env.log_for(request_id)
        assert "?" not in entry["path"]
    time.sleep(0.3)  # let stderr (warnings, info lines) arrive too
    everything = "\n".join(env.gw.stdout_lines + env.gw.stderr_lines)
    for token in (good, bad, rs, secret, HMAC_SECRET):
        assert token not in everything
    for part in (good.split(".")[2], rs.split(".")[2]):  # not even the signature
        assert part not in everything
