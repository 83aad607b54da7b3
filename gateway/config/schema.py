"""The configuration schema: frozen dataclasses, their defaults, and their YAML keys.

This is the one declaration of what ``routes.yaml`` may contain. Each field
says (through ``opt()``) the YAML key it is read from (``key=None``: not a
key) and the kind of value it takes; ``yaml_keys()`` gives the accepted keys
of a section and ``json_schema()`` a JSON Schema, both derived from it. The
rules in ``gateway.config.rules`` turn the YAML into these objects once, at
start and on reload; everything downstream reads them and never the YAML.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping, Optional, Tuple

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
DEFAULT_REFRESH_GRACE = 60.0
DEFAULT_TOKEN_LIFETIME = 3600.0
DEFAULT_ASSERTION_HEADER = "X-Gateway-Assertion"
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


_SAME: Any = object()  # "the YAML key is the field name"


def opt(
    default: Any = MISSING, *, kind: str, key: Any = _SAME, factory: Any = MISSING, item: Any = None
) -> Any:
    """A field with its YAML declaration: the ``kind`` of value and the ``key`` it is read from.

    ``key=None`` marks a field that is not a YAML key; ``item`` is the dataclass
    of a nested section (a mapping, a list of mappings, or a mapping of names).
    """
    metadata = {"kind": kind, "key": key, "item": item}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerTLS:
    """``server.tls``: serve HTTPS on ``listen`` (files read again on reload)."""

    cert: str = opt("", kind="string")  # PEM certificate chain file (absolute path after loading)
    key: str = opt("", kind="string")  # PEM private key file


@dataclass(frozen=True)
class UpstreamTLS:
    """``routes[].tls``: how to verify an ``https://`` upstream, and the client certificate it may ask for."""

    ca: str = opt("", kind="string")  # PEM CA bundle file; "": the system's trust store
    cert: str = opt("", kind="string")  # client certificate (mutual TLS)
    key: str = opt("", kind="string")
    server_name: str = opt("", kind="string")  # the name verified and sent as SNI; "": the URL's host


@dataclass(frozen=True)
class ServerConfig:
    listen: Tuple[str, int] = opt(DEFAULT_LISTEN, kind="hostport")
    public_url: str = opt("http://127.0.0.1:8080", kind="url")
    admin_listen: Optional[Tuple[str, int]] = opt(DEFAULT_ADMIN_LISTEN, kind="hostport")  # None: "off"
    trusted_proxies: Tuple[Network, ...] = opt((), kind="strings")
    shutdown_grace: float = opt(DEFAULT_SHUTDOWN_GRACE, kind="duration")
    workers: int = opt(1, kind="workers")
    max_body_size: int = opt(0, kind="size")  # bytes; 0 = unlimited (routes may set their own)
    # request line + headers; larger is refused (431)
    max_header_size: int = opt(DEFAULT_MAX_HEADER_SIZE, kind="size")
    # a keep-alive connection with no request is closed
    idle_timeout: float = opt(DEFAULT_IDLE_TIMEOUT, kind="duration")
    # a client must send its request head within this
    header_timeout: float = opt(DEFAULT_HEADER_TIMEOUT, kind="duration")
    # the longest pause between request body bytes: 408 and close (a stalled body must not hold a slot)
    body_timeout: float = opt(DEFAULT_BODY_TIMEOUT, kind="duration")
    # the operational log on stderr: "text" lines, or one JSON object per line (like the access log)
    log_format: str = opt("text", kind="string")
    max_connections: int = opt(0, kind="integer")  # open client connections per process; 0 = no cap
    # workers: a socket each (even spread) instead of one shared (survives a crash)
    reuse_port: bool = opt(False, kind="bool")
    tls: Optional[ServerTLS] = opt(None, kind="section", item=ServerTLS)
    hsts: float = opt(0.0, kind="duration")  # Strict-Transport-Security max-age on HTTPS answers; 0: none
    # the HTTP/1.1 connection layer of the proxy port: "tornado" (Tornado's HTTPServer) or "httptools"
    # (asyncio Protocols and llhttp, gateway.http1); the application above it is the same
    http_engine: str = opt("tornado", kind="string")


@dataclass(frozen=True)
class SessionConfig:
    secret: Optional[str] = opt(None, kind="string")
    previous_secrets: Tuple[str, ...] = opt((), kind="strings")  # still accepted to decrypt, for key rotation
    cookie_name: str = opt(DEFAULT_COOKIE_NAME, kind="string")
    lifetime: float = opt(DEFAULT_SESSION_LIFETIME, kind="duration")
    store: str = opt("cookie", kind="string")  # "cookie" or "redis://HOST:PORT/DB"
    # e.g. ".example.com": one sign-in for every host under it (must cover public_url's host)
    cookie_domain: str = opt("", kind="string")
    # when the provider cannot be reached to refresh, access lasts at most this past the token's expiry
    refresh_grace: float = opt(DEFAULT_REFRESH_GRACE, kind="duration")


PROVIDER_TYPES = ("oidc", "oauth2")
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# identity fields a provider's claims mapping may fill (identity field <- the provider's field)
IDENTITY_FIELDS = ("sub", "email", "email_verified", "preferred_username", "name", "groups")


@dataclass(frozen=True)
class ProviderConfig:
    """One login provider: OpenID Connect (``issuer`` + discovery) or plain OAuth 2.0.

    A ``preset`` (``gateway.config.presets``) fills in what is known about a
    well-known service; keys written in the file win over it.
    """

    name: str = opt(kind="string", key=None)
    type: str = opt("oidc", kind="provider_type")
    preset: str = opt("", kind="string")
    issuer: str = opt("", kind="url")
    client_id: str = opt("", kind="string")  # required (the providers rule says so)
    client_secret: str = opt("", kind="string")
    scopes: Tuple[str, ...] = opt(DEFAULT_SCOPES, kind="strings")
    # plain OAuth 2.0 (type: oauth2) endpoints; OpenID Connect finds them by discovery
    authorization_endpoint: str = opt("", kind="url")
    token_endpoint: str = opt("", kind="url")
    userinfo_endpoint: str = opt("", kind="url")
    # identity field <- the provider's field (dotted for nested objects), e.g. {sub: id, email: mail}
    claims: Tuple[Tuple[str, str], ...] = opt((), kind="claim_map")
    groups_claim: str = opt(DEFAULT_GROUPS_CLAIM, kind="string")
    user_claim: str = opt("sub", kind="string")  # the claim that becomes X-Forwarded-User
    # "": client_secret_basic unless discovery lists only client_secret_post
    token_endpoint_auth_method: str = opt("", kind="auth_method")
    # private_key_jwt (RFC 7523): a PEM private key file (relative to routes.yaml) signs the client's assertion
    client_private_key: str = opt("", kind="string")
    client_key_id: str = opt("", kind="string")  # the kid the provider knows that key by
    display_name: str = opt("", kind="string")  # shown on the chooser page; defaults to name
    # where the provider sends the browser after its sign-out (register it there); default <public_url>/
    post_logout_redirect_uri: str = opt("", kind="url")
    # trust emails the provider marks email_verified: false (default: such an email is no identity)
    allow_unverified_email: bool = opt(False, kind="bool")
    # accept OpenID Connect Back-Channel Logout at <public_url>/oauth2/backchannel_logout
    backchannel_logout: bool = opt(False, kind="bool")
    # preset parameters
    base_url: str = opt("", kind="url")  # github, gitlab (self-hosted), keycloak
    realm: str = opt("", kind="string")  # keycloak
    tenant: str = opt("", kind="string")  # microsoft: a tenant id, or common / organizations / consumers
    allowed_tenants: Tuple[str, ...] = opt((), kind="strings")  # microsoft multi-tenant: only these tid
    domain: str = opt("", kind="string")  # okta, auth0
    hosted_domain: str = opt("", kind="string")  # google: the ID token's hd claim must equal it
    # filled by presets, never by the file
    api: str = opt("", kind="string", key=None)  # "github": identity from the GitHub REST API
    api_url: str = opt("", kind="url", key=None)
    issuer_aliases: Tuple[str, ...] = opt((), kind="strings", key=None)  # more spellings of issuer
    tenant_issuer: str = opt("", kind="string", key=None)  # microsoft: issuer template with {tid}
    email_verified_by_provider: bool = opt(False, kind="bool", key=None)  # emails are verified by definition
    auth_params: Tuple[Tuple[str, str], ...] = opt((), kind="claim_map", key=None)  # more authorization params


@dataclass(frozen=True)
class TokenIssuerConfig:
    """One accepted issuer of bearer tokens.

    Exactly one key source is used: ``secret`` (HMAC), ``public_key`` (PEM),
    ``jwks_uri``, or, when none is given, the issuer's discovery document.
    """

    issuer: str = opt(kind="string")
    algorithms: Tuple[str, ...] = opt(kind="strings")
    audience: Optional[Tuple[str, ...]] = opt(None, kind="strings")  # None means "any"
    secret: Optional[str] = opt(None, kind="string")
    public_key: Optional[str] = opt(None, kind="string")
    jwks_uri: Optional[str] = opt(None, kind="url")
    leeway: float = opt(DEFAULT_LEEWAY, kind="duration")
    groups_claim: str = opt(DEFAULT_GROUPS_CLAIM, kind="string")
    email_claim: str = opt("email", kind="string")
    username_claim: str = opt("preferred_username", kind="string")
    # the JOSE header typ the token must carry, e.g. "at+jwt" (RFC 9068 access tokens); "": any
    require_typ: str = opt("", kind="string")
    # trust an email whose email_verified is false (default: such an email is no identity)
    allow_unverified_email: bool = opt(False, kind="bool")


@dataclass(frozen=True)
class Assertion:
    """``routes[].identity_assertion``: a signed JWT of the identity, for the upstream to verify."""

    header: str = opt(DEFAULT_ASSERTION_HEADER, kind="string")
    audience: str = opt("", kind="string")  # "": the route's name


@dataclass(frozen=True)
class Rule:
    """One ``allow`` entry: every condition that is set must hold.

    Each condition is a frozenset of accepted values (any one matches), or
    None when the rule does not constrain it.
    """

    sub: Optional[frozenset] = opt(None, kind="strings")
    email: Optional[frozenset] = opt(None, kind="strings")  # compared case-insensitively (stored lower-case)
    email_domain: Optional[frozenset] = opt(None, kind="strings")  # lower-case, no leading "@"
    group: Optional[frozenset] = opt(None, kind="strings")
    claim: Tuple[Tuple[str, frozenset], ...] = opt((), kind="claims")
    method: Optional[frozenset] = opt(None, kind="strings")  # upper-case


@dataclass(frozen=True)
class RouteConfig:
    name: str = opt(kind="string")
    path: str = opt(kind="string")
    upstreams: Tuple[str, ...] = opt(kind="strings", key="upstream")
    auth: str = opt(AUTH_TOKEN, kind="auth")
    host: Optional[str] = opt(None, kind="string")  # exact, or "*.example.com"; lower-case
    # login providers accepted; filled with all by the rules
    providers: Tuple[str, ...] = opt((), kind="strings")
    allow: Tuple[Rule, ...] = opt((), kind="list", item=Rule)  # empty: every authenticated identity
    strip_prefix: bool = opt(False, kind="bool")
    preserve_host: bool = opt(False, kind="bool")
    timeout: float = opt(DEFAULT_ROUTE_TIMEOUT, kind="duration")
    connect_timeout: float = opt(DEFAULT_CONNECT_TIMEOUT, kind="duration")
    methods: Optional[frozenset] = opt(None, kind="strings")  # upper-case; None: every method
    websocket: bool = opt(True, kind="bool")
    # origins (scheme://host[:port]) besides the gateway's own whose pages may open session WebSockets
    websocket_origins: Tuple[str, ...] = opt((), kind="strings")
    max_body_size: Optional[int] = opt(None, kind="size")  # bytes; None: the server's default
    # true, or {header, audience}: send the identity as a JWT signed by signing.key
    identity_assertion: Optional[Assertion] = opt(None, kind="assertion", item=Assertion)
    tls: Optional[UpstreamTLS] = opt(None, kind="section", item=UpstreamTLS)  # for https:// upstreams
    line: int = opt(0, kind="integer", key=None)  # where the route starts in the file, for messages


@dataclass(frozen=True)
class SigningConfig:
    """The gateway's own signing keys (tokens for scripts, identity assertions to upstreams)."""

    key: str = opt("", kind="string")  # PEM text (read from the file when a path was given); "": ephemeral
    previous_keys: Tuple[str, ...] = opt((), kind="strings")  # PEM texts: published, only verify
    token_lifetime: float = opt(DEFAULT_TOKEN_LIFETIME, kind="duration")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = opt(kind="section", factory=ServerConfig, item=ServerConfig)
    session: SessionConfig = opt(kind="section", factory=SessionConfig, item=SessionConfig)
    providers: Mapping[str, ProviderConfig] = opt(kind="named", factory=dict, item=ProviderConfig)
    tokens: Tuple[TokenIssuerConfig, ...] = opt((), kind="list", item=TokenIssuerConfig)
    signing: SigningConfig = opt(kind="section", factory=SigningConfig, item=SigningConfig)
    routes: Tuple[RouteConfig, ...] = opt((), kind="list", item=RouteConfig)
    source: str = opt(DEFAULT_CONFIG_PATH, kind="string", key=None)  # the file it was read from
    # setups that load but cannot work as probably meant, as "FILE:LINE: warning: ..." (gateway check prints them)
    warnings: Tuple[str, ...] = opt((), kind="strings", key=None)


# The JSON Schema of each kind of value, as the YAML may write it.
_STRINGS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_JSON_KINDS: dict[str, dict] = {
    "string": {"type": "string"},
    "url": {"type": "string", "format": "uri"},
    "bool": {"type": "boolean"},
    "integer": {"type": "integer", "minimum": 0},
    "workers": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]},
    "duration": {"type": ["number", "string"]},
    "size": {"type": ["integer", "string"]},
    "hostport": {"type": "string"},
    "auth": {"enum": list(AUTH_MODES)},
    "strings": _STRINGS,
    "claims": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "array"]}},
    "claim_map": {"type": "object", "propertyNames": {"enum": list(IDENTITY_FIELDS)},
                  "additionalProperties": {"type": "string"}},
    "provider_type": {"enum": list(PROVIDER_TYPES)},
    "assertion": {"anyOf": [{"type": "boolean"}, {"type": "object", "additionalProperties": False,
                                                  "properties": {"header": {"type": "string"},
                                                                 "audience": {"type": "string"}}}]},
    "auth_method": {"enum": list(TOKEN_AUTH_METHODS)},
}


def yaml_keys(section: type) -> Tuple[str, ...]:
    """The keys a section's mapping accepts, in declaration order, derived from its fields."""
    keys = []
    for f in fields(section):
        key = f.metadata.get("key", _SAME)
        if key is not None:
            keys.append(f.name if key is _SAME else key)
    return tuple(keys)


def json_schema(section: Optional[type] = None) -> dict:
    """A JSON Schema (draft 2020-12) of ``section`` (default: the whole file), from the declaration."""
    if section is None:
        whole = {"$schema": "https://json-schema.org/draft/2020-12/schema", **json_schema(Config)}
        whole["patternProperties"] = {"^x-": {}}  # room for YAML anchors
        whole["required"] = ["routes"]
        return whole
    properties: dict[str, Any] = {}
    required = []
    for f in fields(section):
        key = f.metadata.get("key", _SAME)
        if key is None:
            continue
        key = f.name if key is _SAME else key
        kind: str = f.metadata["kind"]
        item: Any = f.metadata.get("item")
        if kind == "section":
            properties[key] = json_schema(item)
        elif kind == "named":
            properties[key] = {"type": "object", "additionalProperties": json_schema(item)}
        elif kind == "list":
            properties[key] = {"type": "array", "items": json_schema(item)}
        else:
            properties[key] = dict(_JSON_KINDS[kind])
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema
