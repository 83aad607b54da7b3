"""Authorization: does a route's ``allow`` list admit this identity for this method?

Pure code, run after authentication and before proxying. Any one rule
passes; within a rule every condition that is set must hold. The decision
carries a reason for the access log (never for the client): which condition
of which rule failed.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence, Tuple

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
    for name, _, passed in conditions(rule, identity, method):
        if not passed:
            return name
    return None


def conditions(rule: Rule, identity: Identity, method: str) -> Iterator[Tuple[str, Any, bool]]:
    """Each condition the rule sets: (its name, the value compared, passed), in the order checked.

    The one definition of what a rule means: ``authorize`` stops at the first
    failure, ``gateway explain`` shows them all.
    """
    if rule.method is not None:
        yield "method", method.upper(), method.upper() in rule.method
    if rule.sub is not None:
        yield "sub", identity.sub, identity.sub in rule.sub
    email = (identity.email or "").lower()
    if rule.email is not None:
        yield "email", identity.email, email in rule.email
    if rule.email_domain is not None:
        domain = email.rpartition("@")[2] if "@" in email else ""
        yield "email_domain", domain or None, domain in rule.email_domain
    if rule.group is not None:
        yield "group", list(identity.groups), not rule.group.isdisjoint(identity.groups)
    for name, accepted in rule.claim:
        value = identity.claims.get(name)
        yield f"claim {name}", value, _claim_matches(value, accepted)


def accepted_values(rule: Rule, condition: str) -> list:
    """What a condition of ``rule`` accepts, for ``gateway explain``."""
    if condition.startswith("claim "):
        return sorted(dict(rule.claim)[condition[len("claim "):]])
    return sorted(getattr(rule, condition))


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
