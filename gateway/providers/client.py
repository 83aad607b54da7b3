"""What every kind of login provider shares: the authorization request, the token endpoint, HTTP.

``ProviderClient`` is the one interface ``login`` uses, whatever the
provider speaks::

    url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
    tokens, user = await client.sign_in(code=code, verifier=verifier, nonce=nonce, iss=iss)
    tokens = await client.renew(refresh_token, sub=session_sub)
    url = await client.end_session_url(id_token_hint=..., post_logout_redirect_uri=..., state=...)
    problem = await client.problem()          # None when ready, else what an operator must fix

``oidc.OIDCClient`` finds its endpoints by discovery and proves the user
with an ID token; ``oauth2.OAuth2Client`` has its endpoints configured and
asks the userinfo endpoint; ``github.GitHubClient`` asks GitHub's REST API.
PKCE S256 and ``state`` always; client authentication as configured by
``token_endpoint_auth_method`` (form-encoded Basic credentials, RFC 6749
2.3.1; the client's id and secret in the form; or a JWT signed with the
client's private key, RFC 7523).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
import base64
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from ..config import ProviderConfig
from ..discovery import describe_fetch_error
from ..models import is_number
from ..redact import safe_url
from .errors import REFUSED_TEXT, InvalidGrant, Misconfigured, ProviderError, ProviderUnavailable, TokenRefused
from .identity import UserClaims

log = logging.getLogger("gateway.providers")

DEFAULT_HTTP_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 20

_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_pkce() -> Tuple[str, str]:
    """A PKCE pair (RFC 7636): a 64-character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode("ascii")).digest())


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


def with_query(url: str, params: Dict[str, str]) -> str:
    """``url`` with ``params`` added; its own query is kept, except the keys we set."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode(kept + list(params.items()), quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redact(text: Any, sensitive: Iterable[Optional[str]]) -> str:
    """Printable, short, and without any of ``sensitive``: fit for a log line."""
    if not isinstance(text, str):
        return ""
    for value in sensitive:
        if value:
            text = text.replace(value, "[redacted]")
    return _UNPRINTABLE.sub("?", text)[:200]


class ProviderClient(ABC):
    """The relying party for one configured provider (authorization-code flow with PKCE)."""

    kind = "provider"

    def __init__(self, config: ProviderConfig, http_client: AsyncHTTPClient, *, redirect_uri: str,
                 clock: Callable[[], float] = time.time, timeout: float = DEFAULT_HTTP_TIMEOUT,
                 keep: Iterable[str] = ()):
        self.config = config
        self.name = config.name
        self.redirect_uri = redirect_uri
        self._http = http_client
        self._clock = clock
        self._timeout = timeout
        self.keep = tuple(keep)  # claims the session must keep because allow rules name them
        self._signing_key: Any = None  # private_key_jwt: parsed on first use

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # -- what each kind of provider says -------------------------------------------

    @abstractmethod
    async def endpoints(self) -> Dict[str, Any]:
        """The provider's metadata: at least authorization_endpoint and token_endpoint."""

    @abstractmethod
    async def sign_in(self, *, code: str, verifier: str, nonce: str,
                      iss: Optional[str]) -> Tuple[TokenSet, UserClaims]:
        """The callback's code redeemed and the user it proves."""

    async def problem(self) -> Optional[str]:
        """None when logins can start, else what is wrong (for /ready and doctor)."""
        return None

    async def end_session_url(self, *, id_token_hint: Optional[str], post_logout_redirect_uri: Optional[str],
                              state: Optional[str] = None) -> Optional[str]:
        """RP-initiated logout URL; None when the provider has none (plain OAuth 2.0 has none)."""
        return None

    def nonce_param(self, nonce: str) -> Dict[str, str]:
        return {}

    # -- the authorization request -----------------------------------------------------

    async def authorization_url(self, *, state: str, nonce: str, code_challenge: str,
                                prompt: Optional[str] = None) -> str:
        """Where to send the browser: an authorization-code request with PKCE S256."""
        metadata = await self.endpoints()
        endpoint = self.endpoint(metadata, "authorization_endpoint")
        assert endpoint is not None
        methods = metadata.get("code_challenge_methods_supported")
        if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
            log.warning("provider %s does not advertise PKCE S256 (code_challenge_methods_supported: %s); "
                        "the gateway always uses it: enable PKCE S256 for this client at the provider",
                        self.name, redact(json.dumps(methods)[:100], ()))
            raise Misconfigured("pkce_unsupported",
                                "The identity provider does not support a secure sign-in (PKCE S256).")
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            **self.nonce_param(nonce),
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **dict(self.config.auth_params),
        }
        if prompt:
            params["prompt"] = prompt
        return with_query(endpoint, params)

    def endpoint(self, metadata: Dict[str, Any], name: str, *, required: bool = True) -> Optional[str]:
        value = metadata.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            if value is None:
                log.warning("provider %s: no %s (discovery document or configuration)", self.name, name)
            else:
                log.warning("provider %s: %s is not an http(s) URL", self.name, name)
            raise Misconfigured("bad_metadata")
        return value

    # -- the token endpoint ----------------------------------------------------------

    async def exchange_code(self, code: str, code_verifier: str) -> TokenSet:
        """Redeem an authorization code (with its PKCE verifier) for tokens."""
        tokens = await self.token_request(
            {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
             "code_verifier": code_verifier},
            what="code exchange", sensitive=(code, code_verifier),
        )
        if not tokens.access_token:
            log.warning("provider %s: token response without access_token", self.name)
            raise ProviderError(REFUSED_TEXT, "no_access_token")
        return tokens

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Use a refresh token; the old one is kept when the provider does not rotate it."""
        tokens = await self.token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            what="refresh", sensitive=(refresh_token,),
        )
        if tokens.refresh_token is None:
            tokens = TokenSet(tokens.access_token, tokens.id_token, refresh_token, tokens.expires_at,
                              tokens.token_type, tokens.scope)
        return tokens

    async def renew(self, refresh_token: str, *, sub: str) -> TokenSet:
        """A refresh, checked: the new tokens still belong to ``sub``."""
        return await self.refresh(refresh_token)

    async def revoke(self, refresh_token: Optional[str], access_token: Optional[str]) -> bool:
        """RFC 7009 at the provider's ``revocation_endpoint``: the refresh token (which also ends the
        access tokens it made, at most providers), else the access token. False when it has none."""
        metadata = await self.endpoints()
        endpoint = self.endpoint(metadata, "revocation_endpoint", required=False)
        token, hint = (refresh_token, "refresh_token") if refresh_token else (access_token, "access_token")
        if endpoint is None or not token:
            return False
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        form = {"token": token, "token_type_hint": hint}
        self.client_auth(metadata, form, headers)
        request = HTTPRequest(endpoint, method="POST", headers=headers, body=urlencode(form),
                              connect_timeout=self._timeout, request_timeout=self._timeout, follow_redirects=False)
        response = await self.fetch(request, "revocation")
        if response.code != 200:
            log.warning("provider %s: revoking the %s failed: HTTP %d", self.name, hint.replace("_", " "),
                        response.code)
            return False
        log.info("provider %s: %s revoked at sign-out", self.name, hint.replace("_", " "))
        return True

    def auth_method(self, metadata: Dict[str, Any]) -> str:
        """The configured method, else Basic unless the provider lists only client_secret_post."""
        if self.config.token_endpoint_auth_method:
            return self.config.token_endpoint_auth_method
        methods = metadata.get("token_endpoint_auth_methods_supported")
        if not isinstance(methods, list) or "client_secret_basic" in methods:
            # Absent: client_secret_basic is the default (OpenID Connect Discovery 1.0, section 3).
            return "client_secret_basic"
        if "client_secret_post" in methods:
            return "client_secret_post"
        log.warning("provider %s lists neither client_secret_basic nor client_secret_post in "
                    "token_endpoint_auth_methods_supported; set token_endpoint_auth_method", self.name)
        raise Misconfigured("unsupported_client_auth")

    def client_auth(self, metadata: Dict[str, Any], form: Dict[str, str], headers: Dict[str, str]) -> None:
        method = self.auth_method(metadata)
        if method == "private_key_jwt":
            form["client_id"] = self.config.client_id
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self._assertion(self.endpoint(metadata, "token_endpoint") or "")
        elif method == "client_secret_basic":
            user = quote_plus(self.config.client_id, safe="")  # RFC 6749 2.3.1: form-encoded first
            password = quote_plus(self.config.client_secret, safe="")
            credentials = base64.b64encode(f"{user}:{password}".encode("ascii")).decode("ascii")
            headers["Authorization"] = "Basic " + credentials
        else:
            form["client_id"] = self.config.client_id
            form["client_secret"] = self.config.client_secret

    def _assertion(self, audience: str) -> str:
        """RFC 7523 client authentication: a short JWT about this client, signed with its private key."""
        if self._signing_key is None:
            self._signing_key = serialization.load_pem_private_key(self.config.client_private_key.encode(), None)
        key = self._signing_key
        if isinstance(key, rsa.RSAPrivateKey):
            alg = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            alg = {"secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
        else:
            alg = "EdDSA"
        now = int(self._clock())
        claims = {"iss": self.config.client_id, "sub": self.config.client_id, "aud": audience,
                  "jti": random_token(16), "iat": now, "exp": now + 60}
        headers = {"kid": self.config.client_key_id} if self.config.client_key_id else None
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    async def token_request(self, form: Dict[str, str], *, what: str, sensitive: Tuple[str, ...]) -> TokenSet:
        metadata = await self.endpoints()
        endpoint = self.endpoint(metadata, "token_endpoint")
        assert endpoint is not None
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        form = dict(form)
        self.client_auth(metadata, form, headers)
        request = HTTPRequest(endpoint, method="POST", headers=headers, body=urlencode(form),
                              connect_timeout=self._timeout, request_timeout=self._timeout,
                              follow_redirects=False)
        secret_values = sensitive + (self.config.client_secret,)
        response = await self.fetch(request, what)
        document = self.json_body(response)
        error = document.get("error") if isinstance(document, dict) else None
        # GitHub answers a refused code with 200 and an error field.
        if response.code == 200 and error is None:
            if not isinstance(document, dict):
                log.warning("provider %s: %s answer is not a JSON object", self.name, what)
                raise ProviderError(REFUSED_TEXT, "bad_token_response")
            return self._token_set(document, what)
        code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None
        detail = redact(document.get("error_description"), secret_values) if isinstance(document, dict) else ""
        status = 400 if response.code == 200 else response.code
        log.warning("provider %s: %s refused: HTTP %d, error=%s%s", self.name, what, response.code,
                    code or "none", f" ({detail})" if detail else "")
        if status >= 500 or status == 429 or code in ("temporarily_unavailable", "server_error"):
            raise ProviderUnavailable(reason="token_endpoint_unavailable")
        if code in ("invalid_grant", "bad_verification_code") and status in (400, 401):
            raise InvalidGrant()
        if code in ("invalid_client", "unauthorized_client", "incorrect_client_credentials"):
            log.warning("provider %s: the client id or secret is not accepted (token_endpoint_auth_method %s)",
                        self.name, self.auth_method(metadata))
        if 400 <= status < 500:
            raise TokenRefused(reason=code or "token_refused")
        raise ProviderError(REFUSED_TEXT, "bad_token_response")

    def _token_set(self, document: Dict[str, Any], what: str) -> TokenSet:
        def text(name: str) -> Optional[str]:
            value = document.get(name)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                log.warning("provider %s: %s answer has a malformed %s", self.name, what, name)
                raise ProviderError(REFUSED_TEXT, "bad_token_response")
            return value

        access_token, id_token, refresh_token = text("access_token"), text("id_token"), text("refresh_token")
        token_type = text("token_type") or "Bearer"
        if token_type.lower() != "bearer":
            log.warning("provider %s: %s answer has token_type %r, only Bearer is supported",
                        self.name, what, token_type[:40])
            raise ProviderError(REFUSED_TEXT, "unsupported_token_type")
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

    async def fetch(self, request: HTTPRequest, what: str) -> HTTPResponse:
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

    @staticmethod
    def json_body(response: HTTPResponse) -> Any:
        body = response.body or b""
        if len(body) > MAX_RESPONSE_BYTES:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return None

    async def get_json(self, url: str, access_token: str, what: str,
                       accept: str = "application/json") -> Tuple[Any, HTTPResponse]:
        """GET an API resource with the user's access token: (JSON document, response).

        5xx and 429 are ``ProviderUnavailable``; any other non-200 is a refusal.
        """
        request = HTTPRequest(url, method="GET",
                              headers={"Accept": accept, "Authorization": "Bearer " + access_token,
                                       "User-Agent": "gateway"},
                              connect_timeout=self._timeout, request_timeout=self._timeout,
                              follow_redirects=False)
        response = await self.fetch(request, what)
        if response.code >= 500 or response.code == 429:
            log.warning("provider %s: %s failed: HTTP %d", self.name, what, response.code)
            raise ProviderUnavailable(reason=f"{what}_unavailable")
        if response.code != 200:
            log.warning("provider %s: %s refused: HTTP %d", self.name, what, response.code)
            raise ProviderError(REFUSED_TEXT, f"{what}_refused")
        return self.json_body(response), response
