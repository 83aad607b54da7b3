"""How ``gateway doctor`` reads a provider's answer to an authorization request, and its findings.

A provider that refuses the gateway's ``redirect_uri`` says so in many
shapes (a redirect with ``error``, an error page, Entra's AADSTS codes);
this module tells them apart from a sign-in page, without following links.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import List, Optional
from urllib.parse import parse_qsl, urljoin, urlsplit

from tornado.httpclient import HTTPResponse

from .config import ProviderConfig
from .redact import safe_url

OK, WARN, FAIL = "ok", "warn", "FAIL"
MAX_PAGE_BYTES = 256 * 1024

# Error codes an authorization endpoint answers with (RFC 6749 4.1.2.1, and some providers' own).
_AUTHZ_ERRORS = re.compile(
    r"\b(invalid_redirect_uri|redirect_uri_mismatch|invalid_request|invalid_client|unauthorized_client|"
    r"invalid_scope|unsupported_response_type|access_denied|server_error|temporarily_unavailable|"
    r"AADSTS\d+)\b")
# Page texts that name the redirect URI as the problem (on a 4xx page, or a 200 error page).
_REDIRECT_PROBLEM = re.compile(r"redirect[_ ]?ur[il]|callback url|AADSTS50011|redirect_uri_mismatch", re.I)
_REDIRECT_ERROR_ON_200 = re.compile(r"redirect_uri_mismatch|invalid_redirect_uri|AADSTS50011|"
                                    r"invalid parameter: redirect_uri", re.I)
_PKCE_PROBLEM = re.compile(r"code_challenge|pkce", re.I)
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.I | re.S)


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    subject: str  # what was checked: "config", "provider corp", "upstream http://..."
    text: str  # what was found and, unless ok, how to fix it

    def line(self) -> str:
        return f"{self.level:<4} {self.subject}: {self.text}"


Findings = List[Finding]


def _judge_authorization(subject: str, provider: ProviderConfig, redirect_uri: str, shown: str, url: str,
                         response: HTTPResponse) -> Finding:
    refuses_redirect = (f"provider refuses redirect_uri {redirect_uri}: register it at the provider as a redirect "
                        f"URI of client {provider.client_id} (or fix server.public_url)")
    code = response.code
    if 300 <= code < 400:
        location = response.headers.get("Location", "")
        if not location:
            return Finding(FAIL, subject, f"authorization endpoint {shown} answers HTTP {code} without a Location")
        target = urljoin(url, location)
        params = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
        if "#" in target:
            params.update(parse_qsl(urlsplit(target).fragment))
        error = params.get("error")
        if _same_endpoint(target, redirect_uri):
            if error is None:
                return Finding(OK, subject, f"authorization request accepted for redirect_uri {redirect_uri} "
                                            "(it redirects straight back: the provider signed in by itself)")
            return _authorization_error(subject, error, params.get("error_description", ""), refuses_redirect,
                                        provider)
        if error is not None:  # some providers redirect to an error page of their own
            return _authorization_error(subject, error, params.get("error_description", ""), refuses_redirect,
                                        provider)
        return Finding(OK, subject, f"authorization request accepted for redirect_uri {redirect_uri} "
                                    f"(HTTP {code} to a sign-in page, {safe_url(target)})")
    page = _page_text(response)
    if code == 200:
        if _REDIRECT_ERROR_ON_200.search(page):
            return Finding(FAIL, subject, f"{refuses_redirect} (the provider says: {_excerpt(page)})")
        return Finding(OK, subject, f"authorization request accepted for redirect_uri {redirect_uri} "
                                    "(HTTP 200: a sign-in page)")
    if 400 <= code < 500:
        error_match = _AUTHZ_ERRORS.search(page)
        error = error_match.group(1) if error_match else ""
        if _REDIRECT_PROBLEM.search(page) and error != "invalid_client":
            return Finding(FAIL, subject, f"{refuses_redirect} (HTTP {code}: {_excerpt(page)})")
        if error:
            return _authorization_error(subject, error, _excerpt(page), refuses_redirect, provider,
                                        status=code)
        return Finding(FAIL, subject, f"authorization endpoint {shown} refuses the request: HTTP {code}"
                                      + (f" ({_excerpt(page)})" if page else ""))
    return Finding(FAIL, subject, f"authorization endpoint {shown} answers HTTP {code}; the provider is not "
                                  "ready to sign people in")


def _authorization_error(subject: str, error: str, description: str, refuses_redirect: str,
                         provider: ProviderConfig, *, status: Optional[int] = None) -> Finding:
    said = _printable(f"{error}: {description}" if description and error not in description else
                      (description or error))
    where = f"HTTP {status}: " if status else ""
    if error in ("invalid_redirect_uri", "redirect_uri_mismatch") or _REDIRECT_PROBLEM.search(description or ""):
        return Finding(FAIL, subject, f"{refuses_redirect} ({where}{said})")
    if _PKCE_PROBLEM.search(description or ""):
        return Finding(FAIL, subject, f"the provider refuses the PKCE S256 parameters the gateway always sends "
                                      f"({where}{said}); enable PKCE S256 for client {provider.client_id}")
    if error in ("invalid_client", "unauthorized_client"):
        return Finding(FAIL, subject, f"the provider does not know client_id {provider.client_id} or does not let "
                                      f"it use the authorization code flow ({where}{said}); check client_id and "
                                      "the client's grant types at the provider")
    if error == "invalid_scope":
        return Finding(FAIL, subject, f"the provider refuses scopes {' '.join(provider.scopes)} ({where}{said}); "
                                      "fix scopes: or allow them for the client")
    return Finding(FAIL, subject, f"the provider answers the authorization request with an error ({where}{said})")


def _same_endpoint(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.netloc.lower(), pa.path or "/") == (pb.scheme.lower(), pb.netloc.lower(),
                                                                       pb.path or "/")


def _page_text(response: HTTPResponse) -> str:
    body = (response.body or b"")[:MAX_PAGE_BYTES]
    text = body.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return " ".join(str(document.get(k, "")) for k in ("error", "error_description") if document.get(k))
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


_DESCRIPTION = re.compile(r"error_description\W{0,3}(.{1,200}?)(?=\s+\W{0,3}(?:state|iss|error_uri|error)\W{0,3}:|$)")


def _excerpt(page: str) -> str:
    """What a provider's error page says, shortly: its error code and description when it names them,
    else the text around the first mention of the redirect URI or an error code."""
    code = _AUTHZ_ERRORS.search(page)
    description = _DESCRIPTION.search(page)
    if description:
        text = description.group(1).strip(" :")
        return _printable(f"{code.group(1)}: {text}" if code and code.group(1) not in text else text)
    match = _REDIRECT_PROBLEM.search(page) or code
    start = max(0, match.start() - 60) if match else 0
    text = page[start:start + 160].strip()
    return _printable(("..." if start else "") + text + ("..." if len(page) > start + 160 else ""))


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:240]
