"""OpenID Connect relying party: discovery, the ID token, userinfo and RP-initiated logout.

One kind of ``ProviderClient`` (see ``client``): the endpoints come from the
issuer's discovery document (cached by ``DiscoveryCache``, shared with
bearer-token verification), and the user is proven by the ID token::

    client = OIDCClient(provider, http, redirect_uri=public_url + "/oauth2/callback",
                        discovery=DiscoveryCache(http), jwks=JWKSRegistry(http))
    tokens, user = await client.sign_in(code=code, verifier=verifier, nonce=nonce, iss=iss)

What it enforces, so callers need not: the RFC 9207 ``iss`` authorization
response parameter; ID tokens signed with an asymmetric algorithm the
provider advertises (never ``none``, never HMAC), keys only from the
discovered ``jwks_uri`` (``jku``/``x5u``/``jwk``/``x5c`` headers are
ignored), exact ``iss`` (Google's two spellings and Microsoft's per-tenant
issuer are the only exceptions, from their presets), ``aud``/``azp``,
``exp``/``iat``, ``nonce``, ``at_hash`` and Google's ``hd``; a userinfo
``sub`` equal to the ID token's. Log lines (logger ``gateway.providers``)
never contain a token, a code, a secret or a query string.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jwt
from jwt import exceptions as jwt_errors
from tornado.httpclient import AsyncHTTPClient

from .. import claims
from ..config import ASYMMETRIC_ALGORITHMS, ProviderConfig
from ..discovery import DiscoveryCache, DiscoveryError
from ..jwks import JWKSRegistry, KeysUnavailable
from ..models import AuthError, is_number
from ..redact import safe_url
from .client import DEFAULT_HTTP_TIMEOUT, ProviderClient, TokenSet, b64url, with_query
from .errors import REFUSED_TEXT, Misconfigured, ProviderError, ProviderUnavailable
from .identity import UserClaims, mapped, user_claims

log = logging.getLogger("gateway.providers")

DEFAULT_LEEWAY = 30.0
DEFAULT_ID_TOKEN_ALGS = ("RS256",)  # OpenID Connect Core 1.0, section 15.1: the one every provider supports
READY_WAIT = 2.0  # ready() waits this long for a first discovery fetch, which goes on in the background
READY_RETRY = 5.0  # after a failed discovery, ready() does not try again for this long
MAX_ID_TOKEN_LENGTH = 64 * 1024
MS_TENANT_TEMPLATE = "{tenantid}"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_MAX_AGE = 300.0  # a logout token issued longer ago than this is refused  # what Microsoft's multi-tenant discovery documents name as issuer
_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


class OIDCClient(ProviderClient):
    """The relying party for one OpenID Connect provider."""

    kind = "oidc"

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
        keep: Tuple[str, ...] = (),
    ):
        super().__init__(config, http_client, redirect_uri=redirect_uri, clock=clock, timeout=timeout, keep=keep)
        self.issuer = config.issuer
        self._discovery = discovery
        self._jwks = jwks
        self._leeway = leeway
        self._ready_retry_at = float("-inf")
        self._last_problem: Optional[str] = None
        # Microsoft's common/organizations endpoints name a template, not themselves, as issuer.
        self._discovery_aliases = ((config.tenant_issuer.replace("{tid}", MS_TENANT_TEMPLATE),)
                                   if config.tenant_issuer else ())

    def __repr__(self) -> str:
        return f"OIDCClient({self.name!r}, issuer={self.issuer!r})"

    # -- discovery -------------------------------------------------------------

    async def metadata(self) -> Dict[str, Any]:
        """The provider's discovery document (cached by ``DiscoveryCache``)."""
        try:
            document = await self._discovery.get(self.issuer, self._discovery_aliases)
        except DiscoveryError as exc:
            self._last_problem = str(exc)
            log.warning("provider %s: %s", self.name, exc)
            if exc.unreachable:
                raise ProviderUnavailable(reason="discovery_failed") from None
            raise Misconfigured("discovery_invalid") from None
        self._last_problem = None
        return document

    endpoints = metadata

    async def ready(self) -> bool:
        return await self.problem() is None

    async def problem(self) -> Optional[str]:
        """None once the discovery document has been fetched, else why not.

        When it has not, one fetch is started (at most every ``READY_RETRY``
        seconds) and waited for up to ``READY_WAIT`` seconds; a slower one
        goes on in the background, so a readiness probe never hangs.
        """
        if self._discovery.has(self.issuer):
            return None
        if time.monotonic() < self._ready_retry_at:
            return self._last_problem or "discovery document not fetched yet"
        try:
            await asyncio.wait_for(self._discovery.get(self.issuer, self._discovery_aliases), READY_WAIT)
        except asyncio.TimeoutError:
            return "discovery document not fetched yet (the provider is slow to answer)"
        except DiscoveryError as exc:
            self._ready_retry_at = time.monotonic() + READY_RETRY
            self._last_problem = str(exc)
            log.warning("provider %s: %s", self.name, exc)
            return self._last_problem
        return None

    def nonce_param(self, nonce: str) -> Dict[str, str]:
        return {"nonce": nonce}

    # -- the callback ------------------------------------------------------------

    async def sign_in(self, *, code: str, verifier: str, nonce: str,
                      iss: Optional[str]) -> Tuple[TokenSet, UserClaims]:
        metadata = await self.metadata()
        self.check_authorization_response_iss(iss, metadata)
        tokens = await self.exchange_code(code, verifier)
        if not tokens.id_token:
            log.warning("provider %s: token response without id_token (is openid in scopes?)", self.name)
            raise ProviderError("The identity provider did not return an ID token.", "no_id_token")
        id_claims = await self.validate_id_token(tokens.id_token, nonce=nonce, access_token=tokens.access_token)
        return tokens, await self.user_claims(id_claims, tokens.access_token)

    async def renew(self, refresh_token: str, *, sub: str) -> TokenSet:
        """A refresh; a new ID token must be valid and name the same subject."""
        tokens = await self.refresh(refresh_token)
        if tokens.id_token:
            id_claims = await self.validate_id_token(tokens.id_token, nonce=None)
            if id_claims.get("sub") != sub:
                log.warning("provider %s: refreshed id_token names another subject", self.name)
                raise ProviderError(REFUSED_TEXT, "id_token_subject_changed")
        return tokens

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
                raise ProviderError("issuer mismatch", "issuer_missing")
            return
        if not isinstance(iss, str) or not self._issuer_ok(iss, None):
            log.warning("provider %s: authorization response names another issuer (RFC 9207)", self.name)
            raise ProviderError("issuer mismatch", "issuer_mismatch")

    def _issuer_ok(self, iss: Any, claims: Optional[Dict[str, Any]]) -> bool:
        """Exact, but for Google's second spelling and Microsoft's per-tenant issuer.

        ``claims`` are the ID token's (None for the RFC 9207 callback
        parameter, which names an issuer but carries no ``tid``).
        """
        template = self.config.tenant_issuer
        if not template:
            return iss == self.issuer or iss in self.config.issuer_aliases
        if not isinstance(iss, str):
            return False
        prefix, _, suffix = template.partition("{tid}")
        if claims is None:
            tenant = iss[len(prefix):len(iss) - len(suffix)] if iss.startswith(prefix) and iss.endswith(suffix) else ""
        else:
            tenant = claims.get("tid")  # the token's own tenant, never the one its iss names
            if not isinstance(tenant, str) or iss != template.replace("{tid}", tenant):
                return False
        if not tenant or "/" in tenant or len(iss) != len(prefix) + len(tenant) + len(suffix):
            return False
        return not self.config.allowed_tenants or tenant in self.config.allowed_tenants

    # -- the ID token --------------------------------------------------------------

    def _allowed_algs(self, metadata: Dict[str, Any]) -> frozenset:
        advertised = metadata.get("id_token_signing_alg_values_supported")
        if not isinstance(advertised, list):
            advertised = list(DEFAULT_ID_TOKEN_ALGS)
        return frozenset(a for a in advertised if isinstance(a, str)) & ASYMMETRIC_ALGORITHMS

    def _invalid(self, what: str, reason: str) -> ProviderError:
        log.warning("provider %s: invalid id_token: %s", self.name, what)
        return ProviderError(f"invalid id_token: {what}", reason)

    async def _signed_claims(self, token: str, what: str) -> Dict[str, Any]:
        """The claims of a JWT signed by this provider's keys (``what``: id_token or logout_token), unchecked."""
        if not isinstance(token, str) or not token or len(token) > MAX_ID_TOKEN_LENGTH:
            raise self._invalid_token(what, "malformed", f"{what}_malformed")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:
            raise self._invalid_token(what, "malformed", f"{what}_malformed") from None
        alg = header.get("alg")
        metadata = await self.metadata()
        if not isinstance(alg, str) or alg not in self._allowed_algs(metadata):
            # Never "none", never HS*: only asymmetric algorithms the provider advertises.
            raise self._invalid_token(what, "algorithm not allowed", f"{what}_alg")
        jwks_uri = self.endpoint(metadata, "jwks_uri")
        assert jwks_uri is not None
        kid = header.get("kid")  # the only header used to find the key: jku/x5u/jwk/x5c are ignored
        if kid is not None and not isinstance(kid, str):
            raise self._invalid_token(what, "malformed", f"{what}_malformed")
        try:
            key = await self._jwks.get(jwks_uri).get_key(kid, alg)
        except KeysUnavailable:
            log.warning("provider %s: no signing keys from %s", self.name, safe_url(jwks_uri))
            raise ProviderUnavailable(reason="keys_unavailable") from None
        except AuthError:
            raise self._invalid_token(what, "unknown signing key", f"{what}_unknown_key") from None
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options={
                "verify_signature": True, "verify_aud": False, "verify_iss": False, "verify_exp": False,
                "verify_iat": False, "verify_nbf": False, "require": [],
            })
        except jwt_errors.InvalidSignatureError:
            raise self._invalid_token(what, "bad signature", f"{what}_signature") from None
        except jwt_errors.InvalidKeyError:
            raise self._invalid_token(what, "bad signing key", f"{what}_signature") from None
        except Exception:
            raise self._invalid_token(what, "malformed", f"{what}_malformed") from None
        if not isinstance(claims, dict):
            raise self._invalid_token(what, "malformed", f"{what}_malformed")
        return claims

    def _invalid_token(self, what: str, detail: str, reason: str) -> ProviderError:
        log.warning("provider %s: invalid %s: %s", self.name, what, detail)
        return ProviderError(f"invalid {what}: {detail}", reason)

    async def validate_logout_token(self, token: str) -> Dict[str, Any]:
        """OpenID Connect Back-Channel Logout 1.0, section 2.6: the verified claims, or ProviderError."""
        claims = await self._signed_claims(token, "logout_token")

        def invalid(detail: str) -> ProviderError:
            return self._invalid_token("logout_token", detail, "logout_token_invalid")

        if not self._issuer_ok(claims.get("iss"), claims):
            raise invalid("wrong issuer")
        aud = claims.get("aud")
        if self.config.client_id not in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []):
            raise invalid("wrong audience")
        now = self._clock()
        iat = claims.get("iat")
        if not is_number(iat) or isinstance(iat, bool) or iat > now + self._leeway \
                or iat < now - LOGOUT_TOKEN_MAX_AGE - self._leeway:
            raise invalid("iat missing or not recent")
        exp = claims.get("exp")
        if exp is not None and (not is_number(exp) or exp <= now - self._leeway):
            raise invalid("expired")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise invalid("no back-channel logout event")
        if "nonce" in claims:
            raise invalid("a nonce (this is an ID token)")
        sid, sub = claims.get("sid"), claims.get("sub")
        if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
            raise invalid("neither sid nor sub")
        if (sid is not None and not isinstance(sid, str)) or (sub is not None and not isinstance(sub, str)):
            raise invalid("malformed sid or sub")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise invalid("no jti")
        return claims

    async def validate_id_token(self, id_token: str, *, nonce: Optional[str],
                                access_token: Optional[str] = None) -> Dict[str, Any]:
        """The verified claims of ``id_token`` (OpenID Connect Core 1.0, section 3.1.3.7).

        ``nonce`` is the one sent with the authorization request; pass None
        after a refresh, where the ID token may repeat the original nonce or
        have none. With ``access_token``, a present ``at_hash`` must match it.
        """
        claims = await self._signed_claims(id_token, "id_token")
        alg = jwt.get_unverified_header(id_token)["alg"]  # verified to be an allowed one
        self._check_claims(claims, nonce)
        at_hash = claims.get("at_hash")
        if access_token is not None and at_hash is not None:
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, self._at_hash(access_token, alg)):
                raise self._invalid("at_hash does not match the access token", "id_token_at_hash")
        return claims

    def _check_claims(self, claims: Dict[str, Any], nonce: Optional[str]) -> None:
        if not self._issuer_ok(claims.get("iss"), claims):
            raise self._invalid("wrong issuer", "id_token_issuer")
        if self.config.hosted_domain and claims.get("hd") != self.config.hosted_domain:
            raise self._invalid("hd is not the hosted_domain", "id_token_hosted_domain")
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
        return b64url(digest[: len(digest) // 2])

    # -- userinfo and the identity ---------------------------------------------------

    async def userinfo(self, access_token: str) -> Optional[Dict[str, Any]]:
        """The userinfo endpoint's claims, or None when the provider has none.

        The caller must check that its ``sub`` equals the ID token's
        (``user_claims`` does).
        """
        metadata = await self.metadata()
        endpoint = self.endpoint(metadata, "userinfo_endpoint", required=False)
        if endpoint is None:
            return None
        document, response = await self.get_json(endpoint, access_token, "userinfo")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "application/jwt":
            log.warning("provider %s: signed userinfo responses are not supported", self.name)
            raise ProviderError(REFUSED_TEXT, "userinfo_unsupported")
        if not isinstance(document, dict) or not isinstance(document.get("sub"), str):
            log.warning("provider %s: userinfo answer is not a JSON object with a sub", self.name)
            raise ProviderError(REFUSED_TEXT, "userinfo_malformed")
        return document

    def _wanted(self) -> Tuple[str, ...]:
        """Claims that, when the ID token lacks them, are worth a userinfo request."""
        names = ["email", self.config.groups_claim, *self.keep]
        if self.config.user_claim != "sub":
            names.append(self.config.user_claim)
        return tuple(dict(self.config.claims).get(n, n) for n in names)

    async def user_claims(self, id_claims: Dict[str, Any], access_token: Optional[str]) -> UserClaims:
        """The identity from validated ID token claims, completed from userinfo when needed.

        Userinfo is asked only when the ID token lacks a claim the identity
        needs (email, groups, ``user_claim``, a claim an allow rule names); the
        ID token's values win where both have one. An email whose
        ``email_verified`` is false is dropped.
        """
        sub = id_claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ProviderError("invalid id_token: no sub", "id_token_malformed")
        merged = dict(id_claims)
        if access_token and any(claims.claim(id_claims, n) is None for n in self._wanted()):
            fetched = await self.userinfo(access_token)
            if fetched is not None:
                if not hmac.compare_digest(str(fetched.get("sub")).encode("utf-8"), sub.encode("utf-8")):
                    log.warning("provider %s: userinfo sub differs from the id_token's", self.name)
                    raise ProviderError(REFUSED_TEXT, "userinfo_sub_mismatch")
                merged = {**fetched, **{k: v for k, v in id_claims.items() if v is not None}}
                if not claims.string(id_claims.get("email")) and "email" in fetched:
                    # the email and its verification come from the same answer
                    merged["email"], merged["email_verified"] = fetched.get("email"), fetched.get("email_verified")
        document = mapped(merged, [(f, s) for f, s in self.config.claims if f != "sub"])
        document["sub"] = sub  # an OpenID Connect subject is the ID token's, whatever the mapping
        return user_claims(self.config, document, keep=self.keep)

    # -- sign-out --------------------------------------------------------------------

    async def end_session_url(self, *, id_token_hint: Optional[str], post_logout_redirect_uri: Optional[str],
                              state: Optional[str] = None) -> Optional[str]:
        """RP-initiated logout URL, or None when the provider has no ``end_session_endpoint``."""
        metadata = await self.metadata()
        endpoint = self.endpoint(metadata, "end_session_endpoint", required=False)
        if endpoint is None:
            return None
        params = {"client_id": self.config.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        if state:
            params["state"] = state
        return with_query(endpoint, params)
