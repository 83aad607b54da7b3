"""Authorization: does a route's ``allow`` list admit this identity for this method?

Pure code, run after authentication and before proxying. Any one rule
passes; within a rule every condition that is set must hold. The decision
carries a reason for the access log (never for the client): which condition
of which rule failed.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .config import Rule
from .models import Decision, Identity

ALLOWED_NO_RULES = Decision(True, "authenticated")


def authorize(rules: Sequence[Rule], identity: Identity, method: str) -> Decision:
    """Admit when any rule passes; an empty rule list admits every identity."""
    if not rules:
        return ALLOWED_NO_RULES
    failures = []
    for index, rule in enumerate(rules):
        failed = _first_failed_condition(rule, identity, method)
        if failed is None:
            return Decision(True, f"rule {index + 1}")
        failures.append(f"rule {index + 1}: {failed}")
    return Decision(False, "no allow rule matched (" + "; ".join(failures) + ")")


def _first_failed_condition(rule: Rule, identity: Identity, method: str) -> str | None:
    if rule.method is not None and method.upper() not in rule.method:
        return "method"
    if rule.sub is not None and identity.sub not in rule.sub:
        return "sub"
    email = (identity.email or "").lower()
    if rule.email is not None and email not in rule.email:
        return "email"
    if rule.email_domain is not None:
        domain = email.rpartition("@")[2] if "@" in email else ""
        if domain not in rule.email_domain:
            return "email_domain"
    if rule.group is not None and rule.group.isdisjoint(identity.groups):
        return "group"
    for name, accepted in rule.claim:
        if not _claim_matches(identity.claims.get(name), accepted):
            return f"claim {name}"
    return None


def _claim_matches(value: Any, accepted: frozenset) -> bool:
    """A claim passes when it, or any item of it when it is a list, is accepted."""
    if value is None:
        return False
    values: Iterable[Any] = value if isinstance(value, (list, tuple)) else (value,)
    for item in values:
        if isinstance(item, bool):
            item = "true" if item else "false"
        if str(item) in accepted:
            return True
    return False
