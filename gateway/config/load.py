"""Reading ``routes.yaml``: YAML text in, a validated ``Config`` (or every problem) out.

This is the first step of everything the gateway does: ``gateway check`` and
``gateway serve`` call ``load()``, and a reload (SIGHUP, file change) calls it
again and keeps the old config when it raises. It composes the text
(``source``), runs each section's rules (``rules``) and raises one
``ConfigError`` with every problem as ``FILE:LINE: message``, sorted by line.

    >>> from gateway.config import loads
    >>> cfg = loads('''
    ... routes:
    ...   - name: site
    ...     path: /
    ...     upstream: http://127.0.0.1:9000
    ...     auth: public
    ... ''')
    >>> cfg.routes[0].upstreams
    ('http://127.0.0.1:9000',)

Top-level keys starting with ``x-`` are ignored, so that they can hold YAML
anchors (``x-defaults: &defaults ...``) merged into routes with ``<<: *defaults``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from urllib.parse import urlsplit
from typing import Mapping, Optional, Tuple

from yaml.nodes import MappingNode, Node

from .rules import providers as providers_rules
from .rules import routes as routes_rules
from .rules import server as server_rules
from .rules import session as session_rules
from .rules import signing as signing_rules
from .rules import tokens as tokens_rules
from .schema import AUTH_TOKEN, Config, ConfigError, ServerConfig, yaml_keys
from .source import BAD, WHERE, Source, compose, hint, line_of, q

__all__ = ["load", "loads"]

TOP_KEYS = yaml_keys(Config)


def load(path: str, env: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate the config file at ``path``.

    Raises ``ConfigError`` listing every problem as ``PATH:LINE: message``
    (``PATH`` as given). A file that cannot be read gives a single message.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read the config file: {reason}"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{path}:{line}: the file is not valid UTF-8 text"]) from None
    return loads(text, source=path, env=env, base_dir=os.path.dirname(os.path.abspath(path)))


def loads(
    text: str,
    source: str = "routes.yaml",
    env: Optional[Mapping[str, str]] = None,
    *,
    base_dir: Optional[str] = None,
) -> Config:
    """Validate config ``text``; ``source`` names it in messages.

    ``env`` replaces ``os.environ`` for ``${NAME}`` references. ``base_dir`` is
    where relative ``public_key`` file paths are resolved (default: the
    directory of ``source``).
    """
    if base_dir is None:
        base_dir = os.path.dirname(source)
    src = Source(source, os.environ if env is None else env, base_dir)
    config = _config(src, compose(source, text))
    if src.errors:
        raise ConfigError(src.messages())
    return config


def _config(src: Source, root: Optional[Node]) -> Config:
    if root is None or src.is_null_node(root):
        src.error(1, 'the file is empty; it needs at least a "routes" list')
        return Config(source=src.source)
    mapped = src.get_mapping(
        root, "the top level must be a mapping with server, session, providers, tokens and routes"
    )
    if mapped is BAD:
        return Config(source=src.source)
    items, problems = mapped
    for key_node, tail in problems:
        src.error(key_node, tail.replace(WHERE, "at the top level"))
    for key, (key_node, _) in items.items():
        if key not in TOP_KEYS and not key.startswith("x-"):  # x-...: room for YAML anchors
            src.error(key_node, f"unknown top-level key {q(key)}{hint(key, TOP_KEYS)}")

    def section(name: str) -> Optional[Tuple[Node, Node]]:
        pair = items.get(name)
        if pair is None or src.is_null_node(pair[1]):
            return None
        return pair

    server = server_rules.server(src, section("server"))
    providers = providers_rules.providers(src, section("providers"))
    session = session_rules.session(src, section("session"), providers, items.get("providers"))
    if isinstance(server, ServerConfig) and section("session") is not None:
        session_node = src.mapping(items["session"][1])[0].get("cookie_domain") if isinstance(
            items["session"][1], MappingNode) else None
        session_rules.cookie_domain_covers(src, session, server.public_url,
                                           session_node[1] if session_node else None)
    tokens = tokens_rules.tokens(src, section("tokens"))
    signing = signing_rules.signing(src, section("signing"))
    routes = routes_rules.routes(src, items.get("routes"), root, providers)
    config = Config(
        server=server,
        session=session,
        providers=providers if providers is not BAD else {},
        tokens=tokens,
        signing=signing,
        routes=routes,
        source=src.source,
    )
    return replace(config, warnings=tuple(_warnings(src, config, items)))


def _warnings(src: Source, config: Config, items: dict) -> list[str]:
    """What loads but cannot work as it was probably meant: told, not refused."""
    found: list[Tuple[int, str]] = []

    def warn(line: int, message: str) -> None:
        found.append((line, f"{src.source}:{line}: warning: {message}"))

    if isinstance(config.routes, tuple) and isinstance(config.tokens, tuple) and not config.tokens:
        for route in config.routes:
            if route.auth == AUTH_TOKEN:
                warn(route.line, f'route "{route.name}" has auth: token but no tokens: issuer is configured, '
                                 "so every request to it gets 401")
    server = config.server
    server_pair = items.get("server")
    explicit_public_url = False
    if server_pair is not None and not src.is_null_node(server_pair[1]):
        keys, _ = src.mapping(server_pair[1]) if isinstance(server_pair[1], MappingNode) else ({}, [])
        explicit_public_url = "public_url" in keys
    if (config.providers and not explicit_public_url and isinstance(server, ServerConfig)
            and server.listen[0] in ("0.0.0.0", "::", "")):
        line = line_of(items["providers"][0]) if "providers" in items else 1
        warn(line, f"browser login while listening on {server.listen[0]} without server.public_url: the "
                   f"redirect URI becomes {server.public_url}/oauth2/callback, which browsers elsewhere cannot "
                   "reach; set server.public_url to the address people use")
    session = config.session
    if (config.providers and isinstance(server, ServerConfig) and session.store == "cookie"
            and server.workers != 1 and isinstance(config.routes, tuple)):
        public_host = (urlsplit(server.public_url).hostname or "").lower()
        domain = session.cookie_domain
        foreign = [r for r in config.routes if r.auth == "login" and r.host and r.host != public_host
                   and not (domain and (r.host == domain[1:] or r.host.endswith(domain)))]
        if foreign:
            warn(foreign[0].line, f'route "{foreign[0].name}" logs in on host {foreign[0].host}, which is handed '
                                  "its session from public_url's callback; with several workers that handoff "
                                  "needs session.store: redis:// (or set session.cookie_domain)")
    backchannel = [p for p in config.providers.values() if p is not None and p.backchannel_logout]
    if backchannel and session.store == "cookie":
        warn(line_of(items["providers"][0]) if "providers" in items else 1,
             f'provider "{backchannel[0].name}" has backchannel_logout with session.store: cookie: a logout ends '
             "sessions in this instance (all its workers) only; several instances need session.store: redis://")
    return [text for _, text in sorted(found, key=lambda item: item[0])]
