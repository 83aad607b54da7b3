"""The command line's side of signing in to a gateway, and the file it keeps tokens in.

``gateway login URL`` runs the RFC 8252 loopback flow: it listens on
``127.0.0.1:0``, sends a browser to ``ORIGIN/oauth2/cli?port=P&code_challenge=C``
(PKCE, RFC 7636, S256), takes the one ``/callback?code=X`` the gateway redirects
that browser to, and exchanges the code plus its verifier at
``POST ORIGIN/oauth2/token`` for a gateway token.  ``gateway token URL`` prints
the stored token (for ``curl -H "Authorization: Bearer $(gateway token URL)"``),
``gateway logout URL`` forgets it.

Tokens live in ``$XDG_CONFIG_HOME/gateway/tokens.json`` (default
``~/.config/gateway/tokens.json``), mode 0600 in a 0700 directory, replaced
atomically, keyed by the URL's origin (``scheme://host[:port]``).  Neither a
token nor a code is ever printed, except the token by ``gateway token``.

Blocking code on purpose: this runs in a terminal, not in the server's event loop.
Standard library only.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import http.server
import ipaddress
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, TextIO, Tuple

DEFAULT_TIMEOUT = 300.0
MIN_REMAINING = 10.0            # `gateway token` refuses a token with less than this left (seconds)
HTTP_TIMEOUT = 30.0             # for each request the command makes to the gateway
CALLBACK_PATH = "/callback"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LoginError(Exception):
    """A failure to explain to the user in one line (never holds a token or a code)."""


# --------------------------------------------------------------------------- URLs


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: lower case, default port dropped, path/query ignored.

    Raises ``LoginError`` for anything but an http(s) URL with a host.
    """
    text = (url or "").strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise LoginError(f"invalid URL {text!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise LoginError(f"invalid URL {text!r}: it must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise LoginError(f"invalid URL {text!r}: user names or passwords in the URL are not supported")
    host = (parts.hostname or "").lower()
    if not host:
        raise LoginError(f"invalid URL {text!r}: a host is required")
    if ":" in host:                      # IPv6 literal: urlsplit strips the brackets
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def is_loopback_host(origin: str) -> bool:
    host = (urllib.parse.urlsplit(origin).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_warning(origin: str) -> Optional[str]:
    """A warning for plain http to anything but this machine (tokens would travel in clear)."""
    if origin.startswith("http://") and not is_loopback_host(origin):
        return f"warning: {origin} is plain http: the token and the sign-in code travel unencrypted"
    return None


# --------------------------------------------------------------------------- PKCE


def pkce_pair() -> Tuple[str, str]:
    """``(verifier, challenge)``: a 64-character verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------- the tokens file


def tokens_path(env: Optional[Mapping[str, str]] = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path(env.get("HOME") or os.path.expanduser("~")) / ".config"
    return root / "gateway" / "tokens.json"


class TokenStore:
    """``tokens.json``: ``{origin: {"access_token", "token_type", "expires_at", "sub", ...}}``."""

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path is not None else tokens_path()

    def load(self) -> Dict[str, Dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LoginError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise LoginError(f"{self.path} is not valid JSON: fix or remove it") from None
        if not isinstance(data, dict):
            raise LoginError(f"{self.path} does not hold a JSON object: fix or remove it")
        return {key: value for key, value in data.items() if isinstance(value, dict)}

    def get(self, origin: str) -> Optional[Dict[str, Any]]:
        return self.load().get(origin)

    def put(self, origin: str, entry: Dict[str, Any]) -> None:
        data = self.load()
        data[origin] = entry
        self._write(data)

    def remove(self, origin: str) -> bool:
        data = self.load()
        if origin not in data:
            return False
        del data[origin]
        self._write(data)
        return True

    def _write(self, data: Dict[str, Any]) -> None:
        """Write to a 0600 temporary file next to the target, then rename it over the target."""
        directory = self.path.parent
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise LoginError(f"cannot create {directory}: {exc.strerror or exc}") from None
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
        tmp = directory / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise LoginError(f"cannot write {self.path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- the loopback listener


@dataclass
class Callback:
    code: Optional[str] = None
    error: Optional[str] = None
    error_description: Optional[str] = None


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; margin: 3em"><h1>{title}</h1><p>{text}</p></body></html>
"""


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: "_CallbackServer"
    timeout = 10                       # an idle (pre-)connection does not hold a thread forever
    server_version = "gateway-cli"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urllib.parse.urlsplit(self.path)
        if url.path != CALLBACK_PATH or self.server.result is not None:
            self._answer(404, "Not found", "Nothing here.")
            return
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        code = _first(query, "code")
        error = _first(query, "error")
        if error:
            result = Callback(error=error, error_description=_first(query, "error_description"))
            self._answer(200, "Sign-in failed", f"{_printable(error)}: {_printable(result.error_description or '')}. "
                         "You can close this tab and return to the terminal.")
        elif code:
            result = Callback(code=code)
            self._answer(200, "Back to the terminal", "The sign-in code went to the command line, which finishes "
                         "signing in. You can close this tab and return to the terminal.")
        else:                          # not the gateway's redirect: ignore it, keep waiting
            self._answer(400, "Bad request", "This address expects a sign-in code.")
            return
        self.server.finish(result)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(404, "Not found", "Nothing here.")

    do_HEAD = do_PUT = do_DELETE = do_POST

    def _answer(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass                           # the request line holds the code: never print it


class _CallbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CallbackHandler)
        self.result: Optional[Callback] = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def finish(self, result: Callback) -> None:
        with self._lock:
            if self.result is None:
                self.result = result
                self.done.set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass                           # a browser dropping a connection is not the user's problem


def _first(query: Dict[str, list], name: str) -> Optional[str]:
    values = query.get(name)
    return values[0] if values else None


def _printable(text: str, limit: int = 300) -> str:
    """Text from the network made safe for a terminal: no control characters, bounded length."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


# --------------------------------------------------------------------------- talking to the gateway


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None                    # a redirect is an answer of its own, never followed


_opener = urllib.request.build_opener(_NoRedirect)


def _unreachable(origin: str, exc: BaseException) -> LoginError:
    reason: Any = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return LoginError(f"cannot reach {origin}: its TLS certificate is not trusted ({reason.verify_message})")
    if isinstance(reason, ssl.SSLError):
        return LoginError(f"cannot reach {origin}: TLS error ({reason.reason or reason})")
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return LoginError(f"cannot reach {origin}: connection refused (is the gateway running at that address?)")
    if isinstance(reason, socket.gaierror):
        return LoginError(f"cannot reach {origin}: host not found")
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return LoginError(f"cannot reach {origin}: no answer within {HTTP_TIMEOUT:g} s")
    text = getattr(reason, "strerror", None) or str(reason)
    return LoginError(f"cannot reach {origin}: {text}")


def check_reachable(origin: str) -> None:
    """One cheap GET (the public JWKS) before a browser is sent anywhere: any HTTP answer will do."""
    req = urllib.request.Request(f"{origin}/oauth2/jwks", headers={"Accept": "application/json"})
    try:
        with _opener.open(req, timeout=HTTP_TIMEOUT) as resp:
            resp.read(0)
    except urllib.error.HTTPError as exc:
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(origin, exc) from None


def exchange_code(origin: str, code: str, verifier: str) -> Dict[str, Any]:
    """``POST ORIGIN/oauth2/token`` with ``code`` and ``code_verifier``: the token answer."""
    body = urllib.parse.urlencode({"code": code, "code_verifier": verifier}).encode("ascii")
    req = urllib.request.Request(
        f"{origin}/oauth2/token", data=body, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    try:
        with _opener.open(req, timeout=HTTP_TIMEOUT) as resp:
            raw = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        with exc:
            raise _token_refused(origin, exc.code, exc.read(1 << 16)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(origin, exc) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise LoginError(f"{origin} answered the token request without an access token")
    token_type = answer.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise LoginError(f"{origin} answered with a token of type {_printable(str(token_type))!r}, not Bearer")
    return answer


def _token_refused(origin: str, status: int, raw: bytes) -> LoginError:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        text = _printable(answer["error"])
        description = answer.get("error_description")
        if isinstance(description, str) and description:
            text += f": {_printable(description)}"
        return LoginError(f"{origin} refused the sign-in code (HTTP {status}): {text}")
    return LoginError(f"{origin} answered HTTP {status} to the token request")


def jwt_claims(token: str) -> Dict[str, Any]:
    """The payload of a JWT, not verified (the gateway verifies it; here it only says who and until when)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def token_entry(answer: Dict[str, Any], now: float) -> Dict[str, Any]:
    """What the tokens file keeps for one origin: the token, when it ends, and who it is for."""
    token = answer["access_token"]
    claims = jwt_claims(token)
    ends = []
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        ends.append(int(now + expires_in))
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        ends.append(int(exp))
    entry: Dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": min(ends) if ends else None,
        "obtained_at": int(now),
    }
    for name in ("sub", "email", "preferred_username"):
        value = answer.get(name, claims.get(name))
        if isinstance(value, str) and value:
            entry[name] = value
    return entry


def who(entry: Mapping[str, Any]) -> str:
    for name in ("preferred_username", "email", "sub"):
        value = entry.get(name)
        if isinstance(value, str) and value:
            return _printable(value)
    return "an unnamed user"


# --------------------------------------------------------------------------- the commands


def login(
    url: str,
    *,
    open_browser: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
    store: Optional[TokenStore] = None,
    browser: Callable[[str], bool] = webbrowser.open,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        origin = origin_of(url)
    except LoginError as exc:
        print(f"gateway login: {exc}", file=err)
        return EXIT_USAGE
    if not timeout > 0:
        print("gateway login: --timeout must be more than 0 seconds", file=err)
        return EXIT_USAGE
    warning = insecure_warning(origin)
    if warning:
        print(warning, file=err)
    store = store or TokenStore()
    try:
        store.load()                   # an unreadable file fails now, not after the browser dance
        check_reachable(origin)
        return _login(origin, open_browser, timeout, out, err, store, browser)
    except LoginError as exc:
        print(f"gateway login: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("gateway login: interrupted", file=err)
        return EXIT_INTERRUPTED


def _login(origin: str, open_browser: bool, timeout: float, out: TextIO, err: TextIO,
           store: TokenStore, browser: Callable[[str], bool]) -> int:
    verifier, challenge = pkce_pair()
    try:
        server = _CallbackServer()
    except OSError as exc:
        raise LoginError(f"cannot listen on 127.0.0.1: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="gateway-login-callback", daemon=True)
    thread.start()
    try:
        query = urllib.parse.urlencode({"port": server.port, "code_challenge": challenge,
                                        "code_challenge_method": "S256"})
        start_url = f"{origin}/oauth2/cli?{query}"
        if open_browser:
            print(f"Opening a browser to sign in to {origin}; if none opens, visit:\n  {start_url}", file=err, flush=True)
            try:
                opened = browser(start_url)
            except Exception:          # webbrowser raises webbrowser.Error and friends
                opened = False
            if not opened:
                print("No browser could be started: open the address above in a browser on this machine.",
                      file=err, flush=True)
        else:
            print(start_url, file=out, flush=True)
            print("Open the address above in a browser on this machine to sign in "
                  f"(waiting up to {timeout:g} s).", file=err, flush=True)
        if not server.done.wait(timeout):
            raise LoginError(f"timed out after {timeout:g} s waiting for the browser to sign in")
        result = server.result
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result is not None
    if result.error:
        text = _printable(result.error)
        if result.error_description:
            text += f": {_printable(result.error_description)}"
        raise LoginError(f"sign-in failed: {text}")
    assert result.code
    answer = exchange_code(origin, result.code, verifier)
    entry = token_entry(answer, time.time())
    store.put(origin, entry)
    print(f"signed in as {who(entry)} to {origin}", file=out, flush=True)
    return EXIT_OK


def print_token(url: str, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
                store: Optional[TokenStore] = None, now: Optional[float] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        origin = origin_of(url)
    except LoginError as exc:
        print(f"gateway token: {exc}", file=err)
        return EXIT_USAGE
    warning = insecure_warning(origin)
    if warning:
        print(warning, file=err)
    try:
        entry = (store or TokenStore()).get(origin)
    except LoginError as exc:
        print(f"gateway token: {exc}", file=err)
        return EXIT_FAILED
    token = entry.get("access_token") if entry else None
    if not isinstance(token, str) or not token:
        print(f"no token for {origin}: run gateway login {origin}", file=err)
        return EXIT_FAILED
    expires_at = entry.get("expires_at") if entry else None
    now = time.time() if now is None else now
    if isinstance(expires_at, (int, float)) and expires_at - now < MIN_REMAINING:
        when = "expired" if expires_at <= now else f"expires in {int(expires_at - now)} s"
        print(f"token for {origin} {when}: run gateway login {origin}", file=err)
        return EXIT_FAILED
    print(token, file=out, flush=True)
    return EXIT_OK


def logout(url: str, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
           store: Optional[TokenStore] = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        origin = origin_of(url)
    except LoginError as exc:
        print(f"gateway logout: {exc}", file=err)
        return EXIT_USAGE
    try:
        removed = (store or TokenStore()).remove(origin)
    except LoginError as exc:
        print(f"gateway logout: {exc}", file=err)
        return EXIT_FAILED
    if removed:
        print(f"forgot the token for {origin} (this machine only: sign out in a browser to end the session)", file=out)
    else:
        print(f"no token for {origin}: nothing to forget", file=out)
    return EXIT_OK
