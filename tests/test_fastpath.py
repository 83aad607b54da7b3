"""gateway.fastpath.head_from: the pipeline's view of a request head, read without building an
HTTPServerRequest, refuses exactly what building one refuses and reads the same fields."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tornado import httputil

from gateway.fastpath import head_from
from gateway.http1 import Context


class _Connection:
    context = Context(("192.0.2.7", 4711), "https")


def _tornado(start_line, headers, connection):
    try:
        request = httputil.HTTPServerRequest(connection=connection, start_line=start_line, headers=headers)
    except httputil.HTTPInputError:
        return ("refused",)
    return ("ok", request.method, request.host, request.path, request.query, request.uri, request.remote_ip or "",
            request.protocol)


def _ours(start_line, headers, connection):
    try:
        head = head_from(start_line, headers, connection)
    except httputil.HTTPInputError:
        return ("refused",)
    return ("ok", head.method, head.host, head.path, head.query, head.uri, head.peer, head.protocol)


_HOSTS = st.one_of(st.none(), st.sampled_from(["example.com", "a.b:8080", "[::1]:80", "", "x y", "a,b", "é.com",
                                               "h:", "h:99999", "[v1.x]", "127.0.0.1"]),
                   st.text(alphabet="ab.:-[]_,@%", max_size=8))
_QUERIES = st.one_of(st.just(""), st.text(alphabet="a=&;%2", max_size=12),
                     st.integers(998, 1001).map(lambda n: "&".join(["a=1"] * n)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["GET", "HEAD", "POST"]), st.sampled_from(["/", "/p/a", "/p?"]), _QUERIES,
       st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.lists(_HOSTS, min_size=1, max_size=2),
       st.sampled_from([_Connection(), object()]))
def test_head_from_refuses_and_reads_what_httpserverrequest_does(method, path, query, version, hosts, connection):
    uri = path + ("?" + query if query else "")
    headers = httputil.HTTPHeaders()
    for host in hosts:
        if host is not None:
            headers.add("Host", host)
    start_line = httputil.RequestStartLine(method, uri, version)
    assert _ours(start_line, headers, connection) == _tornado(start_line, headers, connection)


# -- the answer's head, written by a handler through Message.write_headers --------------------------

import pytest  # noqa: E402

from gateway.http1 import Message  # noqa: E402


class _Lines:
    def write_head_lines(self, code, reason, lines, chunk=None):
        return (code, reason, lines, chunk)


@pytest.mark.parametrize("headers, refused", [
    ([], False),  # no header at all: nothing to refuse
    ([("Content-Type", "text/plain")], False),
    ([("X-A", "1"), ("X-B", "2")], False),
    ([("X-A", "1\r\nX-Injected: yes")], True),
    ([("X-A", "1\nX-Injected: yes")], True),
    ([("X-A", "1\r")], True),
])
def test_write_headers_refuses_a_line_break_in_any_header_and_nothing_else(headers, refused):
    fields = httputil.HTTPHeaders()
    for name, value in headers:
        fields._as_list.setdefault(name, []).append(value)  # as a handler's add() would, minus its own check
    start = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")
    if refused:
        with pytest.raises(ValueError):
            Message.write_headers(_Lines(), start, fields)
    else:
        assert Message.write_headers(_Lines(), start, fields) == (200, "OK", headers, None)
