"""Every answer the gateway writes itself, rendered once: status, headers and body bytes.

Used by each adapter (the bare-connection fast path, the RequestHandlers,
the WebSocket relay), so a 404, a 503 on shutdown or a login redirect looks
the same whichever path a request took. Pages are tornado templates with no
external assets; cookies get ``HttpOnly``, ``SameSite=Lax`` and ``Secure``
when the public URL is https.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from dataclasses import dataclass
from http.cookies import Morsel
from typing import List, Mapping, Tuple

from tornado import httputil, template

from .answers import Answer, CookieOp, Empty, Json, Page, Redirect, Refusal

TEMPLATE_PATH = os.path.join(os.path.dirname(__file__), "templates")
WWW_AUTHENTICATE = 'Bearer realm="gateway"'

TITLES = {
    400: ("Bad request", "The request could not be understood."),
    401: ("Sign-in required", "You need to sign in to see this page."),
    403: ("Access denied", "You are signed in, but you do not have access to this page."),
    404: ("Not found", "There is nothing here."),
    405: ("Method not allowed", "This method is not accepted here."),
    408: ("Request timeout", "The request took too long to arrive."),
    413: ("Request too large", "The request body is larger than this site accepts."),
    500: ("Something went wrong", "The gateway could not handle this request."),
    502: ("Bad gateway", "The service behind this address could not be reached. Try again in a moment."),
    503: ("Service unavailable", "The service is not available right now. Try again in a moment."),
    504: ("Gateway timeout", "The service behind this address took too long to answer. Try again in a moment."),
}
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 413: "request_too_large", 500: "server_error", 502: "bad_gateway", 503: "unavailable",
    504: "gateway_timeout",
}
_EXPIRED = "Thu, 01 Jan 1970 00:00:00 GMT"

_templates = template.Loader(TEMPLATE_PATH)


def is_browser(headers: Mapping[str, str]) -> bool:
    """A page load by a person: accepts HTML and is not a script's XHR/fetch."""
    if "text/html" not in headers.get("Accept", ""):
        return False
    if headers.get("X-Requested-With"):
        return False
    return headers.get("Sec-Fetch-Mode", "").lower() != "cors"


@dataclass(frozen=True)
class Rendered:
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes


def set_cookie_header(op: CookieOp, secure: bool, domain: str = "") -> str:
    morsel: "Morsel[str]" = Morsel()
    if op.value is None:
        morsel.set(op.name, "", '""')
        morsel["expires"] = _EXPIRED
        morsel["max-age"] = "0"
    else:
        morsel.set(op.name, op.value, op.value)
        morsel["max-age"] = str(int(op.max_age))
        morsel["expires"] = email.utils.formatdate(time.time() + int(op.max_age), usegmt=True)
    morsel["path"] = "/"
    if domain:  # session.cookie_domain: one sign-in for every host under it
        morsel["domain"] = domain
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if secure:
        morsel["secure"] = True
    return morsel.OutputString()


def error_body(refusal: Refusal, browser: bool, request_id: str) -> Tuple[str, bytes]:
    """The content type and body of an error answer."""
    status = refusal.status
    title, message = TITLES.get(status, ("Error", "The request failed."))
    if status == 401 or not browser:
        body = {"error": ERROR_CODES.get(status, "error"), "error_description": refusal.description or message}
        return "application/json", json.dumps(body).encode()
    page = _templates.load("error.html").generate(
        status=status, title=title, message=refusal.description or message, retry_url=refusal.retry_url,
        retry_label=refusal.retry_label, request_id=request_id, signed_in_as=refusal.signed_in_as,
        sign_out_url=refusal.sign_out_url,
    )
    return "text/html; charset=utf-8", page


def render(answer: Answer, *, browser: bool, request_id: str, secure: bool = False, domain: str = "",
           added: tuple = ()) -> Rendered:
    """Status line, headers (``Set-Cookie`` included) and body of one answer."""
    headers: List[Tuple[str, str]] = []
    body = b""
    if isinstance(answer, Refusal):
        ctype, body = error_body(answer, browser, request_id)
        headers.extend(answer.headers)
        headers.append(("Content-Type", ctype))
    elif isinstance(answer, Redirect):
        headers.append(("Location", answer.location))
    elif isinstance(answer, Page):
        body = _templates.load(answer.template).generate(request_id=request_id, **answer.args)
        headers.append(("Content-Type", "text/html; charset=utf-8"))
    elif isinstance(answer, Json):
        body = json.dumps(answer.body).encode()
        headers.extend(answer.headers)
        headers.append(("Content-Type", "application/json"))
    elif isinstance(answer, Empty):
        headers.extend(answer.headers)
    if not any(name == "Cache-Control" for name, _ in headers):  # the JWKS may be cached; nothing else
        headers.append(("Cache-Control", "no-store"))
    headers.append(("X-Request-Id", request_id))
    headers.append(("Content-Length", str(len(body))))
    for op in answer.cookies:
        headers.append(("Set-Cookie", set_cookie_header(op, secure, domain)))
    headers.extend(added)  # the gateway's own on every answer (HSTS)
    status = answer.status
    return Rendered(status, httputil.responses.get(status, "Unknown"), headers, body)

