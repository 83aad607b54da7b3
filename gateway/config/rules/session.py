"""The ``session`` section: the login cookie's secret(s), name, lifetime and store.

One of the section rules that ``gateway.config.load`` runs; it needs to know
whether login providers are configured (then a secret is required).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from yaml.nodes import Node

from ..schema import MIN_SECRET_BYTES, SessionConfig, yaml_keys
from urllib.parse import urlsplit

from ..source import BAD, TOKEN, Source, is_hostname, q

KEYS = yaml_keys(SessionConfig)


def session(
    src: Source,
    pair: Optional[Tuple[Node, Node]],
    providers: Any,
    providers_pair: Optional[Tuple[Node, Node]],
) -> SessionConfig:
    needs_secret = providers is not BAD and bool(providers)
    values: dict[str, Any] = {}
    items: dict[str, Tuple[Node, Node]] = {}
    if pair is not None:
        mapped = src.get_mapping(
            pair[1], "session must be a mapping, e.g. secret: ${GATEWAY_SESSION_SECRET}"
        )
        if mapped is BAD:
            return SessionConfig()
        items, problems = mapped
        src.keys(pair[1], KEYS, "session", items, problems)

    secret_node = items["secret"][1] if "secret" in items else None
    secret = None
    if secret_node is not None:
        secret = src.get_str(secret_node, "session: secret", empty_ok=True)
        if secret is not BAD and secret is not None:
            if src.secret_ok(secret_node, secret, "session: secret"):
                values["secret"] = secret
    if secret is None and needs_secret:
        where = pair[0] if pair is not None else providers_pair[0]  # type: ignore[index]
        src.error(
            secret_node if secret_node is not None else where,
            "session: secret is required when providers are configured "
            f"(at least {MIN_SECRET_BYTES} random bytes, e.g. secret: ${{GATEWAY_SESSION_SECRET}})",
        )
    if "previous_secrets" in items:
        entries = src.get_str_list(
            items["previous_secrets"][1],
            "session: previous_secrets",
            "[${OLD_SESSION_SECRET}]",
            nonempty=False,
        )
        if entries is not BAD:
            kept = []
            for index, (text, item) in enumerate(entries):
                if src.secret_ok(item, text, f"session: previous_secrets[{index}]"):
                    kept.append(text)
            values["previous_secrets"] = tuple(kept)
    if "cookie_name" in items:
        node = items["cookie_name"][1]
        name = src.get_str(node, "session: cookie_name")
        if name is not BAD:
            if TOKEN.fullmatch(name):
                values["cookie_name"] = name
            else:
                src.error(
                    node,
                    f"session: cookie_name {q(name)} is not a valid cookie name "
                    "(letters, digits and !#$%&'*+-.^_`|~ only)",
                )
    if "lifetime" in items:
        lifetime = src.get_duration(items["lifetime"][1], "session: lifetime", positive=True)
        if lifetime is not BAD:
            values["lifetime"] = lifetime
    if "store" in items:
        node = items["store"][1]
        store = src.get_str(node, "session: store")
        if store is not BAD:
            if store == "cookie":
                values["store"] = store
            else:
                from ..redis_url import check_url as redis_url_problem

                problem = redis_url_problem(store)
                if problem is None:
                    values["store"] = store
                else:
                    src.error(node, f"session: store {problem}")
    if "refresh_grace" in items:
        grace = src.get_duration(items["refresh_grace"][1], "session: refresh_grace", positive=False)
        if grace is not BAD:
            values["refresh_grace"] = grace
    if "cookie_domain" in items:
        node = items["cookie_domain"][1]
        domain = src.get_str(node, "session: cookie_domain")
        if domain is not BAD:
            bare = domain.lower().lstrip(".")
            if "." not in bare or not is_hostname(bare):
                src.error(node, f"session: cookie_domain {q(domain)} must be a domain name such as .example.com")
            else:
                values["cookie_domain"] = "." + bare
    return SessionConfig(**values)


def cookie_domain_covers(src: Source, session: SessionConfig, public_url: str, node: Optional[Node]) -> None:
    """``cookie_domain`` must cover public_url's host, where the callback sets the cookie."""
    if not session.cookie_domain or node is None:
        return
    host = (urlsplit(public_url).hostname or "").lower()
    if not (host == session.cookie_domain[1:] or host.endswith(session.cookie_domain)):
        src.error(node, f"session: cookie_domain {q(session.cookie_domain)} does not cover server.public_url's "
                        f"host {q(host)}: the sign-in callback could not set the session cookie")
