"""The configuration schema: frozen dataclasses, their defaults, and their YAML keys.

This is the one declaration of what ``routes.yaml`` may contain. Each field
says (through ``opt()``) the YAML key it is read from (``key=None``: not a
key) and the kind of value it takes; ``yaml_keys()`` gives the accepted keys
of a section and ``json_schema()`` a JSON Schema, both derived from it (a
section's ``json_rules`` add the conditions between its keys that the rules
check, for editors; ``gateway schema`` prints the result). The
rules in ``gateway.config.rules`` turn the YAML into these objects once, at
start and on reload; everything downstream reads them and never the YAML.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Optional, Tuple

from .presets import PRESETS

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
MAX_SECONDS = 10 * 365 * 86400.0  # the longest duration accepted (gateway.config.source checks it)

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
    default: Any = MISSING,
    *,
    kind: str,
    key: Any = _SAME,
    factory: Any = MISSING,
    item: Any = None,
    many: Optional[str] = None,
    nonempty: bool = False,
    null_ok: bool = False,
    required: Optional[bool] = None,
    names: Optional[str] = None,
) -> Any:
    """A field with its YAML declaration: the ``kind`` of value and the ``key`` it is read from.

    ``key=None`` marks a field that is not a YAML key; ``item`` is the dataclass
    of a nested section (a mapping, a list of mappings, or a mapping of names).
    ``many="list"``: a YAML list of values of ``kind``; ``many="one_or_list"``: one
    value, or a non-empty list of them. ``nonempty``: the list (or mapping) must
    have an entry; ``null_ok``: an empty value (``key:`` or ``""``) is accepted;
    ``required``: the key must be written (default: when the field has no
    default); ``names``: the kind of the names of a ``named`` mapping.
    """
    metadata = {"kind": kind, "key": key, "item": item, "many": many, "nonempty": nonempty,
                "null_ok": null_ok, "required": required, "names": names}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# A value that is, or holds, an environment reference: the file's raw text is ``${VAR}`` or
# ``${VAR:-default}``, whatever kind of value it becomes once substituted.
ENV_REFERENCE = {"type": "string", "pattern": "\\$\\{"}


def _when(condition: dict, then: dict) -> dict:
    return {"if": condition, "then": then}


def _written_as(key: str, *values: Any) -> dict:
    """A condition: ``key`` is written, as one of ``values`` (a ``${VAR}`` is none of them)."""
    return {"required": [key], "properties": {key: {"enum": list(values)}}}


def _absent(*keys: str) -> dict:
    return {"not": {"anyOf": [{"required": [k]} for k in keys]}} if len(keys) > 1 else {"not": {"required": list(keys)}}


@dataclass(frozen=True)
class ServerTLS:
    """``server.tls``: serve HTTPS on ``listen`` (files read again on reload)."""

    cert: str = opt("", kind="string", required=True)  # PEM certificate chain file (absolute path after loading)
    key: str = opt("", kind="string", required=True)  # PEM private key file


@dataclass(frozen=True)
class UpstreamTLS:
    """``routes[].tls``: how to verify an ``https://`` upstream, and the client certificate it may ask for."""

    ca: str = opt("", kind="string")  # PEM CA bundle file; "": the system's trust store
    cert: str = opt("", kind="string")  # client certificate (mutual TLS)
    key: str = opt("", kind="string")
    server_name: str = opt("", kind="hostname")  # the name verified and sent as SNI; "": the URL's host

    json_rules: ClassVar[dict] = {"dependentRequired": {"cert": ["key"], "key": ["cert"]}}


@dataclass(frozen=True)
class ServerConfig:
    listen: Tuple[str, int] = opt(DEFAULT_LISTEN, kind="hostport")
    public_url: str = opt("http://127.0.0.1:8080", kind="url")
    admin_listen: Optional[Tuple[str, int]] = opt(DEFAULT_ADMIN_LISTEN, kind="admin_listen")  # None: "off"
    trusted_proxies: Tuple[Network, ...] = opt((), kind="string", many="list")
    shutdown_grace: float = opt(DEFAULT_SHUTDOWN_GRACE, kind="duration")
    workers: int = opt(1, kind="workers")
    max_body_size: int = opt(0, kind="size")  # bytes; 0 = unlimited (routes may set their own)
    # request line + headers; larger is refused (431)
    max_header_size: int = opt(DEFAULT_MAX_HEADER_SIZE, kind="size")
    # a keep-alive connection with no request is closed
    idle_timeout: float = opt(DEFAULT_IDLE_TIMEOUT, kind="positive_duration")
    # a client must send its request head within this
    header_timeout: float = opt(DEFAULT_HEADER_TIMEOUT, kind="positive_duration")
    # the longest pause between request body bytes: 408 and close (a stalled body must not hold a slot)
    body_timeout: float = opt(DEFAULT_BODY_TIMEOUT, kind="positive_duration")
    # the operational log on stderr: "text" lines, or one JSON object per line (like the access log)
    log_format: str = opt("text", kind="log_format")
    max_connections: int = opt(0, kind="integer")  # open client connections per process; 0 = no cap
    # workers: a socket each (even spread) instead of one shared (survives a crash)
    reuse_port: bool = opt(False, kind="bool")
    tls: Optional[ServerTLS] = opt(None, kind="section", item=ServerTLS)
    hsts: float = opt(0.0, kind="duration")  # Strict-Transport-Security max-age on HTTPS answers; 0: none
    # the HTTP/1.1 connection layer of the proxy port: "httptools" (asyncio Protocols and llhttp,
    # gateway.http1; less CPU per request) or "tornado" (Tornado's HTTPServer); the application above is the same
    http_engine: str = opt("httptools", kind="string")


@dataclass(frozen=True)
class SessionConfig:
    secret: Optional[str] = opt(None, kind="string", null_ok=True)
    previous_secrets: Tuple[str, ...] = opt((), kind="string", many="list")  # still accepted to decrypt, for key rotation
    cookie_name: str = opt(DEFAULT_COOKIE_NAME, kind="token")
    lifetime: float = opt(DEFAULT_SESSION_LIFETIME, kind="positive_duration")
    store: str = opt("cookie", kind="store")  # "cookie" or "redis://HOST:PORT/DB"
    # e.g. ".example.com": one sign-in for every host under it (must cover public_url's host)
    cookie_domain: str = opt("", kind="cookie_domain")
    # when the provider cannot be reached to refresh, access lasts at most this past the token's expiry
    refresh_grace: float = opt(DEFAULT_REFRESH_GRACE, kind="duration")


PROVIDER_TYPES = ("oidc", "oauth2")
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# identity fields a provider's claims mapping may fill (identity field <- the provider's field)
IDENTITY_FIELDS = ("sub", "email", "email_verified", "preferred_username", "name", "groups")


def _provider_rules() -> dict:
    """What the providers rule requires beyond each key's own value, as far as the file shows it."""
    rules = [
        # private_key_jwt signs with a key instead of sending a secret
        _when(_written_as("token_endpoint_auth_method", "private_key_jwt"), {"required": ["client_private_key"]}),
        _when({"properties": {"token_endpoint_auth_method": {"enum": ["client_secret_basic", "client_secret_post"]}}},
              {"required": ["client_secret"]}),
        # without a preset: OpenID Connect needs its issuer, plain OAuth 2.0 its three endpoints
        _when({"allOf": [_absent("preset"), {"properties": {"type": {"const": "oidc"}}}]}, {"required": ["issuer"]}),
        _when({"allOf": [_absent("preset"), _written_as("type", "oauth2")]},
              {"required": ["authorization_endpoint", "token_endpoint", "userinfo_endpoint"]}),
        # plain OAuth 2.0 has no issuer
        _when(_written_as("type", "oauth2"), _absent("issuer")),
        _when({"allOf": [_absent("type"), _written_as("preset", *[n for n, p in PRESETS.items() if p.type == "oauth2"])]},
              _absent("issuer")),
        # only the microsoft preset knows tenants
        _when({"required": ["allowed_tenants"]}, {"required": ["preset"], "properties": {
            "preset": {"anyOf": [{"const": "microsoft"}, ENV_REFERENCE]}}}),
    ]
    for name, preset in PRESETS.items():
        if preset.needs:
            rules.append(_when(_written_as("preset", name), {"required": list(preset.needs)}))
    return {"allOf": rules}


@dataclass(frozen=True)
class ProviderConfig:
    """One login provider: OpenID Connect (``issuer`` + discovery) or plain OAuth 2.0.

    A ``preset`` (``gateway.config.presets``) fills in what is known about a
    well-known service; keys written in the file win over it.
    """

    name: str = opt(kind="string", key=None)
    type: str = opt("oidc", kind="provider_type")
    preset: str = opt("", kind="preset")
    issuer: str = opt("", kind="url")
    client_id: str = opt("", kind="string", required=True)  # required (the providers rule says so)
    client_secret: str = opt("", kind="string")
    scopes: Tuple[str, ...] = opt(DEFAULT_SCOPES, kind="string", many="list", nonempty=True)
    # plain OAuth 2.0 (type: oauth2) endpoints; OpenID Connect finds them by discovery
    authorization_endpoint: str = opt("", kind="url")
    token_endpoint: str = opt("", kind="url")
    userinfo_endpoint: str = opt("", kind="url_query")
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
    post_logout_redirect_uri: str = opt("", kind="url_query")
    # trust emails the provider marks email_verified: false (default: such an email is no identity)
    allow_unverified_email: bool = opt(False, kind="bool")
    # accept OpenID Connect Back-Channel Logout at <public_url>/oauth2/backchannel_logout
    backchannel_logout: bool = opt(False, kind="bool")
    # preset parameters
    base_url: str = opt("", kind="url")  # github, gitlab (self-hosted), keycloak
    realm: str = opt("", kind="string")  # keycloak
    tenant: str = opt("", kind="string")  # microsoft: a tenant id, or common / organizations / consumers
    allowed_tenants: Tuple[str, ...] = opt((), kind="string", many="list", nonempty=True)  # microsoft multi-tenant: only these tid
    domain: str = opt("", kind="hostname")  # okta, auth0
    hosted_domain: str = opt("", kind="string")  # google: the ID token's hd claim must equal it
    # filled by presets, never by the file
    api: str = opt("", kind="string", key=None)  # "github": identity from the GitHub REST API
    api_url: str = opt("", kind="url", key=None)
    issuer_aliases: Tuple[str, ...] = opt((), kind="string", many="list", key=None)  # more spellings of issuer
    tenant_issuer: str = opt("", kind="string", key=None)  # microsoft: issuer template with {tid}
    email_verified_by_provider: bool = opt(False, kind="bool", key=None)  # emails are verified by definition
    auth_params: Tuple[Tuple[str, str], ...] = opt((), kind="claim_map", key=None)  # more authorization params

    json_rules: ClassVar[dict] = _provider_rules()


@dataclass(frozen=True)
class TokenIssuerConfig:
    """One accepted issuer of bearer tokens.

    Exactly one key source is used: ``secret`` (HMAC), ``public_key`` (PEM),
    ``jwks_uri``, or, when none is given, the issuer's discovery document.
    """

    issuer: str = opt(kind="string")
    algorithms: Tuple[str, ...] = opt(kind="algorithm", many="list", nonempty=True)
    # None means "any" (written audience: any); required: a string, a list, or any
    audience: Optional[Tuple[str, ...]] = opt(None, kind="string", many="one_or_list", required=True)
    secret: Optional[str] = opt(None, kind="string")
    public_key: Optional[str] = opt(None, kind="string")
    jwks_uri: Optional[str] = opt(None, kind="url_query")
    leeway: float = opt(DEFAULT_LEEWAY, kind="duration")
    groups_claim: str = opt(DEFAULT_GROUPS_CLAIM, kind="string")
    email_claim: str = opt("email", kind="string")
    username_claim: str = opt("preferred_username", kind="string")
    # the JOSE header typ the token must carry, e.g. "at+jwt" (RFC 9068 access tokens); "": any
    require_typ: str = opt("", kind="string")
    cache_size: int = opt(10_000, kind="integer")  # verified tokens of this issuer remembered until they expire
    # trust an email whose email_verified is false (default: such an email is no identity)
    allow_unverified_email: bool = opt(False, kind="bool")

    # at most one key source
    json_rules: ClassVar[dict] = {"not": {"anyOf": [{"required": ["secret", "public_key"]},
                                                    {"required": ["secret", "jwks_uri"]},
                                                    {"required": ["public_key", "jwks_uri"]}]}}


@dataclass(frozen=True)
class Assertion:
    """``routes[].identity_assertion``: a signed JWT of the identity, for the upstream to verify."""

    header: str = opt(DEFAULT_ASSERTION_HEADER, kind="token")
    audience: str = opt("", kind="string")  # "": the route's name


@dataclass(frozen=True)
class Rule:
    """One ``allow`` entry: every condition that is set must hold.

    Each condition is a frozenset of accepted values (any one matches), or
    None when the rule does not constrain it.
    """

    sub: Optional[frozenset] = opt(None, kind="string", many="one_or_list")
    # compared case-insensitively (stored lower-case)
    email: Optional[frozenset] = opt(None, kind="email", many="one_or_list")
    email_domain: Optional[frozenset] = opt(None, kind="email_domain", many="one_or_list")  # lower-case, no leading "@"
    group: Optional[frozenset] = opt(None, kind="string", many="one_or_list")
    claim: Tuple[Tuple[str, frozenset], ...] = opt((), kind="claims")
    method: Optional[frozenset] = opt(None, kind="method", many="one_or_list")  # upper-case

    json_rules: ClassVar[dict] = {"minProperties": 1}  # a rule needs at least one condition


@dataclass(frozen=True)
class RouteConfig:
    name: str = opt(kind="route_name")
    path: str = opt(kind="path")
    upstreams: Tuple[str, ...] = opt(kind="url", many="one_or_list", key="upstream")
    auth: str = opt(AUTH_TOKEN, kind="auth")
    host: Optional[str] = opt(None, kind="host")  # exact, or "*.example.com"; lower-case
    # login providers accepted; filled with all by the rules
    providers: Tuple[str, ...] = opt((), kind="string", many="list", nonempty=True)
    # empty: every authenticated identity
    allow: Tuple[Rule, ...] = opt((), kind="list", item=Rule, nonempty=True)
    strip_prefix: bool = opt(False, kind="bool")
    preserve_host: bool = opt(False, kind="bool")
    timeout: float = opt(DEFAULT_ROUTE_TIMEOUT, kind="positive_duration")
    connect_timeout: float = opt(DEFAULT_CONNECT_TIMEOUT, kind="positive_duration")
    # upper-case; None: every method
    methods: Optional[frozenset] = opt(None, kind="method", many="list", nonempty=True)
    websocket: bool = opt(True, kind="bool")
    # origins (scheme://host[:port]) besides the gateway's own whose pages may open session WebSockets
    websocket_origins: Tuple[str, ...] = opt((), kind="origin", many="list")
    max_body_size: Optional[int] = opt(None, kind="size")  # bytes; None: the server's default
    # true, or {header, audience}: send the identity as a JWT signed by signing.key
    identity_assertion: Optional[Assertion] = opt(None, kind="assertion", item=Assertion)
    tls: Optional[UpstreamTLS] = opt(None, kind="section", item=UpstreamTLS)  # for https:// upstreams
    line: int = opt(0, kind="integer", key=None)  # where the route starts in the file, for messages

    json_rules: ClassVar[dict] = {"allOf": [
        # providers are for auth: login; a public route admits everyone, so it has no rules or identity
        _when(_written_as("auth", AUTH_TOKEN, AUTH_PUBLIC), _absent("providers")),
        _when(_written_as("auth", AUTH_PUBLIC), {"allOf": [
            _absent("allow"),
            {"properties": {"identity_assertion": {"anyOf": [{"const": False}, ENV_REFERENCE]}}},
        ]}),
    ]}


@dataclass(frozen=True)
class SigningConfig:
    """The gateway's own signing keys (tokens for scripts, identity assertions to upstreams)."""

    # PEM text (read from the file when a path was given); "": ephemeral
    key: str = opt("", kind="string", null_ok=True)
    previous_keys: Tuple[str, ...] = opt((), kind="string", many="list")  # PEM texts: published, only verify
    token_lifetime: float = opt(DEFAULT_TOKEN_LIFETIME, kind="positive_duration")


_HAS_PROVIDERS = {"required": ["providers"], "properties": {"providers": {"type": "object", "minProperties": 1}}}


@dataclass(frozen=True)
class Config:
    # every section but routes may be empty (``server:``)
    server: ServerConfig = opt(kind="section", factory=ServerConfig, item=ServerConfig, null_ok=True)
    session: SessionConfig = opt(kind="section", factory=SessionConfig, item=SessionConfig, null_ok=True)
    providers: Mapping[str, ProviderConfig] = opt(kind="named", factory=dict, item=ProviderConfig,
                                                  names="provider_name", null_ok=True)
    tokens: Tuple[TokenIssuerConfig, ...] = opt((), kind="list", item=TokenIssuerConfig, null_ok=True)
    signing: SigningConfig = opt(kind="section", factory=SigningConfig, item=SigningConfig, null_ok=True)
    routes: Tuple[RouteConfig, ...] = opt((), kind="list", item=RouteConfig, nonempty=True, required=True)
    source: str = opt(DEFAULT_CONFIG_PATH, kind="string", key=None)  # the file it was read from
    # setups that load but cannot work as probably meant, as "FILE:LINE: warning: ..." (gateway check prints them)
    warnings: Tuple[str, ...] = opt((), kind="string", many="list", key=None)

    json_rules: ClassVar[dict] = {"allOf": [
        # login providers need the session secret; auth: login needs a provider
        _when(_HAS_PROVIDERS, {"required": ["session"], "properties": {"session": {
            "type": "object", "required": ["secret"],
            "properties": {"secret": {"not": {"enum": [None, ""]}}}}}}),
        _when({"not": _HAS_PROVIDERS}, {"properties": {"routes": {"items": {
            "properties": {"auth": {"not": {"const": AUTH_LOGIN}}}}}}}),
    ]}


# --------------------------------------------------------------------------- JSON Schema
#
# Each kind of value as the YAML may write it, before ``${VAR}`` substitution: what the rules
# accept, as far as a JSON Schema can say it (files, key sizes and references between sections
# are checked by the rules only). A value that the rules read as text (``get_str``) may be
# written as a number or a boolean too (``client_id: 123456``).


def _text_matching(pattern: str, *, plain: bool = True) -> dict:
    """Text matching ``pattern``; ``plain``: a number or boolean, whose text may match, too."""
    text = {"type": "string", "pattern": pattern}
    return {"anyOf": [text, {"type": ["number", "boolean"]}]} if plain else text


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_TEXT = {"type": ["string", "number", "boolean"], "minLength": 1}
_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 7230 token (cookie names, header names, methods)
_LABELS = "[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*"
_AUTHORITY = "://[^\\s/?#@]+"
_PATH_SEGMENT = "/(?!\\.\\.?(/|$))[^/?#\\s\\u0000-\\u001f\\u007f]+"
_DURATION = "^\\s*([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+\\s*$|^\\s*[0-9]+(\\.[0-9]+)?\\s*$"
_PORT = "0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"  # 0 to 65535


def _json_kinds() -> dict[str, dict]:
    algorithms = "|".join(_any_case(a) for a in sorted(SUPPORTED_ALGORITHMS))
    hostport = {"type": "string", "pattern": f"^\\s*(\\[[0-9A-Fa-f:.]+(%[^\\]]+)?\\]|[A-Za-z0-9_.-]+):{_PORT}\\s*$"}
    return {
        "string": _TEXT,
        "token": _text_matching(f"^{_TOKEN}$"),
        "method": _text_matching(f"^\\s*{_TOKEN}\\s*$"),
        "route_name": _text_matching("^[A-Za-z0-9_.-]+$"),
        "host": _text_matching(f"^\\s*(\\*\\.)?{_LABELS}\\.*\\s*$"),
        "hostname": _text_matching(f"^{_LABELS}\\.*$"),
        "cookie_domain": _text_matching("^\\.*[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)+$"),  # with a dot
        "email_domain": _text_matching(f"^\\s*@?{_LABELS}\\s*$"),
        "email": {"type": "string", "pattern": "^.+@[^@]+$"},
        "path": {"type": "string", "pattern": f"^(?=/)({_PATH_SEGMENT})*/?$"},
        "url": {"type": "string", "pattern": f"^{_any_case('http')}[sS]?{_AUTHORITY}(/[^\\s?#]*)?$"},
        "url_query": {"type": "string", "pattern": f"^{_any_case('http')}[sS]?{_AUTHORITY}([/?][^\\s#]*)?$"},
        "origin": {"type": "string",
                   "pattern": "^https?://([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(:[0-9]{1,5})?$"},
        "store": {"type": "string",
                  "pattern": f"^(cookie|{_any_case('redis')}[sS]?://[^\\s/?#]+([/?][^\\s#]*)?)$"},
        "bool": {"type": "boolean"},
        "integer": {"type": "integer", "minimum": 0},
        "workers": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]},
        "duration": {"anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
                               {"type": "string", "pattern": _DURATION}]},
        "positive_duration": {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
                                        {"type": "string", "allOf": [{"pattern": _DURATION}, {"pattern": "[1-9]"}]}]},
        "size": {"anyOf": [{"type": "integer", "minimum": 0},
                           {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([kKmMgGtT][iI]?[bB]?|[bB])?\\s*$"}]},
        "hostport": hostport,
        "admin_listen": {"anyOf": [hostport, {"type": "string", "pattern": "^[oO][fF][fF]$"}, {"const": False}]},
        "auth": {"enum": list(AUTH_MODES)},
        "provider_type": {"enum": list(PROVIDER_TYPES)},
        "preset": {"enum": list(PRESETS)},
        "auth_method": {"enum": list(TOKEN_AUTH_METHODS)},
        "log_format": {"enum": ["text", "json"]},
        "algorithm": {"type": "string", "pattern": f"^\\s*({algorithms})\\s*$"},
        "provider_name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    }


_JSON_KINDS: dict[str, dict] = _json_kinds()


def _takes_any_text(schema: dict) -> bool:
    """Whether every non-empty string is valid (so ``${VAR}`` already is)."""
    if "anyOf" in schema:
        return any(_takes_any_text(branch) for branch in schema["anyOf"])
    types = schema.get("type")
    return ("string" == types or isinstance(types, list) and "string" in types) and not (
        set(schema) - {"type", "minLength"}) and schema.get("minLength", 0) <= 1


def _scalar(kind: str) -> dict:
    """The schema of one value of ``kind``, a ``${VAR}`` reference included."""
    schema = _JSON_KINDS[kind]
    if _takes_any_text(schema):
        return dict(schema)
    branches = list(schema["anyOf"]) if list(schema) == ["anyOf"] else [schema]
    return {"anyOf": [*branches, ENV_REFERENCE]}


def _value(f: Any) -> dict:
    """The schema of a field's value, from its declaration."""
    meta = f.metadata
    kind: str = meta["kind"]
    item: Any = meta.get("item")
    if kind == "section":
        schema = json_schema(item)
    elif kind == "named":
        schema = {"type": "object", "propertyNames": _JSON_KINDS[meta["names"]],
                  "additionalProperties": json_schema(item)}
    elif kind == "list":
        schema = {"type": "array", "items": json_schema(item)}
    elif kind == "assertion":  # true / false, or the mapping
        schema = {"anyOf": [*_scalar("bool")["anyOf"], json_schema(item)]}
    elif kind == "claims":  # claim name: a value or a list of values (text, numbers, booleans)
        schema = {"type": "object", "minProperties": 1, "additionalProperties": {
            "anyOf": [_scalar("string"), {"type": "array", "minItems": 1, "items": _scalar("string")}]}}
    elif kind == "claim_map":  # identity field: the provider's (dotted) field
        schema = {"type": "object", "properties": {name: _scalar("string") for name in IDENTITY_FIELDS},
                  "additionalProperties": False}
    elif meta.get("many") == "list":
        schema = {"type": "array", "items": _scalar(kind)}
    elif meta.get("many") == "one_or_list":
        one = _scalar(kind)
        schema = {"anyOf": [*(one["anyOf"] if list(one) == ["anyOf"] else [one]),
                            {"type": "array", "minItems": 1, "items": one}]}
    else:
        schema = _scalar(kind)
    if meta.get("nonempty"):
        schema["minProperties" if schema.get("type") == "object" else "minItems"] = 1
    if meta.get("null_ok"):
        if schema.get("type") in ("object", "array"):  # an empty section: properties apply to objects only
            schema["type"] = [schema["type"], "null"]
        else:
            schema = {"anyOf": [{"type": "null"}, {"const": ""},
                                *(schema["anyOf"] if list(schema) == ["anyOf"] else [schema])]}
    return schema


def yaml_keys(section: type) -> Tuple[str, ...]:
    """The keys a section's mapping accepts, in declaration order, derived from its fields."""
    keys = []
    for f in fields(section):
        key = f.metadata.get("key", _SAME)
        if key is not None:
            keys.append(f.name if key is _SAME else key)
    return tuple(keys)


def json_schema(section: Optional[type] = None) -> dict:
    """A JSON Schema (draft 2020-12) of ``section`` (default: the whole file), from the declaration.

    A value written as ``${VAR}`` or ``${VAR:-default}`` validates wherever a
    single value is allowed: editors see the text before substitution.
    """
    if section is None:
        whole = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "routes.yaml",
                 "description": "The gateway's configuration (routes.yaml); print it with: gateway schema",
                 **json_schema(Config)}
        whole["patternProperties"] = {"^x-": {}}  # room for YAML anchors
        return whole
    properties: dict[str, Any] = {}
    required = []
    for f in fields(section):
        key = f.metadata.get("key", _SAME)
        if key is None:
            continue
        key = f.name if key is _SAME else key
        properties[key] = _value(f)
        must = f.metadata.get("required")
        if must is None:
            must = f.default is MISSING and f.default_factory is MISSING
        if must:
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    rules = getattr(section, "json_rules", None)
    if rules:
        schema.update(rules)
    return schema
