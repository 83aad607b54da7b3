"""Run a real Glewlwyd (Debian package ``glewlwyd`` 2.7.5) as an OpenID Connect provider for tests.

Installed by ``scripts/peers/glewlwyd.sh``. Each :class:`GlewlwydProvider` is a process of its own
on a free 127.0.0.1 port, with a configuration file, a sqlite database and a copy of the login
webapp in a temp dir; it is stopped by its PID. Nothing of the system service is used.

Set-up follows Glewlwyd's documentation (GETTING_STARTED.md, API.md, OIDC.md in
/usr/share/doc/glewlwyd): the database is created with the package's sqlite3 init script (which
ships the ``admin``/``password`` administrator and ``database`` user and client backends), then
everything else goes through the admin REST API, as the admin webapp does it: an API key for the
administrator, an extra ``groups`` user property, scopes that need the user's password, the
OpenID Connect plugin (RS256 with a key generated here, PKCE S256 allowed and required, refresh
tokens, a short access-token duration, ``name``/``email``/``groups``/``preferred_username``
claims, RFC 9207 ``iss``, RFC 8707 resources, RP-initiated logout), the confidential clients and
the users.

What Glewlwyd 2.7.5 does that the docs do not say (each is handled below, where it matters):

- the package's ``webapp/config.json`` is a symlink to a directory, and the static file server
  does not follow symlinks (the webapp's jquery, bootstrap and fonts are symlinks): copied;
- it will not start without ``secure_connection_key_file``/``_pem_file``, even when
  ``use_secure_connection = false``;
- a user backend's new property needs ``PUT /api/mod/user/{name}/reset`` before users can have it;
- ``end_session`` checks the client property ``post_logout_redirect_uris`` (plural) while the
  admin webapp writes ``post_logout_redirect_uri``; and it sends the browser back to it only when
  the request has a ``state``; its end-session prompt fails (400, blank page) unless
  ``front-channel-logout-allowed``;
- refresh-token management takes ``?impersonate=USER`` (OIDC.md says ``?username=``), with an
  administrator's session cookie (not an API key);
- a disabled user's refresh tokens keep working: :meth:`GlewlwydProvider.revoke_user` disables
  them too; a refused refresh is a 400 with an empty body;
- HTTP Basic client credentials are compared without the form-decoding RFC 6749 2.3.1 asks for;
- the login webapp always ends on a "Continue" button, even with a session and a grant.

Typical use::

    with GlewlwydProvider(tmp_path,
                          clients=[glewlwyd_client("gateway", SECRET, [gw + "/oauth2/callback"],
                                                   post_logout_redirect_uri=gw + "/")],
                          users=[glewlwyd_user("alice", "pw", groups=["ops"])],
                          access_token_ttl=3, resources=[gw + "/api"]) as idp:
        idp.issuer                      # "http://localhost:PORT/api/oidc"
        sign_in(page, "alice", "pw")    # on the login webapp the gateway sent Chromium to
        confirm_sign_out(page)          # on the end-session prompt
        idp.revoke_user("alice")        # disabled, refresh tokens disabled: the next refresh is refused

The browser reaches Glewlwyd as ``http://localhost:PORT`` and the gateway as ``127.0.0.1``, so
their cookies never mix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

GLEWLWYD = "/usr/bin/glewlwyd"
SHARE = Path("/usr/share/glewlwyd")
WEBAPP = SHARE / "webapp"
WEBAPP_CONFIG_TEMPLATE = SHARE / "templates" / "config.json"
# the sqlite3 init script the package ships (dbconfig-common runs it for the system database)
SQLITE_INIT = Path("/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3")
MODULES = Path("/usr/lib/glewlwyd")

ADMIN_USER = "admin"
ADMIN_PASSWORD = "password"  # the default the init script ships (GETTING_STARTED.md)
PLUGIN = "oidc"

# Glewlwyd's own default; its minimum is 1 s (the plugin refuses 0: "must be a non null positive
# integer"), and ID tokens get the same lifetime.
DEFAULT_ACCESS_TOKEN_TTL = 3600

# never go through a proxy, whatever the environment says
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def glewlwyd_available() -> Optional[str]:
    """None when Glewlwyd can run here, else the reason (for pytest.skip)."""
    for path in (GLEWLWYD, WEBAPP / "login.html", WEBAPP_CONFIG_TEMPLATE, SQLITE_INIT,
                 MODULES / "plugin" / "libprotocol_oidc.so"):
        if not os.path.exists(path):
            return f"{path} is missing: Glewlwyd is not installed (bash scripts/peers/glewlwyd.sh)"
    return None


def glewlwyd_user(
    username: str,
    password: str,
    *,
    email: Optional[str] = None,
    name: Optional[str] = None,
    groups: Sequence[str] = (),
    enabled: bool = True,
) -> dict[str, Any]:
    """A user as the admin API's ``POST /api/user`` takes it (``scope`` is filled in by the provider)."""
    return {
        "username": username,
        "password": password,
        "email": email if email is not None else f"{username}@example.test",
        "name": name or username.capitalize(),
        "groups": list(groups),
        "enabled": enabled,
    }


def glewlwyd_client(
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    *,
    post_logout_redirect_uri: str = "",
    token_endpoint_auth_methods: Sequence[str] = ("client_secret_basic", "client_secret_post"),
) -> dict[str, Any]:
    """A confidential client as the admin API's ``POST /api/client`` takes it."""
    return {
        "client_id": client_id,
        "name": client_id,
        "description": "the gateway under test",
        "enabled": True,
        "confidential": True,
        "client_secret": client_secret,  # stored as is (a "password" would be hashed): OIDC.md
        "redirect_uri": list(redirect_uris),
        "post_logout_redirect_uri": post_logout_redirect_uri,
        "post_logout_redirect_uris": [post_logout_redirect_uri] if post_logout_redirect_uri else [],
        "authorization_type": ["code", "refresh_token"],
        "token_endpoint_auth_method": list(token_endpoint_auth_methods),
        "scope": [],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rsa_key_pair() -> tuple[str, str]:
    """A fresh RSA 2048 key: (private key PEM, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class GlewlwydError(RuntimeError):
    pass


class GlewlwydProvider:
    """One Glewlwyd process with its own config, database and webapp. Use as a context manager."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        clients: Sequence[dict[str, Any]],
        users: Sequence[dict[str, Any]] = (),
        scopes: Sequence[str] = ("openid", "email", "profile", "groups"),
        access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL,
        refresh_token_ttl: int = 14 * 24 * 3600,
        subject_type: str = "public",
        resources: Sequence[str] = (),
        log_level: str = "INFO",
        startup_timeout: float = 15.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clients = {c["client_id"]: dict(c) for c in clients}
        self.users = [dict(u) for u in users]
        self.scopes = list(scopes)
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.subject_type = subject_type
        self.resources = list(resources)
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.config_path = self.workdir / "glewlwyd.conf"
        self.db_path = self.workdir / "glewlwyd.sqlite3"
        self.webapp_dir = self.workdir / "webapp"
        self.log_path = self.workdir / "glewlwyd.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self._api_key = ""

    # -- addresses ---------------------------------------------------------

    @property
    def url(self) -> str:
        """Where browsers and the gateway reach it (``localhost``, so cookies never mix with 127.0.0.1)."""
        return f"http://localhost:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/api/{PLUGIN}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "GlewlwydProvider":
        reason = glewlwyd_available()
        if reason:
            raise GlewlwydError(reason)
        self._create_database()
        last = ""
        for _ in range(3):  # the free port could be taken meanwhile
            self.port = _free_port()
            self._write_webapp()
            self._write_config()
            self._launch()
            try:
                self._wait_listening()
                break
            except GlewlwydError as exc:
                last = str(exc)
                self.stop()
        else:
            raise GlewlwydError(f"glewlwyd did not start: {last}")
        try:
            self._configure()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process this object started (by its PID), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> "GlewlwydProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_count(self, text: str) -> int:
        """How many lines of Glewlwyd's log contain ``text`` (e.g. "Access token generated")."""
        try:
            return sum(text in line for line in self.log_path.read_text(errors="replace").splitlines())
        except OSError:
            return 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- files -------------------------------------------------------------

    def _create_database(self) -> None:
        if self.db_path.exists():
            self.db_path.unlink()
        with sqlite3.connect(self.db_path) as db:
            db.executescript(SQLITE_INIT.read_text())

    def _write_webapp(self) -> None:
        # The package's webapp/config.json is a symlink to /etc/glewlwyd/config-2.7.json, a
        # *directory*; and Glewlwyd's static file server does not follow symlinks (the webapp's
        # jquery, bootstrap and fonts are symlinks into other Debian packages): copy the files.
        if self.webapp_dir.exists():
            shutil.rmtree(self.webapp_dir)
        shutil.copytree(WEBAPP, self.webapp_dir, symlinks=False,
                        ignore=lambda d, names: ["config.json"] if Path(d) == WEBAPP else [])
        config = json.loads(WEBAPP_CONFIG_TEMPLATE.read_text())
        config["GlewlwydUrl"] = self.url + "/"
        (self.webapp_dir / "config.json").write_text(json.dumps(config, indent=2))

    def _write_config(self) -> None:
        mime = [(".html", "text/html"), (".css", "text/css"), (".js", "application/javascript"),
                (".json", "application/json"), (".png", "image/png"), (".jpg", "image/jpeg"),
                (".ttf", "font/ttf"), (".woff", "font/woff"), (".woff2", "font/woff2"),
                (".eot", "application/vnd.ms-fontobject"), (".svg", "image/svg+xml"),
                (".map", "application/octet-stream"), (".ico", "image/x-icon")]
        mime_types = ",\n".join(f'  {{ extension = "{e}"; mime_type = "{m}"; }}' for e, m in mime)
        self.config_path.write_text(f"""\
# written by tests/support/glewlwyd_provider.py
port = {self.port}
bind_address = "127.0.0.1"
external_url = "{self.url}"
login_url = "login.html"
api_prefix = "api"
static_files_path = "{self.webapp_dir}/"
allow_origin = "{self.url}"
log_mode = "file"
log_level = "{self.log_level}"
log_file = "{self.log_path}"
cookie_secure = 0
cookie_same_site = "lax"
session_expiration = 3600
session_key = "GLEWLWYD2_SESSION_ID"
admin_session_authentication = "cookie,api_key"
profile_session_authentication = "cookie"
allow_multiple_user_per_session = false
login_api_enabled = true
add_x_frame_option_header_deny = true
admin_scope = "g_admin"
profile_scope = "g_profile"
user_module_path = "{MODULES}/user"
client_module_path = "{MODULES}/client"
user_auth_scheme_module_path = "{MODULES}/scheme"
plugin_module_path = "{MODULES}/plugin"
use_secure_connection = false
# 2.7.5 refuses to start ("secure connection is active but certificate is not valid") when
# these two are absent, even with use_secure_connection = false; they are never read then.
secure_connection_key_file = "/nonexistent/glewlwyd.key"
secure_connection_pem_file = "/nonexistent/glewlwyd.pem"
hash_algorithm = "SHA512"
database = {{
  type = "sqlite3";
  path = "{self.db_path}";
}};
static_files_mime_types = (
{mime_types}
);
""")

    def _launch(self) -> None:
        log = open(self.workdir / "glewlwyd.stdout", "ab")
        try:
            self.proc = subprocess.Popen(
                [GLEWLWYD, f"--config-file={self.config_path}"],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                out = (self.workdir / "glewlwyd.stdout").read_text(errors="replace")
                raise GlewlwydError(f"glewlwyd exited with {self.proc.returncode}:\n{out}\n{self.log_tail()}")
            try:
                status, _, _ = self._http("GET", "/config")
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise GlewlwydError("glewlwyd did not answer /config in time:\n" + self.log_tail())
            time.sleep(0.05)

    # -- HTTP --------------------------------------------------------------

    def _http(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
              timeout: float = 10.0) -> tuple[int, dict, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        data = None
        h = dict(headers or {})
        if body is not None:
            if isinstance(body, (bytes, str)):
                data = body.encode() if isinstance(body, str) else body
            else:
                data = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def admin(self, method: str, path: str, body: Any = None, expect: Sequence[int] = (200,)) -> Any:
        """Call the admin API (``/api/...``) with the administrator's API key; the parsed JSON answer."""
        status, _, raw = self._http(method, "/api" + path, body, {"Authorization": "token " + self._api_key})
        if status not in expect:
            raise GlewlwydError(f"{method} /api{path}: {status} {raw[:500]!r}")
        return json.loads(raw) if raw.strip() else None

    def discovery(self) -> dict:
        status, _, raw = self._http("GET", f"/api/{PLUGIN}/.well-known/openid-configuration")
        if status != 200:
            raise GlewlwydError(f"discovery: {status} {raw[:300]!r}")
        return json.loads(raw)

    def token_request(self, client_id: str, form: dict) -> tuple[int, dict, bytes]:
        """POST to the token endpoint as the client, its credentials in the body (client_secret_post).

        (Glewlwyd compares the HTTP Basic password as it is, without the form-decoding RFC 6749
        2.3.1 asks for, so Basic is left to the gateway's tests.)"""
        client = self.clients[client_id]
        body = dict(form, client_id=client_id, client_secret=client["client_secret"])
        return self._http("POST", f"/api/{PLUGIN}/token", urllib.parse.urlencode(body),
                          {"Content-Type": "application/x-www-form-urlencoded"})

    # -- configuration through the admin API --------------------------------

    def admin_session(self) -> str:
        """A fresh administrator session (``POST /api/auth``): its ``Cookie`` header value.

        The plugin's own endpoints (refresh-token management) take a session cookie only, not
        an API key; the ``g_admin`` scope wants the password again after 10 minutes."""
        status, headers, raw = self._http("POST", "/api/auth/", {"username": ADMIN_USER, "password": ADMIN_PASSWORD})
        if status != 200:
            raise GlewlwydError(f"admin sign-in: {status} {raw[:300]!r}")
        return (headers.get("Set-Cookie") or "").split(";", 1)[0]

    def _configure(self) -> None:
        # 1. the administrator's session, then an API key for everything else (GETTING_STARTED.md)
        cookie = self.admin_session()
        status, _, raw = self._http("POST", "/api/key/", {}, {"Cookie": cookie})
        if status != 200:
            raise GlewlwydError(f"API key: {status} {raw[:300]!r}")
        self._api_key = json.loads(raw)["key"]

        # 2. the database user backend (shipped by the init script) gets a multi-valued "groups"
        backend = self.admin("GET", "/mod/user/database")
        backend["parameters"]["data-format"]["groups"] = {
            "multiple": True, "read": True, "write": True, "profile-read": True, "profile-write": False}
        self.admin("PUT", "/mod/user/database", backend)
        self.admin("PUT", "/mod/user/database/reset")  # the instance reloads its parameters

        # ... and the database client backend a multi-valued "post_logout_redirect_uris": the OIDC
        #     plugin's end_session endpoint checks that (plural) client property, while the admin
        #     webapp and the backend's shipped data-format only know "post_logout_redirect_uri"
        #     (singular); without it, end_session never sends the browser back to the client
        backend = self.admin("GET", "/mod/client/database")
        backend["parameters"]["data-format"]["post_logout_redirect_uris"] = {
            "multiple": True, "read": True, "write": True}
        self.admin("PUT", "/mod/client/database", backend)
        self.admin("PUT", "/mod/client/database/reset")

        # 3. scopes: every one the gateway asks for needs the user's password (Glewlwyd's built-in
        #    password scheme); "openid" ships without that requirement
        existing = {s["name"] for s in self.admin("GET", "/scope/?limit=100")}
        for name in self.scopes:
            scope = {"name": name, "display_name": name, "description": f"{name} (gateway tests)",
                     "password_required": True, "password_max_age": 0, "scheme": {}}
            if name in existing:
                self.admin("PUT", f"/scope/{name}", scope)
            else:
                self.admin("POST", "/scope/", scope)

        # 4. the OpenID Connect plugin
        private_pem, public_pem = _rsa_key_pair()
        self.admin("POST", "/mod/plugin/", {
            "module": "oidc",
            "name": PLUGIN,
            "display_name": "OpenID Connect",
            "enabled": True,
            "parameters": self._oidc_parameters(private_pem, public_pem),
        })

        # 5. the confidential clients
        for client in self.clients.values():
            self.admin("POST", "/client/", client)

        # 6. the users
        for u in self.users:
            self.add_user(u)

    def _oidc_parameters(self, private_pem: str, public_pem: str) -> dict:
        params = dict(_OIDC_DEFAULTS)
        params.update({
            "iss": self.issuer,
            "jwt-type": "rsa",
            "jwt-key-size": "256",  # RS256
            "key": private_pem,
            "cert": public_pem,
            "secret-type": self.subject_type,
            "access-token-duration": self.access_token_ttl,
            "refresh-token-duration": self.refresh_token_ttl,
            "refresh-token-rolling": True,
            "auth-type-code-enabled": True,
            "auth-type-token-enabled": False,
            "auth-type-refresh-enabled": True,
            "auth-type-client-enabled": False,
            "auth-type-password-enabled": False,
            "allowed-scope": list(self.scopes),
            # PKCE (RFC 7636): off by default; the gateway always sends S256
            "pkce-allowed": True,
            "pkce-method-plain-allowed": False,
            "pkce-required": True,
            # claims
            "name-claim": "mandatory",
            "email-claim": "mandatory",
            "scope-claim": "mandatory",
            "claims": [
                {"name": "groups", "user-property": "groups", "type": "string", "boolean-value-true": "",
                 "boolean-value-false": "", "mandatory": True, "on-demand": False, "scope": []},
                {"name": "preferred_username", "user-property": "username", "type": "string",
                 "boolean-value-true": "", "boolean-value-false": "", "mandatory": True, "on-demand": False,
                 "scope": []},
            ],
            # RFC 9207: iss in the authorization response
            "oauth-as-iss-id": True,
            # RP-initiated logout: end_session_endpoint in the discovery document; the webapp's
            # end-session prompt needs front-channel logout allowed (else its session list is a 400)
            "session-management-allowed": True,
            "front-channel-logout-allowed": True,
            # RFC 8707: the "resource" parameter becomes the access token's "aud" (without it, the
            # scope list is the "aud")
            "resource-allowed": bool(self.resources),
            "resource-scope": {scope: list(self.resources) for scope in self.scopes},
            "resource-client-property": "",
            "resource-scope-and-client-property": False,
            # the user's groups, email and user name in access tokens too (a multi-valued property is
            # joined with ",")
            "additional-parameters": [
                {"user-parameter": "groups", "token-parameter": "groups", "token-changed": False},
                {"user-parameter": "email", "token-parameter": "email", "token-changed": False},
                {"user-parameter": "username", "token-parameter": "preferred_username", "token-changed": True},
            ],
            # the introspection/revocation endpoints, for the client itself
            "introspection-revocation-allowed": True,
            "introspection-revocation-allow-target-client": True,
        })
        return params

    # -- users ---------------------------------------------------------------

    def add_user(self, user: dict[str, Any]) -> None:
        body = dict(user)
        body.setdefault("scope", list(self.scopes))
        self.admin("POST", "/user/", body)

    def get_user(self, username: str) -> dict:
        return self.admin("GET", f"/user/{username}")

    def set_user_enabled(self, username: str, enabled: bool) -> None:
        user = self.get_user(username)
        body = {k: v for k, v in user.items() if k not in ("source", "password")}
        body["enabled"] = enabled
        self.admin("PUT", f"/user/{username}", body)

    def refresh_tokens(self, username: str, cookie: Optional[str] = None) -> list[dict]:
        """The user's refresh tokens (``GET /api/oidc/token?username=``, an administrator
        impersonating the user: OIDC.md, "Manage refresh tokens endpoints")."""
        cookie = cookie or self.admin_session()
        query = urllib.parse.urlencode({"impersonate": username, "limit": 100})
        status, _, raw = self._http("GET", f"/api/{PLUGIN}/token?{query}", headers={"Cookie": cookie})
        if status != 200:
            raise GlewlwydError(f"list refresh tokens: {status} {raw[:300]!r}")
        return json.loads(raw)

    def revoke_user(self, username: str) -> int:
        """Revoke the user the way Glewlwyd's docs say: disable the account through the admin API
        (``PUT /api/user/{username}`` with ``enabled: false``, the admin webapp's switch), then
        disable each of its refresh tokens (``DELETE /api/oidc/token/{token_hash}?username=``).

        Disabling the account alone is not enough: Glewlwyd 2.7.5 still answers 200 to a refresh
        of a disabled user's token. Returns how many refresh tokens were disabled."""
        self.set_user_enabled(username, False)
        cookie = self.admin_session()
        disabled = 0
        for token in self.refresh_tokens(username, cookie):
            if not token.get("enabled"):
                continue
            path = (f"/api/{PLUGIN}/token/{urllib.parse.quote(token['token_hash'], safe='')}?"
                    + urllib.parse.urlencode({"impersonate": username}))
            status, _, raw = self._http("DELETE", path, headers={"Cookie": cookie})
            if status != 200:
                raise GlewlwydError(f"disable refresh token: {status} {raw[:300]!r}")
            disabled += 1
        return disabled

    def restore_user(self, username: str) -> None:
        """Enable the account again (its disabled refresh tokens stay disabled)."""
        self.set_user_enabled(username, True)

    # -- helpers for tests --------------------------------------------------------

    def authorization_url(self, client_id: str, redirect_uri: str, *, state: str, nonce: str,
                          code_challenge: str, scope: str = "openid email profile groups",
                          resource: Optional[str] = None) -> str:
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                  "scope": scope, "state": state, "nonce": nonce, "code_challenge": code_challenge,
                  "code_challenge_method": "S256"}
        if resource:
            params["resource"] = resource
        return f"{self.issuer}/auth?" + urllib.parse.urlencode(params)


# --------------------------------------------------------------------------- the login webapp


def sign_in(page: Any, username: str, password: str, *, timeout: float = 15_000) -> None:
    """Get through Glewlwyd's login webapp (login.html) in Chromium, from wherever it stands:
    the login form (``#username``, ``#password``, button ``#loginbut``), then the grant of the
    requested scopes to the client on first use (a checkbox ``#grant-SCOPE`` each, "Grant
    access"), then "Continue", which goes back to the client's redirect_uri. The webapp asks for
    "Continue" even when the session and the grant already exist: Glewlwyd never redirects
    straight back (without ``prompt``).

    Returns once the browser has left the webapp."""
    origin = _origin(page.url)
    on_webapp = lambda: _origin(page.url) == origin and "/login.html" in page.url  # noqa: E731
    form = page.locator("#username")
    grant = page.get_by_role("button", name="Grant access")
    cont = page.get_by_role("button", name="Continue")
    deadline = time.monotonic() + timeout / 1000
    signed_in = False
    while on_webapp():
        if time.monotonic() > deadline:
            raise AssertionError(f"stuck on Glewlwyd's login webapp: {page.url}")
        if not signed_in and form.is_visible():
            form.fill(username)
            page.fill("#password", password)
            page.click("#loginbut")
            signed_in = True
            # the webapp swaps the form for the grant or the "Continue" view
            page.locator("#loginbut").wait_for(state="detached", timeout=timeout)
            continue
        boxes = [b for b in page.locator("input[id^='grant-']").all() if b.is_visible()]
        unchecked = [b for b in boxes if not b.is_checked()]
        if unchecked:  # first use by this client: grant every scope it asks for
            for box in unchecked:
                box.check()
            grant.click()
            grant.wait_for(state="detached", timeout=timeout)
            continue
        if cont.is_visible() and cont.is_enabled():
            cont.click()
            page.wait_for_url(lambda u: not (_origin(u) == origin and "/login.html" in u), timeout=timeout)
            break
        page.wait_for_timeout(50)  # the webapp is still rendering (it is all client-side)
    page.wait_for_load_state("load")


def confirm_sign_out(page: Any, *, timeout: float = 15_000) -> None:
    """On the end-session prompt Glewlwyd's end_session endpoint sends the browser to, confirm."""
    # the prompt offers "Logout" and "Stay connected"
    button = page.get_by_role("button", name="Logout")
    button.wait_for(timeout=timeout)
    button.click()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# The OIDC plugin's parameters as the admin webapp fills them in for a new instance (admin.js of
# the package), before the changes above. Keys the plugin needs that are left at their defaults.
_OIDC_DEFAULTS: dict[str, Any] = {
    "oauth-as-iss-id": False,
    "jwks-uri": "",
    "jwks-private": "",
    "default-kid": "",
    "client-sign_kid-parameter": "",
    "jwks-public": "",
    "code-duration": 600,
    "refresh-token-one-use": "never",
    "client-refresh-token-one-use-parameter": "refresh-token-one-use",
    "allow-non-oidc": False,
    "auth-type-code-revoke-replayed": False,
    "auth-type-id-token-enabled": True,
    "auth-type-none-enabled": True,
    "auth-type-device-enabled": False,
    "scope": [],
    "additional-parameters": [],
    "service-documentation": "",
    "op-policy-uri": "",
    "op-tos-uri": "",
    "jwks-show": True,
    "jwks-x5c": [],
    "request-parameter-allow": True,
    "request-uri-allow-https-non-secure": False,
    "request-parameter-allow-encrypted": True,
    "request-parameter-ietf-strict": False,
    "address-claim": {"type": "no", "formatted": "", "street_address": "", "locality": "", "region": "",
                      "postal_code": "", "country": "", "mandatory": False},
    "name-claim-scope": [],
    "email-claim-scope": [],
    "scope-claim-scope": [],
    "pkce-required-public-client": False,
    "pkce-scopes": [],
    "introspection-revocation-auth-scope": [],
    "register-client-allowed": False,
    "register-client-auth-scope": [],
    "register-client-credentials-scope": [],
    "register-client-token-one-use": True,
    "register-client-management-allowed": True,
    "register-resource-specify-allowed": False,
    "register-resource-default": [],
    "register-default-properties": {},
    "session-cookie-name": "GLEWLWYD2_OIDC_SID",
    "session-cookie-expiration": 2419200,
    "front-channel-logout-allowed": True,
    "back-channel-logout-allowed": True,
    "client-pubkey-parameter": "",
    "client-jwks-parameter": "jwks",
    "client-jwks_uri-parameter": "jwks_uri",
    "request-maximum-exp": 3600,
    "encrypt-out-token-allow": False,
    "client-enc-parameter": "enc",
    "client-alg-parameter": "alg",
    "client-alg_kid-parameter": "alg_kid",
    "client-encrypt_code-parameter": "encrypt_code",
    "client-encrypt_at-parameter": "encrypt_at",
    "client-encrypt_userinfo-parameter": "encrypt_userinfo",
    "client-encrypt_id_token-parameter": "encrypt_id_token",
    "client-encrypt_refresh_token-parameter": "encrypt_refresh_token",
    "client-encrypt_introspection-parameter": "encrypt_introspection",
    "device-authorization-expiration": 600,
    "device-authorization-interval": 5,
    "client-cert-header-name": "SSL_CLIENT_CERT",
    "client-cert-use-endpoint-aliases": False,
    "client-cert-self-signed-allowed": False,
    "oauth-dpop-allowed": False,
    "oauth-dpop-iat-duration": 10,
    "oauth-dpop-iat-gap-duration": 0,
    "oauth-dpop-dpop_bound_access_tokens-property": "dpop_bound_access_tokens",
    "oauth-dpop-nonce-mandatory": False,
    "oauth-dpop-nonce-counter": 10,
    "resource-allowed": False,
    "resource-scope": {},
    "resource-client-property": "",
    "resource-scope-and-client-property": False,
    "oauth-rar-allowed": False,
    "rar-types-client-property": "authorization_details_types",
    "rar-allow-auth-unsigned": False,
    "rar-allow-auth-unencrypted": True,
    "rar-types": {},
    "oauth-par-allowed": False,
    "oauth-par-duration": 90,
    "oauth-par-required": False,
    "oauth-par-request_uri-prefix": "urn:ietf:params:oauth:request_uri:",
    "prompt-continue-client-property": "",
    "restrict-scope-client-property": "",
    "oauth-ciba-allowed": False,
    "oauth-fapi-check-all": False,
    "oauth-fapi-allow-jarm": False,
    "oauth-fapi-add-s_hash": False,
    "oauth-fapi-verify-nbf": False,
    "oauth-fapi-allow-restrict-alg": False,
    "oauth-fapi-restrict-alg": [],
    "oauth-fapi-allow-multiple-kid": False,
    "oauth-fapi-ciba-confidential-client": False,
    "oauth-fapi-ciba-push-forbidden": False,
    "jwks-public-uri": "",
}
