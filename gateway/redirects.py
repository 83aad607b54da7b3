"""Where a browser may be sent back to after login or sign-out: same-origin paths only.

Checked at /oauth2/start, /oauth2/callback and /oauth2/sign_out, so the
gateway can never be used as an open redirector.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import unquote, urlsplit


def safe_redirect_path(rd: Optional[str], default: str = "/") -> str:
    """Only same-origin absolute paths: no scheme, no host, no backslash, in any encoding."""
    if not rd:
        return default
    candidate = rd
    for _ in range(3):  # look through up to three layers of percent-encoding
        if not _plain_path(candidate):
            return default
        decoded = unquote(candidate)
        if decoded == candidate:
            break
        candidate = decoded
    else:
        return default
    return rd


def _plain_path(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//"):
        return False
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc
