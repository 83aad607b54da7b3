"""Plain values passed along the request path: who is calling, and what was decided.

No gateway imports here, so every other module can use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Identity:
    """An authenticated caller, from a bearer token or a login session."""

    sub: str
    email: Optional[str] = None
    groups: Tuple[str, ...] = ()
    preferred_username: Optional[str] = None
    issuer: Optional[str] = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    source: str = "token"  # "token" or "session"
    expires_at: Optional[float] = None  # unix time
    session_id: Optional[str] = None  # the login session it came from, if any
    # of that session, so that a logout naming any of them ends it (gateway.revocations)
    provider: Optional[str] = None  # the provider's name in routes.yaml
    provider_sid: Optional[str] = None  # the provider's session (its ID token's sid)
    provider_sub: Optional[str] = None  # the provider's subject
    started_at: float = 0.0  # when the person signed in

    def profile(self) -> dict:
        """email, groups and preferred_username as JWT claims (those the identity has), for the gateway's own JWTs."""
        claims: dict = {}
        if self.email:
            claims["email"] = self.email
        if self.groups:
            claims["groups"] = list(self.groups)
        if self.preferred_username:
            claims["preferred_username"] = self.preferred_username
        return claims


@dataclass(frozen=True)
class Decision:
    """The outcome of a policy check; ``reason`` is for the log, never the client."""

    allowed: bool
    reason: str = ""


class AuthError(Exception):
    """A credential was presented and is not acceptable (RFC 6750 ``invalid_token``).

    ``description`` is safe to show the client; ``reason`` is a short
    machine-readable label for logs and metrics.
    """

    def __init__(self, description: str, reason: str = "invalid_token"):
        super().__init__(description)
        self.description = description
        self.reason = reason


MAX_NUMBER = 2 ** 53  # beyond this a JSON number is not an exact time or count


def is_number(value: Any) -> bool:
    """A finite JSON number (int or float, never bool) of a sane size: what a numeric claim must be.

    An int too large for a float (``"exp": 10**400``) is not one: comparing it with a
    float time would raise OverflowError.
    """
    if type(value) is int:
        return -MAX_NUMBER <= value <= MAX_NUMBER
    return type(value) is float and math.isfinite(value)
