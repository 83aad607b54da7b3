"""JSON Web Key Sets: an issuer's public signing keys, fetched and cached.

``tokens.TokenVerifier`` asks ``JWKSCache.get_key(kid, alg)`` for the key
of every token it has not verified before. The key set is fetched with the
injected ``AsyncHTTPClient`` (never PyJWT's ``PyJWKClient``, which blocks the
IOLoop on ``urllib``)::

    cache = JWKSCache(AsyncHTTPClient(), "https://idp.example.com/jwks")
    key = await cache.get_key("key-1", "RS256")   # a jwt.PyJWK
    jwt.decode(raw, key, algorithms=["RS256"], ...)

Caching rules:

* the set is fresh for the response's ``Cache-Control: max-age`` (no max-age:
  ``default_ttl``; ``no-store``/``no-cache``: ``min_ttl``), clamped to
  ``[min_ttl, max_ttl]``, measured on the injected monotonic clock;
* concurrent callers share one in-flight fetch (single flight);
* the first fetch is awaited; later, a stale set is still served while a
  background fetch refreshes it (stale-while-revalidate);
* a ``kid`` that is not in the set causes one refetch, at most once per
  ``unknown_kid_cooldown`` seconds, so random kids cannot make us hammer
  the issuer;
* when a fetch fails the last good set is kept (a warning is logged, with
  the URL shown without its query string) and the next attempt waits
  ``retry_interval`` seconds.

Each key is parsed on its own with ``jwt.PyJWK``: an unusable key (unknown
``kty``, bad curve, encryption key, symmetric ``oct`` key) is skipped rather
than failing the whole set, which is what ``jwt.PyJWKSet`` would do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

import jwt
from tornado.httpclient import AsyncHTTPClient

from .discovery import DiscoveryError, describe_fetch_error, fetch_json
from .redact import safe_url
from .models import AuthError

log = logging.getLogger("gateway.jwks")

DEFAULT_MIN_TTL = 60.0
DEFAULT_MAX_TTL = 3600.0
DEFAULT_TTL = 300.0
DEFAULT_UNKNOWN_KID_COOLDOWN = 30.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_INTERVAL = 5.0

JwksUri = Union[str, Callable[[], Awaitable[str]]]

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}
OKP_CURVES = frozenset({"Ed25519", "Ed448"})

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?=,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?=,|$)", re.IGNORECASE)


class KeysUnavailable(AuthError):
    """No key set could be fetched yet: the gateway, not the token, is at fault."""

    def __init__(self) -> None:
        super().__init__("signing keys unavailable", "keys_unavailable")


def cache_ttl(
    cache_control: Optional[str],
    *,
    default: float = DEFAULT_TTL,
    min_ttl: float = DEFAULT_MIN_TTL,
    max_ttl: float = DEFAULT_MAX_TTL,
) -> float:
    """Seconds to keep a key set, from its ``Cache-Control`` header."""
    ttl = default
    if cache_control:
        if _NO_CACHE.search(cache_control):
            ttl = min_ttl
        else:
            match = _MAX_AGE.search(cache_control)
            if match:
                ttl = float(match.group(1))
    return min(max(ttl, min_ttl), max_ttl)


def alg_fits_jwk(alg: str, kty: Any, crv: Any) -> bool:
    """Can a key of this type (and curve) verify a signature made with ``alg``?"""
    if kty == "RSA":
        return alg in RSA_ALGORITHMS
    if kty == "EC":
        return EC_CURVES.get(alg, "") == crv
    if kty == "OKP":
        return alg == "EdDSA" and crv in OKP_CURVES
    return False  # "oct" and anything else: never from a published key set


def _default_alg(jwk_dict: Dict[str, Any]) -> Optional[str]:
    kty, crv = jwk_dict.get("kty"), jwk_dict.get("crv")
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        for alg, curve in EC_CURVES.items():
            if curve == crv:
                return alg
        return None
    if kty == "OKP" and crv in OKP_CURVES:
        return "EdDSA"
    return None


class _Key:
    """One usable JWK and the ``PyJWK`` objects built from it, one per algorithm."""

    __slots__ = ("jwk", "kid", "kty", "crv", "alg", "_by_alg")

    def __init__(self, jwk_dict: Dict[str, Any], first: jwt.PyJWK):
        self.jwk = jwk_dict
        self.kid: Optional[str] = jwk_dict.get("kid")
        self.kty = jwk_dict.get("kty")
        self.crv = jwk_dict.get("crv")
        self.alg: Optional[str] = jwk_dict.get("alg")
        self._by_alg: Dict[str, Optional[jwt.PyJWK]] = {first.algorithm_name: first}

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        return alg_fits_jwk(alg, self.kty, self.crv)

    def for_alg(self, alg: str) -> Optional[jwt.PyJWK]:
        """A PyJWK bound to ``alg`` (PyJWT refuses a token whose alg differs from the key's)."""
        try:
            return self._by_alg[alg]
        except KeyError:
            pass
        try:
            key: Optional[jwt.PyJWK] = jwt.PyJWK(self.jwk, algorithm=alg)
        except Exception:
            key = None
        self._by_alg[alg] = key
        return key


def parse_jwks(document: Any) -> List[_Key]:
    """The usable signature keys of a JWKS document; unusable ones are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise DiscoveryError("JWKS document has no \"keys\" list")
    keys = []
    for jwk_dict in document["keys"]:
        if not isinstance(jwk_dict, dict):
            continue
        if jwk_dict.get("use") not in (None, "sig"):
            continue
        key_ops = jwk_dict.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        kid = jwk_dict.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        alg = jwk_dict.get("alg")
        if alg is not None and not isinstance(alg, str):
            continue
        alg = alg or _default_alg(jwk_dict)
        if alg is None or not alg_fits_jwk(alg, jwk_dict.get("kty"), jwk_dict.get("crv")):
            continue
        try:
            first = jwt.PyJWK(jwk_dict, algorithm=alg)
        except Exception as exc:  # PyJWKError, InvalidKeyError, or a bad member value
            log.debug("skipping unusable JWK kid=%r: %s", kid, type(exc).__name__)
            continue
        keys.append(_Key(jwk_dict, first))
    return keys


class JWKSCache:
    """The signing keys of one issuer, fetched from ``jwks_uri`` and cached.

    ``jwks_uri`` is a URL, or an async callable returning one (for example
    one that reads it from the issuer's discovery document); it is called
    before every fetch, so it may cache on its own terms.
    """

    def __init__(
        self,
        http_client: AsyncHTTPClient,
        jwks_uri: JwksUri,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: float = DEFAULT_MIN_TTL,
        max_ttl: float = DEFAULT_MAX_TTL,
        default_ttl: float = DEFAULT_TTL,
        unknown_kid_cooldown: float = DEFAULT_UNKNOWN_KID_COOLDOWN,
        timeout: float = DEFAULT_TIMEOUT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ):
        self._http = http_client
        self._uri = jwks_uri
        self._clock = clock
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._default_ttl = default_ttl
        self._cooldown = unknown_kid_cooldown
        self._timeout = timeout
        self._retry = retry_interval
        self._keys: Optional[List[_Key]] = None
        self._by_kid: Dict[str, List[_Key]] = {}
        self._fresh_until = float("-inf")
        self._next_attempt = float("-inf")  # after a failure: no fetch before this
        self._last_forced = float("-inf")  # last refetch caused by an unknown kid
        self._inflight: Optional["asyncio.Task[bool]"] = None
        self._closed = False
        self.fetch_count = 0  # fetches started, for metrics and tests

    # -- state -------------------------------------------------------------

    def has_keys(self) -> bool:
        return self._keys is not None

    async def ready(self) -> bool:
        """True once a key set is held; tries one fetch (unless backing off) when none is."""
        if self._keys is None and not self._closed:
            if self._inflight is not None or self._clock() >= self._next_attempt:
                await self.refresh()
        return self._keys is not None

    async def start(self) -> None:
        """Begin fetching in the background, so the first token need not wait."""
        if self._keys is None and self._inflight is None and not self._closed:
            self._start_fetch()

    async def close(self) -> None:
        """Stop fetching; keys already held are still served."""
        self._closed = True
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # -- lookup ------------------------------------------------------------

    async def get_key(self, kid: Optional[str], alg: str) -> jwt.PyJWK:
        """The key to verify a token signed with ``alg`` whose header names ``kid``.

        Raises ``AuthError`` ("unknown signing key") when no key fits, and
        ``KeysUnavailable`` when no key set has ever been fetched.
        """
        fetched = False
        if self._keys is None:
            if self._closed or (self._inflight is None and self._clock() < self._next_attempt):
                raise KeysUnavailable()
            await self.refresh()
            fetched = True
            if self._keys is None:
                raise KeysUnavailable()
        elif self._clock() >= self._fresh_until:
            self._refresh_in_background()
        key = self._select(kid, alg)
        if key is not None:
            return key
        if not fetched and not self._closed:
            if self._inflight is not None:
                fetched = await self.refresh()
            else:
                now = self._clock()
                if now - self._last_forced >= self._cooldown:
                    self._last_forced = now
                    fetched = await self.refresh()
            if fetched:
                key = self._select(kid, alg)
                if key is not None:
                    return key
        raise AuthError("unknown signing key", "unknown_kid")

    def _select(self, kid: Optional[str], alg: str) -> Optional[jwt.PyJWK]:
        if kid is not None:
            for entry in self._by_kid.get(kid, ()):
                key = entry.for_alg(alg) if entry.fits(alg) else None
                if key is not None:
                    return key
            return None
        candidates = [entry for entry in self._keys or () if entry.fits(alg)]
        if len(candidates) != 1:
            # None, or several: without a kid we cannot tell which one was meant.
            return None
        return candidates[0].for_alg(alg)

    # -- fetching ----------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch in flight; True when it brought a usable set."""
        task = self._inflight
        if task is None:
            task = self._start_fetch()
        return await asyncio.shield(task)

    def _refresh_in_background(self) -> None:
        if self._inflight is None and not self._closed and self._clock() >= self._next_attempt:
            self._start_fetch()

    def _start_fetch(self) -> "asyncio.Task[bool]":
        self.fetch_count += 1
        task = asyncio.ensure_future(self._fetch())
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: "asyncio.Task[bool]") -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # _fetch handles its errors; this only marks it retrieved

    async def _fetch(self) -> bool:
        uri = self._uri if isinstance(self._uri, str) else ""
        try:
            if not isinstance(self._uri, str):
                uri = await self._uri()
            document, response = await fetch_json(
                self._http, uri, timeout=self._timeout, what="JWKS"
            )
            keys = parse_jwks(document)
            if not keys:
                raise DiscoveryError(f"JWKS from {safe_url(uri)} has no usable signing key")
        except asyncio.CancelledError:
            raise
        except DiscoveryError as exc:
            message = str(exc)
        except Exception as exc:
            where = safe_url(uri) if uri else "the issuer"
            message = f"fetching JWKS from {where} failed: {describe_fetch_error(exc, uri)}"
        else:
            ttl = cache_ttl(
                response.headers.get("Cache-Control"),
                default=self._default_ttl,
                min_ttl=self._min_ttl,
                max_ttl=self._max_ttl,
            )
            by_kid: Dict[str, List[_Key]] = {}
            for entry in keys:
                if entry.kid is not None:
                    by_kid.setdefault(entry.kid, []).append(entry)
            self._keys, self._by_kid = keys, by_kid
            self._fresh_until = self._clock() + ttl
            self._next_attempt = float("-inf")
            return True
        self._next_attempt = self._clock() + self._retry
        if self._keys is not None:
            log.warning("%s; keeping the last good key set", message)
        else:
            log.warning("%s; no signing keys yet", message)
        return False


class JWKSRegistry:
    """One ``JWKSCache`` per key set URI, shared by everything that verifies that issuer's tokens.

    Bearer-token verification (``tokens.TokenVerifier``) and ID-token
    validation (``oidc.OIDCClient``) of the same issuer ask for the same
    ``jwks_uri`` and so share one cache: one fetch, one unknown-kid cooldown,
    one backoff after a failure::

        registry = JWKSRegistry(AsyncHTTPClient(), unknown_kid_cooldown=30)
        cache = registry.get("https://idp.example.com/jwks")
        ...
        await registry.close()

    ``jwks_options`` are passed to every ``JWKSCache`` it creates (``clock``,
    ``min_ttl``, ``unknown_kid_cooldown``, ...). The URI is used exactly as
    given: two spellings of one URL are two caches.
    """

    def __init__(self, http_client: AsyncHTTPClient, **jwks_options: Any):
        self._http = http_client
        self._options = jwks_options
        self._caches: Dict[str, JWKSCache] = {}
        self._closed = False

    def get(self, uri: str) -> JWKSCache:
        """The cache for ``uri``, created on first use."""
        cache = self._caches.get(uri)
        if cache is None:
            cache = JWKSCache(self._http, uri, **self._options)
            if self._closed:
                cache._closed = True  # a late caller after close(): serve nothing, fetch nothing
            self._caches[uri] = cache
        return cache

    def __contains__(self, uri: object) -> bool:
        return uri in self._caches

    def __len__(self) -> int:
        return len(self._caches)

    async def close(self) -> None:
        """Stop every cache's fetching; keys already held are still served."""
        self._closed = True
        for cache in list(self._caches.values()):
            await cache.close()
