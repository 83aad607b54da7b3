"""gateway/policy.py: does a route's ``allow`` list admit an identity for a method?

Table tests for every condition, the any-rule / all-conditions semantics, the
deny reason (for the log), and Hypothesis properties: a rule built from an
identity's own values admits it; adding a condition it lacks denies it.

Rules are built the way the loader stores them (gateway/config/rules/routes.py): frozensets,
email and email_domain lower-case, methods upper-case, claim values as str()
with booleans written ``true``/``false``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Rule
from gateway.models import Decision, Identity
from gateway.policy import authorize


def rule(**conditions: Any) -> Rule:
    """A Rule from plain values: a string or a list of strings per condition; claim as a dict."""
    values: dict[str, Any] = {}
    for key, value in conditions.items():
        if key == "claim":
            values["claim"] = tuple(
                sorted((name, frozenset(v if isinstance(v, (list, tuple)) else [v])) for name, v in value.items())
            )
            continue
        items = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if key in ("email", "email_domain"):
            items = [i.lower() for i in items]
        if key == "method":
            items = [i.upper() for i in items]
        values[key] = frozenset(items)
    return Rule(**values)


ALICE = Identity(
    sub="alice",
    email="Alice@Example.COM",
    groups=("devs", "sre"),
    preferred_username="alice",
    issuer="ci",
    claims={
        "tenant": "acme",
        "roles": ["reader", "writer"],
        "admin": True,
        "beta": False,
        "level": 3,
        "flags": [True, "x"],
    },
)
NOBODY = Identity(sub="nobody")  # no email, no groups, no claims


# --------------------------------------------------------------------------- single conditions

CASES = [
    # (id, rule, identity, method, allowed)
    ("sub match", rule(sub="alice"), ALICE, "GET", True),
    ("sub any of list", rule(sub=["bob", "alice"]), ALICE, "GET", True),
    ("sub mismatch", rule(sub="bob"), ALICE, "GET", False),
    ("sub is case-sensitive", rule(sub="ALICE"), ALICE, "GET", False),
    ("email case-insensitive", rule(email="alice@example.com"), ALICE, "GET", True),
    ("email rule written in upper case", rule(email="ALICE@EXAMPLE.COM"), ALICE, "GET", True),
    ("email any of list", rule(email=["x@y.org", "alice@example.com"]), ALICE, "GET", True),
    ("email mismatch", rule(email="bob@example.com"), ALICE, "GET", False),
    ("email absent on identity", rule(email="alice@example.com"), NOBODY, "GET", False),
    ("email_domain match, case-insensitive", rule(email_domain="example.com"), ALICE, "GET", True),
    ("email_domain rule upper-case", rule(email_domain="EXAMPLE.com"), ALICE, "GET", True),
    ("email_domain any of list", rule(email_domain=["corp.org", "example.com"]), ALICE, "GET", True),
    ("email_domain mismatch", rule(email_domain="corp.org"), ALICE, "GET", False),
    ("email_domain is not a suffix match", rule(email_domain="ample.com"), ALICE, "GET", False),
    ("email_domain parent does not admit subdomain",
     rule(email_domain="example.com"), Identity("s", email="a@sub.example.com"), "GET", False),
    ("email_domain absent email", rule(email_domain="example.com"), NOBODY, "GET", False),
    ("email_domain email without @", rule(email_domain="example.com"),
     Identity("s", email="example.com"), "GET", False),
    ("group match", rule(group="sre"), ALICE, "GET", True),
    ("group any of list", rule(group=["admins", "devs"]), ALICE, "GET", True),
    ("group mismatch", rule(group=["admins"]), ALICE, "GET", False),
    ("group no groups", rule(group="sre"), NOBODY, "GET", False),
    ("group is case-sensitive", rule(group="SRE"), ALICE, "GET", False),
    ("claim string", rule(claim={"tenant": "acme"}), ALICE, "GET", True),
    ("claim string any of list", rule(claim={"tenant": ["other", "acme"]}), ALICE, "GET", True),
    ("claim string mismatch", rule(claim={"tenant": "other"}), ALICE, "GET", False),
    ("claim missing", rule(claim={"department": "x"}), ALICE, "GET", False),
    ("claim list: any item", rule(claim={"roles": "writer"}), ALICE, "GET", True),
    ("claim list: none of the items", rule(claim={"roles": "admin"}), ALICE, "GET", False),
    ("claim list vs list", rule(claim={"roles": ["admin", "reader"]}), ALICE, "GET", True),
    ("claim bool true", rule(claim={"admin": "true"}), ALICE, "GET", True),
    ("claim bool true is not 'True'", rule(claim={"admin": "True"}), ALICE, "GET", False),
    ("claim bool true mismatch", rule(claim={"admin": "false"}), ALICE, "GET", False),
    ("claim bool false", rule(claim={"beta": "false"}), ALICE, "GET", True),
    ("claim bool false is present, not missing", rule(claim={"beta": "true"}), ALICE, "GET", False),
    ("claim bool inside a list", rule(claim={"flags": "true"}), ALICE, "GET", True),
    ("claim number", rule(claim={"level": "3"}), ALICE, "GET", True),
    ("claim number mismatch", rule(claim={"level": "4"}), ALICE, "GET", False),
    ("claim several: all must hold", rule(claim={"tenant": "acme", "roles": "admin"}), ALICE, "GET", False),
    ("claim several: all hold", rule(claim={"tenant": "acme", "roles": "reader"}), ALICE, "GET", True),
    ("claim null value never matches", rule(claim={"x": "None"}), Identity("s", claims={"x": None}), "GET", False),
    ("claim empty list never matches", rule(claim={"x": "[]"}), Identity("s", claims={"x": []}), "GET", False),
    ("method match", rule(method="GET"), ALICE, "GET", True),
    ("method request lower-case", rule(method="GET"), ALICE, "get", True),
    ("method any of list", rule(method=["GET", "HEAD"]), ALICE, "HEAD", True),
    ("method mismatch", rule(method=["GET", "HEAD"]), ALICE, "POST", False),
]


@pytest.mark.parametrize("rule_, identity, method, allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_condition_table(rule_: Rule, identity: Identity, method: str, allowed: bool) -> None:
    decision = authorize([rule_], identity, method)
    assert isinstance(decision, Decision)
    assert decision.allowed is allowed, decision.reason


# --------------------------------------------------------------------------- combining rules


def test_empty_rule_list_admits_every_identity() -> None:
    for identity in (ALICE, NOBODY):
        for method in ("GET", "POST", "DELETE"):
            decision = authorize([], identity, method)
            assert decision.allowed
            assert decision.reason  # says why, for the log


def test_empty_tuple_admits() -> None:
    assert authorize((), NOBODY, "GET").allowed


def test_any_one_rule_passes() -> None:
    rules = [rule(sub="bob"), rule(group="nope"), rule(email_domain="example.com")]
    decision = authorize(rules, ALICE, "GET")
    assert decision.allowed
    assert "3" in decision.reason  # the third rule is the one that admitted


def test_first_passing_rule_is_named() -> None:
    rules = [rule(sub="alice"), rule(group="sre")]
    assert authorize(rules, ALICE, "GET").reason == "rule 1"
    rules = [rule(sub="bob"), rule(group="sre")]
    assert authorize(rules, ALICE, "GET").reason == "rule 2"


def test_all_conditions_within_a_rule_must_hold() -> None:
    full = dict(
        sub="alice",
        email="alice@example.com",
        email_domain="example.com",
        group="sre",
        claim={"tenant": "acme"},
        method="GET",
    )
    assert authorize([rule(**full)], ALICE, "GET").allowed
    spoilers = dict(
        sub="bob",
        email="bob@example.com",
        email_domain="corp.org",
        group="admins",
        claim={"tenant": "other"},
        method="POST",
    )
    for key, bad in spoilers.items():
        conditions = dict(full, **{key: bad})
        decision = authorize([rule(**conditions)], ALICE, "GET")
        assert not decision.allowed, key


def test_no_rule_passes_denies() -> None:
    rules = [rule(sub="bob"), rule(group="admins", method="GET")]
    assert not authorize(rules, ALICE, "GET").allowed


def test_rule_order_does_not_change_the_outcome() -> None:
    rules = [rule(sub="bob"), rule(group="sre", method="GET"), rule(claim={"tenant": "x"})]
    for method in ("GET", "POST"):
        forward = authorize(rules, ALICE, method).allowed
        backward = authorize(list(reversed(rules)), ALICE, method).allowed
        assert forward == backward


# --------------------------------------------------------------------------- the deny reason


@pytest.mark.parametrize(
    "conditions, name",
    [
        (dict(sub="bob"), "sub"),
        (dict(email="bob@example.com"), "email"),
        (dict(email_domain="corp.org"), "email_domain"),
        (dict(group="admins"), "group"),
        (dict(claim={"tenant": "other"}), "claim tenant"),
        (dict(method="POST"), "method"),
    ],
)
def test_reason_names_the_failed_condition(conditions: dict, name: str) -> None:
    decision = authorize([rule(**conditions)], ALICE, "GET")
    assert not decision.allowed
    assert f"rule 1: {name}" in decision.reason


def test_reason_names_every_failed_rule_and_its_condition() -> None:
    rules = [
        rule(sub="bob"),
        rule(group="admins"),
        rule(claim={"tenant": "other"}),
        rule(email_domain="example.com", method="POST"),
    ]
    decision = authorize(rules, ALICE, "GET")
    assert not decision.allowed
    for expected in ("rule 1: sub", "rule 2: group", "rule 3: claim tenant", "rule 4: method"):
        assert expected in decision.reason, decision.reason


def test_reason_never_contains_identity_values() -> None:
    # the reason goes to the log: condition names, not the caller's data
    rules = [rule(email="bob@example.com"), rule(claim={"tenant": "other"})]
    decision = authorize(rules, ALICE, "GET")
    assert "alice@example.com" not in decision.reason.lower()
    assert "acme" not in decision.reason


# --------------------------------------------------------------------------- properties

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
scalars = st.one_of(
    names,
    st.booleans(),
    st.integers(-10**6, 10**6),
)
claim_values = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=4))
emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.from_regex(r"[A-Za-z0-9._+-]{1,10}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9-]{1,10}", fullmatch=True),
    st.sampled_from(["com", "ORG", "io", "Example"]),
)
identities = st.builds(
    Identity,
    sub=names,
    email=st.one_of(st.none(), emails),
    groups=st.lists(names, max_size=4, unique=True).map(tuple),
    claims=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), claim_values, max_size=4),
)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def as_claim_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@st.composite
def identity_and_own_rule(draw: Any) -> tuple[Identity, str, dict]:
    """An identity, a method, and rule conditions taken from the identity's own values."""
    identity = draw(identities)
    method = draw(methods)
    conditions: dict[str, Any] = {}
    if draw(st.booleans()):
        conditions["sub"] = [identity.sub] + draw(st.lists(names, max_size=2))
    if identity.email and draw(st.booleans()):
        conditions["email"] = [identity.email]
    if identity.email and draw(st.booleans()):
        conditions["email_domain"] = [identity.email.rpartition("@")[2]]
    if identity.groups and draw(st.booleans()):
        conditions["group"] = [draw(st.sampled_from(identity.groups))]
    if identity.claims and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(sorted(identity.claims)), min_size=1, unique=True))
        claim = {}
        for name in chosen:
            value = identity.claims[name]
            item = draw(st.sampled_from(value)) if isinstance(value, list) else value
            claim[name] = as_claim_text(item)
        conditions["claim"] = claim
    if draw(st.booleans()):
        conditions["method"] = [method.lower() if draw(st.booleans()) else method]
    return identity, method, conditions


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(identity_and_own_rule())
def test_property_rule_from_own_values_admits(case: tuple) -> None:
    identity, method, conditions = case
    assert authorize([rule(**conditions)], identity, method).allowed


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(identity_and_own_rule(), st.sampled_from(["sub", "email", "email_domain", "group", "claim", "method"]),
       st.data())
def test_property_adding_a_lacking_condition_denies(case: tuple, extra: str, data: Any) -> None:
    identity, method, conditions = case
    conditions = dict(conditions)
    lacking = "zz-not-present-" + data.draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True))
    if extra == "sub":
        conditions["sub"] = [identity.sub + lacking]
    elif extra == "email":
        conditions["email"] = [lacking + "@nowhere.invalid"]
    elif extra == "email_domain":
        conditions["email_domain"] = [lacking + ".invalid"]
    elif extra == "group":
        conditions["group"] = [lacking]
    elif extra == "claim":
        claim = dict(conditions.get("claim", {}))
        name = data.draw(st.sampled_from(["absent_claim"] + sorted(identity.claims)))
        claim[name] = lacking  # longer than any generated value (names <= 12 chars)
        conditions["claim"] = claim
    else:
        conditions["method"] = [m for m in ("GET", "POST") if m != method][:1]
    decision = authorize([rule(**conditions)], identity, method)
    assert not decision.allowed
    assert "rule 1:" in decision.reason
    # and the same rule next to one that admits: any one rule passes
    assert authorize([rule(**conditions), rule(sub=identity.sub)], identity, method).allowed


@settings(max_examples=200)
@given(identities, methods)
def test_property_empty_rules_admit_anyone(identity: Identity, method: str) -> None:
    assert authorize([], identity, method).allowed
