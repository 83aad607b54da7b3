"""Tests for gateway.config.load: routes.yaml text in, Config or every error out."""

from __future__ import annotations

import ipaddress
import os
import textwrap
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    AUTH_LOGIN,
    AUTH_PUBLIC,
    AUTH_TOKEN,
    Config,
    ConfigError,
    ProviderConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    SessionConfig,
    TokenIssuerConfig,
)
from gateway.config import load, loads, parse_duration, parse_listen, parse_size

ROOT = Path(__file__).resolve().parent.parent
SECRET = "0123456789abcdef0123456789abcdef"  # exactly 32 bytes
ENV = {"S32": SECRET, "SHORT": "too-short"}


def errors(text: str, env: dict | None = None) -> list[str]:
    """The messages loads() raises for ``text`` (dedented); fails if it loads."""
    with pytest.raises(ConfigError) as info:
        loads(textwrap.dedent(text), env=ENV if env is None else env)
    return info.value.errors


def ok(text: str, env: dict | None = None, **kwargs) -> Config:
    return loads(textwrap.dedent(text), env=ENV if env is None else env, **kwargs)


# A route block that is valid on its own, for configs testing other sections.
ROUTE = """
routes:
  - name: app
    path: /
    upstream: http://127.0.0.1:9000
    auth: public
"""

# --------------------------------------------------------------------------- table of bad configs

BAD_CONFIGS = [
    pytest.param(
        "",
        ['routes.yaml:1: the file is empty; it needs at least a "routes" list'],
        id="empty-file",
    ),
    pytest.param(
        "# only a comment\n",
        ['routes.yaml:1: the file is empty; it needs at least a "routes" list'],
        id="only-comments",
    ),
    pytest.param(
        """\
        - name: app
          path: /
        """,
        ["routes.yaml:1: the top level must be a mapping with server, session, providers, tokens and routes"],
        id="top-level-list",
    ),
    pytest.param(
        """\
        server:
          listen: 127.0.0.1:8080
        routs: []
        """,
        [
            'routes.yaml:1: no routes: add a "routes" list with at least one route',
            'routes.yaml:3: unknown top-level key "routs" (did you mean "routes"?)',
        ],
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        routes: []
        """,
        ["routes.yaml:1: routes must list at least one route"],
        id="no-routes",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: /
            path: /other
            upstream: http://127.0.0.1:9000
        """,
        ['routes.yaml:4: duplicate key "path" in route "app" (first at line 3)'],
        id="duplicate-key",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            path: /api
            upstreem: http://127.0.0.1:9000
        """,
        [
            'routes.yaml:2: route "api": upstream is required, e.g. upstream: http://127.0.0.1:9000',
            'routes.yaml:4: unknown key "upstreem" in route "api" (did you mean "upstream"?)',
        ],
        id="unknown-route-key-with-hint",
    ),
    pytest.param(
        """\
        routes:
          - path: /
            upstream: http://127.0.0.1:9000
          - name: "bad name"
            path: /x
            upstream: http://127.0.0.1:9000
          - just a string
        """,
        [
            "routes.yaml:2: routes[0]: name is required",
            'routes.yaml:4: routes[1]: name "bad name" may only contain letters, digits, ".", "_" and "-"',
            "routes.yaml:7: routes[2] must be a mapping with name, path and upstream",
        ],
        id="route-names",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            path: api
            upstream: http://h
          - name: b
            path: /a//b
            upstream: http://h
          - name: c
            path: /a/../b
            upstream: http://h
          - name: d
            path: /a?x=1
            upstream: http://h
          - name: e
            upstream: http://h
        """,
        [
            'routes.yaml:3: route "a": path "api" must start with "/"',
            'routes.yaml:6: route "b": path "/a//b" must not contain "//"',
            'routes.yaml:9: route "c": path "/a/../b" must not contain "." or ".." segments',
            'routes.yaml:12: route "d": path "/a?x=1" must not contain "?" or "#" (a route matches paths only)',
            'routes.yaml:14: route "e": path is required, e.g. path: /',
        ],
        id="paths",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            path: /
            upstream: ftp://files.example.com
          - name: b
            path: /b
            upstream: [http://h1, "http://h2/x?y=1"]
          - name: c
            path: /c
            upstream: []
          - name: d
            path: /d
            upstream: http://user:pw@h
        """,
        [
            'routes.yaml:4: route "a": upstream must be an http:// or https:// URL (got "ftp://files.example.com")',
            'routes.yaml:7: route "b": upstream[1] must not have a query or fragment (got "http://h2/x?y=1")',
            'routes.yaml:10: route "c": upstream must not be an empty list',
            'routes.yaml:13: route "d": upstream must not contain user:password@',
        ],
        id="upstreams",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            path: /api
            upstream: http://127.0.0.1:9000
            auth: oidc
            strip_prefix: "yes"
            preserve_host: 1
            websocket: maybe
        """,
        [
            'routes.yaml:5: route "api": auth must be login, token or public (got "oidc")',
            'routes.yaml:6: route "api": strip_prefix must be true or false',
            'routes.yaml:7: route "api": preserve_host must be true or false',
            'routes.yaml:8: route "api": websocket must be true or false',
        ],
        id="booleans-and-auth",
    ),
    pytest.param(
        """\
        routes:
          - name: api
            path: /api
            upstream: http://127.0.0.1:9000
            timeout: 5x
            connect_timeout: 0s
            max_body_size: 10 parsecs
            methods: GET
        """,
        [
            'routes.yaml:5: route "api": timeout must be a duration such as 30s, 5m, 8h or 250ms (got "5x")',
            'routes.yaml:6: route "api": connect_timeout must be greater than zero',
            'routes.yaml:7: route "api": max_body_size must be a size such as 10MB, 512KB or 1GB, '
            'or a number of bytes (got "10 parsecs")',
            'routes.yaml:8: route "api": methods must be a list, e.g. [GET, POST]',
        ],
        id="durations-sizes-methods",
    ),
    pytest.param(
        """\
        routes:
          - name: web
            path: /
            upstream: http://127.0.0.1:3000
            auth: login
        """,
        ['routes.yaml:5: route "web": auth: login needs at least one provider under "providers"'],
        id="login-without-providers",
    ),
    pytest.param(
        """\
        session:
          secret: ${S32}
        providers:
          corp:
            issuer: https://idp.example.com
            client_id: gateway
            client_secret: s
        routes:
          - name: web
            path: /
            upstream: http://127.0.0.1:3000
            providers: [crop]
          - name: api
            path: /api
            upstream: http://127.0.0.1:9000
            auth: token
            providers: [corp]
        """,
        [
            'routes.yaml:12: route "web": unknown provider "crop" (did you mean "corp"?)',
            'routes.yaml:17: route "api": providers only applies to auth: login (this route uses auth: token)',
        ],
        id="route-providers",
    ),
    pytest.param(
        """\
        routes:
          - name: site
            path: /
            upstream: http://127.0.0.1:9000
            auth: public
            allow:
              - email_domain: example.com
          - name: api
            path: /api
            upstream: http://127.0.0.1:9000
            allow:
              - {}
              - emails: bob@example.com
              - email: bob
              - claim: {}
          - name: none
            path: /none
            upstream: http://127.0.0.1:9000
            allow: []
        """,
        [
            'routes.yaml:6: route "site": allow cannot be used with auth: public (a public route admits everyone)',
            'routes.yaml:12: route "api": allow[0] is empty; a rule needs at least one of '
            "sub, email, email_domain, group, claim, method",
            'routes.yaml:13: unknown key "emails" in route "api" allow[1] (did you mean "email"?)',
            'routes.yaml:14: route "api": allow[2]: email "bob" is not an email address',
            'routes.yaml:15: route "api": allow[3]: claim must name at least one claim',
            'routes.yaml:19: route "none": allow is an empty list; remove it to admit every authenticated identity',
        ],
        id="allow-rules",
    ),
    pytest.param(
        """\
        routes:
          - name: one
            path: /app/
            upstream: http://127.0.0.1:9000
          - name: two
            path: /app
            upstream: http://127.0.0.1:9001
          - name: three
            host: "*.Example.com"
            path: /
            methods: [get]
            upstream: http://127.0.0.1:9000
          - name: four
            host: "*.example.com"
            path: /
            methods: [POST]
            upstream: http://127.0.0.1:9000
          - name: five
            host: "*.example.com"
            path: /
            methods: [post, put]
            upstream: http://127.0.0.1:9000
          - name: one
            path: /elsewhere
            upstream: http://127.0.0.1:9000
        """,
        [
            'routes.yaml:5: route "two": same path /app as route "one" (line 2) with overlapping methods; '
            "give one of them a different host, path or methods",
            'routes.yaml:18: route "five": same host *.example.com and path / as route "four" (line 13) '
            "with overlapping methods; give one of them a different host, path or methods",
            'routes.yaml:23: route "one": the name is already used by the route at line 2',
        ],
        id="duplicate-routes",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            host: "app example.com"
            path: /
            upstream: http://h
          - name: b
            host: "https://app.example.com"
            path: /
            upstream: http://h
        """,
        [
            'routes.yaml:3: route "a": host "app example.com" is not a valid host name '
            "(an exact name such as app.example.com, or *.example.com; no scheme, port or path)",
            'routes.yaml:7: route "b": host "https://app.example.com" is not a valid host name '
            "(an exact name such as app.example.com, or *.example.com; no scheme, port or path)",
        ],
        id="hosts",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        server:
          listen: 8080
          public_url: http://gw.example.com/?a=1
          admin_listen: "127.0.0.1:99999"
          trusted_proxies: [10.0.0.0/8, 10.0.0.300/8]
          workers: 0
          shutdown_grace: soon
          max_body_size: -1
          lisen: 127.0.0.1:8080
        """
        )
        + ROUTE,
        [
            'routes.yaml:2: server: listen must be HOST:PORT, e.g. 127.0.0.1:8080 (got "8080")',
            'routes.yaml:3: server: public_url must not have a query or fragment (got "http://gw.example.com/?a=1")',
            'routes.yaml:4: server: admin_listen "127.0.0.1:99999": the port must be a number from 0 to 65535',
            'routes.yaml:5: server: trusted_proxies[1] "10.0.0.300/8" is not an IP network '
            "(write an address or a CIDR such as 10.0.0.0/8)",
            'routes.yaml:6: server: workers must be a whole number of at least 1, or "auto"',
            'routes.yaml:7: server: shutdown_grace must be a duration such as 30s, 5m, 8h or 250ms (got "soon")',
            'routes.yaml:8: server: max_body_size must be a size such as 10MB, 512KB or 1GB, '
            'or a number of bytes (got "-1")',
            'routes.yaml:9: unknown key "lisen" in server (did you mean "listen"?)',
        ],
        id="server",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        server:
          listen: "::1:8080"
          admin_listen: ::1:8080
        """
        )
        + ROUTE,
        [
            'routes.yaml:2: server: listen "::1:8080": IPv6 addresses must be in brackets, e.g. [::1]:8080',
            'routes.yaml:3: server: admin_listen "::1:8080": IPv6 addresses must be in brackets, e.g. [::1]:8080',
        ],
        id="ipv6-listen",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        server:
          listen: 127.0.0.1:8080
          admin_listen: 127.0.0.1:8080
        """
        )
        + ROUTE,
        ["routes.yaml:3: server: admin_listen must differ from listen"],
        id="admin-listen-same-as-listen",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        session:
          secret: ${SHORT}
          previous_secrets: [x]
          cookie_name: "my session"
          lifetime: 0
          store: memcached://cache:11211
        """
        )
        + ROUTE,
        [
            "routes.yaml:2: session: secret is 9 bytes; it must be at least 32 (generate one with: openssl rand -base64 32)",
            "routes.yaml:3: session: previous_secrets[0] is 1 bytes; it must be at least 32 "
            "(generate one with: openssl rand -base64 32)",
            "routes.yaml:4: session: cookie_name \"my session\" is not a valid cookie name "
            "(letters, digits and !#$%&'*+-.^_`|~ only)",
            "routes.yaml:5: session: lifetime must be greater than zero",
            'routes.yaml:6: session: store must be "cookie" or a redis://, rediss://, redis+sentinel:// or '
            "rediss+sentinel:// URL",
        ],
        id="session",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        providers:
          corp:
            issuer: https://idp.example.com
            client_id: gateway
            client_secret: s
        """
        )
        + ROUTE,
        [
            "routes.yaml:1: session: secret is required when providers are configured "
            "(at least 32 random bytes, e.g. secret: ${GATEWAY_SESSION_SECRET})",
        ],
        id="providers-need-session-secret",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        session:
          secret: ${S32}
        providers:
          corp:
            issuer: idp.example.com
            client_id: gateway
            scopes: [email, profile]
            groups_claims: groups
          "bad name":
            issuer: https://x
          partner: just-a-string
        """
        )
        + ROUTE,
        [
            'routes.yaml:4: provider "corp": client_secret is required',
            'routes.yaml:5: provider "corp": issuer must be an http:// or https:// URL (got "idp.example.com")',
            'routes.yaml:7: provider "corp": scopes must include "openid"',
            'routes.yaml:8: unknown key "groups_claims" in provider "corp" (did you mean "groups_claim"?)',
            'routes.yaml:9: provider name "bad name" may only contain letters, digits, "_" and "-"',
            'routes.yaml:11: provider "partner" must be a mapping with issuer (or a preset), client_id and client_secret',
        ],
        id="providers",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        tokens:
          - issuer: ci-runner
            secret: ${S32}
            algorithms: [HS256, none]
          - issuer: https://idp.example.com
            audience: api
            algorithms: [RS257, HS256, NONE]
        """
        )
        + ROUTE,
        [
            'routes.yaml:2: tokens[0] (issuer "ci-runner"): audience is required '
            "(a string or a list; write audience: any to accept every audience)",
            'routes.yaml:4: tokens[0] (issuer "ci-runner"): algorithm none is never accepted',
            'routes.yaml:7: tokens[1] (issuer "https://idp.example.com"): algorithms[0]: '
            'unknown algorithm "RS257" (did you mean "RS256"?)',
            'routes.yaml:7: tokens[1] (issuer "https://idp.example.com"): algorithm none is never accepted',
        ],
        id="token-audience-and-algorithms",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        tokens:
          - issuer: ci-runner
            audience: any
            algorithms: [HS256, RS256]
            secret: ${S32}
          - issuer: https://idp.example.com
            audience: api
            algorithms: [HS256]
          - issuer: https://other.example.com
            audience: api
            algorithms: [RS256]
            secret: ${S32}
          - issuer: service-a
            audience: api
            algorithms: [ES256]
        """
        )
        + ROUTE,
        [
            'routes.yaml:4: tokens[0] (issuer "ci-runner"): algorithms mix HMAC (HS256) and public-key (RS256) '
            "algorithms; use separate entries (mixing them allows key-confusion attacks)",
            'routes.yaml:8: tokens[1] (issuer "https://idp.example.com"): HS256 needs a secret (the shared HMAC key)',
            'routes.yaml:12: tokens[2] (issuer "https://other.example.com"): secret is only for HMAC algorithms '
            "(HS256, HS384, HS512); RS256 needs public_key, jwks_uri or the issuer's discovery document",
            'routes.yaml:13: tokens[3] (issuer "service-a"): the issuer is not an http(s) URL, '
            "so its keys cannot be discovered; give jwks_uri or public_key",
        ],
        id="token-key-confusion",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        tokens:
          - issuer: ci-runner
            audience: any
            algorithms: [HS512]
            secret: ${SHORT}
          - issuer: https://idp.example.com
            audience: [api, any]
            algorithms: [RS256]
            jwks_uri: https://idp.example.com/jwks
            public_key: keys/idp.pem
          - issuer: ci-runner
            audience: any
            algorithms: [HS256]
            secret: ${S32}
            leeway: -5s
        """
        )
        + ROUTE,
        [
            'routes.yaml:5: tokens[0] (issuer "ci-runner"): secret is 9 bytes; it must be at least 32 '
            "(generate one with: openssl rand -base64 32)",
            'routes.yaml:7: tokens[1] (issuer "https://idp.example.com"): audience "any" cannot be part of a list',
            'routes.yaml:10: tokens[1] (issuer "https://idp.example.com"): give only one of secret, public_key '
            "and jwks_uri (found jwks_uri and public_key)",
            'routes.yaml:11: tokens[2] (issuer "ci-runner"): this issuer is already configured at line 2; '
            "list every audience and algorithm in one entry",
            'routes.yaml:15: tokens[2] (issuer "ci-runner"): leeway must be a duration such as 30s, 5m, 8h or 250ms '
            '(got "-5s")',
        ],
        id="token-secrets-and-duplicates",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        tokens:
          issuer: ci-runner
        """
        )
        + ROUTE,
        ["routes.yaml:2: tokens must be a list, e.g. - issuer: https://idp.example.com"],
        id="tokens-not-a-list",
    ),
    pytest.param(
        textwrap.dedent(
"""\
        tokens:
          - issuer: ci-runner
            audience: any
            algorithms: [HS256]
            secret: ${CI_JWT_SECRET}
        session:
          secret: "${GATEWAY_SESSION_SECRET:-}"
          cookie_name: ${COOKIE:-}
        """
        )
        + ROUTE,
        [
            "routes.yaml:5: environment variable CI_JWT_SECRET is not set",
            "routes.yaml:8: session: cookie_name must not be empty",
        ],
        id="env-missing",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: /${BROKEN
            upstream: http://${1HOST}
        """,
        [
            'routes.yaml:3: unterminated "${" in a value (write "$$" for a literal "$")',
            'routes.yaml:4: invalid environment reference "${1HOST}": write ${NAME} or ${NAME:-default}, '
            "or $$ for a literal $",
        ],
        id="env-syntax",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: /
            upstream: !!binary aGVsbG8=
        """,
        ['routes.yaml:4: unsupported YAML tag "tag:yaml.org,2002:binary"'],
        id="unsupported-tag",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: "/unterminated
        """,
        [
            "routes.yaml:4: invalid YAML: found unexpected end of stream "
            "(while scanning a quoted scalar at line 3)"
        ],
        id="yaml-syntax-error",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: /
           upstream: http://h
        """,
        ["routes.yaml:4: invalid YAML: this line is indented differently from the lines above it: keys of one "
         "mapping, and the items of one list, must start in the same column (the block starts at line 2)"],
        id="yaml-bad-indent",
    ),
    pytest.param(
        """\
        routes:
          - name: app
            path: /
          upstream: http://h
        """,
        ["routes.yaml:4: invalid YAML: this line is indented differently from the lines above it: keys of one "
         "mapping, and the items of one list, must start in the same column (the block starts at line 2)"],
        id="yaml-key-outdented-into-the-list",
    ),
    pytest.param(
        """\
        server:
          listen: 127.0.0.1:8080
            admin_listen: "off"
        """,
        ["routes.yaml:3: invalid YAML: this line is indented deeper than the key above it, or a value contains "
         "': ' (indent it like its neighbours, or quote the value)"],
        id="yaml-key-indented-deeper",
    ),
]


@pytest.mark.parametrize("text, expected", BAD_CONFIGS)
def test_bad_config(text, expected):
    assert errors(text) == expected


def test_table_is_large_enough():
    assert len(BAD_CONFIGS) >= 25


# --------------------------------------------------------------------------- a full, valid config

CONTRACT_EXAMPLE = """\
server:
  listen: 127.0.0.1:8080               # host:port of the proxy
  public_url: http://127.0.0.1:8080    # how browsers reach the gateway
  admin_listen: 127.0.0.1:9091         # "off" disables
  trusted_proxies: []

session:
  secret: ${GATEWAY_SESSION_SECRET}    # at least 32 bytes
  cookie_name: _gateway_session
  lifetime: 8h
  store: cookie

providers:
  corp:
    issuer: https://idp.example.com
    client_id: gateway
    client_secret: ${OIDC_CLIENT_SECRET}
    scopes: [openid, email, profile]
    groups_claim: groups
  partners:
    issuer: https://login.partner.example
    client_id: ...
    client_secret: ${PARTNER_SECRET}

tokens:
  - issuer: https://idp.example.com
    audience: api
    algorithms: [RS256, ES256]
  - issuer: ci-runner
    secret: ${CI_JWT_SECRET}
    algorithms: [HS256]
    audience: any

routes:
  - name: grafana
    host: grafana.example.com
    path: /
    upstream: http://127.0.0.1:3000
    auth: login
    providers: [corp]
    allow:
      - email_domain: example.com
        group: [admins, sre]
      - email: boss@partner.org
  - name: api
    path: /api
    upstream: http://127.0.0.1:9000
    strip_prefix: true
    auth: token
    timeout: 30s
"""

CONTRACT_ENV = {
    "GATEWAY_SESSION_SECRET": SECRET,
    "OIDC_CLIENT_SECRET": "oidc-secret",
    "PARTNER_SECRET": "partner-secret",
    "CI_JWT_SECRET": "k3Jv9QeT1zWm7YbX5pLs2dHn8fGc4aRu0oEi",
}


def test_contract_example_parses():
    cfg = loads(CONTRACT_EXAMPLE, env=CONTRACT_ENV)
    assert cfg == Config(
        server=ServerConfig(
            listen=("127.0.0.1", 8080),
            public_url="http://127.0.0.1:8080",
            admin_listen=("127.0.0.1", 9091),
            trusted_proxies=(),
        ),
        session=SessionConfig(
            secret=SECRET, cookie_name="_gateway_session", lifetime=8 * 3600.0, store="cookie"
        ),
        providers={
            "corp": ProviderConfig(
                name="corp",
                issuer="https://idp.example.com",
                client_id="gateway",
                client_secret="oidc-secret",
                scopes=("openid", "email", "profile"),
                groups_claim="groups",
                display_name="corp",
            ),
            "partners": ProviderConfig(
                name="partners",
                issuer="https://login.partner.example",
                client_id="...",
                client_secret="partner-secret",
                display_name="partners",
            ),
        },
        tokens=(
            TokenIssuerConfig(
                issuer="https://idp.example.com", algorithms=("RS256", "ES256"), audience=("api",)
            ),
            TokenIssuerConfig(issuer="ci-runner", algorithms=("HS256",), audience=None, secret=CONTRACT_ENV["CI_JWT_SECRET"]),
        ),
        routes=(
            RouteConfig(
                name="grafana",
                host="grafana.example.com",
                path="/",
                upstreams=("http://127.0.0.1:3000",),
                auth=AUTH_LOGIN,
                providers=("corp",),
                allow=(
                    Rule(email_domain=frozenset({"example.com"}), group=frozenset({"admins", "sre"})),
                    Rule(email=frozenset({"boss@partner.org"})),
                ),
                line=35,
            ),
            RouteConfig(
                name="api",
                path="/api",
                upstreams=("http://127.0.0.1:9000",),
                auth=AUTH_TOKEN,
                strip_prefix=True,
                timeout=30.0,
                line=45,
            ),
        ),
        source="routes.yaml",
    )
    assert list(cfg.providers) == ["corp", "partners"]


def test_every_option_and_normalisation():
    cfg = ok(
        """\
        server:
          listen: "[::1]:8443"
          public_url: https://gw.example.com/base/
          admin_listen: off
          trusted_proxies: [10.0.0.0/8, 192.168.1.7, "fd00::/8", 10.1.2.3/8]
          shutdown_grace: 1m30s
          workers: auto
          max_body_size: 10MB
        session:
          secret: ${S32}
          previous_secrets: ["${S32}"]
          lifetime: 1d
          store: "rediss://:pa55@redis.internal:6380/2"
        providers:
          corp:
            issuer: https://idp.example.com/
            client_id: gateway
            client_secret: "12345"
            scopes: [openid, groups, openid]
            display_name: Example Corp
        tokens:
          - issuer: https://idp.example.com/
            audience: [api, web, api]
            algorithms: [rs256, EdDSA]
            jwks_uri: https://idp.example.com/keys?p=policy
            leeway: 250ms
            groups_claim: roles
            email_claim: mail
            username_claim: upn
        routes:
          - name: web
            host: "*.Apps.Example.com."
            path: /app/
            upstream: [http://10.0.0.1:8080/, "https://[::1]:9443/base"]
            connect_timeout: 2s
            preserve_host: yes
            websocket: false
            methods: [get, post, propfind]
            max_body_size: 512KiB
            allow:
              - email: Bob@Example.COM
                email_domain: ["@Example.com", corp.example.com]
                method: get
              - sub: [12345, abc]
                claim:
                  tenant: acme
                  admin: true
                  level: [1, 0x10]
          - name: docs.v1
            path: /docs
            upstream: http://127.0.0.1:9000
            auth: public
        """
    )
    assert cfg.server == ServerConfig(
        listen=("::1", 8443),
        public_url="https://gw.example.com/base",
        admin_listen=None,
        trusted_proxies=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.7/32"),
            ipaddress.ip_network("fd00::/8"),
        ),
        shutdown_grace=90.0,
        workers=os.cpu_count() or 1,
        max_body_size=10 * 1024 * 1024,
    )
    assert cfg.session == SessionConfig(
        secret=SECRET,
        previous_secrets=(SECRET,),
        lifetime=86400.0,
        store="rediss://:pa55@redis.internal:6380/2",
    )
    assert cfg.providers["corp"] == ProviderConfig(
        name="corp",
        issuer="https://idp.example.com/",  # issuers are compared exactly with "iss": never rewritten
        client_id="gateway",
        client_secret="12345",
        scopes=("openid", "groups"),
        display_name="Example Corp",
    )
    assert cfg.tokens == (
        TokenIssuerConfig(
            issuer="https://idp.example.com/",
            algorithms=("RS256", "EdDSA"),
            audience=("api", "web"),
            jwks_uri="https://idp.example.com/keys?p=policy",
            leeway=0.25,
            groups_claim="roles",
            email_claim="mail",
            username_claim="upn",
        ),
    )
    web, docs = cfg.routes
    assert web == RouteConfig(
        name="web",
        host="*.apps.example.com",
        path="/app",
        upstreams=("http://10.0.0.1:8080", "https://[::1]:9443/base"),
        auth=AUTH_LOGIN,
        providers=("corp",),
        allow=(
            Rule(
                email=frozenset({"bob@example.com"}),
                email_domain=frozenset({"example.com", "corp.example.com"}),
                method=frozenset({"GET"}),
            ),
            Rule(
                sub=frozenset({"12345", "abc"}),
                claim=(
                    ("admin", frozenset({"true"})),
                    ("level", frozenset({"1", "16"})),
                    ("tenant", frozenset({"acme"})),
                ),
            ),
        ),
        preserve_host=True,
        connect_timeout=2.0,
        methods=frozenset({"GET", "POST", "PROPFIND"}),
        websocket=False,
        max_body_size=512 * 1024,
        line=31,
    )
    assert docs.auth == AUTH_PUBLIC and docs.providers == () and docs.allow == ()


def test_auth_defaults_to_login_with_providers_and_token_without():
    with_providers = ok(
        """\
        session: {secret: "${S32}"}
        providers:
          a: {issuer: "https://a.example", client_id: x, client_secret: y}
          b: {issuer: "https://b.example", client_id: x, client_secret: y}
        routes:
          - {name: app, path: /, upstream: "http://h"}
        """
    )
    assert with_providers.routes[0].auth == AUTH_LOGIN
    assert with_providers.routes[0].providers == ("a", "b")
    without = ok("routes:\n  - {name: app, path: /, upstream: 'http://h'}\n")
    assert without.routes[0].auth == AUTH_TOKEN
    assert without.routes[0].providers == ()
    assert without.session.secret is None  # optional without providers


def test_defaults_without_sections():
    cfg = ok("routes:\n  - {name: app, path: /, upstream: 'http://h'}\n")
    assert cfg.server == ServerConfig()
    assert cfg.session == SessionConfig()
    assert cfg.providers == {} and cfg.tokens == ()


def test_public_url_defaults_to_the_listen_address():
    cfg = ok("server: {listen: '0.0.0.0:9000'}\n" + ROUTE)
    assert cfg.server.listen == ("0.0.0.0", 9000)
    assert cfg.server.public_url == "http://127.0.0.1:9000"


def test_routes_with_different_methods_or_hosts_are_not_duplicates():
    cfg = ok(
        """\
        routes:
          - {name: read, path: /x, methods: [GET], upstream: "http://h"}
          - {name: write, path: /x, methods: [POST], upstream: "http://h"}
          - {name: other-host, host: a.example.com, path: /x, upstream: "http://h"}
        """
    )
    assert [r.name for r in cfg.routes] == ["read", "write", "other-host"]


def test_merge_keys_and_x_extensions():
    cfg = ok(
        """\
        x-defaults: &defaults
          upstream: http://127.0.0.1:9000
          timeout: 5s
        routes:
          - <<: *defaults
            name: a
            path: /a
          - <<: *defaults
            name: b
            path: /b
            timeout: 7s
        """
    )
    assert [(r.name, r.timeout, r.upstreams) for r in cfg.routes] == [
        ("a", 5.0, ("http://127.0.0.1:9000",)),
        ("b", 7.0, ("http://127.0.0.1:9000",)),
    ]


# --------------------------------------------------------------------------- environment


def test_env_substitution_with_defaults_and_escapes():
    cfg = ok(
        """\
        server:
          listen: ${HOST:-127.0.0.1}:${PORT}
          workers: ${WORKERS:-2}
        session:
          secret: $${S32}-${S32}
        routes:
          - name: app
            path: /${PREFIX:-app}
            upstream: ${UPSTREAM:-http://127.0.0.1:9000}
            strip_prefix: ${STRIP:-true}
            auth: ${AUTH}
            allow:
              - sub: ${EMPTY:-fallback}
              - sub: price$5
        """,
        env={"PORT": "8081", "S32": SECRET, "AUTH": "token", "EMPTY": ""},
    )
    assert cfg.server.listen == ("127.0.0.1", 8081)
    assert cfg.server.workers == 2
    assert cfg.session.secret == "${S32}-" + SECRET
    route = cfg.routes[0]
    assert route.path == "/app"
    assert route.upstreams == ("http://127.0.0.1:9000",)
    assert route.strip_prefix is True  # a plain value is re-read as YAML after substitution
    assert route.auth == AUTH_TOKEN
    assert route.allow[0].sub == frozenset({"fallback"})  # like the shell, :- also replaces an empty value
    assert route.allow[1].sub == frozenset({"price$5"})


def test_env_quoted_value_stays_a_string():
    assert errors(
        """\
        routes:
          - name: app
            path: /
            upstream: http://h
            strip_prefix: "${STRIP:-true}"
        """
    ) == ['routes.yaml:5: route "app": strip_prefix must be true or false']


def test_env_missing_variable_is_named():
    assert errors(
        textwrap.dedent(
"""\
        session:
          secret: ${S32}
        providers:
          corp:
            issuer: https://idp.example.com
            client_id: gateway
            client_secret: ${OIDC_CLIENT_SECRET}
        """
        )
        + ROUTE
    ) == ["routes.yaml:7: environment variable OIDC_CLIENT_SECRET is not set"]


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("GATEWAY_TEST_UPSTREAM", "http://10.9.8.7:1234")
    cfg = loads("routes:\n  - {name: a, path: /, upstream: '${GATEWAY_TEST_UPSTREAM}'}\n")
    assert cfg.routes[0].upstreams == ("http://10.9.8.7:1234",)


def test_secret_values_never_appear_in_messages():
    secret = "hunter2-but-not-long-enough"
    messages = errors(
        textwrap.dedent(
"""\
        session: {secret: "${SEKRIT}"}
        tokens:
          - {issuer: ci, audience: any, algorithms: [HS256], secret: "${SEKRIT}"}
        """
        )
        + ROUTE,
        env={"SEKRIT": secret},
    )
    assert len(messages) == 2
    assert not any(secret in m for m in messages)


# --------------------------------------------------------------------------- all at once


def test_all_errors_are_reported_at_once():
    messages = errors(
        """\
        server:
          listen: nowhere
        session:
          lifetime: forever
        routes:
          - name: api
            path: /api
            upstream: http://127.0.0.1:9000
            strip_prefix: sometimes
            timeout: 30 seconds
        """
    )
    assert messages == [
        'routes.yaml:2: server: listen must be HOST:PORT, e.g. 127.0.0.1:8080 (got "nowhere")',
        'routes.yaml:4: session: lifetime must be a duration such as 30s, 5m, 8h or 250ms (got "forever")',
        'routes.yaml:9: route "api": strip_prefix must be true or false',
        'routes.yaml:10: route "api": timeout must be a duration such as 30s, 5m, 8h or 250ms (got "30 seconds")',
    ]


def test_config_error_message_joins_every_error():
    with pytest.raises(ConfigError) as info:
        loads("routes: []\nfoo: 1\n", source="conf/gw.yaml")
    assert str(info.value) == (
        "conf/gw.yaml:1: routes must list at least one route\n" 'conf/gw.yaml:2: unknown top-level key "foo"'
    )


# --------------------------------------------------------------------------- files


def _write_keys(directory: Path) -> rsa.RSAPrivateKey:
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "keys").mkdir()
    (directory / "keys" / "rsa.pem").write_bytes(key.public_key().public_bytes(pem, spki))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (directory / "keys" / "ec.pem").write_bytes(ec_key.public_key().public_bytes(pem, spki))
    (directory / "keys" / "private.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key


def test_load_reads_public_keys_relative_to_the_config_file(tmp_path):
    _write_keys(tmp_path)
    pem = (tmp_path / "keys" / "rsa.pem").read_text()
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(
        textwrap.dedent(
            """\
            tokens:
              - issuer: from-file
                audience: api
                algorithms: [RS256, PS256]
                public_key: keys/rsa.pem
              - issuer: inline
                audience: api
                algorithms: [RS256]
                public_key: |
            """
        )
        + textwrap.indent(pem, " " * 6)
        + textwrap.dedent(ROUTE)
    )
    cfg = load(str(config_file), env={})
    assert cfg.source == str(config_file)
    assert cfg.tokens[0].public_key == pem
    assert cfg.tokens[1].public_key == pem


def test_public_key_problems(tmp_path):
    _write_keys(tmp_path)
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(
        textwrap.dedent(
            """\
            tokens:
              - issuer: a
                audience: api
                algorithms: [ES384]
                public_key: keys/ec.pem
              - issuer: b
                audience: api
                algorithms: [RS256]
                public_key: keys/private.pem
              - issuer: c
                audience: api
                algorithms: [RS256]
                public_key: keys/missing.pem
              - issuer: d
                audience: api
                algorithms: [RS256]
                public_key: "-----BEGIN PUBLIC KEY-----\\nnot base64\\n-----END PUBLIC KEY-----\\n"
              - issuer: e
                audience: api
                algorithms: [EdDSA]
                public_key: keys/rsa.pem
            """
        )
        + textwrap.dedent(ROUTE)
    )
    with pytest.raises(ConfigError) as info:
        load(str(config_file), env={})
    f = str(config_file)
    assert info.value.errors == [
        f'{f}:5: tokens[0] (issuer "a"): public_key file "keys/ec.pem" is an EC key on secp256r1, '
        "which cannot verify ES384",
        f'{f}:9: tokens[1] (issuer "b"): public_key file "keys/private.pem" holds a private key; '
        "give only the public key (-----BEGIN PUBLIC KEY-----)",
        f'{f}:13: tokens[2] (issuer "c"): public_key file "keys/missing.pem" cannot be read: '
        "No such file or directory",
        f'{f}:17: tokens[3] (issuer "d"): public_key is not a PEM public key (-----BEGIN PUBLIC KEY-----)',
        f'{f}:21: tokens[4] (issuer "e"): public_key file "keys/rsa.pem" is an RSA key, which cannot verify EdDSA',
    ]


def test_load_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert info.value.errors == [f"{missing}: cannot read the config file: No such file or directory"]


def test_load_rejects_invalid_utf8(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"routes:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.errors == [f"{path}:2: the file is not valid UTF-8 text"]


def test_shipped_routes_yaml_loads():
    cfg = load(str(ROOT / "routes.yaml"), env={"GATEWAY_SESSION_SECRET": SECRET})
    assert cfg.server.listen == ("127.0.0.1", 8080)
    assert cfg.server.admin_listen == ("127.0.0.1", 9091)
    assert cfg.providers == {}
    assert [(t.issuer, t.algorithms, t.audience, t.secret) for t in cfg.tokens] == [
        ("https://idp.example.com", ("RS256", "ES256"), ("api",), None)]
    assert {r.name: (r.path, r.auth) for r in cfg.routes} == {
        "public": ("/public", AUTH_PUBLIC),
        "api": ("/api", AUTH_TOKEN),
    }
    assert cfg.routes[1].strip_prefix is True


def test_shipped_routes_yaml_needs_the_session_secret():
    """No secret has a default in what we ship: both must come from the environment."""
    with pytest.raises(ConfigError) as info:
        load(str(ROOT / "routes.yaml"), env={})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].endswith("environment variable GATEWAY_SESSION_SECRET is not set")
    for line in (ROOT / "routes.yaml").read_text().splitlines():
        if "secret" in line.split("#", 1)[0] and "${" in line:
            assert ":-" not in line, line


# --------------------------------------------------------------------------- value parsers


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30.0), ("5m", 300.0), ("8h", 28800.0), ("1d", 86400.0), ("250ms", 0.25), ("1h30m", 5400.0),
     ("1.5s", 1.5), ("45", 45.0), (45, 45.0), (0.5, 0.5), ("0s", 0.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "5x", "-5s", "5 s", "1e3", True, None, [], "5S", -1, float("inf"), "99999999d"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, size",
    [("10MB", 10 * 2**20), ("512KB", 512 * 2**10), ("1GB", 2**30), ("64KiB", 64 * 2**10), ("2M", 2 * 2**20),
     ("1.5kb", 1536), ("100", 100), (100, 100), ("0", 0), ("7B", 7), ("1 TiB", 2**40)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "10XB", "-1", -1, True, 1.5, "ten"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0)),
     ("0.0.0.0:65535", ("0.0.0.0", 65535))],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["8080", ":8080", "host:", "host:port", "::1:80", "[::1]80", "[zz]:80", "h:70000", "a b:1"]
)
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)


# --------------------------------------------------------------------------- properties

KNOWN_KEYS = [
    "server", "session", "providers", "tokens", "routes", "listen", "public_url", "admin_listen",
    "trusted_proxies", "workers", "max_body_size", "shutdown_grace", "secret", "previous_secrets",
    "cookie_name", "lifetime", "store", "issuer", "client_id", "client_secret", "scopes", "audience",
    "algorithms", "public_key", "jwks_uri", "leeway", "name", "host", "path", "upstream", "auth", "allow",
    "strip_prefix", "timeout", "methods", "websocket", "email", "email_domain", "group", "claim", "method",
    "sub", "<<",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["/", "/api", "http://127.0.0.1:9000", "login", "token", "public", "any", "HS256", "RS256", "none",
         "30s", "10MB", "off", "auto", "${S32}", "${MISSING}", "${X:-y}", "$$", "${", "127.0.0.1:8080",
         "*.example.com", "openid", SECRET, "-----BEGIN PUBLIC KEY-----", "keys/x.pem", "a@b.c", "@x"]
    ),
    st.text(max_size=20),
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _loads_or_config_error(text: str) -> None:
    try:
        result = loads(text, env=ENV, base_dir="/nonexistent-dir")
    except ConfigError as exc:
        assert exc.errors and all(isinstance(m, str) and m.startswith("routes.yaml:") for m in exc.errors)
    else:
        assert isinstance(result, Config)


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_returns_config_or_config_error(text):
    _loads_or_config_error(text)


@FAST
@given(st.dictionaries(st.sampled_from(["server", "session", "providers", "tokens", "routes"]), STRUCTURES))
def test_arbitrary_structures_return_config_or_config_error(data):
    _loads_or_config_error(yaml.safe_dump(data, allow_unicode=True))


ROUTE_FIELDS = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "x.y"]), "path": st.sampled_from(["/", "/a", "/a/", "a", "/a/../b"])},
    optional={
        key: STRUCTURES for key in ["upstream", "auth", "allow", "methods", "host", "providers", "timeout"]
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROUTE_FIELDS, min_size=1, max_size=3), st.one_of(st.none(), STRUCTURES))
def test_arbitrary_routes_return_config_or_config_error(routes, providers):
    _loads_or_config_error(yaml.safe_dump({"routes": routes, "providers": providers}, allow_unicode=True))


LAUGHS = (
    "x-a0: &a0 {timeout: 1s}\n"
    + "".join(f"x-a{i}: &a{i}\n  <<: [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 15))
    + "routes:\n  - <<: *a14\n    name: x\n    path: /\n    upstream: http://h\n"
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: &a [*a]\nroutes: *a\n", id="recursive-alias"),
        pytest.param("routes: &r\n  - name: x\n    path: /\n    upstream: *r\n", id="alias-to-parent"),
        pytest.param("routes:\n  - &m\n    <<: *m\n", id="recursive-merge"),
        pytest.param("routes: " + "[" * 1200 + "]" * 1200, id="deep-nesting"),
        pytest.param(
            "routes:\n  - name: a\n    path: /\n    upstream: http://h\n    allow: [{claim: &c {x: *c}}]\n",
            id="recursive-claim",
        ),
        pytest.param("---\nroutes: []\n---\nroutes: []\n", id="two-documents"),
        pytest.param("routes: !!python/object/apply:os.system ['true']\n", id="python-tag"),
        pytest.param("\x00", id="nul"),
        pytest.param("routes:\n\t- a\n", id="tab"),
    ],
)
def test_hostile_yaml_is_a_config_error(text):
    with pytest.raises(ConfigError):
        loads(text, env=ENV)


def test_billion_laughs_of_merges_is_cheap():
    cfg = loads(LAUGHS, env=ENV)  # 9**14 merge paths, each mapping merged once
    assert cfg.routes[0].timeout == 1.0


# -- libyaml composes when it is there; PyYAML's parser decides everything else --


def _tree(node, ancestors=()):
    """A node tree as plain data: tag, value, whether plain, and the line, which error messages cite."""
    if node is None:
        return None
    if id(node) in ancestors:  # an alias of an enclosing node
        return ("cycle", node.tag)
    line, inner = node.start_mark.line, ancestors + (id(node),)
    if isinstance(node, yaml.ScalarNode):
        return (node.tag, node.value, not node.style, line)
    if isinstance(node, yaml.SequenceNode):
        return (node.tag, [_tree(item, inner) for item in node.value], line)
    return (node.tag, [(_tree(k, inner), _tree(v, inner)) for k, v in node.value], line)


def _pure(text):
    try:
        return ("ok", _tree(yaml.compose(text, Loader=yaml.SafeLoader)))
    except yaml.YAMLError:
        return ("refused",)


_YAML_PIECES = st.sampled_from(["routes:", "\n", "  ", "- ", "name: a", "path: /x/", "a: b", "'q'", '"d\\n"', "[1, 2]",
                                "{a: 1}", "&x ", "*x", "<<: *x", "!!str ", "? k", ": v", "#c", "---", "...", "|\n  t",
                                ">-\n  t", "\t", "${X:-2}", "null", "~", "yes", "0x1F", "1e3", "%YAML 1.1\n", "\ufeff",
                                "\x85", "é", "\x07", "|", ">", "!", "%", "&", "*", "{", "}", "[", "]", ",", ":", " ",
                                "\n  - ", "\n    ", "x"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_YAML_PIECES, max_size=20).map("".join), st.booleans())
def test_compose_gives_the_tree_or_the_refusal_pure_pyyaml_gives(text, newline):
    text += "\n" if newline else ""
    from gateway.config.source import compose

    want = _pure(text)
    try:
        got = ("ok", _tree(compose("routes.yaml", text)))
    except ConfigError:
        got = ("refused",)
    assert got == want, text
