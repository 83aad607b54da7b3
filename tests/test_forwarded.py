"""gateway/forwarded.py: X-Forwarded-For/-Proto/-Host, believed only from trusted proxies.

``resolve(remote_ip, scheme, host, xff, xf_proto, xf_host, trusted)`` returns
``Forwarded(client_ip, proto, host, chain)``: ``client_ip`` is the rightmost
address that is not a trusted proxy, ``chain`` the X-Forwarded-For to send
upstream (the received one plus the peer's address).
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.forwarded import Forwarded, resolve


def nets(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


TRUSTED = nets("10.0.0.0/8", "fd00::/8")


def res(remote: str, xff: Optional[str] = None, proto: Optional[str] = None, host: Optional[str] = None,
        trusted: tuple = TRUSTED, scheme: str = "http", req_host: str = "gw.example.com") -> Forwarded:
    return resolve(remote, scheme, req_host, xff, proto, host, trusted)


# --------------------------------------------------------------------------- untrusted peers


@pytest.mark.parametrize("trusted", [(), TRUSTED], ids=["no trusted proxies", "peer not trusted"])
def test_untrusted_peer_headers_are_ignored(trusted: tuple) -> None:
    f = res("203.0.113.7", xff="1.2.3.4, 10.0.0.1", proto="https", host="evil.example", trusted=trusted)
    assert f == Forwarded("203.0.113.7", "http", "gw.example.com", "203.0.113.7")


def test_untrusted_peer_keeps_real_scheme() -> None:
    f = res("203.0.113.7", proto="http", trusted=TRUSTED, scheme="https")
    assert f.proto == "https"


def test_no_headers_from_untrusted_peer() -> None:
    f = res("198.51.100.1", trusted=())
    assert f == Forwarded("198.51.100.1", "http", "gw.example.com", "198.51.100.1")


def test_trusting_another_network_does_not_trust_this_peer() -> None:
    f = res("11.0.0.1", xff="1.2.3.4", trusted=nets("10.0.0.0/8"))
    assert f.client_ip == "11.0.0.1"
    assert f.chain == "11.0.0.1"


# --------------------------------------------------------------------------- trusted proxies


def test_trusted_proxy_client_ip_and_chain() -> None:
    f = res("10.0.0.1", xff="203.0.113.9")
    assert f.client_ip == "203.0.113.9"
    assert f.chain == "203.0.113.9, 10.0.0.1"


def test_rightmost_untrusted_hop_wins_over_spoofed_left_entries() -> None:
    # the client sent "X-Forwarded-For: 6.6.6.6"; two trusted proxies appended what they saw
    f = res("10.0.0.1", xff="6.6.6.6, 203.0.113.9, 10.0.0.2")
    assert f.client_ip == "203.0.113.9"
    assert f.chain == "6.6.6.6, 203.0.113.9, 10.0.0.2, 10.0.0.1"


def test_all_hops_trusted_gives_leftmost() -> None:
    f = res("10.0.0.1", xff="10.1.1.1, 10.0.0.2")
    assert f.client_ip == "10.1.1.1"


def test_trusted_proxy_without_xff_is_the_client() -> None:
    f = res("10.0.0.1")
    assert f.client_ip == "10.0.0.1"
    assert f.chain == "10.0.0.1"


def test_whitespace_around_hops() -> None:
    f = res("10.0.0.1", xff="  203.0.113.9 ,10.0.0.2  ")
    assert f.client_ip == "203.0.113.9"
    assert f.chain == "203.0.113.9, 10.0.0.2, 10.0.0.1"


@pytest.mark.parametrize(
    "xf_proto, expected",
    [
        ("https", "https"),
        ("HTTPS", "https"),
        (" https ", "https"),
        ("https, http", "https"),
        ("http", "http"),
        ("ftp", "http"),  # not a web scheme: keep the real one
        ("", "http"),
        ("javascript", "http"),
    ],
)
def test_trusted_proto(xf_proto: str, expected: str) -> None:
    assert res("10.0.0.1", proto=xf_proto).proto == expected


@pytest.mark.parametrize(
    "xf_host, expected",
    [
        ("app.example.com", "app.example.com"),
        ("app.example.com:8443", "app.example.com:8443"),
        ("app.example.com, other.example.com", "app.example.com"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("", "gw.example.com"),
        ("evil.com/path", "gw.example.com"),
        ("evil.com\r\nX-Injected: 1", "gw.example.com"),
        ("a b", "gw.example.com"),
        ("user@evil.com", "gw.example.com"),
        ("x" * 300, "gw.example.com"),
    ],
)
def test_trusted_host(xf_host: str, expected: str) -> None:
    assert res("10.0.0.1", host=xf_host).host == expected


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "xff",
    [
        "garbage, 203.0.113.9",
        "203.0.113.9:1234, 203.0.113.9",
        ",,, 203.0.113.9",
        "<script>, 203.0.113.9",
        "999.1.1.1, 203.0.113.9",
        "[2001:db8::1], 203.0.113.9",
    ],
)
def test_garbage_left_entries_are_dropped(xff: str) -> None:
    f = res("10.0.0.1", xff=xff)
    assert f.client_ip == "203.0.113.9"
    assert f.chain == "203.0.113.9, 10.0.0.1"


@pytest.mark.parametrize("xff", ["garbage", "", ",", " , ", "unknown", "\x00", "1.2.3"])
def test_only_garbage_falls_back_to_peer(xff: str) -> None:
    f = res("10.0.0.1", xff=xff)
    assert f.client_ip == "10.0.0.1"
    assert f.chain == "10.0.0.1"


@pytest.mark.parametrize("appended", ["unknown", "203.0.113.9:5555", "_hidden"])
def test_unparsable_hop_stops_the_walk(appended: str) -> None:
    # client sent "X-Forwarded-For: 6.6.6.6"; the trusted proxy 10.0.0.1 appended `appended`
    f = res("10.0.0.1", xff=f"6.6.6.6, {appended}")
    assert f.client_ip != "6.6.6.6"


# --------------------------------------------------------------------------- IPv6


def test_ipv6_untrusted_peer() -> None:
    f = res("2001:db8::5", xff="2001:db8::66", proto="https")
    assert f == Forwarded("2001:db8::5", "http", "gw.example.com", "2001:db8::5")


def test_ipv6_trusted_proxy() -> None:
    f = res("fd00::1", xff="2001:db8::66, fd00::2", proto="https")
    assert f.client_ip == "2001:db8::66"
    assert f.proto == "https"
    assert f.chain == "2001:db8::66, fd00::2, fd00::1"


def test_mixed_families() -> None:
    f = res("10.0.0.1", xff="2001:db8::66, fd00::2")
    assert f.client_ip == "2001:db8::66"
    f = res("fd00::1", xff="203.0.113.9")
    assert f.client_ip == "203.0.113.9"


def test_ipv6_loopback_trusted() -> None:
    f = res("::1", xff="2001:db8::66", trusted=nets("::1/128"))
    assert f.client_ip == "2001:db8::66"


def test_ipv4_network_does_not_trust_ipv6_peer() -> None:
    f = res("::ffff:10.0.0.1", xff="6.6.6.6", trusted=nets("10.0.0.0/8"))
    assert f.client_ip == "::ffff:10.0.0.1"


# --------------------------------------------------------------------------- properties

header_text = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.sampled_from(["unknown", "", " ", "[::1]", "1.2.3.4:80", "fe80::1%eth0", "999.0.0.1", "\x00", "é"]),
            st.text(max_size=10),
        ),
        max_size=6,
    ).map(", ".join),
)
ips = st.ip_addresses().map(str)


@settings(max_examples=400)
@given(ips, header_text, header_text, header_text, st.sampled_from([(), TRUSTED, nets("0.0.0.0/0", "::/0")]))
def test_property_never_raises(remote: str, xff, proto, host, trusted) -> None:
    f = resolve(remote, "http", "gw.example.com", xff, proto, host, trusted)
    assert f.proto in ("http", "https")
    assert f.chain.endswith(remote)
    # the client is the peer or one of the addresses that were listed
    listed = [h.strip() for h in (xff or "").split(",")]
    assert f.client_ip == remote or f.client_ip in listed


@settings(max_examples=300)
@given(ips, st.sampled_from(["http", "https"]), header_text, header_text, header_text)
def test_property_no_trusted_proxies_means_peer(remote: str, scheme: str, xff, proto, host) -> None:
    f = resolve(remote, scheme, "gw.example.com", xff, proto, host, ())
    assert f == Forwarded(remote, scheme, "gw.example.com", remote)


@settings(max_examples=200)
@given(st.text(max_size=40), header_text, header_text, header_text)
def test_property_garbage_remote_never_raises(remote: str, xff, proto, host) -> None:
    f = resolve(remote, "http", "h", xff, proto, host, TRUSTED)
    assert f.client_ip == remote  # a peer that is not an address cannot be trusted
