"""The gateway's own signing keys: the one place that signs, publishes and verifies its JWTs.

Tokens for scripts (``gateway.script_tokens``) and identity assertions to
upstreams (``gateway.assertions``) are signed here with ``signing.key``;
``previous_keys`` only verify and are published, so rotating (the old key
moves to ``previous_keys``) keeps earlier tokens valid until they expire. A
key's ``kid`` is its RFC 7638 thumbprint: stable across restarts and
instances, derived from the public key alone::

    ring = KeyRing.from_config(config.signing, issuer=public_url)
    token = ring.sign({"sub": "alice", "aud": "gateway", "iat": now, "exp": now + 300})
    claims = ring.verify(token, audience="gateway")      # AuthError when it is not ours or not valid
    ring.jwks()                                          # {"keys": [...]}: public keys only

Without ``signing.key`` an ephemeral P-256 key is made once per process tree
(``ephemeral_key``, called before workers are forked, so they share it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import exceptions as jwt_errors
from jwt.utils import base64url_encode

from .config import SigningConfig
from .models import AuthError, is_number

log = logging.getLogger("gateway.signing")

_EPHEMERAL: Optional[ec.EllipticCurvePrivateKey] = None
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_EC_CRV = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
LEEWAY = 30.0


def ephemeral_key() -> ec.EllipticCurvePrivateKey:
    """This process tree's stand-in key when ``signing.key`` is not set (made on first use)."""
    global _EPHEMERAL
    if _EPHEMERAL is None:
        _EPHEMERAL = ec.generate_private_key(ec.SECP256R1())
    return _EPHEMERAL


def uses_signing(config: Any) -> bool:
    """Does this config sign anything (tokens for scripts need login; assertions a route)?"""
    return bool(config.providers) or any(r.identity_assertion is not None for r in config.routes)


def prepare(config: Any) -> None:
    """Before workers fork: make the ephemeral key they will share, and say what it means."""
    if config.signing.key:
        return
    ephemeral_key()
    if uses_signing(config):
        log.warning("signing.key is not set: signing with an ephemeral P-256 key; the gateway's tokens and "
                    "identity assertions end with this process and no other instance accepts them "
                    "(set signing.key: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)")


def _b64(number: int) -> str:
    return base64url_encode(number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")).decode()


def public_jwk(public: Any) -> Dict[str, str]:
    """The members of a public key's JWK that RFC 7638 hashes (lexicographic order is applied later)."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        return {"kty": "EC", "crv": _EC_CRV[public.curve.name],
                "x": base64url_encode(numbers.x.to_bytes(size, "big")).decode(),
                "y": base64url_encode(numbers.y.to_bytes(size, "big")).decode()}
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _b64(numbers.n), "e": _b64(numbers.e)}
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": base64url_encode(raw).decode()}
    raise ValueError("unsupported key type")


def thumbprint(public: Any) -> str:
    """RFC 7638: SHA-256 of the required members as compact JSON with sorted keys, base64url."""
    members = json.dumps(public_jwk(public), sort_keys=True, separators=(",", ":")).encode()
    return base64url_encode(hashlib.sha256(members).digest()).decode()


def algorithm_of(public: Any) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _EC_ALGS[public.curve.name]
    if isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    return "EdDSA"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    public: Any
    private: Any = None  # None: a previous key that only verifies

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, private={self.private is not None})"


def load_key(pem: str) -> SigningKey:
    """A key from PEM (checked by the config rules already: RSA >= 2048, EC P-256/384/521, Ed25519)."""
    data = pem.encode()
    private: Any = None
    if b"PRIVATE KEY-----" in data:
        private = serialization.load_pem_private_key(data, password=None)
        public = private.public_key()
    else:
        public = serialization.load_pem_public_key(data)
    return SigningKey(thumbprint(public), algorithm_of(public), public, private)


class KeyRing:
    """The current signing key and the previous ones, by kid."""

    def __init__(self, current: SigningKey, previous: Tuple[SigningKey, ...] = (), *, issuer: str,
                 clock: Callable[[], float] = time.time):
        assert current.private is not None
        self.current = current
        self.issuer = issuer
        self.clock = clock
        self.keys: Dict[str, SigningKey] = {current.kid: current}
        for key in previous:
            self.keys.setdefault(key.kid, SigningKey(key.kid, key.alg, key.public))  # previous keys never sign
        self.ephemeral = False

    @classmethod
    def from_config(cls, config: SigningConfig, *, issuer: str, clock: Callable[[], float] = time.time) -> "KeyRing":
        if config.key:
            current = load_key(config.key)
            ephemeral = False
        else:
            private = ephemeral_key()
            current = SigningKey(thumbprint(private.public_key()), "ES256", private.public_key(), private)
            ephemeral = True
        ring = cls(current, tuple(load_key(pem) for pem in config.previous_keys), issuer=issuer, clock=clock)
        ring.ephemeral = ephemeral
        return ring

    def sign(self, claims: Mapping[str, Any], *, typ: str = "JWT") -> str:
        key = self.current
        return jwt.encode(dict(claims), key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})

    def jwks(self) -> Dict[str, Any]:
        """Every key's public half (current first), for ``GET /oauth2/jwks``."""
        ordered = [self.current] + [k for k in self.keys.values() if k.kid != self.current.kid]
        return {"keys": [{**public_jwk(k.public), "kid": k.kid, "alg": k.alg, "use": "sig"} for k in ordered]}

    def verify(self, raw: str, *, audience: str) -> Dict[str, Any]:
        """The claims of a token this gateway signed for ``audience``; ``AuthError`` otherwise.

        The key is picked by ``kid`` among our own keys only, with the one
        algorithm that key signs with: a token can choose neither.
        """
        try:
            header = jwt.get_unverified_header(raw)
        except Exception:
            raise AuthError("malformed token", "malformed") from None
        key = self.keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
        if key is None:
            raise AuthError("token signed by an unknown key", "unknown_key")
        try:
            claims = jwt.decode(raw, key.public, algorithms=[key.alg], audience=audience, issuer=self.issuer,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt_errors.InvalidAudienceError:
            raise AuthError("invalid audience", "bad_audience") from None
        except jwt_errors.InvalidSignatureError:
            raise AuthError("invalid signature", "bad_signature") from None
        except jwt_errors.InvalidAlgorithmError:
            raise AuthError("algorithm not allowed", "bad_algorithm") from None
        except Exception:
            raise AuthError("malformed token", "malformed") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"] or not is_number(claims.get("exp")):
            raise AuthError("malformed token", "malformed")
        if claims["exp"] <= self.clock() - LEEWAY:
            raise AuthError("token expired", "expired")
        if is_number(claims.get("iat")) and claims["iat"] > self.clock() + LEEWAY:
            raise AuthError("token issued in the future", "issued_in_future")
        return claims
