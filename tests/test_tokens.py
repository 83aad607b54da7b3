"""TokenVerifier and the Authorization header parser, against a loopback issuer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import jwt
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import AsyncTestCase, ExpectLog, gen_test

from tests.support.fake_idp import HMAC_SECRET, NOW, FakeIdP, SigningKey
from tests.support.tokens import make_token
from gateway.config import ConfigError, TokenIssuerConfig, loads
from gateway import tokens as tokens_module
from gateway.models import AuthError
from gateway.tokens import TokenVerifier, bearer_from_header, unverified_header

pytestmark = pytest.mark.timeout(10)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj) -> str:
    return b64(json.dumps(obj).encode())


# -- bearer_from_header --------------------------------------------------------

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Negotiate abc", None),
        ("Bearerish abc", None),
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer {TOKEN}", TOKEN),
        (f"BEARER {TOKEN}", TOKEN),
        (f"Bearer   {TOKEN}", TOKEN),  # 1*SP
        (f"  Bearer {TOKEN}  ", TOKEN),  # surrounding whitespace of the field value
        ("Bearer abc+/~_-.==", "abc+/~_-.=="),
    ],
)
def test_bearer_from_header(value, expected):
    assert bearer_from_header(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer ",
        "bearer    ",
        f"Bearer {TOKEN} extra",
        f"Bearer\t{TOKEN}",
        f"Bearer {TOKEN},Bearer {TOKEN}",  # two headers, joined by tornado
        "Bearer ab=c",  # "=" only at the end
        "Bearer =abc",
        "Bearer ab\"c",
        "Bearer abc;",
        "Bearer tökén",
        "Bearer a\nb",
    ],
)
def test_bearer_from_header_malformed(value):
    with pytest.raises(AuthError) as info:
        bearer_from_header(value)
    assert info.value.description == "malformed Authorization header"
    assert info.value.reason == "malformed"


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_bearer_from_header_never_crashes(value):
    try:
        token = bearer_from_header(value)
    except AuthError as exc:
        assert value.strip(" \t")[:6].lower() == "bearer"
        assert exc.description == "malformed Authorization header"
        return
    if token is not None:
        assert value.strip(" \t").lower().startswith("bearer ")
        assert value.strip(" \t").endswith(token)
        assert " " not in token and token


@given(st.from_regex(r"[A-Za-z0-9\-._~+/]+=*", fullmatch=True), st.sampled_from(["Bearer", "bearer", "BeArEr"]))
def test_bearer_from_header_round_trip(token, scheme):
    assert bearer_from_header(f"{scheme} {token}") == token


# -- configuration ----------------------------------------------------------------


def issuer_errors(**entry) -> list:
    """What the config rules say about one ``tokens`` entry (empty when it is accepted)."""
    text = yaml.safe_dump({
        "tokens": [{"issuer": "https://idp.example.com", "audience": "any", **entry}],
        "routes": [{"name": "app", "path": "/", "upstream": "http://127.0.0.1:9000", "auth": "public"}],
    })
    try:
        loads(text)
    except ConfigError as exc:
        return exc.errors
    return []


def test_config_rules_report_confusable_issuers():
    pem = SigningKey("RS256").public_pem
    assert issuer_errors(algorithms=["RS256"], public_key=pem) == []
    assert issuer_errors(algorithms=["HS256"], secret=HMAC_SECRET) == []
    assert "mix HMAC (HS256) and public-key (RS256)" in issuer_errors(algorithms=["RS256", "HS256"])[0]
    assert "HS256 needs a secret" in issuer_errors(algorithms=["HS256"])[0]
    assert "RS256 needs public_key, jwks_uri" in issuer_errors(algorithms=["RS256"], secret=HMAC_SECRET)[0]
    assert "cannot verify ES256" in issuer_errors(algorithms=["ES256"], public_key=pem)[0]
    assert "not a PEM public key" in issuer_errors(algorithms=["RS256"], public_key="-----BEGIN PUBLIC KEY-----\njunk\n-----END PUBLIC KEY-----\n")[0]
    assert "give only one of" in issuer_errors(algorithms=["RS256"], public_key=pem, jwks_uri="http://x")[0]
    with pytest.raises(ValueError, match="configured twice"):
        TokenVerifier([TokenIssuerConfig("a", ("HS256",), secret=HMAC_SECRET)] * 2, None)


# -- TokenVerifier -----------------------------------------------------------------


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class VerifierTestCase(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.http = AsyncHTTPClient(force_instance=True)
        self.rsa = SigningKey("RS256", "rsa-1")
        self.ec = SigningKey("ES256", "ec-1")
        self.ed = SigningKey("EdDSA", "ed-1")
        self.idp = FakeIdP([self.rsa, self.ec, self.ed])
        self.attacker = FakeIdP([SigningKey("RS256", "evil", index=1)])
        self.clock = Clock(NOW)
        self.monotonic = Clock(5000.0)
        self.verifiers = []

    def tearDown(self) -> None:
        for verifier in self.verifiers:
            self.io_loop.run_sync(verifier.close)
        self.io_loop.run_sync(self.idp.close)
        self.io_loop.run_sync(self.attacker.close)
        self.http.close()
        super().tearDown()

    def verifier(self, *issuers: TokenIssuerConfig, **kwargs) -> TokenVerifier:
        if not issuers:
            issuers = (self.jwks_issuer(),)
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("monotonic", self.monotonic)
        verifier = TokenVerifier(issuers, self.http, **kwargs)
        self.verifiers.append(verifier)
        return verifier

    def jwks_issuer(self, **kwargs) -> TokenIssuerConfig:
        kwargs.setdefault("algorithms", ("RS256", "PS256", "ES256", "EdDSA"))
        kwargs.setdefault("audience", ("api",))
        kwargs.setdefault("jwks_uri", self.idp.jwks_url)
        kwargs.setdefault("leeway", 0)
        return TokenIssuerConfig(self.idp.issuer, **kwargs)

    def hmac_issuer(self, **kwargs) -> TokenIssuerConfig:
        kwargs.setdefault("audience", None)
        kwargs.setdefault("leeway", 0)
        return TokenIssuerConfig("ci-runner", ("HS256",), secret=HMAC_SECRET, **kwargs)

    def claims(self, **overrides):
        claims = {
            "iss": self.idp.issuer,
            "sub": "user-1",
            "aud": "api",
            "exp": NOW + 300,
            "iat": NOW - 10,
            "email": "ada@example.com",
            "groups": ["admins", "sre"],
            "preferred_username": "ada",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    async def refused(self, verifier: TokenVerifier, token: str) -> AuthError:
        with pytest.raises(AuthError) as info:
            await verifier.verify(token)
        return info.value


class ValidTokensTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_rs256(self):
        identity = await self.verifier().verify(self.rsa.sign(self.claims()))
        assert identity.sub == "user-1"
        assert identity.email == "ada@example.com"
        assert identity.groups == ("admins", "sre")
        assert identity.preferred_username == "ada"
        assert identity.issuer == self.idp.issuer
        assert identity.source == "token"
        assert identity.expires_at == NOW + 300
        assert identity.claims["aud"] == "api"
        with pytest.raises(TypeError):
            identity.claims["sub"] = "someone-else"  # type: ignore[index]

    @gen_test(timeout=5)
    async def test_ps256_es256_eddsa(self):
        verifier = self.verifier()
        assert (await verifier.verify(self.rsa.sign(self.claims(), alg="PS256"))).sub == "user-1"
        assert (await verifier.verify(self.ec.sign(self.claims()))).sub == "user-1"
        assert (await verifier.verify(self.ed.sign(self.claims()))).sub == "user-1"
        assert self.idp.jwks_fetches == 1

    @gen_test(timeout=5)
    async def test_hs256(self):
        verifier = self.verifier(self.hmac_issuer())
        token = jwt.encode(self.claims(iss="ci-runner", aud=None), HMAC_SECRET, algorithm="HS256")
        identity = await verifier.verify(token)
        assert identity.sub == "user-1" and identity.issuer == "ci-runner"

    @gen_test(timeout=5)
    async def test_static_public_key(self):
        issuer = TokenIssuerConfig("static", ("ES256",), audience=("api",), public_key=self.ec.public_pem, leeway=0)
        verifier = self.verifier(issuer)
        assert (await verifier.verify(self.ec.sign(self.claims(iss="static")))).sub == "user-1"
        other = SigningKey("ES256", "ec-1", index=1)
        assert (await self.refused(verifier, other.sign(self.claims(iss="static")))).reason == "bad_signature"
        # An allowed algorithm the key cannot verify is refused.
        issuer = TokenIssuerConfig("static", ("RS256",), audience=None, public_key=self.rsa.public_pem)
        verifier = self.verifier(issuer)
        assert (await verifier.verify(self.rsa.sign(self.claims(iss="static")))).sub == "user-1"
        assert (await self.refused(verifier, self.ec.sign(self.claims(iss="static")))).reason == "bad_algorithm"

    @gen_test(timeout=5)
    async def test_keys_from_discovery(self):
        verifier = self.verifier(self.jwks_issuer(jwks_uri=None))
        assert (await verifier.verify(self.rsa.sign(self.claims()))).sub == "user-1"
        assert self.idp.discovery_fetches == 1 and self.idp.jwks_fetches == 1

    @gen_test(timeout=5)
    async def test_discovery_issuer_mismatch_is_refused(self):
        self.idp.discovery_issuer = "https://someone-else.example"
        verifier = self.verifier(self.jwks_issuer(jwks_uri=None))
        with ExpectLog("gateway.jwks", ".*discovery says 'https://someone-else.example'.*no signing keys yet"):
            error = await self.refused(verifier, self.rsa.sign(self.claims()))
        assert error.reason == "keys_unavailable"
        assert self.idp.jwks_fetches == 0
        assert await verifier.ready() is False

    @gen_test(timeout=5)
    async def test_groups_claim_as_string_and_custom_claims(self):
        issuer = self.jwks_issuer(groups_claim="roles", email_claim="mail", username_claim="login")
        verifier = self.verifier(issuer)
        token = self.rsa.sign(self.claims(roles="admins, sre  ops,,", mail="x@example.com", login="xx", email=None))
        identity = await verifier.verify(token)
        assert identity.groups == ("admins", "sre", "ops")
        assert identity.email == "x@example.com" and identity.preferred_username == "xx"

    @gen_test(timeout=5)
    async def test_nested_groups_claim_and_junk_groups(self):
        verifier = self.verifier(self.jwks_issuer(groups_claim="realm_access.roles"))
        token = self.rsa.sign(self.claims(realm_access={"roles": ["a", 3, None, "b"]}))
        assert (await verifier.verify(token)).groups == ("a", "b")
        token = self.rsa.sign(self.claims(groups={"not": "a list"}))
        verifier = self.verifier(self.jwks_issuer())
        assert (await verifier.verify(token)).groups == ()


class TimeClaimsTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_expired(self):
        error = await self.refused(self.verifier(), self.rsa.sign(self.claims(exp=NOW - 1)))
        assert (error.description, error.reason) == ("token expired", "expired")
        error = await self.refused(self.verifier(), self.rsa.sign(self.claims(exp=NOW)))
        assert error.reason == "expired"

    @gen_test(timeout=5)
    async def test_not_yet_valid(self):
        error = await self.refused(self.verifier(), self.rsa.sign(self.claims(nbf=NOW + 60)))
        assert (error.description, error.reason) == ("token not yet valid", "not_yet_valid")

    @gen_test(timeout=5)
    async def test_issued_in_the_future(self):
        error = await self.refused(self.verifier(), self.rsa.sign(self.claims(iat=NOW + 60)))
        assert (error.description, error.reason) == ("token issued in the future", "issued_in_future")

    @gen_test(timeout=5)
    async def test_leeway(self):
        verifier = self.verifier(self.jwks_issuer(leeway=30))
        assert await verifier.verify(self.rsa.sign(self.claims(exp=NOW - 29)))
        assert await verifier.verify(self.rsa.sign(self.claims(nbf=NOW + 29)))
        assert await verifier.verify(self.rsa.sign(self.claims(iat=NOW + 29)))
        assert (await self.refused(verifier, self.rsa.sign(self.claims(exp=NOW - 31)))).reason == "expired"
        assert (await self.refused(verifier, self.rsa.sign(self.claims(nbf=NOW + 31)))).reason == "not_yet_valid"
        assert (await self.refused(verifier, self.rsa.sign(self.claims(iat=NOW + 31)))).reason == "issued_in_future"

    @gen_test(timeout=5)
    async def test_time_claims_must_be_numbers(self):
        verifier = self.verifier()
        for bad in [{"exp": "9999999999"}, {"exp": True}, {"exp": float("inf")}, {"nbf": "0"}, {"iat": [1]}]:
            error = await self.refused(verifier, self.rsa.sign(self.claims(**bad)))
            assert error.reason == "malformed", bad
        error = await self.refused(verifier, self.rsa.sign(self.claims(exp=None)))
        assert (error.description, error.reason) == ("token has no exp", "malformed")


class AudienceIssuerTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_wrong_audience(self):
        verifier = self.verifier()
        for aud in ["other", ["x", "y"], None]:
            error = await self.refused(verifier, self.rsa.sign(self.claims(aud=aud)))
            assert (error.description, error.reason) == ("invalid audience", "bad_audience")

    @gen_test(timeout=5)
    async def test_audience_any(self):
        verifier = self.verifier(self.jwks_issuer(audience=None))
        assert await verifier.verify(self.rsa.sign(self.claims(aud="whatever")))
        assert await verifier.verify(self.rsa.sign(self.claims(aud=None)))
        assert await verifier.verify(self.rsa.sign(self.claims(aud=["a", "b"])))

    @gen_test(timeout=5)
    async def test_audience_list(self):
        verifier = self.verifier(self.jwks_issuer(audience=("api", "web")))
        assert await verifier.verify(self.rsa.sign(self.claims(aud="web")))
        assert await verifier.verify(self.rsa.sign(self.claims(aud=["other", "api"])))
        assert (await self.refused(verifier, self.rsa.sign(self.claims(aud="mobile")))).reason == "bad_audience"

    @gen_test(timeout=5)
    async def test_unknown_issuer(self):
        verifier = self.verifier()
        error = await self.refused(verifier, self.rsa.sign(self.claims(iss="https://evil.example")))
        assert (error.description, error.reason) == ("unknown issuer", "unknown_issuer")
        error = await self.refused(verifier, self.rsa.sign(self.claims(iss=self.idp.issuer + "/")))
        assert error.reason == "unknown_issuer"
        error = await self.refused(verifier, self.rsa.sign(self.claims(iss=None)))
        assert error.reason == "malformed"
        assert self.idp.jwks_fetches == 0


class AttacksTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_an_id_token_is_not_a_bearer_token(self):
        """RFC 8725 3.11: where ID and access tokens share aud, nonce or at_hash gives an ID token away."""
        verifier = self.verifier(self.jwks_issuer(), self.hmac_issuer())
        for extra in ({"nonce": "n-1"}, {"at_hash": "x4Rk0eQ4Z2u1bJxQ"}, {"nonce": "n", "at_hash": "h"}):
            for token in (self.rsa.sign(self.claims(**extra)),
                          make_token({**self.claims(iss="ci-runner"), **extra})):
                error = await self.refused(verifier, token)
                assert (error.description, error.reason) == ("an ID token is not an access token", "id_token")
        assert (await verifier.verify(self.rsa.sign(self.claims()))).sub == "user-1"

    @gen_test(timeout=5)
    async def test_require_typ_at_jwt(self):
        verifier = self.verifier(self.jwks_issuer(require_typ="at+jwt"))
        for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):
            assert (await verifier.verify(self.rsa.sign(self.claims(), headers={"typ": typ}))).sub == "user-1"
        for headers in ({"typ": "JWT"}, {"typ": "jwt"}, {}, {"typ": 7}, {"typ": "at+jwt2"}):
            error = await self.refused(verifier, self.rsa.sign(self.claims(), headers=headers))
            assert (error.description, error.reason) == ("token typ must be at+jwt", "bad_typ")

    @gen_test(timeout=5)
    async def test_bad_signature(self):
        token = self.rsa.sign(self.claims())
        header, payload, signature = token.split(".")
        forged_payload = b64json(self.claims(sub="admin"))
        error = await self.refused(self.verifier(), f"{header}.{forged_payload}.{signature}")
        assert (error.description, error.reason) == ("invalid signature", "bad_signature")
        impostor = SigningKey("RS256", "rsa-1", index=1)  # same kid, other key
        assert (await self.refused(self.verifier(), impostor.sign(self.claims()))).reason == "bad_signature"

    @gen_test(timeout=5)
    async def test_alg_none(self):
        verifier = self.verifier(self.jwks_issuer(), self.hmac_issuer())
        for alg in ["none", "None", "NONE", "nOnE"]:
            for iss in [self.idp.issuer, "ci-runner"]:
                token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(self.claims(iss=iss))}."
                error = await self.refused(verifier, token)
                assert (error.description, error.reason) == ("algorithm not allowed", "bad_algorithm")

    @gen_test(timeout=5)
    async def test_algorithm_outside_the_allowlist(self):
        verifier = self.verifier(self.jwks_issuer(algorithms=("ES256",)))
        error = await self.refused(verifier, self.rsa.sign(self.claims()))
        assert error.reason == "bad_algorithm"

    @gen_test(timeout=5)
    async def test_key_confusion_hmac_with_public_key(self):
        pem = self.rsa.public_pem
        header = b64json({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
        payload = b64json(self.claims())
        mac = hmac.new(pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{payload}.{b64(mac)}"
        for issuer in [
            self.jwks_issuer(),
            TokenIssuerConfig(self.idp.issuer, ("RS256",), audience=("api",), public_key=pem),
        ]:
            error = await self.refused(self.verifier(issuer), forged)
            assert (error.description, error.reason) == ("algorithm not allowed", "bad_algorithm")
        # An issuer whose allowlist (wrongly) names HS256 is refused by the config rules,
        # and a verifier given one anyway accepts no HMAC token from it.
        assert "mix HMAC (HS256)" in issuer_errors(algorithms=["RS256", "HS256"], jwks_uri=self.idp.jwks_url)[0]
        error = await self.refused(self.verifier(self.jwks_issuer(algorithms=("RS256", "HS256"))), forged)
        assert (error.description, error.reason) == ("algorithm not allowed", "bad_algorithm")

    @gen_test(timeout=5)
    async def test_asymmetric_token_for_hmac_issuer(self):
        verifier = self.verifier(self.hmac_issuer())
        error = await self.refused(verifier, self.rsa.sign(self.claims(iss="ci-runner")))
        assert error.reason == "bad_algorithm"

    @gen_test(timeout=5)
    async def test_key_headers_are_never_key_sources(self):
        evil = self.attacker.keys[0]
        verifier = self.verifier(self.jwks_issuer(), jwks_options={"unknown_kid_cooldown": 30})
        static = self.verifier(
            TokenIssuerConfig(self.idp.issuer, ("RS256",), audience=("api",), public_key=self.rsa.public_pem)
        )
        headers = [
            {"jku": self.attacker.jwks_url},
            {"x5u": self.attacker.jwks_url},
            {"jwk": evil.jwk},
            {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
            {"jku": self.attacker.jwks_url, "jwk": evil.jwk, "x5u": self.attacker.jwks_url},
        ]
        for extra in headers:
            token = evil.sign(self.claims(), headers=extra)
            assert (await self.refused(verifier, token)).reason == "unknown_kid"
            assert (await self.refused(static, token)).reason == "bad_signature"
            # Same kid as a real key: the real key is used, and the signature fails.
            token = evil.sign(self.claims(), headers={**extra, "kid": "rsa-1"})
            assert (await self.refused(verifier, token)).reason == "bad_signature"
        assert sum(self.attacker.requests.values()) == 0
        assert self.idp.jwks_fetches == 2  # the first fetch, then one unknown-kid refetch

    @gen_test(timeout=5)
    async def test_malformed_tokens(self):
        verifier = self.verifier()
        good = self.rsa.sign(self.claims())
        header, payload, signature = good.split(".")
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d.e",  # JWE shape
            f"{header}.{payload}",
            f"{header}!.{payload}.{signature}",  # invalid base64
            f"{header}.{payload}$.{signature}",
            f"{header}.{payload}.{signature}*",
            f"{b64(b'not json')}.{payload}.{signature}",  # non-JSON header
            f"{b64json([1, 2])}.{payload}.{signature}",  # header not an object
            f"{b64json({'typ': 'JWT'})}.{payload}.{signature}",  # no alg
            f"{b64json({'alg': 5})}.{payload}.{signature}",
            f"{b64json({'alg': 'RS256', 'kid': 7})}.{payload}.{signature}",
            f"{b64json({'alg': 'RS256', 'crit': ['exp']})}.{payload}.{signature}",
            f"{header}.{b64(b'not json')}.{signature}",
            f"{header}.{b64json('a string')}.{signature}",
        ]:
            error = await self.refused(verifier, token)
            assert error.reason == "malformed", token
            assert error.description == "malformed token", token

    @gen_test(timeout=5)
    async def test_too_large(self):
        verifier = self.verifier()
        token = self.rsa.sign(self.claims(padding="x" * 16384))
        error = await self.refused(verifier, token)
        assert (error.description, error.reason) == ("token too large", "too_large")
        assert self.idp.jwks_fetches == 0
        big = self.verifier(max_token_length=32768)
        assert (await big.verify(token)).sub == "user-1"

    @gen_test(timeout=5)
    async def test_missing_sub(self):
        for sub in [None, "", 42]:
            error = await self.refused(self.verifier(), self.rsa.sign(self.claims(sub=sub)))
            assert (error.description, error.reason) == ("token has no sub", "malformed"), sub


class KeysTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_unknown_kid_refetches_once_within_cooldown(self):
        verifier = self.verifier(jwks_options={"unknown_kid_cooldown": 30})
        await verifier.verify(self.rsa.sign(self.claims()))
        assert self.idp.jwks_fetches == 1
        stranger = SigningKey("RS256", "stranger", index=1)
        error = await self.refused(verifier, stranger.sign(self.claims()))
        assert (error.description, error.reason) == ("unknown signing key", "unknown_kid")
        assert self.idp.jwks_fetches == 2
        self.monotonic.now += 10
        error = await self.refused(verifier, SigningKey("RS256", "stranger-2", index=1).sign(self.claims()))
        assert error.reason == "unknown_kid"
        assert self.idp.jwks_fetches == 2

    @gen_test(timeout=5)
    async def test_key_rotation(self):
        verifier = self.verifier()
        await verifier.verify(self.rsa.sign(self.claims()))
        rotated = SigningKey("RS256", "rsa-2", index=1)
        self.idp.keys = [rotated]
        identity = await verifier.verify(rotated.sign(self.claims(sub="user-2")))
        assert identity.sub == "user-2"
        assert self.idp.jwks_fetches == 2

    @gen_test(timeout=5)
    async def test_issuer_down_keeps_last_good_keys(self):
        self.idp.cache_control = "max-age=60"
        verifier = self.verifier()
        await verifier.verify(self.rsa.sign(self.claims()))
        await self.idp.close()
        self.monotonic.now += 3600
        with ExpectLog("gateway.jwks", ".*keeping the last good key set"):
            identity = await verifier.verify(self.rsa.sign(self.claims(sub="user-3")))
            jwks = verifier._issuers[self.idp.issuer].jwks
            assert await jwks.refresh() is False  # joins the failing background refresh
            assert jwks.fetch_count == 2
        assert identity.sub == "user-3"
        assert await verifier.ready()

    @gen_test(timeout=5)
    async def test_concurrent_cold_verifies_do_one_fetch(self):
        self.idp.delay = 0.05
        verifier = self.verifier(self.jwks_issuer(jwks_uri=None))
        tokens = [self.rsa.sign(self.claims(sub=f"user-{i}")) for i in range(20)]
        identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        assert [i.sub for i in identities] == [f"user-{i}" for i in range(20)]
        assert self.idp.jwks_fetches == 1
        assert self.idp.discovery_fetches == 1

    @gen_test(timeout=5)
    async def test_start_and_ready(self):
        verifier = self.verifier(self.jwks_issuer(), self.hmac_issuer())
        await verifier.start()
        assert await verifier.ready()
        assert self.idp.jwks_fetches == 1
        await verifier.verify(self.rsa.sign(self.claims()))
        assert self.idp.jwks_fetches == 1
        assert await self.verifier(self.hmac_issuer()).ready()


class CacheTest(VerifierTestCase):
    @gen_test(timeout=5)
    async def test_cached_token_is_not_verified_again(self):
        verifier = self.verifier()
        token = self.rsa.sign(self.claims())
        first = await verifier.verify(token)
        await self.idp.close()  # no keys can be fetched any more
        verifier._issuers[self.idp.issuer].jwks = None  # and none are looked up
        assert await verifier.verify(token) is first
        assert verifier.verify_cached(token) is first

    @gen_test(timeout=5)
    async def test_cache_entry_expires_at_exp(self):
        verifier = self.verifier()
        token = self.rsa.sign(self.claims(exp=NOW + 60))
        await verifier.verify(token)
        self.clock.now = NOW + 59
        assert verifier.verify_cached(token) is not None
        self.clock.now = NOW + 60
        assert verifier.verify_cached(token) is None
        error = await self.refused(verifier, token)
        assert error.reason == "expired"

    @gen_test(timeout=5)
    async def test_failures_are_not_cached(self):
        verifier = self.verifier()
        token = self.rsa.sign(self.claims(nbf=NOW + 60))
        assert (await self.refused(verifier, token)).reason == "not_yet_valid"
        self.clock.now = NOW + 60
        assert (await verifier.verify(token)).sub == "user-1"

    @gen_test(timeout=5)
    async def test_cache_is_bounded_lru(self):
        verifier = self.verifier(cache_size=3)
        tokens = [self.rsa.sign(self.claims(sub=f"u{i}")) for i in range(4)]
        for token in tokens[:3]:
            await verifier.verify(token)
        assert verifier.verify_cached(tokens[0])  # now the most recent
        await verifier.verify(tokens[3])  # evicts tokens[1]
        assert verifier.verify_cached(tokens[1]) is None
        assert all(verifier.verify_cached(t) for t in (tokens[0], tokens[2], tokens[3]))

    @gen_test(timeout=5)
    async def test_a_repeated_token_is_answered_from_the_cache_without_a_signature_check(self):
        """What makes the repeated-token row cheap, checked by counting, not timing (speed is bench/'s)."""
        verifier = self.verifier()
        token = self.rsa.sign(self.claims())
        checks = []
        real = tokens_module._check_signature

        def counting(*args, **kwargs):
            checks.append(1)
            return real(*args, **kwargs)

        tokens_module._check_signature = counting
        try:
            await verifier.verify(token)
            assert len(checks) == 1
            copies = [token[:10] + token[10:] for _ in range(200)]  # fresh str objects, as per request
            for raw in copies:
                assert verifier.verify_cached(raw) is not None
                assert (await verifier.verify(raw)).sub == "user-1"
            assert len(checks) == 1
            other = self.rsa.sign(self.claims(sub="user-2"))
            assert verifier.verify_cached(other) is None
            assert (await verifier.verify(other)).sub == "user-2"
            assert len(checks) == 2
        finally:
            tokens_module._check_signature = real


# -- the header of a cache miss is read by unverified_header, not PyJWT's slower one: same verdicts --


def _header_verdict(read, raw):
    try:
        return ("ok", read(raw))
    except Exception:
        return ("refused",)


_SEGMENT_TEXT = st.text(alphabet="ABCab019_-=+/.!\u00e9 \x00", max_size=12)
_HS_TOKEN = jwt.encode({"iss": "x", "sub": "a"}, "k" * 32, algorithm="HS256", headers={"kid": "key-1"})


@settings(max_examples=500, deadline=None)
@given(_SEGMENT_TEXT, _SEGMENT_TEXT, _SEGMENT_TEXT, st.sampled_from(["", ".", ".."]))
def test_unverified_header_refuses_and_accepts_what_pyjwt_does(a, b, c, extra):
    h, p, sig = _HS_TOKEN.split(".")
    for raw in (f"{a}.{b}.{c}{extra}", f"{h}.{p}{a}.{sig}", f"{h}.{p}.{sig}{a}", f"{a}{h}.{p}.{sig}"):
        assert _header_verdict(unverified_header, raw) == _header_verdict(jwt.get_unverified_header, raw), raw


@pytest.mark.parametrize("header", [{"alg": "HS256", "kid": 5}, {"alg": "HS256", "crit": ["b64"], "b64": False},
                                    {"alg": "HS256", "crit": []}, [1], {"b64": False}, {"alg": "RS256", "kid": "k"}])
@pytest.mark.parametrize("payload", ["", "eyJhIjoxfQ"])
def test_unverified_header_on_odd_headers(header, payload):
    segment = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    raw = f"{segment}.{payload}.c2ln"
    assert _header_verdict(unverified_header, raw) == _header_verdict(jwt.get_unverified_header, raw)


# -- a cache miss checks the signature and the claims itself: the same verdicts as jwt.decode --

from cryptography.hazmat.primitives import serialization as _serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec as _ec, rsa as _rsa  # noqa: E402

from gateway import tokens as _tokens  # noqa: E402

_RSA = _rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = _ec.generate_private_key(_ec.SECP256R1())
_OTHER_RSA = _rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(private) -> str:
    return private.public_key().public_bytes(_serialization.Encoding.PEM,
                                             _serialization.PublicFormat.SubjectPublicKeyInfo).decode()


_SIGNERS = {  # alg -> (signing key, the issuer's config, the verification key as the verifier holds it)
    "RS256": (_RSA, dict(public_key=_pem(_RSA)), None),
    "PS256": (_RSA, dict(public_key=_pem(_RSA)), None),
    "ES256": (_EC, dict(public_key=_pem(_EC)), None),
    "HS256": ("s" * 32, dict(secret="s" * 32), None),
    "RS256-jwk": (_RSA, dict(jwks_uri="http://127.0.0.1:1/jwks"),
                  jwt.PyJWK(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_RSA.public_key())), algorithm="RS256")),
    "RS256-jwk-other": (_OTHER_RSA, dict(jwks_uri="http://127.0.0.1:1/jwks"),
                        jwt.PyJWK(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_RSA.public_key())),
                                  algorithm="RS256")),
    "PS256-jwk-for-RS256": (_RSA, dict(jwks_uri="http://127.0.0.1:1/jwks"),
                            jwt.PyJWK(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_RSA.public_key())),
                                      algorithm="RS256")),
}

_CLAIM_VALUES = st.one_of(st.none(), st.integers(-5, 2**40), st.text(max_size=4), st.sampled_from(["iss-a", "api", "x"]),
                          st.lists(st.sampled_from(["api", "web", 3, ""]), max_size=3), st.booleans())
_CLAIMS = st.dictionaries(st.sampled_from(["iss", "aud", "sub", "exp", "jti", "nbf", "iat", "email"]), _CLAIM_VALUES)


def _verdict(check):
    try:
        return ("ok", check())
    except AuthError as exc:
        return ("refused", exc.reason, exc.description)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_SIGNERS)), _CLAIMS, st.sampled_from([None, ("api",), ("api", "web")]),
       st.sampled_from(["none", "none", "none", "flip", "truncate", "empty"]))
def test_own_signature_and_claim_checks_agree_with_jwt_decode(signer, claims_, audience, tamper):
    signing_key, key_source, held = _SIGNERS[signer]
    alg = signer.split("-")[0]
    claims_ = {"iss": "iss-a", "exp": NOW + 60, **claims_}
    config = TokenIssuerConfig(issuer="iss-a", algorithms=(alg,), audience=audience, **key_source)
    issuer = _tokens._Issuer(config)
    raw = jwt.PyJWS().encode(json.dumps(claims_).encode(), signing_key, algorithm=alg)  # any claim values
    head, body, signature = raw.split(".")
    if tamper == "flip":
        signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    elif tamper == "truncate":
        signature = b64(base64.urlsafe_b64decode(signature + "==")[:-3])
    elif tamper == "empty":
        signature = ""
    raw = f"{head}.{body}.{signature}"
    key = held if held is not None else issuer.static_key
    _, payload, signing_input, sig = _tokens.split_compact(raw)

    def ours():
        _tokens._check_signature(signing_input, sig, key, alg, issuer)
        checked = json.loads(payload)
        _tokens._check_claims(checked, issuer)
        return checked

    assert _verdict(ours) == _verdict(lambda: TokenVerifier._decode(raw, key, alg, issuer))
