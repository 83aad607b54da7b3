"""The ``server`` section: listeners, public URL, trusted proxies, limits and timeouts.

One of the section rules that ``gateway.config.load`` runs over the parsed
YAML (see ``gateway.config.source``); it returns a frozen ``ServerConfig``.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Optional, Tuple

from yaml.nodes import Node, SequenceNode

from ..schema import DEFAULT_LISTEN, ServerConfig, yaml_keys
from ..source import BAD, BOOL, Scalar, Source, parse_listen, q
from . import tls as tls_rules

KEYS = yaml_keys(ServerConfig)


def server(src: Source, pair: Optional[Tuple[Node, Node]]) -> ServerConfig:
    if pair is None:
        return ServerConfig()
    mapped = src.get_mapping(pair[1], "server must be a mapping, e.g. listen: 127.0.0.1:8080")
    if mapped is BAD:
        return ServerConfig()
    items, problems = mapped
    src.keys(pair[1], KEYS, "server", items, problems)
    values: dict[str, Any] = {}

    def value(key: str) -> Optional[Node]:
        got = items.get(key)
        return got[1] if got else None

    listen = DEFAULT_LISTEN
    if (node := value("listen")) is not None:
        listen = hostport(src, node, "server: listen")
        if listen is not BAD:
            values["listen"] = listen
    if (node := value("public_url")) is not None:
        url = src.get_url(node, "server: public_url")
        if url is not BAD:
            values["public_url"] = url.rstrip("/")
    elif listen is not BAD:
        values["public_url"] = _url_for(listen)
    if (node := value("admin_listen")) is not None:
        scalar = src.scalar(node)
        if isinstance(scalar, Scalar) and (
            (scalar.tag == BOOL and scalar.text.lower() in ("off", "false", "no"))
            or scalar.text.lower() == "off"
        ):
            values["admin_listen"] = None
        else:
            admin = hostport(src, node, "server: admin_listen", off_ok=True)
            if admin is not BAD:
                values["admin_listen"] = admin
                if admin == values.get("listen", DEFAULT_LISTEN) and admin[1] != 0:
                    src.error(node, "server: admin_listen must differ from listen")
    if (node := value("trusted_proxies")) is not None:
        entries = src.get_str_list(node, "server: trusted_proxies", "[10.0.0.0/8]", nonempty=False)
        if entries is not BAD:
            networks = []
            for index, (text, item) in enumerate(entries):
                try:
                    networks.append(ipaddress.ip_network(text.strip(), strict=False))
                except ValueError:
                    src.error(
                        item,
                        f"server: trusted_proxies[{index}] {q(text)} is not an IP network "
                        "(write an address or a CIDR such as 10.0.0.0/8)",
                    )
            values["trusted_proxies"] = tuple(dict.fromkeys(networks))
    if (node := value("shutdown_grace")) is not None:
        grace = src.get_duration(node, "server: shutdown_grace", positive=False)
        if grace is not BAD:
            values["shutdown_grace"] = grace
    if (node := value("workers")) is not None:
        raw = src.get_number(node)
        if raw == "auto":
            values["workers"] = os.cpu_count() or 1
        elif raw is not BAD:
            if isinstance(raw, int) and raw >= 1:
                values["workers"] = raw
            else:
                src.error(node, 'server: workers must be a whole number of at least 1, or "auto"')
    if (node := value("max_body_size")) is not None:
        size = src.get_size(node, "server: max_body_size")
        if size is not BAD:
            values["max_body_size"] = size
    if (node := value("max_header_size")) is not None:
        size = src.get_size(node, "server: max_header_size")
        if size is not BAD:
            if size < 1024:
                src.error(node, "server: max_header_size must be at least 1KB")
            else:
                values["max_header_size"] = size
    for key in ("idle_timeout", "header_timeout", "body_timeout"):
        if (node := value(key)) is not None:
            seconds = src.get_duration(node, f"server: {key}", positive=True)
            if seconds is not BAD:
                values[key] = seconds
    if (node := value("log_format")) is not None:
        text = src.get_str(node, "server: log_format")
        if text is not BAD:
            if text in ("text", "json"):
                values["log_format"] = text
            else:
                src.error(node, f'server: log_format must be "text" or "json", not {q(text)}')
    if (node := value("http_engine")) is not None:
        text = src.get_str(node, "server: http_engine")
        if text is not BAD:
            if text in ("tornado", "httptools"):
                values["http_engine"] = text
            else:
                src.error(node, f'server: http_engine must be "tornado" or "httptools", not {q(text)}')
    if (node := value("tls")) is not None:
        tls = tls_rules.server_tls(src, node)
        if tls is not BAD:
            values["tls"] = tls
    if (node := value("hsts")) is not None:
        seconds = tls_rules.hsts(src, node)
        if seconds is not None:
            values["hsts"] = seconds
    if (node := value("reuse_port")) is not None:
        flag = src.get_bool(node, "server: reuse_port")
        if flag is not BAD:
            values["reuse_port"] = flag
    if (node := value("max_connections")) is not None:
        raw = src.get_number(node)
        if raw is not BAD:
            if isinstance(raw, int) and raw >= 0:
                values["max_connections"] = raw
            else:
                src.error(node, "server: max_connections must be a whole number (0 means no cap)")
    if "tls" in values and "public_url" not in items and str(values.get("public_url", "")).startswith("http://"):
        values["public_url"] = "https://" + values["public_url"][len("http://"):]
    return ServerConfig(**values)


def hostport(src: Source, node: Node, label: str, *, off_ok: bool = False) -> Any:
    scalar = src.scalar(node)
    if scalar is BAD:
        return BAD
    off = ' or "off"' if off_ok else ""
    if scalar is None or scalar.is_null:
        quote = ' (quote IPv6 addresses: "[::1]:8080")' if isinstance(node, SequenceNode) else ""
        src.error(node, f"{label} must be HOST:PORT, e.g. 127.0.0.1:8080{off}{quote}")
        return BAD
    try:
        return parse_listen(scalar.text)
    except ValueError as exc:
        if str(exc) == "must be HOST:PORT":
            src.error(
                node, f"{label} must be HOST:PORT, e.g. 127.0.0.1:8080{off} (got {q(scalar.text)})"
            )
        else:
            src.error(node, f"{label} {q(scalar.text)}: {exc}")
        return BAD


def _url_for(listen: Tuple[str, int]) -> str:
    """The default public_url: where the listener is reachable from this machine."""
    host, port = listen
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
