"""What is known about well-known identity providers, as data.

A preset is the provider keys a user would otherwise write: endpoints or
issuer, scopes, the claim mapping and a few quirks. ``{base_url}``,
``{tenant}``, ``{realm}`` and ``{domain}`` in its values are filled from the
provider's own keys (``needs`` lists those that must be given; ``params``
gives defaults). The ``providers`` rule applies a preset first and the file's
keys over it, so any key of a preset can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Tuple

GITHUB_COM = "https://github.com"


def _github_api(params: Mapping[str, str]) -> str:
    """api.github.com for github.com; GitHub Enterprise Server serves its API under /api/v3."""
    base = params["base_url"].rstrip("/")
    return "https://api.github.com" if base == GITHUB_COM else base + "/api/v3"


@dataclass(frozen=True)
class Preset:
    type: str
    values: Mapping[str, Any]
    needs: Tuple[str, ...] = ()  # keys the user must set, e.g. tenant
    params: Mapping[str, str] = field(default_factory=dict)  # defaults of template parameters
    derived: Mapping[str, Callable[[Mapping[str, str]], str]] = field(default_factory=dict)
    # what the README's table says becomes the user, the email and the groups
    summary: Tuple[str, str, str] = ("sub", "email (verified only)", "groups claim")


PRESETS: Mapping[str, Preset] = {
    "google": Preset(
        type="oidc",
        values={"issuer": "https://accounts.google.com", "issuer_aliases": ("accounts.google.com",),
                "display_name": "Google", "scopes": ("openid", "email", "profile")},
        summary=("sub", "email (verified only)", "none (Google sends no groups)"),
    ),
    "microsoft": Preset(
        type="oidc",
        needs=("tenant",),
        values={"issuer": "https://login.microsoftonline.com/{tenant}/v2.0",
                "tenant_issuer": "https://login.microsoftonline.com/{tid}/v2.0",
                "display_name": "Microsoft", "scopes": ("openid", "email", "profile")},
        summary=("sub", "email (verified only)", "groups claim (object ids, if the app sends them)"),
    ),
    "keycloak": Preset(
        type="oidc",
        needs=("base_url", "realm"),
        values={"issuer": "{base_url}/realms/{realm}", "display_name": "Keycloak"},
        summary=("sub", "email (verified only)", "groups claim (add the group membership mapper)"),
    ),
    "okta": Preset(
        type="oidc",
        needs=("domain",),
        values={"issuer": "https://{domain}", "display_name": "Okta",
                "scopes": ("openid", "email", "profile", "groups")},
        summary=("sub", "email (verified only)", "groups claim"),
    ),
    "auth0": Preset(
        type="oidc",
        needs=("domain",),
        values={"issuer": "https://{domain}/", "display_name": "Auth0"},
        summary=("sub", "email (verified only)", "groups claim (set by an Auth0 action)"),
    ),
    "gitlab": Preset(
        type="oidc",
        params={"base_url": "https://gitlab.com"},
        values={"issuer": "{base_url}", "display_name": "GitLab", "scopes": ("openid", "email", "profile")},
        summary=("sub (numeric user id)", "email (verified only)", "groups (group paths, from userinfo)"),
    ),
    "github": Preset(
        type="oauth2",
        params={"base_url": GITHUB_COM},
        derived={"api": _github_api},
        values={"authorization_endpoint": "{base_url}/login/oauth/authorize",
                "token_endpoint": "{base_url}/login/oauth/access_token",
                "userinfo_endpoint": "{api}/user", "api_url": "{api}", "api": "github",
                "scopes": ("read:user", "user:email", "read:org"),
                "claims": (("sub", "id"), ("preferred_username", "login"), ("name", "name")),
                "token_endpoint_auth_method": "client_secret_post", "display_name": "GitHub"},
        summary=("numeric user id (login in X-Forwarded-Preferred-Username)",
                 "primary verified address from /user/emails", "every org login and org/team-slug"),
    ),
    "facebook": Preset(
        type="oauth2",
        values={"authorization_endpoint": "https://www.facebook.com/v21.0/dialog/oauth",
                "token_endpoint": "https://graph.facebook.com/v21.0/oauth/access_token",
                "userinfo_endpoint": "https://graph.facebook.com/v21.0/me?fields=id,name,email",
                "scopes": ("public_profile", "email"),
                "claims": (("sub", "id"), ("name", "name"), ("email", "email")),
                # The Graph API only returns an address the person has confirmed.
                "email_verified_by_provider": True,
                "token_endpoint_auth_method": "client_secret_post", "display_name": "Facebook"},
        summary=("app-scoped user id", "email (confirmed by Facebook)", "none"),
    ),
    "x": Preset(
        type="oauth2",
        values={"authorization_endpoint": "https://x.com/i/oauth2/authorize",
                "token_endpoint": "https://api.x.com/2/oauth2/token",
                "userinfo_endpoint": "https://api.x.com/2/users/me",
                "scopes": ("users.read", "tweet.read", "offline.access"),
                "claims": (("sub", "data.id"), ("preferred_username", "data.username"), ("name", "data.name")),
                "token_endpoint_auth_method": "client_secret_basic", "display_name": "X"},
        summary=("numeric user id (username in X-Forwarded-Preferred-Username)", "none (X gives no email)",
                 "none"),
    ),
}


def fill(value: Any, params: Mapping[str, str]) -> Any:
    """``value`` with ``{name}`` replaced from ``params`` (strings, and tuples of strings or pairs)."""
    if isinstance(value, str):
        out = value
        for name, text in params.items():
            out = out.replace("{" + name + "}", text)
        return out
    if isinstance(value, tuple):
        return tuple(fill(v, params) for v in value)
    return value


def resolve(preset: Preset, given: Mapping[str, str]) -> dict[str, Any]:
    """The preset's values for a provider whose own keys include ``given`` (its string keys)."""
    params = dict(preset.params)
    params.update({k: v.rstrip("/") if k == "base_url" else v for k, v in given.items() if v})
    for name, derive in preset.derived.items():
        params[name] = derive(params)
    # {tid} stays a template: it is the token's own tenant, filled when an ID token is checked.
    return {key: fill(value, params) for key, value in preset.values.items()}
