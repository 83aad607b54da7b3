"""Test helpers: signing keys and a loopback issuer serving discovery and JWKS.

``FakeIdP`` is a real tornado ``HTTPServer`` on 127.0.0.1 (``bind_unused_port``)
that counts the requests it receives, so tests can assert exactly how many
fetches the gateway made. Nothing here mocks ``AsyncHTTPClient``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
from typing import Any, Dict, List, Optional

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from tests.support.tokens import HMAC_SECRET, NOW, make_token

__all__ = ["HMAC_SECRET", "NOW", "FakeIdP", "SigningKey"]



@functools.lru_cache(maxsize=None)
def _private_key(kind: str, index: int) -> Any:
    """Generated once per (kind, index) per test run: RSA key generation is slow."""
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


_KIND = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class SigningKey:
    """A private key that signs tokens, and its public JWK (with ``kid``)."""

    def __init__(self, alg: str = "RS256", kid: Optional[str] = "key-1", *, index: int = 0, jwk_alg: bool = False):
        self.alg = alg
        self.kid = kid
        self.private = _private_key(_KIND[alg[:2]], index)
        self.public = self.private.public_key()
        jwk = jwt.get_algorithm_by_name(alg).to_jwk(self.public, as_dict=True)
        if kid is not None:
            jwk["kid"] = kid
        if jwk_alg:
            jwk["alg"] = alg
        self.jwk: Dict[str, Any] = jwk

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, claims: Dict[str, Any], *, alg: Optional[str] = None, headers: Optional[Dict[str, Any]] = None) -> str:
        all_headers: Dict[str, Any] = {}
        if self.kid is not None:
            all_headers["kid"] = self.kid
        all_headers.update(headers or {})
        return make_token(claims, self.private, alg=alg or self.alg, headers=all_headers)


class _Counting(RequestHandler):
    def initialize(self, idp: "FakeIdP") -> None:
        self.idp = idp

    async def get(self) -> None:
        self.idp.requests[self.request.path] += 1
        if self.idp.delay:
            await asyncio.sleep(self.idp.delay)
        self.respond()

    def respond(self) -> None:
        raise NotImplementedError


class _DiscoveryHandler(_Counting):
    def respond(self) -> None:
        if self.idp.discovery_body is not None:
            self.set_header("Content-Type", "application/json")
            self.finish(self.idp.discovery_body)
            return
        issuer = self.idp.issuer if self.idp.discovery_issuer is None else self.idp.discovery_issuer
        self.finish({"issuer": issuer, "jwks_uri": self.idp.jwks_url})


class _JWKSHandler(_Counting):
    def respond(self) -> None:
        self.set_status(self.idp.jwks_status)
        if self.idp.cache_control is not None:
            self.set_header("Cache-Control", self.idp.cache_control)
        self.set_header("Content-Type", "application/json")
        if self.idp.jwks_body is not None:
            self.finish(self.idp.jwks_body)
        else:
            self.finish(json.dumps({"keys": [k.jwk for k in self.idp.keys] + self.idp.extra_jwks}))


class FakeIdP:
    """Discovery at ``/.well-known/openid-configuration``, keys at ``/jwks``.

    Set ``keys`` (``SigningKey``s), ``jwks_status``, ``cache_control``,
    ``delay``, ``discovery_issuer``, or raw ``jwks_body``/``discovery_body``
    to shape the answers; ``requests[path]`` counts what was asked.
    """

    def __init__(self, keys: Optional[List[SigningKey]] = None, *, jwks_query: str = ""):
        self.sock, self.port = bind_unused_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_url = f"{self.issuer}/jwks{jwks_query}"
        self.keys: List[SigningKey] = list(keys or [])
        self.extra_jwks: List[Dict[str, Any]] = []
        self.jwks_status = 200
        self.cache_control: Optional[str] = None
        self.delay = 0.0
        self.discovery_issuer: Optional[str] = None
        self.discovery_body: Optional[str] = None
        self.jwks_body: Optional[str] = None
        self.requests: collections.Counter = collections.Counter()
        app = Application(
            [
                ("/.well-known/openid-configuration", _DiscoveryHandler, {"idp": self}),
                ("/jwks", _JWKSHandler, {"idp": self}),
            ]
        )
        self.server = HTTPServer(app)
        self.server.add_sockets([self.sock])
        self.stopped = False

    @property
    def jwks_fetches(self) -> int:
        return self.requests["/jwks"]

    @property
    def discovery_fetches(self) -> int:
        return self.requests["/.well-known/openid-configuration"]

    def stop(self) -> None:
        """Stop listening: later connections are refused."""
        if not self.stopped:
            self.stopped = True
            self.server.stop()

    async def close(self) -> None:
        self.stop()
        await self.server.close_all_connections()
