"""From a ``session.store`` URL to a ``redis.asyncio.Redis`` client: plain, TLS, or through Sentinel.

The URL forms::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]
    rediss://[[USER]:PASSWORD@]HOST[:PORT][/DB][?TLS options]
    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB][?sentinel_password=...]
    rediss+sentinel://...  (TLS to the sentinels and to the master; the same TLS options)

TLS options (``rediss`` forms only): ``ssl_ca_certs=/path/ca.pem`` (the CA that signed the
server certificates; the system's CAs when absent), ``ssl_cert_reqs=required|none`` (default
required: the certificate is verified, and so is its host name or IP address unless
``ssl_check_hostname=false``), ``ssl_certfile=/path`` and ``ssl_keyfile=/path`` (a client
certificate, for a server run with ``tls-auth-clients yes``).

redis-py's own ``Redis.from_url`` already understands every TLS option above, so the plain and TLS
forms are handed to it as they are (``check_url`` below has already refused anything else). It has
no Sentinel URL form: those are taken apart here and given to ``redis.asyncio.sentinel.Sentinel``,
whose ``master_for`` client asks the sentinels for the master's address on every new connection, and
drops its connections (retrying the command) when the master is gone or has been demoted (READONLY).

The URL password is the Redis servers' (master and replicas); the sentinels get
``sentinel_password`` when they have one (``requirepass`` in sentinel.conf), else none.

``check_url`` is what the config rule for ``session.store`` uses: one message per problem, never
containing the password.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

PLAIN_SCHEMES = ("redis", "rediss")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = PLAIN_SCHEMES + SENTINEL_SCHEMES
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

TLS_FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_OPTIONS = TLS_FILE_OPTIONS + ("ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_password",)
CERT_REQS = ("required", "none")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")

# How long a command waits for a new master when the one the sentinels named is gone: attempts
# SENTINEL_RETRY_PAUSE apart (each connection attempt asks the sentinels again) for at most
# SENTINEL_WAIT seconds, plus the attempt under way (at most one socket timeout). On loopback with
# down-after-milliseconds 500, a killed master is replaced in ~1.7 s (tests/test_redis_production.py).
SENTINEL_RETRY_PAUSE = 0.25
SENTINEL_WAIT = 5.0

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_SERVICE = re.compile(r"[A-Za-z0-9_.\-]+")

FORMS = {
    "redis": "redis://HOST:PORT/DB",
    "rediss": "rediss://HOST:PORT/DB",
    "redis+sentinel": "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB",
    "rediss+sentinel": "rediss+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB",
}


class RedisURLError(ValueError):
    """What is wrong with a Redis URL, worded to follow "session: store "."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``session.store`` URL."""

    scheme: str
    hosts: Tuple[Tuple[str, int], ...]  # the server, or the sentinels
    db: int = 0
    service: Optional[str] = None  # Sentinel forms: the monitored master's name
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    options: Dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme in SENTINEL_SCHEMES


def _is_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return all(_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def _host_port(text: str, default_port: int) -> Tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPv6][:PORT]`` of a URL's netloc (without user info)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RedisURLError(f"has an invalid address {_q(text)} (an IPv6 address is written [::1]:PORT)")
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise RedisURLError(f"has an invalid IPv6 address {_q(text)}") from None
        if rest and not rest.startswith(":"):
            raise RedisURLError(f"has an invalid address {_q(text)}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = text.partition(":")
        host = host.lower()
        if not sep:
            port_text = None
        if not _is_host(host):
            if not host:
                raise RedisURLError(f"has an address without a host {_q(text)}")
            raise RedisURLError(f"host {_q(host)} is not a valid host name or IP address")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RedisURLError(f"has an invalid port {_q(port_text)} in {_q(text)} (a number from 1 to 65535)")
    return host, int(port_text)


def _db(text: str) -> int:
    if not text.isdigit() or len(text) > 6:
        raise RedisURLError(f"has an invalid database {_q(text)} (a number such as 0)")
    return int(text)


def _q(text: str) -> str:
    if len(text) > 80:
        text = text[:77] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_url(url: str, *, check_files: bool = False) -> RedisTarget:
    """``url`` taken apart; ``RedisURLError`` saying what is wrong with it.

    ``check_files``: also require that the TLS files named in the options exist (the config rule).
    """
    if any(c.isspace() for c in url):
        raise RedisURLError("must be a URL without spaces")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise RedisURLError(
            'must be "cookie" or a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL'
        )
    form = FORMS[scheme]
    if "#" in rest:
        raise RedisURLError("must not have a fragment (#...)")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ or ]
        raise RedisURLError(f"has an invalid address (an IPv6 address is written [::1]:PORT; expected {form})") from None
    netloc = parts.netloc
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinel = scheme in SENTINEL_SCHEMES

    # hosts
    if not hostlist:
        what = "sentinel HOST:PORT" if sentinel else "host"
        raise RedisURLError(f"has no {what} (expected {form})")
    if sentinel:
        items = hostlist.split(",")
        if any(not item for item in items):
            raise RedisURLError(f"has an empty sentinel address in {_q(hostlist)} (expected {form})")
        hosts = tuple(_host_port(item, DEFAULT_SENTINEL_PORT) for item in items)
    else:
        if "," in hostlist:
            raise RedisURLError(
                f"has several hosts; a list of sentinels needs {scheme}+sentinel:// (expected {form})"
            )
        hosts = (_host_port(hostlist, DEFAULT_PORT),)

    # path: /DB, or /SERVICE/DB
    segments = [unquote(s) for s in parts.path.split("/")[1:]] if parts.path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    service = None
    if sentinel:
        if not segments or not segments[0]:
            raise RedisURLError(f"has no service name (expected {form}, e.g. /mymaster/0)")
        service = segments.pop(0)
        if not _SERVICE.fullmatch(service):
            raise RedisURLError(f"has an invalid service name {_q(service)} (letters, digits, _ . - only)")
    if len(segments) > 1:
        raise RedisURLError(f"has too many path segments in {_q(parts.path)} (expected {form})")
    db = _db(segments[0]) if segments else 0

    # options
    known = (TLS_OPTIONS if scheme.startswith("rediss") else ()) + (SENTINEL_OPTIONS if sentinel else ())
    options: Dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            raise RedisURLError(f"option {name} is given twice")
        if name not in known:
            if name in TLS_OPTIONS:
                raise RedisURLError(f"option {name} needs a TLS URL ({scheme.replace('redis', 'rediss', 1)}://)")
            if not known:
                raise RedisURLError(f"has an unknown option {_q(name)} ({scheme}:// URLs take no options)")
            raise RedisURLError(f"has an unknown option {_q(name)} (known for {scheme}://: {', '.join(known)})")
        if not value:
            raise RedisURLError(f"option {name} is empty")
        options[name] = value
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in CERT_REQS:
        raise RedisURLError(f"option ssl_cert_reqs must be required or none (got {_q(reqs)})")
    check = options.get("ssl_check_hostname")
    if check is not None and check.lower() not in _TRUE + _FALSE:
        raise RedisURLError(f"option ssl_check_hostname must be true or false (got {_q(check)})")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise RedisURLError("option ssl_keyfile needs ssl_certfile (the client certificate)")
    for name in TLS_FILE_OPTIONS:
        path = options.get(name)
        if path is None:
            continue
        if not os.path.isabs(path):
            raise RedisURLError(f"option {name} must be an absolute path (got {_q(path)})")
        if check_files and not os.path.isfile(path):
            raise RedisURLError(f"option {name}: {path} does not exist or is not a file")
    return RedisTarget(scheme, hosts, db, service, username, password, options)


def check_url(url: str) -> Optional[str]:
    """None when ``url`` is a usable ``session.store`` Redis URL, else what is wrong with it."""
    try:
        parse_url(url, check_files=True)
    except RedisURLError as exc:
        return str(exc)
    return None


def _tls_kwargs(target: RedisTarget) -> Dict[str, Any]:
    """redis-py's ssl_* keyword arguments for a ``rediss`` target (the same for sentinels and master)."""
    opts = target.options
    reqs = opts.get("ssl_cert_reqs", "required")
    kwargs: Dict[str, Any] = {"ssl": True, "ssl_cert_reqs": reqs}
    for name in TLS_FILE_OPTIONS:
        if name in opts:
            kwargs[name] = opts[name]
    check = opts.get("ssl_check_hostname", "true").lower() in _TRUE
    kwargs["ssl_check_hostname"] = check and reqs == "required"
    return kwargs


def connect(url: str, *, timeout: float) -> Any:
    """A ``redis.asyncio.Redis`` client for ``url`` (no connection is made yet).

    Every socket operation is bounded by ``timeout``. Plain and TLS URLs: one quick retry (a pooled
    connection may be stale after a Redis restart) and no backoff, so an unreachable Redis costs a
    request at most ~2 timeouts. Sentinel URLs: attempts SENTINEL_RETRY_PAUSE apart for up to
    SENTINEL_WAIT seconds, each asking the sentinels for the master again, so a request made during a
    failover waits for the new master rather than failing (and one made while there is no master at
    all fails after about SENTINEL_WAIT seconds).
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: Dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    target = parse_url(url) if url.lower().startswith(tuple(s + "://" for s in SCHEMES)) else None  # unix://: as is
    if target is None or not target.sentinel:
        tls: Dict[str, Any] = {}
        if target is not None and target.tls:
            # the TLS options as keyword arguments, so that every redis-py version gets the same
            # defaults (5.x did not check host names); from_url would let the query override them
            tls = _tls_kwargs(target)
            del tls["ssl"]  # the scheme says so
            url = url.partition("?")[0]
        return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **common, **tls)

    from redis.asyncio.sentinel import Sentinel

    tls = _tls_kwargs(target) if target.tls else {}
    sentinel_kwargs: Dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),  # discover_master already goes on to the next sentinel
        **tls,
    }
    if "sentinel_password" in target.options:
        sentinel_kwargs["password"] = target.options["sentinel_password"]
    sentinels = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
    master_kwargs: Dict[str, Any] = dict(common, db=target.db, **tls)
    if target.username:
        master_kwargs["username"] = target.username
    if target.password:
        master_kwargs["password"] = target.password
    assert target.service is not None
    master_kwargs["connection_class"] = _master_connection_class(tls=master_kwargs.pop("ssl", False))
    return sentinels.master_for(
        target.service,
        redis_class=_master_class(aioredis.Redis),
        retry=_retry_until(SENTINEL_WAIT, SENTINEL_RETRY_PAUSE),
        **master_kwargs,
    )


def _master_class(base: Any) -> Any:
    class SentinelMaster(base):
        """The master's client; closing it also closes the connections to the sentinels."""

        async def aclose(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().aclose(*args, **kwargs)
            finally:
                for client in self.connection_pool.sentinel_manager.sentinels:
                    await client.aclose()

    return SentinelMaster


def _retry_until(wait: float, pause: float) -> Any:
    """A redis-py ``Retry`` bounded by time, not by a count: connection errors and timeouts are
    retried ``pause`` seconds apart until ``wait`` seconds have passed since the first attempt.

    A count cannot bound a failover wait: an attempt is refused at once when the master's process
    is gone, but takes a whole socket timeout when it hangs.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import ConstantBackoff

    class RetryUntil(Retry):
        async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                                  with_failure_count: bool = False) -> Any:
            start = time.monotonic()
            failures = 0
            while True:
                try:
                    return await do()
                except self._supported_errors as error:
                    if is_retryable is not None and not is_retryable(error):
                        raise
                    failures += 1
                    await (fail(error, failures) if with_failure_count else fail(error))
                    if time.monotonic() - start + pause > wait:
                        raise error
                    await asyncio.sleep(pause)

    return RetryUntil(ConstantBackoff(pause), max(1, int(wait / pause)))


def _master_connection_class(*, tls: bool) -> Any:
    """redis-py's Sentinel-managed connection, asking the sentinels for the master on every reconnect.

    redis-py (up to 8.1 at least; redis/redis-py#3874) looks the master up only when the pool hands
    out a connection that is not connected. A command that fails on a connected connection (the
    master hangs, a read times out) is retried by reconnecting the same connection to the address it
    had, so every retry went back to the old master even after the sentinels had named a new one
    (measured: a read during a SIGSTOP failover failed after 6.5 s, the new master having been
    known for 4.5 s).
    """
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.sentinel import SentinelManagedConnection

    class MasterConnection(SentinelManagedConnection):
        _address_given = False

        async def connect_to(self, address: Any) -> None:  # the pool has just looked it up
            self._address_given = True
            try:
                await super().connect_to(address)
            finally:
                self._address_given = False

        async def _connect(self) -> None:
            if self.connection_pool.is_master and not self._address_given:
                self.host, self.port = await self.connection_pool.get_master_address()
            await super()._connect()

    if not tls:
        return MasterConnection

    class MasterSSLConnection(MasterConnection, SSLConnection):
        pass

    return MasterSSLConnection
