"""Run LemonLDAP::NG (Debian's 2.16 packages) as an OpenID Connect provider for tests.

Installed by scripts/peers/lemonldap-ng.sh. Its portal is a FastCGI application: this module
writes a configuration of its own to a temporary directory (a ``lemonldap-ng.ini`` and a File
configuration backend ``lmConf-1.json``, sessions as files in the same directory), starts
``llng-fastcgi-server`` on a unix socket there and an nginx on a free loopback port that serves
the portal through FastCGI, and stops both by PID.

    from tests.support.llng_provider import relying_party, start_llng

    with start_llng(relying_parties=[relying_party("gateway", "gw", secret, [callback])]) as llng:
        llng.issuer            # "http://localhost:PORT/" (with the slash, as its discovery says)
        llng.discovery()
        llng.revoke_user("dwho")   # end the user's SSO sessions and their tokens, as an admin would

Users are LemonLDAP::NG's Demo backend (password = login):

    dwho    Doctor Who    dwho@badwolf.org     groups timelords, users
    rtyler  Rose Tyler    rtyler@badwolf.org   groups earthlings, users
    msmith  Mickey Smith  msmith@badwolf.org   groups earthlings, users

Host names: the portal is ``http://localhost:PORT/`` (its cookie domain ``localhost``). The
gateway resolves ``localhost`` itself, so it can fetch discovery, keys and tokens at the very
issuer the browser signs in at; a name such as ``auth.test`` would only resolve inside Chromium.
nginx listens on 127.0.0.1 and [::1], whichever address ``localhost`` gives first.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

FASTCGI_SERVER = "/usr/sbin/llng-fastcgi-server"
SESSIONS_CLI = "/usr/share/lemonldap-ng/bin/lemonldap-ng-sessions"
PORTAL_HTDOCS = "/usr/share/lemonldap-ng/portal/htdocs"
PORTAL_TEMPLATES = "/usr/share/lemonldap-ng/portal/templates"
NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") or "/usr/sbin/nginx"
# llng-fastcgi-server refuses to run as root; as root it (and the sessions CLI) run as this user
SERVICE_USER = "www-data"

DEMO_USERS = {
    "dwho": {"name": "Doctor Who", "email": "dwho@badwolf.org", "groups": ["timelords", "users"]},
    "rtyler": {"name": "Rose Tyler", "email": "rtyler@badwolf.org", "groups": ["earthlings", "users"]},
    "msmith": {"name": "Mickey Smith", "email": "msmith@badwolf.org", "groups": ["earthlings", "users"]},
}

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def llng_missing() -> Optional[str]:
    """Why LemonLDAP::NG cannot run here, or None when it can."""
    for path in (FASTCGI_SERVER, SESSIONS_CLI, PORTAL_HTDOCS + "/index.psgi"):
        if not os.path.exists(path):
            return f"{path} is missing: LemonLDAP::NG is not installed (bash scripts/peers/lemonldap-ng.sh)"
    if not os.access(NGINX, os.X_OK):
        return "nginx is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class RelyingParty:
    """One OpenID Connect relying party (an ``oidcRPMetaDataOptions`` entry)."""

    key: str  # LemonLDAP::NG's configuration key of the RP
    client_id: str
    client_secret: str
    redirect_uris: Sequence[str]
    post_logout_redirect_uris: Sequence[str] = ()
    access_token_ttl: int = 3600
    jwt_access_token: bool = True
    refresh_tokens: bool = True
    require_pkce: bool = True
    audiences: Sequence[str] = ()
    options: dict = field(default_factory=dict)  # more oidcRPMetaDataOptions* keys

    def rp_options(self) -> dict:
        opts = {
            "oidcRPMetaDataOptionsClientID": self.client_id,
            "oidcRPMetaDataOptionsClientSecret": self.client_secret,
            "oidcRPMetaDataOptionsDisplayName": self.key,
            "oidcRPMetaDataOptionsRedirectUris": " ".join(self.redirect_uris),
            "oidcRPMetaDataOptionsPostLogoutRedirectUris": " ".join(self.post_logout_redirect_uris),
            "oidcRPMetaDataOptionsIDTokenSignAlg": "RS256",
            "oidcRPMetaDataOptionsAccessTokenSignAlg": "RS256",
            "oidcRPMetaDataOptionsAccessTokenJWT": int(self.jwt_access_token),
            "oidcRPMetaDataOptionsAccessTokenClaims": 1,
            "oidcRPMetaDataOptionsAccessTokenExpiration": self.access_token_ttl,
            "oidcRPMetaDataOptionsIDTokenExpiration": 3600,
            "oidcRPMetaDataOptionsRefreshToken": int(self.refresh_tokens),
            "oidcRPMetaDataOptionsRequirePKCE": int(self.require_pkce),
            "oidcRPMetaDataOptionsPublic": 0,
            "oidcRPMetaDataOptionsBypassConsent": 1,
            "oidcRPMetaDataOptionsLogoutBypassConfirm": 1,
            "oidcRPMetaDataOptionsUserIDAttr": "uid",
            "oidcRPMetaDataOptionsAdditionalAudiences": " ".join(self.audiences),
        }
        opts.update(self.options)
        return opts


def relying_party(key: str, client_id: str, client_secret: str, redirect_uris: Sequence[str], **kw: Any) -> RelyingParty:
    return RelyingParty(key, client_id, client_secret, list(redirect_uris), **kw)


def _rsa_key_pair() -> tuple[str, str]:
    """A fresh RS256 key pair, (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class LLNGProvider:
    """A running LemonLDAP::NG portal (llng-fastcgi-server + nginx). Use :func:`start_llng`."""

    def __init__(self, relying_parties: Sequence[RelyingParty], *, port: int = 0,
                 startup_timeout: float = 30.0, extra_conf: Optional[dict] = None) -> None:
        self.relying_parties = list(relying_parties)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.extra_conf = dict(extra_conf or {})
        self.dir = Path(tempfile.mkdtemp(prefix="gw-llng-"))
        self.as_root = os.geteuid() == 0
        self.fcgi: Optional[subprocess.Popen] = None
        self.nginx: Optional[subprocess.Popen] = None
        self.socket_path = self.dir / "run" / "llng-fastcgi.sock"
        self.ini_path = self.dir / "lemonldap-ng.ini"
        self.conf_dir = self.dir / "conf"
        self.sessions_dir = self.dir / "sessions"
        self.psessions_dir = self.dir / "psessions"
        self.fcgi_log = self.dir / "llng.log"
        self.nginx_error_log = self.dir / "nginx-error.log"

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def issuer(self) -> str:
        """The issuer exactly as the discovery document says it (LemonLDAP::NG's ends with "/")."""
        return self.url + "/"

    # -- configuration ---------------------------------------------------------------------

    def _conf(self) -> dict:
        private, public = _rsa_key_pair()
        rps = {rp.key: rp for rp in self.relying_parties}
        storage = {
            "Directory": str(self.sessions_dir),
            "LockDirectory": str(self.sessions_dir / "lock"),
            "generateModule": "Lemonldap::NG::Common::Apache::Session::Generate::SHA256",
        }
        conf = {
            "cfgNum": 1,
            "cfgAuthor": "gateway tests",
            "cfgDate": str(int(time.time())),
            "cfgVersion": "2.16.1",
            "authentication": "Demo",
            "userDB": "Same",
            "passwordDB": "Demo",
            "registerDB": "Null",
            "demoExportedVars": {"uid": "uid", "cn": "cn", "mail": "mail"},
            "exportedVars": {},
            "portal": self.url + "/",
            "domain": "localhost",
            "cookieName": "lemonldap",
            "securedCookie": 0,
            "httpOnly": 1,
            "timeout": 72000,
            "whatToTrace": "uid",
            "portalSkin": "bootstrap",
            "portalDisplayLogout": 1,
            "loginHistoryEnabled": 0,
            "notification": 0,
            "checkXSS": 1,
            "globalStorage": "Apache::Session::File",
            "globalStorageOptions": storage,
            "persistentStorage": "Apache::Session::File",
            "persistentStorageOptions": {
                "Directory": str(self.psessions_dir),
                "LockDirectory": str(self.psessions_dir / "lock"),
            },
            # no local session cache: a session an admin deletes is gone for the portal at once
            "localSessionStorage": "",
            "localSessionStorageOptions": {},
            "tokenUseGlobalStorage": 1,  # the login form's one-time tokens: no local cache either
            "locationRules": {"localhost": {"default": "accept"}},
            "exportedHeaders": {},
            "groups": {},
            "macros": {},
            # the OpenID Connect provider
            "issuerDBOpenIDConnectActivation": 1,
            "issuerDBOpenIDConnectRule": "1",
            "oidcServiceMetaDataIssuer": self.issuer,
            "oidcServicePrivateKeySig": private,
            "oidcServicePublicKeySig": public,
            "oidcServiceKeyIdSig": "gw-test-" + base64.urlsafe_b64encode(os.urandom(6)).decode(),
            "oidcServiceAllowAuthorizationCodeFlow": 1,
            "oidcServiceAllowImplicitFlow": 0,
            "oidcServiceAllowHybridFlow": 0,
            "oidcServiceAllowDynamicRegistration": 0,
            "oidcServiceIgnoreScopeForClaims": 1,
            "oidcServiceAccessTokenExpiration": 3600,
            "oidcRPMetaDataOptions": {k: rp.rp_options() for k, rp in rps.items()},
            "oidcRPMetaDataExportedVars": {
                k: {
                    "email": "mail",
                    "name": "cn",
                    "preferred_username": "uid",
                    "groups": "groups;string;always",
                } for k in rps
            },
            "oidcRPMetaDataOptionsExtraClaims": {k: {"groups": "groups"} for k in rps},
            "oidcRPMetaDataMacros": {k: {} for k in rps},
            "oidcRPMetaDataScopeRules": {k: {} for k in rps},
        }
        conf.update(self.extra_conf)
        return conf

    def _ini(self) -> str:
        return "\n".join([
            "[all]",
            f"logLevel = {os.environ.get('LLNG_TEST_LOG_LEVEL', 'notice')}",
            "logger = Lemonldap::NG::Common::Logger::Std",
            "userLogger = Lemonldap::NG::Common::Logger::Std",
            "checkTime = 1",
            "",
            "[configuration]",
            "type = File",
            f"dirName = {self.conf_dir}",
            "prettyPrint = 1",
            "",
            "[portal]",
            "staticPrefix = /static",
            f"templateDir = {PORTAL_TEMPLATES}",
            "languages = en",
            "",
            "[handler]",
            "status = 0",
            "",
        ])

    def _nginx_conf(self) -> str:
        tmp = self.dir / "nginx-tmp"
        listen = [f"listen 127.0.0.1:{self.port};"]
        if _ipv6_loopback():
            listen.append(f"listen [::1]:{self.port};")
        user = f"user {SERVICE_USER} {SERVICE_USER};" if self.as_root else ""
        return f"""
{user}
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.nginx_error_log} info;
events {{ worker_connections 128; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  # method, path (after the portal's rewrite to /index.psgi/...) and status: no query strings
  log_format gw_test '$request_method $uri $status';
  access_log {self.dir}/nginx-access.log gw_test;
  client_body_temp_path {tmp}/body;
  fastcgi_temp_path {tmp}/fastcgi;
  proxy_temp_path {tmp}/proxy;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    {' '.join(listen)}
    server_name localhost;
    root {PORTAL_HTDOCS}/;
    if ($uri !~ ^/((static|javascript|favicon).*|.*\\.psgi)) {{
      rewrite ^/(.*)$ /index.psgi/$1 break;
    }}
    location ~ ^(?<sc>/.*\\.psgi)(?:$|/) {{
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:{self.socket_path};
      fastcgi_param HTTP_HOST $http_host;
      fastcgi_param LLTYPE psgi;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_split_path_info ^(.*\\.psgi)(/.*)$;
      fastcgi_param PATH_INFO $fastcgi_path_info;
    }}
    location /static/ {{ alias {PORTAL_HTDOCS}/static/; }}
    location /javascript/ {{ alias /usr/share/javascript/; }}
  }}
}}
"""

    def _write(self) -> None:
        for d in (self.conf_dir, self.sessions_dir / "lock", self.psessions_dir / "lock",
                  self.dir / "run", self.dir / "nginx-tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.ini_path.write_text(self._ini())
        (self.conf_dir / "lmConf-1.json").write_text(json.dumps(self._conf(), indent=1))
        (self.dir / "nginx.conf").write_text(self._nginx_conf())
        # the portal runs as SERVICE_USER when the tests run as root: let it read its
        # configuration and write its sessions
        os.chmod(self.dir, 0o755)
        if self.as_root:
            uid, gid = pwd.getpwnam(SERVICE_USER).pw_uid, grp.getgrnam(SERVICE_USER).gr_gid
            for root, dirs, files in os.walk(self.dir):
                os.chown(root, uid, gid)
                for name in files:
                    os.chown(os.path.join(root, name), uid, gid)

    def _env(self) -> dict:
        env = dict(os.environ)
        env["LLNG_DEFAULTCONFFILE"] = str(self.ini_path)
        env["LLNG_DEFAULTLOGGER"] = "Lemonldap::NG::Common::Logger::Std"
        return env

    def _user_args(self) -> list[str]:
        return ["-u", SERVICE_USER, "-g", SERVICE_USER] if self.as_root else []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "LLNGProvider":
        self._write()
        log = open(self.fcgi_log, "ab")
        try:
            self.fcgi = subprocess.Popen(
                [FASTCGI_SERVER, "--foreground", "-n", "3", "-s", str(self.socket_path),
                 "-p", str(self.dir / "run" / "llng-fastcgi.pid"), *self._user_args()],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while not self.socket_path.exists():
            if self.fcgi.poll() is not None or time.monotonic() > deadline:
                self.stop(remove=False)
                raise RuntimeError("llng-fastcgi-server did not start:\n" + self.log_tail())
            time.sleep(0.05)
        nginx_log = open(self.dir / "nginx.out", "ab")
        try:
            self.nginx = subprocess.Popen(
                [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(self.nginx_error_log)],
                stdout=nginx_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                start_new_session=True)
        finally:
            nginx_log.close()
        last: Any = None
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None or self.fcgi.poll() is not None:
                break
            try:
                doc = self.discovery(timeout=5)
                if doc.get("issuer") == self.issuer:
                    return self
                last = f"unexpected issuer {doc.get('issuer')!r}"
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
        self.stop(remove=False)
        raise RuntimeError(f"LemonLDAP::NG portal never answered its discovery ({last}):\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.fcgi_log, self.nginx_error_log, self.dir / "nginx.out"):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self, remove: bool = True) -> None:
        for proc in (self.nginx, self.fcgi):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown; FCGI::ProcManager: TERM to its workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                # the process was started in a session of its own (start_new_session): its
                # group is exactly it and the workers it forked
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LLNGProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------

    def get_json(self, path: str, timeout: float = 10.0) -> dict:
        with _OPENER.open(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def discovery(self, timeout: float = 10.0) -> dict:
        return self.get_json("/.well-known/openid-configuration", timeout)

    def requests(self, path: Optional[str] = None) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request nginx has answered (for ``path`` only if given)."""
        out = []
        with contextlib.suppress(OSError):
            for line in (self.dir / "nginx-access.log").read_text(errors="replace").splitlines():
                parts = line.split(" ")
                if len(parts) != 3 or not parts[2].isdigit():
                    continue
                method, uri, status = parts
                if uri.startswith("/index.psgi/"):
                    uri = uri[len("/index.psgi"):]
                if path is None or uri == path:
                    out.append((method, uri, int(status)))
        return out

    def token_requests(self, at_least: int = 0, timeout: float = 5.0) -> list[int]:
        """The status of every token endpoint request so far, oldest first. nginx writes its log
        line just after it answered: with ``at_least``, wait (up to ``timeout``) for that many."""
        deadline = time.monotonic() + timeout
        while True:
            found = [status for method, _, status in self.requests("/oauth2/token") if method == "POST"]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    # -- administration --------------------------------------------------------------------

    def sessions_cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """``lemonldap-ng-sessions ARGS`` on this portal's configuration (its session storage)."""
        cmd = [SESSIONS_CLI, *self._user_args(), *args]
        proc = subprocess.run(cmd, env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def session_ids(self, where: str) -> list[str]:
        out = self.sessions_cli("search", "--where", where, "--id-only").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def revoke_user(self, login: str, tokens: bool = True) -> dict:
        """End ``login``'s access the way an administrator does with LemonLDAP::NG's own
        ``lemonldap-ng-sessions`` tool: delete the user's SSO sessions and (``tokens``) the OpenID
        Connect refresh and access tokens tied to them. Either way the next refresh is refused
        with a 400: ``invalid_request`` when its refresh token is gone, ``invalid_grant`` when only
        the SSO session it is tied to is. Returns what was deleted: {"sso": [...], "tokens": [...]}."""
        sso = self.session_ids(f"_user={login}")
        tied: list[str] = []
        if tokens:
            for sid in sso:
                tied += self.session_ids(f"user_session_id={sid}")
        if sso:
            self.sessions_cli("delete", *sso)
        if tied:
            self.sessions_cli("delete", *tied)
        return {"sso": sso, "tokens": tied}

    def log_text(self) -> str:
        """What the portal has logged so far (LemonLDAP::NG's own log, on llng-fastcgi-server's stderr)."""
        try:
            return self.fcgi_log.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def start_llng(relying_parties: Sequence[RelyingParty], **kw: Any) -> Iterator[LLNGProvider]:
    provider = LLNGProvider(relying_parties, **kw)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


# --------------------------------------------------------------------------- the browser side


def sign_in(page: Any, user: str, password: str) -> None:
    """Fill LemonLDAP::NG's portal login form (the bootstrap skin) and submit it."""
    page.wait_for_selector('input[name="user"]')
    page.fill('input[name="user"]', user)
    page.fill('input[name="password"]', password)
    page.locator('button[type="submit"]').first.click()
