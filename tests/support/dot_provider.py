"""Run django-oauth-toolkit (DOT) as a real third-party OpenID Connect provider for tests.

The site is tests/peers/dot (a minimal Django project configured as DOT's OpenID Connect docs
describe); scripts/peers/django-oauth-toolkit.sh installs the pinned Django and DOT. This module
generates an RSA key, migrates a sqlite database in the test's temp dir, creates the users (with
groups) and one confidential client, and serves the site with ``manage.py runserver --noreload`` on
a free 127.0.0.1 port::

    from tests.support.dot_provider import dot_user, start_dot_provider

    with start_dot_provider(
        tmp_path,
        redirect_uris=["http://127.0.0.1:8080/oauth2/callback"],
        post_logout_redirect_uris=["http://127.0.0.1:8080/"],
        client_secret="a+b/c=d:e%f&g?h",
        access_token_ttl=3,
        users=[dot_user("alice", "pw", groups=["ops"])],
    ) as dot:
        dot.issuer                 # "http://localhost:PORT/o"
        dot.users["alice"]         # her primary key: DOT's ``sub`` claim is str(pk)
        dot.stats()["counts"]      # {"token:refresh_token:refused": 1, ...}
        dot.obtain_tokens("alice", "pw", redirect_uri=...)   # the code flow over plain HTTP
        dot.revoke_user("alice")   # deactivate her and revoke her refresh tokens

The issuer is ``http://localhost:PORT/o`` (what browsers and the gateway use) while the gateway is
reached as ``http://127.0.0.1:PORT``: cookies are scoped by host, so the two never share cookies.
The test code itself talks to ``127.0.0.1`` directly. The server is stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_DIR = REPO_ROOT / "tests" / "peers" / "dot"
MANAGE = SITE_DIR / "manage.py"
DJANGO_VERSION = "5.2.19"
DOT_VERSION = "3.4.1"
SCOPES = ("openid", "email", "profile", "groups")
INSTALL_HINT = "bash scripts/peers/django-oauth-toolkit.sh"


def dot_missing() -> Optional[str]:
    """Why the peer cannot run here (a skip reason), or None when Django and DOT are installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = (version("django"), version("django-oauth-toolkit"))
    except PackageNotFoundError as exc:
        return f"{exc.name} is not installed: run {INSTALL_HINT}"
    if found != (DJANGO_VERSION, DOT_VERSION):
        return (f"django {found[0]} / django-oauth-toolkit {found[1]} installed, the tests are for "
                f"{DJANGO_VERSION} / {DOT_VERSION}: run {INSTALL_HINT}")
    return None


def dot_user(username: str, password: str, *, email: Optional[str] = None, groups: Sequence[str] = (),
             first_name: str = "", last_name: str = "") -> dict[str, Any]:
    return {
        "username": username,
        "password": password,
        "email": email if email is not None else f"{username}@example.test",
        "groups": list(groups),
        "first_name": first_name,
        "last_name": last_name,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rsa_private_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HTTPAnswer:
    def __init__(self, status: int, headers: Any, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)


class DOTProvider:
    """A running django-oauth-toolkit site. Use :func:`start_dot_provider`."""

    def __init__(self, workdir: Path, *, redirect_uris: Sequence[str], post_logout_redirect_uris: Sequence[str],
                 client_secret: str, access_token_ttl: int, users: Sequence[dict], client_id: str,
                 startup_timeout: float):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        self.access_token_ttl = int(access_token_ttl)
        self.startup_timeout = startup_timeout
        self.spec = {
            "users": list(users),
            "clients": [{
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uris": list(redirect_uris),
                "post_logout_redirect_uris": list(post_logout_redirect_uris),
            }],
        }
        self.passwords = {u["username"]: u["password"] for u in users}
        self.users: dict[str, int] = {}
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "dot.log"
        key_file = self.workdir / "oidc-rsa.pem"
        key_file.write_text(_rsa_private_pem())
        key_file.chmod(0o600)
        self._env_base = {
            "DJANGO_SETTINGS_MODULE": "dotsite.settings",
            "DOT_PEER_DB": str(self.workdir / "dot.sqlite3"),
            "DOT_PEER_RSA_KEY_FILE": str(key_file),
            "DOT_PEER_SECRET_KEY": secrets.token_urlsafe(48),
            "ACCESS_TOKEN_EXPIRE_SECONDS": str(self.access_token_ttl),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    # -- urls ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """How browsers and the gateway reach the provider."""
        return f"http://localhost:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/o"

    @property
    def login_url(self) -> str:
        return f"{self.base_url}/accounts/login/"

    @property
    def _direct(self) -> str:
        """How this test process reaches it (no ::1 attempt first)."""
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DOT_PEER_"))}
        env.update(self._env_base)
        env["DOT_PEER_ISSUER"] = self.issuer
        return env

    def manage(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``manage.py ARGS`` against this site's database; its stdout."""
        proc = subprocess.run([sys.executable, str(MANAGE), *args], cwd=SITE_DIR, env=self._env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def start(self) -> "DOTProvider":
        spec_file = self.workdir / "spec.json"
        spec_file.write_text(json.dumps(self.spec))
        self.port = _free_port()  # known before the issuer is; the setup does not depend on it
        self.users = json.loads(self.manage("peer_setup", str(spec_file)).strip().splitlines()[-1])["users"]
        spec_file.unlink()  # it holds the passwords and the client secret in clear
        last = ""
        for _ in range(3):  # the chosen port could be taken before runserver binds it (unlikely)
            if self._serve():
                return self
            last = self.log_text()
            self.port = _free_port()
        raise RuntimeError(f"django-oauth-toolkit did not start:\n{last[-3000:]}")

    def _serve(self) -> bool:
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{self.port}"],
                cwd=SITE_DIR, env=self._env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                if self.get("/o/.well-known/openid-configuration", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        text = self.log_text()
        self.stop()
        raise TimeoutError(f"django-oauth-toolkit not serving after {self.startup_timeout}s:\n{text[-3000:]}")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- plain HTTP ------------------------------------------------------------

    def _open(self, req: urllib.request.Request, opener: Any = None, timeout: float = 10.0) -> HTTPAnswer:
        req.add_header("Host", f"localhost:{self.port}")
        try:
            with (opener or self._opener).open(req, timeout=timeout) as resp:
                return HTTPAnswer(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:  # 3xx (not followed) and 4xx/5xx
            with exc:
                return HTTPAnswer(exc.code, exc.headers, exc.read())

    def get(self, path: str, headers: Optional[dict] = None, opener: Any = None, timeout: float = 10.0) -> HTTPAnswer:
        return self._open(urllib.request.Request(self._direct + path, headers=headers or {}), opener, timeout)

    def post(self, path: str, form: dict, headers: Optional[dict] = None, opener: Any = None) -> HTTPAnswer:
        data = urllib.parse.urlencode(form).encode()
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self._open(urllib.request.Request(self._direct + path, data=data, headers=h, method="POST"), opener)

    def discovery(self) -> dict[str, Any]:
        return self.get("/o/.well-known/openid-configuration").json()

    def stats(self) -> dict[str, Any]:
        """``counts`` (token:GRANT[:ok|:refused], token_auth:METHOD, authorize, userinfo, logout,
        login[:ok|:refused]) and ``live_refresh_tokens`` (username -> refresh tokens not revoked)."""
        return self.get("/__test/stats").json()

    def count(self, key: str) -> int:
        return int(self.stats()["counts"].get(key, 0))

    # -- what an administrator does -------------------------------------------

    def revoke_user(self, username: str) -> int:
        """Deactivate the user and revoke all their refresh tokens (the admin's "Revoke selected
        refresh tokens" action): DOT then refuses their refresh with 400 invalid_grant. Returns
        how many refresh tokens were revoked."""
        return int(json.loads(self.manage("peer_revoke_user", username).strip().splitlines()[-1])["revoked"])

    # -- tokens without a browser ---------------------------------------------

    def _client_auth(self, form: dict, method: str) -> dict:
        if method == "client_secret_basic":  # RFC 6749 2.3.1: each part form-encoded, then Basic
            raw = f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.client_secret)}"
            return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
        form.update(client_id=self.client_id, client_secret=self.client_secret)
        return {}

    def sign_in_session(self, username: str, password: Optional[str] = None) -> Any:
        """An opener holding a Django session signed in as ``username`` (the login form, CSRF and all)."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                             urllib.request.HTTPCookieProcessor(jar))
        page = self.get("/accounts/login/", opener=opener)
        assert page.status == 200, page.status
        m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        assert m, "no CSRF token on the login page"
        r = self.post("/accounts/login/", {"csrfmiddlewaretoken": m.group(1).decode(), "username": username,
                                           "password": password or self.passwords[username], "next": "/"},
                      opener=opener)
        assert r.status == 302, f"sign-in as {username} refused: {r.status}"
        return opener

    def authorize(self, opener: Any, *, redirect_uri: str, scope: Sequence[str] = SCOPES,
                  nonce: Optional[str] = None) -> tuple[dict, str]:
        """The authorization request (PKCE S256) as the signed-in ``opener``: (callback query, verifier)."""
        verifier, challenge = pkce_pair()
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
                  "scope": " ".join(scope), "state": secrets.token_urlsafe(16),
                  "nonce": nonce or secrets.token_urlsafe(16),
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        r = self.get("/o/authorize/?" + urllib.parse.urlencode(params), opener=opener)
        location = r.header("Location") or ""
        assert r.status == 302 and location.startswith(redirect_uri + "?"), (r.status, location, r.body[:300])
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        assert query.get("state") == params["state"], query
        return query, verifier

    def obtain_tokens(self, username: str, password: Optional[str] = None, *, redirect_uri: Optional[str] = None,
                      scope: Sequence[str] = SCOPES, auth_method: str = "client_secret_basic",
                      nonce: Optional[str] = None) -> dict[str, Any]:
        """The whole authorization code flow over plain HTTP: the token response (access_token,
        refresh_token, id_token, expires_in, ...)."""
        opener = self.sign_in_session(username, password)
        redirect_uri = redirect_uri or self.redirect_uris[0]
        query, verifier = self.authorize(opener, redirect_uri=redirect_uri, scope=scope, nonce=nonce)
        r = self.token({"grant_type": "authorization_code", "code": query["code"], "redirect_uri": redirect_uri,
                        "code_verifier": verifier}, auth_method)
        assert r.status == 200, (r.status, r.body[:300])
        return r.json()

    def token(self, form: dict, auth_method: str = "client_secret_basic") -> HTTPAnswer:
        form = dict(form)
        headers = self._client_auth(form, auth_method)
        return self.post("/o/token/", form, headers)

    def refresh(self, refresh_token: str, auth_method: str = "client_secret_basic") -> HTTPAnswer:
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token}, auth_method)

    def userinfo(self, access_token: str) -> HTTPAnswer:
        return self.get("/o/userinfo/", {"Authorization": f"Bearer {access_token}"})


@contextlib.contextmanager
def start_dot_provider(
    tmp_path: Path | str,
    *,
    redirect_uris: Sequence[str],
    post_logout_redirect_uris: Sequence[str],
    client_secret: str,
    access_token_ttl: int = 3600,
    users: Sequence[dict] = (),
    client_id: str = "gateway",
    startup_timeout: float = 30.0,
) -> Iterator[DOTProvider]:
    """Set up and serve the DOT site, yield its handle, stop it (by PID) on exit."""
    reason = dot_missing()
    if reason:
        raise RuntimeError(reason)
    dot = DOTProvider(Path(tmp_path), redirect_uris=redirect_uris, post_logout_redirect_uris=post_logout_redirect_uris,
                      client_secret=client_secret, access_token_ttl=access_token_ttl,
                      users=users or [dot_user("alice", "alice-password", groups=["users"])],
                      client_id=client_id, startup_timeout=startup_timeout)
    dot.start()
    try:
        yield dot
    finally:
        dot.stop()
