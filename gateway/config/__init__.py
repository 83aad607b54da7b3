"""The gateway's configuration: ``routes.yaml`` parsed once into immutable objects.

``load()`` / ``loads()`` read and validate a file (at start and on every
reload); everything downstream (routing, authentication, proxying) reads the
frozen dataclasses of ``schema`` and never the YAML. The package:

- ``schema``: the dataclasses, their defaults and YAML keys (the one declaration);
- ``source``: YAML nodes with lines, merges, ``${ENV}``, typed getters, errors;
- ``rules``: one module per section, from nodes to that section's dataclass;
- ``load``: the entry points that run them and raise ``ConfigError``.
"""

from .load import load, loads
from .schema import (
    ASYMMETRIC_ALGORITHMS,
    AUTH_LOGIN,
    AUTH_MODES,
    AUTH_PUBLIC,
    AUTH_TOKEN,
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_CONFIG_PATH,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_COOKIE_NAME,
    DEFAULT_GROUPS_CLAIM,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LEEWAY,
    DEFAULT_LISTEN,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_ROUTE_TIMEOUT,
    DEFAULT_SCOPES,
    DEFAULT_SESSION_LIFETIME,
    DEFAULT_SHUTDOWN_GRACE,
    HMAC_ALGORITHMS,
    MIN_SECRET_BYTES,
    SUPPORTED_ALGORITHMS,
    Config,
    ConfigError,
    Network,
    ProviderConfig,
    RouteConfig,
    Assertion,
    Rule,
    SigningConfig,
    DEFAULT_ASSERTION_HEADER,
    ServerConfig,
    SessionConfig,
    TokenIssuerConfig,
    json_schema,
    yaml_keys,
)
from .source import parse_duration, parse_listen, parse_size

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "AUTH_LOGIN",
    "AUTH_MODES",
    "AUTH_PUBLIC",
    "AUTH_TOKEN",
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_COOKIE_NAME",
    "DEFAULT_GROUPS_CLAIM",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LEEWAY",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_ROUTE_TIMEOUT",
    "DEFAULT_SCOPES",
    "DEFAULT_SESSION_LIFETIME",
    "DEFAULT_SHUTDOWN_GRACE",
    "HMAC_ALGORITHMS",
    "MIN_SECRET_BYTES",
    "SUPPORTED_ALGORITHMS",
    "Config",
    "ConfigError",
    "Network",
    "ProviderConfig",
    "RouteConfig",
    "Rule",
    "Assertion",
    "SigningConfig",
    "DEFAULT_ASSERTION_HEADER",
    "ServerConfig",
    "SessionConfig",
    "TokenIssuerConfig",
    "json_schema",
    "load",
    "loads",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "yaml_keys",
]
