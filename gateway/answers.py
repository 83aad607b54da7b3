"""What the gateway decided to answer, as plain values.

The pipeline and browser login return these instead of writing to a
connection, so they can be tested (and explained) without sockets; the
adapters (``fastpath``, ``handlers``, ``websocket``) turn them into bytes
through ``pages.render``. ``reason`` is always for the log, never the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Tuple, Union

Headers = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class CookieOp:
    """Set (``value``) or clear (``value is None``) one of the gateway's own cookies."""

    name: str
    value: Optional[str] = None
    max_age: int = 0


Cookies = Tuple[CookieOp, ...]


@dataclass(frozen=True)
class Refusal:
    """An error answer: a small HTML page for browsers, RFC 6750-style JSON otherwise."""

    status: int
    reason: str = ""
    headers: Headers = ()
    description: str = ""
    retry_url: str = ""
    retry_label: str = "Try again"
    signed_in_as: str = ""
    sign_out_url: str = ""
    cookies: Cookies = ()


@dataclass(frozen=True)
class Redirect:
    location: str
    reason: str = ""
    cookies: Cookies = ()
    status: int = 302


@dataclass(frozen=True)
class Page:
    """A page of the gateway's own (the provider chooser, "signed out")."""

    template: str
    args: Mapping[str, Any] = field(default_factory=dict)
    status: int = 200
    reason: str = ""
    cookies: Cookies = ()


@dataclass(frozen=True)
class Json:
    body: Mapping[str, Any]
    status: int = 200
    headers: Headers = ()
    cookies: Cookies = ()


@dataclass(frozen=True)
class Empty:
    """A bodiless answer with headers only (forward-auth's 200)."""

    status: int = 200
    headers: Headers = ()
    cookies: Cookies = ()


Answer = Union[Refusal, Redirect, Page, Json, Empty]


def with_cookies(answer: Answer, cookies: Cookies) -> Answer:
    """The same answer with ``cookies`` set before its own (a session refreshed on the way)."""
    if not cookies:
        return answer
    return replace(answer, cookies=tuple(cookies) + tuple(answer.cookies))
