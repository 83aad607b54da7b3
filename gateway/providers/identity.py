"""Who signed in, from a provider's claims: the same rules for every kind of provider.

An OpenID Connect provider gives ID token claims (completed from userinfo), a
plain OAuth 2.0 provider a userinfo document, GitHub several API answers;
each becomes one flat document, and ``user_claims`` reads the identity out of
it through the provider's ``claims`` mapping, ``user_claim`` and
``groups_claim``, dropping unverified emails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from .. import claims
from ..config import ProviderConfig
from ..models import is_number
from .errors import ProviderError

log = logging.getLogger("gateway.providers")

# The claims a session always keeps (UserClaims.claims), besides those allow rules name.
KEPT_CLAIMS = ("iss", "sub", "email", "email_verified", "name", "preferred_username", "groups",
               "exp", "iat", "auth_time", "sid", "acr", "amr", "hd", "tid")
_MAX_CLAIM_STRING = 512
_MAX_CLAIM_LIST = 200


@dataclass(frozen=True)
class UserClaims:
    """Who signed in: what policy and the identity headers need, plus a small claims subset.

    ``sub`` is the provider's subject; ``user`` the value of ``user_claim``
    (``sub`` by default), which becomes ``X-Forwarded-User``.
    """

    sub: str
    email: Optional[str]
    groups: Tuple[str, ...]
    preferred_username: Optional[str]
    claims: dict
    user: str = ""

    def __post_init__(self) -> None:
        if not self.user:
            object.__setattr__(self, "user", self.sub)


def kept_value(value: Any) -> Any:
    """``value`` if it is small and JSON-able (a session may keep it), else None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_CLAIM_STRING else None
    if is_number(value):
        return value
    if isinstance(value, (list, tuple)):
        items = [v for v in value if isinstance(v, str) and len(v) <= _MAX_CLAIM_STRING]
        return items[:_MAX_CLAIM_LIST]
    return None


def text_id(value: Any) -> Optional[str]:
    """A non-empty string, or an integer id as its decimal string (GitHub's, Facebook's ids)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def mapped(document: Mapping[str, Any], mapping: Iterable[Tuple[str, str]]) -> Dict[str, Any]:
    """``document`` with each identity field set from the provider's (dotted) field the mapping names."""
    out = dict(document)
    for field_name, source in mapping:
        out[field_name] = claims.claim(dict(document), source)
        if out[field_name] is None:
            del out[field_name]
    return out


def user_claims(config: ProviderConfig, document: Mapping[str, Any], *, keep: Iterable[str] = ()) -> UserClaims:
    """The identity in ``document`` (already through the ``claims`` mapping).

    Raises ``ProviderError`` when the document does not say who signed in:
    never a session with an empty user.
    """
    sub = text_id(document.get("sub"))
    if sub is None:
        source = dict(config.claims).get("sub", "sub")
        log.warning("provider %s: its answer has no %r, which identifies the user", config.name, source)
        raise ProviderError(f"The identity provider did not say who signed in (no {source!r} in its answer).",
                            "no_subject")
    email = claims.string(document.get("email"))
    verified = claims.email_verified(document.get("email_verified"))
    if email is not None and verified is None and config.email_verified_by_provider:
        verified = True
    if email is not None and verified is False and not config.allow_unverified_email:
        log.info("provider %s: ignoring the unverified email of %s", config.name, sub)
        email = None
    if config.user_claim == "sub":
        user: Optional[str] = sub
    elif config.user_claim == "email":
        user = email  # an unverified email is no identity, so not the user either
    else:
        user = text_id(claims.claim(dict(document), config.user_claim))
    if user is None:
        log.warning("provider %s: its answer has no %r (user_claim)", config.name, config.user_claim)
        raise ProviderError(f"The identity provider did not say who signed in (no {config.user_claim!r}).",
                            "no_user_claim")
    groups = claims.groups(claims.claim(dict(document), config.groups_claim))
    username = claims.string(document.get("preferred_username"))

    kept: Dict[str, Any] = {}
    for name in (*KEPT_CLAIMS, *keep):
        value = kept_value(claims.claim(dict(document), name))
        if value is not None:
            kept[name] = value
    kept["sub"] = sub
    kept.pop("email", None)
    kept.pop("email_verified", None)
    if email is not None:
        kept["email"] = email
        if verified is not None:
            kept["email_verified"] = verified
    kept["groups"] = list(groups)
    return UserClaims(sub=sub, email=email, groups=groups, preferred_username=username, claims=kept, user=user)
