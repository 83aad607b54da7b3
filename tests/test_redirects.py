"""gateway/redirects.py: ``safe_redirect_path(rd, default="/")`` allows same-origin paths only.

Whatever it returns is used as a Location after login/sign-out, so it must never
be something a browser resolves to another origin: no scheme, no authority,
no ``//`` or ``/\\`` start, in any layer of percent-encoding.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.redirects import safe_redirect_path

ACCEPTED = [
    "/",
    "/a",
    "/a/b?x=1#f",
    "/a/b/",
    "/app?next=%2Fother",
    "/search?q=a%20b&x=https://elsewhere.example",  # a URL in the query is data, not a target
    "/path:with:colons",
    "/%7Euser",
    "/caf%C3%A9",
    "/a/..;/b",
]

REJECTED = [
    "//evil.com",
    "///evil.com",
    "/\\evil.com",
    "\\\\evil",
    "\\/evil.com",
    "https://evil.com",
    "http:evil.com",
    "HTTPS://evil.com/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,x",
    "evil.com",
    "a/b",
    "/%2F%2Fevil.com",
    "/%2f%2fevil.com",
    "%2F%2Fevil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "/%252F%252Fevil.com",
    "/%25252F%25252Fevil.com",
    "/%2525252F%2525252Fevil.com",  # four layers of encoding: refused, not looked through
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r/evil.com",
    "/%09/evil.com",
    "/%0A/evil.com",
    "/%0D%0ALocation:%20https://evil.com",
    "/\x00",
    "/a\x7f",
    " /evil",
    "\t//evil.com",
    "",
    None,
]


@pytest.mark.parametrize("rd", ACCEPTED)
def test_accepted_paths_are_returned_unchanged(rd: str) -> None:
    assert safe_redirect_path(rd) == rd


@pytest.mark.parametrize("rd", REJECTED, ids=repr)
def test_rejected_returns_default(rd) -> None:
    assert safe_redirect_path(rd) == "/"
    assert safe_redirect_path(rd, default="/home") == "/home"


def test_default_is_returned_for_empty() -> None:
    assert safe_redirect_path("", default="/dash") == "/dash"
    assert safe_redirect_path(None, default="/dash") == "/dash"


# --------------------------------------------------------------------------- property

PIECES = st.sampled_from([
    "/", "//", "\\", "%2F", "%2f", "%5C", "%5c", "%25", "%252F", "%25252F", "%", "2F", "5C",
    ":", "@", "?", "#", ".", "..", "evil.com", "http", "https:", "javascript:", "\t", "\n", "\r",
    "%09", "%0A", "%00", " ", "\x00", "\x7f", "\u3000", "\uff0f", "%EF%BC%8F", "a", "x=1", "&",
])
CANDIDATES = st.one_of(
    st.lists(PIECES, max_size=10).map("".join),
    st.lists(PIECES, max_size=8).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=30),
    st.text(max_size=30).map(lambda s: "/" + s),
)


def layers(value: str, depth: int = 3) -> list[str]:
    """``value`` and its percent-decoded forms, up to ``depth`` decodings."""
    out = [value]
    for _ in range(depth):
        decoded = unquote(out[-1])
        if decoded == out[-1]:
            break
        out.append(decoded)
    return out


@settings(max_examples=1500)
@given(CANDIDATES)
@example("/%2F%2Fevil.com")
@example("/%252F%252Fevil.com")
@example("/\t/evil.com")
@example("/%5Cevil.com")
def test_property_result_is_same_origin(rd: str) -> None:
    result = safe_redirect_path(rd)
    assert result == "/" or result == rd
    for form in layers(result):
        assert form.startswith("/"), (rd, form)
        assert not form.startswith("//"), (rd, form)
        assert not form.startswith("/\\"), (rd, form)
        parts = urlsplit(form)
        assert not parts.scheme, (rd, form)
        assert not parts.netloc, (rd, form)


@settings(max_examples=300)
@given(st.text(max_size=40), st.sampled_from(["/", "/home", "/a/b"]))
def test_property_rejection_gives_the_default(rd: str, default: str) -> None:
    result = safe_redirect_path(rd, default=default)
    assert result in (rd, default)
