"""The parsed configuration: frozen dataclasses and their defaults.

This is the schema only. ``gateway.loader`` turns a ``routes.yaml`` file into a
``Config`` (or a ``ConfigError`` listing every problem); everything downstream
(routing, authentication, proxying) reads these objects and never the YAML.
Defaults live here as named constants next to the fields they belong to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

DEFAULT_CONFIG_PATH = "routes.yaml"
DEFAULT_LISTEN = ("127.0.0.1", 8080)
DEFAULT_ADMIN_LISTEN = ("127.0.0.1", 9091)
DEFAULT_COOKIE_NAME = "_gateway_session"
DEFAULT_SESSION_LIFETIME = 8 * 3600.0
DEFAULT_ROUTE_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_LEEWAY = 30.0
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_SCOPES = ("openid", "email", "profile")
DEFAULT_GROUPS_CLAIM = "groups"
MIN_SECRET_BYTES = 32
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 30.0

AUTH_LOGIN = "login"
AUTH_TOKEN = "token"
AUTH_PUBLIC = "public"
AUTH_MODES = (AUTH_LOGIN, AUTH_TOKEN, AUTH_PUBLIC)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """Every problem found in a config file, each as ``FILE:LINE: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class ServerConfig:
    listen: Tuple[str, int] = DEFAULT_LISTEN
    public_url: str = "http://127.0.0.1:8080"
    admin_listen: Optional[Tuple[str, int]] = DEFAULT_ADMIN_LISTEN  # None: "off"
    trusted_proxies: Tuple[Network, ...] = ()
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    workers: int = 1
    max_body_size: int = 0  # bytes; 0 = unlimited (routes may set their own)
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # request line + headers; larger is refused (431)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # a keep-alive connection with no request is closed
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # a client must send its request head within this
    body_timeout: float = DEFAULT_BODY_TIMEOUT  # the longest pause between request body bytes (408 and close)
    max_connections: int = 0  # open client connections per process; 0 = no cap
    reuse_port: bool = False  # workers: a socket each (even spread) instead of one shared (survives a crash)


@dataclass(frozen=True)
class SessionConfig:
    secret: Optional[str] = None
    previous_secrets: Tuple[str, ...] = ()  # still accepted to decrypt, for key rotation
    cookie_name: str = DEFAULT_COOKIE_NAME
    lifetime: float = DEFAULT_SESSION_LIFETIME
    store: str = "cookie"  # "cookie" or "redis://HOST:PORT/DB"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    issuer: str
    client_id: str
    client_secret: str
    scopes: Tuple[str, ...] = DEFAULT_SCOPES
    groups_claim: str = DEFAULT_GROUPS_CLAIM
    display_name: str = ""  # shown on the chooser page; defaults to name


@dataclass(frozen=True)
class TokenIssuerConfig:
    """One accepted issuer of bearer tokens.

    Exactly one key source is used: ``secret`` (HMAC), ``public_key`` (PEM),
    ``jwks_uri``, or, when none is given, the issuer's discovery document.
    """

    issuer: str
    algorithms: Tuple[str, ...]
    audience: Optional[Tuple[str, ...]] = None  # None means "any"
    secret: Optional[str] = None
    public_key: Optional[str] = None
    jwks_uri: Optional[str] = None
    leeway: float = DEFAULT_LEEWAY
    groups_claim: str = DEFAULT_GROUPS_CLAIM
    email_claim: str = "email"
    username_claim: str = "preferred_username"


@dataclass(frozen=True)
class Rule:
    """One ``allow`` entry: every condition that is set must hold.

    Each condition is a frozenset of accepted values (any one matches), or
    None when the rule does not constrain it.
    """

    sub: Optional[frozenset] = None
    email: Optional[frozenset] = None  # compared case-insensitively (stored lower-case)
    email_domain: Optional[frozenset] = None  # lower-case, no leading "@"
    group: Optional[frozenset] = None
    claim: Tuple[Tuple[str, frozenset], ...] = ()
    method: Optional[frozenset] = None  # upper-case


@dataclass(frozen=True)
class RouteConfig:
    name: str
    path: str
    upstreams: Tuple[str, ...]
    auth: str = AUTH_TOKEN
    host: Optional[str] = None  # exact, or "*.example.com"; lower-case
    providers: Tuple[str, ...] = ()  # login providers accepted; filled with all by the loader
    allow: Tuple[Rule, ...] = ()  # empty: every authenticated identity
    strip_prefix: bool = False
    preserve_host: bool = False
    timeout: float = DEFAULT_ROUTE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    methods: Optional[frozenset] = None  # upper-case; None: every method
    websocket: bool = True
    max_body_size: Optional[int] = None  # bytes; None: the server's default
    line: int = 0  # where the route starts in the file, for messages


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    tokens: Tuple[TokenIssuerConfig, ...] = ()
    routes: Tuple[RouteConfig, ...] = ()
    source: str = DEFAULT_CONFIG_PATH  # the file it was read from
