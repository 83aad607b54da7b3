"""Reading ``routes.yaml``: YAML text in, a validated ``Config`` (or every problem) out.

This is the first step of everything the gateway does: ``gateway check`` and
``gateway serve`` call ``load()``, and a reload (SIGHUP, file change) calls it
again and keeps the old config when it raises. Nothing downstream ever sees
the YAML; it reads the frozen dataclasses of ``gateway.config``.

    >>> from gateway.loader import loads
    >>> cfg = loads('''
    ... routes:
    ...   - name: site
    ...     path: /
    ...     upstream: http://127.0.0.1:9000
    ...     auth: public
    ... ''')
    >>> cfg.routes[0].upstreams
    ('http://127.0.0.1:9000',)

How it works: the text is composed (``yaml.compose`` with the safe loader) into
a node tree, so that every value keeps the line it came from; nothing is ever
constructed by PyYAML. The tree is then walked section by section against the
schema. Every problem is recorded as ``(line, message)`` and the walk goes on,
so one run reports all of them: ``ConfigError.errors`` holds them as
``FILE:LINE: message``, sorted by line.

Environment references ``${NAME}`` and ``${NAME:-default}`` are replaced in
every scalar value (not in keys). As in the shell, the default is used when the
variable is unset or empty; ``$$`` stands for a literal ``$``. A plain
(unquoted) value is re-read as YAML after substitution, so
``strip_prefix: ${STRIP:-true}`` is a boolean.

Top-level keys starting with ``x-`` are ignored, so that they can hold YAML
anchors (``x-defaults: &defaults ...``) merged into routes with ``<<: *defaults``.

Messages never contain a secret value, only its length.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from .config import (
    ASYMMETRIC_ALGORITHMS,
    AUTH_LOGIN,
    AUTH_MODES,
    AUTH_PUBLIC,
    AUTH_TOKEN,
    DEFAULT_LISTEN,
    HMAC_ALGORITHMS,
    MIN_SECRET_BYTES,
    SUPPORTED_ALGORITHMS,
    Config,
    ConfigError,
    ProviderConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    SessionConfig,
    TokenIssuerConfig,
)

__all__ = ["load", "loads", "parse_duration", "parse_size", "parse_listen"]

# --------------------------------------------------------------------------- schema

TOP_KEYS = ("server", "session", "providers", "tokens", "routes")
SERVER_KEYS = (
    "listen",
    "public_url",
    "admin_listen",
    "trusted_proxies",
    "shutdown_grace",
    "workers",
    "max_body_size",
    "max_header_size",
    "idle_timeout",
    "header_timeout",
    "body_timeout",
    "max_connections",
    "reuse_port",
)
SESSION_KEYS = ("secret", "previous_secrets", "cookie_name", "lifetime", "store")
PROVIDER_KEYS = ("issuer", "client_id", "client_secret", "scopes", "groups_claim", "display_name")
TOKEN_KEYS = (
    "issuer",
    "audience",
    "algorithms",
    "secret",
    "public_key",
    "jwks_uri",
    "leeway",
    "groups_claim",
    "email_claim",
    "username_claim",
)
ROUTE_KEYS = (
    "name",
    "host",
    "path",
    "upstream",
    "auth",
    "providers",
    "allow",
    "strip_prefix",
    "preserve_host",
    "timeout",
    "connect_timeout",
    "methods",
    "websocket",
    "max_body_size",
)
RULE_KEYS = ("sub", "email", "email_domain", "group", "claim", "method")

_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# RFC 7230 "token": cookie names and HTTP methods.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MAX_SECONDS = 10 * 365 * 86400.0  # nothing in the gateway waits longer than ten years

_YAML = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_YAML + t for t in ("str", "int", "float", "bool", "null"))
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _YAML + "timestamp"}
_MERGE = _YAML + "merge"

_CONSTRUCTOR = SafeConstructor()
_RESOLVER = Resolver()

# An env reference: "$$", "${...}", or an unterminated "${".
_REFERENCE = re.compile(r"\$(\$|\{([^}]*)\}|\{)")
_REFERENCE_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)

_BAD: Any = object()  # "invalid, and the error is already recorded"
_WHERE = "\x00where\x00"  # placeholder for the item a message is about (YAML text cannot hold NUL)


# --------------------------------------------------------------------------- public API


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
    loader = _Loader(source, os.environ if env is None else env, base_dir)
    return loader.run(text)


def parse_duration(value: Any) -> float:
    """Seconds from ``30s``, ``5m``, ``8h``, ``1d``, ``250ms``, ``1h30m`` or a bare number.

    Raises ``ValueError`` for anything else, negative values included.
    """
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("too large") from None
    elif isinstance(value, str):
        text = value.strip()
        if _DURATION.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        elif re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            raise ValueError("not a duration")
    else:
        raise ValueError("not a duration")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError("not a duration")
    if seconds > _MAX_SECONDS:
        raise ValueError("too large")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``10MB``, ``512KB``, ``1GB``, ``64KiB``, ``10M`` or a bare integer (1024-based)."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("not a size")
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError("not a size")
    number, unit = match.group(1), (match.group(2) or "").lower()
    factor = _SIZE_UNITS[unit[:1] if unit not in ("", "b") else unit]
    if "." in number:
        return int(round(float(number) * factor))
    return int(number) * factor


def parse_listen(value: str) -> Tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` or ``[IPv6]:PORT``; ``ValueError`` otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be HOST:PORT")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("must be HOST:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("must be HOST:PORT")
        if ":" in host:
            raise ValueError("IPv6 addresses must be in brackets, e.g. [::1]:8080")
        if not _is_hostname(host.lower()):
            raise ValueError(f'"{host}" is not a host name or IP address')
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return host, int(port_text)


# --------------------------------------------------------------------------- helpers


def _is_hostname(name: str) -> bool:
    """A lower-case DNS name or IPv4 address (no trailing dot, no port)."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _q(text: str, limit: int = 80) -> str:
    """Quote a value for a message, shortened so one bad line stays one line."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _check_url(
    text: str,
    schemes: Sequence[str] = ("http", "https"),
    *,
    query_ok: bool = False,
    credentials_ok: bool = False,
) -> Optional[str]:
    """None when ``text`` is an acceptable URL, else what is wrong with it (for "LABEL ...")."""
    wanted = " or ".join(f"{s}://" for s in schemes)
    shown = "" if "@" in text else f" (got {_q(text)})"
    if any(c.isspace() for c in text):
        return f"must be an {wanted} URL without spaces{shown}"
    try:
        parts = urlsplit(text)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        return f"must be an {wanted} URL with a host and a valid port{shown}"
    if parts.scheme.lower() not in schemes or not parts.netloc:
        return f"must be an {wanted} URL{shown}"
    if not credentials_ok and (parts.username is not None or parts.password is not None):
        return "must not contain user:password@"
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    elif not _is_hostname(host.rstrip(".")):
        host = ""
    if not host:
        return f"must be an {wanted} URL with a valid host{shown}"
    if "#" in text or (not query_ok and "?" in text):
        return f"must not have a query or fragment{shown}"
    return None


@dataclass
class _Scalar:
    tag: str
    text: str
    substituted: bool

    @property
    def is_null(self) -> bool:
        return self.text == "" or (self.tag == _NULL and not self.substituted)


# --------------------------------------------------------------------------- the walk


class _Loader:
    def __init__(self, source: str, env: Mapping[str, str], base_dir: str):
        self.source = source
        self.env = env
        self.base_dir = base_dir
        self.errors: list[Tuple[int, str]] = []
        self._scalars: dict[int, Any] = {}

    # ---- bookkeeping

    def error(self, where: Node | int, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.errors.append((line, message))

    def run(self, text: str) -> Config:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "syntax error"
            detail = ""
            if exc.problem and exc.context and exc.problem.startswith("but "):
                problem = f"{exc.context} {exc.problem}"  # "expected a single document ... but found another"
            elif exc.problem and exc.context:
                where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
                detail = f" ({exc.context}{where})"
            raise ConfigError([f"{self.source}:{line}: invalid YAML: {problem}{detail}"]) from None
        except yaml.YAMLError as exc:  # ReaderError: characters YAML does not allow
            line = 1
            position = getattr(exc, "position", None)
            if isinstance(position, int):
                line = text.count("\n", 0, position) + 1
            reason = getattr(exc, "reason", None) or "the text is not valid YAML"
            raise ConfigError([f"{self.source}:{line}: invalid YAML: {reason}"]) from None
        except RecursionError:
            raise ConfigError([f"{self.source}:1: invalid YAML: nested too deeply"]) from None

        config = self.config(root)
        if self.errors:
            ordered = sorted(enumerate(self.errors), key=lambda item: (item[1][0], item[0]))
            seen: set[str] = set()
            messages = []
            for _, (line, message) in ordered:
                formatted = f"{self.source}:{line}: {message}"
                if formatted not in seen:
                    seen.add(formatted)
                    messages.append(formatted)
            raise ConfigError(messages)
        return config

    # ---- node access

    def mapping(self, node: Node) -> Tuple[dict[str, Tuple[Node, Node]], list]:
        """The items of a mapping node by key text, merges applied, plus duplicate keys.

        The caller has checked ``isinstance(node, MappingNode)``. Returns
        ``(items, problems)``; ``problems`` are ``(key_node, message_tail)``
        for the caller to report with its own context.
        """
        items: dict[str, Tuple[Node, Node]] = {}
        problems: list[Tuple[Node, str]] = []
        merged: dict[str, Tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self._merge_into(merged, value_node, problems, 0, {id(node)})
                continue
            if not isinstance(key_node, ScalarNode):
                problems.append((key_node, "keys must be plain words"))
                continue
            key = key_node.value
            if key in items:
                first = _line(items[key][0])
                problems.append((key_node, f"duplicate key {_q(key)} {_WHERE} (first at line {first})"))
                continue
            items[key] = (key_node, value_node)
        for key, pair in merged.items():
            items.setdefault(key, pair)
        return items, problems

    def _merge_into(self, merged: dict, node: Node, problems: list, depth: int, seen: set) -> None:
        """Add the keys of the mapping(s) merged by ``<<: node``; earlier ones win.

        ``seen`` holds the mappings already merged, so a cycle or a mapping
        merged many times over (a "billion laughs" of merges) costs nothing.
        """
        if depth > 20:
            problems.append((node, "merge (<<) nested too deeply"))
            return
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                problems.append((source, "merge (<<) needs a mapping or a list of mappings"))
                continue
            if id(source) in seen:
                continue
            seen.add(id(source))
            own: dict = {}
            for key_node, value_node in source.value:  # a mapping's own keys beat what it merges
                if key_node.tag != _MERGE and isinstance(key_node, ScalarNode):
                    own.setdefault(key_node.value, (key_node, value_node))
            for key_node, value_node in source.value:
                if key_node.tag == _MERGE:
                    self._merge_into(own, value_node, problems, depth + 1, seen)
            for key, pair in own.items():
                merged.setdefault(key, pair)

    def keys(
        self,
        node: Node,
        known: Sequence[str],
        where: str,
        items: dict[str, Tuple[Node, Node]],
        problems: list,
    ) -> None:
        """Report duplicate, malformed and unknown keys of one mapping."""
        for key_node, tail in problems:
            if _WHERE in tail:
                self.error(key_node, tail.replace(_WHERE, f"in {where}"))
            else:
                self.error(key_node, f"{where}: {tail}")
        for key, (key_node, _) in items.items():
            if key not in known:
                self.error(key_node, f"unknown key {_q(key)} in {where}{_hint(key, known)}")

    def scalar(self, node: Node) -> Any:
        """A scalar as ``_Scalar`` after ``${...}`` substitution; _BAD on error; None for a non-scalar."""
        if not isinstance(node, ScalarNode):
            return None
        cached = self._scalars.get(id(node))
        if cached is not None:
            return cached
        result: Any
        if node.tag not in _SCALAR_TAGS:
            self.error(node, f'unsupported YAML tag "{node.tag}"')
            result = _BAD
        else:
            result = self._substitute(node)
        self._scalars[id(node)] = result
        return result

    def _substitute(self, node: ScalarNode) -> Any:
        text = node.value
        if "$" not in text:
            return _Scalar(node.tag, text, False)
        failed = False

        def replace(match: re.Match) -> str:
            nonlocal failed
            if match.group(1) == "$":
                return "$"
            body = match.group(2)
            if body is None:
                self.error(node, 'unterminated "${" in a value (write "$$" for a literal "$")')
                failed = True
                return ""
            parsed = _REFERENCE_BODY.fullmatch(body)
            if not parsed:
                self.error(
                    node,
                    f"invalid environment reference {_q('${' + body + '}')}: "
                    "write ${NAME} or ${NAME:-default}, or $$ for a literal $",
                )
                failed = True
                return ""
            name, default = parsed.group(1), parsed.group(2)
            if default is not None and "${" in default:
                self.error(node, f"nested references in the default of ${{{name}}} are not supported")
                failed = True
                return ""
            value = self.env.get(name)
            if default is not None:
                return value if value else default
            if value is None:
                self.error(node, f"environment variable {name} is not set")
                failed = True
                return ""
            return value

        result = _REFERENCE.sub(replace, text)
        if failed:
            return _BAD
        tag = node.tag
        if node.style is None:  # plain: read the result as YAML would have
            tag = _RESOLVER.resolve(ScalarNode, result, (True, False))
        return _Scalar(tag, result, True)

    # ---- typed values; each returns the value or _BAD

    def get_str(self, node: Node, label: str, *, empty_ok: bool = False) -> Any:
        value = self.scalar(node)
        if value is _BAD:
            return _BAD
        if value is None:
            self.error(node, f"{label} must be a string")
            return _BAD
        if value.is_null:
            if empty_ok:
                return None
            self.error(node, f"{label} must not be empty")
            return _BAD
        return value.text

    def get_bool(self, node: Node, label: str) -> Any:
        value = self.scalar(node)
        if value is _BAD:
            return _BAD
        if value is None or value.tag != _BOOL:
            self.error(node, f"{label} must be true or false")
            return _BAD
        return _CONSTRUCTOR.construct_yaml_bool(ScalarNode(_BOOL, value.text))

    def get_number(self, node: Node) -> Any:
        """int or float for a numeric scalar, the text for a string, None otherwise."""
        value = self.scalar(node)
        if value is _BAD:
            return _BAD
        if value is None or value.is_null:
            return None
        if value.tag == _INT:
            return _CONSTRUCTOR.construct_yaml_int(ScalarNode(_INT, value.text))
        if value.tag == _FLOAT:
            return _CONSTRUCTOR.construct_yaml_float(ScalarNode(_FLOAT, value.text))
        if value.tag == _BOOL:
            return None
        return value.text

    def get_duration(self, node: Node, label: str, *, positive: bool) -> Any:
        raw = self.get_number(node)
        if raw is _BAD:
            return _BAD
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            if str(exc) == "too large":
                self.error(node, f"{label} is too large")
            else:
                got = f" (got {_q(str(raw))})" if isinstance(raw, (str, int, float)) else ""
                self.error(node, f"{label} must be a duration such as 30s, 5m, 8h or 250ms{got}")
            return _BAD
        if positive and seconds <= 0:
            self.error(node, f"{label} must be greater than zero")
            return _BAD
        return seconds

    def get_size(self, node: Node, label: str) -> Any:
        raw = self.get_number(node)
        if raw is _BAD:
            return _BAD
        try:
            return parse_size(raw)
        except ValueError:
            got = f" (got {_q(str(raw))})" if isinstance(raw, (str, int, float)) else ""
            self.error(node, f"{label} must be a size such as 10MB, 512KB or 1GB, or a number of bytes{got}")
            return _BAD

    def get_list(self, node: Node, label: str, example: str, *, nonempty: bool = True) -> Any:
        """The item nodes of a sequence, or _BAD."""
        if isinstance(node, ScalarNode) and self.scalar(node) is _BAD:
            return _BAD
        if not isinstance(node, SequenceNode) or node.tag != _YAML + "seq":
            self.error(node, f"{label} must be a list, e.g. {example}")
            return _BAD
        if nonempty and not node.value:
            self.error(node, f"{label} must not be an empty list")
            return _BAD
        return list(node.value)

    def get_str_list(
        self, node: Node, label: str, example: str, *, scalar_ok: bool = False, nonempty: bool = True
    ) -> Any:
        """``[(text, node), ...]`` from a list of strings (or one string when ``scalar_ok``)."""
        if scalar_ok and isinstance(node, ScalarNode):
            text = self.get_str(node, label)
            return _BAD if text is _BAD else [(text, node)]
        items = self.get_list(node, label, example, nonempty=nonempty)
        if items is _BAD:
            return _BAD
        out = []
        ok = True
        for index, item in enumerate(items):
            text = self.get_str(item, f"{label}[{index}]")
            if text is _BAD:
                ok = False
            else:
                out.append((text, item))
        return out if ok else _BAD

    def get_mapping(self, node: Node, message: str) -> Any:
        if isinstance(node, ScalarNode) and self.scalar(node) is _BAD:
            return _BAD
        if not isinstance(node, MappingNode) or node.tag != _YAML + "map":
            self.error(node, message)
            return _BAD
        return self.mapping(node)

    def get_url(self, node: Node, label: str, *, query_ok: bool = False) -> Any:
        text = self.get_str(node, label)
        if text is _BAD:
            return _BAD
        problem = _check_url(text, query_ok=query_ok)
        if problem:
            self.error(node, f"{label} {problem}")
            return _BAD
        return text

    @staticmethod
    def is_null_node(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _NULL and not node.style

    # ---- top level

    def config(self, root: Optional[Node]) -> Config:
        if root is None or self.is_null_node(root):
            self.error(1, 'the file is empty; it needs at least a "routes" list')
            return Config(source=self.source)
        mapped = self.get_mapping(
            root, "the top level must be a mapping with server, session, providers, tokens and routes"
        )
        if mapped is _BAD:
            return Config(source=self.source)
        items, problems = mapped
        for key_node, tail in problems:
            self.error(key_node, tail.replace(_WHERE, "at the top level"))
        for key, (key_node, _) in items.items():
            if key not in TOP_KEYS and not key.startswith("x-"):  # x-...: room for YAML anchors
                self.error(key_node, f"unknown top-level key {_q(key)}{_hint(key, TOP_KEYS)}")

        def section(name: str) -> Optional[Tuple[Node, Node]]:
            pair = items.get(name)
            if pair is None or self.is_null_node(pair[1]):
                return None
            return pair

        server = self.server(section("server"))
        providers = self.providers(section("providers"))
        session = self.session(section("session"), providers, items.get("providers"))
        tokens = self.tokens(section("tokens"))
        routes = self.routes(items.get("routes"), root, providers)
        return Config(
            server=server,
            session=session,
            providers=providers if providers is not _BAD else {},
            tokens=tokens,
            routes=routes,
            source=self.source,
        )

    # ---- server

    def server(self, pair: Optional[Tuple[Node, Node]]) -> ServerConfig:
        if pair is None:
            return ServerConfig()
        mapped = self.get_mapping(pair[1], "server must be a mapping, e.g. listen: 127.0.0.1:8080")
        if mapped is _BAD:
            return ServerConfig()
        items, problems = mapped
        self.keys(pair[1], SERVER_KEYS, "server", items, problems)
        values: dict[str, Any] = {}

        def value(key: str) -> Optional[Node]:
            got = items.get(key)
            return got[1] if got else None

        listen = DEFAULT_LISTEN
        if (node := value("listen")) is not None:
            listen = self.hostport(node, "server: listen")
            if listen is not _BAD:
                values["listen"] = listen
        if (node := value("public_url")) is not None:
            url = self.get_url(node, "server: public_url")
            if url is not _BAD:
                values["public_url"] = url.rstrip("/")
        elif listen is not _BAD:
            values["public_url"] = _url_for(listen)
        if (node := value("admin_listen")) is not None:
            scalar = self.scalar(node)
            if isinstance(scalar, _Scalar) and (
                (scalar.tag == _BOOL and scalar.text.lower() in ("off", "false", "no"))
                or scalar.text.lower() == "off"
            ):
                values["admin_listen"] = None
            else:
                admin = self.hostport(node, "server: admin_listen", off_ok=True)
                if admin is not _BAD:
                    values["admin_listen"] = admin
                    if admin == values.get("listen", DEFAULT_LISTEN) and admin[1] != 0:
                        self.error(node, "server: admin_listen must differ from listen")
        if (node := value("trusted_proxies")) is not None:
            entries = self.get_str_list(node, "server: trusted_proxies", "[10.0.0.0/8]", nonempty=False)
            if entries is not _BAD:
                networks = []
                for index, (text, item) in enumerate(entries):
                    try:
                        networks.append(ipaddress.ip_network(text.strip(), strict=False))
                    except ValueError:
                        self.error(
                            item,
                            f"server: trusted_proxies[{index}] {_q(text)} is not an IP network "
                            "(write an address or a CIDR such as 10.0.0.0/8)",
                        )
                values["trusted_proxies"] = tuple(dict.fromkeys(networks))
        if (node := value("shutdown_grace")) is not None:
            grace = self.get_duration(node, "server: shutdown_grace", positive=False)
            if grace is not _BAD:
                values["shutdown_grace"] = grace
        if (node := value("workers")) is not None:
            raw = self.get_number(node)
            if raw == "auto":
                values["workers"] = os.cpu_count() or 1
            elif raw is not _BAD:
                if isinstance(raw, int) and raw >= 1:
                    values["workers"] = raw
                else:
                    self.error(node, 'server: workers must be a whole number of at least 1, or "auto"')
        if (node := value("max_body_size")) is not None:
            size = self.get_size(node, "server: max_body_size")
            if size is not _BAD:
                values["max_body_size"] = size
        if (node := value("max_header_size")) is not None:
            size = self.get_size(node, "server: max_header_size")
            if size is not _BAD:
                if size < 1024:
                    self.error(node, "server: max_header_size must be at least 1KB")
                else:
                    values["max_header_size"] = size
        for key in ("idle_timeout", "header_timeout", "body_timeout"):
            if (node := value(key)) is not None:
                seconds = self.get_duration(node, f"server: {key}", positive=True)
                if seconds is not _BAD:
                    values[key] = seconds
        if (node := value("reuse_port")) is not None:
            flag = self.get_bool(node, "server: reuse_port")
            if flag is not _BAD:
                values["reuse_port"] = flag
        if (node := value("max_connections")) is not None:
            raw = self.get_number(node)
            if raw is not _BAD:
                if isinstance(raw, int) and raw >= 0:
                    values["max_connections"] = raw
                else:
                    self.error(node, "server: max_connections must be a whole number (0 means no cap)")
        return ServerConfig(**values)

    def hostport(self, node: Node, label: str, *, off_ok: bool = False) -> Any:
        scalar = self.scalar(node)
        if scalar is _BAD:
            return _BAD
        off = ' or "off"' if off_ok else ""
        if scalar is None or scalar.is_null:
            quote = ' (quote IPv6 addresses: "[::1]:8080")' if isinstance(node, SequenceNode) else ""
            self.error(node, f"{label} must be HOST:PORT, e.g. 127.0.0.1:8080{off}{quote}")
            return _BAD
        try:
            return parse_listen(scalar.text)
        except ValueError as exc:
            if str(exc) == "must be HOST:PORT":
                self.error(
                    node, f"{label} must be HOST:PORT, e.g. 127.0.0.1:8080{off} (got {_q(scalar.text)})"
                )
            else:
                self.error(node, f"{label} {_q(scalar.text)}: {exc}")
            return _BAD

    # ---- session

    def session(
        self,
        pair: Optional[Tuple[Node, Node]],
        providers: Any,
        providers_pair: Optional[Tuple[Node, Node]],
    ) -> SessionConfig:
        needs_secret = providers is not _BAD and bool(providers)
        values: dict[str, Any] = {}
        items: dict[str, Tuple[Node, Node]] = {}
        if pair is not None:
            mapped = self.get_mapping(
                pair[1], "session must be a mapping, e.g. secret: ${GATEWAY_SESSION_SECRET}"
            )
            if mapped is _BAD:
                return SessionConfig()
            items, problems = mapped
            self.keys(pair[1], SESSION_KEYS, "session", items, problems)

        secret_node = items["secret"][1] if "secret" in items else None
        secret = None
        if secret_node is not None:
            secret = self.get_str(secret_node, "session: secret", empty_ok=True)
            if secret is not _BAD and secret is not None:
                if self.secret_ok(secret_node, secret, "session: secret"):
                    values["secret"] = secret
        if secret is None and needs_secret:
            where = pair[0] if pair is not None else providers_pair[0]  # type: ignore[index]
            self.error(
                secret_node if secret_node is not None else where,
                "session: secret is required when providers are configured "
                f"(at least {MIN_SECRET_BYTES} random bytes, e.g. secret: ${{GATEWAY_SESSION_SECRET}})",
            )
        if "previous_secrets" in items:
            entries = self.get_str_list(
                items["previous_secrets"][1],
                "session: previous_secrets",
                "[${OLD_SESSION_SECRET}]",
                nonempty=False,
            )
            if entries is not _BAD:
                kept = []
                for index, (text, item) in enumerate(entries):
                    if self.secret_ok(item, text, f"session: previous_secrets[{index}]"):
                        kept.append(text)
                values["previous_secrets"] = tuple(kept)
        if "cookie_name" in items:
            node = items["cookie_name"][1]
            name = self.get_str(node, "session: cookie_name")
            if name is not _BAD:
                if _TOKEN.fullmatch(name):
                    values["cookie_name"] = name
                else:
                    self.error(
                        node,
                        f"session: cookie_name {_q(name)} is not a valid cookie name "
                        "(letters, digits and !#$%&'*+-.^_`|~ only)",
                    )
        if "lifetime" in items:
            lifetime = self.get_duration(items["lifetime"][1], "session: lifetime", positive=True)
            if lifetime is not _BAD:
                values["lifetime"] = lifetime
        if "store" in items:
            node = items["store"][1]
            store = self.get_str(node, "session: store")
            if store is not _BAD:
                if store == "cookie":
                    values["store"] = store
                elif _check_url(store, ("redis", "rediss"), query_ok=True, credentials_ok=True) is None:
                    values["store"] = store
                else:
                    self.error(
                        node, 'session: store must be "cookie" or a redis://HOST:PORT/DB (or rediss://) URL'
                    )
        return SessionConfig(**values)

    def secret_ok(self, node: Node, secret: str, label: str) -> bool:
        size = len(secret.encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            self.error(
                node,
                f"{label} is {size} bytes; it must be at least {MIN_SECRET_BYTES} "
                "(generate one with: openssl rand -base64 32)",
            )
            return False
        return True

    # ---- providers

    def providers(self, pair: Optional[Tuple[Node, Node]]) -> Any:
        if pair is None:
            return {}
        mapped = self.get_mapping(
            pair[1],
            "providers must be a mapping of name to settings, e.g. corp: {issuer: ..., client_id: ...}",
        )
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        self.keys(pair[1], [k for k in items], "providers", items, problems)
        result: dict[str, ProviderConfig] = {}
        bad = False
        for name, (key_node, value_node) in items.items():
            if not _PROVIDER_NAME.fullmatch(name):
                self.error(
                    key_node, f'provider name {_q(name)} may only contain letters, digits, "_" and "-"'
                )
                bad = True
                continue
            provider = self.provider(name, key_node, value_node)
            if provider is _BAD:
                bad = True
            else:
                result[name] = provider
        # A provider with errors still counts as configured, so routes and the
        # session secret are checked as they would be once it is fixed.
        if bad:
            return {**{n: None for n in items if _PROVIDER_NAME.fullmatch(n)}, **result}
        return result

    def provider(self, name: str, key_node: Node, node: Node) -> Any:
        where = f'provider "{name}"'
        mapped = self.get_mapping(node, f"{where} must be a mapping with issuer, client_id and client_secret")
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        self.keys(node, PROVIDER_KEYS, where, items, problems)
        values: dict[str, Any] = {"name": name, "display_name": name}
        ok = True
        for key in ("issuer", "client_id", "client_secret"):
            if key not in items:
                self.error(key_node, f"{where}: {key} is required")
                ok = False
        if "issuer" in items:
            values["issuer"] = self.get_url(items["issuer"][1], f"{where}: issuer")
        for key in ("client_id", "client_secret", "groups_claim", "display_name"):
            if key in items:
                values[key] = self.get_str(items[key][1], f"{where}: {key}")
        if "scopes" in items:
            node = items["scopes"][1]
            scopes = self.get_str_list(node, f"{where}: scopes", "[openid, email, profile]")
            if scopes is not _BAD:
                names = tuple(dict.fromkeys(text for text, _ in scopes))
                if "openid" not in names:
                    self.error(node, f'{where}: scopes must include "openid"')
                    scopes = _BAD
                else:
                    scopes = names
            values["scopes"] = scopes
        if not ok or any(v is _BAD for v in values.values()):
            return _BAD
        return ProviderConfig(**values)

    # ---- tokens

    def tokens(self, pair: Optional[Tuple[Node, Node]]) -> Tuple[TokenIssuerConfig, ...]:
        if pair is None:
            return ()
        entries = self.get_list(
            pair[1], "tokens", "- issuer: https://idp.example.com", nonempty=False
        )
        if entries is _BAD:
            return ()
        result = []
        seen: dict[str, Node] = {}
        for index, node in enumerate(entries):
            token = self.token(index, node, seen)
            if token is not _BAD:
                result.append(token)
        return tuple(result)

    def token(self, index: int, node: Node, seen: dict[str, Node]) -> Any:
        where = f"tokens[{index}]"
        mapped = self.get_mapping(node, f"{where} must be a mapping with issuer, audience and algorithms")
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        issuer: Any = _BAD
        if "issuer" in items:
            issuer = self.get_str(items["issuer"][1], f"{where}: issuer")
            if issuer is not _BAD:
                where = f"{where} (issuer {_q(issuer)})"
                first = seen.get(issuer)
                if first is not None:
                    self.error(
                        items["issuer"][1],
                        f"{where}: this issuer is already configured at line {_line(first)}; "
                        "list every audience and algorithm in one entry",
                    )
                    issuer = _BAD
                else:
                    seen[issuer] = items["issuer"][1]
        else:
            self.error(node, f"{where}: issuer is required")
        self.keys(node, TOKEN_KEYS, where, items, problems)
        values: dict[str, Any] = {"issuer": issuer}

        if "audience" in items:
            aud_node = items["audience"][1]
            scalar = self.scalar(aud_node)
            if isinstance(scalar, _Scalar) and scalar.text == "any":
                values["audience"] = None
            else:
                audiences = self.get_str_list(aud_node, f"{where}: audience", "[api]", scalar_ok=True)
                if audiences is not _BAD:
                    if any(text == "any" for text, _ in audiences):
                        self.error(aud_node, f'{where}: audience "any" cannot be part of a list')
                        audiences = _BAD
                    else:
                        audiences = tuple(dict.fromkeys(text for text, _ in audiences))
                values["audience"] = audiences
        else:
            self.error(
                node,
                f"{where}: audience is required "
                "(a string or a list; write audience: any to accept every audience)",
            )
            values["audience"] = _BAD

        algorithms: Any = _BAD
        if "algorithms" in items:
            algorithms = self.algorithms(items["algorithms"][1], where)
        else:
            self.error(node, f"{where}: algorithms is required, e.g. algorithms: [RS256]")
        values["algorithms"] = algorithms

        key_sources = sorted(
            (k for k in ("secret", "public_key", "jwks_uri") if k in items), key=lambda k: _line(items[k][0])
        )
        if "secret" in items:
            secret_node = items["secret"][1]
            secret = self.get_str(secret_node, f"{where}: secret")
            if secret is not _BAD and not self.secret_ok(secret_node, secret, f"{where}: secret"):
                secret = _BAD
            values["secret"] = secret
        if "public_key" in items and len(key_sources) == 1:  # else only the conflict is reported
            values["public_key"] = self.public_key(items["public_key"][1], where, algorithms)
        if "jwks_uri" in items:
            values["jwks_uri"] = self.get_url(items["jwks_uri"][1], f"{where}: jwks_uri", query_ok=True)
        if "leeway" in items:
            values["leeway"] = self.get_duration(items["leeway"][1], f"{where}: leeway", positive=False)
        for key in ("groups_claim", "email_claim", "username_claim"):
            if key in items:
                values[key] = self.get_str(items[key][1], f"{where}: {key}")

        if len(key_sources) > 1:
            self.error(
                items[key_sources[-1]][0],
                f"{where}: give only one of secret, public_key and jwks_uri "
                f"(found {' and '.join(key_sources)})",
            )
            return _BAD
        if algorithms is not _BAD:
            hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
            public = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
            alg_node = items["algorithms"][1]
            if hmac and public:
                self.error(
                    alg_node,
                    f"{where}: algorithms mix HMAC ({hmac[0]}) and public-key ({public[0]}) algorithms; "
                    "use separate entries (mixing them allows key-confusion attacks)",
                )
                return _BAD
            if hmac and "secret" not in items:
                self.error(alg_node, f"{where}: {hmac[0]} needs a secret (the shared HMAC key)")
                return _BAD
            if public and "secret" in items:
                self.error(
                    items["secret"][0],
                    f"{where}: secret is only for HMAC algorithms (HS256, HS384, HS512); "
                    f"{public[0]} needs public_key, jwks_uri or the issuer's discovery document",
                )
                return _BAD
            if public and not key_sources and issuer is not _BAD and _check_url(issuer) is not None:
                self.error(
                    items["issuer"][1],
                    f"{where}: the issuer is not an http(s) URL, so its keys cannot be discovered; "
                    "give jwks_uri or public_key",
                )
                return _BAD
        if any(v is _BAD for v in values.values()):
            return _BAD
        return TokenIssuerConfig(**values)

    def algorithms(self, node: Node, where: str) -> Any:
        entries = self.get_str_list(node, f"{where}: algorithms", "[RS256]")
        if entries is _BAD:
            return _BAD
        canonical = {a.lower(): a for a in SUPPORTED_ALGORITHMS}
        result = []
        ok = True
        for index, (text, item) in enumerate(entries):
            if text.strip().lower() == "none":
                self.error(item, f"{where}: algorithm none is never accepted")
                ok = False
                continue
            name = canonical.get(text.strip().lower())
            if name is None:
                hint = _hint(text.upper(), SUPPORTED_ALGORITHMS)
                if not hint:
                    hint = " (supported: " + ", ".join(sorted(SUPPORTED_ALGORITHMS)) + ")"
                self.error(item, f"{where}: algorithms[{index}]: unknown algorithm {_q(text)}{hint}")
                ok = False
                continue
            result.append(name)
        return tuple(dict.fromkeys(result)) if ok else _BAD

    def public_key(self, node: Node, where: str, algorithms: Any) -> Any:
        text = self.get_str(node, f"{where}: public_key")
        if text is _BAD:
            return _BAD
        label = f"{where}: public_key"
        if text.lstrip().startswith("-----BEGIN"):
            pem = text
        else:
            path = os.path.join(self.base_dir, os.path.expanduser(text.strip()))
            if os.path.exists(path) and not os.path.isfile(path):  # never block on a FIFO or device
                self.error(node, f"{label} file {_q(text)} is not a regular file")
                return _BAD
            try:
                with open(path, "rb") as fh:
                    pem = fh.read(1 << 20).decode("utf-8", "replace")
            except OSError as exc:
                self.error(node, f"{label} file {_q(text)} cannot be read: {exc.strerror or exc}")
                return _BAD
            label = f"{label} file {_q(text)}"
        if "PRIVATE KEY-----" in pem:
            self.error(
                node, f"{label} holds a private key; give only the public key (-----BEGIN PUBLIC KEY-----)"
            )
            return _BAD
        try:
            if "-----BEGIN CERTIFICATE-----" in pem:
                key = x509.load_pem_x509_certificate(pem.encode()).public_key()
            else:
                key = serialization.load_pem_public_key(pem.encode())
        except Exception:  # any parse failure of untrusted input is a config error
            self.error(node, f"{label} is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
            return _BAD
        if algorithms is not _BAD:
            for alg in algorithms:
                if alg in HMAC_ALGORITHMS:
                    continue
                if isinstance(key, rsa.RSAPublicKey):
                    fits, kind = alg[:2] in ("RS", "PS"), "an RSA key"
                elif isinstance(key, ec.EllipticCurvePublicKey):
                    curve = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}.get(alg)
                    fits, kind = curve == key.curve.name, f"an EC key on {key.curve.name}"
                elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                    fits, kind = alg == "EdDSA", "an EdDSA key"
                else:
                    fits, kind = False, "a key of an unsupported type"
                if not fits:
                    self.error(node, f"{label} is {kind}, which cannot verify {alg}")
                    return _BAD
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            self.error(node, f"{label} is a {key.key_size}-bit RSA key; at least 2048 bits are required")
            return _BAD
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    # ---- routes

    def routes(
        self, pair: Optional[Tuple[Node, Node]], root: Node, providers: Any
    ) -> Tuple[RouteConfig, ...]:
        if pair is None:
            self.error(root, 'no routes: add a "routes" list with at least one route')
            return ()
        if self.is_null_node(pair[1]):
            self.error(pair[0], "routes must list at least one route")
            return ()
        entries = self.get_list(pair[1], "routes", "- name: app", nonempty=False)
        if entries is _BAD:
            return ()
        if not entries:
            self.error(pair[1], "routes must list at least one route")
            return ()
        result: list[RouteConfig] = []
        names: dict[str, Node] = {}
        for index, node in enumerate(entries):
            route = self.route(index, node, providers, names)
            if route is not _BAD:
                result.append(route)
        self.duplicate_routes(result)
        return tuple(result)

    def route(self, index: int, node: Node, providers: Any, names: dict[str, Node]) -> Any:
        where = f"routes[{index}]"
        mapped = self.get_mapping(node, f"{where} must be a mapping with name, path and upstream")
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        name: Any = _BAD
        if "name" in items:
            name_node = items["name"][1]
            name = self.get_str(name_node, f"{where}: name")
            if name is not _BAD:
                if not _ROUTE_NAME.fullmatch(name):
                    self.error(
                        name_node,
                        f'{where}: name {_q(name)} may only contain letters, digits, ".", "_" and "-"',
                    )
                    name = _BAD
                else:
                    where = f'route "{name}"'
                    if name in names:
                        first = _line(names[name])
                        self.error(
                            name_node, f"{where}: the name is already used by the route at line {first}"
                        )
                    else:
                        names[name] = node
        else:
            self.error(node, f"{where}: name is required")
        self.keys(node, ROUTE_KEYS, where, items, problems)
        values: dict[str, Any] = {"name": name, "line": _line(node)}

        def value(key: str) -> Optional[Node]:
            got = items.get(key)
            return got[1] if got else None

        if (n := value("host")) is not None:
            values["host"] = self.route_host(n, where)
        if (n := value("path")) is not None:
            values["path"] = self.route_path(n, where)
        else:
            self.error(node, f"{where}: path is required, e.g. path: /")
            values["path"] = _BAD
        if (n := value("upstream")) is not None:
            values["upstreams"] = self.upstreams(n, where)
        else:
            self.error(node, f"{where}: upstream is required, e.g. upstream: http://127.0.0.1:9000")
            values["upstreams"] = _BAD

        have_providers = providers is _BAD or bool(providers)
        auth: Any = AUTH_LOGIN if have_providers else AUTH_TOKEN
        if (n := value("auth")) is not None:
            auth = self.get_str(n, f"{where}: auth")
            if auth is not _BAD and auth not in AUTH_MODES:
                self.error(n, f"{where}: auth must be login, token or public (got {_q(auth)})")
                auth = _BAD
            if auth == AUTH_LOGIN and not have_providers:
                self.error(n, f'{where}: auth: login needs at least one provider under "providers"')
                auth = _BAD
        values["auth"] = auth

        if (n := value("providers")) is not None:
            values["providers"] = self.route_providers(n, where, auth, providers, "auth" in items)
        elif auth == AUTH_LOGIN and providers is not _BAD:
            values["providers"] = tuple(providers)

        if (n := value("allow")) is not None:
            if auth == AUTH_PUBLIC:
                self.error(
                    items["allow"][0],
                    f"{where}: allow cannot be used with auth: public (a public route admits everyone)",
                )
                values["allow"] = _BAD
            else:
                values["allow"] = self.allow(n, where)

        for key in ("strip_prefix", "preserve_host", "websocket"):
            if (n := value(key)) is not None:
                values[key] = self.get_bool(n, f"{where}: {key}")
        for key in ("timeout", "connect_timeout"):
            if (n := value(key)) is not None:
                values[key] = self.get_duration(n, f"{where}: {key}", positive=True)
        if (n := value("methods")) is not None:
            methods = self.methods(n, f"{where}: methods")
            values["methods"] = methods if methods is _BAD else frozenset(methods)
        if (n := value("max_body_size")) is not None:
            values["max_body_size"] = self.get_size(n, f"{where}: max_body_size")

        if any(v is _BAD for v in values.values()):
            return _BAD
        return RouteConfig(**values)

    def route_host(self, node: Node, where: str) -> Any:
        host = self.get_str(node, f"{where}: host")
        if host is _BAD:
            return _BAD
        name = host.strip().lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if not _is_hostname(bare):
            self.error(
                node,
                f"{where}: host {_q(host)} is not a valid host name "
                "(an exact name such as app.example.com, or *.example.com; no scheme, port or path)",
            )
            return _BAD
        return name

    def route_path(self, node: Node, where: str) -> Any:
        path = self.get_str(node, f"{where}: path")
        if path is _BAD:
            return _BAD
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
            self.error(node, f"{where}: path {_q(path)} {problem}")
            return _BAD
        return path.rstrip("/") or "/"

    def upstreams(self, node: Node, where: str) -> Any:
        if isinstance(node, ScalarNode):
            url = self.get_url(node, f"{where}: upstream")
            return _BAD if url is _BAD else (url.rstrip("/"),)
        items = self.get_list(node, f"{where}: upstream", "http://127.0.0.1:9000 or a list of URLs")
        if items is _BAD:
            return _BAD
        urls = [self.get_url(item, f"{where}: upstream[{index}]") for index, item in enumerate(items)]
        if any(url is _BAD for url in urls):
            return _BAD
        return tuple(url.rstrip("/") for url in urls)

    def route_providers(self, node: Node, where: str, auth: Any, providers: Any, explicit: bool) -> Any:
        if auth is _BAD:
            return _BAD
        if not explicit and providers is not _BAD and not providers:
            self.error(
                node, f'{where}: providers names login providers, but none are configured under "providers"'
            )
            return _BAD
        if auth != AUTH_LOGIN:
            self.error(node, f"{where}: providers only applies to auth: login (this route uses auth: {auth})")
            return _BAD
        entries = self.get_str_list(node, f"{where}: providers", "[corp]")
        if entries is _BAD or providers is _BAD:
            return _BAD
        ok = True
        for text, item in entries:
            if text not in providers:
                self.error(item, f"{where}: unknown provider {_q(text)}{_hint(text, providers)}")
                ok = False
        return tuple(dict.fromkeys(text for text, _ in entries)) if ok else _BAD

    def methods(self, node: Node, label: str, *, scalar_ok: bool = False) -> Any:
        entries = self.get_str_list(node, label, "[GET, POST]", scalar_ok=scalar_ok)
        if entries is _BAD:
            return _BAD
        result = []
        for text, item in entries:
            method = text.strip().upper()
            if not _TOKEN.fullmatch(method):
                self.error(item, f"{label}: {_q(text)} is not an HTTP method")
                return _BAD
            result.append(method)
        return result

    def allow(self, node: Node, where: str) -> Any:
        entries = self.get_list(node, f"{where}: allow", "- email_domain: example.com", nonempty=False)
        if entries is _BAD:
            return _BAD
        if not entries:
            self.error(
                node, f"{where}: allow is an empty list; remove it to admit every authenticated identity"
            )
            return _BAD
        rules = []
        for index, item in enumerate(entries):
            rules.append(self.rule(item, f"{where}: allow[{index}]", f"{where} allow[{index}]"))
        return _BAD if any(r is _BAD for r in rules) else tuple(rules)

    def rule(self, node: Node, label: str, where: str) -> Any:
        mapped = self.get_mapping(
            node, f"{label} must be a mapping of conditions such as email_domain: example.com"
        )
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        self.keys(node, RULE_KEYS, where, items, problems)
        if not items:
            self.error(node, f"{label} is empty; a rule needs at least one of {', '.join(RULE_KEYS)}")
            return _BAD
        values: dict[str, Any] = {}
        for key in ("sub", "email", "email_domain", "group"):
            if key not in items:
                continue
            entries = self.get_str_list(items[key][1], f"{label}: {key}", "[a, b]", scalar_ok=True)
            if entries is _BAD:
                values[key] = _BAD
                continue
            accepted = set()
            for text, item in entries:
                text = text.strip()
                if key == "email":
                    text = text.lower()
                    local, at, domain = text.rpartition("@")
                    if not at or not local or not _is_hostname(domain):
                        self.error(item, f"{label}: email {_q(text)} is not an email address")
                        values[key] = _BAD
                elif key == "email_domain":
                    text = text.lower().removeprefix("@")
                    if not _is_hostname(text):
                        self.error(
                            item, f"{label}: email_domain {_q(text)} is not a domain name such as example.com"
                        )
                        values[key] = _BAD
                accepted.add(text)
            values.setdefault(key, frozenset(accepted))
        if "method" in items:
            methods = self.methods(items["method"][1], f"{label}: method", scalar_ok=True)
            values["method"] = methods if methods is _BAD else frozenset(methods)
        if "claim" in items:
            values["claim"] = self.claims(items["claim"][1], label, where)
        if any(v is _BAD for v in values.values()):
            return _BAD
        return Rule(**values)

    def claims(self, node: Node, label: str, where: str) -> Any:
        mapped = self.get_mapping(
            node, f"{label}: claim must be a mapping of claim name to value(s), e.g. {{tenant: acme}}"
        )
        if mapped is _BAD:
            return _BAD
        items, problems = mapped
        self.keys(node, list(items), f"{where} claim", items, problems)
        if not items:
            self.error(node, f"{label}: claim must name at least one claim")
            return _BAD
        result = []
        ok = True
        for name, (_, value_node) in items.items():
            nodes = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            if isinstance(value_node, SequenceNode) and not nodes:
                self.error(value_node, f"{label}: claim {name} must not be an empty list")
                ok = False
                continue
            accepted = set()
            for item in nodes:
                text = self.claim_value(item, f"{label}: claim {name}")
                if text is _BAD:
                    ok = False
                else:
                    accepted.add(text)
            result.append((name, frozenset(accepted)))
        return tuple(sorted(result, key=lambda pair: pair[0])) if ok else _BAD

    def claim_value(self, node: Node, label: str) -> Any:
        """A claim value as the policy compares it: str(), with booleans as true/false."""
        scalar = self.scalar(node)
        if scalar is _BAD:
            return _BAD
        if scalar is None or scalar.is_null:
            self.error(node, f"{label} must be a string, number or boolean (or a list of them)")
            return _BAD
        try:
            if scalar.tag == _BOOL:
                value = _CONSTRUCTOR.construct_yaml_bool(ScalarNode(_BOOL, scalar.text))
                return "true" if value else "false"
            if scalar.tag == _INT:
                return str(_CONSTRUCTOR.construct_yaml_int(ScalarNode(_INT, scalar.text)))
            if scalar.tag == _FLOAT:
                return str(_CONSTRUCTOR.construct_yaml_float(ScalarNode(_FLOAT, scalar.text)))
        except (ValueError, OverflowError):
            pass
        return scalar.text

    def duplicate_routes(self, routes: Sequence[RouteConfig]) -> None:
        seen: dict[Tuple[Optional[str], str], list[RouteConfig]] = {}
        for route in routes:
            for other in seen.get((route.host, route.path), []):
                if route.methods is None or other.methods is None or route.methods & other.methods:
                    where = f"host {route.host} and path" if route.host else "path"
                    self.error(
                        route.line,
                        f'route "{route.name}": same {where} {route.path} as route "{other.name}" '
                        f"(line {other.line}) with overlapping methods; "
                        "give one of them a different host, path or methods",
                    )
                    break
            seen.setdefault((route.host, route.path), []).append(route)


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
