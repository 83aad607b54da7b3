"""Who is the client, really? X-Forwarded-For/-Proto/-Host, believed only from trusted proxies.

Used at the start of every request (for the log, for policy and for the
headers sent upstream). A client that is not in ``server.trusted_proxies``
cannot claim another address, scheme or host: its own headers are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

from .config import Network


@dataclass(frozen=True)
class Forwarded:
    client_ip: str  # the first untrusted hop: who we attribute the request to
    proto: str  # scheme the client used: "http" or "https"
    host: str  # Host the client asked for
    chain: str  # the X-Forwarded-For value to send upstream


def resolve(
    remote_ip: str,
    scheme: str,
    host: str,
    xff: Optional[str],
    xf_proto: Optional[str],
    xf_host: Optional[str],
    trusted: Sequence[Network],
) -> Forwarded:
    """Walk X-Forwarded-For from the right while the hop is a trusted proxy."""
    if not trusted or not _is_trusted(remote_ip, tuple(trusted)):
        return Forwarded(remote_ip, scheme, host, remote_ip)
    hops = [h.strip() for h in xff.split(",") if h.strip()] if xff else []
    client = remote_ip
    for hop in reversed(hops):
        if not _valid_ip(hop):
            break  # cannot tell who wrote anything left of an unparsable hop: stop here
        client = hop
        if not _is_trusted(hop, tuple(trusted)):
            break
    proto = scheme
    if xf_proto:
        candidate = xf_proto.split(",")[0].strip().lower()
        if candidate in ("http", "https"):
            proto = candidate
    fwd_host = host
    if xf_host:
        candidate = xf_host.split(",")[0].strip()
        if candidate and _valid_host(candidate):
            fwd_host = candidate
    chain = ", ".join([h for h in hops if _valid_ip(h)] + [remote_ip])
    return Forwarded(client, proto, fwd_host, chain)


@lru_cache(maxsize=4096)
def _is_trusted(ip: str, trusted: tuple) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _valid_host(value: str) -> bool:
    return len(value) <= 255 and value.isascii() and all(c.isalnum() or c in "-.:[]_" for c in value)
