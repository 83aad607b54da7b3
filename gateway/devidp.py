"""A small built-in DEVELOPMENT OpenID Connect provider, used by ``gateway demo``.

FOR TRYING THE GATEWAY ONLY - NEVER FOR PRODUCTION. Users and passwords live in
memory, the signing key is generated at startup and forgotten at exit, there is
no single sign-on session, no consent screen, no rate limiting and no
persistence. It exists so that ``gateway demo`` can exercise the gateway's real
OpenID Connect code path on loopback without any outside service::

    idp = DevIdentityProvider("http://127.0.0.1:9000", client_id="gateway",
                              client_secret="s3cret",
                              redirect_uris=["http://127.0.0.1:8080/oauth2/callback"])
    idp.make_app().listen(9000, "127.0.0.1")

Endpoints, under the issuer's path: ``/.well-known/openid-configuration``,
``/jwks``, ``/authorize`` (sign-in form; authorization code flow with PKCE S256
required), ``/token`` (``authorization_code`` and rotating ``refresh_token``
grants; ``client_secret_basic`` or ``client_secret_post``), ``/userinfo`` and
``/logout`` (RP-initiated logout). Nothing else in the gateway imports this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional
from urllib.parse import unquote_plus, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.escape import xhtml_escape
from tornado.log import access_log
from tornado.web import Application, RequestHandler

CODE_TTL = 60  # seconds an authorization code stays redeemable
FORM_TTL = 600  # seconds a rendered sign-in form stays valid
REFRESH_TTL = 24 * 3600
WARNING = "Development identity provider \u2014 not for production"
_PKCE_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url(SHA-256), no padding
_AUTHORIZE_PARAMS = ("client_id", "redirect_uri", "response_type", "scope", "state",
                     "nonce", "code_challenge", "code_challenge_method")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _add_query(uri: str, params: Dict[str, str]) -> str:
    params = {k: v for k, v in params.items() if v is not None}
    return uri + ("&" if "?" in uri else "?") + urlencode(params)


def _purge(store: Dict[str, Dict[str, Any]], now: float) -> None:
    for key in [k for k, v in store.items() if v["expires"] <= now]:
        del store[key]


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f3f4f6;color:#111827;margin:0}}
main{{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:.5rem;
box-shadow:0 1px 3px rgba(0,0,0,.15)}}
h1{{font-size:1.4rem;margin-top:0}}
.dev{{background:#fef3c7;border:1px solid #b45309;color:#78350f;padding:.5rem .75rem;
border-radius:.25rem;font-size:.9rem}}
.error{{background:#fee2e2;border:1px solid #b91c1c;color:#7f1d1d;padding:.5rem .75rem;
border-radius:.25rem}}
label{{display:block;margin-top:1rem;font-weight:600}}
input[type=text],input[type=password]{{width:100%;box-sizing:border-box;padding:.5rem;
margin-top:.25rem;border:1px solid #6b7280;border-radius:.25rem;font-size:1rem}}
input:focus,button:focus{{outline:3px solid #2563eb;outline-offset:1px}}
button{{margin-top:1.5rem;width:100%;padding:.6rem;font-size:1rem;border:0;border-radius:.25rem;
background:#1d4ed8;color:#fff;cursor:pointer}}
</style></head>
<body><main>
<p class="dev" role="note"><strong>{warning}</strong></p>
<h1>{title}</h1>
{body}
</main></body></html>
"""


class DevIdentityProvider:
    """An in-memory OpenID Connect provider with one client. Development only."""

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        client_secret: str,
        redirect_uris: List[str],
        post_logout_redirect_uris: Iterable[str] = (),
        users: Optional[Dict[str, Dict[str, Any]]] = None,
        access_token_ttl: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.base_path = urlsplit(self.issuer).path.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        self.post_logout_redirect_uris = list(post_logout_redirect_uris)
        for uri in self.redirect_uris + self.post_logout_redirect_uris:
            if "#" in uri or urlsplit(uri).scheme not in ("http", "https"):
                raise ValueError(f"redirect URI must be absolute http(s) without fragment: {uri}")
        if users is None:
            users = {"demo": {"password": self.generate_password(), "sub": "demo",
                              "email": "demo@example.com", "name": "Demo User",
                              "groups": ["demo"], "preferred_username": "demo"}}
        if not users:
            raise ValueError("at least one user is required")
        self.users = users
        self.access_token_ttl = access_token_ttl
        self.clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self._forms: Dict[str, Dict[str, Any]] = {}  # form token -> authorize params
        self._codes: Dict[str, Dict[str, Any]] = {}  # code -> grant
        self._refresh: Dict[str, Dict[str, Any]] = {}  # refresh token -> grant

    @staticmethod
    def generate_password() -> str:
        return secrets.token_urlsafe(12)

    def url(self, path: str) -> str:
        return self.issuer + path

    def make_app(self) -> Application:
        handlers = [
            ("/.well-known/openid-configuration", DiscoveryHandler),
            ("/jwks", JWKSHandler),
            ("/authorize", AuthorizeHandler),
            ("/token", TokenHandler),
            ("/userinfo", UserInfoHandler),
            ("/logout", LogoutHandler),
        ]
        return Application([(re.escape(self.base_path + p), h, {"idp": self}) for p, h in handlers],
                           log_function=log_without_query)

    # -- documents -------------------------------------------------------------------

    def discovery(self) -> Dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "jwks_uri": self.url("/jwks"),
            "userinfo_endpoint": self.url("/userinfo"),
            "end_session_endpoint": self.url("/logout"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp",
                                 "email", "email_verified", "name", "preferred_username", "groups"],
            "authorization_response_iss_parameter_supported": True,
        }

    def jwks(self) -> Dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    # -- authorization ---------------------------------------------------------------

    def check_password(self, username: str, password: str) -> Optional[str]:
        user = self.users.get(username)
        expected = str(user["password"]) if user else secrets.token_urlsafe(12)
        return username if _same(password, expected) and user else None

    def new_form(self, params: Dict[str, str]) -> str:
        now = self.clock()
        _purge(self._forms, now)
        token = secrets.token_urlsafe(32)
        self._forms[token] = {"params": dict(params), "expires": now + FORM_TTL}
        return token

    def take_form(self, token: str) -> Optional[Dict[str, str]]:
        _purge(self._forms, self.clock())
        entry = self._forms.pop(token, None)
        return entry["params"] if entry else None

    def issue_code(self, params: Dict[str, str], username: str) -> str:
        now = self.clock()
        _purge(self._codes, now)
        code = secrets.token_urlsafe(32)
        self._codes[code] = {"params": params, "username": username, "auth_time": int(now),
                             "expires": now + CODE_TTL}
        return code

    # -- tokens ----------------------------------------------------------------------

    def _sign(self, claims: Dict[str, Any], typ: str = "JWT") -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": typ})

    def issue_tokens(self, username: str, scope: str, auth_time: int,
                     nonce: Optional[str] = None) -> Dict[str, Any]:
        user, now = self.users[username], int(self.clock())
        profile = {"email": user.get("email"), "groups": list(user.get("groups", [])),
                   "preferred_username": user.get("preferred_username", username)}
        base = {"iss": self.issuer, "sub": str(user.get("sub", username)), "aud": self.client_id,
                "iat": now, "exp": now + self.access_token_ttl}
        access = self._sign({**base, **profile, "client_id": self.client_id, "scope": scope,
                             "jti": secrets.token_urlsafe(16)}, typ="at+jwt")
        id_claims = {**base, **profile, "azp": self.client_id, "auth_time": auth_time,
                     "email_verified": bool(user.get("email")), "name": user.get("name", username),
                     "at_hash": _b64url(hashlib.sha256(access.encode("ascii")).digest()[:16])}
        if nonce:
            id_claims["nonce"] = nonce
        _purge(self._refresh, now)
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = {"username": username, "scope": scope, "auth_time": auth_time,
                                  "expires": now + REFRESH_TTL}
        return {"access_token": access, "id_token": self._sign(id_claims), "refresh_token": refresh,
                "token_type": "Bearer", "expires_in": self.access_token_ttl, "scope": scope}

    def verify(self, token: str, *, check_exp: bool = True) -> Dict[str, Any]:
        """Verify a token this provider signed; raises ``jwt.InvalidTokenError``."""
        claims = jwt.decode(token, self._key.public_key(), algorithms=["RS256"],
                            audience=self.client_id, issuer=self.issuer,
                            options={"verify_exp": False, "verify_iat": False,
                                     "require": ["exp", "iss", "aud", "sub"]})
        if check_exp and claims["exp"] <= self.clock():
            raise jwt.ExpiredSignatureError("token expired")
        return claims

    def user_for_sub(self, sub: str) -> Optional[str]:
        for name, user in self.users.items():
            if str(user.get("sub", name)) == sub:
                return name
        return None


class _Handler(RequestHandler):
    def initialize(self, idp: DevIdentityProvider) -> None:
        self.idp = idp

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        self.finish(_PAGE.format(title=xhtml_escape(title), warning=xhtml_escape(WARNING), body=body))

    def message(self, title: str, text: str, status: int = 200) -> None:
        self.page(title, f"<p>{xhtml_escape(text)}</p>", status)

    def json(self, doc: Dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(doc))

    def param(self, name: str) -> str:
        values = self.get_arguments(name, strip=False)
        if len(values) > 1:
            raise ValueError(f"{name} given more than once")
        return values[0] if values else ""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.message("Error", f"HTTP {status_code}: {self._reason}", status_code)


class DiscoveryHandler(_Handler):
    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=60")
        self.json(self.idp.discovery())


class JWKSHandler(_Handler):
    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=60")
        self.json(self.idp.jwks())


class AuthorizeHandler(_Handler):
    def get(self) -> None:
        try:
            params = {name: self.param(name) for name in _AUTHORIZE_PARAMS}
        except ValueError as exc:
            return self.message("Invalid request", str(exc), 400)
        if not params["client_id"] or not _same(params["client_id"], self.idp.client_id):
            return self.message("Invalid request", "Unknown client_id.", 400)
        if params["redirect_uri"] not in self.idp.redirect_uris:
            return self.message("Invalid request", "redirect_uri is not registered for this client.", 400)
        error = self.validate(params)
        if error:
            return self.redirect_back(params, {"error": error[0], "error_description": error[1]})
        if self.get_argument("prompt", "") == "none":
            return self.redirect_back(params, {"error": "login_required",
                                               "error_description": "no session at this provider"})
        self.render_form(params, username=next(iter(self.idp.users)))

    def post(self) -> None:
        stored = self.idp.take_form(self.get_body_argument("form_token", ""))
        posted = {name: self.get_body_argument(name, "", strip=False) for name in _AUTHORIZE_PARAMS}
        if stored is None or stored != posted:
            return self.message("Sign-in expired",
                                "This sign-in form has expired or was altered. Go back to the "
                                "application and start again.", 400)
        username = self.get_body_argument("username", "")
        if self.idp.check_password(username, self.get_body_argument("password", "", strip=False)) is None:
            return self.render_form(stored, username=username, error="Wrong username or password.")
        code = self.idp.issue_code(stored, username)
        self.redirect_back(stored, {"code": code})

    def validate(self, params: Dict[str, str]) -> Optional[tuple]:
        if params["response_type"] != "code":
            return "unsupported_response_type", "only response_type=code is supported"
        if "openid" not in params["scope"].split():
            return "invalid_scope", "scope must contain openid"
        if not params["code_challenge"]:
            return "invalid_request", "PKCE is required: send code_challenge (S256)"
        if params["code_challenge_method"] != "S256":
            return "invalid_request", "code_challenge_method must be S256"
        if not _CHALLENGE_RE.match(params["code_challenge"]):
            return "invalid_request", "malformed code_challenge"
        return None

    def redirect_back(self, params: Dict[str, str], extra: Dict[str, str]) -> None:
        extra = {**extra, "state": params["state"] or None, "iss": self.idp.issuer}
        self.redirect(_add_query(params["redirect_uri"], extra))

    def render_form(self, params: Dict[str, str], username: str, error: str = "") -> None:
        e = xhtml_escape
        hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">\n'
                         for k, v in params.items())
        hidden += f'<input type="hidden" name="form_token" value="{e(self.idp.new_form(params))}">\n'
        alert = f'<p class="error" role="alert" id="err">{e(error)}</p>\n' if error else ""
        described = ' aria-describedby="err"' if error else ""
        body = (
            f"{alert}<p>Sign in to continue to <strong>{e(params['client_id'])}</strong>.</p>\n"
            f'<form method="post" action="{e(self.idp.base_path + "/authorize")}">\n{hidden}'
            f'<label for="username">Username</label>\n'
            f'<input type="text" id="username" name="username" value="{e(username)}" '
            f'autocomplete="username" required{described}>\n'
            f'<label for="password">Password</label>\n'
            f'<input type="password" id="password" name="password" autocomplete="current-password" '
            f"required autofocus{described}>\n"
            f'<button type="submit">Sign in</button>\n</form>'
        )
        self.page("Sign in", body)


class TokenHandler(_Handler):
    def error(self, code: str, description: str, status: int = 400) -> None:
        if status == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="devidp"')
        self.json({"error": code, "error_description": description}, status)

    def authenticate(self) -> Optional[str]:
        """The client_id when the client authenticated correctly, else ``None``."""
        header = self.request.headers.get("Authorization", "")
        post_id = self.get_body_argument("client_id", None)
        post_secret = self.get_body_argument("client_secret", None)
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic" or post_secret is not None:
                return None
            try:
                raw_id, sep, raw_secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if not sep:
                return None
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if post_id is not None and post_id != client_id:
                return None
        elif post_id is not None and post_secret is not None:
            client_id, secret = post_id, post_secret
        else:
            return None
        ok_id = _same(client_id, self.idp.client_id)
        ok_secret = _same(secret, self.idp.client_secret)
        return client_id if ok_id and ok_secret else None

    def post(self) -> None:
        self.set_header("Pragma", "no-cache")
        if self.authenticate() is None:
            return self.error("invalid_client", "client authentication failed", 401)
        grant_type = self.get_body_argument("grant_type", "")
        if grant_type == "authorization_code":
            return self.authorization_code()
        if grant_type == "refresh_token":
            return self.refresh_token()
        self.error("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")

    def authorization_code(self) -> None:
        grant = self.idp._codes.pop(self.get_body_argument("code", ""), None)  # single use
        if grant is None or grant["expires"] <= self.idp.clock():
            return self.error("invalid_grant", "unknown, expired or already used code")
        params = grant["params"]
        if self.get_body_argument("redirect_uri", "", strip=False) != params["redirect_uri"]:
            return self.error("invalid_grant", "redirect_uri does not match the authorization request")
        verifier = self.get_body_argument("code_verifier", "", strip=False)
        if not _PKCE_RE.match(verifier):
            return self.error("invalid_grant", "missing or malformed code_verifier")
        challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        if not _same(challenge, params["code_challenge"]):
            return self.error("invalid_grant", "code_verifier does not match code_challenge")
        self.json(self.idp.issue_tokens(grant["username"], params["scope"], grant["auth_time"],
                                        nonce=params["nonce"] or None))

    def refresh_token(self) -> None:
        grant = self.idp._refresh.pop(self.get_body_argument("refresh_token", ""), None)  # rotation
        if grant is None or grant["expires"] <= self.idp.clock() or grant["username"] not in self.idp.users:
            return self.error("invalid_grant", "unknown, expired or already used refresh token")
        scope = self.get_body_argument("scope", "") or grant["scope"]
        if not set(scope.split()) <= set(grant["scope"].split()):
            return self.error("invalid_scope", "scope exceeds the original grant")
        self.json(self.idp.issue_tokens(grant["username"], scope, grant["auth_time"]))


class UserInfoHandler(_Handler):
    def get(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise jwt.InvalidTokenError("no bearer token")
            claims = self.idp.verify(token.strip())
        except jwt.InvalidTokenError:
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            return self.json({"error": "invalid_token", "error_description": "bad or expired token"}, 401)
        username = self.idp.user_for_sub(claims["sub"])
        if username is None:
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            return self.json({"error": "invalid_token", "error_description": "unknown user"}, 401)
        user = self.idp.users[username]
        self.json({"sub": claims["sub"], "email": user.get("email"),
                   "email_verified": bool(user.get("email")), "name": user.get("name", username),
                   "preferred_username": user.get("preferred_username", username),
                   "groups": list(user.get("groups", []))})

    post = get


class LogoutHandler(_Handler):
    def get(self) -> None:
        hint = self.get_argument("id_token_hint", "")
        target = self.get_argument("post_logout_redirect_uri", "")
        if hint:
            try:
                claims = self.idp.verify(hint, check_exp=False)
            except jwt.InvalidTokenError:
                return self.message("Sign-out failed", "id_token_hint was not issued here.", 400)
            username = self.idp.user_for_sub(claims["sub"])  # sign-out ends its refresh tokens
            for token in [t for t, g in self.idp._refresh.items() if g["username"] == username]:
                del self.idp._refresh[token]
        if target:
            if target not in self.idp.post_logout_redirect_uris:
                return self.message("Sign-out", "post_logout_redirect_uri is not registered.", 400)
            state = self.get_argument("state", "")
            return self.redirect(_add_query(target, {"state": state}) if state else target)
        self.message("Signed out", "You are signed out. You can close this window.")


def log_without_query(handler: RequestHandler) -> None:
    """Tornado's access log without the query string: it carries codes, states and id_token_hint."""
    status = handler.get_status()
    if status < 400:
        return
    request = handler.request
    log = access_log.warning if status < 500 else access_log.error
    log("%d %s %s (%s)", status, request.method, request.path, request.remote_ip)
