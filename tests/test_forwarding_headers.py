"""gateway/forwarding/headers.py: what crosses the gateway as headers, in each direction.

Table-driven cases for the request side (``forwarded_request_headers``), the
cookie filter and the response side (``response_headers``), and a property: no
hop-by-hop, identity or gateway-set header sent by a client ever reaches the
upstream, whatever its case and whether it is spelled with '_' for '-'.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from gateway.forwarded import Forwarded
from gateway.forwarding.headers import (
    GATEWAY_SET,
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    connection_tokens,
    cookie_header_without,
    forwarded_request_headers,
    identity_value,
    response_headers,
    upstream_header_list,
)
from gateway.models import Identity

FWD = Forwarded(client_ip="10.0.0.9", proto="https", host="app.example.com", chain="10.0.0.9")
RID = "rid-1"
OWN = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id")


def incoming(*pairs: tuple) -> HTTPHeaders:
    headers = HTTPHeaders()
    for name, value in pairs:
        headers.add(name, value)
    return headers


def names(headers: list) -> list:
    return [name for name, _ in headers]


@pytest.mark.parametrize("sent,kept", [
    ([("Accept", "*/*")], ["Accept"]),
    ([("Connection", "keep-alive, X-Secret"), ("X-Secret", "s"), ("X-Other", "o")], ["X-Other"]),
    ([("Keep-Alive", "5"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "p")], []),
    ([("Content-Length", "3"), ("Expect", "100-continue"), ("Transfer-Encoding", "chunked")], []),
    ([("X-Forwarded-User", "root"), ("X_Forwarded_User", "root"), ("x-auth-request-email", "e")], []),
    ([("Host", "evil"), ("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "1"), ("Forwarded", "for=1")], []),
    ([("X-HTTP-Method-Override", "DELETE"), ("X-Original-URL", "/admin")], []),
    ([("X_Custom_Thing", "1")], ["X_custom_thing"]),  # '_' kept when it maps to nothing the gateway owns
])
def test_client_headers_filtered(sent, kept):
    out = forwarded_request_headers(incoming(*sent), FWD, RID, None)
    assert names(out) == kept + list(OWN)
    assert dict(out)["X-Forwarded-For"] == "10.0.0.9" and dict(out)["X-Request-Id"] == RID


@pytest.mark.parametrize("identity,expected", [
    (Identity(sub="alice"), [("X-Forwarded-User", "alice")]),
    (Identity(sub="bob", email="b@x", groups=("a", "b,c"), preferred_username="bobby"),
     [("X-Forwarded-User", "bob"), ("X-Forwarded-Email", "b@x"), ("X-Forwarded-Groups", "a,b%2Cc"),
      ("X-Forwarded-Preferred-Username", "bobby")]),
    (Identity(sub="evil\r\nX-Admin: 1"), [("X-Forwarded-User", "evil%0D%0AX-Admin: 1")]),
])
def test_identity_headers(identity, expected):
    out = forwarded_request_headers(incoming(("X-Forwarded-User", "forged")), FWD, RID, identity)
    assert out[len(OWN):] == expected


@pytest.mark.parametrize("value,list_item,expected", [
    ("plain", False, "plain"),
    ("a,b", False, "a,b"),
    ("a,b", True, "a%2Cb"),
    ("50%", True, "50%"),  # only a comma makes a list item be encoded
    ("50%,", True, "50%25%2C"),
    ("tab\there", False, "tab%09here"),
    ("é", False, "é".encode().decode("latin-1")),
])
def test_identity_value(value, list_item, expected):
    assert identity_value(value, list_item=list_item) == expected


@pytest.mark.parametrize("cookies,expected", [
    (["a=1; _gw=s; b=2"], "a=1; b=2"),
    (["_gw_login_x=1", "c=3"], "c=3"),
    (["_gw=1"], ""),
    (["_gwx=1; ; d=4"], "_gwx=1; d=4"),  # only the name itself or name + "_..."
])
def test_cookie_header_without(cookies, expected):
    assert cookie_header_without(cookies, "_gw") == expected


def test_own_cookies_dropped_only_when_a_cookie_name_is_given():
    sent = incoming(("Cookie", "_gw=s; a=1"), ("Cookie", "_gw_csrf=t"))
    assert dict(forwarded_request_headers(sent, FWD, RID, None, "_gw"))["Cookie"] == "a=1"
    assert [v for n, v in forwarded_request_headers(sent, FWD, RID, None) if n == "Cookie"] == ["_gw=s; a=1", "_gw_csrf=t"]
    only_own = incoming(("Cookie", "_gw=s"))
    assert "Cookie" not in names(forwarded_request_headers(only_own, FWD, RID, None, "_gw"))


def test_connection_tokens():
    assert connection_tokens(incoming(("Connection", "Keep-Alive, X-A"), ("Connection", ",x-b"))) == {
        "keep-alive", "x-a", "x-b"}


@pytest.mark.parametrize("status,upstream,expected", [
    (200, [("Content-Type", "text/plain"), ("Content-Length", "2")],
     [("Content-Type", "text/plain"), ("Content-Length", "2"), ("X-Request-Id", RID)]),
    (200, [("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"), ("Transfer-Encoding", "chunked"),
           ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
     [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Request-Id", RID)]),
    (204, [("Content-Length", "0"), ("X-Request-Id", "theirs")], [("X-Request-Id", "theirs")]),
    (304, [("content-length", "10"), ("ETag", '"v"')], [("ETag", '"v"'), ("X-Request-Id", RID)]),
    (404, [("Content-Length", "9")], [("Content-Length", "9"), ("X-Request-Id", RID)]),
])
def test_response_headers(status, upstream, expected):
    assert response_headers(status, upstream, RID) == expected


# --------------------------------------------------------------------------- the property

FORBIDDEN = sorted(HOP_BY_HOP | IDENTITY_HEADERS | GATEWAY_SET)


@st.composite
def spelled(draw: st.DrawFn) -> str:
    """A forbidden header name in any case, any of its '-' possibly written '_'."""
    name = draw(st.sampled_from(FORBIDDEN))
    out = []
    for ch in name:
        if ch == "-" and draw(st.booleans()):
            ch = "_"
        out.append(ch.upper() if draw(st.booleans()) else ch)
    return "".join(out)


header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12).map(
    lambda v: "client-" + v)


@settings(max_examples=300, deadline=None)
@given(
    forbidden=st.lists(st.tuples(spelled(), header_value), min_size=1, max_size=8),
    harmless=st.lists(st.tuples(st.sampled_from(["Accept", "X-App", "Cookie", "If-None-Match"]), header_value),
                      max_size=4),
    order=st.randoms(use_true_random=False),
    with_identity=st.booleans(),
)
def test_no_client_copy_of_a_gateway_owned_header_survives(forbidden, harmless, order, with_identity):
    pairs = forbidden + harmless
    order.shuffle(pairs)
    identity = Identity(sub="u", email="u@x") if with_identity else None
    out = forwarded_request_headers(incoming(*pairs), FWD, RID, identity, "_gw")
    for name, value in out:
        normal = name.lower().replace("_", "-")
        if normal in HOP_BY_HOP:
            pytest.fail(f"hop-by-hop {name} forwarded")
        if normal in IDENTITY_HEADERS or normal in GATEWAY_SET:
            assert not value.startswith("client-"), f"the client's {name} survived"
    assert sum(1 for name, _ in out if name.lower() == "x-request-id") == 1


CLIENT_IP_HEADERS = ["True-Client-IP", "X-Client-IP", "CF-Connecting-IP", "Client-IP", "X-Cluster-Client-IP",
                     "Fastly-Client-IP", "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "X-Real-IP",
                     "Forwarded", "X_Client_IP", "true-client-ip"]


@pytest.mark.parametrize("name", CLIENT_IP_HEADERS)
def test_client_ip_headers_from_the_client_never_reach_the_upstream(name):
    kept = upstream_header_list(HTTPHeaders({name: "10.0.0.1"}), [])
    assert kept == [], (name, kept)


SET_COOKIES = [
    ("_gw=fixed; Path=/", False),
    ("_gw_1=chunk; Path=/", False),
    ("_gw_login_abc=x", False),
    ("_gw=; Max-Age=0", False),
    (" _gw =x", False),
    ("_gwx=app", True),
    ("app=1; Path=/", True),
    ("gw=1", True),
]


@pytest.mark.parametrize("value,kept", SET_COOKIES)
def test_upstream_cannot_set_or_clear_the_gateways_own_cookies(value, kept):
    out = response_headers(200, [("Set-Cookie", value), ("Content-Type", "text/plain")], "rid", "_gw")
    assert (("Set-Cookie", value) in out) is kept
    assert ("Content-Type", "text/plain") in out
