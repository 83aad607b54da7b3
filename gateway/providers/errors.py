"""What can go wrong talking to a login provider, as values ``login`` can act on.

``description`` is safe for a user's page (and is ``str(exc)``); ``reason``
is a short label for logs and metrics. Neither ever holds a token, a code, a
secret or a query string.
"""

from __future__ import annotations

UNAVAILABLE_TEXT = "The identity provider could not be reached. Try again in a moment."
REFUSED_TEXT = "The identity provider refused the sign-in. Try logging in again."
MISCONFIGURED_TEXT = "The sign-in service is misconfigured; the administrator has been told why (in the log)."


class ProviderError(Exception):
    """The provider's answer cannot be used."""

    def __init__(self, description: str, reason: str = "provider_error"):
        super().__init__(description)
        self.description = description
        self.reason = reason


class Misconfigured(ProviderError):
    """The provider and the configuration disagree (issuer, PKCE, client authentication): an operator must act."""

    def __init__(self, reason: str, description: str = MISCONFIGURED_TEXT):
        super().__init__(description, reason)


class TokenRefused(ProviderError):
    """The token endpoint refused the grant with a 4xx: the code or the refresh token is no good."""

    def __init__(self, description: str = REFUSED_TEXT, reason: str = "token_refused"):
        super().__init__(description, reason)


class InvalidGrant(TokenRefused):
    """Refused with ``invalid_grant``: the code was used or expired, the refresh token revoked."""

    def __init__(self, description: str = "The sign-in has expired or was already used. Try logging in again.",
                 reason: str = "invalid_grant"):
        super().__init__(description, reason)


class ProviderUnavailable(ProviderError):
    """Discovery, token, key or userinfo endpoint unreachable, timing out or answering 5xx."""

    def __init__(self, description: str = UNAVAILABLE_TEXT, reason: str = "provider_unavailable"):
        super().__init__(description, reason)
