"""Identity assertions to upstreams: ``AssertionSigner`` (claims, cache, re-signing) and the header policy.

In-process: a KeyRing with a key made here, an injected clock, no sockets.
"""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httputil import HTTPHeaders

from gateway.assertions import ASSERTION_LIFETIME, RESIGN_BEFORE, AssertionSigner
from gateway.config import DEFAULT_ASSERTION_HEADER, loads
from gateway.config.schema import Assertion
from gateway.forwarded import Forwarded
from gateway.forwarding.headers import forwarded_request_headers
from gateway.models import Identity
from gateway.signing import KeyRing, SigningKey, thumbprint

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://apps.example.com"
NOW = 1_700_000_000.0
FWD = Forwarded(client_ip="10.0.0.9", proto="https", host="apps.example.com", chain="10.0.0.9")


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def private_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ring(private_key, clock):
    public = private_key.public_key()
    return KeyRing(SigningKey(thumbprint(public), "ES256", public, private_key), issuer=ISSUER, clock=clock)


@pytest.fixture
def signer(ring, clock):
    return AssertionSigner(ring, clock=clock)


ALICE = Identity(sub="alice", email="alice@example.com", groups=("dev", "ops"), preferred_username="alice.a",
                 issuer="https://idp.example.com", source="session", expires_at=NOW + 8 * 3600, session_id="s1")


def decode(ring: KeyRing, token: str, audience: str) -> dict:
    return ring.verify(token, audience=audience)


def test_claims(signer, ring):
    token = signer.assertion(ALICE, "app")
    header = jwt.get_unverified_header(token)
    assert header["kid"] == ring.current.kid and header["alg"] == "ES256"
    claims = decode(ring, token, "app")
    assert claims == {"iss": ISSUER, "aud": "app", "sub": "alice", "email": "alice@example.com",
                      "groups": ["dev", "ops"], "preferred_username": "alice.a",
                      "iat": int(NOW), "exp": int(NOW) + ASSERTION_LIFETIME}
    assert claims["exp"] - claims["iat"] <= 300
    assert signer.signed == 1


def test_claims_of_a_bare_identity(signer, ring):
    claims = decode(ring, signer.assertion(Identity(sub="svc", source="token"), "api"), "api")
    assert claims == {"iss": ISSUER, "aud": "api", "sub": "svc", "iat": int(NOW), "exp": int(NOW) + 300}


def test_the_session_id_and_provider_claims_do_not_leak(signer, ring):
    who = Identity(sub="alice", claims={"secret_claim": "x", "nonce": "n"}, session_id="s1", source="session")
    claims = decode(ring, signer.assertion(who, "app"), "app")
    assert "sid" not in claims and "secret_claim" not in claims and "nonce" not in claims


def test_never_past_the_identity_expiry(signer, ring):
    soon = Identity(sub="alice", expires_at=NOW + 42.9)
    claims = decode(ring, signer.assertion(soon, "app"), "app")
    assert claims["exp"] == int(NOW) + 42
    assert claims["exp"] <= soon.expires_at


def test_same_identity_other_expiry_never_gets_a_longer_assertion(signer, ring, clock):
    """Two bearer tokens of one caller: the one that ends sooner never gets the other's longer assertion."""
    long_lived = Identity(sub="alice", issuer="https://idp.example.com", expires_at=NOW + 3600)
    short_lived = Identity(sub="alice", issuer="https://idp.example.com", expires_at=NOW + 120)
    first = decode(ring, signer.assertion(long_lived, "app"), "app")
    assert first["exp"] == int(NOW) + 300
    second = decode(ring, signer.assertion(short_lived, "app"), "app")
    assert second["exp"] <= short_lived.expires_at


def test_the_cache_gives_the_same_string(signer, clock):
    first = signer.assertion(ALICE, "app")
    clock.now += 100
    assert signer.assertion(ALICE, "app") == first
    # an equal identity, not the same object
    assert signer.assertion(Identity(**{f: getattr(ALICE, f) for f in ALICE.__dataclass_fields__}), "app") == first
    assert signer.signed == 1


def test_re_signed_once_less_than_a_minute_is_left(signer, ring, clock):
    first = signer.assertion(ALICE, "app")
    exp = NOW + ASSERTION_LIFETIME
    clock.now = exp - RESIGN_BEFORE - 0.5  # 60.5 s left: still the cached one
    assert signer.assertion(ALICE, "app") == first
    assert signer.signed == 1
    clock.now = exp - RESIGN_BEFORE  # exactly 60 s left: signed again
    second = signer.assertion(ALICE, "app")
    assert second != first
    assert signer.signed == 2
    claims = decode(ring, second, "app")
    assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + ASSERTION_LIFETIME
    clock.now += 10
    assert signer.assertion(ALICE, "app") == second  # and that one is cached in turn
    assert signer.signed == 2


def test_an_assertion_always_has_a_minute_left(signer, ring, clock):
    """Whatever the time of the request, the upstream gets an assertion with at least 60 s left."""
    long_session = Identity(sub="alice", expires_at=NOW + 10 * 3600)
    for step in range(0, 2000, 7):
        clock.now = NOW + step
        claims = decode(ring, signer.assertion(long_session, "app"), "app")
        assert claims["exp"] - clock.now > RESIGN_BEFORE
        assert claims["exp"] - claims["iat"] <= ASSERTION_LIFETIME
    assert signer.signed < 2000 / 7 / 10  # re-signed every 4 minutes or so, not per request


def test_different_audience_or_groups_give_different_tokens(signer, ring):
    app = signer.assertion(ALICE, "app")
    other = signer.assertion(ALICE, "other")
    assert app != other
    assert decode(ring, other, "other")["aud"] == "other"
    fewer = Identity(**{**{f: getattr(ALICE, f) for f in ALICE.__dataclass_fields__}, "groups": ("dev",)})
    narrowed = signer.assertion(fewer, "app")
    assert narrowed != app
    assert decode(ring, narrowed, "app")["groups"] == ["dev"]
    for field, value in (("email", "bob@example.com"), ("preferred_username", "bob"), ("sub", "bob"),
                         ("issuer", "https://other.example.com"), ("session_id", "s2")):
        changed = Identity(**{**{f: getattr(ALICE, f) for f in ALICE.__dataclass_fields__}, field: value})
        assert signer.assertion(changed, "app") != app, field
    assert signer.signed == 3 + 5


def test_the_cache_is_bounded(ring, clock):
    signer = AssertionSigner(ring, clock=clock, cache_size=3)
    for n in range(10):
        signer.assertion(Identity(sub=f"user{n}"), "app")
    assert len(signer._cache) == 3
    assert signer.signed == 10
    signer.assertion(Identity(sub="user9"), "app")
    assert signer.signed == 10  # the newest are kept
    signer.assertion(Identity(sub="user0"), "app")
    assert signer.signed == 11  # the oldest were dropped


def test_the_cache_drops_the_least_recently_used(ring, clock):
    signer = AssertionSigner(ring, clock=clock, cache_size=2)
    a, b, c = (Identity(sub=s) for s in "abc")
    signer.assertion(a, "app")
    signer.assertion(b, "app")
    signer.assertion(a, "app")  # a used: b is now the least recently used
    signer.assertion(c, "app")  # drops b
    assert signer.signed == 3
    signer.assertion(a, "app")
    assert signer.signed == 3
    signer.assertion(b, "app")
    assert signer.signed == 4


def test_a_re_signed_entry_counts_as_recently_used(ring, clock):
    signer = AssertionSigner(ring, clock=clock, cache_size=2)
    a, b, c = (Identity(sub=s) for s in "abc")
    signer.assertion(a, "app")
    clock.now += 10
    signer.assertion(b, "app")
    clock.now = NOW + ASSERTION_LIFETIME - RESIGN_BEFORE  # a is due, b (10 s younger) not yet
    signer.assertion(a, "app")  # re-signed: a is the most recently used now
    assert signer.signed == 3
    signer.assertion(c, "app")  # drops b, the least recently used
    assert signer.signed == 4
    signer.assertion(a, "app")
    assert signer.signed == 4, "the entry just re-signed and used was dropped instead of the older one"


def test_header_for(signer, ring):
    assert signer.header_for("app", None, ALICE) is None
    assert signer.header_for("app", Assertion(), None) is None
    name, token = signer.header_for("app", Assertion(), ALICE)
    assert name == DEFAULT_ASSERTION_HEADER == "X-Gateway-Assertion"
    assert decode(ring, token, "app")["aud"] == "app"
    name, token = signer.header_for("app", Assertion(header="X-Who", audience="https://api.internal"), ALICE)
    assert name == "X-Who"
    assert decode(ring, token, "https://api.internal")["aud"] == "https://api.internal"


def test_identity_assertion_config():
    cfg = loads(
        "routes:\n"
        "  - {name: a, path: /a, upstream: http://127.0.0.1:9000, auth: token, identity_assertion: true}\n"
        "  - {name: b, path: /b, upstream: http://127.0.0.1:9000, auth: token,\n"
        "     identity_assertion: {header: X-Who, audience: bee}}\n"
        "  - {name: c, path: /c, upstream: http://127.0.0.1:9000, auth: token, identity_assertion: false}\n"
        "  - {name: d, path: /d, upstream: http://127.0.0.1:9000, auth: token}\n",
        source="/nonexistent/routes.yaml", env={})
    assert [r.identity_assertion for r in cfg.routes] == [
        Assertion(header="X-Gateway-Assertion", audience=""), Assertion(header="X-Who", audience="bee"), None, None]


@pytest.mark.parametrize("value,message", [
    ("{header: 'X Who'}", 'route "a": identity_assertion: header "X Who" is not a valid header name'),
    ("yes please", 'route "a": identity_assertion must be true or false'),
])
def test_identity_assertion_config_errors(value, message):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as info:
        loads("routes:\n  - {name: a, path: /a, upstream: http://127.0.0.1:9000, auth: token, "
              f"identity_assertion: {value}}}\n", source="/nonexistent/routes.yaml", env={})
    assert [e.split(": ", 1)[1] for e in info.value.errors] == [message]


def test_identity_assertion_needs_an_authenticated_route():
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as info:
        loads("routes:\n  - {name: a, path: /a, upstream: http://127.0.0.1:9000, auth: public, "
              "identity_assertion: true}\n", source="/nonexistent/routes.yaml", env={})
    assert info.value.errors == ['/nonexistent/routes.yaml:2: route "a": identity_assertion needs an '
                                 "authenticated route (auth: login or token)"]


# ---------------------------------------------------------------------------
# the header policy: a client's copy never reaches the upstream

DROP = frozenset({"x-gateway-assertion", "x-who"})


def incoming(*pairs) -> HTTPHeaders:
    headers = HTTPHeaders()
    for name, value in pairs:
        headers.add(name, value)
    return headers


@pytest.mark.parametrize("name", ["X-Gateway-Assertion", "x-gateway-assertion", "X-GATEWAY-ASSERTION",
                                  "X_Gateway_Assertion", "x_gateway-assertion", "X-Who", "x_who"])
def test_a_client_sent_assertion_is_dropped_and_the_gateways_added(name, signer):
    token = signer.assertion(ALICE, "app")
    out = forwarded_request_headers(incoming((name, "forged.jwt.value"), ("Accept", "*/*")), FWD, "rid", ALICE,
                                    assertion=("X-Gateway-Assertion", token), drop=DROP)
    assert "forged.jwt.value" not in [v for _, v in out]
    assert [(n, v) for n, v in out if n.lower().replace("_", "-") in DROP] == [("X-Gateway-Assertion", token)]
    assert ("Accept", "*/*") in out


@pytest.mark.parametrize("name", ["X-Gateway-Assertion", "X_GATEWAY_ASSERTION", "x-who"])
def test_a_client_sent_assertion_is_dropped_on_a_route_without_assertions(name):
    out = forwarded_request_headers(incoming((name, "forged")), FWD, "rid", None, drop=DROP)
    assert "forged" not in [v for _, v in out]
    assert not any(n.lower().replace("_", "-") in DROP for n, _ in out)


def test_without_drop_nothing_extra_is_removed():
    out = forwarded_request_headers(incoming(("X-Gateway-Assertion", "kept")), FWD, "rid", None)
    assert ("X-Gateway-Assertion", "kept") in out


def test_runtime_drops_every_configured_assertion_header():
    from gateway.runtime import Runtime

    cfg = loads(
        "routes:\n"
        "  - {name: a, path: /a, upstream: http://127.0.0.1:9000, auth: token,\n"
        "     identity_assertion: {header: X-Who}}\n"
        "  - {name: b, path: /b, upstream: http://127.0.0.1:9000, auth: public}\n",
        source="/nonexistent/routes.yaml", env={})
    runtime = Runtime(cfg, http_client=None)  # nothing is fetched before start()
    assert runtime.assertion_headers == frozenset({"x-gateway-assertion", "x-who"})
