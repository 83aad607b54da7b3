"""The request's path, top to bottom: accept, route, authenticate, authorize, plan, record.

Every request on the proxy port goes through these steps, whichever adapter
carries it (the bare-connection fast path, a ``RequestHandler``, the
WebSocket relay or forward-auth). The decisions are plain Python over plain
inputs (a ``RequestHead`` and the ``Runtime``) and return values: an
``Admitted`` request with its upstream plan, an ``OwnEndpoint`` for
``/oauth2/*``, or an ``Answer`` (``Refusal``, ``Redirect``, ``Page``...) to
send instead. Nothing here writes to a socket, so the table of decisions is
testable without one and can be run offline.

    accept(head, runtime)          request ID, client address, the log scope
    route(accepted, runtime)       Host and path checks; /oauth2 on the normalised path; 404 / 405
    check_body(...)                Content-Length and the route's body limit (400 / 413)
    admit_now / admit              authenticate (token, then session), authorize (403), plan the upstream request
    forward_auth(...)              the same steps for /oauth2/auth, answered with headers instead of proxying
    upstream_failed(...)           a failed exchange: 502 / 504 while nothing was sent, else cut
    record(gateway, scope, ...)    the access-log line and the metrics
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Protocol, Union
from urllib.parse import urlencode, urlsplit

from tornado import httputil

from . import forwarded
from .answers import Answer, Cookies, Empty, Json, Refusal, with_cookies
from .config import AUTH_LOGIN, AUTH_PUBLIC, RouteConfig
from .forwarding import Balancer, Exchange, UpstreamError, forwarded_request_headers, identity_headers
from .models import AuthError, Identity
from .pages import WWW_AUTHENTICATE, is_browser, set_cookie_header
from .policy import authorize
from .redirects import safe_redirect_path
from .routing import BadPath, Match, MethodNotAllowed, normalize_path, valid_host_header
from .telemetry import RequestScope, request_id
from .tokens import bearer_from_header

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Gateway, Runtime

log = logging.getLogger("gateway")

OWN_PREFIX = "/oauth2"
OWN_ENDPOINTS = frozenset({"start", "callback", "handoff", "sign_out", "userinfo", "auth", "jwks", "token", "cli",
                           "backchannel_logout"})
BODILESS = frozenset({"GET", "HEAD"})
SHUTDOWN = Refusal(503, "cut by shutdown", headers=(("Connection", "close"), ("Retry-After", "1")))


class HeaderMap(Protocol):
    """The request headers as the pipeline reads them (tornado's HTTPHeaders fits)."""

    def get(self, name: str, default: Any = None) -> Any: ...
    def get_list(self, name: str) -> list: ...
    def get_all(self) -> Any: ...
    def __contains__(self, name: object) -> bool: ...
    def __getitem__(self, name: str) -> Any: ...


class RequestHead:
    """What the pipeline knows of a request: its head and where it came from (no body, no socket)."""

    __slots__ = ("method", "host", "path", "query", "uri", "headers", "peer", "protocol", "_cookies")

    def __init__(self, method: str, host: str, path: str, query: str, headers: HeaderMap, *,
                 peer: str = "", protocol: str = "http", uri: Optional[str] = None):
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.uri = uri if uri is not None else path + ("?" + query if query else "")
        self.headers = headers
        self.peer = peer
        self.protocol = protocol
        self._cookies: Optional[dict] = None

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies, parsed on first use (token calls never need them)."""
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get_list("Cookie"))
        return self._cookies


def parse_cookies(values: list) -> dict:
    """Cookie header(s) to a name -> value dict, the way browsers send them; never an error."""
    try:
        return httputil.parse_cookie("; ".join(values))
    except Exception:  # a malformed header is no cookie at all, never a 500
        return {}


# -- results ------------------------------------------------------------------------


class Accepted:
    """Step 1: a request the gateway has taken on, with its ID, client address and log scope."""

    __slots__ = ("head", "request_id", "forwarded", "scope")

    def __init__(self, head: RequestHead, request_id: str, fwd: forwarded.Forwarded, scope: RequestScope):
        self.head = head
        self.request_id = request_id
        self.forwarded = fwd
        self.scope = scope


@dataclass(frozen=True)
class OwnEndpoint:
    """One of the gateway's own endpoints under /oauth2, found on the normalised path."""

    name: str


class UpstreamPlan:
    """Everything the exchange needs to send the request upstream (a slotted class: built per request)."""

    __slots__ = ("balancer", "method", "path_and_query", "headers", "content_length", "has_body", "preserve_host",
                 "timeout", "connect_timeout", "own_cookie")

    def __init__(self, balancer: Balancer, method: str, path_and_query: str, headers: list,
                 content_length: Optional[int], has_body: bool, preserve_host: Optional[str], timeout: float,
                 connect_timeout: float, own_cookie: str):
        self.balancer = balancer
        self.method = method
        self.path_and_query = path_and_query
        self.headers = headers
        self.content_length = content_length
        self.has_body = has_body
        self.preserve_host = preserve_host
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.own_cookie = own_cookie  # the session cookie's name, which no upstream may set


class Admitted:
    """A request that may go upstream: its route, who is calling, and the plan."""

    __slots__ = ("match", "identity", "plan", "cookies")

    def __init__(self, match: Match, identity: Optional[Identity], plan: UpstreamPlan, cookies: Cookies = ()):
        self.match = match
        self.identity = identity
        self.plan = plan
        self.cookies = cookies  # session cookie updates (a refresh) to send with the upstream's answer

    @property
    def route(self) -> RouteConfig:
        return self.match.route


Outcome = Union[Admitted, OwnEndpoint, Answer]


# -- 1. accept ---------------------------------------------------------------------


def header(headers: HeaderMap, name: str) -> Optional[str]:
    """One header's value or None: a membership test first, as most requests lack most headers
    and a failed lookup costs an exception."""
    return headers[name] if name in headers else None


def accept(head: RequestHead, runtime: "Runtime") -> Accepted:
    headers = head.headers
    fwd = forwarded.resolve(
        head.peer, head.protocol, head.host, header(headers, "X-Forwarded-For"), header(headers, "X-Forwarded-Proto"),
        header(headers, "X-Forwarded-Host"), runtime.config.server.trusted_proxies,
    )
    rid = request_id(header(headers, "X-Request-Id"))
    return Accepted(head, rid, fwd, RequestScope(rid, fwd.client_ip, head.method, head.host, head.path))


# -- 2. route ----------------------------------------------------------------------


def route(acc: Accepted, runtime: "Runtime", *, host: Optional[str] = None, path: Optional[str] = None,
          method: Optional[str] = None, landing: bool = True) -> Union[Match, OwnEndpoint, Answer]:
    """The route for this host and normalised path; the gateway's own endpoints come first.

    A browser coming back from the provider's sign-out is answered here (``landing``).
    """
    head = acc.head
    host = head.host if host is None else host
    method = head.method if method is None else method
    if not valid_host_header(host):
        return Refusal(400, "bad Host header")
    try:
        normal = normalize_path(head.path if path is None else path)
    except BadPath as exc:
        return Refusal(400, f"bad path: {exc}")
    login = runtime.login
    if (landing and login is not None and method in BODILESS and login.signed_out_cookie in head.headers.get("Cookie", "")):
        back = login.landing(head.cookies, normal, head.query)  # back from the provider's sign-out
        if back is not None:
            return back
    if normal == OWN_PREFIX or normal.startswith(OWN_PREFIX + "/"):
        name = normal[len(OWN_PREFIX) + 1:].rstrip("/")
        if name in OWN_ENDPOINTS:
            return OwnEndpoint(name)
        return Refusal(404, "no route")
    match = runtime.routes.match(host, normal, method)
    if match is None:
        return Refusal(404, "no route")
    if isinstance(match, MethodNotAllowed):
        return Refusal(405, f"method {method} not allowed here", headers=(("Allow", ", ".join(sorted(match.allowed))),))
    acc.scope.route = match.route.name
    return match


def body_limit(route: RouteConfig, runtime: "Runtime") -> int:
    limit = route.max_body_size if route.max_body_size is not None else runtime.config.server.max_body_size
    return limit or 0


def content_length(value: Optional[str]) -> Optional[int]:
    """Content-Length as an int; None when absent, -1 when malformed (ASCII digits only)."""
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        return -1
    return int(value)


def check_body(head: RequestHead, route: RouteConfig, runtime: "Runtime") -> Optional[Refusal]:
    """Refuse an oversized or malformed body before anything reaches the upstream."""
    return check_length(head.headers, body_limit(route, runtime))


def check_length(headers: HeaderMap, limit: int) -> Optional[Refusal]:
    """A malformed Content-Length (400) or one over ``limit`` (413; 0 means none); chunked bodies
    are limited as they stream."""
    if "Content-Length" not in headers:
        return None
    length = content_length(headers.get("Content-Length"))
    if length == -1:
        return Refusal(400, "bad content-length")
    if limit and length is not None and length > limit:
        return Refusal(413, f"body of {length} bytes over the limit of {limit}")
    return None


# -- 3. authenticate and 4. authorize ------------------------------------------------


def invalid_token(error: AuthError) -> Refusal:
    """RFC 6750: a token was sent and is not acceptable."""
    header = f'{WWW_AUTHENTICATE}, error="invalid_token", error_description="{error.description}"'
    return Refusal(401, f"invalid token: {error.reason}", description=error.description,
                   headers=(("WWW-Authenticate", header),))


NO_CREDENTIALS = Refusal(401, "no credentials", description="a bearer token is required",
                         headers=(("WWW-Authenticate", WWW_AUTHENTICATE),))


def forbidden(acc: Accepted, route: RouteConfig, identity: Identity, reason: str) -> Refusal:
    head = acc.head
    acc.scope.failure = "forbidden"
    log.info("denied %s to %s on route %s: %s", head.method, identity.sub, route.name, reason)
    if identity.source != "session":  # a bearer token: nobody "signed in", and there is nothing to sign out of
        return Refusal(403, reason, description="The token you sent does not give access to this page.")
    sign_out = "/oauth2/sign_out?" + urlencode({"rd": safe_redirect_path(head.uri)})
    return Refusal(403, reason, signed_in_as=identity.email or identity.preferred_username or identity.sub,
                   sign_out_url=sign_out)


async def unauthenticated(acc: Accepted, route: RouteConfig, runtime: "Runtime", *, redirect: bool) -> Answer:
    """No credential: a browser on a login route is sent to sign in, anyone else gets 401."""
    acc.scope.failure = "unauthenticated"
    head = acc.head
    login = runtime.login
    if (login is not None and redirect and route.auth == AUTH_LOGIN and head.method in BODILESS
            and is_browser(head.headers)):
        return await login.begin(route, head.cookies, rd=head.uri, host=head.host)
    return NO_CREDENTIALS


# -- 5. plan ------------------------------------------------------------------------


def plan(acc: Accepted, match: Match, identity: Optional[Identity], runtime: "Runtime") -> UpstreamPlan:
    head = acc.head
    route = match.route
    headers = head.headers
    length = content_length(headers.get("Content-Length")) if "Content-Length" in headers else None
    has_body = bool(length) or ("Transfer-Encoding" in headers
                                and "chunked" in headers.get("Transfer-Encoding", "").lower())
    login = runtime.login
    query = head.query
    assertion = runtime.assertions.header_for(route.name, route.identity_assertion, identity)
    return UpstreamPlan(
        runtime.balancers[route.name], head.method, match.upstream_path + ("?" + query if query else ""),
        forwarded_request_headers(headers, acc.forwarded, acc.request_id, identity,
                                  own_cookie=login.cookie_name if login is not None else None,
                                  assertion=assertion, drop=runtime.assertion_headers),
        length if length else None, has_body, head.host if route.preserve_host else None,
        route.timeout, route.connect_timeout, runtime.config.session.cookie_name,
    )


def exchange_for(admitted: Admitted, sink: Any, clients: Any, runtime: "Runtime") -> Exchange:
    """The exchange that carries out the plan, writing the upstream's answer into ``sink``, with the
    session cookies a refresh on the way produced."""
    plan = admitted.plan
    return Exchange(
        sink, clients, plan.balancer, method=plan.method, path_and_query=plan.path_and_query,
        headers=plan.headers, content_length=plan.content_length, has_body=plan.has_body,
        preserve_host=plan.preserve_host, timeout=plan.timeout, connect_timeout=plan.connect_timeout,
        own_cookie=plan.own_cookie,
        added_headers=tuple(("Set-Cookie", set_cookie_header(op, runtime.secure_cookies, runtime.cookie_domain))
                            for op in admitted.cookies) + runtime.added_headers,
    )


# -- the whole admission -------------------------------------------------------------


def admit_now(acc: Accepted, runtime: "Runtime", found: Outcome) -> Optional[Outcome]:
    """The common case decided without waiting: a public route, or a bearer token verified moments ago.

    ``found`` is the route step's result. Returns None when the answer needs
    I/O (a token not yet verified, a session, a login redirect, a 401): then
    ``admit`` decides.
    """
    if not isinstance(found, Match):
        return found
    r = found.route
    refusal = check_body(acc.head, r, runtime)
    if refusal is not None:
        return refusal
    identity: Optional[Identity] = None
    if r.auth != AUTH_PUBLIC:
        authorization = header(acc.head.headers, "Authorization")
        if not authorization:
            return None
        try:
            raw = bearer_from_header(authorization)
        except AuthError:
            return None
        identity = runtime.verifier.verify_cached(raw) if raw is not None else None
        if identity is None or identity.source == "gateway" or not authorize(r.allow, identity, acc.head.method).allowed:
            return None  # the gateway's own tokens: is their session still on? (a store lookup)
        acc.scope.user = identity.sub
    return Admitted(found, identity, plan(acc, found, identity, runtime))


async def admit(acc: Accepted, runtime: "Runtime", *, websocket: bool = False,
                found: Optional[Outcome] = None) -> Outcome:
    """Route, check the body, authenticate, authorize and plan; or the answer that stops the request.

    ``found`` is the route step's result when the adapter already ran it.
    """
    if found is None:
        found = route(acc, runtime)
    if not isinstance(found, Match):
        return found
    r = found.route
    if websocket and not r.websocket:
        return Refusal(403, "websocket disabled on this route", description="WebSockets are not allowed here.")
    if not websocket:
        refusal = check_body(acc.head, r, runtime)
        if refusal is not None:
            return refusal
    identity: Optional[Identity] = None
    cookies: Cookies = ()
    if r.auth != AUTH_PUBLIC:
        result = await runtime.authn.authenticate(acc.head.headers.get("Authorization"), lambda: acc.head.cookies, r)
        cookies = result.cookies
        if result.error is not None:
            acc.scope.failure = result.error.reason
            return with_cookies(invalid_token(result.error), cookies)
        if result.identity is None:
            return with_cookies(await unauthenticated(acc, r, runtime, redirect=not websocket), cookies)
        identity = result.identity
        acc.scope.user = identity.sub
        decision = authorize(r.allow, identity, acc.head.method)
        if not decision.allowed:
            return with_cookies(forbidden(acc, r, identity, decision.reason), cookies)
    return Admitted(found, identity, plan(acc, found, identity, runtime), cookies)


async def identify(acc: Accepted, runtime: "Runtime") -> Answer:
    """/oauth2/userinfo: the current identity as JSON, or 401."""
    result = await runtime.authn.authenticate(acc.head.headers.get("Authorization"), lambda: acc.head.cookies, None)
    ident = result.identity
    if ident is None:
        desc = result.error.description if result.error else "not signed in"
        header = WWW_AUTHENTICATE + (', error="invalid_token"' if result.error else "")
        return with_cookies(Refusal(401, "no identity", description=desc, headers=(("WWW-Authenticate", header),)),
                             result.cookies)
    acc.scope.user = ident.sub
    return Json({
        "sub": ident.sub, "email": ident.email, "groups": list(ident.groups),
        "preferred_username": ident.preferred_username, "issuer": ident.issuer, "source": ident.source,
    }, cookies=result.cookies)


def jwks(runtime: "Runtime") -> Answer:
    """/oauth2/jwks: the gateway's public keys, for upstreams verifying its assertions and tokens."""
    return Json(runtime.keys.jwks(), headers=(("Cache-Control", "public, max-age=300"),))


async def signed_in(acc: Accepted, runtime: "Runtime", rd: str) -> Union[Identity, Answer]:
    """The browser session's identity (never a bearer token), or what to answer without one."""
    login = runtime.login
    if login is None or runtime.script_tokens is None:
        return Refusal(404, "browser login is not configured", description="Browser sign-in is not configured.")
    identity, cookies = await login.load_identity(acc.head.cookies, None)
    if identity is not None:
        return identity
    if acc.head.method in BODILESS and is_browser(acc.head.headers):
        return with_cookies(await login.begin(None, acc.head.cookies, rd=rd, host=acc.head.host), cookies)
    return with_cookies(NO_CREDENTIALS, cookies)


async def token_page(acc: Accepted, runtime: "Runtime") -> Answer:
    """GET /oauth2/token: a token of the gateway's own for the signed-in person (JSON, or a page)."""
    found = await signed_in(acc, runtime, "/oauth2/token")
    if not isinstance(found, Identity):
        return found
    acc.scope.user = found.sub
    assert runtime.script_tokens is not None
    return runtime.script_tokens.token_for(found, browser=is_browser(acc.head.headers),
                                           public_url=runtime.keys.issuer)


async def cli_start(acc: Accepted, runtime: "Runtime", args: Mapping[str, str]) -> Answer:
    """GET /oauth2/cli?port=P&code_challenge=C: sign the browser in, then hand the CLI its code."""
    found = await signed_in(acc, runtime, acc.head.uri)
    if not isinstance(found, Identity):
        return found
    acc.scope.user = found.sub
    assert runtime.script_tokens is not None
    return await runtime.script_tokens.cli_start(args, found)


async def forward_auth(acc: Accepted, runtime: "Runtime") -> Answer:
    """/oauth2/auth for nginx auth_request, Traefik ForwardAuth and Caddy forward_auth.

    The same route, authentication and policy as a proxied request, for the
    request the front proxy describes (X-Forwarded-Host + X-Forwarded-Uri, or
    X-Original-URL); the answer is 200 with X-Auth-Request-* headers, or 401/403.
    """
    headers = acc.head.headers
    host = headers.get("X-Forwarded-Host") or acc.head.host
    uri = headers.get("X-Forwarded-Uri")
    original = headers.get("X-Original-URL")
    if uri is None and original:
        parts = urlsplit(original)
        host = parts.netloc or host
        uri = parts.path or "/"
    method = headers.get("X-Forwarded-Method") or headers.get("X-Original-Method") or "GET"
    path = (uri or "/").partition("?")[0]
    acc.scope.path = path
    try:
        acc.scope.path = path = normalize_path(path)  # logged as matched
    except BadPath as exc:
        return Refusal(403, f"forward-auth: bad path: {exc}")
    found = route(acc, runtime, host=host, path=path, method=method, landing=False)
    if isinstance(found, Refusal) and found.status == 400:
        return Refusal(403, f"forward-auth: {found.reason}")
    if not isinstance(found, Match):
        return Refusal(403, "forward-auth: no route for this method and path")
    r = found.route
    if r.auth == AUTH_PUBLIC:
        return Empty(200)
    result = await runtime.authn.authenticate(headers.get("Authorization"), lambda: acc.head.cookies, r)
    ident = result.identity
    if ident is None:
        acc.scope.failure = result.error.reason if result.error else "unauthenticated"
        header = WWW_AUTHENTICATE + (', error="invalid_token"' if result.error else "")
        return with_cookies(Refusal(401, "forward-auth: not authenticated", headers=(("WWW-Authenticate", header),)),
                             result.cookies)
    acc.scope.user = ident.sub
    decision = authorize(r.allow, ident, method)
    if not decision.allowed:
        acc.scope.failure = "forbidden"
        return with_cookies(Refusal(403, decision.reason), result.cookies)
    return Empty(200, headers=tuple(identity_headers(ident, "X-Auth-Request-")), cookies=result.cookies)


def websocket_origin_allowed(acc: Accepted, route: RouteConfig, runtime: "Runtime", origin: Optional[str]) -> bool:
    """May a page from ``origin`` open a WebSocket in the name of this request's session?

    Only the gateway's own origin (this request's scheme and host, or ``public_url``'s)
    and the route's ``websocket_origins``: a sibling subdomain's page must not open
    sockets with the user's cookie (cross-site WebSocket hijacking). A browser always
    sends Origin; a request without one is not a browser's.
    """
    if not origin:
        return True
    origin = origin.lower()
    own = f"{acc.forwarded.proto}://{acc.forwarded.host}".lower()
    public = runtime.config.server.public_url.rstrip("/").lower()
    return origin in (own, public) or origin in route.websocket_origins


# -- 6. after the exchange, and 7. record ------------------------------------------------


def upstream_failed(gateway: "Gateway", scope: RequestScope, exc: UpstreamError, upstream: Optional[str],
                    started: bool) -> Optional[Refusal]:
    """The one handling of a failed exchange: the answer while nothing was sent, else None (cut it)."""
    scope.upstream = upstream
    gateway.metrics.count_upstream_error(scope.route or "-", exc.kind)
    log.warning("upstream %s for route %s: %s (%s)", exc.kind, scope.route, upstream, exc.detail)
    if not started:
        return Refusal(exc.status, f"upstream {exc.kind}")
    scope.reason = f"upstream {exc.kind} mid-response"
    return None


def record(gateway: "Gateway", scope: RequestScope, status: int, nbytes: int) -> None:
    """The access-log line and the metrics, once per request."""
    duration = time.monotonic() - scope.start
    if scope.failure is not None:
        gateway.metrics.count_auth_failure(scope.route or "-", scope.failure)
    gateway.metrics.observe(scope, status, duration)
    gateway.access_log.write(scope, status, nbytes, duration)
