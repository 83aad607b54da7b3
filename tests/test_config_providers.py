"""Tests for the providers section of gateway.config: provider types, presets, claims mappings, and the
session/tokens keys that came with them (cookie_domain, refresh_grace, require_typ).

Each preset is loaded with exactly what it needs and must give the exact endpoints, issuer, scopes and
claims; bad inputs are a table of configs with every message (file, line, text) they must produce.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config, ConfigError, ProviderConfig, loads, yaml_keys
from gateway.config.presets import PRESETS

pytestmark = pytest.mark.timeout(60)

SECRET = "0123456789abcdef0123456789abcdef"
ENV = {"S32": SECRET}

# Line 1-3 of every provider config below; the first provider's name is on line 4.
HEAD = """\
session:
  secret: ${S32}
providers:
"""
ROUTE = """
routes:
  - {name: app, path: /, upstream: "http://127.0.0.1:9000", auth: public}
"""


def ok(text: str) -> Config:
    return loads(textwrap.dedent(text), env=ENV)


def entries(body: str) -> str:
    """Provider entries (YAML at any indentation) placed under ``providers:``."""
    return textwrap.indent(textwrap.dedent(body), "  ")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), env=ENV)
    return info.value.errors


def provider(body: str, name: str = "p") -> ProviderConfig:
    """The provider ``name`` from a providers section whose entry is ``body`` (YAML, any indentation)."""
    text = HEAD + f"  {name}:\n" + textwrap.indent(textwrap.dedent(body), "    ") + ROUTE
    return loads(text, env=ENV).providers[name]


# --------------------------------------------------------------------------- every preset, exactly

CREDENTIALS = "client_id: gw\nclient_secret: s3cret\n"

PRESET_CASES = [
    pytest.param(
        "preset: google\n",
        dict(type="oidc", issuer="https://accounts.google.com", issuer_aliases=("accounts.google.com",),
             scopes=("openid", "email", "profile"), display_name="Google", claims=(), tenant_issuer="",
             hosted_domain="", auth_params=()),
        id="google",
    ),
    pytest.param(
        "preset: google\nhosted_domain: example.com\n",
        dict(type="oidc", issuer="https://accounts.google.com", hosted_domain="example.com",
             auth_params=(("hd", "example.com"),)),  # the authorization request's hint; hd in the ID token enforces
        id="google-hosted-domain",
    ),
    pytest.param(
        "preset: microsoft\ntenant: 9188040d-6c67-4c5b-b112-36a304b66dad\n",
        dict(type="oidc", issuer="https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
             tenant="9188040d-6c67-4c5b-b112-36a304b66dad", tenant_issuer="",  # one tenant: exact issuer
             scopes=("openid", "email", "profile"), display_name="Microsoft", allowed_tenants=()),
        id="microsoft-tenant-id",
    ),
    pytest.param(
        "preset: microsoft\ntenant: common\nallowed_tenants: [t-one, t-two]\n",
        dict(type="oidc", issuer="https://login.microsoftonline.com/common/v2.0", tenant="common",
             tenant_issuer="https://login.microsoftonline.com/{tid}/v2.0", allowed_tenants=("t-one", "t-two")),
        id="microsoft-common-allowed-tenants",
    ),
    pytest.param(
        "preset: microsoft\ntenant: contoso.onmicrosoft.com\n",
        dict(issuer="https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0", tenant_issuer=""),
        id="microsoft-tenant-domain",
    ),
    pytest.param(
        "preset: microsoft\ntenant: consumers\n",
        dict(issuer="https://login.microsoftonline.com/consumers/v2.0",
             tenant_issuer="https://login.microsoftonline.com/{tid}/v2.0"),
        id="microsoft-consumers",
    ),
    pytest.param(
        "preset: microsoft\ntenant: organizations\n",
        dict(issuer="https://login.microsoftonline.com/organizations/v2.0",
             tenant_issuer="https://login.microsoftonline.com/{tid}/v2.0", allowed_tenants=()),
        id="microsoft-organizations",
    ),
    pytest.param(
        "preset: keycloak\nbase_url: https://kc.example.com\nrealm: corp\n",
        dict(type="oidc", issuer="https://kc.example.com/realms/corp", realm="corp",
             scopes=("openid", "email", "profile"), display_name="Keycloak"),
        id="keycloak",
    ),
    pytest.param(
        "preset: keycloak\nbase_url: https://kc.example.com\nrealm: acme-prod_2.eu\n",
        dict(issuer="https://kc.example.com/realms/acme-prod_2.eu", realm="acme-prod_2.eu"),
        id="keycloak-realm-punctuation",
    ),
    pytest.param(
        "preset: keycloak\nbase_url: https://kc.example.com/auth/\nrealm: corp\n",
        dict(issuer="https://kc.example.com/auth/realms/corp"),
        id="keycloak-trailing-slash",
    ),
    pytest.param(
        "preset: okta\ndomain: dev-123.okta.com\n",
        dict(type="oidc", issuer="https://dev-123.okta.com", scopes=("openid", "email", "profile", "groups"),
             display_name="Okta", domain="dev-123.okta.com"),
        id="okta",
    ),
    pytest.param(
        "preset: auth0\ndomain: acme.eu.auth0.com\n",
        # Auth0's issuer is the tenant URL with its trailing slash.
        dict(type="oidc", issuer="https://acme.eu.auth0.com/", scopes=("openid", "email", "profile"),
             display_name="Auth0"),
        id="auth0",
    ),
    pytest.param(
        "preset: gitlab\n",
        dict(type="oidc", issuer="https://gitlab.com", scopes=("openid", "email", "profile"), display_name="GitLab"),
        id="gitlab",
    ),
    pytest.param(
        "preset: gitlab\nbase_url: https://git.example.org/\n",
        dict(type="oidc", issuer="https://git.example.org"),
        id="gitlab-self-hosted",
    ),
    pytest.param(
        "preset: github\n",
        dict(type="oauth2", issuer="", api="github",
             authorization_endpoint="https://github.com/login/oauth/authorize",
             token_endpoint="https://github.com/login/oauth/access_token",
             userinfo_endpoint="https://api.github.com/user", api_url="https://api.github.com",
             scopes=("read:user", "user:email", "read:org"),
             claims=(("sub", "id"), ("preferred_username", "login"), ("name", "name")),
             token_endpoint_auth_method="client_secret_post", display_name="GitHub"),
        id="github",
    ),
    pytest.param(
        "preset: github\nbase_url: https://github.com/\n",
        dict(api_url="https://api.github.com", userinfo_endpoint="https://api.github.com/user",
             authorization_endpoint="https://github.com/login/oauth/authorize"),
        id="github-com-written-out",
    ),
    pytest.param(
        "preset: github\nbase_url: https://ghe.example.com\n",
        dict(type="oauth2", api="github",
             authorization_endpoint="https://ghe.example.com/login/oauth/authorize",
             token_endpoint="https://ghe.example.com/login/oauth/access_token",
             userinfo_endpoint="https://ghe.example.com/api/v3/user", api_url="https://ghe.example.com/api/v3"),
        id="github-enterprise-server",
    ),
    pytest.param(
        "preset: github\nbase_url: https://ghe.example.com/\n",
        dict(authorization_endpoint="https://ghe.example.com/login/oauth/authorize",
             token_endpoint="https://ghe.example.com/login/oauth/access_token",
             userinfo_endpoint="https://ghe.example.com/api/v3/user", api_url="https://ghe.example.com/api/v3"),
        id="github-enterprise-server-trailing-slash",
    ),
    pytest.param(
        "preset: facebook\n",
        dict(type="oauth2", api="",
             authorization_endpoint="https://www.facebook.com/v21.0/dialog/oauth",
             token_endpoint="https://graph.facebook.com/v21.0/oauth/access_token",
             userinfo_endpoint="https://graph.facebook.com/v21.0/me?fields=id,name,email",
             scopes=("public_profile", "email"), claims=(("sub", "id"), ("name", "name"), ("email", "email")),
             email_verified_by_provider=True, token_endpoint_auth_method="client_secret_post",
             display_name="Facebook"),
        id="facebook",
    ),
    pytest.param(
        "preset: x\n",
        dict(type="oauth2", api="", authorization_endpoint="https://x.com/i/oauth2/authorize",
             token_endpoint="https://api.x.com/2/oauth2/token", userinfo_endpoint="https://api.x.com/2/users/me",
             scopes=("users.read", "tweet.read", "offline.access"),
             claims=(("sub", "data.id"), ("preferred_username", "data.username"), ("name", "data.name")),
             email_verified_by_provider=False, token_endpoint_auth_method="client_secret_basic", display_name="X"),
        id="x",
    ),
]


@pytest.mark.parametrize("body, expected", PRESET_CASES)
def test_preset_loads_with_its_needs(body, expected):
    config = provider(body + CREDENTIALS)
    assert config.preset == body.split("\n")[0].split(": ")[1]
    assert (config.client_id, config.client_secret) == ("gw", "s3cret")
    assert {key: getattr(config, key) for key in expected} == expected


def test_every_preset_is_covered():
    covered = {p.values[0].split("\n")[0].split(": ")[1] for p in PRESET_CASES}
    assert covered == set(PRESETS)


def test_oidc_presets_have_no_endpoints_and_oauth2_presets_no_issuer():
    needs = {"microsoft": "tenant: common\n", "keycloak": "base_url: https://kc\nrealm: r\n",
             "okta": "domain: a.okta.com\n", "auth0": "domain: a.auth0.com\n"}
    for name, preset in PRESETS.items():
        config = provider(f"preset: {name}\n" + needs.get(name, "") + CREDENTIALS)
        assert config.type == preset.type, name
        if preset.type == "oidc":
            assert config.issuer.startswith("https://") and "{" not in config.issuer, name
            assert (config.authorization_endpoint, config.token_endpoint, config.userinfo_endpoint) == ("", "", "")
            assert "openid" in config.scopes, name
        else:
            assert config.issuer == "", name
            for url in (config.authorization_endpoint, config.token_endpoint, config.userinfo_endpoint):
                assert url.startswith("https://") and "{" not in url, (name, url)
            assert dict(config.claims)["sub"], name


# --------------------------------------------------------------------------- overriding a preset

OVERRIDES = [
    pytest.param("preset: github\nscopes: [read:user]\n", dict(scopes=("read:user",)), id="github-scopes"),
    pytest.param("preset: google\nscopes: [openid, email]\n", dict(scopes=("openid", "email")), id="google-scopes"),
    pytest.param("preset: okta\ndomain: a.okta.com\nissuer: https://a.okta.com/oauth2/default\n",
                 dict(issuer="https://a.okta.com/oauth2/default"), id="okta-custom-authorization-server"),
    pytest.param("preset: gitlab\ndisplay_name: Company GitLab\n", dict(display_name="Company GitLab"),
                 id="display-name"),
    pytest.param("preset: x\ntoken_endpoint_auth_method: client_secret_post\n",
                 dict(token_endpoint_auth_method="client_secret_post"), id="x-auth-method"),
    pytest.param("preset: github\ntoken_endpoint_auth_method: client_secret_basic\n",
                 dict(token_endpoint_auth_method="client_secret_basic"), id="github-auth-method"),
    pytest.param("preset: facebook\nuserinfo_endpoint: https://graph.facebook.com/v22.0/me?fields=id,email\n",
                 dict(userinfo_endpoint="https://graph.facebook.com/v22.0/me?fields=id,email",
                      token_endpoint="https://graph.facebook.com/v21.0/oauth/access_token"),
                 id="facebook-userinfo"),
    pytest.param("preset: facebook\nclaims: {sub: id, name: short_name}\n",
                 dict(claims=(("sub", "id"), ("name", "short_name"))), id="facebook-claims-replaced"),
    pytest.param("preset: google\ngroups_claim: roles\nuser_claim: email\n",
                 dict(groups_claim="roles", user_claim="email"), id="claims-keys"),
    pytest.param("preset: microsoft\ntenant: common\nallow_unverified_email: true\n",
                 dict(allow_unverified_email=True), id="allow-unverified-email"),
]


@pytest.mark.parametrize("body, expected", OVERRIDES)
def test_any_preset_key_can_be_overridden(body, expected):
    config = provider(body + CREDENTIALS)
    assert {key: getattr(config, key) for key in expected} == expected


def test_display_name_defaults_to_the_provider_name_without_a_preset():
    config = provider("issuer: https://idp.example.com\n" + CREDENTIALS, name="corp")
    assert config.display_name == "corp" and config.type == "oidc" and config.preset == ""


# --------------------------------------------------------------------------- plain OAuth 2.0

def test_oauth2_with_its_three_endpoints_and_a_claims_mapping():
    config = provider("""\
        type: oauth2
        authorization_endpoint: https://sso.example/authorize
        token_endpoint: https://sso.example/token
        userinfo_endpoint: https://sso.example/api/me?fields=id,mail
        claims: {sub: id, email: mail, preferred_username: login, groups: profile.roles}
        client_id: gw
        client_secret: s
        scopes: [profile]
    """)
    assert config.type == "oauth2" and config.issuer == ""
    assert config.authorization_endpoint == "https://sso.example/authorize"
    assert config.token_endpoint == "https://sso.example/token"
    assert config.userinfo_endpoint == "https://sso.example/api/me?fields=id,mail"
    assert config.claims == (("sub", "id"), ("email", "mail"), ("preferred_username", "login"),
                             ("groups", "profile.roles"))
    assert config.scopes == ("profile",)  # no openid needed: this is not OpenID Connect
    assert config.token_endpoint_auth_method == ""


def test_oauth2_needs_its_three_endpoints():
    text = HEAD + entries("""\
          legacy:
            type: oauth2
            token_endpoint: https://sso.example/token
            client_id: gw
            client_secret: s
    """) + ROUTE
    assert errors(text) == [
        'routes.yaml:4: provider "legacy": authorization_endpoint is required for type: oauth2',
        'routes.yaml:4: provider "legacy": userinfo_endpoint is required for type: oauth2',
    ]


# --------------------------------------------------------------------------- table of bad providers

BAD_PROVIDERS = [
    pytest.param(
        """\
          gh:
            preset: gitub
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:5: provider "gh": unknown preset "gitub" (did you mean "github"?) '
         "(one of google, microsoft, keycloak, okta, auth0, gitlab, github, facebook, x)"],
        id="unknown-preset-did-you-mean",
    ),
    pytest.param(
        """\
          corp:
            preset: saml-thing
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:5: provider "corp": unknown preset "saml-thing" '
         "(one of google, microsoft, keycloak, okta, auth0, gitlab, github, facebook, x)"],
        id="unknown-preset-no-hint",
    ),
    pytest.param(
        """\
          ms:
            preset: microsoft
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:4: provider "ms": preset microsoft needs tenant'],
        id="microsoft-needs-tenant",
    ),
    pytest.param(
        """\
          kc:
            preset: keycloak
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:4: provider "kc": preset keycloak needs base_url',
         'routes.yaml:4: provider "kc": preset keycloak needs realm'],
        id="keycloak-needs-base-url-and-realm",
    ),
    pytest.param(
        """\
          kc:
            preset: keycloak
            base_url: https://kc.example.com
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:4: provider "kc": preset keycloak needs realm'],
        id="keycloak-needs-realm",
    ),
    pytest.param(
        """\
          ms:
            preset: microsoft
            tenant: Common
            client_id: a
            client_secret: b
          ms2:
            preset: microsoft
            tenant: contoso
            client_id: a
            client_secret: b
          ms3:
            preset: microsoft
            tenant: https://login.microsoftonline.com/contoso.onmicrosoft.com
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "ms": tenant must be a tenant id (a GUID such as '
         '9188040d-6c67-4c5b-b112-36a304b66dad), a domain name such as contoso.onmicrosoft.com, or one of '
         'common, organizations, consumers (got "Common")',
         'routes.yaml:11: provider "ms2": tenant must be a tenant id (a GUID such as '
         '9188040d-6c67-4c5b-b112-36a304b66dad), a domain name such as contoso.onmicrosoft.com, or one of '
         'common, organizations, consumers (got "contoso")',
         'routes.yaml:16: provider "ms3": tenant must be a tenant id (a GUID such as '
         '9188040d-6c67-4c5b-b112-36a304b66dad), a domain name such as contoso.onmicrosoft.com, or one of '
         'common, organizations, consumers (got "https://login.microsoftonline.com/contoso.onmicrosoft.com")'],
        id="microsoft-bad-tenant",
    ),
    pytest.param(
        """\
          kc:
            preset: keycloak
            base_url: https://kc.example.com
            realm: my realm
            client_id: a
            client_secret: b
          kc2:
            preset: keycloak
            base_url: https://kc.example.com
            realm: corp/admin
            client_id: a
            client_secret: b
          kc3:
            preset: keycloak
            base_url: https://kc.example.com
            realm: ".."
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:7: provider "kc": realm must be the realm\'s name as it appears in its URL (/realms/NAME): '
         "letters, digits and -._~!$&'()*+,;=:@ only, no spaces or slashes (got \"my realm\")",
         'routes.yaml:13: provider "kc2": realm must be the realm\'s name as it appears in its URL (/realms/NAME): '
         "letters, digits and -._~!$&'()*+,;=:@ only, no spaces or slashes (got \"corp/admin\")",
         'routes.yaml:19: provider "kc3": realm must be the realm\'s name as it appears in its URL (/realms/NAME): '
         "letters, digits and -._~!$&'()*+,;=:@ only, no spaces or slashes (got \"..\")"],
        id="keycloak-bad-realm",
    ),
    pytest.param(
        """\
          okta:
            preset: okta
            client_id: a
            client_secret: b
          auth0:
            preset: auth0
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:4: provider "okta": preset okta needs domain',
         'routes.yaml:8: provider "auth0": preset auth0 needs domain'],
        id="okta-auth0-need-domain",
    ),
    pytest.param(
        """\
          okta:
            preset: okta
            domain: https://dev-123.okta.com
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "okta": domain must be a host name such as dev-123.okta.com, '
         'without https:// or a path (got "https://dev-123.okta.com")'],
        id="domain-written-as-url",
    ),
    pytest.param(
        """\
          corp:
            type: saml
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:5: provider "corp": type must be one of oidc, oauth2'],
        id="bad-type",
    ),
    pytest.param(
        """\
          corp:
            issuer: https://idp.example.com
            client_id: a
            client_secret: b
            token_endpoint_auth_method: client_secret_jwt
        """,
        ['routes.yaml:8: provider "corp": token_endpoint_auth_method must be one of '
         "client_secret_basic, client_secret_post, private_key_jwt"],
        id="bad-token-endpoint-auth-method",
    ),
    pytest.param(
        """\
          corp:
            issuer: https://idp.example.com
            client_id: a
            token_endpoint_auth_method: private_key_jwt
        """,
        ['routes.yaml:4: provider "corp": token_endpoint_auth_method private_key_jwt needs client_private_key '
         "(a PEM private key file)"],
        id="private-key-jwt-without-a-key",
    ),
    pytest.param(
        """\
          corp:
            issuer: https://idp.example.com
            client_id: a
            token_endpoint_auth_method: private_key_jwt
            client_private_key: /nonexistent/client.pem
        """,
        ['routes.yaml:8: provider "corp": client_private_key file "/nonexistent/client.pem" cannot be read: '
         "No such file or directory"],
        id="private-key-jwt-missing-file",
    ),
    pytest.param(
        """\
          corp:
            type: oauth2
            authorization_endpoint: https://sso.example/authorize
            token_endpoint: https://sso.example/token
            userinfo_endpoint: https://sso.example/me
            claims: {sub: id, mail: email}
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:9: unknown key "mail" in provider "corp": claims (did you mean "email"?)'],
        id="claims-unknown-identity-field",
    ),
    pytest.param(
        """\
          corp:
            type: oauth2
            authorization_endpoint: https://sso.example/authorize
            token_endpoint: https://sso.example/token
            userinfo_endpoint: https://sso.example/me
            claims: [id, mail]
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:9: provider "corp": claims must be a mapping of identity field to the provider\'s '
         "field, e.g. {sub: id, email: mail, groups: roles}"],
        id="claims-not-a-mapping",
    ),
    pytest.param(
        """\
          corp:
            type: oauth2
            issuer: https://sso.example
            authorization_endpoint: https://sso.example/authorize
            token_endpoint: https://sso.example/token
            userinfo_endpoint: https://sso.example/me
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "corp": issuer is for type: oidc; a plain OAuth 2.0 provider has '
         "authorization_endpoint, token_endpoint and userinfo_endpoint"],
        id="issuer-on-oauth2",
    ),
    pytest.param(
        """\
          g:
            preset: google
            allowed_tenants: [t1]
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "g": allowed_tenants is for preset: microsoft'],
        id="allowed-tenants-without-microsoft",
    ),
    pytest.param(
        """\
          ms:
            preset: microsoft
            tenant: 9188040d-6c67-4c5b-b112-36a304b66dad
            allowed_tenants: [9188040d-6c67-4c5b-b112-36a304b66dad]
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:7: provider "ms": allowed_tenants only applies with tenant: common, organizations or '
         'consumers'],
        id="allowed-tenants-with-one-tenant",
    ),
    pytest.param(
        """\
          g:
            preset: google
            scopes: [email, profile]
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "g": scopes must include "openid"'],
        id="scopes-without-openid-on-oidc",
    ),
    pytest.param(
        """\
          corp:
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:4: provider "corp": issuer is required (or a preset: google, microsoft, keycloak, okta, '
         "auth0, gitlab, github, facebook, x)"],
        id="oidc-without-issuer-or-preset",
    ),
    pytest.param(
        """\
          gh:
            preset: github
        """,
        ['routes.yaml:4: provider "gh": client_id is required',
         'routes.yaml:4: provider "gh": client_secret is required'],
        id="preset-still-needs-credentials",
    ),
    pytest.param(
        """\
          gh:
            preset: github
            base_url: ghe.example.com
            client_id: a
            client_secret: b
        """,
        ['routes.yaml:6: provider "gh": base_url must be an http:// or https:// URL (got "ghe.example.com")'],
        id="base-url-not-a-url",
    ),
]


@pytest.mark.parametrize("body, expected", BAD_PROVIDERS)
def test_bad_provider(body, expected):
    assert errors(HEAD + entries(body) + ROUTE) == expected


def test_scopes_without_openid_are_fine_on_oauth2():
    config = provider("""\
        type: oauth2
        authorization_endpoint: https://sso.example/authorize
        token_endpoint: https://sso.example/token
        userinfo_endpoint: https://sso.example/me
        scopes: [profile, email]
        client_id: a
        client_secret: b
    """)
    assert config.scopes == ("profile", "email")


def test_several_bad_providers_are_reported_together():
    text = HEAD + entries("""\
          one:
            preset: microsft
            client_id: a
            client_secret: b
          two:
            preset: keycloak
            realm: corp
            client_id: a
            client_secret: b
          three:
            type: oauth2
            issuer: https://x.example
            authorization_endpoint: https://x.example/a
            token_endpoint: https://x.example/t
            userinfo_endpoint: https://x.example/u
            client_id: a
            client_secret: b
          four:
            issuer: https://idp.example
            client_id: a
            client_secret: b
            token_endpoint_auth_method: basic
            claims: {user: id}
          five:
            preset: google
            client_id: a
            client_secret: b
    """) + textwrap.dedent("""\
        routes:
          - {name: app, path: /, upstream: "http://127.0.0.1:9000", auth: login, providers: [one, five]}
    """)
    assert errors(text) == [
        'routes.yaml:5: provider "one": unknown preset "microsft" (did you mean "microsoft"?) '
        "(one of google, microsoft, keycloak, okta, auth0, gitlab, github, facebook, x)",
        'routes.yaml:8: provider "two": preset keycloak needs base_url',
        'routes.yaml:15: provider "three": issuer is for type: oidc; a plain OAuth 2.0 provider has '
        "authorization_endpoint, token_endpoint and userinfo_endpoint",
        'routes.yaml:25: provider "four": token_endpoint_auth_method must be one of client_secret_basic, '
        "client_secret_post, private_key_jwt",
        'routes.yaml:26: unknown key "user" in provider "four": claims',
    ]


# --------------------------------------------------------------------------- session and tokens keys

SESSION_CASES = [
    pytest.param("https://app.example.com", "cookie_domain: .example.com", dict(cookie_domain=".example.com"),
                 id="subdomain"),
    pytest.param("https://app.example.com", "cookie_domain: example.com", dict(cookie_domain=".example.com"),
                 id="leading-dot-added"),
    pytest.param("https://example.com", "cookie_domain: .Example.COM", dict(cookie_domain=".example.com"),
                 id="the-host-itself-lower-cased"),
    pytest.param("http://127.0.0.1:8080", "refresh_grace: 5m", dict(refresh_grace=300.0, cookie_domain=""),
                 id="refresh-grace"),
    pytest.param("http://127.0.0.1:8080", "refresh_grace: 0", dict(refresh_grace=0.0), id="refresh-grace-zero"),
    pytest.param("http://127.0.0.1:8080", "lifetime: 1h", dict(refresh_grace=60.0), id="refresh-grace-default"),
]


@pytest.mark.parametrize("public_url, line, expected", SESSION_CASES)
def test_session_keys(public_url, line, expected):
    cfg = ok(f"server:\n  public_url: {public_url}\nsession:\n  secret: ${{S32}}\n  {line}\n" + ROUTE)
    assert {key: getattr(cfg.session, key) for key in expected} == expected


BAD_SESSIONS = [
    pytest.param(
        "https://app.example.com", "cookie_domain: .other.com",
        ['routes.yaml:5: session: cookie_domain ".other.com" does not cover server.public_url\'s host '
         '"app.example.com": the sign-in callback could not set the session cookie'],
        id="cookie-domain-elsewhere",
    ),
    pytest.param(
        "https://badexample.com", "cookie_domain: example.com",
        ['routes.yaml:5: session: cookie_domain ".example.com" does not cover server.public_url\'s host '
         '"badexample.com": the sign-in callback could not set the session cookie'],
        id="cookie-domain-suffix-is-not-a-subdomain",
    ),
    pytest.param(
        "http://127.0.0.1:8080", "cookie_domain: .example.com",
        ['routes.yaml:5: session: cookie_domain ".example.com" does not cover server.public_url\'s host '
         '"127.0.0.1": the sign-in callback could not set the session cookie'],
        id="cookie-domain-and-an-ip-public-url",
    ),
    pytest.param(
        "https://example.com", "cookie_domain: localhost",
        ['routes.yaml:5: session: cookie_domain "localhost" must be a domain name such as .example.com'],
        id="cookie-domain-one-label",
    ),
    pytest.param(
        "https://example.com", "cookie_domain: 'a..b'",
        ['routes.yaml:5: session: cookie_domain "a..b" must be a domain name such as .example.com'],
        id="cookie-domain-empty-label",
    ),
    pytest.param(
        "https://example.com", "cookie_domain: 'exa mple.com'",
        ['routes.yaml:5: session: cookie_domain "exa mple.com" must be a domain name such as .example.com'],
        id="cookie-domain-space",
    ),
    pytest.param(
        "https://example.com", "refresh_grace: soon",
        ['routes.yaml:5: session: refresh_grace must be a duration such as 30s, 5m, 8h or 250ms (got "soon")'],
        id="refresh-grace-word",
    ),
    pytest.param(
        "https://example.com", "refresh_grace: -5s",
        ['routes.yaml:5: session: refresh_grace must be a duration such as 30s, 5m, 8h or 250ms (got "-5s")'],
        id="refresh-grace-negative",
    ),
]


@pytest.mark.parametrize("public_url, line, expected", BAD_SESSIONS)
def test_bad_session_keys(public_url, line, expected):
    assert errors(f"server:\n  public_url: {public_url}\nsession:\n  secret: ${{S32}}\n  {line}\n" + ROUTE) == expected


TOKENS = """\
tokens:
  - issuer: https://idp.example
    algorithms: [RS256]
    audience: api
    jwks_uri: https://idp.example/jwks
"""


def test_tokens_require_typ():
    cfg = ok(TOKENS + "    require_typ: at+jwt\n" + ROUTE)
    assert cfg.tokens[0].require_typ == "at+jwt"
    assert ok(TOKENS + ROUTE).tokens[0].require_typ == ""


@pytest.mark.parametrize("value, message", [
    pytest.param("[at+jwt]", "require_typ must be a string", id="list"),
    pytest.param("''", "require_typ must not be empty", id="empty"),
])
def test_bad_tokens_require_typ(value, message):
    assert errors(TOKENS + f"    require_typ: {value}\n" + ROUTE) == [
        f'routes.yaml:6: tokens[0] (issuer "https://idp.example"): {message}']


# --------------------------------------------------------------------------- property

PROVIDER_KEYS = yaml_keys(ProviderConfig)
VALUES = st.one_of(
    st.sampled_from(
        ["oidc", "oauth2", "saml", "", *PRESETS, "https://idp.example", "https://idp.example/", "http://127.0.0.1:1",
         "idp.example", "https://ghe.example.com/api", "common", "organizations", "tenant-1", "corp",
         "client_secret_basic", "client_secret_post", "none", "openid", "{base_url}", "{tenant}", "{tid}",
         "https://{domain}", "dev.okta.com", "https://x/?a=b", "sub", "data.id", "a..b", "${S32}", "${MISSING}",
         "true", "[]", "{}"]
    ),
    st.text(max_size=16),
)
PROVIDER_ENTRIES = st.dictionaries(st.sampled_from(PROVIDER_KEYS), VALUES, max_size=8)
SESSION_ENTRIES = st.dictionaries(st.sampled_from(["cookie_domain", "refresh_grace", "cookie_name", "lifetime"]),
                                  VALUES, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["p", "q", "bad name"]), PROVIDER_ENTRIES, min_size=1, max_size=2),
       SESSION_ENTRIES, st.sampled_from(["http://127.0.0.1:8080", "https://app.example.com"]))
def test_any_mapping_of_known_keys_with_string_values_loads_or_is_a_config_error(providers, session, public_url):
    document = {
        "server": {"public_url": public_url},
        "session": {"secret": SECRET, **session},
        "providers": providers,
        "routes": [{"name": "app", "path": "/", "upstream": "http://127.0.0.1:9000", "auth": "login"}],
    }
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        cfg = loads(text, env=ENV)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(m, str) and m.startswith("routes.yaml:") for m in exc.errors)
    else:
        assert isinstance(cfg, Config)
        for name, config in cfg.providers.items():
            assert config.type in ("oidc", "oauth2")
            if config.type == "oidc":
                assert config.issuer and "openid" in config.scopes
            else:
                assert config.authorization_endpoint and config.token_endpoint and config.userinfo_endpoint


def test_private_key_jwt_keys(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    good = tmp_path / "key.pem"
    good.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = tmp_path / "public.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    body = "issuer: https://idp.example.com\nclient_id: a\ntoken_endpoint_auth_method: private_key_jwt\n"
    loaded = provider(body + f"client_private_key: {good}\nclient_key_id: k1\n")
    assert loaded.client_private_key.startswith("-----BEGIN PRIVATE KEY-----") and loaded.client_key_id == "k1"
    assert loaded.client_secret == ""
    with pytest.raises(ConfigError) as info:
        provider(body + f"client_private_key: {public}\n")
    assert info.value.errors == [f'routes.yaml:8: provider "p": client_private_key file "{public}" is not an '
                                 "unencrypted PEM private key"]
    with pytest.raises(ConfigError) as info:
        provider(body + f"client_private_key: {tmp_path}\n")
    assert info.value.errors == [f'routes.yaml:8: provider "p": client_private_key file "{tmp_path}" is not a '
                                 "regular file"]
