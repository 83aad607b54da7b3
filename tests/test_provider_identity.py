"""gateway.providers.identity: who signed in, read out of the providers' real answers.

The documents below are the shapes the providers document for the endpoints the presets call
(written here as the JSON text they send), run through the preset's own ``claims`` mapping
(``mapped``) and then ``user_claims``, exactly as ``OAuth2Client.sign_in`` does, without any HTTP.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from gateway.config import ProviderConfig, loads
from gateway.providers import KEPT_CLAIMS, ProviderError
from gateway.providers.identity import UserClaims, kept_value, mapped, text_id, user_claims

pytestmark = pytest.mark.timeout(10)

SECRET = "0123456789abcdef0123456789abcdef"

# GET https://graph.facebook.com/v21.0/me?fields=id,name,email (Graph API escapes "@" as \u0040)
FACEBOOK_ME = r'{"id": "10224375819395870", "name": "Jane Doe", "email": "jane\u0040example.com"}'
# GET https://api.x.com/2/users/me
X_USERS_ME = '{"data": {"id": "2244994945", "name": "X Dev", "username": "XDevelopers"}}'
# GET https://api.github.com/user (abridged: the fields the gateway could read)
GITHUB_USER = """{
  "login": "octocat", "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==",
  "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4", "type": "User", "site_admin": false,
  "name": "The Octocat", "company": "@github", "blog": "https://github.blog", "location": "San Francisco",
  "email": null, "hireable": null, "bio": null, "twitter_username": null, "public_repos": 8,
  "followers": 20000, "following": 9, "created_at": "2011-01-25T18:44:36Z", "updated_at": "2024-01-22T12:00:00Z"
}"""


def preset(name: str, extra: str = "") -> ProviderConfig:
    """The provider a config with ``preset: NAME`` (plus ``extra`` keys) loads to."""
    text = textwrap.dedent(f"""\
        session:
          secret: {SECRET}
        providers:
          p:
            preset: {name}
            client_id: gw
            client_secret: s
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + textwrap.dedent("""\
        routes:
          - {name: app, path: /, upstream: "http://127.0.0.1:9000", auth: login}
        """)
    return loads(text).providers["p"]


def generic(**values) -> ProviderConfig:
    base = dict(name="legacy", type="oauth2", client_id="gw", client_secret="s",
                authorization_endpoint="https://sso.example/authorize", token_endpoint="https://sso.example/token",
                userinfo_endpoint="https://sso.example/me")
    base.update(values)
    return ProviderConfig(**base)


def identity(config: ProviderConfig, document: dict, keep=()) -> UserClaims:
    """What OAuth2Client.sign_in makes of a userinfo answer."""
    return user_claims(config, mapped(document, config.claims), keep=keep)


# --------------------------------------------------------------------------- the presets' answers


def test_facebook_graph_me():
    user = identity(preset("facebook"), json.loads(FACEBOOK_ME))
    assert user.sub == user.user == "10224375819395870"
    assert user.email == "jane@example.com"  # the Graph API only returns a confirmed address
    assert user.preferred_username is None and user.groups == ()
    assert user.claims == {"sub": "10224375819395870", "name": "Jane Doe", "email": "jane@example.com",
                           "email_verified": True, "groups": []}


def test_facebook_without_the_email_permission():
    user = identity(preset("facebook"), {"id": "10224375819395870", "name": "Jane Doe"})
    assert user.email is None and "email" not in user.claims and "email_verified" not in user.claims


def test_x_users_me():
    user = identity(preset("x"), json.loads(X_USERS_ME))
    assert user.sub == user.user == "2244994945"
    assert user.preferred_username == "XDevelopers"
    assert user.email is None  # X gives no email
    assert user.claims == {"sub": "2244994945", "name": "X Dev", "preferred_username": "XDevelopers",
                           "groups": []}


def test_x_user_claim_username():
    user = identity(preset("x", "user_claim: preferred_username\n"), json.loads(X_USERS_ME))
    assert (user.sub, user.user) == ("2244994945", "XDevelopers")
    dotted = identity(preset("x", "user_claim: data.username\n"), json.loads(X_USERS_ME))
    assert (dotted.sub, dotted.user) == ("2244994945", "XDevelopers")


def test_x_answer_without_data_is_no_subject():
    # What X answers when the token lacks users.read: {"errors": [...]} with no data.
    with pytest.raises(ProviderError) as info:
        identity(preset("x"), {"title": "Unauthorized", "type": "about:blank", "status": 401,
                               "detail": "Unauthorized"})
    assert info.value.reason == "no_subject"
    assert info.value.description == "The identity provider did not say who signed in (no 'data.id' in its answer)."


def test_github_user_numeric_id_becomes_a_string_sub_and_login_the_username():
    user = identity(preset("github"), json.loads(GITHUB_USER))
    assert user.sub == user.user == "583231"
    assert isinstance(user.sub, str) and user.claims["sub"] == "583231"
    assert user.preferred_username == "octocat"
    assert user.claims["name"] == "The Octocat"
    assert user.email is None  # "email": null on /user; the GitHub client reads /user/emails instead
    # nothing of the profile that no rule asked for is kept
    assert "avatar_url" not in user.claims and "company" not in user.claims and "id" not in user.claims


def test_github_user_claim_login():
    user = identity(preset("github", "user_claim: preferred_username\n"), json.loads(GITHUB_USER))
    assert (user.sub, user.user) == ("583231", "octocat")


def test_github_user_with_a_null_name_has_no_name():
    document = dict(json.loads(GITHUB_USER), name=None)
    user = identity(preset("github"), document)
    assert "name" not in user.claims and user.sub == "583231"


# --------------------------------------------------------------------------- a generic mapping


def test_generic_mapping_with_dotted_paths_and_numeric_ids():
    config = generic(claims=(("sub", "user.id"), ("email", "user.contact.mail"),
                             ("preferred_username", "user.login"), ("groups", "memberships")))
    document = {"user": {"id": 4711, "login": "jdoe", "contact": {"mail": "jdoe@corp.example"}},
                "memberships": ["eng", "ops", 7, ""], "email": "old@corp.example"}
    user = identity(config, document)
    assert user.sub == "4711" and user.user == "4711"
    assert user.email == "jdoe@corp.example"
    assert user.preferred_username == "jdoe"
    assert user.groups == ("eng", "ops")  # only non-empty strings are groups
    assert user.claims["groups"] == ["eng", "ops"]


def test_mapped_sets_each_field_from_its_source_and_leaves_the_document_alone():
    document = {"id": 7, "mail": "a@b.example", "email": "stale@b.example", "nested": {"name": "N"}}
    out = mapped(document, (("sub", "id"), ("email", "mail"), ("name", "nested.name"),
                            ("preferred_username", "missing.path")))
    assert out == {"id": 7, "mail": "a@b.example", "email": "a@b.example", "nested": {"name": "N"},
                   "sub": 7, "name": "N"}
    assert document["email"] == "stale@b.example"  # the input is not changed


def test_a_mapped_field_whose_source_is_missing_is_absent_not_the_documents_own():
    # {email: mail} and no "mail": the userinfo's own "email" is not used in its place
    user = identity(generic(claims=(("sub", "id"), ("email", "mail"))), {"id": "1", "email": "x@evil.example"})
    assert user.email is None


def test_a_claim_whose_name_has_a_dot_is_read_as_is_first():
    user = identity(generic(claims=(("sub", "urn.id"),)), {"urn.id": "literal", "urn": {"id": "nested"}})
    assert user.sub == "literal"


@pytest.mark.parametrize("value, expected", [
    ("abc", "abc"), (42, "42"), (0, "0"), (10224375819395870, "10224375819395870"),
    ("", None), (True, None), (False, None), (1.5, None), (None, None), (["1"], None), ({"id": 1}, None),
])
def test_text_id(value, expected):
    assert text_id(value) == expected


@pytest.mark.parametrize("document", [
    pytest.param({}, id="empty"),
    pytest.param({"sub": ""}, id="empty-string"),
    pytest.param({"sub": True}, id="bool"),
    pytest.param({"sub": 1.5}, id="float"),
    pytest.param({"sub": ["u1"]}, id="list"),
    pytest.param({"sub": {"id": "u1"}}, id="object"),
    pytest.param({"sub": None, "email": "a@b.example"}, id="null"),
])
def test_no_subject_is_an_error_never_an_empty_user(document):
    with pytest.raises(ProviderError) as info:
        user_claims(generic(), document)
    assert info.value.reason == "no_subject"
    assert info.value.description == "The identity provider did not say who signed in (no 'sub' in its answer)."
    assert str(info.value) == info.value.description


def test_no_subject_names_the_mapped_field():
    with pytest.raises(ProviderError) as info:
        identity(generic(claims=(("sub", "account.uuid"),)), {"account": {"name": "x"}, "sub": "ignored"})
    assert info.value.reason == "no_subject"
    assert "'account.uuid'" in info.value.description


# --------------------------------------------------------------------------- email_verified


@pytest.mark.parametrize("flag", [False, "false", "False", "FALSE"])
def test_an_unverified_email_is_dropped(flag):
    user = user_claims(generic(), {"sub": "u1", "email": "a@b.example", "email_verified": flag})
    assert user.email is None
    assert "email" not in user.claims and "email_verified" not in user.claims


@pytest.mark.parametrize("flag", [False, "false"])
def test_allow_unverified_email_keeps_it(flag):
    user = user_claims(generic(allow_unverified_email=True),
                       {"sub": "u1", "email": "a@b.example", "email_verified": flag})
    assert user.email == "a@b.example"
    assert user.claims["email"] == "a@b.example" and user.claims["email_verified"] is False


@pytest.mark.parametrize("flag, kept", [(True, True), ("true", True), ("TRUE", True), (None, None),
                                        ("yes", None), (1, None)])
def test_a_verified_or_unstated_email_is_kept(flag, kept):
    document = {"sub": "u1", "email": "a@b.example"}
    if flag is not None:
        document["email_verified"] = flag
    user = user_claims(generic(), document)
    assert user.email == "a@b.example"
    assert user.claims.get("email_verified") == kept


def test_facebook_email_counts_as_verified_but_an_explicit_false_still_drops_it():
    config = preset("facebook")
    assert config.email_verified_by_provider
    assert user_claims(config, {"sub": "1", "email": "a@b.example"}).claims["email_verified"] is True
    assert user_claims(config, {"sub": "1", "email": "a@b.example", "email_verified": False}).email is None


def test_a_non_string_email_is_no_email():
    for value in (["a@b.example"], 7, "", {"v": 1}):
        assert user_claims(generic(), {"sub": "u1", "email": value}).email is None


# --------------------------------------------------------------------------- user_claim


def test_user_claim_picks_another_claim():
    user = user_claims(generic(user_claim="employee_id"), {"sub": "u1", "employee_id": 90210})
    assert (user.sub, user.user) == ("u1", "90210")
    assert user.claims["sub"] == "u1"  # the session still knows the provider's subject


def test_user_claim_dotted():
    user = user_claims(generic(user_claim="profile.handle"), {"sub": "u1", "profile": {"handle": "jd"}})
    assert user.user == "jd"


@pytest.mark.parametrize("value", [None, "", True, ["x"]])
def test_a_missing_user_claim_is_an_error(value):
    document = {"sub": "u1"}
    if value is not None:
        document["employee_id"] = value
    with pytest.raises(ProviderError) as info:
        user_claims(generic(user_claim="employee_id"), document)
    assert info.value.reason == "no_user_claim"
    assert info.value.description == "The identity provider did not say who signed in (no 'employee_id')."


def test_user_claim_email_is_only_a_verified_email():
    """An email whose email_verified is false is never an identity, so never X-Forwarded-User either."""
    config = generic(user_claim="email")
    assert user_claims(config, {"sub": "u1", "email": "a@b.example", "email_verified": True}).user == "a@b.example"
    with pytest.raises(ProviderError) as info:
        user_claims(config, {"sub": "u1", "email": "a@b.example", "email_verified": "false"})
    assert info.value.reason == "no_user_claim"
    trusting = generic(user_claim="email", allow_unverified_email=True)
    assert user_claims(trusting, {"sub": "u1", "email": "a@b.example", "email_verified": False}).user == "a@b.example"


# --------------------------------------------------------------------------- what the session keeps


def test_claims_named_by_allow_rules_are_kept():
    document = {"sub": "u1", "department": "finance", "org": {"unit": "emea"}, "level": 3, "staff": True,
                "roles": ["a", "b"], "unrelated": "x", "tid": "tenant-1", "hd": "corp.example"}
    user = user_claims(generic(), document, keep=("department", "org.unit", "level", "staff", "roles", "absent"))
    assert user.claims == {"sub": "u1", "tid": "tenant-1", "hd": "corp.example", "groups": [],
                           "department": "finance", "org.unit": "emea", "level": 3, "staff": True,
                           "roles": ["a", "b"]}


def test_without_keep_only_the_standard_claims_are_kept():
    document = {name: f"v-{name}" for name in KEPT_CLAIMS} | {"department": "finance"}
    document["email_verified"] = True
    user = user_claims(generic(), document)
    assert "department" not in user.claims
    assert set(user.claims) == set(KEPT_CLAIMS)
    assert user.claims["sub"] == "v-sub" and user.claims["iss"] == "v-iss"


def test_values_too_long_or_not_json_are_dropped():
    long = "x" * 513
    document = {"sub": "u1", "name": long, "department": long, "fine": "y" * 512,
                "many": [f"g{i}" for i in range(250)], "mixed": ["ok", long, 3, None, "also"],
                "object": {"a": 1}}
    user = user_claims(generic(), document, keep=("department", "fine", "many", "mixed", "object"))
    assert "name" not in user.claims and "department" not in user.claims and "object" not in user.claims
    assert user.claims["fine"] == "y" * 512
    assert user.claims["many"] == [f"g{i}" for i in range(200)]
    assert user.claims["mixed"] == ["ok", "also"]


@pytest.mark.parametrize("value, expected", [
    (None, None), (True, True), (0, 0), (2.5, 2.5), ("s", "s"), ("x" * 513, None), ({"a": 1}, None),
    (("a", "b"), ["a", "b"]), ([1, "a"], ["a"]),
])
def test_kept_value(value, expected):
    assert kept_value(value) == expected


def test_groups_from_the_groups_claim_as_list_or_string():
    config = generic(groups_claim="realm_access.roles")
    user = user_claims(config, {"sub": "u1", "realm_access": {"roles": ["admin", "dev"]}})
    assert user.groups == ("admin", "dev") and user.claims["groups"] == ["admin", "dev"]
    spaced = user_claims(generic(), {"sub": "u1", "groups": "admin, dev ops"})
    assert spaced.groups == ("admin", "dev", "ops")
    assert user_claims(generic(), {"sub": "u1", "groups": {"admin": True}}).groups == ()
