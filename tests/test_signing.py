"""The gateway's own signing keys: the ``signing`` config section, RFC 7638 kids, ``KeyRing``.

In-process and fast: keys are generated once per module, time comes from an
injected clock, nothing listens on a port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import textwrap

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

from gateway import signing
from gateway.config import ConfigError, SigningConfig, load, loads
from gateway.models import AuthError
from gateway.signing import KeyRing, load_key, prepare, thumbprint
from gateway.tokens import TokenVerifier

pytestmark = pytest.mark.timeout(60)

ISSUER = "http://127.0.0.1:8080"
NOW = 1_700_000_000.0
ROUTE = "  - {name: app, path: /, upstream: http://127.0.0.1:9000, auth: public}\n"


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key) -> str:
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys():
    """One private key of each kind, made once for the module."""
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture(scope="module")
def other_keys():
    """A second key of each kind: never in the ring under test."""
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


def block(pem: str, indent: int = 4) -> str:
    """PEM text as a YAML literal block scalar body."""
    return "|\n" + textwrap.indent(pem.strip() + "\n", " " * indent)


def signing_yaml(body: str) -> str:
    return "routes:\n" + ROUTE + "signing:\n" + body


def errors_of(text: str, *, source: str = "/nonexistent/routes.yaml", env=None) -> list:
    with pytest.raises(ConfigError) as info:
        loads(text, source=source, env=env or {})
    return info.value.errors


# ---------------------------------------------------------------------------
# config: the signing section


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "EdDSA"])
def test_each_key_type_loads_from_inline_pem(keys, alg):
    pem = private_pem(keys[alg])
    cfg = loads(signing_yaml("  key: " + block(pem)), source="/nonexistent/routes.yaml", env={})
    assert cfg.signing.key.strip() == pem.strip()
    loaded = load_key(cfg.signing.key)
    assert loaded.alg == alg
    assert loaded.private is not None
    assert loaded.kid == thumbprint(keys[alg].public_key())


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "EdDSA"])
def test_each_key_type_loads_from_a_file_relative_to_routes_yaml(tmp_path, keys, alg):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "signing.pem").write_text(private_pem(keys[alg]))
    routes = tmp_path / "routes.yaml"
    routes.write_text(signing_yaml("  key: keys/signing.pem\n"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)  # relative to routes.yaml, not to the working directory
    try:
        cfg = load(str(routes), env={})
    finally:
        os.chdir(cwd)
    assert load_key(cfg.signing.key).alg == alg
    assert load_key(cfg.signing.key).kid == thumbprint(keys[alg].public_key())


def test_traditional_openssl_formats_load(keys):
    for alg in ("ES256", "RS256"):
        pem = keys[alg].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()).decode()
        cfg = loads(signing_yaml("  key: " + block(pem)), source="/nonexistent/routes.yaml", env={})
        assert load_key(cfg.signing.key).alg == alg


def test_key_from_an_environment_variable(keys):
    pem = private_pem(keys["ES256"])
    cfg = loads(signing_yaml("  key: ${GATEWAY_SIGNING_KEY}\n"), source="/nonexistent/routes.yaml",
                env={"GATEWAY_SIGNING_KEY": pem})
    assert load_key(cfg.signing.key).kid == thumbprint(keys["ES256"].public_key())


def test_no_signing_section_and_empty_key_mean_ephemeral():
    cfg = loads("routes:\n" + ROUTE, source="/nonexistent/routes.yaml", env={})
    assert cfg.signing == SigningConfig()
    assert cfg.signing.key == "" and cfg.signing.previous_keys == () and cfg.signing.token_lifetime == 3600
    cfg = loads(signing_yaml("  key: ${GATEWAY_SIGNING_KEY:-}\n"), source="/nonexistent/routes.yaml", env={})
    assert cfg.signing.key == ""


def test_token_lifetime_parses():
    cfg = loads(signing_yaml("  token_lifetime: 15m\n"), source="/nonexistent/routes.yaml", env={})
    assert cfg.signing.token_lifetime == 900


BAD_PEM = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"


def test_a_bad_pem_is_refused():
    assert errors_of(signing_yaml("  key: " + block(BAD_PEM))) == [
        "/nonexistent/routes.yaml:4: signing: key is not a PEM key"]


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL])
def test_an_encrypted_pem_is_refused_with_a_clear_message(keys, fmt):
    pem = keys["ES256"].private_bytes(serialization.Encoding.PEM, fmt,
                                      serialization.BestAvailableEncryption(b"passphrase")).decode()
    assert errors_of(signing_yaml("  key: " + block(pem))) == [
        "/nonexistent/routes.yaml:4: signing: key is an encrypted PEM; give it unencrypted (keep the file "
        "readable only by the gateway), e.g. openssl pkey -in key.pem -out plain.pem"]


def test_a_public_key_as_signing_key_is_refused(keys):
    assert errors_of(signing_yaml("  key: " + block(public_pem(keys["ES256"])))) == [
        "/nonexistent/routes.yaml:4: signing: key must be a private key (-----BEGIN PRIVATE KEY-----); generate "
        "one with openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"]


def test_rsa_1024_is_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert errors_of(signing_yaml("  key: " + block(private_pem(small)))) == [
        "/nonexistent/routes.yaml:4: signing: key is a 1024-bit RSA key; use at least 2048 bits"]


def test_ec_secp256k1_is_refused():
    k1 = ec.generate_private_key(ec.SECP256K1())
    assert errors_of(signing_yaml("  key: " + block(private_pem(k1)))) == [
        "/nonexistent/routes.yaml:4: signing: key is an EC key on secp256k1; use P-256, P-384 or P-521"]


@pytest.mark.parametrize("make", [ed448.Ed448PrivateKey.generate, x25519.X25519PrivateKey.generate],
                         ids=["ed448", "x25519"])
def test_other_key_kinds_are_refused(make):
    assert errors_of(signing_yaml("  key: " + block(private_pem(make())))) == [
        "/nonexistent/routes.yaml:4: signing: key must be an EC (P-256), RSA or Ed25519 key"]


def test_a_missing_file_is_refused(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(signing_yaml("  key: missing.pem\n"))
    with pytest.raises(ConfigError) as info:
        load(str(routes), env={})
    assert info.value.errors == [
        f'{routes}:4: signing: key file "missing.pem" cannot be read: No such file or directory']


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "keys").mkdir()
    routes = tmp_path / "routes.yaml"
    routes.write_text(signing_yaml("  key: keys\n"))
    with pytest.raises(ConfigError) as info:
        load(str(routes), env={})
    assert info.value.errors == [f'{routes}:4: signing: key file "keys" is not a regular file']


def test_a_bad_file_names_the_file(tmp_path):
    (tmp_path / "bad.pem").write_text(BAD_PEM)
    routes = tmp_path / "routes.yaml"
    routes.write_text(signing_yaml("  key: bad.pem\n"))
    with pytest.raises(ConfigError) as info:
        load(str(routes), env={})
    assert info.value.errors == [f'{routes}:4: signing: key file "bad.pem" is not a PEM key']


def test_previous_keys_accept_public_and_private_pems(tmp_path, keys):
    (tmp_path / "old.pem").write_text(public_pem(keys["RS256"]))
    routes = tmp_path / "routes.yaml"
    routes.write_text(signing_yaml(
        "  key: " + block(private_pem(keys["ES256"]))
        + "  previous_keys:\n"
        + "    - " + block(public_pem(keys["ES384"]), 6)
        + "    - " + block(private_pem(keys["EdDSA"]), 6)
        + "    - old.pem\n"))
    cfg = load(str(routes), env={})
    assert len(cfg.signing.previous_keys) == 3
    previous = [load_key(pem) for pem in cfg.signing.previous_keys]
    assert [k.alg for k in previous] == ["ES384", "EdDSA", "RS256"]
    assert [k.kid for k in previous] == [thumbprint(keys[a].public_key()) for a in ("ES384", "EdDSA", "RS256")]


def test_token_lifetime_bad_duration():
    assert errors_of(signing_yaml("  token_lifetime: soon\n")) == [
        '/nonexistent/routes.yaml:4: signing: token_lifetime must be a duration such as 30s, 5m, 8h or 250ms '
        '(got "soon")']
    assert errors_of(signing_yaml("  token_lifetime: 0s\n")) == [
        "/nonexistent/routes.yaml:4: signing: token_lifetime must be greater than zero"]


def test_unknown_key_in_the_section():
    errors = errors_of(signing_yaml("  keys: x\n"))
    assert len(errors) == 1 and errors[0].startswith("/nonexistent/routes.yaml:4: ") and '"keys"' in errors[0]


def test_all_errors_are_reported_together(tmp_path, keys):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "dir").mkdir()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n" + ROUTE
        + "signing:\n"
        + "  key: nope.pem\n"                                        # line 4
        + "  previous_keys:\n"
        + "    - " + block(private_pem(small), 6)                    # line 6
        + "    - dir\n"                                              # after the block
        + "    - " + block(BAD_PEM, 6)
        + "  token_lifetime: 5q\n")
    with pytest.raises(ConfigError) as info:
        load(str(routes), env={})
    errors = info.value.errors
    lines = routes.read_text().splitlines()
    line_dir = lines.index("    - dir") + 1
    line_bad = line_dir + 1
    line_lifetime = lines.index("  token_lifetime: 5q") + 1
    assert errors == [
        f'{routes}:4: signing: key file "nope.pem" cannot be read: No such file or directory',
        f"{routes}:6: signing: previous_keys[0] is a 1024-bit RSA key; use at least 2048 bits",
        f'{routes}:{line_dir}: signing: previous_keys[1] file "dir" is not a regular file',
        f"{routes}:{line_bad}: signing: previous_keys[2] is not a PEM key",
        f'{routes}:{line_lifetime}: signing: token_lifetime must be a duration such as 30s, 5m, 8h or 250ms '
        f'(got "5q")',
    ]


# ---------------------------------------------------------------------------
# kid: RFC 7638 thumbprints

RFC7638_N = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZC"
             "iFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZg"
             "nYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIq"
             "bw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
RFC7638_E = "AQAB"


def b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_rfc7638_example_thumbprint():
    public = rsa.RSAPublicNumbers(b64url_int(RFC7638_E), b64url_int(RFC7638_N)).public_key()
    assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    # and the same key from PEM (a previous key given as a public PEM)
    assert load_key(public_pem(public)).kid == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_kid_is_stable_and_differs_between_keys(keys, other_keys):
    for alg in ("ES256", "RS256", "EdDSA"):
        pem = private_pem(keys[alg])
        assert load_key(pem).kid == load_key(pem).kid == load_key(public_pem(keys[alg])).kid
        assert load_key(pem).kid != load_key(private_pem(other_keys[alg])).kid
    kids = {load_key(private_pem(k)).kid for k in keys.values()}
    assert len(kids) == len(keys)


@pytest.mark.parametrize("alg,crv", [("ES256", "P-256"), ("ES384", "P-384"), ("ES512", "P-521")])
def test_ec_thumbprint_matches_an_independent_computation(keys, alg, crv):
    point = keys[alg].public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    size = (len(point) - 1) // 2  # 04 || X || Y, each coordinate full length
    x, y = b64url(point[1:1 + size]), b64url(point[1 + size:])
    canonical = '{"crv":"%s","kty":"EC","x":"%s","y":"%s"}' % (crv, x, y)
    assert thumbprint(keys[alg].public_key()) == b64url(hashlib.sha256(canonical.encode()).digest())


def test_ec_thumbprint_keeps_leading_zero_bytes():
    """Coordinates are always full length (RFC 7518 6.2.1.2), even when they start with a zero byte."""
    for _ in range(2000):
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.public_key().public_numbers()
        if numbers.x < 1 << 248 or numbers.y < 1 << 248:
            break
    else:  # pragma: no cover - (1 - 2/256) ** 2000 is negligible
        pytest.skip("no key with a short coordinate found")
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    canonical = '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' % (b64url(point[1:33]), b64url(point[33:]))
    assert thumbprint(key.public_key()) == b64url(hashlib.sha256(canonical.encode()).digest())


def test_ed25519_thumbprint_matches_an_independent_computation(keys):
    raw = keys["EdDSA"].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % b64url(raw)
    assert thumbprint(keys["EdDSA"].public_key()) == b64url(hashlib.sha256(canonical.encode()).digest())


def test_rsa_thumbprint_matches_an_independent_computation(keys):
    numbers = keys["RS256"].public_key().public_numbers()
    n = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
    canonical = '{"e":"AQAB","kty":"RSA","n":"%s"}' % n
    assert thumbprint(keys["RS256"].public_key()) == b64url(hashlib.sha256(canonical.encode()).digest())


# ---------------------------------------------------------------------------
# KeyRing


def ring_of(key, previous=(), clock=None) -> KeyRing:
    config = SigningConfig(key=private_pem(key), previous_keys=tuple(previous))
    return KeyRing.from_config(config, issuer=ISSUER, clock=clock or Clock())


def claims(**over):
    base = {"iss": ISSUER, "aud": "gateway", "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 300}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def reason_of(ring: KeyRing, token: str, audience: str = "gateway") -> str:
    with pytest.raises(AuthError) as info:
        ring.verify(token, audience=audience)
    return info.value.reason


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "EdDSA"])
def test_sign_verify_round_trip(keys, alg):
    ring = ring_of(keys[alg])
    token = ring.sign(claims(email="a@example.com", groups=["ops"]))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": thumbprint(keys[alg].public_key()), "typ": "JWT"}
    got = ring.verify(token, audience="gateway")
    assert got["sub"] == "alice" and got["email"] == "a@example.com" and got["groups"] == ["ops"]
    # an independent verifier agrees, with the public key alone
    jwt.decode(token, keys[alg].public_key(), algorithms=[alg], audience="gateway", issuer=ISSUER,
               options={"verify_exp": False, "verify_iat": False})


def test_sign_typ_header(keys):
    token = ring_of(keys["ES256"]).sign(claims(), typ="at+jwt")
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def test_jwks_has_only_public_members(keys):
    ring = ring_of(keys["ES256"], previous=[private_pem(keys["RS256"]), private_pem(keys["EdDSA"]),
                                            public_pem(keys["ES384"])])
    jwks = ring.jwks()
    assert set(jwks) == {"keys"}
    published = jwks["keys"]
    assert [k["kid"] for k in published] == [thumbprint(keys[a].public_key()) for a in
                                             ("ES256", "RS256", "EdDSA", "ES384")]  # current first
    expected_members = {"EC": {"kty", "crv", "x", "y"}, "RSA": {"kty", "n", "e"}, "OKP": {"kty", "crv", "x"}}
    for jwk in published:
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert set(jwk) == expected_members[jwk["kty"]] | {"kid", "alg", "use"}
        assert jwk["use"] == "sig"
    assert [k["alg"] for k in published] == ["ES256", "RS256", "EdDSA", "ES384"]
    json.dumps(jwks)  # serialisable as it is
    # each published key verifies what its private half signs
    for alg in ("ES256", "RS256", "EdDSA"):
        jwk = next(k for k in published if k["alg"] == alg)
        public = jwt.PyJWK(jwk).key
        token = jwt.encode(claims(), keys[alg], algorithm=alg)
        jwt.decode(token, public, algorithms=[alg], audience="gateway",
                   options={"verify_exp": False, "verify_iat": False})


def test_previous_keys_verify_but_never_sign(keys):
    old_ring = ring_of(keys["RS256"])
    old_token = old_ring.sign(claims())
    ring = ring_of(keys["ES256"], previous=[private_pem(keys["RS256"]), public_pem(keys["EdDSA"])])
    assert ring.current.kid == thumbprint(keys["ES256"].public_key())
    assert all(k.private is None for kid, k in ring.keys.items() if kid != ring.current.kid)
    assert ring.verify(old_token, audience="gateway")["sub"] == "alice"
    new = ring.sign(claims())
    assert jwt.get_unverified_header(new)["kid"] == ring.current.kid
    assert jwt.get_unverified_header(new)["alg"] == "ES256"
    assert "private=False" in repr(ring.keys[old_ring.current.kid])  # and no key material in the repr
    assert "BEGIN" not in repr(ring.keys[ring.current.kid])


def test_previous_key_equal_to_the_current_key_keeps_signing(keys):
    ring = ring_of(keys["ES256"], previous=[public_pem(keys["ES256"])])
    assert ring.keys[ring.current.kid].private is not None
    assert len(ring.jwks()["keys"]) == 1
    ring.verify(ring.sign(claims()), audience="gateway")


def test_unknown_kid_is_refused(keys, other_keys):
    ring = ring_of(keys["ES256"])
    stranger = ring_of(other_keys["ES256"]).sign(claims())
    assert reason_of(ring, stranger) == "unknown_key"
    no_kid = jwt.encode(claims(), keys["ES256"], algorithm="ES256")
    assert reason_of(ring, no_kid) == "unknown_key"
    header = b64url(json.dumps({"alg": "ES256", "kid": 7}).encode())
    number_kid = f"{header}.{b64url(json.dumps(claims()).encode())}.{b64url(b'x' * 64)}"
    assert reason_of(ring, number_kid) == "malformed"  # PyJWT refuses a kid that is not a string


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_forged_token_with_a_known_kid_is_refused(keys, other_keys, alg):
    ring = ring_of(keys[alg])
    forged = jwt.encode(claims(), other_keys[alg], algorithm=alg, headers={"kid": ring.current.kid})
    assert reason_of(ring, forged) == "bad_signature"


def test_algorithm_changed_is_refused(keys, other_keys):
    ring = ring_of(keys["ES256"])
    kid = ring.current.kid
    # another algorithm with our kid: signed by a key of that other kind
    other_alg = jwt.encode(claims(), other_keys["RS256"], algorithm="RS256", headers={"kid": kid})
    assert reason_of(ring, other_alg) == "bad_algorithm"
    # a stronger hash of the same curve family
    es384 = jwt.encode(claims(), keys["ES384"], algorithm="ES384", headers={"kid": kid})
    assert reason_of(ring, es384) == "bad_algorithm"
    # the classic confusion: HMAC keyed with the published public key
    hs = _hs256_with(public_pem(keys["ES256"]).encode(), kid)
    assert reason_of(ring, hs) == "bad_algorithm"


def _hs256_with(secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT itself refuses to use a PEM key as an HMAC secret."""
    header = b64url(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def _unsigned(kid: str, alg: str = "none") -> str:
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    return f"{header}.{payload}."


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(keys, alg):
    ring = ring_of(keys["ES256"])
    assert reason_of(ring, _unsigned(ring.current.kid, alg)) == "bad_algorithm"


def test_alg_none_is_refused_through_the_token_verifier(keys):
    import asyncio

    ring = ring_of(keys["ES256"])
    verifier = TokenVerifier((), None, own=(ISSUER, lambda raw: ring.verify(raw, audience="gateway")))
    with pytest.raises(AuthError) as info:
        asyncio.run(verifier.verify(_unsigned(ring.current.kid)))
    assert info.value.reason == "bad_algorithm"


def test_expiry_uses_the_injected_clock_and_a_30_second_leeway(keys):
    clock = Clock()
    ring = ring_of(keys["ES256"], clock=clock)
    token = ring.sign(claims(exp=int(NOW) + 300))
    clock.now = NOW + 300 + 29
    assert ring.verify(token, audience="gateway")["sub"] == "alice"
    clock.now = NOW + 300 + 30
    assert reason_of(ring, token) == "expired"
    clock.now = NOW + 10_000
    assert reason_of(ring, token) == "expired"


def test_issued_in_the_future_is_refused(keys):
    clock = Clock()
    ring = ring_of(keys["ES256"], clock=clock)
    assert reason_of(ring, ring.sign(claims(iat=int(NOW) + 31, exp=int(NOW) + 400))) == "issued_in_future"
    ring.verify(ring.sign(claims(iat=int(NOW) + 29, exp=int(NOW) + 400)), audience="gateway")


def test_wrong_audience_is_refused(keys):
    ring = ring_of(keys["ES256"])
    assert reason_of(ring, ring.sign(claims(aud="app"))) == "bad_audience"
    assert reason_of(ring, ring.sign(claims()), audience="app") == "bad_audience"
    assert reason_of(ring, ring.sign(claims(aud=["app", "other"]))) == "bad_audience"


def test_wrong_issuer_is_refused(keys):
    ring = ring_of(keys["ES256"])
    for iss in ("http://127.0.0.1:9090", "http://127.0.0.1:808", ISSUER + "/", "http://127.0.0.1"):
        with pytest.raises(AuthError):
            ring.verify(ring.sign(claims(iss=iss)), audience="gateway")
    with pytest.raises(AuthError):
        ring.verify(ring.sign(claims(iss=None)), audience="gateway")


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "aud", "iss"])
def test_a_missing_required_claim_is_refused(keys, missing):
    ring = ring_of(keys["ES256"])
    with pytest.raises(AuthError) as info:
        ring.verify(ring.sign(claims(**{missing: None})), audience="gateway")
    assert info.value.reason in ("malformed", "bad_audience")


@pytest.mark.parametrize("sub", ["", 7, ["alice"]])
def test_a_sub_that_is_no_string_is_refused(keys, sub):
    ring = ring_of(keys["ES256"])
    assert reason_of(ring, ring.sign(claims(sub=sub))) == "malformed"


def test_missing_sub_reason(keys):
    ring = ring_of(keys["ES256"])
    assert reason_of(ring, ring.sign(claims(sub=None))) == "malformed"


@pytest.mark.parametrize("raw", ["", "abc", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30"])
def test_garbage_is_malformed(keys, raw):
    assert reason_of(ring_of(keys["ES256"]), raw) == "malformed"


def test_tampered_payload_is_refused(keys):
    ring = ring_of(keys["ES256"])
    header, _, sig = ring.sign(claims()).split(".")
    payload = b64url(json.dumps(claims(sub="root")).encode())
    assert reason_of(ring, f"{header}.{payload}.{sig}") == "bad_signature"


# ---------------------------------------------------------------------------
# the ephemeral key and prepare()


@pytest.fixture
def fresh_ephemeral(monkeypatch):
    monkeypatch.setattr(signing, "_EPHEMERAL", None)


def test_without_a_key_two_rings_share_the_ephemeral_key(fresh_ephemeral):
    one = KeyRing.from_config(SigningConfig(), issuer=ISSUER, clock=Clock())
    two = KeyRing.from_config(SigningConfig(), issuer=ISSUER, clock=Clock())
    assert one.ephemeral and two.ephemeral
    assert one.current.kid == two.current.kid
    assert one.current.alg == "ES256"
    assert two.verify(one.sign(claims()), audience="gateway")["sub"] == "alice"
    assert one.current.kid == thumbprint(signing.ephemeral_key().public_key())
    assert isinstance(signing.ephemeral_key().curve, ec.SECP256R1)


def test_a_configured_key_is_not_ephemeral(keys, fresh_ephemeral):
    ring = ring_of(keys["ES256"])
    assert not ring.ephemeral
    assert signing._EPHEMERAL is None


SECRET = "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a"
PROVIDERS = ("server: {listen: 127.0.0.1:8080, public_url: http://127.0.0.1:8080}\n"
             f"session: {{secret: {SECRET}}}\n"
             "providers:\n  corp: {issuer: https://idp.example.com, client_id: c, client_secret: x}\n")


def config_of(text: str):
    return loads(text, source="/nonexistent/routes.yaml", env={})


def warnings_of(caplog) -> list:
    return [r for r in caplog.records if r.name == "gateway.signing" and r.levelno >= logging.WARNING]


def test_prepare_warns_when_providers_sign(caplog, fresh_ephemeral):
    caplog.set_level(logging.INFO, logger="gateway.signing")
    prepare(config_of(PROVIDERS + "routes:\n"
                      "  - {name: app, path: /, upstream: http://127.0.0.1:9000, auth: login, providers: [corp]}\n"))
    assert signing._EPHEMERAL is not None  # made before any worker forks
    [record] = warnings_of(caplog)
    message = record.getMessage()
    assert "signing.key is not set" in message and "ephemeral" in message
    assert "no other instance" in message


def test_prepare_warns_for_an_identity_assertion_route(caplog, fresh_ephemeral):
    caplog.set_level(logging.INFO, logger="gateway.signing")
    prepare(config_of("routes:\n  - {name: api, path: /, upstream: http://127.0.0.1:9000, auth: token, "
                      "identity_assertion: true}\n"))
    assert len(warnings_of(caplog)) == 1


def test_prepare_is_silent_when_nothing_signs(caplog, fresh_ephemeral):
    caplog.set_level(logging.INFO, logger="gateway.signing")
    prepare(config_of("routes:\n" + ROUTE
                      + "  - {name: api, path: /api, upstream: http://127.0.0.1:9000, auth: token, "
                        "identity_assertion: false}\n"))
    assert warnings_of(caplog) == []
    assert signing._EPHEMERAL is not None  # the /oauth2/jwks key set still has a key to publish


def test_prepare_is_silent_with_a_configured_key(caplog, keys, fresh_ephemeral):
    caplog.set_level(logging.INFO, logger="gateway.signing")
    pem = private_pem(keys["ES256"])
    prepare(config_of(PROVIDERS + "signing:\n  key: " + block(pem) + "routes:\n"
                      "  - {name: app, path: /, upstream: http://127.0.0.1:9000, auth: login, providers: [corp], "
                      "identity_assertion: true}\n"))
    assert warnings_of(caplog) == []
    assert signing._EPHEMERAL is None


def test_the_warning_names_no_key_material(caplog, fresh_ephemeral):
    caplog.set_level(logging.INFO, logger="gateway.signing")
    prepare(config_of("routes:\n  - {name: api, path: /, upstream: http://127.0.0.1:9000, auth: token, "
                      "identity_assertion: true}\n"))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "BEGIN" not in text and thumbprint(signing.ephemeral_key().public_key()) not in text
