"""What may be written to a log line or an error message: URLs without their secrets.

Used by discovery, JWKS, OIDC and the Redis session store alike, so no
password, query string (codes, tokens) or fragment reaches a log.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """``url`` without user info, query string or fragment: fit for a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
