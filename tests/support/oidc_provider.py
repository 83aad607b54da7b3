"""Run a real OpenID Connect provider (node ``oidc-provider`` 9.13.3) for tests.

The provider lives in ``tests/idp/server.mjs``; this module installs its node
dependencies when needed, starts it on a free loopback port, and stops it again.

Typical use::

    from tests.support.oidc_provider import start_oidc_provider, client, user

    with start_oidc_provider(
        tmp_path,
        clients=[client("gateway", "s3cret", ["http://127.0.0.1:8080/_auth/callback"])],
        users=[user("alice", "pw", groups=["admins"])],
        access_token_ttl=5,
    ) as idp:
        idp.issuer            # "http://localhost:PORT"
        idp.discovery()       # the parsed .well-known/openid-configuration
        idp.stats()           # {"token_requests": .., "refresh_requests": .., ...}
        idp.fail_next_refresh()

Everything talks to 127.0.0.1 / localhost only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
IDP_DIR = REPO_ROOT / "tests" / "idp"
SERVER_SCRIPT = IDP_DIR / "server.mjs"
OIDC_PROVIDER_VERSION = "9.13.3"

_READY_RE = re.compile(r"^READY (http://localhost:(\d+))$", re.M)

# never go through a proxy, whatever the environment says
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def node_executable() -> str | None:
    """Path of ``node``, or None when it is not installed."""
    return shutil.which("node")


def _node_modules_ok() -> bool:
    pkg = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    try:
        return json.loads(pkg.read_text())["version"] == OIDC_PROVIDER_VERSION
    except (OSError, ValueError, KeyError):
        return False


def ensure_node_modules(timeout: float = 300.0) -> None:
    """Install tests/idp/node_modules (``npm ci``) if it is missing or stale.

    Serialised with an flock on ``tests/idp/.install.lock`` so parallel test
    processes don't run npm at the same time.
    """
    if _node_modules_ok():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed; cannot install tests/idp dependencies")
    lock_path = IDP_DIR / ".install.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _node_modules_ok():
                return
            has_lock = (IDP_DIR / "package-lock.json").exists()
            cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund"]
            proc = subprocess.run(
                cmd,
                cwd=IDP_DIR,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            if proc.returncode != 0 or not _node_modules_ok():
                raise RuntimeError(f"{' '.join(cmd)} failed in {IDP_DIR}:\n{proc.stdout}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client(
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    *,
    post_logout_redirect_uris: Sequence[str] = (),
    token_endpoint_auth_method: str = "client_secret_basic",
    grant_types: Sequence[str] = ("authorization_code", "refresh_token"),
    **extra: Any,
) -> dict[str, Any]:
    """A static client registration (oidc-provider client metadata)."""
    return {
        "client_id": client_id,
        "client_secret": client_secret,
        "redirect_uris": list(redirect_uris),
        "post_logout_redirect_uris": list(post_logout_redirect_uris),
        "token_endpoint_auth_method": token_endpoint_auth_method,
        "grant_types": list(grant_types),
        **extra,
    }


def user(
    account_id: str,
    password: str,
    *,
    email: str | None = None,
    email_verified: bool = True,
    groups: Sequence[str] = (),
    preferred_username: str | None = None,
    name: str | None = None,
    padding: int = 0,
) -> dict[str, Any]:
    """A test user. ``padding`` adds a claim of that many bytes to the ID token."""
    return {
        "accountId": account_id,
        "password": password,
        "email": email if email is not None else f"{account_id}@example.test",
        "email_verified": email_verified,
        "groups": list(groups),
        "preferred_username": preferred_username or account_id,
        "name": name or account_id.capitalize(),
        "padding": padding,
    }


DEFAULT_USERS = [user("alice", "alice-password", groups=["users", "admins"], name="Alice Example")]


class OIDCProvider:
    """A running oidc-provider process. Use :func:`start_oidc_provider`."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        clients: Sequence[dict[str, Any]],
        users: Sequence[dict[str, Any]] = DEFAULT_USERS,
        access_token_ttl: int = 3600,
        id_token_ttl: int = 3600,
        refresh_token_ttl: int = 14 * 24 * 3600,
        session_ttl: int = 14 * 24 * 3600,
        grant_ttl: int = 14 * 24 * 3600,
        id_token_padding: int = 0,
        pkce_required: bool = True,
        logout_auto_submit: bool = True,
        port: int = 0,
        extra_config: dict[str, Any] | None = None,
        startup_timeout: float = 45.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "idp-config.json"
        self.log_path = self.workdir / "idp.log"
        self.startup_timeout = startup_timeout
        self.config: dict[str, Any] = {
            "port": port,
            "clients": list(clients),
            "users": list(users),
            "ttl": {
                "AccessToken": access_token_ttl,
                "IdToken": id_token_ttl,
                "RefreshToken": refresh_token_ttl,
                "Session": session_ttl,
                "Grant": grant_ttl,
            },
            "idTokenPadding": id_token_padding,
            "pkceRequired": pkce_required,
            "logoutAutoSubmit": logout_auto_submit,
            **(extra_config or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.issuer: str = ""
        self.port: int = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "OIDCProvider":
        node = node_executable()
        if node is None:
            raise RuntimeError("node is not installed")
        ensure_node_modules()
        self.config_path.write_text(json.dumps(self.config, indent=2))
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [node, str(SERVER_SCRIPT), str(self.config_path)],
                cwd=IDP_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

        deadline = time.monotonic() + self.startup_timeout
        while True:
            m = _READY_RE.search(self.log_text())
            if m:
                self.issuer, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                text = self.log_text()
                self.stop()
                raise RuntimeError(f"oidc provider exited with {self.proc.returncode}:\n{text}")
            if time.monotonic() > deadline:
                text = self.log_text()
                self.stop()
                raise TimeoutError(f"oidc provider not READY after {self.startup_timeout}s:\n{text}")
            time.sleep(0.05)

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

    def __enter__(self) -> "OIDCProvider":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- urls ----------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.issuer}/session/end"

    # -- helpers -------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        # 127.0.0.1 directly: the server listens there only (avoids a ::1 attempt)
        url = f"http://127.0.0.1:{self.port}{path}"
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(url, method=method, data=data)
        with _OPENER.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def discovery(self) -> dict[str, Any]:
        return self._request("GET", "/.well-known/openid-configuration")

    def sign(self, claims: dict, header: dict | None = None) -> str:
        """A JWT signed with the provider's own key (for crafting logout tokens, good and bad)."""
        return str(self._request("POST", "/__test/sign", {"claims": claims, "header": header or {}})["token"])

    def stats(self) -> dict[str, int]:
        """Counters: token_requests, refresh_requests, authorization_code_requests,
        failed_token_requests, forced_refresh_failures, authorization_requests,
        userinfo_requests, revocation_requests, end_session_requests, logins,
        failed_logins, pending_refresh_failures."""
        return self._request("GET", "/__test/stats")

    def reset_stats(self) -> None:
        self._request("POST", "/__test/reset-stats")

    def fail_next_refresh(self, count: int = 1) -> None:
        """The next ``count`` refresh_token grants answer 400 invalid_grant."""
        self._request("POST", f"/__test/fail-refresh?count={int(count)}")

    def revoke_refresh_tokens(self, account: str | None = None) -> int:
        """Delete stored refresh tokens (all, or one account's). Returns how many."""
        q = f"?account={urllib.parse.quote(account)}" if account else ""
        return int(self._request("POST", f"/__test/revoke-refresh{q}")["revoked"])


@contextlib.contextmanager
def start_oidc_provider(
    tmp_path: Path | str,
    clients: Sequence[dict[str, Any]],
    users: Sequence[dict[str, Any]] = DEFAULT_USERS,
    access_token_ttl: int = 3600,
    id_token_padding: int = 0,
    **kwargs: Any,
) -> Iterator[OIDCProvider]:
    """Start the provider, yield its handle, stop it (by PID) on exit.

    Extra keyword arguments go to :class:`OIDCProvider` (id_token_ttl,
    refresh_token_ttl, session_ttl, grant_ttl, pkce_required,
    logout_auto_submit, extra_config, startup_timeout).
    """
    idp = OIDCProvider(
        tmp_path,
        clients=clients,
        users=users,
        access_token_ttl=access_token_ttl,
        id_token_padding=id_token_padding,
        **kwargs,
    )
    idp.start()
    try:
        yield idp
    finally:
        idp.stop()

