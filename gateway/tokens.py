"""Bearer tokens: read the Authorization header and verify the JWT it carries.

Runs in ``authn`` for every request that sends ``Authorization: Bearer ...``,
before the policy check. A verified token becomes an ``Identity``; anything
else is an ``AuthError`` whose ``description`` may be shown to the client
(RFC 6750 ``error_description``) and whose ``reason`` labels logs and metrics::

    verifier = TokenVerifier(config.tokens, AsyncHTTPClient())
    raw = bearer_from_header(request.headers.get("Authorization"))
    identity = await verifier.verify(raw)

The verification order is fixed, cheapest and most telling first: size,
header syntax, ``alg: none``, the issuer named by the (still unverified)
``iss`` claim, that issuer's algorithm allowlist, the key, the signature
(PyJWT's algorithm objects with keys prepared once; jwt.decode itself only
for tokens using the ``crit``/``b64`` extensions), the claims jwt.decode
would check (``iss``, ``aud``, ``sub``, ``jti``), then ``exp``/``nbf``/``iat``
against the injected clock.

Keys come only from configuration: an HMAC ``secret``, a PEM ``public_key``,
a ``jwks_uri``, or the ``jwks_uri`` of the issuer's discovery document. The
``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are never used or fetched. HMAC
algorithms are accepted only from issuers configured with a secret and
asymmetric ones only from issuers without: a public key can never be
misused as an HMAC secret (algorithm confusion).

Verified tokens are remembered in a bounded LRU until their ``exp``, so a
repeated token costs one dict lookup and one clock comparison. Failures are
not remembered: refusing is cheap for everything but a bad signature, and a
negative cache would give anyone who can send garbage a way to fill memory.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections import OrderedDict
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import exceptions as jwt_errors
from tornado.httpclient import AsyncHTTPClient

from .config import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, SUPPORTED_ALGORITHMS, TokenIssuerConfig
from .discovery import DiscoveryCache, DiscoveryError
from .jwks import DEFAULT_RETRY_INTERVAL, EC_CURVES, RSA_ALGORITHMS, JWKSCache, JWKSRegistry, KeysUnavailable
from . import claims
from .models import AuthError, Identity, is_number

log = logging.getLogger("gateway.tokens")

DEFAULT_CACHE_SIZE = 10000
DEFAULT_MAX_TOKEN_LENGTH = 8192

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_WHITESPACE = re.compile(r"[ \t]")
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


def _segment(segment: bytes) -> bytes:
    """One compact-JWS segment, decoded as strictly as PyJWT does (canonical base64url, at most
    two '=') but by one regex instead of a Python loop over every character."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1 or not _BASE64URL.fullmatch(stripped):
        raise ValueError("not canonical base64url")
    decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise ValueError("not canonical base64url")
    return decoded


def split_compact(raw: str) -> Tuple[Dict[str, Any], bytes, bytes, bytes]:
    """A compact JWS as (header, payload, signing input, signature), decoded and checked once.

    Refuses (``ValueError``) what ``jwt.get_unverified_header`` refuses, at a fraction of its cost:
    it is on every cache miss, and the signature check reuses what it decoded.
    """
    encoded = raw.encode("utf-8")
    header_segment, payload_segment, signature_segment = encoded.split(b".")
    header = json.loads(_segment(header_segment))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    if header.get("b64", True) is not False:
        payload = _segment(payload_segment)
    elif payload_segment:
        raise ValueError("a detached payload's segment must be empty")
    else:
        payload = b""
    signature = _segment(signature_segment)
    if "kid" in header and not isinstance(header["kid"], str):
        raise ValueError("kid is not a string")
    if "crit" in header:
        jwt.get_unverified_header(raw)  # rare: PyJWT's own checks of the critical extensions
    return header, payload, encoded[: len(header_segment) + 1 + len(payload_segment)], signature


def unverified_header(raw: str) -> Dict[str, Any]:
    """The JOSE header, refusing what ``jwt.get_unverified_header`` refuses."""
    return split_compact(raw)[0]


# One algorithm object per name: the signature check of a cache miss calls its verify() with a
# key prepared once, instead of jwt.decode's per-call lookups, option merging and warnings.
_ALGORITHMS = {name: jwt.get_algorithm_by_name(name) for name in SUPPORTED_ALGORITHMS}


_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "secp256k1"}


def _error(description: str, reason: str) -> AuthError:
    return AuthError(description, reason)


def bearer_from_header(value: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750, section 2.1).

    * no header, an empty one, or another scheme (``Basic ...``): ``None``;
    * scheme ``Bearer`` in any case, one or more spaces, then exactly one
      b64token (letters, digits, ``-._~+/``, then optional ``=`` padding):
      the token; surrounding whitespace is ignored;
    * scheme ``Bearer`` with anything else (no token, two tokens, a tab as
      the separator, a comma, characters outside b64token):
      ``AuthError("malformed Authorization header", "malformed")`` — a
      client that tried to send a token is told it failed rather than
      treated as anonymous.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    if not value:
        return None
    match = _WHITESPACE.search(value)
    scheme = value[: match.start()] if match else value
    if not scheme.isascii() or scheme.lower() != "bearer":
        return None
    rest = value[len(scheme) :]
    token = rest.lstrip(" ")
    if not rest.startswith(" ") or _B64TOKEN.fullmatch(token) is None:
        raise _error("malformed Authorization header", "malformed")
    return token


def _load_public_key(pem: str) -> Any:
    data = pem.strip().encode("ascii", "replace")
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def _alg_fits_public_key(alg: str, key: Any) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return alg in RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_CURVES.get(alg) == _CURVE_NAMES.get(key.curve.name)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return alg == "EdDSA"
    return False


class _Issuer:
    """One configured issuer, with everything verification needs precomputed."""

    __slots__ = ("config", "name", "algorithms", "audience", "static_key", "jwks", "options", "prepared")

    def __init__(self, config: TokenIssuerConfig):
        self.config = config
        self.name = config.issuer
        self.audience: Optional[List[str]] = list(config.audience) if config.audience is not None else None
        self.static_key: Any = None
        self.jwks: Optional[Any] = None  # a JWKSCache, or a _SharedKeys from a JWKSRegistry
        if config.secret:
            self.algorithms = frozenset(config.algorithms) & HMAC_ALGORITHMS
            self.static_key = config.secret.encode("utf-8")
        else:
            self.algorithms = frozenset(config.algorithms) & ASYMMETRIC_ALGORITHMS
            if config.public_key:
                self.static_key = _load_public_key(config.public_key)
                self.algorithms = frozenset(
                    a for a in self.algorithms if _alg_fits_public_key(a, self.static_key)
                )
        require = ["exp", "iss"] + (["aud"] if self.audience is not None else [])
        # exp/nbf/iat are checked by TokenVerifier against its own (injectable) clock.
        self.options = {
            "require": require,
            "verify_aud": self.audience is not None,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }
        # alg -> (algorithm, the static key prepared for it, or None when it cannot verify that alg)
        self.prepared: Dict[str, Tuple[Any, Any]] = {}
        if self.static_key is not None:
            for alg in self.algorithms:
                algorithm = _ALGORITHMS[alg]
                try:
                    self.prepared[alg] = (algorithm, algorithm.prepare_key(self.static_key))
                except jwt_errors.InvalidKeyError:
                    self.prepared[alg] = (algorithm, None)



class _SharedKeys:
    """An issuer's keys held in a shared ``JWKSRegistry``, found by URI.

    The URI is either configured (``jwks_uri``) or read from the issuer's
    discovery document before every lookup (the discovery cache makes that a
    dict lookup), so a provider that moves its key set is followed. The
    registry owns the caches: ``close`` stops only what this object started.
    After a failed discovery, lookups fail fast (``KeysUnavailable``) for
    ``retry_interval`` seconds instead of refetching for every token.
    """

    def __init__(
        self,
        registry: JWKSRegistry,
        issuer: str,
        uri: Optional[str],
        resolve: Optional[Callable[[], Awaitable[str]]],
        *,
        monotonic: Callable[[], float],
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ):
        self._registry = registry
        self._issuer = issuer
        self._uri = uri
        self._resolve = resolve
        self._clock = monotonic
        self._retry = retry_interval
        self._next_attempt = float("-inf")
        self._starting: Optional["asyncio.Task[None]"] = None

    async def cache(self) -> JWKSCache:
        """The shared cache; raises ``DiscoveryError`` when the URI cannot be found."""
        if self._uri is not None:
            return self._registry.get(self._uri)
        assert self._resolve is not None
        if self._clock() < self._next_attempt:
            raise DiscoveryError(f"discovery of {self._issuer!r} failed recently")
        try:
            uri = await self._resolve()
        except DiscoveryError:
            self._next_attempt = self._clock() + self._retry
            raise
        return self._registry.get(uri)

    async def get_key(self, kid: Optional[str], alg: str) -> Any:
        try:
            cache = await self.cache()
        except DiscoveryError as exc:
            log.warning("issuer %r: %s; no signing keys", self._issuer, exc)
            raise KeysUnavailable() from None
        return await cache.get_key(kid, alg)

    async def start(self) -> None:
        if self._uri is not None:
            await self._registry.get(self._uri).start()
        elif self._starting is None:
            self._starting = asyncio.ensure_future(self._start_discovered())

    async def _start_discovered(self) -> None:
        try:
            cache = await self.cache()
        except DiscoveryError as exc:
            log.warning("issuer %r: %s; no signing keys yet", self._issuer, exc)
            return
        await cache.start()

    async def ready(self) -> bool:
        try:
            cache = await self.cache()
        except DiscoveryError:
            return False
        return await cache.ready()

    async def close(self) -> None:
        task, self._starting = self._starting, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


class TokenVerifier:
    """Verifies bearer JWTs from the configured issuers and remembers the good ones.

    ``clock`` is wall-clock time for ``exp``/``nbf``/``iat``; ``monotonic``
    paces the JWKS and discovery caches. ``discovery`` may be shared with
    the login code; one is made from ``http_client`` otherwise. With a
    ``jwks_registry`` the key caches come from it (shared with ID-token
    validation of the same issuer, keyed by key set URI; ``jwks_options``
    are then the registry's business); without one each issuer gets its own.
    """

    def __init__(
        self,
        issuers: Sequence[TokenIssuerConfig],
        http_client: AsyncHTTPClient,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: Optional[int] = None,
        max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH,
        discovery: Optional[DiscoveryCache] = None,
        jwks_options: Optional[Dict[str, Any]] = None,
        jwks_registry: Optional[JWKSRegistry] = None,
        own: Optional[Tuple[str, Callable[[str], Identity]]] = None,
    ):
        # ``own``: (the gateway's issuer, a function verifying its own tokens) from gateway.signing.
        self._own = own
        # Each issuer's settings were checked by the config rules (gateway.config.rules.tokens).
        names = [cfg.issuer for cfg in issuers]
        problems = [f"token issuer {n!r} is configured twice" for n in sorted(set(names)) if names.count(n) > 1]
        if problems:
            raise ValueError("; ".join(problems))
        self._clock = clock
        # tokens[].cache_size of every issuer: one LRU as large as their sum (the default when none is set)
        if cache_size is None:
            cache_size = sum(cfg.cache_size for cfg in issuers) if issuers else DEFAULT_CACHE_SIZE
        self._cache_size = cache_size
        self._max_length = max_token_length
        self._cache: "OrderedDict[str, Tuple[float, Identity]]" = OrderedDict()
        self._discovery = discovery
        self._issuers: Dict[str, _Issuer] = {}
        self._jwks: List[Any] = []  # JWKSCache or _SharedKeys
        for cfg in issuers:
            issuer = _Issuer(cfg)
            if issuer.static_key is None:
                uri: Any = cfg.jwks_uri
                if not uri:
                    if self._discovery is None:
                        self._discovery = DiscoveryCache(http_client, clock=monotonic)
                    uri = self._discovered_jwks_uri(cfg.issuer)
                if jwks_registry is not None:
                    issuer.jwks = _SharedKeys(
                        jwks_registry,
                        cfg.issuer,
                        uri if isinstance(uri, str) else None,
                        None if isinstance(uri, str) else uri,
                        monotonic=monotonic,
                    )
                else:
                    issuer.jwks = JWKSCache(http_client, uri, clock=monotonic, **(jwks_options or {}))
                self._jwks.append(issuer.jwks)
            self._issuers[cfg.issuer] = issuer

    def _discovered_jwks_uri(self, issuer: str) -> Callable[[], Any]:
        async def jwks_uri() -> str:
            assert self._discovery is not None
            document = await self._discovery.get(issuer)
            uri = document.get("jwks_uri")
            if not isinstance(uri, str) or not uri:
                raise DiscoveryError(f"discovery document of {issuer!r} has no jwks_uri")
            return uri

        return jwks_uri

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start fetching discovery documents and key sets in the background."""
        for cache in self._jwks:
            await cache.start()

    async def ready(self) -> bool:
        """True when every issuer has keys (static keys always do)."""
        if not self._jwks:
            return True
        results = await asyncio.gather(*(cache.ready() for cache in self._jwks))
        return all(results)

    async def close(self) -> None:
        for cache in self._jwks:
            await cache.close()
        self._cache.clear()

    # -- verification ----------------------------------------------------------

    def verify_cached(self, raw: str) -> Optional[Identity]:
        """The identity of a token verified before and not yet expired, else None.

        Synchronous: handlers may try it before awaiting ``verify``.
        """
        entry = self._cache.get(raw)
        if entry is not None and self._clock() < entry[0]:
            self._cache.move_to_end(raw)
            return entry[1]
        return None

    async def verify(self, raw: str) -> Identity:
        if len(raw) > self._max_length:
            raise _error("token too large", "too_large")
        entry = self._cache.get(raw)
        if entry is not None:
            if self._clock() < entry[0]:
                self._cache.move_to_end(raw)
                return entry[1]
            self._cache.pop(raw, None)
        return await self._verify_uncached(raw)

    async def _verify_uncached(self, raw: str) -> Identity:
        if not isinstance(raw, str):
            raise _error("malformed token", "malformed")
        try:
            header, payload_bytes, signing_input, signature = split_compact(raw)
        except Exception:
            raise _error("malformed token", "malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise _error("malformed token", "malformed")
        if alg.lower() == "none":
            raise _error("algorithm not allowed", "bad_algorithm")
        unverified = self._unverified_claims(payload_bytes)
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _error("token has no iss", "malformed")
        if self._own is not None and iss == self._own[0] and iss not in self._issuers:
            identity = self._own[1](raw)  # the gateway's own keys only, by kid; raises AuthError
            self._cache[raw] = (identity.expires_at or 0.0, identity)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return identity
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise _error("unknown issuer", "unknown_issuer")
        if alg not in issuer.algorithms:
            raise _error("algorithm not allowed", "bad_algorithm")
        if "nonce" in unverified or "at_hash" in unverified:
            # An ID token proves a sign-in to its client; it is no access token (RFC 8725 3.11, RFC 9068 4).
            raise _error("an ID token is not an access token", "id_token")
        wanted = issuer.config.require_typ
        if wanted and not _typ_is(header.get("typ"), wanted):
            raise _error(f"token typ must be {wanted}", "bad_typ")

        if issuer.jwks is not None:
            # Only the kid is read from the header; jku/x5u/jwk/x5c are ignored.
            kid = header.get("kid")
            key: Any = await issuer.jwks.get_key(kid, alg)
        else:
            key = issuer.static_key
        if "crit" in header or "b64" in header:
            payload = self._decode(raw, key, alg, issuer)  # JWS extensions: PyJWT's rules for them
        else:
            _check_signature(signing_input, signature, key, alg, issuer)
            payload = unverified  # now verified: it is the signed payload
            _check_claims(payload, issuer)

        now = self._clock()
        leeway = issuer.config.leeway
        exp = payload["exp"]
        if not is_number(exp):
            raise _error("malformed token", "malformed")
        if exp <= now - leeway:
            raise _error("token expired", "expired")
        nbf = payload.get("nbf")
        if nbf is not None:
            if not is_number(nbf):
                raise _error("malformed token", "malformed")
            if nbf > now + leeway:
                raise _error("token not yet valid", "not_yet_valid")
        iat = payload.get("iat")
        if iat is not None:
            if not is_number(iat):
                raise _error("malformed token", "malformed")
            if iat > now + leeway:
                raise _error("token issued in the future", "issued_in_future")

        identity = self._identity(payload, issuer)
        if exp > now:
            self._cache[raw] = (float(exp), identity)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    @staticmethod
    def _unverified_claims(payload: bytes) -> Dict[str, Any]:
        """The payload, before any check: used only to pick the issuer."""
        try:
            claims_ = json.loads(payload)
        except (ValueError, TypeError, RecursionError):
            raise _error("malformed token", "malformed") from None
        if not isinstance(claims_, dict):
            raise _error("malformed token", "malformed")
        return claims_

    @staticmethod
    def _decode(raw: str, key: Any, alg: str, issuer: _Issuer) -> Dict[str, Any]:
        try:
            return jwt.decode(
                raw,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.name,
                options=issuer.options,  # type: ignore[arg-type]
            )
        except jwt_errors.InvalidSignatureError:
            raise _error("invalid signature", "bad_signature") from None
        except jwt_errors.InvalidAudienceError:
            raise _error("invalid audience", "bad_audience") from None
        except jwt_errors.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise _error("invalid audience", "bad_audience") from None
            raise _error(f"token has no {exc.claim}", "malformed") from None
        except jwt_errors.InvalidIssuerError:
            raise _error("unknown issuer", "unknown_issuer") from None
        except jwt_errors.InvalidAlgorithmError:
            raise _error("algorithm not allowed", "bad_algorithm") from None
        except jwt_errors.InvalidSubjectError:
            raise _error("token has no sub", "malformed") from None
        except jwt_errors.InvalidKeyError:
            log.warning("issuer %r: its key cannot verify %s tokens", issuer.name, alg)
            raise _error("invalid signature", "bad_key") from None
        except Exception:
            raise _error("malformed token", "malformed") from None

    @staticmethod
    def _identity(payload: Dict[str, Any], issuer: _Issuer) -> Identity:
        return identity_from_claims(payload, issuer.config)


def _check_signature(signing_input: bytes, signature: bytes, key: Any, alg: str, issuer: _Issuer) -> None:
    """The signature over ``signing_input``, with a key prepared beforehand (a PyJWK, or the issuer's own)."""
    if isinstance(key, jwt.PyJWK):
        if alg != key.algorithm_name:  # a key is bound to one algorithm: the token cannot pick another
            raise _error("algorithm not allowed", "bad_algorithm")
        algorithm, prepared = key.Algorithm, key.key
    else:
        algorithm, prepared = issuer.prepared[alg]
        if prepared is None:
            log.warning("issuer %r: its key cannot verify %s tokens", issuer.name, alg)
            raise _error("invalid signature", "bad_key")
    try:
        valid = algorithm.verify(signing_input, prepared, signature)
    except Exception:
        raise _error("malformed token", "malformed") from None
    if not valid:
        raise _error("invalid signature", "bad_signature")


def _check_claims(payload: Dict[str, Any], issuer: _Issuer) -> None:
    """The claim checks jwt.decode makes with the issuer's options, in its order, in one pass.

    exp, nbf and iat are the caller's (against the injected clock).
    """
    for name in issuer.options["require"]:
        if payload.get(name) is None:
            if name == "aud":
                raise _error("invalid audience", "bad_audience")
            raise _error(f"token has no {name}", "malformed")
    if payload["iss"] != issuer.name:
        raise _error("unknown issuer", "unknown_issuer")
    if issuer.audience is not None:
        audiences = payload["aud"]
        if isinstance(audiences, str):
            audiences = [audiences]
        if not audiences or not isinstance(audiences, list) or any(not isinstance(a, str) for a in audiences) \
                or all(a not in audiences for a in issuer.audience):
            raise _error("invalid audience", "bad_audience")
    if "sub" in payload and not isinstance(payload["sub"], str):
        raise _error("token has no sub", "malformed")
    if "jti" in payload and not isinstance(payload["jti"], str):
        raise _error("malformed token", "malformed")


def _typ_is(found: Any, wanted: str) -> bool:
    """JOSE ``typ`` comparison: case-insensitive, ``application/`` optional (RFC 7515 4.1.9)."""
    if not isinstance(found, str):
        return False
    def bare(text: str) -> str:
        text = text.lower()
        return text[len("application/"):] if text.startswith("application/") else text
    return bare(found) == bare(wanted)


def identity_from_claims(payload: Dict[str, Any], cfg: TokenIssuerConfig) -> Identity:
    """The identity a verified token's claims give, read with its issuer's claim names."""
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _error("token has no sub", "malformed")
    email = claims.string(claims.claim(payload, cfg.email_claim))
    if email is not None and claims.email_verified(payload.get("email_verified")) is False \
            and not cfg.allow_unverified_email:
        email = None  # an unverified email is no identity: not forwarded, matched by no email rule
    exp = payload.get("exp")
    return Identity(
        sub=sub,
        email=email,
        groups=claims.groups(claims.claim(payload, cfg.groups_claim)),
        preferred_username=claims.string(claims.claim(payload, cfg.username_claim)),
        issuer=cfg.issuer,
        claims=MappingProxyType(payload),
        source="token",
        expires_at=float(exp) if is_number(exp) else None,
    )
