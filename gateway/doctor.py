"""``gateway doctor``: check the live setup, one line per check, in the order a person debugs.

``gateway check`` validates the file offline; ``doctor`` goes and looks: can
the listeners be bound, does each provider answer discovery with the
configured issuer, advertise PKCE S256 and accept the gateway's
``redirect_uri``, is its clock close to ours, do the token issuers' keys
load, does every upstream answer, does Redis, and do the cookie settings fit
``public_url``. Each line starts with ``ok``, ``warn`` (works, but fragile or
worth knowing) or ``FAIL`` (a login or a request cannot succeed) and says how
to fix it::

    ok   config: routes.yaml (3 routes, 1 provider, 1 token issuer)
    FAIL provider corp: provider refuses redirect_uri https://apps.example.com/oauth2/callback: register it ...

Every network step has a short timeout (``--timeout``, 3 s by default) and
the independent checks run concurrently, so a dead peer is a ``FAIL`` within
seconds, never a hang. Nothing here prints a secret: URLs are shown without
their query string and provider pages only as a short error text.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import re
import socket
import ssl
import sys
import time
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Dict, List, Optional, TextIO, Tuple
from urllib.parse import urlsplit

from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .config import DEFAULT_LEEWAY, Config, ConfigError, ProviderConfig, RouteConfig, TokenIssuerConfig, load
from .discovery import DiscoveryError, describe_fetch_error, discovery_url, fetch_discovery, fetch_json
from .redact import safe_url
from .doctor_findings import (FAIL, MAX_PAGE_BYTES, OK, WARN, Finding, Findings, _judge_authorization,  # noqa: F401
                              _page_text, _printable)

DEFAULT_TIMEOUT = 3.0
CALLBACK_PATH = "/oauth2/callback"
def run_doctor(path: str, *, timeout: float = DEFAULT_TIMEOUT, out: TextIO = sys.stdout) -> int:
    """Print every check of the setup in ``path``; 1 when anything FAILs, else 0."""
    failed = False
    timeout = max(0.5, timeout)

    def emit(findings: Findings) -> None:
        nonlocal failed
        for finding in findings:
            failed = failed or finding.level == FAIL
            print(finding.line(), file=out, flush=True)

    try:
        config = load(path)
    except ConfigError as exc:
        emit([Finding(FAIL, "config", line) for line in exc.errors])
        emit([Finding(FAIL, "config", f"{path} does not load ({len(exc.errors)} error(s)); fix them first "
                                      "(gateway check prints the same), nothing else was checked")])
        return 1
    emit(config_findings(path, config))
    asyncio.run(_live(config, timeout, emit))
    return 1 if failed else 0


def config_findings(path: str, config: Config) -> Findings:
    found = [Finding(OK, "config", f"{path} loads ({_count(len(config.routes), 'route')}, "
                                   f"{_count(len(config.providers), 'provider')}, "
                                   f"{_count(len(config.tokens), 'token issuer')})")]
    for warning in config.warnings:
        text = warning.split(": warning: ", 1)[-1]
        where = warning.split(": warning: ", 1)[0] if ": warning: " in warning else path
        found.append(Finding(WARN, "config", f"{text} ({where})"))
    return found


async def _live(config: Config, timeout: float, emit: Callable[[Findings], None]) -> None:
    http = SimpleAsyncHTTPClient(force_instance=True, max_clients=64)
    try:
        # Started together, printed in order: the slowest peer bounds the run, not their sum.
        sections: List[Awaitable[Findings]] = [
            _guard("listen", listener_findings(config), timeout),
            _guard("providers", provider_findings(config, http, timeout), 2 * timeout),
            _guard("token issuers", token_issuer_findings(config, http, timeout), 2 * timeout),
            _guard("upstreams", upstream_findings(config, timeout), 2 * timeout),
            _guard("session store", session_store_findings(config, timeout), 2 * timeout),
        ]
        tasks = [asyncio.ensure_future(section) for section in sections]
        for task in tasks:
            emit(await task)
        emit(cookie_findings(config))
    finally:
        http.close()


async def _guard(what: str, section: Awaitable[Findings], limit: float) -> Findings:
    """A section's findings, or a FAIL when it takes far longer than its steps' timeouts allow."""
    try:
        return await asyncio.wait_for(section, limit + 2.0)
    except asyncio.TimeoutError:
        return [Finding(FAIL, what, f"no answer within {limit + 2.0:.0f} s")]


# -- listeners ------------------------------------------------------------------------------


async def listener_findings(config: Config) -> Findings:
    server = config.server
    found = [_bind_finding("listen", server.listen)]
    if server.admin_listen is None:
        found.append(Finding(OK, "admin_listen", "off (no /ping, /ready, /metrics)"))
    else:
        found.append(_bind_finding("admin_listen", server.admin_listen))
    return found


def _bind_finding(what: str, address: Tuple[str, int]) -> Finding:
    host, port = address
    shown = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    subject = f"{what} {shown}"
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Finding(FAIL, subject, f"the host does not resolve ({exc.strerror}); use an address of this machine")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return Finding(WARN, subject, "in use (is the gateway running?); otherwise stop what listens there "
                                          f"or pick another {what}")
        if exc.errno == errno.EACCES:
            return Finding(FAIL, subject, "permission denied (ports below 1024 need privileges); use a port "
                                          "above 1024 or grant CAP_NET_BIND_SERVICE")
        if exc.errno == errno.EADDRNOTAVAIL:
            return Finding(FAIL, subject, "not an address of this machine; use one of its addresses, or 0.0.0.0")
        return Finding(FAIL, subject, f"cannot be bound: {exc.strerror or exc}")
    finally:
        sock.close()
    return Finding(OK, subject, "free" if port else "port 0: a free port is picked at start")


# -- providers ----------------------------------------------------------------------------------


class _Recorder:
    """An HTTP client that remembers when each answer came (for the clock-skew check)."""

    def __init__(self, http: SimpleAsyncHTTPClient):
        self._http = http
        self.answers: List[Tuple[HTTPResponse, float]] = []  # (response, local time at its middle)

    async def fetch(self, request: HTTPRequest, **kwargs: Any) -> HTTPResponse:
        started = time.time()
        response = await self._http.fetch(request, **kwargs)
        self.answers.append((response, (started + time.time()) / 2))
        return response


class _Fetched:
    """A discovery cache that holds the one document already fetched (for ``OIDCClient``)."""

    def __init__(self, document: Dict[str, Any]):
        self.document = document

    async def get(self, issuer: str, also: Tuple[str, ...] = ()) -> Dict[str, Any]:
        return self.document

    def has(self, issuer: str) -> bool:
        return True

    def peek(self, issuer: str) -> Optional[Dict[str, Any]]:
        return self.document


async def provider_findings(config: Config, http: SimpleAsyncHTTPClient, timeout: float) -> Findings:
    if not config.providers:
        return [Finding(OK, "providers", "none configured (no browser login)")]
    redirect_uri = config.server.public_url.rstrip("/") + CALLBACK_PATH
    results = await asyncio.gather(*(
        _provider(provider, http, redirect_uri, timeout) for provider in config.providers.values()))
    return [finding for found in results for finding in found]


async def _provider(provider: ProviderConfig, http: SimpleAsyncHTTPClient, redirect_uri: str,
                    timeout: float) -> Findings:
    subject = f"provider {provider.name}"
    recorder = _Recorder(http)
    found: Findings = []
    if provider.type == "oidc":
        document = await _oidc_discovery(provider, recorder, subject, timeout, found)
        if document is None:
            found.extend(_clock_skew(subject, recorder))
            return found
        pkce_ok = _pkce(subject, document, found)
        metadata: Dict[str, Any] = document
    else:
        metadata = {"authorization_endpoint": provider.authorization_endpoint,
                    "token_endpoint": provider.token_endpoint}
        pkce_ok = True  # plain OAuth 2.0: no metadata to read; the authorization request below tells
    # After discovery the steps are independent: run together, reported in this order.
    steps: List[Awaitable[Finding]] = []
    if pkce_ok:
        steps.append(_authorization_request(provider, recorder, redirect_uri, metadata, subject, timeout))
    endpoints = [("token endpoint", metadata.get("token_endpoint"))]
    if provider.type == "oidc":
        steps.append(_provider_keys(subject, recorder, metadata.get("jwks_uri"), timeout))
    else:
        endpoints.append(("userinfo endpoint", provider.userinfo_endpoint))
        if provider.api_url and provider.api_url != provider.userinfo_endpoint:
            endpoints.append(("API", provider.api_url))
    steps.extend(_reachable(subject, recorder, what, url, timeout) for what, url in endpoints if url)
    found.extend(await asyncio.gather(*steps))
    found.extend(_clock_skew(subject, recorder))
    return found


async def _oidc_discovery(provider: ProviderConfig, recorder: _Recorder, subject: str, timeout: float,
                          found: Findings) -> Optional[Dict[str, Any]]:
    from .providers.oidc import MS_TENANT_TEMPLATE

    also = (provider.tenant_issuer.replace("{tid}", MS_TENANT_TEMPLATE),) if provider.tenant_issuer else ()
    url = discovery_url(provider.issuer)
    try:
        document = await fetch_discovery(recorder, provider.issuer,  # type: ignore[arg-type]
                                         timeout=timeout, also=also)
    except DiscoveryError as exc:
        text = str(exc)
        if text.startswith("issuer mismatch"):
            found.append(Finding(FAIL, subject, f"{text}; set issuer: to exactly what the provider says "
                                                "(or fix the provider's own issuer setting)"))
        elif exc.unreachable:
            found.append(Finding(FAIL, subject, f"{text}; is the provider up, and is issuer "
                                                f"{provider.issuer} reachable from this machine?"))
        else:
            found.append(Finding(FAIL, subject, f"{text}; check issuer: (its discovery document is {safe_url(url)})"))
        return None
    found.append(Finding(OK, subject, f"discovery {safe_url(url)}, issuer {provider.issuer}"))
    return document


def _pkce(subject: str, document: Dict[str, Any], found: Findings) -> bool:
    """False when the gateway would refuse to start a login with this provider."""
    methods = document.get("code_challenge_methods_supported")
    if methods is None:
        # Some providers (Microsoft Entra ID among them) support PKCE without saying so; the gateway
        # sends it anyway, and the authorization request below shows whether it is refused.
        found.append(Finding(WARN, subject, "the discovery document does not list code_challenge_methods_supported; "
                                            "the gateway always sends PKCE S256: make sure the provider supports "
                                            "it (and advertises it)"))
        return True
    if isinstance(methods, list) and "S256" in methods:
        found.append(Finding(OK, subject, "PKCE S256 advertised"))
        return True
    shown = json.dumps(methods)[:80] if isinstance(methods, list) else "not a list"
    found.append(Finding(FAIL, subject, f"PKCE S256 not advertised (code_challenge_methods_supported: {shown}); "
                                        "the gateway always uses it and starts no login without it: enable PKCE "
                                        "S256 for this client at the provider"))
    return False


async def _authorization_request(provider: ProviderConfig, recorder: _Recorder, redirect_uri: str,
                                 metadata: Dict[str, Any], subject: str, timeout: float) -> Finding:
    """Send the authorization request the gateway would send; look at the first answer only."""
    from .jwks import JWKSRegistry
    from .providers import ProviderError, make_client, new_pkce, random_token

    client = make_client(provider, recorder, redirect_uri=redirect_uri,  # type: ignore[arg-type]
                         discovery=_Fetched(metadata), jwks=JWKSRegistry(recorder))  # type: ignore[arg-type]
    try:
        url = await client.authorization_url(state=random_token(), nonce=random_token(),
                                             code_challenge=new_pkce()[1])
    except ProviderError:
        endpoint = metadata.get("authorization_endpoint")
        problem = "missing" if endpoint is None else "not an http(s) URL"
        return Finding(FAIL, subject, f"no usable authorization_endpoint ({problem}); check the provider's "
                                      "discovery document or authorization_endpoint:")
    shown = safe_url(url)
    request = HTTPRequest(url, method="GET", follow_redirects=False, connect_timeout=timeout,
                          request_timeout=timeout, headers={"Accept": "text/html", "User-Agent": "gateway-doctor"})
    try:
        response = await recorder.fetch(request, raise_error=False)
    except Exception as exc:
        return Finding(FAIL, subject, f"authorization endpoint {shown}: {describe_fetch_error(exc, url)}; is it "
                                      "reachable from this machine (and from browsers)?")
    if response.code == 599:
        reason = describe_fetch_error(response.error or Exception("no response"), url)
        return Finding(FAIL, subject, f"authorization endpoint {shown}: {reason}; is it reachable from this machine "
                                      "(and from browsers)?")
    return _judge_authorization(subject, provider, redirect_uri, shown, url, response)


async def _provider_keys(subject: str, recorder: _Recorder, jwks_uri: Any, timeout: float) -> Finding:
    if not isinstance(jwks_uri, str) or not jwks_uri:
        return Finding(FAIL, subject, "the discovery document has no jwks_uri: ID tokens cannot be verified")
    count, problem = await _load_jwks(recorder, jwks_uri, timeout, ())
    if problem:
        return Finding(FAIL, subject, f"ID token keys: {problem}")
    return Finding(OK, subject, f"ID token keys: {_count(count, 'key')} from {safe_url(jwks_uri)}")


async def _reachable(subject: str, recorder: _Recorder, what: str, url: str, timeout: float) -> Finding:
    """Any HTTP answer means the endpoint is there (a GET without credentials is refused, as it should be)."""
    request = HTTPRequest(url, method="GET", follow_redirects=False, connect_timeout=timeout,
                          request_timeout=timeout,
                          headers={"Accept": "application/json", "User-Agent": "gateway-doctor"})
    try:
        response = await recorder.fetch(request, raise_error=False)
    except Exception as exc:
        response = None
        reason = describe_fetch_error(exc, url)
    else:
        reason = describe_fetch_error(response.error, url) if response.code == 599 and response.error else ""
    if response is None or response.code == 599:
        return Finding(FAIL, subject, f"{what} {safe_url(url)}: {reason or 'no answer'}; sign-ins cannot complete")
    if response.code >= 500:
        return Finding(WARN, subject, f"{what} {safe_url(url)} answers HTTP {response.code} (a GET without "
                                      "credentials; check the provider's health)")
    return Finding(OK, subject, f"{what} {safe_url(url)} reachable (HTTP {response.code})")


def _clock_skew(subject: str, recorder: _Recorder, leeway: float = DEFAULT_LEEWAY) -> Findings:
    """The provider's ``Date`` header against this machine's clock (the first answer that has one)."""
    for response, local in recorder.answers:
        value = response.headers.get("Date") if response.headers else None
        if not value:
            continue
        try:
            remote = parsedate_to_datetime(value).timestamp() + 0.5  # Date has whole seconds
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        skew = remote - local
        direction = "ahead of" if skew > 0 else "behind"
        shown = f"{abs(skew):.0f} s"
        if abs(skew) > leeway:
            refused = "not yet valid" if skew > 0 else "expired"
            return [Finding(FAIL, subject, f"clock skew {shown}: the provider's clock is {direction} this machine's, "
                                           f"more than the {leeway:.0f} s leeway, so its tokens are refused as "
                                           f"{refused}; synchronise the clocks (NTP)")]
        if abs(skew) > leeway / 2:
            return [Finding(WARN, subject, f"clock skew {shown}: the provider's clock is {direction} this machine's, "
                                           f"more than half the {leeway:.0f} s leeway; synchronise the clocks (NTP)")]
        return [Finding(OK, subject, f"clock skew {shown} (leeway {leeway:.0f} s)")]
    if recorder.answers:
        return [Finding(WARN, subject, "no Date header in its answers: clock skew not checked; keep this "
                                       "machine's clock synchronised (NTP)")]
    return []


# -- token issuers -------------------------------------------------------------------------------------


async def token_issuer_findings(config: Config, http: SimpleAsyncHTTPClient, timeout: float) -> Findings:
    if not config.tokens:
        return [Finding(OK, "token issuers", "none configured (only the gateway's own tokens are accepted)")]
    return list(await asyncio.gather(*(_token_issuer(issuer, http, timeout) for issuer in config.tokens)))


async def _token_issuer(issuer: TokenIssuerConfig, http: SimpleAsyncHTTPClient, timeout: float) -> Finding:
    subject = f"token issuer {issuer.issuer}"
    algorithms = tuple(issuer.algorithms)
    if issuer.secret:
        return Finding(OK, subject, f"HMAC secret ({', '.join(algorithms)})")
    if issuer.public_key:
        from .tokens import _Issuer

        try:
            usable = sorted(_Issuer(issuer).algorithms)
        except Exception as exc:
            return Finding(FAIL, subject, f"public_key does not parse ({type(exc).__name__}); give a PEM public key "
                                          "or certificate")
        if not usable:
            return Finding(FAIL, subject, f"public_key fits none of algorithms {list(algorithms)}; fix algorithms:")
        return Finding(OK, subject, f"public_key parses ({', '.join(usable)})")
    jwks_uri = issuer.jwks_uri
    source = "jwks_uri"
    if not jwks_uri:
        try:
            document = await fetch_discovery(http, issuer.issuer, timeout=timeout)
        except DiscoveryError as exc:
            hint = ("set issuer: to exactly what the provider says" if str(exc).startswith("issuer mismatch")
                    else "is the issuer up and reachable? (or set jwks_uri: or public_key:)")
            return Finding(FAIL, subject, f"keys cannot load: {exc}; {hint}")
        jwks_uri = document.get("jwks_uri")
        source = "discovery's jwks_uri"
        if not isinstance(jwks_uri, str) or not jwks_uri:
            return Finding(FAIL, subject, "the discovery document has no jwks_uri; set jwks_uri: or public_key:")
    count, problem = await _load_jwks(http, jwks_uri, timeout, algorithms)
    if problem:
        return Finding(FAIL, subject, f"keys cannot load: {problem}")
    return Finding(OK, subject, f"{_count(count, 'key')} for {', '.join(algorithms)} from {source} "
                                f"{safe_url(jwks_uri)}")


async def _load_jwks(http: Any, uri: str, timeout: float, algorithms: Tuple[str, ...]) -> Tuple[int, str]:
    """(usable keys, problem or "") of the key set at ``uri``; only keys fitting ``algorithms`` when given."""
    from .jwks import parse_jwks

    try:
        document, _ = await fetch_json(http, uri, timeout=timeout, what="JWKS")
        keys = parse_jwks(document)
    except DiscoveryError as exc:
        return 0, str(exc)
    if algorithms:
        keys = [key for key in keys if any(key.fits(alg) for alg in algorithms)]
    if not keys:
        wanted = f" for {', '.join(algorithms)}" if algorithms else ""
        return 0, f"the key set at {safe_url(uri)} has no usable signing key{wanted}"
    return len(keys), ""


# -- upstreams ---------------------------------------------------------------------------------------------


async def upstream_findings(config: Config, timeout: float) -> Findings:
    if not config.routes:
        return [Finding(OK, "upstreams", "no routes")]
    targets: Dict[Tuple[str, Any], List[RouteConfig]] = {}
    for route in config.routes:
        for url in route.upstreams:
            targets.setdefault((url, route.tls), []).append(route)
    return list(await asyncio.gather(*(
        _upstream(url, routes, timeout) for (url, _), routes in targets.items())))


async def _upstream(url: str, routes: List[RouteConfig], timeout: float) -> Finding:
    names = ", ".join(dict.fromkeys(r.name for r in routes))
    subject = f"upstream {safe_url(url)} (route{'s' if ',' in names else ''} {names})"
    route = routes[0]
    limit = min(route.connect_timeout, timeout) if route.connect_timeout > 0 else timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    context: Optional[ssl.SSLContext] = None
    server_name = None
    if https:
        try:
            context = _upstream_tls(route)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return Finding(FAIL, subject, f"TLS settings cannot be used: {exc}; check routes[].tls")
        server_name = (route.tls.server_name if route.tls and route.tls.server_name else host)
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=server_name), limit)
    except asyncio.TimeoutError:
        return Finding(FAIL, subject, f"no connection within {limit:g} s (connect_timeout); is it running, and "
                                      "does a firewall drop the packets?")
    except ssl.SSLCertVerificationError as exc:
        return Finding(FAIL, subject, f"TLS: its certificate does not verify ({exc.verify_message}) for name "
                                      f"{server_name}; set routes[].tls.ca to the CA that signed it, or "
                                      "tls.server_name to the name in it")
    except ssl.SSLError as exc:
        return Finding(FAIL, subject, f"TLS handshake failed ({exc.reason or exc}); does it speak TLS 1.2+ on that "
                                      "port, and does it want a client certificate (routes[].tls.cert/key)?")
    except ConnectionRefusedError:
        return Finding(FAIL, subject, f"connection refused at {host}:{port}; is the upstream running there?")
    except OSError as exc:
        return Finding(FAIL, subject, f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    try:
        path = parts.path or "/"
        netloc = parts.netloc.rsplit("@", 1)[-1]
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: gateway-doctor\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1"))
        remaining = max(0.5, limit - (time.monotonic() - started))
        status_line = await asyncio.wait_for(reader.readline(), remaining)
    except asyncio.TimeoutError:
        return Finding(FAIL, subject, f"connected, but no HTTP answer within {limit:g} s; is it an HTTP server, "
                                      "or stuck?")
    except (OSError, ssl.SSLError) as exc:
        return Finding(FAIL, subject, f"connected, then the connection failed: {exc}")
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 0.5)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            pass
    match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", status_line)
    if not match:
        return Finding(FAIL, subject, "connected, but the answer is not HTTP" + (
            "; is it an https:// upstream written as http://?" if not https else ""))
    took = (time.monotonic() - started) * 1000
    return Finding(OK, subject, f"answers HTTP {match.group(1).decode()} in {took:.0f} ms"
                                + (" over TLS" if https else ""))


def _upstream_tls(route: RouteConfig) -> ssl.SSLContext:
    tls = route.tls
    context = ssl.create_default_context(cafile=tls.ca if tls and tls.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls and tls.cert:
        context.load_cert_chain(tls.cert, tls.key or None)
    return context


# -- session store --------------------------------------------------------------------------------------


async def session_store_findings(config: Config, timeout: float) -> Findings:
    store = config.session.store
    if store == "cookie":
        return [Finding(OK, "session store", "cookie (sessions in encrypted cookies; nothing to reach)")]
    from .sessions import redact_url

    shown = redact_url(store)
    subject = f"session store {shown}"
    try:
        import redis.asyncio as aioredis
        from redis import exceptions as redis_errors
    except ImportError:
        return [Finding(FAIL, subject, "the redis package is not installed (pip install redis)")]
    client = aioredis.Redis.from_url(store, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        started = time.monotonic()
        await asyncio.wait_for(client.ping(), timeout + 1)
        took = (time.monotonic() - started) * 1000
    except (asyncio.TimeoutError, redis_errors.TimeoutError):
        return [Finding(FAIL, subject, f"no answer to PING within {timeout:g} s; is Redis stuck or firewalled?")]
    except Exception as exc:
        text = _printable(str(exc).replace(store, shown))[:160]
        hint = ("check the password in the URL" if "auth" in text.lower() or "password" in text.lower()
                else "is Redis running there")
        return [Finding(FAIL, subject, f"PING failed ({type(exc).__name__}: {text.rstrip('.')}); {hint}? Sign-ins "
                                       "and every session need it")]
    finally:
        try:
            await asyncio.wait_for(client.aclose(), 1.0)
        except Exception:
            pass
    return [Finding(OK, subject, f"PING answered in {took:.0f} ms")]


# -- cookies and signing ----------------------------------------------------------------------------------


def cookie_findings(config: Config) -> Findings:
    server, session = config.server, config.session
    public_url = server.public_url
    parts = urlsplit(public_url)
    public_host = (parts.hostname or "").lower()
    login = bool(config.providers)
    found: Findings = []
    subject = "cookies"
    if parts.scheme == "https":
        if server.tls is not None:
            found.append(Finding(OK, subject, f"Secure (public_url {public_url}, TLS on listen)"))
        elif server.trusted_proxies:
            found.append(Finding(OK, subject, f"Secure (public_url {public_url}; TLS is terminated in front, by "
                                              "one of server.trusted_proxies, which must send X-Forwarded-Proto)"))
        else:
            found.append(Finding(WARN, subject, f"public_url is {public_url}, so cookies are Secure, but the gateway "
                                                "serves plain HTTP and no trusted_proxies are set: nothing terminates "
                                                "TLS in front; set server.tls, or server.trusted_proxies to the "
                                                "proxy that terminates TLS"))
    else:
        if server.tls is not None:
            level = FAIL if login else WARN
            found.append(Finding(level, subject, f"server.tls serves HTTPS but public_url is {public_url}: "
                                                 + ("the provider sends browsers to an http:// callback that the "
                                                    "TLS listener cannot answer, and " if login else "")
                                                 + "cookies are not Secure; write public_url with https://"))
        elif login and not _is_loopback(public_host):
            found.append(Finding(WARN, subject, f"public_url is {public_url}: session cookies are not Secure and "
                                                "travel unencrypted; serve the gateway over https (server.tls, or a "
                                                "proxy in front and an https:// public_url)"))
        else:
            found.append(Finding(OK, subject, f"not Secure (public_url {public_url}"
                                              + (", loopback)" if _is_loopback(public_host) else ")")))
    if login:
        domain = session.cookie_domain
        if domain:
            found.append(Finding(OK, subject, f"cookie_domain {domain}: one sign-in serves every host under it"))
        foreign = [r for r in config.routes if r.auth == "login" and r.host and r.host != public_host
                   and not (domain and (r.host == domain.lstrip(".") or r.host.endswith(domain)))]
        for route in foreign:
            if session.store == "cookie" and server.workers != 1:
                found.append(Finding(WARN, subject, f"route {route.name} logs in on host {route.host}, which gets its "
                                                    "session handed over from public_url's callback; with several "
                                                    "workers that handoff needs session.store: redis:// (or set "
                                                    "session.cookie_domain)"))
            else:
                found.append(Finding(OK, subject, f"route {route.name} logs in on host {route.host}: its session is "
                                                  f"handed over from {public_host}'s callback with a single-use code "
                                                  "(session.cookie_domain would make one cookie serve both)"))
    found.append(_signing_finding(config))
    return found


def _signing_finding(config: Config) -> Finding:
    from .signing import load_key, uses_signing

    if config.signing.key:
        try:
            key = load_key(config.signing.key)
        except Exception as exc:
            return Finding(FAIL, "signing", f"signing.key does not load ({type(exc).__name__}); give a PEM private key")
        return Finding(OK, "signing", f"signing.key {key.alg}, kid {key.kid}")
    if uses_signing(config):
        return Finding(WARN, "signing", "signing.key is not set: an ephemeral key signs the gateway's tokens and "
                                        "identity assertions, which end with the process and are not accepted by "
                                        "other instances; set signing.key (openssl genpkey -algorithm EC -pkeyopt "
                                        "ec_paramgen_curve:P-256)")
    return Finding(OK, "signing", "nothing is signed (no login, no identity_assertion)")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
