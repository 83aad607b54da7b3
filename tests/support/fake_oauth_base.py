"""What the loopback OAuth emulators (fake_github.py, fake_oauth2.py) share.

Each emulator is a Tornado application that runs in a process of its own::

    python -m tests.support.fake_github --config FILE [--port 0]

It reads its whole configuration (clients, users, options) from the JSON file,
listens on 127.0.0.1 only and prints ``READY http://127.0.0.1:PORT`` once it
accepts connections. :class:`EmulatorProcess` starts such a process, waits for
that line (polling its log with a deadline), talks to its ``/__test/...``
admin endpoints and stops it by PID.

Shared server pieces: a clock the tests can move forward (``/__test/advance``)
so expiry is tested without sleeping, request counters (``/__test/stats``), a
short log of the requests received (``/__test/requests``, secrets left out),
PKCE S256 verification, HTTP Basic client credentials as RFC 6749 §2.3.1 has
them, and a minimal HTML page renderer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import hashlib
import html
import http.cookiejar
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from tornado import httpserver, netutil, web

REPO_ROOT = Path(__file__).resolve().parents[2]
_READY_RE = re.compile(r"^READY (http://127\.0\.0\.1:(\d+))$", re.M)
_PKCE_CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_PKCE_VERIFIER_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
# never go through a proxy, whatever the environment says
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- server side ---------------------------------------------------------------


class State:
    """Mutable state of one emulator process: config, clock, counters, request log."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.clock_offset = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def count(self, *keys: str) -> None:
        for key in keys:
            self.stats[key] += 1


def new_token(prefix: str = "", nbytes: int = 27) -> str:
    return prefix + secrets.token_urlsafe(nbytes).replace("-", "A").replace("_", "b")


def pkce_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def valid_challenge(challenge: str) -> bool:
    return bool(_PKCE_CHALLENGE_RE.match(challenge))


def pkce_matches(challenge: str, verifier: str) -> bool:
    if not _PKCE_VERIFIER_RE.match(verifier):
        return False
    return secrets.compare_digest(pkce_challenge(verifier), challenge)


def basic_credentials(header: str) -> Optional[tuple[str, str]]:
    """``Authorization: Basic`` client credentials, each form-urlencoded before
    base64 as RFC 6749 §2.3.1 requires. None when the header is not Basic;
    ``("", "")`` when it is Basic but malformed."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, sep, password = decoded.partition(":")
    if not sep:
        return ("", "")
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


def page(title: str, body: str) -> str:
    """A complete, tiny HTML document (``body`` is trusted markup)."""
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>"
    )


def hidden_inputs(values: dict[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in values.items()
    )


def add_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` appended to its query (kept: whatever it had)."""
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


_LOGGED_HEADERS = ("Accept", "Content-Type", "User-Agent", "X-GitHub-Api-Version")


class BaseHandler(web.RequestHandler):
    """Every emulator handler: records a redacted summary of each request."""

    def initialize(self, state: State) -> None:
        self.state = state

    def prepare(self) -> None:
        req = self.request
        if req.path.startswith("/__test/"):
            return
        auth = req.headers.get("Authorization", "")
        entry: dict[str, Any] = {
            "method": req.method,
            "path": req.path,
            "query": sorted(req.query_arguments),
            "headers": {h: req.headers[h] for h in _LOGGED_HEADERS if h in req.headers},
            "auth_scheme": auth.split(" ", 1)[0] if auth else None,
        }
        if req.method == "POST":
            entry["fields"] = sorted(req.body_arguments)
            grant = req.body_arguments.get("grant_type")
            if grant:
                entry["grant_type"] = grant[0].decode("utf-8", "replace")
        self.state.log.append(entry)

    def body_params(self) -> dict[str, str]:
        """The POST parameters: form body, or a JSON object body."""
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(self.request.body or b"{}")
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        return {k: v[-1].decode("utf-8", "replace") for k, v in self.request.body_arguments.items()}

    def check_xsrf_cookie(self) -> None:  # the emulators do their own CSRF checks
        return None


class _Stats(BaseHandler):
    def get(self) -> None:
        self.finish(dict(self.state.stats))


class _ResetStats(BaseHandler):
    def post(self) -> None:
        self.state.stats.clear()
        self.state.log.clear()
        self.finish({})


class _Requests(BaseHandler):
    def get(self) -> None:
        self.finish({"requests": list(self.state.log)})


class _Advance(BaseHandler):
    def post(self) -> None:
        self.state.clock_offset += float(self.get_argument("seconds"))
        self.finish({"offset": self.state.clock_offset})


def admin_routes(state: State) -> list[Any]:
    kw = {"state": state}
    return [
        (r"/__test/stats", _Stats, kw),
        (r"/__test/reset-stats", _ResetStats, kw),
        (r"/__test/requests", _Requests, kw),
        (r"/__test/advance", _Advance, kw),
    ]


def serve(make_app: Callable[[dict[str, Any]], web.Application], description: str) -> None:
    """The ``python -m`` entry point of an emulator: config file in, READY line out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON configuration file")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())

    async def main() -> None:
        server = httpserver.HTTPServer(make_app(config), xheaders=False)
        sockets = netutil.bind_sockets(args.port, address="127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        print(f"READY http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()

    asyncio.run(main())


# -- test side -----------------------------------------------------------------

_HIDDEN_RE = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


def hidden_fields(text: str) -> dict[str, str]:
    """The hidden inputs of the emulator page ``text`` (as :func:`hidden_inputs` writes them)."""
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN_RE.findall(text)}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class FormClient:
    """A browser stand-in for the emulators' pages with plain HTTP: keeps cookies and
    never follows redirects (the last one usually points at a client that isn't running)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                                  urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, url: str, data: Optional[dict[str, str]] = None) -> tuple[int, str, str]:
        """GET (or POST ``data`` as a form) ``url``: (status, Location, body text)."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(urllib.parse.urljoin(self.base_url, url), data=body,
                                     headers={"User-Agent": "emulator-form-client"})
        try:
            with self.opener.open(req, timeout=5) as resp:
                return resp.status, "", resp.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers.get("Location", ""), err.read().decode()



class EmulatorProcess:
    """One emulator process. ``module`` is e.g. ``tests.support.fake_github``."""

    def __init__(self, module: str, workdir: Path | str, config: dict[str, Any], *, port: int = 0,
                 startup_timeout: float = 15.0) -> None:
        self.module = module
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = module.rsplit(".", 1)[-1]
        self.config_path = self.workdir / f"{name}-config.json"
        self.log_path = self.workdir / f"{name}.log"
        self.config = config
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> "EmulatorProcess":
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--config", str(self.config_path), "--port", str(self.port)],
                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            m = _READY_RE.search(self.log_text())
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"{self.module} exited with {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.module} not READY after {self.startup_timeout}s:\n{self.log_text()}")
            time.sleep(0.02)

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

    def __enter__(self) -> "EmulatorProcess":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def admin(self, method: str, path: str, params: Optional[dict[str, Any]] = None, timeout: float = 5.0) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        req = urllib.request.Request(f"{self.url}/__test/{path}{query}", method=method,
                                     data=b"" if method == "POST" else None)
        with OPENER.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def stats(self) -> dict[str, int]:
        """Request counters by name (see the emulator's module docstring)."""
        return self.admin("GET", "stats")

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log."""
        self.admin("POST", "reset-stats")

    def requests(self) -> list[dict[str, Any]]:
        """The last requests received: method, path, query names, a few headers,
        the Authorization scheme, POST field names and grant_type (no values)."""
        return self.admin("GET", "requests")["requests"]

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock forward: codes and tokens expire without sleeping."""
        self.admin("POST", "advance", {"seconds": seconds})
