"""OpenID Connect relying party: the protocol half of browser login, free of Tornado handlers.

Sits under ``login`` in the request path: ``login`` keeps the state, nonce and
PKCE verifier of a pending login in its cookie and calls this module for
everything that talks to the provider. One ``OIDCClient`` per configured
provider; all HTTP goes through the injected ``AsyncHTTPClient``::

    client = OIDCClient(provider, http, redirect_uri=public_url + "/oauth2/callback",
                        discovery=DiscoveryCache(http), jwks=JWKSRegistry(http))
    verifier, challenge = new_pkce()
    url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
    # ... the browser comes back to the callback with code, state and iss ...
    client.check_authorization_response_iss(iss, await client.metadata())
    tokens = await client.exchange_code(code, verifier)
    id_claims = await client.validate_id_token(tokens.id_token, nonce=nonce,
                                               access_token=tokens.access_token)
    user = await client.user_claims(id_claims, tokens.access_token)

What it enforces, so callers need not: PKCE S256 only; the RFC 9207 ``iss``
authorization response parameter; client authentication by
``client_secret_basic`` (form-encoded id and secret, RFC 6749 2.3.1) or
``client_secret_post``, whichever the provider advertises; ID tokens signed
with an asymmetric algorithm the provider advertises (never ``none``, never
HMAC), keys only from the discovered ``jwks_uri`` (shared with bearer-token
verification through ``JWKSRegistry``; ``jku``/``x5u``/``jwk``/``x5c``
headers are ignored), exact ``iss``, ``aud``/``azp``, ``exp``/``iat``,
``nonce`` and ``at_hash``; a userinfo ``sub`` equal to the ID token's.

Errors are ``OIDCError`` (``InvalidGrant``, ``ProviderUnavailable``): the
``reason`` is a short label for logs and metrics, the ``description`` may be
shown on a page. Neither ever contains a token, a code, a secret or a query
string, and neither do the log lines of logger ``gateway.oidc``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import jwt
from jwt import exceptions as jwt_errors
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from .config import ASYMMETRIC_ALGORITHMS, ProviderConfig
from . import claims
from .discovery import DiscoveryCache, DiscoveryError, describe_fetch_error
from .redact import safe_url
from .jwks import JWKSRegistry, KeysUnavailable
from .models import AuthError, is_number

log = logging.getLogger("gateway.oidc")

DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_LEEWAY = 30.0
DEFAULT_ID_TOKEN_ALGS = ("RS256",)  # OpenID Connect Core 1.0, section 15.1: the one every provider supports
READY_WAIT = 2.0  # ready() waits this long for a first discovery fetch, which goes on in the background
READY_RETRY = 5.0  # after a failed discovery, ready() does not try again for this long
MAX_RESPONSE_BYTES = 1 << 20
MAX_ID_TOKEN_LENGTH = 64 * 1024

# The subset of claims a session keeps (UserClaims.claims): small and JSON-able.
KEPT_CLAIMS = ("iss", "sub", "email", "email_verified", "name", "preferred_username", "groups",
               "exp", "iat", "auth_time", "sid", "acr", "amr")
_MAX_CLAIM_STRING = 512
_MAX_CLAIM_LIST = 200

_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}

UNAVAILABLE_TEXT = "The identity provider could not be reached. Try again in a moment."
REFUSED_TEXT = "The identity provider refused the sign-in. Try logging in again."


class OIDCError(Exception):
    """The provider's answer cannot be used.

    ``description`` is safe for a user's page (and is ``str(exc)``);
    ``reason`` is a short label for logs and metrics.
    """

    def __init__(self, description: str, reason: str = "oidc_error"):
        super().__init__(description)
        self.description = description
        self.reason = reason


class InvalidGrant(OIDCError):
    """The provider refused a code or refresh token with ``invalid_grant``: start over."""

    def __init__(self, description: str = "The sign-in has expired or was already used. Try logging in again.",
                 reason: str = "invalid_grant"):
        super().__init__(description, reason)


class ProviderUnavailable(OIDCError):
    """Discovery, token, key or userinfo endpoint unreachable, timing out or answering 5xx."""

    def __init__(self, description: str = UNAVAILABLE_TEXT, reason: str = "provider_unavailable"):
        super().__init__(description, reason)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_pkce() -> Tuple[str, str]:
    """A PKCE pair (RFC 7636): a 64-character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def random_token(nbytes: int = 32) -> str:
    """An unguessable URL-safe string (state, nonce, session ids)."""
    return secrets.token_urlsafe(nbytes)


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint's answer. ``expires_at`` is unix time (from ``expires_in``), if given."""

    access_token: Optional[str]
    id_token: Optional[str]
    refresh_token: Optional[str]
    expires_at: Optional[float]
    token_type: str
    scope: Optional[str]

    def __repr__(self) -> str:  # never print tokens, not even in a traceback or a debugger
        return (f"TokenSet(access_token={'***' if self.access_token else None}, "
                f"id_token={'***' if self.id_token else None}, "
                f"refresh_token={'***' if self.refresh_token else None}, "
                f"expires_at={self.expires_at!r}, token_type={self.token_type!r}, scope={self.scope!r})")


@dataclass(frozen=True)
class UserClaims:
    """Who signed in: what policy and the identity headers need, plus a small claims subset."""

    sub: str
    email: Optional[str]
    groups: Tuple[str, ...]
    preferred_username: Optional[str]
    claims: dict


def _with_query(url: str, params: Dict[str, str]) -> str:
    """``url`` with ``params`` added; its own query is kept, except the keys we set."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode(kept + list(params.items()), quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _redact(text: Any, sensitive: Iterable[Optional[str]]) -> str:
    """Printable, short, and without any of ``sensitive``: fit for a log line."""
    if not isinstance(text, str):
        return ""
    for value in sensitive:
        if value:
            text = text.replace(value, "[redacted]")
    return _UNPRINTABLE.sub("?", text)[:200]


def _kept_value(value: Any) -> Any:
    """``value`` if it is small and JSON-able (a session may keep it), else None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_CLAIM_STRING else None
    if is_number(value):
        return value
    if isinstance(value, (list, tuple)):
        items = [v for v in value if isinstance(v, str) and len(v) <= _MAX_CLAIM_STRING]
        return items[:_MAX_CLAIM_LIST]
    return None


class OIDCClient:
    """The relying party for one configured provider (authorization-code flow with PKCE)."""

    def __init__(
        self,
        config: ProviderConfig,
        http_client: AsyncHTTPClient,
        *,
        redirect_uri: str,
        discovery: DiscoveryCache,
        jwks: JWKSRegistry,
        clock: Callable[[], float] = time.time,
        leeway: float = DEFAULT_LEEWAY,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
    ):
        self.config = config
        self.name = config.name
        self.issuer = config.issuer
        self.redirect_uri = redirect_uri
        self._http = http_client
        self._discovery = discovery
        self._jwks = jwks
        self._clock = clock
        self._leeway = leeway
        self._timeout = timeout
        self._ready_retry_at = float("-inf")

    def __repr__(self) -> str:
        return f"OIDCClient({self.name!r}, issuer={self.issuer!r})"

    # -- discovery -------------------------------------------------------------

    async def metadata(self) -> Dict[str, Any]:
        """The provider's discovery document (cached by ``DiscoveryCache``)."""
        try:
            return await self._discovery.get(self.issuer)
        except DiscoveryError as exc:
            log.warning("provider %s: %s", self.name, exc)
            raise ProviderUnavailable(reason="discovery_failed") from None

    async def ready(self) -> bool:
        """True once the discovery document has been fetched.

        When it has not, one fetch is started (at most every ``READY_RETRY``
        seconds) and waited for up to ``READY_WAIT`` seconds; a slower one
        goes on in the background, so a readiness probe never hangs.
        """
        if self._discovery.has(self.issuer):
            return True
        if time.monotonic() < self._ready_retry_at:
            return False
        try:
            await asyncio.wait_for(self._discovery.get(self.issuer), READY_WAIT)
        except asyncio.TimeoutError:
            return False
        except DiscoveryError as exc:
            self._ready_retry_at = time.monotonic() + READY_RETRY
            log.warning("provider %s: %s", self.name, exc)
            return False
        return True

    def _endpoint(self, metadata: Dict[str, Any], name: str, *, required: bool = True) -> Optional[str]:
        value = metadata.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            if value is None:
                log.warning("provider %s: discovery document has no %s", self.name, name)
            else:
                log.warning("provider %s: %s in the discovery document is not an http(s) URL", self.name, name)
            raise OIDCError("The identity provider is misconfigured.", "bad_metadata")
        return value

    # -- the authorization request and response --------------------------------

    async def authorization_url(self, *, state: str, nonce: str, code_challenge: str,
                                prompt: Optional[str] = None) -> str:
        """Where to send the browser: an authorization-code request with PKCE S256."""
        metadata = await self.metadata()
        endpoint = self._endpoint(metadata, "authorization_endpoint")
        assert endpoint is not None
        methods = metadata.get("code_challenge_methods_supported")
        if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
            log.warning("provider %s does not support PKCE S256 (code_challenge_methods_supported)", self.name)
            raise OIDCError("The identity provider does not support a secure sign-in (PKCE S256).",
                            "pkce_unsupported")
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if prompt:
            params["prompt"] = prompt
        return _with_query(endpoint, params)

    def check_authorization_response_iss(self, iss: Optional[str], metadata: Dict[str, Any]) -> None:
        """RFC 9207: the ``iss`` of the authorization response names this provider.

        Required when the provider advertises
        ``authorization_response_iss_parameter_supported``; checked whenever
        present. Defeats mix-up attacks between several providers.
        """
        advertised = metadata.get("authorization_response_iss_parameter_supported") is True
        if iss is None:
            if advertised:
                log.warning("provider %s: authorization response without iss (RFC 9207)", self.name)
                raise OIDCError("issuer mismatch", "issuer_missing")
            return
        if not isinstance(iss, str) or iss != self.issuer:
            log.warning("provider %s: authorization response names another issuer (RFC 9207)", self.name)
            raise OIDCError("issuer mismatch", "issuer_mismatch")

    # -- the token endpoint ------------------------------------------------------

    async def exchange_code(self, code: str, code_verifier: str) -> TokenSet:
        """Redeem an authorization code (with its PKCE verifier) for tokens; an ID token is required."""
        tokens = await self._token_request(
            {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
             "code_verifier": code_verifier},
            what="code exchange", sensitive=(code, code_verifier),
        )
        if not tokens.id_token:
            log.warning("provider %s: token response without id_token (is openid in scopes?)", self.name)
            raise OIDCError("The identity provider did not return an ID token.", "no_id_token")
        return tokens

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Use a refresh token; the old one is kept when the provider does not rotate it."""
        tokens = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            what="refresh", sensitive=(refresh_token,),
        )
        if tokens.refresh_token is None:
            tokens = TokenSet(tokens.access_token, tokens.id_token, refresh_token, tokens.expires_at,
                              tokens.token_type, tokens.scope)
        return tokens

    def _client_auth(self, metadata: Dict[str, Any], form: Dict[str, str], headers: Dict[str, str]) -> None:
        methods = metadata.get("token_endpoint_auth_methods_supported")
        if not isinstance(methods, list) or "client_secret_basic" in methods:
            # Absent: client_secret_basic is the default (OpenID Connect Discovery 1.0, section 3).
            user = quote_plus(self.config.client_id, safe="")  # RFC 6749 2.3.1: form-encoded first
            password = quote_plus(self.config.client_secret, safe="")
            credentials = base64.b64encode(f"{user}:{password}".encode("ascii")).decode("ascii")
            headers["Authorization"] = "Basic " + credentials
        elif "client_secret_post" in methods:
            form["client_id"] = self.config.client_id
            form["client_secret"] = self.config.client_secret
        else:
            log.warning("provider %s supports neither client_secret_basic nor client_secret_post", self.name)
            raise OIDCError("The identity provider is misconfigured.", "unsupported_client_auth")

    async def _token_request(self, form: Dict[str, str], *, what: str, sensitive: Tuple[str, ...]) -> TokenSet:
        metadata = await self.metadata()
        endpoint = self._endpoint(metadata, "token_endpoint")
        assert endpoint is not None
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        form = dict(form)
        self._client_auth(metadata, form, headers)
        request = HTTPRequest(endpoint, method="POST", headers=headers, body=urlencode(form),
                              connect_timeout=self._timeout, request_timeout=self._timeout,
                              follow_redirects=False)
        secret_values = sensitive + (self.config.client_secret,)
        response = await self._fetch(request, what)
        document = self._json(response)
        if response.code == 200:
            if not isinstance(document, dict):
                log.warning("provider %s: %s answer is not a JSON object", self.name, what)
                raise OIDCError(REFUSED_TEXT, "bad_token_response")
            return self._token_set(document, what)
        error = document.get("error") if isinstance(document, dict) else None
        code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
        detail = _redact(document.get("error_description"), secret_values) if isinstance(document, dict) else ""
        log.warning("provider %s: %s refused: HTTP %d, error=%s%s", self.name, what, response.code,
                    code or "none", f" ({detail})" if detail else "")
        if response.code >= 500 or response.code == 429 or code in ("temporarily_unavailable", "server_error"):
            raise ProviderUnavailable(reason="token_endpoint_unavailable")
        if code == "invalid_grant" and response.code in (400, 401):
            raise InvalidGrant()
        if 400 <= response.code < 500:
            raise OIDCError(REFUSED_TEXT, code or "token_error")
        raise OIDCError(REFUSED_TEXT, "bad_token_response")

    def _token_set(self, document: Dict[str, Any], what: str) -> TokenSet:
        def text(name: str) -> Optional[str]:
            value = document.get(name)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                log.warning("provider %s: %s answer has a malformed %s", self.name, what, name)
                raise OIDCError(REFUSED_TEXT, "bad_token_response")
            return value

        access_token, id_token, refresh_token = text("access_token"), text("id_token"), text("refresh_token")
        token_type = text("token_type") or "Bearer"
        if token_type.lower() != "bearer":
            log.warning("provider %s: %s answer has token_type %r, only Bearer is supported",
                        self.name, what, token_type[:40])
            raise OIDCError(REFUSED_TEXT, "unsupported_token_type")
        expires_at = None
        expires_in = document.get("expires_in")
        if isinstance(expires_in, str):  # some providers send a numeric string
            try:
                expires_in = float(expires_in)
            except ValueError:
                expires_in = None
        if is_number(expires_in) and not isinstance(expires_in, bool) and expires_in > 0:
            expires_at = self._clock() + float(expires_in)
        scope = document.get("scope")
        return TokenSet(access_token=access_token, id_token=id_token, refresh_token=refresh_token,
                        expires_at=expires_at, token_type="Bearer",
                        scope=scope if isinstance(scope, str) else None)

    # -- HTTP ----------------------------------------------------------------------

    async def _fetch(self, request: HTTPRequest, what: str) -> HTTPResponse:
        """Send ``request``; ``ProviderUnavailable`` when there is no HTTP answer or a 3xx."""
        try:
            response = await self._http.fetch(request, raise_error=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("provider %s: %s at %s failed: %s", self.name, what, safe_url(request.url),
                        describe_fetch_error(exc, request.url))
            raise ProviderUnavailable(reason=f"{what.replace(' ', '_')}_unavailable") from None
        if response.code == 599 or 300 <= response.code < 400:
            log.warning("provider %s: %s at %s failed: HTTP %d", self.name, what, safe_url(request.url),
                        response.code)
            raise ProviderUnavailable(reason=f"{what.replace(' ', '_')}_unavailable")
        return response

    def _json(self, response: HTTPResponse) -> Any:
        body = response.body or b""
        if len(body) > MAX_RESPONSE_BYTES:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    # -- the ID token --------------------------------------------------------------

    def _allowed_algs(self, metadata: Dict[str, Any]) -> frozenset:
        advertised = metadata.get("id_token_signing_alg_values_supported")
        if not isinstance(advertised, list):
            advertised = list(DEFAULT_ID_TOKEN_ALGS)
        return frozenset(a for a in advertised if isinstance(a, str)) & ASYMMETRIC_ALGORITHMS

    def _invalid(self, what: str, reason: str) -> OIDCError:
        log.warning("provider %s: invalid id_token: %s", self.name, what)
        return OIDCError(f"invalid id_token: {what}", reason)

    async def validate_id_token(self, id_token: str, *, nonce: Optional[str],
                                access_token: Optional[str] = None) -> Dict[str, Any]:
        """The verified claims of ``id_token`` (OpenID Connect Core 1.0, section 3.1.3.7).

        ``nonce`` is the one sent with the authorization request; pass None
        after a refresh, where the ID token may repeat the original nonce or
        have none. With ``access_token``, a present ``at_hash`` must match it.
        """
        if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN_LENGTH:
            raise self._invalid("malformed", "id_token_malformed")
        try:
            header = jwt.get_unverified_header(id_token)
        except Exception:
            raise self._invalid("malformed", "id_token_malformed") from None
        alg = header.get("alg")
        metadata = await self.metadata()
        if not isinstance(alg, str) or alg not in self._allowed_algs(metadata):
            # Never "none", never HS*: only asymmetric algorithms the provider advertises.
            raise self._invalid("algorithm not allowed", "id_token_alg")
        jwks_uri = self._endpoint(metadata, "jwks_uri")
        assert jwks_uri is not None
        kid = header.get("kid")  # the only header used to find the key: jku/x5u/jwk/x5c are ignored
        if kid is not None and not isinstance(kid, str):
            raise self._invalid("malformed", "id_token_malformed")
        try:
            key = await self._jwks.get(jwks_uri).get_key(kid, alg)
        except KeysUnavailable:
            log.warning("provider %s: no signing keys from %s", self.name, safe_url(jwks_uri))
            raise ProviderUnavailable(reason="keys_unavailable") from None
        except AuthError:
            raise self._invalid("unknown signing key", "id_token_unknown_key") from None
        try:
            claims = jwt.decode(id_token, key, algorithms=[alg], options={
                "verify_signature": True, "verify_aud": False, "verify_iss": False, "verify_exp": False,
                "verify_iat": False, "verify_nbf": False, "require": [],
            })
        except jwt_errors.InvalidSignatureError:
            raise self._invalid("bad signature", "id_token_signature") from None
        except jwt_errors.InvalidKeyError:
            raise self._invalid("bad signing key", "id_token_signature") from None
        except Exception:
            raise self._invalid("malformed", "id_token_malformed") from None
        if not isinstance(claims, dict):
            raise self._invalid("malformed", "id_token_malformed")
        self._check_claims(claims, nonce)
        at_hash = claims.get("at_hash")
        if access_token is not None and at_hash is not None:
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, self._at_hash(access_token, alg)):
                raise self._invalid("at_hash does not match the access token", "id_token_at_hash")
        return claims

    def _check_claims(self, claims: Dict[str, Any], nonce: Optional[str]) -> None:
        if claims.get("iss") != self.issuer:
            raise self._invalid("wrong issuer", "id_token_issuer")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise self._invalid("no sub", "id_token_malformed")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise self._invalid("wrong audience", "id_token_audience")
        client_id = self.config.client_id
        if client_id not in audiences:
            raise self._invalid("wrong audience", "id_token_audience")
        azp = claims.get("azp")
        if len(set(audiences)) > 1 and azp is None:
            raise self._invalid("several audiences and no azp", "id_token_azp")
        if azp is not None and azp != client_id:
            raise self._invalid("azp is another client", "id_token_azp")
        now = self._clock()
        exp = claims.get("exp")
        if not is_number(exp) or isinstance(exp, bool):
            raise self._invalid("no exp", "id_token_malformed")
        if exp <= now - self._leeway:
            raise self._invalid("expired", "id_token_expired")
        iat = claims.get("iat")
        if not is_number(iat) or isinstance(iat, bool):
            raise self._invalid("no iat", "id_token_malformed")
        if iat > now + self._leeway:
            raise self._invalid("issued in the future", "id_token_iat")
        nbf = claims.get("nbf")
        if nbf is not None and (not is_number(nbf) or nbf > now + self._leeway):
            raise self._invalid("not yet valid", "id_token_nbf")
        if nonce is not None:
            found = claims.get("nonce")
            if not isinstance(found, str) or not hmac.compare_digest(found.encode("utf-8"), nonce.encode("utf-8")):
                raise self._invalid("nonce mismatch", "id_token_nonce")

    @staticmethod
    def _at_hash(access_token: str, alg: str) -> str:
        """OpenID Connect Core 1.0, 3.1.3.6: left half of the hash of the token, base64url."""
        digest = _HASHES.get(alg[-3:], hashlib.sha512)(access_token.encode("ascii", "replace")).digest()  # EdDSA: SHA-512
        return _b64url(digest[: len(digest) // 2])

    # -- userinfo and the identity ---------------------------------------------------

    async def userinfo(self, access_token: str) -> Optional[Dict[str, Any]]:
        """The userinfo endpoint's claims, or None when the provider has none.

        The caller must check that its ``sub`` equals the ID token's
        (``user_claims`` does).
        """
        metadata = await self.metadata()
        endpoint = self._endpoint(metadata, "userinfo_endpoint", required=False)
        if endpoint is None:
            return None
        request = HTTPRequest(endpoint, method="GET",
                              headers={"Accept": "application/json", "Authorization": "Bearer " + access_token},
                              connect_timeout=self._timeout, request_timeout=self._timeout,
                              follow_redirects=False)
        response = await self._fetch(request, "userinfo")
        if response.code >= 500 or response.code == 429:
            log.warning("provider %s: userinfo failed: HTTP %d", self.name, response.code)
            raise ProviderUnavailable(reason="userinfo_unavailable")
        if response.code != 200:
            log.warning("provider %s: userinfo refused: HTTP %d", self.name, response.code)
            raise OIDCError(REFUSED_TEXT, "userinfo_refused")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "application/jwt":
            log.warning("provider %s: signed userinfo responses are not supported", self.name)
            raise OIDCError(REFUSED_TEXT, "userinfo_unsupported")
        document = self._json(response)
        if not isinstance(document, dict) or not isinstance(document.get("sub"), str):
            log.warning("provider %s: userinfo answer is not a JSON object with a sub", self.name)
            raise OIDCError(REFUSED_TEXT, "userinfo_malformed")
        return document

    async def user_claims(self, id_claims: Dict[str, Any], access_token: Optional[str]) -> UserClaims:
        """The identity from validated ID token claims, completed from userinfo when needed.

        Userinfo is asked only when the ID token lacks ``email`` or the
        configured ``groups_claim``; the ID token's values win where both
        have one. An email whose ``email_verified`` is false is dropped (not
        usable for ``email``/``email_domain`` rules or headers).
        """
        sub = id_claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise OIDCError("invalid id_token: no sub", "id_token_malformed")
        groups_claim = self.config.groups_claim
        info: Dict[str, Any] = {}
        if access_token and (claims.claim(id_claims, "email") is None or claims.claim(id_claims, groups_claim) is None):
            fetched = await self.userinfo(access_token)
            if fetched is not None:
                if not hmac.compare_digest(str(fetched.get("sub")).encode("utf-8"), sub.encode("utf-8")):
                    log.warning("provider %s: userinfo sub differs from the id_token's", self.name)
                    raise OIDCError(REFUSED_TEXT, "userinfo_sub_mismatch")
                info = fetched

        email_source = id_claims if claims.string(id_claims.get("email")) else info
        email = claims.string(email_source.get("email"))
        verified = claims.email_verified(email_source.get("email_verified"))
        if email is not None and verified is False and not self.config.allow_unverified_email:
            log.info("provider %s: ignoring the unverified email of %s", self.name, sub)
            email = None
        groups_value = claims.claim(id_claims, groups_claim)
        if groups_value is None:
            groups_value = claims.claim(info, groups_claim)
        groups = claims.groups(groups_value)
        username = claims.string(id_claims.get("preferred_username")) or claims.string(info.get("preferred_username"))

        kept: Dict[str, Any] = {}
        for name in KEPT_CLAIMS:
            value = id_claims.get(name)
            if value is None:
                value = info.get(name)
            value = _kept_value(value)
            if value is not None:
                kept[name] = value
        kept["sub"] = sub
        kept.pop("email", None)
        kept.pop("email_verified", None)
        if email is not None:
            kept["email"] = email
            if verified is not None:
                kept["email_verified"] = verified
        kept["groups"] = list(groups)
        return UserClaims(sub=sub, email=email, groups=groups, preferred_username=username, claims=kept)

    # -- sign-out --------------------------------------------------------------------

    async def end_session_url(self, *, id_token_hint: Optional[str], post_logout_redirect_uri: Optional[str],
                              state: Optional[str] = None) -> Optional[str]:
        """RP-initiated logout URL, or None when the provider has no ``end_session_endpoint``."""
        metadata = await self.metadata()
        endpoint = self._endpoint(metadata, "end_session_endpoint", required=False)
        if endpoint is None:
            return None
        params = {"client_id": self.config.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        return _with_query(endpoint, params)
