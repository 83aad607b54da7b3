"""JWKSCache and discovery against a real loopback issuer (tests/support/fake_idp.py)."""

from __future__ import annotations

import asyncio
import logging

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import AsyncTestCase, ExpectLog, gen_test

from tests.support.fake_idp import FakeIdP, SigningKey
from gateway.discovery import DiscoveryCache, DiscoveryError, fetch_discovery
from gateway.redact import safe_url
from gateway.jwks import JWKSCache, KeysUnavailable, cache_ttl
from gateway.models import AuthError

pytestmark = pytest.mark.timeout(10)


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, 300),
        ("", 300),
        ("max-age=600", 600),
        ("public, max-age=120, must-revalidate", 120),
        ('max-age="90"', 90),
        ("MAX-AGE=700", 700),
        ("max-age=5", 60),  # clamped up to min_ttl
        ("max-age=999999", 3600),  # clamped down to max_ttl
        ("no-store", 60),
        ("private, no-cache", 60),
        ("s-maxage=10", 300),
        ("max-age=abc", 300),
    ],
)
def test_cache_ttl(header, expected):
    assert cache_ttl(header, default=300, min_ttl=60, max_ttl=3600) == expected


def test_safe_url_drops_secrets():
    assert safe_url("https://u:p@idp.example/jwks?token=s3cret#x") == "https://idp.example/jwks"


class IdPTestCase(AsyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.http = AsyncHTTPClient(force_instance=True)
        self.rsa = SigningKey("RS256", "rsa-1")
        self.idp = FakeIdP([self.rsa])
        self.clock = Clock()

    def tearDown(self) -> None:
        self.io_loop.run_sync(self.idp.close)
        self.http.close()
        super().tearDown()

    def cache(self, **kwargs) -> JWKSCache:
        kwargs.setdefault("clock", self.clock)
        return JWKSCache(self.http, kwargs.pop("uri", self.idp.jwks_url), **kwargs)


class JWKSCacheTest(IdPTestCase):
    @gen_test(timeout=5)
    async def test_key_by_kid(self):
        cache = self.cache()
        assert not cache.has_keys()
        key = await cache.get_key("rsa-1", "RS256")
        assert isinstance(key, jwt.PyJWK)
        assert key.key_id == "rsa-1" and key.algorithm_name == "RS256"
        assert cache.has_keys()
        # Cached: no second request while fresh.
        await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 1

    @gen_test(timeout=5)
    async def test_key_without_alg_serves_every_fitting_algorithm(self):
        cache = self.cache()
        assert (await cache.get_key("rsa-1", "PS256")).algorithm_name == "PS256"
        assert (await cache.get_key("rsa-1", "RS512")).algorithm_name == "RS512"
        with pytest.raises(AuthError) as info:
            await cache.get_key("rsa-1", "ES256")  # an RSA key never verifies ES256
        assert info.value.reason == "unknown_kid"

    @gen_test(timeout=5)
    async def test_jwk_alg_pins_the_algorithm(self):
        self.idp.keys = [SigningKey("RS256", "pinned", jwk_alg=True)]
        cache = self.cache()
        assert (await cache.get_key("pinned", "RS256")).algorithm_name == "RS256"
        with pytest.raises(AuthError):
            await cache.get_key("pinned", "PS256")

    @gen_test(timeout=5)
    async def test_unusable_keys_are_skipped_individually(self):
        ec_key = SigningKey("ES256", "ec-1")
        self.idp.keys = [self.rsa, ec_key]
        self.idp.extra_jwks = [
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},  # symmetric: never from a JWKS
            {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", **{k: v for k, v in self.rsa.jwk.items() if k in "ne"}},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], **{k: v for k, v in self.rsa.jwk.items() if k in "ne"}},
            {"kty": "WAT", "kid": "odd"},
            "not a dict",
        ]
        cache = self.cache(unknown_kid_cooldown=1000)
        assert (await cache.get_key("rsa-1", "RS256")).key_id == "rsa-1"
        assert (await cache.get_key("ec-1", "ES256")).key_id == "ec-1"
        for kid, alg in [("sym", "HS256"), ("bad-curve", "ES256"), ("broken", "RS256"), ("enc", "RS256"), ("ops", "RS256")]:
            with pytest.raises(AuthError):
                await cache.get_key(kid, alg)

    @gen_test(timeout=5)
    async def test_no_kid_uses_the_single_fitting_key(self):
        self.idp.keys = [self.rsa, SigningKey("ES256", "ec-1")]
        cache = self.cache()
        assert (await cache.get_key(None, "RS256")).key_id == "rsa-1"
        assert (await cache.get_key(None, "ES256")).key_id == "ec-1"

    @gen_test(timeout=5)
    async def test_no_kid_with_two_fitting_keys_is_refused(self):
        self.idp.keys = [self.rsa, SigningKey("RS256", "rsa-2", index=1)]
        cache = self.cache()
        with pytest.raises(AuthError) as info:
            await cache.get_key(None, "RS256")
        assert info.value.description == "unknown signing key"

    @gen_test(timeout=5)
    async def test_unknown_kid_refetches_once_per_cooldown(self):
        cache = self.cache(unknown_kid_cooldown=30)
        await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 1
        with pytest.raises(AuthError) as info:
            await cache.get_key("nope-1", "RS256")
        assert info.value.reason == "unknown_kid"
        assert self.idp.jwks_fetches == 2  # one refetch
        self.clock.advance(10)
        with pytest.raises(AuthError):
            await cache.get_key("nope-2", "RS256")
        assert self.idp.jwks_fetches == 2  # within the cooldown: no fetch
        self.clock.advance(25)
        with pytest.raises(AuthError):
            await cache.get_key("nope-3", "RS256")
        assert self.idp.jwks_fetches == 3  # cooldown over

    @gen_test(timeout=5)
    async def test_first_fetch_then_unknown_kid_does_not_fetch_twice(self):
        cache = self.cache()
        with pytest.raises(AuthError):
            await cache.get_key("nope", "RS256")
        assert self.idp.jwks_fetches == 1

    @gen_test(timeout=5)
    async def test_key_rotation(self):
        cache = self.cache()
        await cache.get_key("rsa-1", "RS256")
        new = SigningKey("RS256", "rsa-2", index=1)
        self.idp.keys = [new]
        key = await cache.get_key("rsa-2", "RS256")
        assert key.key_id == "rsa-2"
        assert self.idp.jwks_fetches == 2

    @gen_test(timeout=5)
    async def test_cache_control_max_age(self):
        self.idp.cache_control = "public, max-age=120"
        cache = self.cache()
        await cache.get_key("rsa-1", "RS256")
        self.clock.advance(119)
        await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 1
        self.clock.advance(2)
        # Stale: served at once from the old set, refreshed in the background.
        self.idp.delay = 0.2
        key = await cache.get_key("rsa-1", "RS256")
        assert key.key_id == "rsa-1"
        assert cache.fetch_count == 2  # started, not awaited
        await cache.refresh()  # joins the background fetch
        assert self.idp.jwks_fetches == 2
        # Fresh again for another 120 s.
        self.clock.advance(100)
        await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 2

    @gen_test(timeout=5)
    async def test_stale_while_revalidate_does_not_wait(self):
        self.idp.cache_control = "max-age=60"
        cache = self.cache()
        await cache.get_key("rsa-1", "RS256")
        self.clock.advance(61)
        self.idp.delay = 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await cache.get_key("rsa-1", "RS256")
        assert loop.time() - started < 0.5
        await cache.close()

    @gen_test(timeout=5)
    async def test_issuer_down_keeps_last_good_keys(self):
        self.idp.cache_control = "max-age=60"
        cache = self.cache(uri=self.idp.jwks_url + "?client_secret=hunter2", retry_interval=5)
        await cache.get_key("rsa-1", "RS256")
        self.idp.jwks_status = 500
        self.clock.advance(61)
        with ExpectLog("gateway.jwks", r".*HTTP 500; keeping the last good key set") as expect:
            assert (await cache.get_key("rsa-1", "RS256")).key_id == "rsa-1"
            assert await cache.refresh() is False
        assert expect.logged_stack is False
        # Then the server goes away altogether.
        await self.idp.close()
        self.clock.advance(6)
        records = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("gateway.jwks").addHandler(handler)
        try:
            assert (await cache.get_key("rsa-1", "RS256")).key_id == "rsa-1"
            assert await cache.refresh() is False
        finally:
            logging.getLogger("gateway.jwks").removeHandler(handler)
        assert records and all("hunter2" not in r.getMessage() for r in records)
        assert all("keeping the last good key set" in r.getMessage() for r in records)
        assert cache.has_keys() and await cache.ready()

    @gen_test(timeout=5)
    async def test_failure_without_keys_backs_off(self):
        self.idp.jwks_status = 503
        cache = self.cache(retry_interval=5)
        with ExpectLog("gateway.jwks", ".*no signing keys yet"):
            with pytest.raises(KeysUnavailable) as info:
                await cache.get_key("rsa-1", "RS256")
        assert info.value.description == "signing keys unavailable"
        assert self.idp.jwks_fetches == 1
        with pytest.raises(KeysUnavailable):
            await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 1  # backing off
        assert await cache.ready() is False
        self.idp.jwks_status = 200
        self.clock.advance(5)
        assert await cache.ready() is True
        assert (await cache.get_key("rsa-1", "RS256")).key_id == "rsa-1"

    @gen_test(timeout=5)
    async def test_non_json_and_keyless_documents_are_failures(self):
        for body in ["<html>", '{"keys": []}', '{"nokeys": 1}', "[]"]:
            self.idp.jwks_body = body
            cache = self.cache()
            with ExpectLog("gateway.jwks", ".*no signing keys yet"):
                assert await cache.ready() is False

    @gen_test(timeout=5)
    async def test_concurrent_cold_callers_share_one_fetch(self):
        self.idp.delay = 0.05
        cache = self.cache()
        keys = await asyncio.gather(*(cache.get_key("rsa-1", "RS256") for _ in range(20)))
        assert {k.key_id for k in keys} == {"rsa-1"}
        assert self.idp.jwks_fetches == 1

    @gen_test(timeout=5)
    async def test_start_warms_in_background(self):
        cache = self.cache()
        await cache.start()
        assert await cache.ready()
        await cache.get_key("rsa-1", "RS256")
        assert self.idp.jwks_fetches == 1
        await cache.close()

    @gen_test(timeout=5)
    async def test_uri_from_a_callable(self):
        calls = []

        async def uri():
            calls.append(1)
            return self.idp.jwks_url

        cache = self.cache(uri=uri)
        assert (await cache.get_key("rsa-1", "RS256")).key_id == "rsa-1"
        assert calls == [1]

    @gen_test(timeout=5)
    async def test_uri_callable_failure_is_a_fetch_failure(self):
        async def uri():
            raise DiscoveryError("discovery for test failed")

        cache = self.cache(uri=uri)
        with ExpectLog("gateway.jwks", "discovery for test failed; no signing keys yet"):
            with pytest.raises(KeysUnavailable):
                await cache.get_key("rsa-1", "RS256")


class DiscoveryTest(IdPTestCase):
    @gen_test(timeout=5)
    async def test_fetch(self):
        doc = await fetch_discovery(self.http, self.idp.issuer)
        assert doc["issuer"] == self.idp.issuer and doc["jwks_uri"] == self.idp.jwks_url

    @gen_test(timeout=5)
    async def test_trailing_slash_is_stripped_for_the_url_but_must_match(self):
        with pytest.raises(DiscoveryError, match="issuer mismatch: discovery says .*, config says .*exactly"):
            await fetch_discovery(self.http, self.idp.issuer + "/")
        assert self.idp.discovery_fetches == 1  # same URL was fetched
        self.idp.discovery_issuer = self.idp.issuer + "/"
        doc = await fetch_discovery(self.http, self.idp.issuer + "/")
        assert doc["issuer"] == self.idp.issuer + "/"

    @gen_test(timeout=5)
    async def test_issuer_mismatch(self):
        self.idp.discovery_issuer = "https://evil.example"
        with pytest.raises(DiscoveryError, match="discovery says 'https://evil.example'"):
            await fetch_discovery(self.http, self.idp.issuer)

    @gen_test(timeout=5)
    async def test_errors(self):
        self.idp.discovery_body = "not json"
        with pytest.raises(DiscoveryError, match="not valid JSON"):
            await fetch_discovery(self.http, self.idp.issuer)
        self.idp.discovery_body = "[1, 2]"
        with pytest.raises(DiscoveryError, match="not a JSON object"):
            await fetch_discovery(self.http, self.idp.issuer)
        with pytest.raises(DiscoveryError, match="HTTP 404"):
            await fetch_discovery(self.http, self.idp.issuer + "/nothing-here")
        await self.idp.close()
        with pytest.raises(DiscoveryError, match="failed"):
            await fetch_discovery(self.http, self.idp.issuer, timeout=2)

    @gen_test(timeout=5)
    async def test_cache_ttl_and_last_good_document(self):
        cache = DiscoveryCache(self.http, ttl=3600, clock=self.clock, retry_interval=30)
        assert cache.peek(self.idp.issuer) is None
        docs = await asyncio.gather(*(cache.get(self.idp.issuer) for _ in range(10)))
        assert all(d["jwks_uri"] == self.idp.jwks_url for d in docs)
        assert self.idp.discovery_fetches == 1
        self.clock.advance(3599)
        await cache.get(self.idp.issuer)
        assert self.idp.discovery_fetches == 1
        self.clock.advance(2)
        self.idp.discovery_issuer = "https://changed.example"  # now a bad document
        with ExpectLog("gateway.discovery", ".*keeping the last good discovery document"):
            doc = await cache.get(self.idp.issuer)
        assert doc["issuer"] == self.idp.issuer
        assert self.idp.discovery_fetches == 2
        await cache.get(self.idp.issuer)  # retry interval: no refetch
        assert self.idp.discovery_fetches == 2
        self.idp.discovery_issuer = None
        self.clock.advance(31)
        await cache.get(self.idp.issuer)
        assert self.idp.discovery_fetches == 3

    @gen_test(timeout=5)
    async def test_cache_without_document_raises(self):
        cache = DiscoveryCache(self.http, clock=self.clock)
        self.idp.discovery_issuer = "https://other.example"
        with pytest.raises(DiscoveryError):
            await cache.get(self.idp.issuer)
        assert not cache.has(self.idp.issuer)
