"""A loopback plain OAuth 2.0 provider (RFC 6749 + RFC 7636 PKCE S256, RFC 6750 bearer):
no OpenID Connect at all (no id_token, no discovery, no JWKS).

Run it through :func:`start_fake_oauth2`::

    from tests.support.fake_oauth2 import start_fake_oauth2, oauth2_client, oauth2_user

    with start_fake_oauth2(
        tmp_path,
        clients=[oauth2_client("gateway", "s3cret", ["http://127.0.0.1:8080/oauth2/callback"])],
        users=[oauth2_user("alice", "alice-pw", id=42, email="alice@example.test", roles=["ops"])],
        access_token_ttl=5,
    ) as op:
        op.authorize_url   # {base}/authorize
        op.token_url       # {base}/token
        op.userinfo_url    # {base}/api/me
        op.revoke_user("alice"); op.set_refresh_error_mode("empty"); op.advance_clock(6)

Endpoints:

* ``GET /authorize``: response_type=code, client_id, redirect_uri (exactly a registered one;
  may be left out when the client has only one), scope, state, code_challenge +
  code_challenge_method=S256 (both required; ``plain`` refused). Unknown client or bad
  redirect_uri: a 400 page, no redirect (RFC 6749 §4.1.2.1); the other errors redirect with
  ``error`` (invalid_request, unsupported_response_type, access_denied) and ``state``. Without
  a session: a sign-in page (``#username``, ``#password``, ``#sign-in``; ``#cancel`` →
  access_denied); with one (cookie ``op_session``) straight back with a ``code``.
* ``POST /token`` (form): grant_type authorization_code (code single use, ``code_ttl``
  seconds; redirect_uri identical to the authorize request's; code_verifier) or
  refresh_token (optional narrower ``scope``; rotated unless ``rotate_refresh_tokens`` is
  off). Client authentication ``client_secret_basic`` (RFC 6749 §2.3.1: form-urlencoded id
  and secret, then base64) or ``client_secret_post``, as the client registers
  (``auth_method``: one of them or ``any``); both at once is invalid_request. JSON answers
  with ``Cache-Control: no-store``: ``{access_token, token_type: "Bearer", expires_in,
  refresh_token, scope}``; errors ``{error, error_description}`` with 400 (invalid_request,
  invalid_grant, unsupported_grant_type, unauthorized_client, invalid_scope) or 401
  (invalid_client, with ``WWW-Authenticate: Basic`` when Basic was tried). A reused code is
  refused and the tokens it gave are revoked (RFC 6749 §4.1.2). A refused refresh answers
  400 invalid_grant, or 400 with an empty body in the ``empty`` refresh error mode.
* ``GET /api/me`` (``Authorization: Bearer``): the user's profile JSON, field names as
  configured; 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` otherwise.

Counters (``stats()``): authorize, authorize_error:<error>, login_page, sign_in,
sign_in_failed, sign_in_cancelled, codes_issued, token_requests, token_ok,
token_error:<error>, refresh_ok, refresh_refused, pkce_verified,
client_auth:client_secret_basic, client_auth:client_secret_post, userinfo, userinfo_401.
"""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from tornado import web

from tests.support.fake_oauth_base import (
    OPENER, BaseHandler, EmulatorProcess, FormClient, State, add_query, admin_routes, basic_credentials,
    hidden_fields, hidden_inputs, new_token, page, pkce_matches, serve, valid_challenge,
)

DEFAULT_OPTIONS: dict[str, Any] = {
    "access_token_ttl": 3600,
    "refresh_token_ttl": 30 * 24 * 3600,
    "code_ttl": 60,
    "issue_refresh_tokens": True,
    "rotate_refresh_tokens": True,
    "refresh_error_mode": "json",
    "realm": "fake-oauth2",
}
DEFAULT_FIELDS = {"id": "id", "login": "login", "email": "mail", "name": "name", "roles": "roles"}


# -- configuration helpers (test side) -------------------------------------------


def oauth2_client(client_id: str, client_secret: str, redirect_uris: Sequence[str], *,
                  auth_method: str = "any", scopes: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """A registered client. ``auth_method``: client_secret_basic, client_secret_post or any.
    ``scopes``: the scopes it may ask for (None: any)."""
    if auth_method not in ("client_secret_basic", "client_secret_post", "any"):
        raise ValueError(auth_method)
    return {"client_id": client_id, "secret": client_secret, "redirect_uris": list(redirect_uris),
            "auth_method": auth_method, "scopes": list(scopes) if scopes is not None else None}


def _put(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[leaf] = value


def oauth2_user(login: str, password: str, *, id: Optional[int] = None, email: Optional[str] = None,
                name: Optional[str] = None, roles: Sequence[str] = (), field_names: Optional[dict[str, str]] = None,
                extra: Optional[dict[str, Any]] = None, profile: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A user. ``/api/me`` answers ``profile`` verbatim when given; otherwise it is built from
    id (default: a stable number), login, email (``login@example.test``), name and roles,
    named by ``field_names`` (default ``{"id": "id", "login": "login", "email": "mail",
    "name": "name", "roles": "roles"}``; a dotted name nests: ``"data.user.id"``; a field
    mapped to None is left out), plus ``extra``."""
    if profile is None:
        names = {**DEFAULT_FIELDS, **(field_names or {})}
        values = {"id": id if id is not None else 1000 + zlib.crc32(login.encode()) % 900_000, "login": login,
                  "email": email if email is not None else f"{login}@example.test",
                  "name": name if name is not None else login.capitalize(), "roles": list(roles)}
        profile = {}
        for key, value in values.items():
            if names.get(key):
                _put(profile, names[key], value)
        profile.update(extra or {})
    return {"login": login, "password": password, "profile": profile}


# -- server ---------------------------------------------------------------------------


class OAuth2State(State):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.options = {**DEFAULT_OPTIONS, **config.get("options", {})}
        self.clients: dict[str, dict[str, Any]] = {c["client_id"]: c for c in config["clients"]}
        self.users: dict[str, dict[str, Any]] = {u["login"]: u for u in config["users"]}
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, str] = {}
        self.fail_refreshes = 0

    def revoke_user(self, login: str) -> int:
        n = 0
        for store in (self.tokens, self.refresh_tokens):
            for key in [k for k, v in store.items() if v["login"] == login]:
                del store[key]
                n += 1
        for sid in [s for s, who in self.sessions.items() if who == login]:
            del self.sessions[sid]
        return n

    def revoke_grant(self, grant: str) -> None:
        for store in (self.tokens, self.refresh_tokens):
            for key in [k for k, v in store.items() if v["grant"] == grant]:
                del store[key]


class _OAuth2(BaseHandler):
    state: OAuth2State

    def html_page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page(title, body))


class AuthorizeHandler(_OAuth2):
    def check(self, args: dict[str, str]) -> Optional[dict[str, Any]]:
        st = self.state
        client = st.clients.get(args.get("client_id", ""))
        if client is None:
            st.count("authorize_error:invalid_client")
            self.html_page("Error", "<h1>invalid_client</h1><p>Unknown client.</p>", 400)
            return None
        redirect_uri = args.get("redirect_uri")
        if redirect_uri is None and len(client["redirect_uris"]) == 1:
            target = client["redirect_uris"][0]
        elif redirect_uri in client["redirect_uris"]:
            target = redirect_uri
        else:
            st.count("authorize_error:invalid_redirect_uri")
            self.html_page("Error", "<h1>invalid_request</h1><p>The redirect_uri is not registered.</p>", 400)
            return None
        state = args.get("state")

        def refuse(error: str, description: str) -> None:
            st.count(f"authorize_error:{error}")
            params = {"error": error, "error_description": description}
            if state is not None:
                params["state"] = state
            self.redirect(add_query(target, params))

        if args.get("response_type") != "code":
            refuse("unsupported_response_type" if args.get("response_type") else "invalid_request",
                   "response_type must be code.")
            return None
        challenge, method = args.get("code_challenge"), args.get("code_challenge_method")
        if not challenge:
            refuse("invalid_request", "code_challenge is required.")
            return None
        if method != "S256":
            refuse("invalid_request", "code_challenge_method must be S256.")
            return None
        if not valid_challenge(challenge):
            refuse("invalid_request", "code_challenge is malformed.")
            return None
        scopes = args.get("scope", "").split()
        if client["scopes"] is not None and not set(scopes) <= set(client["scopes"]):
            refuse("invalid_scope", "A requested scope is not allowed for this client.")
            return None
        return {"client_id": client["client_id"], "redirect_uri": redirect_uri, "target": target,
                "state": state, "scopes": scopes, "challenge": challenge}

    def args(self) -> dict[str, str]:
        return {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}

    def grant_code(self, req: dict[str, Any], login: str) -> None:
        st = self.state
        code = new_token("", 24)
        st.codes[code] = {**req, "login": login, "expires_at": st.now() + st.options["code_ttl"],
                          "used": False, "grant": secrets.token_hex(8)}
        st.count("codes_issued")
        params = {"code": code}
        if req["state"] is not None:
            params["state"] = req["state"]
        self.redirect(add_query(req["target"], params))

    def get(self) -> None:
        self.state.count("authorize")
        args = self.args()
        req = self.check(args)
        if req is None:
            return
        login = self.state.sessions.get(self.get_cookie("op_session") or "")
        if login in self.state.users:
            self.grant_code(req, login)
            return
        self.form(args)

    def form(self, args: dict[str, str], error: str = "") -> None:
        self.state.count("login_page")
        csrf = self.get_cookie("op_csrf") or secrets.token_urlsafe(16)
        self.set_cookie("op_csrf", csrf, path="/", httponly=True, samesite="Lax")
        flash = f'<p id="error" role="alert">{html.escape(error)}</p>' if error else ""
        self.html_page("Sign in", (
            f"<h1>Sign in</h1>{flash}<form method=\"post\" action=\"/authorize\">"
            f"{hidden_inputs({**args, 'csrf': csrf})}"
            "<label for=\"username\">Username</label><input type=\"text\" name=\"username\" id=\"username\">"
            "<label for=\"password\">Password</label><input type=\"password\" name=\"password\" id=\"password\">"
            "<button type=\"submit\" name=\"action\" value=\"login\" id=\"sign-in\">Sign in</button>"
            "<button type=\"submit\" name=\"action\" value=\"cancel\" id=\"cancel\">Cancel</button></form>"))

    def post(self) -> None:
        st = self.state
        body = self.body_params()
        args = {k: v for k, v in body.items() if k not in ("username", "password", "action", "csrf")}
        req = self.check(args)
        if req is None:
            return
        cookie = self.get_cookie("op_csrf") or ""
        if not cookie or not secrets.compare_digest(cookie, body.get("csrf", "")):
            self.html_page("Error", "<p>Session expired: start again.</p>", 400)
            return
        if body.get("action") == "cancel":
            st.count("sign_in_cancelled", "authorize_error:access_denied")
            params = {"error": "access_denied", "error_description": "The user cancelled the sign-in."}
            if req["state"] is not None:
                params["state"] = req["state"]
            self.redirect(add_query(req["target"], params))
            return
        user = st.users.get(body.get("username", ""))
        if user is None or not secrets.compare_digest(user["password"], body.get("password", "")):
            st.count("sign_in_failed")
            self.form(args, "Invalid username or password.")
            return
        st.count("sign_in")
        sid = secrets.token_urlsafe(24)
        st.sessions[sid] = user["login"]
        self.set_cookie("op_session", sid, path="/", httponly=True, samesite="Lax")
        self.grant_code(req, user["login"])


class TokenHandler(_OAuth2):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")

    def fail(self, status: int, error: str, description: str, basic_tried: bool = False) -> None:
        self.state.count(f"token_error:{error}")
        self.set_status(status)
        if status == 401 and basic_tried:
            self.set_header("WWW-Authenticate", f'Basic realm="{self.state.options["realm"]}"')
        self.finish(json.dumps({"error": error, "error_description": description}))

    def post(self) -> None:
        st = self.state
        st.count("token_requests")
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            self.fail(400, "invalid_request", "The request body must be application/x-www-form-urlencoded.")
            return
        params = self.body_params()
        basic = basic_credentials(self.request.headers.get("Authorization", ""))
        if basic is not None and ("client_secret" in params):
            self.fail(400, "invalid_request", "Use only one client authentication method.")
            return
        if basic is not None:
            method, (client_id, secret) = "client_secret_basic", basic
            if params.get("client_id", client_id) != client_id:
                self.fail(400, "invalid_request", "client_id does not match the Authorization header.")
                return
        elif "client_secret" in params:
            method, client_id, secret = "client_secret_post", params.get("client_id", ""), params["client_secret"]
        else:
            self.fail(401, "invalid_client", "Client authentication is required.")
            return
        st.count(f"client_auth:{method}")
        client = st.clients.get(client_id)
        if (client is None or client["auth_method"] not in ("any", method)
                or not secrets.compare_digest(client["secret"].encode(), secret.encode())):
            self.fail(401, "invalid_client", "Client authentication failed.", basic is not None)
            return
        grant = params.get("grant_type")
        if grant == "authorization_code":
            self.exchange(client, params)
        elif grant == "refresh_token":
            self.refresh(client, params)
        elif not grant:
            self.fail(400, "invalid_request", "grant_type is required.")
        else:
            self.fail(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}.")

    def exchange(self, client: dict[str, Any], params: dict[str, str]) -> None:
        st = self.state
        code = st.codes.get(params.get("code", ""))
        if code is None or code["client_id"] != client["client_id"]:
            self.fail(400, "invalid_grant", "The authorization code is invalid.")
            return
        if code["used"]:
            st.revoke_grant(code["grant"])
            self.fail(400, "invalid_grant", "The authorization code was already used.")
            return
        code["used"] = True
        if code["expires_at"] < st.now():
            self.fail(400, "invalid_grant", "The authorization code expired.")
            return
        if code["redirect_uri"] is not None and params.get("redirect_uri") != code["redirect_uri"]:
            self.fail(400, "invalid_grant", "redirect_uri does not match the authorization request.")
            return
        verifier = params.get("code_verifier")
        if not verifier:
            self.fail(400, "invalid_request", "code_verifier is required.")
            return
        if not pkce_matches(code["challenge"], verifier):
            self.fail(400, "invalid_grant", "code_verifier does not match the code_challenge.")
            return
        st.count("pkce_verified")
        self.issue(client["client_id"], code["login"], code["scopes"], code["grant"])

    def refresh_refused(self, description: str) -> None:
        st = self.state
        st.count("refresh_refused", "token_error:invalid_grant")
        self.set_status(400)
        if st.options["refresh_error_mode"] == "empty":
            self.clear_header("Content-Type")
            self.finish()
        else:
            self.finish(json.dumps({"error": "invalid_grant", "error_description": description}))

    def refresh(self, client: dict[str, Any], params: dict[str, str]) -> None:
        st = self.state
        token = params.get("refresh_token", "")
        rec = st.refresh_tokens.get(token)
        if st.fail_refreshes > 0:
            st.fail_refreshes -= 1
            self.refresh_refused("The refresh token is invalid.")
            return
        if (rec is None or rec["client_id"] != client["client_id"] or rec["expires_at"] < st.now()
                or rec["login"] not in st.users):
            self.refresh_refused("The refresh token is invalid, expired or revoked.")
            return
        scopes = params["scope"].split() if "scope" in params else rec["scopes"]
        if not set(scopes) <= set(rec["scopes"]):
            self.fail(400, "invalid_scope", "The requested scope exceeds the granted scope.")
            return
        st.count("refresh_ok")
        if st.options["rotate_refresh_tokens"]:
            del st.refresh_tokens[token]
            self.issue(client["client_id"], rec["login"], scopes, rec["grant"], granted=rec["scopes"])
        else:
            self.issue(client["client_id"], rec["login"], scopes, rec["grant"], keep_refresh=token)

    def issue(self, client_id: str, login: str, scopes: list[str], grant: str, *,
              granted: Optional[list[str]] = None, keep_refresh: Optional[str] = None) -> None:
        st, opts = self.state, self.state.options
        access = new_token("at_", 24)
        st.tokens[access] = {"login": login, "client_id": client_id, "scopes": scopes, "grant": grant,
                             "expires_at": st.now() + opts["access_token_ttl"]}
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": int(opts["access_token_ttl"])}
        if keep_refresh is not None:
            body["refresh_token"] = keep_refresh
        elif opts["issue_refresh_tokens"]:
            refresh = new_token("rt_", 32)
            st.refresh_tokens[refresh] = {"login": login, "client_id": client_id, "grant": grant,
                                          "scopes": granted if granted is not None else scopes,
                                          "expires_at": st.now() + opts["refresh_token_ttl"]}
            body["refresh_token"] = refresh
        body["scope"] = " ".join(scopes)
        st.count("token_ok")
        self.finish(json.dumps(body))


class UserinfoHandler(_OAuth2):
    def get(self) -> None:
        st = self.state
        st.count("userinfo")
        scheme, _, token = self.request.headers.get("Authorization", "").strip().partition(" ")
        realm = st.options["realm"]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if scheme.lower() != "bearer" or not token.strip():
            st.count("userinfo_401")
            self.set_status(401)
            self.set_header("WWW-Authenticate", f'Bearer realm="{realm}"')
            self.finish(json.dumps({"error": "invalid_request", "error_description": "A bearer token is required."}))
            return
        rec = st.tokens.get(token.strip())
        user = st.users.get(rec["login"]) if rec else None
        if rec is None or user is None or rec["expires_at"] < st.now():
            st.count("userinfo_401")
            self.set_status(401)
            self.set_header("WWW-Authenticate",
                            f'Bearer realm="{realm}", error="invalid_token", '
                            'error_description="The access token is invalid or expired"')
            self.finish(json.dumps({"error": "invalid_token", "error_description": "The access token is invalid or expired."}))
            return
        self.finish(json.dumps(user["profile"]))


class _RevokeUser(_OAuth2):
    def post(self) -> None:
        self.finish({"revoked": self.state.revoke_user(self.get_argument("login"))})


class _Options(_OAuth2):
    def post(self) -> None:
        st = self.state
        st.options.update(json.loads(self.request.body or b"{}"))
        st.fail_refreshes += int(self.get_argument("fail_refreshes", "0"))
        self.finish({})


class _UpdateUser(_OAuth2):
    def post(self) -> None:
        fields = json.loads(self.request.body)
        self.state.users[fields["login"]].update(fields)
        self.finish({})


class _EndSessions(_OAuth2):
    def post(self) -> None:
        self.state.sessions.clear()
        self.finish({})


def make_app(config: dict[str, Any]) -> web.Application:
    state = OAuth2State(config)
    kw = {"state": state}
    return web.Application([
        (r"/authorize", AuthorizeHandler, kw),
        (r"/token", TokenHandler, kw),
        (r"/api/me", UserinfoHandler, kw),
        (r"/__test/revoke-user", _RevokeUser, kw),
        (r"/__test/options", _Options, kw),
        (r"/__test/user", _UpdateUser, kw),
        (r"/__test/end-sessions", _EndSessions, kw),
        *admin_routes(state),
    ])


# -- test side ------------------------------------------------------------------------------


class FakeOAuth2(EmulatorProcess):
    """A running provider. Use :func:`start_fake_oauth2`."""

    def __init__(self, workdir: Path | str, config: dict[str, Any], **kw: Any) -> None:
        super().__init__("tests.support.fake_oauth2", workdir, config, **kw)

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def userinfo_url(self) -> str:
        return f"{self.url}/api/me"

    def _post_json(self, path: str, body: dict[str, Any], params: Optional[dict[str, Any]] = None) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        req = urllib.request.Request(f"{self.url}/__test/{path}{query}", data=json.dumps(body).encode(), method="POST")
        with OPENER.open(req, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def revoke_user(self, login: str) -> int:
        """Revoke every access and refresh token of ``login`` and end its sessions: refresh
        then answers 400 invalid_grant (or an empty 400, see :meth:`set_refresh_error_mode`)."""
        return int(self.admin("POST", "revoke-user", {"login": login})["revoked"])

    def set_refresh_error_mode(self, mode: str) -> None:
        """``"json"`` (400 with ``{"error": "invalid_grant"}``) or ``"empty"`` (400, empty body)."""
        if mode not in ("json", "empty"):
            raise ValueError(mode)
        self._post_json("options", {"refresh_error_mode": mode})

    def set_options(self, **options: Any) -> None:
        """Change options at run time (access_token_ttl, rotate_refresh_tokens, ...)."""
        self._post_json("options", options)

    def fail_next_refresh(self, count: int = 1) -> None:
        """The next ``count`` refresh_token grants are refused."""
        self._post_json("options", {}, {"fail_refreshes": count})

    def update_user(self, login: str, **fields: Any) -> None:
        """Replace fields of a user at run time (e.g. ``profile=...``)."""
        self._post_json("user", {"login": login, **fields})

    def end_sessions(self) -> None:
        self.admin("POST", "end-sessions")

    def authorize(self, client_id: str, login: str, password: str, *, client: Optional[FormClient] = None,
                  **params: str) -> str:
        """Sign in with plain HTTP and return the URL the provider redirects to (``code`` and
        ``state``, or ``error``). ``params``: the other authorize query parameters; pass the
        same ``client`` (a FormClient) again to reuse its session cookie."""
        client = client or FormClient(self.url)
        query = {"response_type": "code", "client_id": client_id, **params}
        status, location, text = client.call(f"{self.authorize_url}?" + urllib.parse.urlencode(query))
        if status == 200 and 'id="sign-in"' in text:
            status, location, text = client.call("/authorize", {**hidden_fields(text), "username": login,
                                                               "password": password, "action": "login"})
        if status not in (302, 303) or not location:
            raise AssertionError(f"authorize did not redirect ({status}): {text[:300]}")
        return location


@contextlib.contextmanager
def start_fake_oauth2(tmp_path: Path | str, *, clients: Sequence[dict[str, Any]], users: Sequence[dict[str, Any]],
                      **options: Any) -> Iterator[FakeOAuth2]:
    """Start the provider, yield its handle, stop it by PID on exit. ``clients`` from
    :func:`oauth2_client`, ``users`` from :func:`oauth2_user`; ``options``: access_token_ttl,
    refresh_token_ttl, code_ttl, issue_refresh_tokens, rotate_refresh_tokens,
    refresh_error_mode (json|empty), realm."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown fake_oauth2 options: {sorted(unknown)}")
    op = FakeOAuth2(tmp_path, {"clients": list(clients), "users": list(users), "options": options})
    op.start()
    try:
        yield op
    finally:
        op.stop()


def oauth2_sign_in(page_: Any, login: str, password: str) -> None:
    """Playwright: fill and submit the provider's sign-in page (if it is shown), then wait
    until the browser has left it (for the client's redirect_uri)."""
    if page_.locator("#username").count():
        form_url = page_.url.split("?", 1)[0]
        page_.fill("#username", login)
        page_.fill("#password", password)
        page_.click("#sign-in")
        page_.wait_for_url(lambda url: not url.startswith(form_url))


if __name__ == "__main__":
    serve(make_app, "plain OAuth 2.0 provider emulator (no OpenID Connect)")
