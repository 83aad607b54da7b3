"""The ``providers`` section: login providers by name (OpenID Connect or plain OAuth 2.0, presets applied).

One of the section rules that ``gateway.config.load`` runs; routes with
``auth: login`` refer to these names.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from yaml.nodes import Node

from ..presets import PRESETS, resolve
from ..schema import (DEFAULT_SCOPES, IDENTITY_FIELDS, PROVIDER_TYPES, TOKEN_AUTH_METHODS, ProviderConfig,
                      yaml_keys)
from ..source import BAD, Source, hint, is_hostname, q

KEYS = yaml_keys(ProviderConfig)
_STRING_KEYS = ("type", "preset", "client_id", "client_secret", "groups_claim", "user_claim", "display_name",
                "token_endpoint_auth_method", "realm", "tenant", "domain", "hosted_domain", "client_key_id")
_URL_KEYS = ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint",
             "post_logout_redirect_uri", "base_url")
MULTI_TENANT = ("common", "organizations", "consumers")
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# One URL path segment, as written (RFC 3986 pchar without percent-encoding): no space, no "/".
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


def providers(src: Source, pair: Optional[Tuple[Node, Node]]) -> Any:
    if pair is None:
        return {}
    mapped = src.get_mapping(
        pair[1],
        "providers must be a mapping of name to settings, e.g. corp: {issuer: ..., client_id: ...}",
    )
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(pair[1], [k for k in items], "providers", items, problems)
    result: dict[str, ProviderConfig] = {}
    bad = False
    for name, (key_node, value_node) in items.items():
        if not _PROVIDER_NAME.fullmatch(name):
            src.error(
                key_node, f'provider name {q(name)} may only contain letters, digits, "_" and "-"'
            )
            bad = True
            continue
        provider = provider_entry(src, name, key_node, value_node)
        if provider is BAD:
            bad = True
        else:
            result[name] = provider
    # A provider with errors still counts as configured, so routes and the
    # session secret are checked as they would be once it is fixed.
    if bad:
        return {**{n: None for n in items if _PROVIDER_NAME.fullmatch(n)}, **result}
    return result


def provider_entry(src: Source, name: str, key_node: Node, node: Node) -> Any:
    where = f'provider "{name}"'
    mapped = src.get_mapping(node, f"{where} must be a mapping with issuer (or a preset), client_id and client_secret")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, KEYS, where, items, problems)
    given: dict[str, Any] = {}
    for key in _STRING_KEYS:
        if key in items:
            given[key] = src.get_str(items[key][1], f"{where}: {key}")
    for key in _URL_KEYS:
        if key in items:
            given[key] = src.get_url(items[key][1], f"{where}: {key}", query_ok=key == "userinfo_endpoint"
                                     or key == "post_logout_redirect_uri")
    for key in ("allow_unverified_email", "backchannel_logout"):
        if key in items:
            given[key] = src.get_bool(items[key][1], f"{where}: {key}")
    if "allowed_tenants" in items:
        tenants = src.get_str_list(items["allowed_tenants"][1], f"{where}: allowed_tenants", "[TENANT-ID]")
        given["allowed_tenants"] = BAD if tenants is BAD else tuple(t for t, _ in tenants)
    if "scopes" in items:
        scopes = src.get_str_list(items["scopes"][1], f"{where}: scopes", "[openid, email, profile]")
        given["scopes"] = BAD if scopes is BAD else tuple(dict.fromkeys(text for text, _ in scopes))
    if "claims" in items:
        given["claims"] = claim_map(src, items["claims"][1], where)
    if "client_private_key" in items:
        given["client_private_key"] = private_key(src, items["client_private_key"][1], where)
    ok = not any(v is BAD for v in given.values())
    given = {k: v for k, v in given.items() if v is not BAD}
    domain = given.get("domain")
    if domain is not None and not is_hostname(domain.lower()):
        src.error(items["domain"][1], f"{where}: domain must be a host name such as dev-123.okta.com, "
                                      f"without https:// or a path (got {q(domain)})")
        ok = False
    tenant = given.get("tenant")
    if tenant and not (tenant in MULTI_TENANT or _GUID.fullmatch(tenant)
                       or ("." in tenant and is_hostname(tenant.lower()))):
        src.error(items["tenant"][1], f"{where}: tenant must be a tenant id (a GUID such as "
                                      "9188040d-6c67-4c5b-b112-36a304b66dad), a domain name such as "
                                      "contoso.onmicrosoft.com, or one of " + ", ".join(MULTI_TENANT)
                                      + f" (got {q(tenant)})")
        ok = False
    realm = given.get("realm")
    if realm and (not _PATH_SEGMENT.fullmatch(realm) or realm in (".", "..")):
        src.error(items["realm"][1], f"{where}: realm must be the realm's name as it appears in its URL "
                                     "(/realms/NAME): letters, digits and -._~!$&'()*+,;=:@ only, no spaces "
                                     f"or slashes (got {q(realm)})")
        ok = False

    values: dict[str, Any] = {"name": name, "display_name": name}
    preset_name = given.get("preset")
    if preset_name is not None:
        preset = PRESETS.get(preset_name)
        if preset is None:
            src.error(items["preset"][1], f"{where}: unknown preset {q(preset_name)}{hint(preset_name, PRESETS)}"
                                          f" (one of {', '.join(PRESETS)})")
            return BAD
        for need in preset.needs:
            if not given.get(need):
                src.error(key_node, f"{where}: preset {preset_name} needs {need}")
                ok = False
        values["type"] = preset.type
        values.update(resolve(preset, {k: v for k, v in given.items() if isinstance(v, str)}))
    values.update(given)
    kind = values.get("type", "oidc")
    signed = values.get("token_endpoint_auth_method") == "private_key_jwt"
    if signed and not values.get("client_private_key") and "client_private_key" not in items:
        src.error(key_node, f"{where}: token_endpoint_auth_method private_key_jwt needs client_private_key "
                            "(a PEM private key file)")
        ok = False
    for key in ("client_id",) if signed else ("client_id", "client_secret"):
        if not values.get(key) and key not in items:
            src.error(key_node, f"{where}: {key} is required")
            ok = False
    if kind == "oidc":
        if not values.get("issuer") and "issuer" not in items:
            src.error(key_node, f"{where}: issuer is required (or a preset: {', '.join(PRESETS)})")
            ok = False
        if "openid" not in values.get("scopes", DEFAULT_SCOPES):
            src.error(items["scopes"][1] if "scopes" in items else key_node, f'{where}: scopes must include "openid"')
            ok = False
    elif kind == "oauth2":
        for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint"):
            if not values.get(key) and key not in items:
                src.error(key_node, f"{where}: {key} is required for type: oauth2")
                ok = False
        if "issuer" in given:
            src.error(items["issuer"][0], f"{where}: issuer is for type: oidc; a plain OAuth 2.0 provider "
                                          "has authorization_endpoint, token_endpoint and userinfo_endpoint")
            ok = False
    if values.get("backchannel_logout") and kind != "oidc":
        src.error(items["backchannel_logout"][0], f"{where}: backchannel_logout needs an OpenID Connect provider "
                                                  "(its logout tokens are signed JWTs)")
        ok = False
    if values.get("allowed_tenants") and not values.get("tenant_issuer"):
        src.error(items["allowed_tenants"][0], f"{where}: allowed_tenants is for preset: microsoft")
        ok = False
    if values.get("tenant_issuer") and values.get("tenant") not in MULTI_TENANT:
        if values.get("allowed_tenants") and values.get("tenant"):  # (no tenant: "needs tenant" says it)
            src.error(items["allowed_tenants"][0], f"{where}: allowed_tenants only applies with tenant: "
                                                   "common, organizations or consumers")
            ok = False
        values["tenant_issuer"] = ""  # one tenant: its issuer is exact
    hosted_domain = values.get("hosted_domain")
    if hosted_domain and not any(k == "hd" for k, _ in values.get("auth_params", ())):
        # Google's hint for the account chooser; the ID token's hd claim is what enforces it.
        values["auth_params"] = tuple(values.get("auth_params", ())) + (("hd", hosted_domain),)
    if "type" in given and given["type"] not in PROVIDER_TYPES:
        src.error(items["type"][1], f"{where}: type must be one of {', '.join(PROVIDER_TYPES)}")
        ok = False
    method = values.get("token_endpoint_auth_method")
    if method and method not in TOKEN_AUTH_METHODS:
        src.error(items["token_endpoint_auth_method"][1],
                  f"{where}: token_endpoint_auth_method must be one of {', '.join(TOKEN_AUTH_METHODS)}")
        ok = False
    if not ok:
        return BAD
    return ProviderConfig(**values)


def claim_map(src: Source, node: Node, where: str) -> Any:
    """``claims: {sub: id, email: mail}``: identity field <- the provider's (dotted) field."""
    mapped = src.get_mapping(node, f"{where}: claims must be a mapping of identity field to the provider's "
                                   "field, e.g. {sub: id, email: mail, groups: roles}")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, IDENTITY_FIELDS, f"{where}: claims", items, problems)
    pairs = []
    for field_name, (key_node, value_node) in items.items():
        if field_name not in IDENTITY_FIELDS:
            return BAD
        text = src.get_str(value_node, f"{where}: claims: {field_name}")
        if text is BAD:
            return BAD
        pairs.append((field_name, text))
    return tuple(pairs)


def private_key(src: Source, node: Node, where: str) -> Any:
    """The PEM text of a private key file (RSA, EC P-256/384/521 or Ed25519) for private_key_jwt."""
    text = src.get_str(node, f"{where}: client_private_key")
    if text is BAD:
        return BAD
    label = f"{where}: client_private_key file {q(text)}"
    pem = src.read_file(node, text, label)
    if pem is BAD:
        return BAD
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except Exception:  # any parse failure of untrusted input is a config error
        src.error(node, f"{label} is not an unencrypted PEM private key")
        return BAD
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        src.error(node, f"{label} must be an RSA, EC or Ed25519 key")
        return BAD
    return pem.decode("ascii", "replace")
