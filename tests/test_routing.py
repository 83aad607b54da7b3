"""Tests for gateway.routing: path normalisation, host handling and route precedence."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import RouteConfig
from gateway.routing import MethodNotAllowed, BadPath, Match, RouteTable, normalize_host, normalize_path

UPSTREAMS = ("http://127.0.0.1:1",)


def route(name, path, host=None, methods=None, strip_prefix=False, **kwargs):
    return RouteConfig(
        name=name,
        path=path,
        upstreams=UPSTREAMS,
        host=host,
        methods=frozenset(methods) if methods is not None else None,
        strip_prefix=strip_prefix,
        **kwargs,
    )


# --- normalize_path: table ------------------------------------------------------

NORMALISED = [
    ("/", "/"),
    ("//", "/"),
    ("/a", "/a"),
    ("/a/", "/a/"),
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a//b", "/a/b"),
    ("///a///b///", "/a/b/"),
    ("/a//../b", "/b"),  # empty segments collapse first, as nginx's merge_slashes
    ("/a/.", "/a/"),
    ("/a/..", "/"),
    ("/a/b/..", "/a/"),
    ("/./", "/"),
    ("/a/b/../../c", "/c"),
    ("/public/%2e%2e/admin", "/admin"),
    ("/public/%2E%2e/admin", "/admin"),
    ("/public/.%2e/admin", "/admin"),
    ("/a/%2e/b", "/a/b"),
    ("/a/%2E%2e", "/"),
    ("/%252e%252e/", "/%252e%252e/"),  # decoded once at most: stays literal
    ("/%25", "/%25"),
    ("/%7euser", "/~user"),
    ("/%41%62%2D%5f%30", "/Ab-_0"),
    ("/a%20b", "/a%20b"),
    ("/a%3bb", "/a%3Bb"),
    ("/a%3Fb", "/a%3Fb"),
    ("/%c3%a9", "/%C3%A9"),
    ("/a b", "/a%20b"),  # raw non-pchar bytes are encoded
    ("/a{b}|", "/a%7Bb%7D%7C"),
    ("/\xc3\xa9", "/%C3%A9"),  # latin-1 decoded request line: one char per byte
    ("/...", "/..."),
    ("/..a/a..", "/..a/a.."),
    ("/.well-known/openid-configuration", "/.well-known/openid-configuration"),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
]


@pytest.mark.parametrize("raw, expected", NORMALISED)
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


REJECTED = [
    "",
    "a/b",
    "*",
    "http://example.com/",
    "/..",
    "/../",
    "/a/../..",
    "/%2e%2e/admin",
    "/%2E%2E",
    "/public/..%2Fadmin",
    "/public/..%2fadmin",
    "/%2F",
    "/a%2fb",
    "/a%5cb",
    "/a%5Cb",
    "/a\\b",
    "/..\\admin",
    "/a%00",
    "/a\x00b",
    "/a%0d%0aSet-Cookie:x",
    "/a\nb",
    "/a%7f",
    "/a\tb",
    "/%zz",
    "/%4",
    "/%",
    "/a%g0",
    "/a?b",
    "/a#b",
    "/admin;x/users",  # servlet containers read it as /admin/users
    "/a;b=c/d",
    "/public/..;/admin",  # Tomcat reads "..;" as ".."
    "/public/.;x/admin",
    "/public/%2e%2e;/admin",
    "/\u0100",
]


@pytest.mark.parametrize("raw", REJECTED)
def test_normalize_path_rejects(raw):
    with pytest.raises(BadPath):
        normalize_path(raw)


def test_bad_path_is_value_error_with_reason():
    with pytest.raises(ValueError) as info:
        normalize_path("/a%2fb")
    assert info.value.reason == "encoded slash"


# --- normalize_path: properties -------------------------------------------------

PATH_TOKENS = [
    "/", "/", "//", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%00", "%41",
    "%7e", "%20", "%zz", "%4", "a", "B", "~", ";", "\\", " ", "?", "\x00", "\xe9", "\u0100",
]
raw_paths = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(PATH_TOKENS), max_size=20).map("".join),
    st.lists(st.sampled_from(PATH_TOKENS), max_size=20).map(lambda t: "/" + "".join(t)),
)


@settings(max_examples=600, deadline=None)
@given(raw_paths)
def test_normalize_only_raises_bad_path_and_output_is_canonical(raw):
    try:
        out = normalize_path(raw)
    except BadPath:
        return
    assert out.startswith("/")
    for fragment in ("//", "/./", "/../", "\\", "%2F", "%5C", "%2E", "%00"):
        assert fragment not in out
    assert not out.endswith("/..") and not out.endswith("/.")
    assert not re.search(r"%(?![0-9A-F]{2})", out)  # every escape well-formed, upper-case
    assert all(0x20 < ord(c) < 0x7F for c in out)


@settings(max_examples=600, deadline=None)
@given(raw_paths)
def test_normalize_is_idempotent(raw):
    try:
        once = normalize_path(raw)
    except BadPath:
        return
    assert normalize_path(once) == once


# --- hosts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        ("example.com:", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[FE80::1]", "[fe80::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("", ""),
    ],
)
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


# --- matching: table ----------------------------------------------------------------


def names(table, host, path, method="GET"):
    found = table.match(host, path, method)
    if isinstance(found, MethodNotAllowed):
        return "405 " + ",".join(sorted(found.allowed))
    return None if found is None else found.route.name


def test_segment_boundaries():
    table = RouteTable([route("app", "/app")])
    assert names(table, "h", "/app") == "app"
    assert names(table, "h", "/app/") == "app"
    assert names(table, "h", "/app/x") == "app"
    assert names(table, "h", "/apple") is None
    assert names(table, "h", "/ap") is None
    assert names(table, "h", "/") is None


def test_root_matches_everything_and_longest_prefix_wins():
    table = RouteTable([route("root", "/"), route("a", "/a"), route("ab", "/a/b")])
    assert names(table, "h", "/") == "root"
    assert names(table, "h", "/x/y") == "root"
    assert names(table, "h", "/a") == "a"
    assert names(table, "h", "/a/bc") == "a"
    assert names(table, "h", "/a/b") == "ab"
    assert names(table, "h", "/a/b/c/d/") == "ab"


def test_host_classes():
    table = RouteTable(
        [
            route("any-long", "/x/y/z"),
            route("wild", "/", host="*.example.com"),
            route("wild-deep", "/", host="*.b.example.com"),
            route("exact", "/", host="a.example.com"),
            route("exact-b", "/only", host="b.example.com"),
        ]
    )
    # a route with a host beats one without, even with a shorter path
    assert names(table, "a.example.com", "/x/y/z") == "exact"
    assert names(table, "c.example.com", "/x/y/z") == "wild"
    assert names(table, "a.b.example.com", "/x") == "wild-deep"  # longer wildcard first
    assert names(table, "x.a.b.example.com", "/x") == "wild-deep"
    assert names(table, "example.com", "/x/y/z") == "any-long"  # *.example.com needs a label
    assert names(table, "example.com", "/x") is None
    assert names(table, "other.org", "/x/y/z/w") == "any-long"
    # the exact host's routes that do not match fall through to the wildcard
    assert names(table, "b.example.com", "/only/x") == "exact-b"
    assert names(table, "b.example.com", "/elsewhere") == "wild"


def test_host_header_forms():
    table = RouteTable([route("exact", "/", host="grafana.example.com"), route("ipv6", "/", host="::1")])
    for host in ("grafana.example.com", "GRAFANA.Example.com:8443", "grafana.example.com.",
                 "grafana.example.com.:80"):
        assert names(table, host, "/") == "exact"
    assert names(table, "grafana.example.com..", "/") is None
    assert names(table, "[::1]:8080", "/") == "ipv6"
    assert names(table, "evil.com", "/") is None
    assert names(table, "grafana.example.com.evil.com", "/") is None


def test_methods_never_fall_through_to_a_shorter_prefix():
    table = RouteTable(
        [
            route("read", "/api", methods={"GET", "HEAD"}),
            route("write", "/api", methods={"POST"}),
            route("root", "/"),
        ]
    )
    assert names(table, "h", "/api/x", "GET") == "read"
    assert names(table, "h", "/api/x", "get") == "read"  # compared upper-cased, as policy does
    assert names(table, "h", "/api/x", "POST") == "write"
    # a shorter (perhaps public) route must not catch a method the /api routes left out
    assert names(table, "h", "/api/x", "DELETE") == "405 GET,HEAD,POST"
    assert names(table, "h", "/other", "DELETE") == "root"
    assert names(RouteTable([route("r", "/", methods={"GET"})]), "h", "/", "PUT") == "405 GET,HEAD"
    assert names(RouteTable([route("r", "/", methods={"GET"})]), "h", "/", "HEAD") == "r"  # HEAD goes with GET


def test_same_host_and_path_earlier_route_wins():
    table = RouteTable([route("first", "/a"), route("second", "/a")])
    assert names(table, "h", "/a/x") == "first"


def test_strip_prefix_upstream_path():
    table = RouteTable(
        [route("api", "/api", strip_prefix=True), route("root", "/", strip_prefix=True), route("keep", "/keep")]
    )
    assert table.match("h", "/api", "GET") == Match(table.routes[0], "/")
    assert table.match("h", "/api/", "GET").upstream_path == "/"
    assert table.match("h", "/api/v1/x", "GET").upstream_path == "/v1/x"
    assert table.match("h", "/api/v1/x/", "GET").upstream_path == "/v1/x/"
    assert table.match("h", "/apix", "GET").upstream_path == "/apix"  # root route, nothing to strip
    assert table.match("h", "/keep/x", "GET").upstream_path == "/keep/x"


def test_route_paths_are_normalised_and_checked():
    table = RouteTable([route("tilde", "/%7euser"), route("slash", "/a/")])
    assert names(table, "h", normalize_path("/~user/x")) == "tilde"
    assert names(table, "h", "/a") == "slash"
    with pytest.raises(ValueError, match="'bad'"):
        RouteTable([route("bad", "/a%2fb")])


def test_routes_introspection_and_empty_table():
    routes = [route("a", "/a"), route("b", "/b", host="h")]
    table = RouteTable(routes)
    assert table.routes == tuple(routes)
    assert RouteTable([]).match("h", "/", "GET") is None


def test_long_paths_are_cheap():
    table = RouteTable([route("a", "/a/b")])
    deep = "/a/b" + "/x" * 20000
    assert names(table, "h", deep) == "a"
    assert names(table, "h", "/" + "y" * 60000) is None


# --- matching: properties ---------------------------------------------------------

SEGMENTS = ["a", "b", "ab", "c"]
HOSTS = [None, "x.com", "a.x.com", "*.x.com", "*.a.x.com"]
METHODS = [None, {"GET"}, {"POST"}, {"GET", "POST"}]

route_paths = st.lists(st.sampled_from(SEGMENTS), max_size=3).map(lambda s: "/" + "/".join(s))
request_paths = st.tuples(st.lists(st.sampled_from(SEGMENTS), max_size=5), st.booleans()).map(
    lambda t: "/" + "/".join(t[0]) + ("/" if t[0] and t[1] else "")
)


NOT_ALLOWED = "405"


def found_route(found):
    if isinstance(found, MethodNotAllowed):
        return NOT_ALLOWED
    return found and found.route


def reference_match(routes, host, path, method):
    """Brute force: every route checked, best by (host class, wildcard length, path length, order)."""
    host = normalize_host(host)
    best_key, group = None, []
    for index, r in enumerate(routes):
        if r.host is None:
            host_rank = (0, 0)
        elif r.host.startswith("*."):
            suffix = r.host[1:]
            if not (host.endswith(suffix) and len(host) > len(suffix)):
                continue
            host_rank = (1, len(suffix))
        elif r.host == host:
            host_rank = (2, 0)
        else:
            continue
        if not (r.path == "/" or path == r.path or path.startswith(r.path + "/")):
            continue
        key = (host_rank, len(r.path))
        if best_key is None or key > best_key:
            best_key, group = key, [r]
        elif key == best_key:
            group.append(r)
    if best_key is None:
        return None
    for r in group:  # config order within the most specific (host, path)
        if r.methods is None or method in r.methods or (method == "HEAD" and "GET" in r.methods):
            return r
    return NOT_ALLOWED


@st.composite
def route_sets(draw, hosts=HOSTS):
    count = draw(st.integers(min_value=0, max_value=8))
    return [
        route(f"r{i}", draw(route_paths), host=draw(st.sampled_from(hosts)), methods=draw(st.sampled_from(METHODS)))
        for i in range(count)
    ]


@settings(max_examples=400, deadline=None)
@given(route_sets(hosts=[None]), request_paths, st.sampled_from(["GET", "POST", "PUT"]))
def test_longest_prefix_matches_reference(routes, path, method):
    found = RouteTable(routes).match("any.host", path, method)
    expected = reference_match(routes, "any.host", path, method)
    assert found_route(found) is expected or found_route(found) == expected == NOT_ALLOWED


@settings(max_examples=400, deadline=None)
@given(
    route_sets(),
    request_paths,
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["x.com", "a.x.com", "b.a.x.com", "c.x.com:8080", "X.COM.", "y.com", "x.com.evil"]),
)
def test_host_precedence_matches_reference(routes, path, method, host):
    found = RouteTable(routes).match(host, path, method)
    expected = reference_match(routes, host, path, method)
    assert found_route(found) is expected or found_route(found) == expected == NOT_ALLOWED


# --- security: what matches is what is forwarded -------------------------------------

ATTACK_SEGMENTS = ["public", "admin", "..", ".", "%2e", "%2E%2e", "", "%2f", "..;", "%252e", "%2e%2e;", "x"]
attack_paths = st.lists(st.sampled_from(ATTACK_SEGMENTS), min_size=1, max_size=7).map(lambda s: "/" + "/".join(s))


def naive_upstream_view(path):
    """How a lenient upstream might read the forwarded path: decode everything once, resolve dots."""
    out = []
    for segment in unquote(path).replace("\\", "/").split("/"):
        segment = segment.split(";", 1)[0]
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    return "/" + "/".join(out)


@pytest.mark.parametrize("strip", [False, True])
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=attack_paths)
def test_public_route_never_forwards_admin(strip, raw):
    table = RouteTable(
        [
            route("public", "/public", auth="public", strip_prefix=strip),
            route("admin", "/admin", auth="token"),
        ]
    )
    try:
        path = normalize_path(raw)
    except BadPath:
        return
    found = table.match("h", path, "GET")
    if found is None or found.route.name != "public":
        return
    assert not path.startswith("/admin")
    assert path == "/public" or path.startswith("/public/")
    # the forwarded path is canonical: the upstream has nothing left to resolve
    assert normalize_path(found.upstream_path) == found.upstream_path
    if strip:
        assert "/public" + found.upstream_path.rstrip("/") == path.rstrip("/")
    else:
        assert found.upstream_path == path
        view = naive_upstream_view(found.upstream_path)
        assert view == "/public" or view.startswith("/public/")


# --- hardening: overlong / invalid UTF-8 in paths, empty host labels -------------------

INVALID_UTF8 = ["/%C0%AE", "/%C0%AF", "/%E0%80%AE", "/%FF", "/a/%C0%AE%C0%AE/admin", "/%ED%A0%80",
                "/%F8%88%80%80%80", "/%C3", "/%80", "/\xff", "/\xc0\xae"]


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_overlong_and_invalid_utf8_escapes_are_refused(raw):
    with pytest.raises(BadPath, match="invalid UTF-8"):
        normalize_path(raw)


@given(st.binary(min_size=1, max_size=12))
@settings(max_examples=400, deadline=None)
def test_percent_encoded_bytes_are_refused_unless_valid_utf8(data):
    raw = "/" + "".join("%%%02X" % b for b in data)
    try:
        out = normalize_path(raw)
    except BadPath:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return  # refused, as it must be
        assert b"/" in data or b"\\" in data or any(b < 0x20 or b == 0x7F for b in data) or data in (b".", b"..")
        return
    unquote(out, errors="strict")  # whatever passes decodes as strict UTF-8
    data.decode("utf-8")


@pytest.mark.parametrize("host", ["secure.example..", ".example", "..", "a..b", ".", "a..b:8080", "..:80"])
def test_host_with_an_empty_label_is_not_routable(host):
    from gateway.routing import valid_host_header

    assert not valid_host_header(host)


@pytest.mark.parametrize("host", ["example.com", "example.com.", "a-b.c_d:8080", "[::1]:8080", "127.0.0.1", ""])
def test_ordinary_hosts_are_routable(host):
    from gateway.routing import valid_host_header

    assert valid_host_header(host)
