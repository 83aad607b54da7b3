"""The YAML side of the config: nodes with their lines, merges, ``${ENV}``, typed values.

Loading the config (``gateway.config.load``) composes the text into a node
tree, so that every value keeps the line it came from; nothing is ever
constructed by PyYAML. A ``Source`` then hands the section rules
(``gateway.config.rules``) typed values from nodes and collects every problem
as ``(line, message)``, so one run reports all of them. A getter returns the
value, or ``BAD`` when it is invalid and the error is already recorded.

Environment references ``${NAME}`` and ``${NAME:-default}`` are replaced in
every scalar value (not in keys). As in the shell, the default is used when the
variable is unset or empty; ``$$`` stands for a literal ``$``. A plain
(unquoted) value is re-read as YAML after substitution, so
``strip_prefix: ${STRIP:-true}`` is a boolean. Merge keys (``<<: *anchor``)
are applied; a mapping's own keys win.

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
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from .schema import MIN_SECRET_BYTES, ConfigError

# RFC 7230 "token": cookie names and HTTP methods.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MAX_SECONDS = 10 * 365 * 86400.0  # nothing in the gateway waits longer than ten years

YAML_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (YAML_TAG + t for t in ("str", "int", "float", "bool", "null"))
SCALAR_TAGS = {STR, INT, FLOAT, BOOL, NULL, YAML_TAG + "timestamp"}
MERGE = YAML_TAG + "merge"

CONSTRUCTOR = SafeConstructor()
RESOLVER = Resolver()

# An env reference: "$$", "${...}", or an unterminated "${".
_REFERENCE = re.compile(r"\$(\$|\{([^}]*)\}|\{)")
_REFERENCE_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)

BAD: Any = object()  # "invalid, and the error is already recorded"
WHERE = "\x00where\x00"  # placeholder for the item a message is about (YAML text cannot hold NUL)



# --------------------------------------------------------------------------- plain values


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
        if not is_hostname(host.lower()):
            raise ValueError(f'"{host}" is not a host name or IP address')
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return host, int(port_text)



# --------------------------------------------------------------------------- helpers


def is_hostname(name: str) -> bool:
    """A lower-case DNS name or IPv4 address (no trailing dot, no port)."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def q(text: str, limit: int = 80) -> str:
    """Quote a value for a message, shortened so one bad line stays one line."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def check_url(
    text: str,
    schemes: Sequence[str] = ("http", "https"),
    *,
    query_ok: bool = False,
    credentials_ok: bool = False,
) -> Optional[str]:
    """None when ``text`` is an acceptable URL, else what is wrong with it (for "LABEL ...")."""
    wanted = " or ".join(f"{s}://" for s in schemes)
    shown = "" if "@" in text else f" (got {q(text)})"
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
    elif not is_hostname(host.rstrip(".")):
        host = ""
    if not host:
        return f"must be an {wanted} URL with a valid host{shown}"
    if "#" in text or (not query_ok and "?" in text):
        return f"must not have a query or fragment{shown}"
    return None


@dataclass
class Scalar:
    tag: str
    text: str
    substituted: bool

    @property
    def is_null(self) -> bool:
        return self.text == "" or (self.tag == NULL and not self.substituted)



# libyaml composes a 10,000-route file in a sixth of the pure-Python parser's time and peak memory.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)
# Where the two parsers differ: tags ("!"), directives ("%" starting a line), a comment right
# after a block scalar's indicator ("|#"), tabs and
# byte-order marks (libyaml accepts them in more places), and the characters PyYAML's reader
# refuses (yaml.reader.Reader.NON_PRINTABLE), spelled out.
_SLOW_PATH = re.compile("!|^%|[|>][-+0-9]*#|[^\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]",
                        re.MULTILINE)


def compose(source: str, text: str) -> Optional[Node]:
    """The node tree of ``text``; ``ConfigError`` (one message) when it is not YAML.

    libyaml composes when it is there. A text it refuses, one with a tag, a directive, a
    tab or a byte-order mark (where the two parsers differ), a character PyYAML's reader
    refuses, or no newline at its end (libyaml marks an empty last value a line further on)
    is composed by PyYAML's own parser, so the verdict, the lines and the words of
    every error are PyYAML's.
    """
    if _FAST_LOADER is not None and text.endswith("\n") and not _SLOW_PATH.search(text):
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, RecursionError):
            pass
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "syntax error"
        detail = ""
        human = _indentation_problem(exc)
        if human is not None:
            raise ConfigError([f"{source}:{line}: invalid YAML: {human}"]) from None
        if exc.problem and exc.context and exc.problem.startswith("but "):
            problem = f"{exc.context} {exc.problem}"  # "expected a single document ... but found another"
        elif exc.problem and exc.context:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            detail = f" ({exc.context}{where})"
        raise ConfigError([f"{source}:{line}: invalid YAML: {problem}{detail}"]) from None
    except yaml.YAMLError as exc:  # ReaderError: characters YAML does not allow
        line = 1
        position = getattr(exc, "position", None)
        if isinstance(position, int):
            line = text.count("\n", 0, position) + 1
        reason = getattr(exc, "reason", None) or "the text is not valid YAML"
        raise ConfigError([f"{source}:{line}: invalid YAML: {reason}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}:1: invalid YAML: nested too deeply"]) from None


def _indentation_problem(exc: yaml.MarkedYAMLError) -> Optional[str]:
    """PyYAML's parser words for the usual mistake (a line indented differently from its
    neighbours) as what the person did wrong; None for other errors."""
    problem = exc.problem or ""
    start = f" (the block starts at line {exc.context_mark.line + 1})" if exc.context_mark else ""
    if problem.startswith("expected <block end>"):
        return ("this line is indented differently from the lines above it: keys of one mapping, and the "
                f"items of one list, must start in the same column{start}")
    if problem == "mapping values are not allowed here":
        return ("this line is indented deeper than the key above it, or a value contains ': ' "
                "(indent it like its neighbours, or quote the value)")
    return None


# --------------------------------------------------------------------------- the source


class Source:
    """One config text being read: its name, environment, errors and typed getters."""

    def __init__(self, source: str, env: Mapping[str, str], base_dir: str):
        self.source = source
        self.env = env
        self.base_dir = base_dir
        self.errors: list[Tuple[int, str]] = []
        self._scalars: dict[int, Any] = {}

    def error(self, where: Node | int, message: str) -> None:
        line = where if isinstance(where, int) else line_of(where)
        self.errors.append((line, message))

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
            if key_node.tag == MERGE:
                self._merge_into(merged, value_node, problems, 0, {id(node)})
                continue
            if not isinstance(key_node, ScalarNode):
                problems.append((key_node, "keys must be plain words"))
                continue
            key = key_node.value
            if key in items:
                first = line_of(items[key][0])
                problems.append((key_node, f"duplicate key {q(key)} {WHERE} (first at line {first})"))
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
                if key_node.tag != MERGE and isinstance(key_node, ScalarNode):
                    own.setdefault(key_node.value, (key_node, value_node))
            for key_node, value_node in source.value:
                if key_node.tag == MERGE:
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
            if WHERE in tail:
                self.error(key_node, tail.replace(WHERE, f"in {where}"))
            else:
                self.error(key_node, f"{where}: {tail}")
        for key, (key_node, _) in items.items():
            if key not in known:
                self.error(key_node, f"unknown key {q(key)} in {where}{hint(key, known)}")

    def scalar(self, node: Node) -> Any:
        """A scalar as ``Scalar`` after ``${...}`` substitution; BAD on error; None for a non-scalar."""
        if not isinstance(node, ScalarNode):
            return None
        cached = self._scalars.get(id(node))
        if cached is not None:
            return cached
        result: Any
        if node.tag not in SCALAR_TAGS:
            self.error(node, f'unsupported YAML tag "{node.tag}"')
            result = BAD
        else:
            result = self._substitute(node)
        self._scalars[id(node)] = result
        return result

    def _substitute(self, node: ScalarNode) -> Any:
        text = node.value
        if "$" not in text:
            return Scalar(node.tag, text, False)
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
                    f"invalid environment reference {q('${' + body + '}')}: "
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
            return BAD
        tag = node.tag
        if not node.style:  # plain (None from PyYAML, "" from libyaml): read the result as YAML would have
            tag = RESOLVER.resolve(ScalarNode, result, (True, False))
        return Scalar(tag, result, True)

    def get_str(self, node: Node, label: str, *, empty_ok: bool = False) -> Any:
        value = self.scalar(node)
        if value is BAD:
            return BAD
        if value is None:
            self.error(node, f"{label} must be a string")
            return BAD
        if value.is_null:
            if empty_ok:
                return None
            self.error(node, f"{label} must not be empty")
            return BAD
        return value.text

    def get_bool(self, node: Node, label: str) -> Any:
        value = self.scalar(node)
        if value is BAD:
            return BAD
        if value is None or value.tag != BOOL:
            self.error(node, f"{label} must be true or false")
            return BAD
        return CONSTRUCTOR.construct_yaml_bool(ScalarNode(BOOL, value.text))

    def get_number(self, node: Node) -> Any:
        """int or float for a numeric scalar, the text for a string, None otherwise."""
        value = self.scalar(node)
        if value is BAD:
            return BAD
        if value is None or value.is_null:
            return None
        if value.tag == INT:
            return CONSTRUCTOR.construct_yaml_int(ScalarNode(INT, value.text))
        if value.tag == FLOAT:
            return CONSTRUCTOR.construct_yaml_float(ScalarNode(FLOAT, value.text))
        if value.tag == BOOL:
            return None
        return value.text

    def get_duration(self, node: Node, label: str, *, positive: bool) -> Any:
        raw = self.get_number(node)
        if raw is BAD:
            return BAD
        try:
            seconds = parse_duration(raw)
        except ValueError as exc:
            if str(exc) == "too large":
                self.error(node, f"{label} is too large")
            else:
                got = f" (got {q(str(raw))})" if isinstance(raw, (str, int, float)) else ""
                self.error(node, f"{label} must be a duration such as 30s, 5m, 8h or 250ms{got}")
            return BAD
        if positive and seconds <= 0:
            self.error(node, f"{label} must be greater than zero")
            return BAD
        return seconds

    def get_size(self, node: Node, label: str) -> Any:
        raw = self.get_number(node)
        if raw is BAD:
            return BAD
        try:
            return parse_size(raw)
        except ValueError:
            got = f" (got {q(str(raw))})" if isinstance(raw, (str, int, float)) else ""
            self.error(node, f"{label} must be a size such as 10MB, 512KB or 1GB, or a number of bytes{got}")
            return BAD

    def get_list(self, node: Node, label: str, example: str, *, nonempty: bool = True) -> Any:
        """The item nodes of a sequence, or BAD."""
        if isinstance(node, ScalarNode) and self.scalar(node) is BAD:
            return BAD
        if not isinstance(node, SequenceNode) or node.tag != YAML_TAG + "seq":
            self.error(node, f"{label} must be a list, e.g. {example}")
            return BAD
        if nonempty and not node.value:
            self.error(node, f"{label} must not be an empty list")
            return BAD
        return list(node.value)

    def get_str_list(
        self, node: Node, label: str, example: str, *, scalar_ok: bool = False, nonempty: bool = True
    ) -> Any:
        """``[(text, node), ...]`` from a list of strings (or one string when ``scalar_ok``)."""
        if scalar_ok and isinstance(node, ScalarNode):
            text = self.get_str(node, label)
            return BAD if text is BAD else [(text, node)]
        items = self.get_list(node, label, example, nonempty=nonempty)
        if items is BAD:
            return BAD
        out = []
        ok = True
        for index, item in enumerate(items):
            text = self.get_str(item, f"{label}[{index}]")
            if text is BAD:
                ok = False
            else:
                out.append((text, item))
        return out if ok else BAD

    def get_mapping(self, node: Node, message: str) -> Any:
        if isinstance(node, ScalarNode) and self.scalar(node) is BAD:
            return BAD
        if not isinstance(node, MappingNode) or node.tag != YAML_TAG + "map":
            self.error(node, message)
            return BAD
        return self.mapping(node)

    def get_url(self, node: Node, label: str, *, query_ok: bool = False) -> Any:
        text = self.get_str(node, label)
        if text is BAD:
            return BAD
        problem = check_url(text, query_ok=query_ok)
        if problem:
            self.error(node, f"{label} {problem}")
            return BAD
        return text

    def read_file(self, node: Node, text: str, label: str) -> Any:
        """The bytes (at most 1 MB) of the file ``text`` names, relative to routes.yaml; BAD after an error.

        ``label`` names the file in messages ("KEY file "PATH" ...").
        """
        path = os.path.join(self.base_dir, os.path.expanduser(text.strip()))
        if "\0" in path:
            self.error(node, f"{label} is not a file name (it holds a NUL character)")
            return BAD
        if os.path.exists(path) and not os.path.isfile(path):  # never block on a FIFO or device
            self.error(node, f"{label} is not a regular file")
            return BAD
        try:
            with open(path, "rb") as fh:
                return fh.read(1 << 20)
        except OSError as exc:
            self.error(node, f"{label} cannot be read: {exc.strerror or exc}")
            return BAD

    @staticmethod
    def is_null_node(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == NULL and not node.style

    def secret_ok(self, node: Node, secret: str, label: str) -> bool:
        size = len(secret.encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            self.error(
                node,
                f"{label} is {size} bytes; it must be at least {MIN_SECRET_BYTES} "
                "(generate one with: openssl rand -base64 32)",
            )
            return False
        if is_placeholder(secret):
            self.error(
                node,
                f"{label} is a well-known placeholder, not a secret "
                "(generate one with: openssl rand -base64 32)",
            )
            return False
        return True

    def messages(self) -> list[str]:
        """The errors as ``FILE:LINE: message``, sorted by line, duplicates dropped."""
        ordered = sorted(enumerate(self.errors), key=lambda item: (item[1][0], item[0]))
        messages: list[str] = []
        for _, (line, message) in ordered:
            formatted = f"{self.source}:{line}: {message}"
            if formatted not in messages:
                messages.append(formatted)
        return messages


# Words that make a value a placeholder anyone can guess, whatever surrounds them.
_PLACEHOLDER_WORDS = ("changeme", "placeholder", "replaceme", "yoursecret", "secrethere", "notasecret",
                      "examplesecret", "insecure")
_FILLER_WORDS = ("secret", "password", "passwd", "example", "test", "key", "token", "default", "gateway",
                 "session", "change", "me", "admin", "jwt", "hmac", "demo", "value", "string", "the", "my", "a")


def is_placeholder(secret: str) -> bool:
    """A value shipped in examples or typed as a stand-in: ``change-me``, ``secretsecret...``,
    ``xxxxxxxx...``, ``abcabcabc...``; such a "secret" protects nothing."""
    squashed = "".join(ch for ch in secret.lower() if ch.isalnum())
    if any(word in squashed for word in _PLACEHOLDER_WORDS):
        return True
    for period in range(1, 9):  # one character or a short pattern, repeated
        unit = squashed[:period]
        if len(squashed) >= 2 * period and squashed == (unit * (len(squashed) // period + 1))[: len(squashed)]:
            return True
    rest = squashed
    while rest:  # nothing but filler words ("secretpasswordsecret...")
        for word in _FILLER_WORDS:
            if rest.startswith(word):
                rest = rest[len(word):]
                break
        else:
            return False
    return True
