"""Redis URLs for ``session.store``, parsed and checked once: redis://, rediss://, redis+sentinel://.

Read by the ``session`` config rule (errors as config messages) and by
``gateway.sessions.redis_connect`` (which connects to what they name).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple
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
