"""The ``routes`` section: each route's match, upstreams, auth mode and allow rules.

One of the section rules that ``gateway.config.load`` runs, last, since routes
refer to the providers. Also checks that no two routes match the same
requests.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence, Tuple

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..schema import (
    AUTH_LOGIN,
    AUTH_MODES,
    AUTH_PUBLIC,
    AUTH_TOKEN,
    Assertion,
    RouteConfig,
    Rule,
    yaml_keys,
)
from ..source import (
    BAD,
    BOOL,
    CONSTRUCTOR,
    FLOAT,
    INT,
    TOKEN,
    Source,
    hint,
    is_hostname,
    line_of,
    q,
)

from . import tls as tls_rules

KEYS = yaml_keys(RouteConfig)
RULE_KEYS = yaml_keys(Rule)
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def routes(
    src: Source, pair: Optional[Tuple[Node, Node]], root: Node, providers: Any
) -> Tuple[RouteConfig, ...]:
    if pair is None:
        src.error(root, 'no routes: add a "routes" list with at least one route')
        return ()
    if src.is_null_node(pair[1]):
        src.error(pair[0], "routes must list at least one route")
        return ()
    entries = src.get_list(pair[1], "routes", "- name: app", nonempty=False)
    if entries is BAD:
        return ()
    if not entries:
        src.error(pair[1], "routes must list at least one route")
        return ()
    result: list[RouteConfig] = []
    names: dict[str, Node] = {}
    for index, node in enumerate(entries):
        route = route_entry(src, index, node, providers, names)
        if route is not BAD:
            result.append(route)
    duplicate_routes(src, result)
    return tuple(result)


def route_entry(src: Source, index: int, node: Node, providers: Any, names: dict[str, Node]) -> Any:
    where = f"routes[{index}]"
    mapped = src.get_mapping(node, f"{where} must be a mapping with name, path and upstream")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    name: Any = BAD
    if "name" in items:
        name_node = items["name"][1]
        name = src.get_str(name_node, f"{where}: name")
        if name is not BAD:
            if not _ROUTE_NAME.fullmatch(name):
                src.error(
                    name_node,
                    f'{where}: name {q(name)} may only contain letters, digits, ".", "_" and "-"',
                )
                name = BAD
            else:
                where = f'route "{name}"'
                if name in names:
                    first = line_of(names[name])
                    src.error(
                        name_node, f"{where}: the name is already used by the route at line {first}"
                    )
                else:
                    names[name] = node
    else:
        src.error(node, f"{where}: name is required")
    src.keys(node, KEYS, where, items, problems)
    values: dict[str, Any] = {"name": name, "line": line_of(node)}

    def value(key: str) -> Optional[Node]:
        got = items.get(key)
        return got[1] if got else None

    if (n := value("host")) is not None:
        values["host"] = route_host(src, n, where)
    if (n := value("path")) is not None:
        values["path"] = route_path(src, n, where)
    else:
        src.error(node, f"{where}: path is required, e.g. path: /")
        values["path"] = BAD
    if (n := value("upstream")) is not None:
        values["upstreams"] = upstreams(src, n, where)
    else:
        src.error(node, f"{where}: upstream is required, e.g. upstream: http://127.0.0.1:9000")
        values["upstreams"] = BAD

    have_providers = providers is BAD or bool(providers)
    auth: Any = AUTH_LOGIN if have_providers else AUTH_TOKEN
    if (n := value("auth")) is not None:
        auth = src.get_str(n, f"{where}: auth")
        if auth is not BAD and auth not in AUTH_MODES:
            src.error(n, f"{where}: auth must be login, token or public (got {q(auth)})")
            auth = BAD
        if auth == AUTH_LOGIN and not have_providers:
            src.error(n, f'{where}: auth: login needs at least one provider under "providers"')
            auth = BAD
    values["auth"] = auth

    if (n := value("providers")) is not None:
        values["providers"] = route_providers(src, n, where, auth, providers, "auth" in items)
    elif auth == AUTH_LOGIN and providers is not BAD:
        values["providers"] = tuple(providers)

    if (n := value("allow")) is not None:
        if auth == AUTH_PUBLIC:
            src.error(
                items["allow"][0],
                f"{where}: allow cannot be used with auth: public (a public route admits everyone)",
            )
            values["allow"] = BAD
        else:
            values["allow"] = allow(src, n, where)

    for key in ("strip_prefix", "preserve_host", "websocket"):
        if (n := value(key)) is not None:
            values[key] = src.get_bool(n, f"{where}: {key}")
    for key in ("timeout", "connect_timeout"):
        if (n := value(key)) is not None:
            values[key] = src.get_duration(n, f"{where}: {key}", positive=True)
    if (n := value("methods")) is not None:
        methods = http_methods(src, n, f"{where}: methods")
        values["methods"] = methods if methods is BAD else frozenset(methods)
    if (n := value("max_body_size")) is not None:
        values["max_body_size"] = src.get_size(n, f"{where}: max_body_size")
    if (n := value("websocket_origins")) is not None:
        values["websocket_origins"] = websocket_origins(src, n, f"{where}: websocket_origins")
    if (n := value("tls")) is not None:
        values["tls"] = tls_rules.upstream_tls(src, n, where, values.get("upstreams"))
    if (n := value("identity_assertion")) is not None:
        values["identity_assertion"] = identity_assertion(src, n, f"{where}: identity_assertion")
        if values["identity_assertion"] not in (BAD, None) and values.get("auth") == AUTH_PUBLIC:
            src.error(n, f"{where}: identity_assertion needs an authenticated route (auth: login or token)")
            values["identity_assertion"] = BAD

    if any(v is BAD for v in values.values()):
        return BAD
    return RouteConfig(**values)


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


def websocket_origins(src: Source, node: Node, label: str) -> Any:
    """Origins as browsers send them: scheme://host[:port], no path, lower-cased."""
    items = src.get_str_list(node, label, "[https://app.example.com]", nonempty=False)
    if items is BAD:
        return BAD
    out = []
    for text, item in items:
        if not _ORIGIN.fullmatch(text):
            src.error(item, f'{label}: "{text}" is not an origin like https://app.example.com (no path)')
            return BAD
        out.append(text.lower())
    return tuple(out)


def identity_assertion(src: Source, node: Node, label: str) -> Any:
    """``true``, ``false``, or ``{header: X-Name, audience: aud}``."""
    if isinstance(node, ScalarNode):
        on = src.get_bool(node, label)
        return BAD if on is BAD else (Assertion() if on else None)
    mapped = src.get_mapping(node, f"{label} must be true or a mapping with header and audience")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, ("header", "audience"), label, items, problems)
    values: dict[str, Any] = {}
    if "header" in items:
        name = src.get_str(items["header"][1], f"{label}: header")
        if name is not BAD and not TOKEN.fullmatch(name):
            src.error(items["header"][1], f"{label}: header {q(name)} is not a valid header name")
            name = BAD
        values["header"] = name
    if "audience" in items:
        values["audience"] = src.get_str(items["audience"][1], f"{label}: audience")
    if any(v is BAD for v in values.values()) or any(k not in ("header", "audience") for k in items):
        return BAD
    return Assertion(**values)


def route_host(src: Source, node: Node, where: str) -> Any:
    host = src.get_str(node, f"{where}: host")
    if host is BAD:
        return BAD
    name = host.strip().lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    if not is_hostname(bare):
        src.error(
            node,
            f"{where}: host {q(host)} is not a valid host name "
            "(an exact name such as app.example.com, or *.example.com; no scheme, port or path)",
        )
        return BAD
    return name


def route_path(src: Source, node: Node, where: str) -> Any:
    path = src.get_str(node, f"{where}: path")
    if path is BAD:
        return BAD
    problem = None
    if not path.startswith("/"):
        problem = 'must start with "/"'
    elif "?" in path or "#" in path:
        problem = 'must not contain "?" or "#" (a route matches paths only)'
    elif any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        problem = "must not contain spaces or control characters"
    elif "//" in path:
        problem = 'must not contain "//"'
    elif any(segment in (".", "..") for segment in path.split("/")):
        problem = 'must not contain "." or ".." segments'
    if problem:
        src.error(node, f"{where}: path {q(path)} {problem}")
        return BAD
    return path.rstrip("/") or "/"


def upstreams(src: Source, node: Node, where: str) -> Any:
    if isinstance(node, ScalarNode):
        url = src.get_url(node, f"{where}: upstream")
        return BAD if url is BAD else (url.rstrip("/"),)
    items = src.get_list(node, f"{where}: upstream", "http://127.0.0.1:9000 or a list of URLs")
    if items is BAD:
        return BAD
    urls = [src.get_url(item, f"{where}: upstream[{index}]") for index, item in enumerate(items)]
    if any(url is BAD for url in urls):
        return BAD
    return tuple(url.rstrip("/") for url in urls)


def route_providers(src: Source, node: Node, where: str, auth: Any, providers: Any, explicit: bool) -> Any:
    if auth is BAD:
        return BAD
    if not explicit and providers is not BAD and not providers:
        src.error(
            node, f'{where}: providers names login providers, but none are configured under "providers"'
        )
        return BAD
    if auth != AUTH_LOGIN:
        src.error(node, f"{where}: providers only applies to auth: login (this route uses auth: {auth})")
        return BAD
    entries = src.get_str_list(node, f"{where}: providers", "[corp]")
    if entries is BAD or providers is BAD:
        return BAD
    ok = True
    for text, item in entries:
        if text not in providers:
            src.error(item, f"{where}: unknown provider {q(text)}{hint(text, providers)}")
            ok = False
    return tuple(dict.fromkeys(text for text, _ in entries)) if ok else BAD


def http_methods(src: Source, node: Node, label: str, *, scalar_ok: bool = False) -> Any:
    entries = src.get_str_list(node, label, "[GET, POST]", scalar_ok=scalar_ok)
    if entries is BAD:
        return BAD
    result = []
    for text, item in entries:
        method = text.strip().upper()
        if not TOKEN.fullmatch(method):
            src.error(item, f"{label}: {q(text)} is not an HTTP method")
            return BAD
        result.append(method)
    return result


def allow(src: Source, node: Node, where: str) -> Any:
    entries = src.get_list(node, f"{where}: allow", "- email_domain: example.com", nonempty=False)
    if entries is BAD:
        return BAD
    if not entries:
        src.error(
            node, f"{where}: allow is an empty list; remove it to admit every authenticated identity"
        )
        return BAD
    rules = []
    for index, item in enumerate(entries):
        rules.append(rule(src, item, f"{where}: allow[{index}]", f"{where} allow[{index}]"))
    return BAD if any(r is BAD for r in rules) else tuple(rules)


def rule(src: Source, node: Node, label: str, where: str) -> Any:
    mapped = src.get_mapping(
        node, f"{label} must be a mapping of conditions such as email_domain: example.com"
    )
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, RULE_KEYS, where, items, problems)
    if not items:
        src.error(node, f"{label} is empty; a rule needs at least one of {', '.join(RULE_KEYS)}")
        return BAD
    values: dict[str, Any] = {}
    for key in ("sub", "email", "email_domain", "group"):
        if key not in items:
            continue
        entries = src.get_str_list(items[key][1], f"{label}: {key}", "[a, b]", scalar_ok=True)
        if entries is BAD:
            values[key] = BAD
            continue
        accepted = set()
        for text, item in entries:
            text = text.strip()
            if key == "email":
                text = text.lower()
                local, at, domain = text.rpartition("@")
                if not at or not local or not is_hostname(domain):
                    src.error(item, f"{label}: email {q(text)} is not an email address")
                    values[key] = BAD
            elif key == "email_domain":
                text = text.lower().removeprefix("@")
                if not is_hostname(text):
                    src.error(
                        item, f"{label}: email_domain {q(text)} is not a domain name such as example.com"
                    )
                    values[key] = BAD
            accepted.add(text)
        values.setdefault(key, frozenset(accepted))
    if "method" in items:
        methods = http_methods(src, items["method"][1], f"{label}: method", scalar_ok=True)
        values["method"] = methods if methods is BAD else frozenset(methods)
    if "claim" in items:
        values["claim"] = claims(src, items["claim"][1], label, where)
    if any(v is BAD for v in values.values()):
        return BAD
    return Rule(**values)


def claims(src: Source, node: Node, label: str, where: str) -> Any:
    mapped = src.get_mapping(
        node, f"{label}: claim must be a mapping of claim name to value(s), e.g. {{tenant: acme}}"
    )
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, list(items), f"{where} claim", items, problems)
    if not items:
        src.error(node, f"{label}: claim must name at least one claim")
        return BAD
    result = []
    ok = True
    for name, (_, value_node) in items.items():
        nodes = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        if isinstance(value_node, SequenceNode) and not nodes:
            src.error(value_node, f"{label}: claim {name} must not be an empty list")
            ok = False
            continue
        accepted = set()
        for item in nodes:
            text = claim_value(src, item, f"{label}: claim {name}")
            if text is BAD:
                ok = False
            else:
                accepted.add(text)
        result.append((name, frozenset(accepted)))
    return tuple(sorted(result, key=lambda pair: pair[0])) if ok else BAD


def claim_value(src: Source, node: Node, label: str) -> Any:
    """A claim value as the policy compares it: str(), with booleans as true/false."""
    scalar = src.scalar(node)
    if scalar is BAD:
        return BAD
    if scalar is None or scalar.is_null:
        src.error(node, f"{label} must be a string, number or boolean (or a list of them)")
        return BAD
    try:
        if scalar.tag == BOOL:
            value = CONSTRUCTOR.construct_yaml_bool(ScalarNode(BOOL, scalar.text))
            return "true" if value else "false"
        if scalar.tag == INT:
            return str(CONSTRUCTOR.construct_yaml_int(ScalarNode(INT, scalar.text)))
        if scalar.tag == FLOAT:
            return str(CONSTRUCTOR.construct_yaml_float(ScalarNode(FLOAT, scalar.text)))
    except (ValueError, OverflowError):
        pass
    return scalar.text


def duplicate_routes(src: Source, routes: Sequence[RouteConfig]) -> None:
    seen: dict[Tuple[Optional[str], str], list[RouteConfig]] = {}
    for route in routes:
        for other in seen.get((route.host, route.path), []):
            if route.methods is None or other.methods is None or route.methods & other.methods:
                where = f"host {route.host} and path" if route.host else "path"
                src.error(
                    route.line,
                    f'route "{route.name}": same {where} {route.path} as route "{other.name}" '
                    f"(line {other.line}) with overlapping methods; "
                    "give one of them a different host, path or methods",
                )
                break
        seen.setdefault((route.host, route.path), []).append(route)
