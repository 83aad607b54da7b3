"""``gateway login`` / ``token`` / ``logout``: the command line's side of the loopback sign-in (RFC 8252).

A small fake gateway (``http.server`` in a thread on 127.0.0.1) implements the two
endpoints the command uses, as the contract describes them:

* ``GET /oauth2/cli?port=P&code_challenge=C&code_challenge_method=S256`` redirects the
  browser to ``http://127.0.0.1:P/callback?code=X`` (or ``?error=...``);
* ``POST /oauth2/token`` (form ``code``, ``code_verifier``) checks the verifier against
  the challenge, uses a code once and for 60 s only, and answers the token JSON or a
  400 ``invalid_grant``.

The command runs as a real process (``python -m gateway ...``) with its own
``XDG_CONFIG_HOME``; the test is the browser (urllib, redirects followed by hand).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import re
import secrets
import select
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import jwt
import pytest

from gateway import cli_login

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parent.parent
JWT_KEY = "fake-gateway-signing-key-0123456789abcdef"
ALICE = {"sub": "u-1001", "email": "alice@example.com", "preferred_username": "alice"}


# --------------------------------------------------------------------------- the fake gateway


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


class FakeGateway:
    """The gateway's two CLI endpoints. ``mode``: ``ok``, ``deny`` (callback error), ``refuse`` (token 400)."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self.lock = threading.Lock()
        self.reset()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.mode = "ok"
            self.expires_in = 3600
            self.jwt_lifetime: Optional[int] = None      # the JWT's own exp, when it differs from expires_in
            self.user: Dict[str, str] = dict(ALICE)
            self.codes: Dict[str, Dict[str, Any]] = {}
            self.token_requests: List[Dict[str, Any]] = []
            self.issued: List[str] = []
            self.cli_requests: List[Dict[str, str]] = []

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), {"Content-Type": "application/json", "Cache-Control": "no-store"})

    def do_GET(self) -> None:  # noqa: N802
        fake: FakeGateway = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/oauth2/jwks":
            self._json(200, {"keys": []})
            return
        if url.path != "/oauth2/cli":
            self._send(404)
            return
        query = dict(urllib.parse.parse_qsl(url.query))
        fake.cli_requests.append(query)
        port = query.get("port", "")
        challenge = query.get("code_challenge", "")
        if (not port.isdigit() or not 0 < int(port) < 65536 or query.get("code_challenge_method") != "S256"
                or not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge)):
            self._send(400, b"bad cli request")
            return
        callback = f"http://127.0.0.1:{int(port)}/callback"
        if fake.mode == "deny":
            target = callback + "?" + urllib.parse.urlencode(
                {"error": "access_denied", "error_description": "the user said no"})
        else:
            code = secrets.token_urlsafe(24)
            with fake.lock:
                fake.codes[code] = {"challenge": challenge, "at": time.time()}
            target = callback + "?" + urllib.parse.urlencode({"code": code})
        self._send(302, b"", {"Location": target})

    def do_POST(self) -> None:  # noqa: N802
        fake: FakeGateway = self.server.fake
        if self.path != "/oauth2/token":
            self._send(404)
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        form = dict(urllib.parse.parse_qsl(raw.decode("ascii")))
        fake.token_requests.append({"form": form, "content_type": self.headers.get("Content-Type"),
                                    "accept": self.headers.get("Accept")})
        if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            self._json(400, {"error": "invalid_request", "error_description": "form expected"})
            return
        with fake.lock:
            grant = fake.codes.pop(form.get("code", ""), None)      # a code works once, whatever happens
        if fake.mode == "refuse":
            self._json(400, {"error": "invalid_grant", "error_description": "the code has expired"})
            return
        verifier = form.get("code_verifier", "")
        if grant is None or time.time() - grant["at"] > 60 or s256(verifier) != grant["challenge"]:
            self._json(400, {"error": "invalid_grant", "error_description": "unknown code or wrong verifier"})
            return
        now = int(time.time())
        claims = {"iss": fake.origin, "aud": "gateway", "iat": now, "exp": now + (fake.jwt_lifetime or fake.expires_in),
                  **fake.user}
        token = jwt.encode(claims, JWT_KEY, algorithm="HS256")
        fake.issued.append(token)
        self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": fake.expires_in, **fake.user})


@pytest.fixture(scope="module")
def gateway_fake():
    fake = FakeGateway()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def fake(gateway_fake: FakeGateway) -> FakeGateway:
    gateway_fake.reset()
    return gateway_fake


# --------------------------------------------------------------------------- the browser and the command


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_browser = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def browse(url: str) -> Tuple[int, Dict[str, str], str]:
    """One GET, no redirect followed: status, headers, body."""
    try:
        with _browser.open(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode("utf-8", "replace")


def be_the_browser(start_url: str) -> Tuple[str, int, str]:
    """Follow the gateway's redirect to the loopback callback: (callback URL, its status, its page)."""
    status, headers, _ = browse(start_url)
    assert status == 302, status
    location = headers["Location"]
    status, headers, page = browse(location)
    return location, status, page


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cli:
    """``python -m gateway`` with its own XDG_CONFIG_HOME (and HOME) in a temporary directory."""

    def __init__(self, tmp_path: Path):
        self.config_home = tmp_path / "config"
        self.env = {key: value for key, value in os.environ.items()
                    if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        self.env.update({"XDG_CONFIG_HOME": str(self.config_home), "HOME": str(tmp_path / "home"),
                         "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})

    @property
    def tokens_file(self) -> Path:
        return self.config_home / "gateway" / "tokens.json"

    def tokens(self) -> Dict[str, Any]:
        return json.loads(self.tokens_file.read_text())

    def write_tokens(self, data: Dict[str, Any]) -> None:
        cli_login.TokenStore(self.tokens_file)._write(data)

    def run(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start_login(self, url: str, *extra: str) -> "LoginProcess":
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "login", url, "--no-browser", *extra],
                                cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return LoginProcess(proc)


class LoginProcess:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._head = b""

    def first_line(self, timeout: float = 5) -> str:
        """The first stdout line (the sign-in address), read straight from the pipe with a deadline."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._head:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no first line in time: {self._head!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"stdout closed early: {self._head!r}; rc={self.proc.wait(5)}")
            self._head += chunk
        return self._head.split(b"\n", 1)[0].decode()

    def finish(self, timeout: float = 10) -> Tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self._head + out).decode(), err.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def sign_in(cli: Cli, fake: FakeGateway, url: Optional[str] = None) -> Tuple[int, str, str, str]:
    """The whole flow once: (exit status, stdout, stderr, callback URL)."""
    login = cli.start_login(url or fake.origin, "--timeout", "15")
    try:
        callback, status, page = be_the_browser(login.first_line())
        assert status == 200, page
        rc, out, err = login.finish()
        return rc, out, err, callback
    finally:
        login.stop()


# --------------------------------------------------------------------------- sign-in


def test_login_stores_the_token_and_says_who(cli: Cli, fake: FakeGateway) -> None:
    started = time.time()
    login = cli.start_login(fake.origin + "/some/path/", "--timeout", "15")
    try:
        start_url = login.first_line()
        parts = urllib.parse.urlsplit(start_url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == fake.origin + "/oauth2/cli"
        query = dict(urllib.parse.parse_qsl(parts.query))
        assert set(query) == {"port", "code_challenge", "code_challenge_method"}
        assert query["code_challenge_method"] == "S256"
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query["code_challenge"])
        port = int(query["port"])
        listener = f"http://127.0.0.1:{port}"

        # The loopback listener answers only /callback with a code (or an error).
        assert browse(listener + "/")[0] == 404
        assert browse(listener + "/favicon.ico")[0] == 404
        assert browse(listener + "/callback")[0] == 400          # no code, no error: ignored

        status, headers, _ = browse(start_url)
        assert status == 302
        callback = headers["Location"]
        assert callback.startswith(listener + "/callback?code=")
        status, headers, page = browse(callback)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert headers["Cache-Control"] == "no-store"
        assert "close this tab" in page

        rc, out, err = login.finish()
    finally:
        login.stop()
    assert rc == 0, err
    assert out.splitlines() == [start_url, f"signed in as alice to {fake.origin}"]

    # The exchange: the code and a verifier that matches the challenge, as a form.
    assert len(fake.token_requests) == 1
    sent = fake.token_requests[0]
    assert sent["content_type"] == "application/x-www-form-urlencoded"
    assert sent["accept"] == "application/json"
    assert set(sent["form"]) == {"code", "code_verifier"}
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]
    assert sent["form"]["code"] == code
    verifier = sent["form"]["code_verifier"]
    assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", verifier)
    assert s256(verifier) == query["code_challenge"]

    # Neither the token nor the code nor the verifier is printed.
    token = fake.issued[-1]
    for secret in (token, code, verifier):
        assert secret not in out and secret not in err

    # tokens.json: 0600 in a 0700 directory, keyed by the origin, nothing left behind.
    path = cli.tokens_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == ["tokens.json"]
    data = cli.tokens()
    assert list(data) == [fake.origin]
    entry = data[fake.origin]
    assert entry["access_token"] == token
    assert entry["sub"] == "u-1001" and entry["email"] == "alice@example.com" and entry["preferred_username"] == "alice"
    assert started + 3600 - 2 <= entry["expires_at"] <= time.time() + 3600 + 2

    # The code was used: replaying it fails at the gateway.
    body = urllib.parse.urlencode({"code": code, "code_verifier": verifier}).encode()
    req = urllib.request.Request(fake.origin + "/oauth2/token", data=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        _browser.open(req, timeout=5)
    with refused.value:
        assert refused.value.code == 400


def test_login_names_the_user_by_email_or_sub_when_there_is_no_username(cli: Cli, fake: FakeGateway) -> None:
    fake.user = {"sub": "u-2002", "email": "bob@example.com"}
    rc, out, err, _ = sign_in(cli, fake)
    assert rc == 0, err
    assert out.splitlines()[-1] == f"signed in as bob@example.com to {fake.origin}"
    fake.user = {"sub": "u-3003"}
    rc, out, err, _ = sign_in(cli, fake)
    assert rc == 0, err
    assert out.splitlines()[-1] == f"signed in as u-3003 to {fake.origin}"
    assert cli.tokens()[fake.origin]["sub"] == "u-3003"           # the second sign-in replaced the first


def test_login_in_process_opens_the_browser(tmp_path: Path, fake: FakeGateway) -> None:
    """Without --no-browser the address goes to the browser (here: a stand-in), not to stdout."""
    opened: List[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        threading.Thread(target=be_the_browser, args=(url,), daemon=True).start()
        return True

    out, err = io.StringIO(), io.StringIO()
    store = cli_login.TokenStore(tmp_path / "tokens.json")
    rc = cli_login.login(fake.origin, timeout=10, out=out, err=err, store=store, browser=browser)
    assert rc == 0, err.getvalue()
    assert len(opened) == 1 and opened[0].startswith(fake.origin + "/oauth2/cli?port=")
    assert out.getvalue() == f"signed in as alice to {fake.origin}\n"
    assert store.get(fake.origin)["access_token"] == fake.issued[-1]


# --------------------------------------------------------------------------- sign-in failures


def test_login_callback_error(cli: Cli, fake: FakeGateway) -> None:
    fake.mode = "deny"
    login = cli.start_login(fake.origin, "--timeout", "15")
    try:
        callback, status, page = be_the_browser(login.first_line())
        assert "error=access_denied" in callback
        assert status == 200 and "Sign-in failed" in page
        rc, out, err = login.finish()
    finally:
        login.stop()
    assert rc == 1
    assert "sign-in failed: access_denied: the user said no" in err
    assert fake.token_requests == []
    assert not cli.tokens_file.exists()


def test_login_token_endpoint_refuses(cli: Cli, fake: FakeGateway) -> None:
    fake.mode = "refuse"
    rc, out, err, callback = sign_in(cli, fake)
    assert rc == 1
    assert "invalid_grant: the code has expired" in err
    assert "signed in" not in out
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]
    assert code not in out and code not in err
    assert not cli.tokens_file.exists()


def test_login_times_out(cli: Cli, fake: FakeGateway) -> None:
    started = time.monotonic()
    login = cli.start_login(fake.origin, "--timeout", "1")
    try:
        login.first_line()
        rc, out, err = login.finish(timeout=8)
    finally:
        login.stop()
    assert rc == 1
    assert "timed out after 1 s" in err
    assert time.monotonic() - started < 6
    assert fake.token_requests == [] and not cli.tokens_file.exists()


def test_login_gateway_unreachable(cli: Cli) -> None:
    origin = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = cli.run("login", origin, "--no-browser", "--timeout", "5")
    assert result.returncode == 1
    assert result.stdout == ""                                   # no browser is sent to a dead address
    assert f"cannot reach {origin}: connection refused" in result.stderr
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:8080", "http://", "https://user:pw@gw.example/"])
def test_login_refuses_bad_urls(cli: Cli, url: str) -> None:
    result = cli.run("login", url, "--no-browser")
    assert result.returncode == 2
    assert "invalid URL" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- gateway token


def test_token_prints_the_stored_token_for_the_origin(cli: Cli, fake: FakeGateway) -> None:
    rc, _, err, _ = sign_in(cli, fake)
    assert rc == 0, err
    token = fake.issued[-1]
    port = fake.origin.rsplit(":", 1)[1]
    for url in (fake.origin, fake.origin + "/", fake.origin + "/some/path/?q=1#frag", f"HTTP://127.0.0.1:{port}/"):
        result = cli.run("token", url)
        assert result.returncode == 0, (url, result.stderr)
        assert result.stdout == token + "\n"
        assert result.stderr == ""

    for other in (f"http://localhost:{port}", f"https://127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"):
        result = cli.run("token", other + "/x")
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == f"no token for {other}: run gateway login {other}"


def test_token_without_any_file(cli: Cli) -> None:
    result = cli.run("token", "http://127.0.0.1:9")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "no token for http://127.0.0.1:9: run gateway login http://127.0.0.1:9"


def test_token_default_ports_and_case(cli: Cli) -> None:
    far = int(time.time()) + 3600
    cli.write_tokens({"https://gw.example": {"access_token": "tok-a", "expires_at": far},
                      "http://gw.example:8080": {"access_token": "tok-b", "expires_at": far}})
    assert cli.run("token", "https://GW.Example:443/apps/").stdout == "tok-a\n"
    assert cli.run("token", "https://gw.example").stdout == "tok-a\n"
    result = cli.run("token", "http://gw.example:8080/")
    assert result.stdout == "tok-b\n"
    assert "warning: http://gw.example:8080 is plain http" in result.stderr   # not loopback: warned
    assert cli.run("token", "https://gw.example:8443").returncode == 1


def test_token_expired_or_about_to(cli: Cli) -> None:
    now = int(time.time())
    cli.write_tokens({"http://127.0.0.1:7001": {"access_token": "old", "expires_at": now - 5},
                      "http://127.0.0.1:7002": {"access_token": "ending", "expires_at": now + 5},
                      "http://127.0.0.1:7003": {"access_token": "fine", "expires_at": now + 60}})
    result = cli.run("token", "http://127.0.0.1:7001")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "token for http://127.0.0.1:7001 expired: run gateway login http://127.0.0.1:7001"
    result = cli.run("token", "http://127.0.0.1:7002")
    assert result.returncode == 1 and result.stdout == ""
    assert "run gateway login http://127.0.0.1:7002" in result.stderr
    result = cli.run("token", "http://127.0.0.1:7003")
    assert result.returncode == 0 and result.stdout == "fine\n"


def test_token_expiry_comes_from_the_jwt_when_it_is_earlier(cli: Cli, fake: FakeGateway) -> None:
    """``expires_in`` says an hour, the JWT's ``exp`` says 5 s: the earlier one counts."""
    fake.jwt_lifetime = 5
    rc, _, err, _ = sign_in(cli, fake)
    assert rc == 0, err
    entry = cli.tokens()[fake.origin]
    assert entry["expires_at"] == jwt.decode(entry["access_token"], options={"verify_signature": False})["exp"]
    result = cli.run("token", fake.origin)
    assert result.returncode == 1 and "run gateway login" in result.stderr


def test_token_unreadable_file(cli: Cli) -> None:
    cli.tokens_file.parent.mkdir(parents=True)
    cli.tokens_file.write_text("{not json")
    result = cli.run("token", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "is not valid JSON" in result.stderr


# --------------------------------------------------------------------------- gateway logout


def test_logout_forgets_only_that_origin(cli: Cli, fake: FakeGateway) -> None:
    rc, _, err, _ = sign_in(cli, fake)
    assert rc == 0, err
    far = int(time.time()) + 3600
    data = cli.tokens()
    data["https://other.example"] = {"access_token": "other", "expires_at": far}
    cli.write_tokens(data)

    result = cli.run("logout", fake.origin + "/whatever/")
    assert result.returncode == 0
    assert result.stdout.startswith(f"forgot the token for {fake.origin}")
    assert cli.run("token", fake.origin).returncode == 1
    assert list(cli.tokens()) == ["https://other.example"]
    assert stat.S_IMODE(cli.tokens_file.stat().st_mode) == 0o600

    result = cli.run("logout", fake.origin)
    assert result.returncode == 0
    assert result.stdout.strip() == f"no token for {fake.origin}: nothing to forget"
    assert cli.run("token", "https://other.example").stdout == "other\n"


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("url, origin", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("HTTPS://Apps.Example.COM/path/x?y=1#z", "https://apps.example.com"),
    ("https://apps.example.com:443/", "https://apps.example.com"),
    ("http://apps.example.com:80", "http://apps.example.com"),
    ("http://apps.example.com:443", "http://apps.example.com:443"),
    ("https://apps.example.com:80", "https://apps.example.com:80"),
    ("http://[::1]:9000/a", "http://[::1]:9000"),
    ("  https://apps.example.com  ", "https://apps.example.com"),
])
def test_origin_of(url: str, origin: str) -> None:
    assert cli_login.origin_of(url) == origin


@pytest.mark.parametrize("url", ["", "apps.example.com", "ftp://apps.example.com", "https:///path",
                                 "http://host:99999", "https://u@apps.example.com"])
def test_origin_of_refuses(url: str) -> None:
    with pytest.raises(cli_login.LoginError):
        cli_login.origin_of(url)


@pytest.mark.parametrize("origin, warned", [
    ("http://127.0.0.1:8080", False), ("http://localhost:8080", False), ("http://[::1]:8080", False),
    ("http://127.5.6.7", False), ("https://apps.example.com", False), ("http://apps.example.com", True),
    ("http://10.0.0.1", True),
])
def test_plain_http_warning(origin: str, warned: bool) -> None:
    assert (cli_login.insecure_warning(origin) is not None) == warned


def test_pkce_pair() -> None:
    verifier, challenge = cli_login.pkce_pair()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
    assert challenge == s256(verifier)
    assert cli_login.pkce_pair()[0] != verifier
    # RFC 7636 appendix B
    assert cli_login.s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_tokens_path(tmp_path: Path) -> None:
    assert cli_login.tokens_path({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == Path("/x/cfg/gateway/tokens.json")
    assert cli_login.tokens_path({"HOME": "/h"}) == Path("/h/.config/gateway/tokens.json")
    assert cli_login.tokens_path({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path("/h/.config/gateway/tokens.json")


def test_store_replaces_a_loose_file_with_a_0600_one(tmp_path: Path) -> None:
    path = tmp_path / "gateway" / "tokens.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"https://a.example": {"access_token": "a"}}))
    os.chmod(path, 0o644)
    store = cli_login.TokenStore(path)
    store.put("https://b.example", {"access_token": "b"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"https://a.example", "https://b.example"}
    assert store.remove("https://a.example") is True
    assert store.remove("https://a.example") is False
    assert sorted(os.listdir(path.parent)) == ["tokens.json"]
