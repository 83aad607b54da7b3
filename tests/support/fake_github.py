"""A loopback emulation of GitHub (Enterprise Server layout): OAuth app web flow and REST API.

Run it through :func:`start_fake_github`::

    from tests.support.fake_github import start_fake_github, github_user, github_sign_in

    with start_fake_github(
        tmp_path,
        clients={"gateway": ("s3cret", ["http://127.0.0.1:8080/oauth2/callback"])},
        users=[github_user("alice", "alice-pw", orgs=["acme"], teams=["acme/ops"])],
    ) as gh:
        gh.base_url        # http://127.0.0.1:PORT  (the github preset's base_url)
        gh.authorize_url   # {base}/login/oauth/authorize
        gh.token_url       # {base}/login/oauth/access_token
        gh.api_url         # {base}/api/v3
        gh.revoke(login="alice"); gh.stats(); gh.advance_clock(601)

Web flow, as GitHub documents it ("Authorizing OAuth apps"):

* ``GET /login/oauth/authorize`` takes client_id, redirect_uri, scope (space or comma
  separated), state, login, allow_signup, prompt, code_challenge + code_challenge_method
  (``S256`` only). Unknown client: a 404 page. A redirect_uri that breaks GitHub's rule
  (same host or a sub-domain of it, same port, a path at or below the callback's; any port
  for a loopback callback) redirects to the registered callback with
  ``error=redirect_uri_mismatch``; ``prompt`` is accepted and ignored. Without a session it redirects to ``/login`` (fields
  ``#login_field``, ``#password``, submit ``input[name=commit]``), then shows the
  authorization page (``button#js-oauth-authorize-btn``, name ``authorize`` value ``1``;
  cancel is ``button#js-oauth-cancel-btn``, value ``0`` → ``error=access_denied``). A
  signed-in user who already granted the scopes is redirected straight back, as on GitHub;
  without a ``scope`` parameter the token gets the scopes granted before (none at first),
  with one it gets exactly those.
* ``POST /login/oauth/access_token``: client_id/client_secret in the body or HTTP Basic,
  code (single use, 10 minutes), redirect_uri, code_verifier. Answers HTTP 200 always,
  ``application/x-www-form-urlencoded`` unless ``Accept`` asks for JSON or XML; errors carry
  error / error_description / error_uri (incorrect_client_credentials, redirect_uri_mismatch,
  bad_verification_code, bad_refresh_token, unsupported_grant_type). With the
  ``expiring_tokens`` option (or the ``offline_access`` scope) it adds expires_in,
  refresh_token, refresh_token_expires_in, and takes ``grant_type=refresh_token``
  (refresh tokens rotate: each one works once).

REST API under ``/api/v3``: see tests/support/fake_github_api.py (``/user``,
``/user/emails``, ``/user/orgs``, ``/user/teams``, GitHub's scopes, errors and Link pagination).

Counters (``stats()``): authorize, login_page, sign_in, sign_in_failed, consent_page,
authorize_approved, authorize_denied, authorize_error:<error>, codes_issued,
token_requests, token_ok, token_error:<error> (token_error:pkce too when the verifier was
wrong or missing), refresh_ok, pkce_verified, client_auth:basic, client_auth:post,
api:<path>, api_authenticated, api_400, api_401, api_403, api_404.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import secrets
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence
from xml.sax.saxutils import escape as xml_escape

from tornado import web

from tests.support.fake_github_api import DOCS, ApiHandler
from tests.support.fake_oauth_base import (
    OPENER, BaseHandler, EmulatorProcess, FormClient, hidden_fields, State, add_query, admin_routes, basic_credentials,
    hidden_inputs, new_token, page, pkce_matches, serve, valid_challenge,
)

TOKEN_ERRORS_URI = f"{DOCS}/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/"
AUTHZ_ERRORS_URI = f"{DOCS}/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/"
TOKEN_ERRORS = {
    "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
    "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for this application.",
    "bad_verification_code": "The code passed is incorrect or expired.",
    "bad_refresh_token": "The refresh token passed is incorrect or expired.",
    "unsupported_grant_type": "The grant type is not supported.",
}
API_VERSIONS = ["2022-11-28", "2026-03-10"]
DEFAULT_OPTIONS: dict[str, Any] = {
    "code_ttl": 600,
    "expiring_tokens": False,
    "access_token_ttl": 28800,
    "refresh_token_ttl": 15897600,
    "default_per_page": 30,
    "max_per_page": 100,
    "require_user_agent": True,
    "api_versions": API_VERSIONS,
    "enterprise_version": "3.14.0",
}
LOOPBACK_NAMES = {"localhost"}


# -- configuration helpers (test side) -----------------------------------------


def _stable_id(text: str, base: int) -> int:
    return base + zlib.crc32(text.encode()) % 900_000


def github_user(
    login: str,
    password: str,
    *,
    id: Optional[int] = None,
    name: Optional[str] = None,
    emails: Optional[Sequence[Any]] = None,
    public_email: Optional[str] = None,
    orgs: Sequence[Any] = (),
    teams: Sequence[Any] = (),
    company: Optional[str] = None,
    location: Optional[str] = None,
) -> dict[str, Any]:
    """A user record. ``emails``: addresses (the first one primary, all verified and
    private) or dicts {email, primary, verified, visibility}; default ``login@example.test``.
    ``public_email`` is the profile's public email (``/user`` ``email``; null by default).
    ``orgs``: logins or dicts {login, id, description}; ``teams``: ``"org/slug"`` or dicts
    {org, slug, name, id}; a team's organisation is added to ``orgs`` when missing."""
    mails = []
    for i, e in enumerate(emails if emails is not None else [f"{login}@example.test"]):
        if isinstance(e, str):
            e = {"email": e, "primary": i == 0, "verified": True, "visibility": "private" if i == 0 else None}
        mails.append({"email": e["email"], "primary": bool(e.get("primary", False)),
                      "verified": bool(e.get("verified", True)), "visibility": e.get("visibility")})
    org_list = [o if isinstance(o, dict) else {"login": o} for o in orgs]
    team_list = []
    for t in teams:
        if isinstance(t, str):
            org, _, slug = t.partition("/")
            t = {"org": org, "slug": slug}
        team_list.append({"org": t["org"], "slug": t["slug"], "name": t.get("name", t["slug"]),
                          "id": t.get("id", _stable_id(f"{t['org']}/{t['slug']}", 1_000_000))})
        if all(o["login"] != t["org"] for o in org_list):
            org_list.append({"login": t["org"]})
    for o in org_list:
        o.setdefault("id", _stable_id(o["login"], 100_000))
        o.setdefault("description", None)
    return {
        "login": login, "password": password, "id": id if id is not None else _stable_id(login, 1000),
        "name": name if name is not None else login.capitalize(), "emails": mails, "public_email": public_email,
        "orgs": org_list, "teams": team_list, "company": company, "location": location,
    }


# -- server ----------------------------------------------------------------------


def _split_scopes(raw: str) -> list[str]:
    out: list[str] = []
    for s in raw.replace(",", " ").split():
        if s not in out:
            out.append(s)
    return out


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_allowed(callback: str, redirect: str) -> bool:
    """GitHub's documented rule: same scheme; the host equal to the callback's or one of
    its sub-domains; the same port (any port for a loopback callback); the path equal to
    the callback's or below it."""
    c, r = urllib.parse.urlsplit(callback), urllib.parse.urlsplit(redirect)
    if r.scheme != c.scheme or not r.hostname or r.username or r.password or r.fragment:
        return False
    ch, rh = (c.hostname or "").lower(), r.hostname.lower()
    if not (rh == ch or rh.endswith("." + ch)):
        return False
    try:
        rport = r.port
    except ValueError:
        return False
    if not (_is_loopback(ch) and rh == ch) and (rport or 0) != (c.port or 0):
        return False
    cpath, rpath = c.path or "/", r.path or "/"
    return rpath == cpath or rpath.startswith(cpath if cpath.endswith("/") else cpath + "/")


class GitHubState(State):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.options = {**DEFAULT_OPTIONS, **config.get("options", {})}
        self.clients: dict[str, dict[str, Any]] = config["clients"]
        self.users: dict[str, dict[str, Any]] = {u["login"]: u for u in config["users"]}
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, str] = {}
        self.grants: dict[tuple[str, str], list[str]] = {}

    def revoke(self, token: Optional[str], login: Optional[str]) -> int:
        n = 0
        for store in (self.tokens, self.refresh_tokens):
            for key in [k for k, v in store.items() if k == token or (login and v["login"] == login)]:
                del store[key]
                n += 1
        if login:
            for key in [k for k in self.grants if k[0] == login]:
                del self.grants[key]
        return n


class _GitHub(BaseHandler):
    state: GitHubState

    @property
    def base(self) -> str:
        return f"{self.request.protocol}://{self.request.host}"

    def html_page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page(title, body))

    def session_user(self) -> Optional[dict[str, Any]]:
        login = self.state.sessions.get(self.get_cookie("user_session") or "")
        return self.state.users.get(login) if login else None

    def csrf_token(self) -> str:
        token = self.get_cookie("_gh_sess")
        if not token:
            token = secrets.token_urlsafe(16)
            self.set_cookie("_gh_sess", token, path="/", httponly=True, samesite="Lax")
        return token

    def csrf_ok(self) -> bool:
        sent, cookie = self.get_body_argument("authenticity_token", ""), self.get_cookie("_gh_sess") or ""
        return bool(cookie) and secrets.compare_digest(sent, cookie)


class AuthorizeHandler(_GitHub):
    def check(self, args: dict[str, str]) -> Optional[dict[str, Any]]:
        """Validate an authorization request; answers (page or error redirect) when invalid."""
        client = self.state.clients.get(args.get("client_id", ""))
        if client is None:
            self.state.count("authorize_error:unknown_client")
            self.html_page("Page not found", "<h1>404</h1><p>This is not the web page you are looking for.</p>", 404)
            return None
        callbacks = client["callback_urls"]
        redirect_uri = args.get("redirect_uri") or ""
        state = args.get("state")
        if redirect_uri and not any(redirect_allowed(c, redirect_uri) for c in callbacks):
            self.error_redirect(callbacks[0], "redirect_uri_mismatch", TOKEN_ERRORS["redirect_uri_mismatch"],
                                "redirect-uri-mismatch", state)
            return None
        target = redirect_uri or callbacks[0]
        challenge, method = args.get("code_challenge", ""), args.get("code_challenge_method", "")
        if (challenge or method) and (method != "S256" or not valid_challenge(challenge)):
            self.error_redirect(target, "invalid_request",
                                "code_challenge must be 43 characters and code_challenge_method must be S256.",
                                "", state)
            return None
        scopes = _split_scopes(args.get("scope", ""))
        return {"client_id": args["client_id"], "redirect_uri": redirect_uri or None, "target": target,
                "scopes": [s for s in scopes if s != "offline_access"], "offline": "offline_access" in scopes,
                "scope_given": "scope" in args, "state": state, "challenge": challenge or None}

    def error_redirect(self, url: str, error: str, description: str, anchor: str, state: Optional[str]) -> None:
        self.state.count(f"authorize_error:{error}")
        params = {"error": error, "error_description": description}
        if anchor:
            params["error_uri"] = AUTHZ_ERRORS_URI + "#" + anchor
        if state is not None:
            params["state"] = state
        self.redirect(add_query(url, params))

    def grant_code(self, req: dict[str, Any], user: dict[str, Any], scopes: list[str]) -> None:
        code = secrets.token_hex(10)
        self.state.codes[code] = {**req, "login": user["login"], "scopes": scopes,
                                  "expires_at": self.state.now() + self.state.options["code_ttl"]}
        self.state.count("codes_issued")
        params = {"code": code}
        if req["state"] is not None:
            params["state"] = req["state"]
        self.redirect(add_query(req["target"], params))

    def args(self) -> dict[str, str]:
        return {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}

    def get(self) -> None:
        self.state.count("authorize")
        args = self.args()
        req = self.check(args)
        if req is None:
            return
        user = self.session_user()
        if user is None:
            login_url = "/login?" + urllib.parse.urlencode({"client_id": req["client_id"], "return_to": self.request.uri})
            self.redirect(login_url)
            return
        granted = self.state.grants.get((user["login"], req["client_id"]))
        scopes = req["scopes"] if req["scope_given"] else list(granted or [])
        if granted is not None and set(scopes) <= set(granted):
            self.state.count("authorize_approved")
            self.grant_code(req, user, scopes)
            return
        self.consent_page(args, req, user)

    def consent_page(self, args: dict[str, str], req: dict[str, Any], user: dict[str, Any]) -> None:
        self.state.count("consent_page")
        client = html.escape(req["client_id"])
        scopes = "".join(f"<li>{html.escape(s)}</li>" for s in req["scopes"]) or "<li>(no scope)</li>"
        self.html_page("Authorize application", (
            f"<h1>Authorize {client}</h1><p>Signed in as <strong id=\"signed-in-as\">"
            f"{html.escape(user['login'])}</strong></p><ul id=\"scopes\">{scopes}</ul>"
            "<form method=\"post\" action=\"/login/oauth/authorize\">"
            f"{hidden_inputs({**args, 'authenticity_token': self.csrf_token()})}"
            "<button type=\"submit\" name=\"authorize\" value=\"0\" id=\"js-oauth-cancel-btn\">Cancel</button>"
            "<button type=\"submit\" name=\"authorize\" value=\"1\" id=\"js-oauth-authorize-btn\">"
            f"Authorize {client}</button></form>"))

    def post(self) -> None:
        args = {k: v for k, v in self.body_params().items() if k not in ("authorize", "authenticity_token")}
        user = self.session_user()
        if user is None or not self.csrf_ok():
            self.html_page("Forbidden", "<p>Your session has expired. Please try again.</p>", 422)
            return
        req = self.check(args)
        if req is None:
            return
        if self.get_body_argument("authorize", "") != "1":
            self.state.count("authorize_denied")
            self.error_redirect(req["target"], "access_denied", "The user has denied your application access.",
                                "access-denied", req["state"])
            return
        self.state.count("authorize_approved")
        scopes = req["scopes"]
        key = (user["login"], req["client_id"])
        self.state.grants[key] = list(dict.fromkeys((self.state.grants.get(key) or []) + scopes))
        self.grant_code(req, user, scopes)


class LoginHandler(_GitHub):
    def form(self, login: str, return_to: str, client_id: str, error: str = "") -> None:
        client = self.state.clients.get(client_id)
        signup = ""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(return_to).query)
        if client is not None and query.get("allow_signup", ["true"])[-1] != "false":
            signup = '<p id="signup">New to GitHub? <a href="/signup">Create an account</a></p>'
        flash = f'<div class="flash-error" role="alert">{html.escape(error)}</div>' if error else ""
        self.html_page("Sign in to GitHub", (
            f"<h1>Sign in to GitHub</h1>{flash}<form method=\"post\" action=\"/session\">"
            f"{hidden_inputs({'authenticity_token': self.csrf_token(), 'return_to': return_to})}"
            "<label for=\"login_field\">Username or email address</label>"
            f"<input type=\"text\" name=\"login\" id=\"login_field\" value=\"{html.escape(login)}\" autofocus>"
            "<label for=\"password\">Password</label>"
            "<input type=\"password\" name=\"password\" id=\"password\">"
            "<input type=\"submit\" name=\"commit\" value=\"Sign in\"></form>" + signup))

    def get(self) -> None:
        self.state.count("login_page")
        return_to = self.get_argument("return_to", "/")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(return_to).query)
        self.form(query.get("login", [""])[-1], return_to, self.get_argument("client_id", ""))


class SessionHandler(LoginHandler):
    def post(self) -> None:
        params = self.body_params()
        return_to = params.get("return_to", "/")
        if not return_to.startswith("/") or return_to.startswith("//"):
            return_to = "/"
        login = params.get("login", "")
        user = self.state.users.get(login) or next(
            (u for u in self.state.users.values() if any(e["email"] == login for e in u["emails"])), None)
        if not self.csrf_ok():
            self.html_page("Forbidden", "<p>Your session has expired. Please try again.</p>", 422)
            return
        if user is None or not secrets.compare_digest(user["password"], params.get("password", "")):
            self.state.count("sign_in_failed")
            client_id = urllib.parse.parse_qs(urllib.parse.urlsplit(return_to).query).get("client_id", [""])[-1]
            self.form(login, return_to, client_id, "Incorrect username or password.")
            return
        self.state.count("sign_in")
        sid = secrets.token_urlsafe(24)
        self.state.sessions[sid] = user["login"]
        self.set_cookie("user_session", sid, path="/", httponly=True, samesite="Lax")
        self.redirect(return_to)


class AccessTokenHandler(_GitHub):
    def answer(self, fields: dict[str, Any]) -> None:
        accept = self.request.headers.get("Accept", "").lower()
        if "application/json" in accept:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps(fields))
        elif "xml" in accept:
            self.set_header("Content-Type", "application/xml; charset=utf-8")
            inner = "".join(f"<{k}>{xml_escape(str(v))}</{k}>" for k, v in fields.items())
            self.finish(f"<OAuth>{inner}</OAuth>")
        else:
            self.set_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            self.finish(urllib.parse.urlencode({k: str(v) for k, v in fields.items()}))

    def fail(self, error: str, anchor: str = "") -> None:
        self.state.count(f"token_error:{error}")
        self.answer({"error": error, "error_description": TOKEN_ERRORS[error],
                     "error_uri": TOKEN_ERRORS_URI + "#" + (anchor or error.replace("_", "-"))})

    def post(self) -> None:
        st = self.state
        st.count("token_requests")
        params = self.body_params()
        basic = basic_credentials(self.request.headers.get("Authorization", ""))
        if basic is not None:
            st.count("client_auth:basic")
            client_id, secret = basic
        else:
            if "client_secret" in params:
                st.count("client_auth:post")
            client_id, secret = params.get("client_id", ""), params.get("client_secret", "")
        client = st.clients.get(client_id)
        if client is None or not secrets.compare_digest(client["secret"].encode(), secret.encode()):
            self.fail("incorrect_client_credentials")
            return
        grant = params.get("grant_type", "authorization_code")
        if grant == "refresh_token":
            self.refresh(client_id, params.get("refresh_token", ""))
        elif grant == "authorization_code":
            self.exchange(client_id, client, params)
        else:
            self.fail("unsupported_grant_type")

    def exchange(self, client_id: str, client: dict[str, Any], params: dict[str, str]) -> None:
        st = self.state
        code = st.codes.get(params.get("code", ""))
        if code is None or code["client_id"] != client_id:
            self.fail("bad_verification_code")
            return
        del st.codes[params["code"]]  # single use, whatever happens next
        if code["expires_at"] < st.now():
            self.fail("bad_verification_code")
            return
        redirect_uri = params.get("redirect_uri")
        if redirect_uri:
            ok = (redirect_uri == code["redirect_uri"]) if code["redirect_uri"] else any(
                redirect_allowed(c, redirect_uri) for c in client["callback_urls"])
            if not ok:
                self.fail("redirect_uri_mismatch", "redirect-uri-mismatch2")
                return
        if code["challenge"]:
            if not pkce_matches(code["challenge"], params.get("code_verifier", "")):
                st.count("token_error:pkce")
                self.fail("bad_verification_code")
                return
            st.count("pkce_verified")
        self.issue(client_id, code["login"], code["scopes"], st.options["expiring_tokens"] or code["offline"])

    def refresh(self, client_id: str, refresh_token: str) -> None:
        st = self.state
        rec = st.refresh_tokens.get(refresh_token)
        if rec is None or rec["client_id"] != client_id or rec["expires_at"] < st.now():
            self.fail("bad_refresh_token")
            return
        del st.refresh_tokens[refresh_token]
        st.count("refresh_ok")
        self.issue(client_id, rec["login"], rec["scopes"], True)

    def issue(self, client_id: str, login: str, scopes: list[str], expiring: bool) -> None:
        st, opts = self.state, self.state.options
        token = new_token("ghu_" if expiring else "gho_", 27)
        st.tokens[token] = {"login": login, "client_id": client_id, "scopes": scopes,
                            "expires_at": st.now() + opts["access_token_ttl"] if expiring else None}
        fields: dict[str, Any] = {"access_token": token}
        if expiring:
            refresh = new_token("ghr_", 57)
            st.refresh_tokens[refresh] = {"login": login, "client_id": client_id, "scopes": scopes,
                                          "expires_at": st.now() + opts["refresh_token_ttl"]}
            fields.update(expires_in=int(opts["access_token_ttl"]), refresh_token=refresh,
                          refresh_token_expires_in=int(opts["refresh_token_ttl"]))
        fields.update(scope=",".join(scopes), token_type="bearer")
        st.count("token_ok")
        self.answer(fields)


# -- admin hooks -------------------------------------------------------------------


class _Revoke(_GitHub):
    def post(self) -> None:
        n = self.state.revoke(self.get_argument("token", None), self.get_argument("login", None))
        self.finish({"revoked": n})


class _EndSessions(_GitHub):
    def post(self) -> None:
        self.state.sessions.clear()
        self.finish({})


class _UpdateUser(_GitHub):
    def post(self) -> None:
        fields = json.loads(self.request.body)
        self.state.users[fields["login"]].update(fields)
        self.finish({})


def make_app(config: dict[str, Any]) -> web.Application:
    state = GitHubState(config)
    kw = {"state": state}
    return web.Application([
        (r"/login/oauth/authorize", AuthorizeHandler, kw),
        (r"/login/oauth/access_token", AccessTokenHandler, kw),
        (r"/login", LoginHandler, kw),
        (r"/session", SessionHandler, kw),
        (r"/api/v3/?(.*)", ApiHandler, kw),
        (r"/__test/revoke", _Revoke, kw),
        (r"/__test/end-sessions", _EndSessions, kw),
        (r"/__test/user", _UpdateUser, kw),
        *admin_routes(state),
    ])


# -- test side ----------------------------------------------------------------------------


class FakeGitHub(EmulatorProcess):
    """A running emulator. Use :func:`start_fake_github`."""

    def __init__(self, workdir: Path | str, config: dict[str, Any], **kw: Any) -> None:
        super().__init__("tests.support.fake_github", workdir, config, **kw)

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/login/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.url}/login/oauth/access_token"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v3"

    def revoke(self, token: Optional[str] = None, *, login: Optional[str] = None) -> int:
        """Revoke one token (access or refresh), or every token and grant of ``login``."""
        params = {k: v for k, v in (("token", token), ("login", login)) if v}
        return int(self.admin("POST", "revoke", params)["revoked"])

    def end_sessions(self) -> None:
        """Sign every browser out of the emulator (its ``user_session`` cookies stop working)."""
        self.admin("POST", "end-sessions")

    def update_user(self, login: str, **fields: Any) -> None:
        """Replace fields of a user at run time (e.g. ``teams=github_user(...)["teams"]``)."""
        body = json.dumps({"login": login, **fields}).encode()
        req = urllib.request.Request(f"{self.url}/__test/user", data=body, method="POST")
        with OPENER.open(req, timeout=5):
            pass

    def authorize(self, client_id: str, login: str, password: str, *, client: Optional[FormClient] = None,
                  **params: str) -> str:
        """Run the browser part of the web flow with plain HTTP (sign in, approve) and return
        the URL GitHub redirects to (with ``code``/``state`` or ``error``). ``params`` are the
        authorize query parameters (redirect_uri, scope, state, code_challenge, ...); pass the
        same ``client`` (a FormClient) again to reuse its session cookie."""
        call = (client or FormClient(self.url)).call
        status, location, text = call(f"{self.authorize_url}?" + urllib.parse.urlencode({"client_id": client_id, **params}))
        if location.startswith("/login"):
            _, _, form = call(location)
            status, location, text = call("/session", {**hidden_fields(form), "login": login,
                                                      "password": password, "commit": "Sign in"})
            if not location:
                raise AssertionError(f"sign-in refused ({status})")
            status, location, text = call(location)
        if status == 200 and "js-oauth-authorize-btn" in text:
            status, location, text = call("/login/oauth/authorize", {**hidden_fields(text), "authorize": "1"})
        if status not in (301, 302, 303) or not location:
            raise AssertionError(f"authorize did not redirect ({status}): {text[:300]}")
        return location


@contextlib.contextmanager
def start_fake_github(
    tmp_path: Path | str,
    *,
    clients: dict[str, tuple[str, Sequence[str]]],
    users: Sequence[dict[str, Any]],
    **options: Any,
) -> Iterator[FakeGitHub]:
    """Start the emulator, yield its handle, stop it by PID on exit.

    ``clients``: ``{client_id: (client_secret, [callback URLs])}`` (GitHub allows one callback
    per OAuth app; a redirect_uri matching any listed one is accepted). ``users``: records from
    :func:`github_user`. ``options``: code_ttl, expiring_tokens, access_token_ttl,
    refresh_token_ttl, default_per_page, max_per_page, require_user_agent, api_versions.
    """
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown fake_github options: {sorted(unknown)}")
    config = {
        "clients": {cid: {"secret": secret, "callback_urls": list(urls)} for cid, (secret, urls) in clients.items()},
        "users": list(users),
        "options": options,
    }
    gh = FakeGitHub(tmp_path, config)
    gh.start()
    try:
        yield gh
    finally:
        gh.stop()


def github_sign_in(page_: Any, login: str, password: str, *, authorize: bool = True) -> None:
    """Playwright: on the emulator's sign-in page, sign in; then approve (or cancel) the
    authorization page if it is shown (it is skipped for scopes granted before)."""
    if page_.locator("#login_field").count():
        page_.fill("#login_field", login)
        page_.fill("#password", password)
        page_.click("input[name=commit]")
        page_.wait_for_url(lambda url: "/session" not in url and "/login?" not in url)
    button = "#js-oauth-authorize-btn" if authorize else "#js-oauth-cancel-btn"
    if page_.locator(button).count():
        page_.click(button)


if __name__ == "__main__":
    serve(make_app, "GitHub (Enterprise Server layout) OAuth app and REST API emulator")
