"""The ``providers`` section: OpenID Connect login providers by name.

One of the section rules that ``gateway.config.load`` runs; routes with
``auth: login`` refer to these names.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

from yaml.nodes import Node

from ..schema import ProviderConfig, yaml_keys
from ..source import BAD, Source, q

KEYS = yaml_keys(ProviderConfig)
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]+")


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
    mapped = src.get_mapping(node, f"{where} must be a mapping with issuer, client_id and client_secret")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, KEYS, where, items, problems)
    values: dict[str, Any] = {"name": name, "display_name": name}
    ok = True
    for key in ("issuer", "client_id", "client_secret"):
        if key not in items:
            src.error(key_node, f"{where}: {key} is required")
            ok = False
    if "issuer" in items:
        values["issuer"] = src.get_url(items["issuer"][1], f"{where}: issuer")
    for key in ("client_id", "client_secret", "groups_claim", "display_name"):
        if key in items:
            values[key] = src.get_str(items[key][1], f"{where}: {key}")
    if "post_logout_redirect_uri" in items:
        values["post_logout_redirect_uri"] = src.get_url(items["post_logout_redirect_uri"][1],
                                                         f"{where}: post_logout_redirect_uri", query_ok=True)
    if "allow_unverified_email" in items:
        values["allow_unverified_email"] = src.get_bool(items["allow_unverified_email"][1],
                                                        f"{where}: allow_unverified_email")
    if "scopes" in items:
        node = items["scopes"][1]
        scopes = src.get_str_list(node, f"{where}: scopes", "[openid, email, profile]")
        if scopes is not BAD:
            names = tuple(dict.fromkeys(text for text, _ in scopes))
            if "openid" not in names:
                src.error(node, f'{where}: scopes must include "openid"')
                scopes = BAD
            else:
                scopes = names
        values["scopes"] = scopes
    if not ok or any(v is BAD for v in values.values()):
        return BAD
    return ProviderConfig(**values)
