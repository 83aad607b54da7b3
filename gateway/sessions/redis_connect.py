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
import time
from typing import Any, Dict

from ..config.redis_url import (CERT_REQS, DEFAULT_PORT, DEFAULT_SENTINEL_PORT, FORMS, PLAIN_SCHEMES, SCHEMES,  # noqa: F401
                                SENTINEL_OPTIONS, SENTINEL_SCHEMES, TLS_FILE_OPTIONS, TLS_OPTIONS, RedisTarget,
                                _TRUE, RedisURLError, check_url, parse_url)

# How long a command waits for a new master when the one the sentinels named is gone: attempts
# SENTINEL_RETRY_PAUSE apart (each connection attempt asks the sentinels again) for at most
# SENTINEL_WAIT seconds, plus the attempt under way (at most one socket timeout). On loopback with
# down-after-milliseconds 500, a killed master is replaced in ~1.7 s (tests/test_redis_production.py).
SENTINEL_RETRY_PAUSE = 0.25
SENTINEL_WAIT = 5.0

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
