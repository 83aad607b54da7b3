"""Helpers for the browser-login end-to-end tests (tests/test_e2e_login*.py).

The pieces they combine are real processes on loopback: oidc-provider
(tests/support/oidc_provider.py), ``python -m gateway serve``
(tests/support/gateway_proc.py), echo upstreams (tests/support/upstream.py),
``redis-server`` (tests/support/redis_server.py) and headless Chromium
(tests/support/browser.py). The provider is reached as ``http://localhost:PORT``
and every gateway as ``http://127.0.0.1:PORT``: cookies are scoped by host, not
port, so the provider's and the gateway's cookies never mix.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import json
import os
import signal
import socket
import time
import urllib.parse
from typing import Any, Callable, Iterator, Optional, Sequence

import yaml

from tests.support import tokens
from tests.support.e2e import Response, request, wait_ready
from tests.support.gateway_proc import GatewayProcess

SESSION_SECRET = "e2e-login-session-secret-0123456789abcdefghijklmnop"
CI_JWT_SECRET = "e2e-login-ci-jwt-secret-0123456789abcdefghijklmnopq"
CI_ISSUER = "ci-runner"
SCOPES = ["openid", "email", "profile", "groups"]
HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def provider_entry(issuer: str, client_id: str, client_secret: str, display_name: Optional[str] = None) -> dict:
    entry = {
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": client_secret,
        "scopes": list(SCOPES),
        "groups_claim": "groups",
    }
    if display_name:
        entry["display_name"] = display_name
    return entry


def gateway_yaml(
    port: int,
    *,
    providers: dict,
    routes: Sequence[dict],
    cookie_name: str = "_gw",
    store: str = "cookie",
    lifetime: str = "1h",
) -> str:
    """A routes.yaml for a gateway on 127.0.0.1:``port`` (public_url the same), with the HS256 CI issuer."""
    config = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "admin_listen": "off",
        },
        "session": {
            "secret": "${GATEWAY_SESSION_SECRET}",
            "cookie_name": cookie_name,
            "lifetime": lifetime,
            "store": store,
        },
        "providers": providers,
        "tokens": [
            {"issuer": CI_ISSUER, "secret": "${CI_JWT_SECRET}", "algorithms": ["HS256"], "audience": "any"},
        ],
        "routes": list(routes),
    }
    return yaml.safe_dump(config, sort_keys=False)


def start_gateway(config_text: str, port: int, *, ready: bool = True) -> GatewayProcess:
    """The real ``python -m gateway serve`` on 127.0.0.1:``port``; waits for /ready unless told not to."""
    last: Optional[Exception] = None
    for _ in range(2):  # the chosen port could have been taken meanwhile (unlikely)
        gw = GatewayProcess(config_text, env=tokens.gateway_env(SESSION_SECRET, CI_JWT_SECRET=CI_JWT_SECRET), listen=f"127.0.0.1:{port}")
        try:
            gw.start()
        except RuntimeError as exc:
            last = exc
            continue
        assert gw.url == f"http://127.0.0.1:{port}", gw.url
        if ready:
            try:
                wait_ready(gw.admin_url, timeout=20)
            except AssertionError:
                stderr = "\n".join(gw.stderr_lines[-30:])
                gw.stop()
                raise AssertionError("gateway never became ready:\n" + stderr)
        return gw
    raise AssertionError(f"gateway did not start: {last}")


hs_token = functools.partial(tokens.hs_token, iss=CI_ISSUER, secret=CI_JWT_SECRET, aud="api")


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --------------------------------------------------------------------------- browser helpers


def provider_sign_in(page: Any, login: str, password: str) -> None:
    """Fill the oidc-provider's sign-in form (tests/idp/server.mjs) and submit it."""
    page.wait_for_selector('input[name="login"]')
    page.fill('input[name="login"]', login)
    page.fill('input[name="password"]', password)
    page.get_by_role("button", name="Sign in").click()


def on_origin(origin: str, path_prefix: str = "/") -> Callable[[str], bool]:
    """A wait_for_url predicate: the URL is on ``origin`` and its path starts with ``path_prefix``."""
    def check(url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" == origin and parts.path.startswith(path_prefix)
    return check


def wait_url(page: Any, url: str, timeout: float = 15_000) -> None:
    """Wait until the page shows exactly ``url`` (after every redirect) and has loaded."""
    page.wait_for_url(lambda u: u == url, timeout=timeout)
    page.wait_for_load_state("load")


def cookies(context: Any, url: str) -> dict:
    """name -> cookie dict (Playwright's: name, value, httpOnly, secure, sameSite, expires, ...)."""
    return {c["name"]: c for c in context.cookies(url)}


def cookie_header(context: Any, url: str, only: Optional[Callable[[str], bool]] = None) -> str:
    return "; ".join(
        f"{c['name']}={c['value']}" for c in context.cookies(url) if only is None or only(c["name"])
    )


class RequestLog:
    """Every request the browser context makes (redirect hops included), while attached."""

    def __init__(self, context: Any):
        self.context = context
        self.urls: list[str] = []
        self._fn = lambda req: self.urls.append(req.url)

    def __enter__(self) -> "RequestLog":
        self.context.on("request", self._fn)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.context.remove_listener("request", self._fn)

    def matching(self, prefix: str) -> list[str]:
        return [u for u in self.urls if u.startswith(prefix)]

    def query_of(self, prefix: str) -> dict:
        found = self.matching(prefix)
        assert found, f"no request to {prefix}; saw {self.urls}"
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(found[-1]).query))


def set_cookie_headers(resp: Response) -> list[str]:
    return resp.all("Set-Cookie")


def set_cookie_named(resp: Response, prefix: str) -> list[str]:
    return [h for h in resp.all("Set-Cookie") if h.split("=", 1)[0].startswith(prefix)]


def _is_deletion(header: str) -> bool:
    """A Set-Cookie header that deletes its cookie: Max-Age=0 or an Expires in the past."""
    for attr in header.split(";")[1:]:
        key, _, value = attr.strip().partition("=")
        key = key.strip().lower()
        if key == "max-age" and value.strip().lstrip("-").isdigit() and int(value) <= 0:
            return True
        if key == "expires":
            try:
                when = email.utils.parsedate_to_datetime(value.strip())
            except (TypeError, ValueError):
                continue
            if when.timestamp() < time.time():
                return True
    return False


def cookies_from_set_cookie(resp: Response) -> dict:
    """name -> value of every cookie the response sets (not those it deletes)."""
    out = {}
    for header in resp.all("Set-Cookie"):
        name, _, value = header.split(";", 1)[0].partition("=")
        if not _is_deletion(header):
            out[name.strip()] = value.strip().strip('"')
    return out


def cleared_cookies(resp: Response) -> set:
    """Names of the cookies the response deletes."""
    return {h.split("=", 1)[0].strip() for h in resp.all("Set-Cookie") if _is_deletion(h)}


def api_get(base_url: str, path: str, cookie: str = "", accept: str = "application/json", **headers: str) -> Response:
    h = {"Accept": accept}
    if cookie:
        h["Cookie"] = cookie
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return request(base_url, "GET", path, h)


@contextlib.contextmanager
def stopped_process(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` (a process this test suite started) for the block, SIGCONT after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
