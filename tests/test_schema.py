"""``gateway schema`` and the shipped routes.schema.json say what the loader accepts.

The schema is derived from the one declaration (gateway/config/schema.py); the
loader is the rules of gateway/config/rules. These tests hold the two together:

* the schema is a valid draft 2020-12 schema, the shipped copy is the command's output,
  and the shipped routes.yaml (with its commented-out examples uncommented) validates;
* every section accepts the same keys in both, derived from the rules' key lists and by
  asking the loader; an unknown key fails at every level;
* ``${VAR}`` validates wherever a single value goes;
* for the special shapes (``admin_listen: off``, ``workers: auto``, durations, sizes,
  ``audience: any``, ``identity_assertion: true``, ...) the schema and the loader agree;
* a property: random configs built from the schema's keys either fail to load or
  validate, so the schema never refuses what the loader accepts.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from importlib import import_module
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    Assertion,
    Config,
    ConfigError,
    ProviderConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    ServerTLS,
    SessionConfig,
    SigningConfig,
    TokenIssuerConfig,
    UpstreamTLS,
    json_schema,
    loads,
    yaml_keys,
)
from gateway.config import schema as schema_module
from gateway.config import source as source_module
from gateway.config.rules import providers as providers_rules
from gateway.config.rules import routes as routes_rules
from gateway.config.rules import server as server_rules
from gateway.config.rules import session as session_rules
from gateway.config.rules import signing as signing_rules
from gateway.config.rules import tokens as tokens_rules

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (pip install -e '.[test]')")
Draft202012Validator = jsonschema.Draft202012Validator

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
LOAD = import_module("gateway.config.load")  # the module (gateway.config.load is also a function)
SCHEMA = json_schema()
VALIDATOR = Draft202012Validator(SCHEMA)
SECRET = "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a"
EXAMPLES = int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "300"))


def valid(data) -> bool:
    return VALIDATOR.is_valid(data)


def schema_errors(data) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:160]}" for e in VALIDATOR.iter_errors(data)]


# --------------------------------------------------------------------------- files the loader reads


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("schema-files"))


def make_files(folder: Path) -> Path:
    """A self-signed certificate and its key (also a CA, a signing key, a public key) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (folder / "key.pem").write_bytes(pem_key)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return folder


ENV = {
    "V_TEXT": "value", "V_URL": "https://127.0.0.1:9443", "V_BOOL": "true", "V_INT": "3", "V_DUR": "30s",
    "V_SIZE": "1MB", "V_HOST": "127.0.0.1", "V_SECRET": SECRET, "V_EMPTY": "",
}


def load_text(text: str, folder: Path):
    """(Config, None) or (None, errors)."""
    try:
        return loads(text, env=ENV, base_dir=str(folder)), None
    except ConfigError as exc:
        return None, exc.errors


def load_data(data, folder: Path):
    return load_text(yaml.safe_dump(data, sort_keys=False), folder)


# --------------------------------------------------------------------------- the schema itself


def test_the_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_shipped_schema_is_the_commands_output():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "gateway", "schema"], cwd=ROOT, env=env,
                            capture_output=True, timeout=60, check=True)
    shipped = (ROOT / "routes.schema.json").read_bytes()
    assert result.stdout == shipped, "routes.schema.json is stale: run python -m gateway schema > routes.schema.json"
    assert json.loads(shipped) == SCHEMA
    assert result.stdout.decode() == json.dumps(SCHEMA, indent=2) + "\n"


def test_the_longest_duration_is_the_loaders():
    assert schema_module.MAX_SECONDS == source_module._MAX_SECONDS


# --------------------------------------------------------------------------- the shipped files


@pytest.mark.parametrize("name, ref", [("routes.yaml", "routes.schema.json"),
                                       ("deploy/image-routes.yaml", "../routes.schema.json")])
def test_shipped_configs_name_the_schema_and_validate(name, ref):
    path = ROOT / name
    text = path.read_text()
    assert text.splitlines()[0] == f"# yaml-language-server: $schema={ref}"
    assert (path.parent / ref).resolve() == ROOT / "routes.schema.json"
    assert schema_errors(yaml.safe_load(text)) == []
    config = loads(text, env={"GATEWAY_SESSION_SECRET": SECRET}, base_dir=str(path.parent))
    assert config.routes


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key written twice is an error (two alternatives uncommented together)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _all_keys(schema) -> set[str]:
    keys: set[str] = set()
    if isinstance(schema, dict):
        keys.update(schema.get("properties", {}))
        for value in schema.values():
            keys |= _all_keys(value)
    elif isinstance(schema, list):
        for value in schema:
            keys |= _all_keys(value)
    return keys


_COMMENT = re.compile(r"^(\s*)# ?(.*)$")
_KEY = re.compile(r"(?:- )?([A-Za-z_][\w-]*):(?:\s|$)")


def _uncommented(line: str, known: set[str]):
    """``("yaml", text)`` for a commented-out line of YAML, ``("comment", text)`` for a comment
    inside such an example, None for prose."""
    match = _COMMENT.match(line)
    if not match:
        return None
    indent, rest = match.groups()
    body = rest.lstrip()
    if body.startswith("#"):
        return "comment", indent + rest
    key = _KEY.match(body)
    # a key of the schema, or a name (a provider's) indented under one
    if key and (key.group(1) in known or (len(rest) > len(body) and key.group(1).islower())):
        return "yaml", indent + rest
    return None


def example_variants(text: str):
    """The file with its commented-out examples uncommented: each run of commented-out YAML
    lines as a whole, and each of the run's outermost entries (with the lines under it) alone."""
    known = _all_keys(SCHEMA)
    lines = text.splitlines()
    runs: list[list[int]] = [[]]
    for number, line in enumerate(lines):
        kind = _uncommented(line, known)
        if kind is not None and (kind[0] == "yaml" or runs[-1]):
            runs[-1].append(number)
        elif runs[-1]:
            runs.append([])

    def with_lines(numbers):
        out = list(lines)
        for n in numbers:
            out[n] = _uncommented(lines[n], known)[1]
        return "\n".join(out) + "\n"

    for run in runs:
        entries = [n for n in run if _uncommented(lines[n], known)[0] == "yaml"]
        if not entries:
            continue
        yield with_lines(run)
        depth = {n: len(t) - len(t.lstrip()) for n in run for t in [_uncommented(lines[n], known)[1]]}
        outer = min(depth[n] for n in entries)
        for position, start in enumerate(run):
            if start not in entries or depth[start] != outer:
                continue
            block = [start]
            for n in run[position + 1:]:
                if n in entries and depth[n] <= outer:
                    break
                block.append(n)
            yield with_lines(block)


def test_the_commented_out_examples_of_routes_yaml_validate():
    text = (ROOT / "routes.yaml").read_text()
    checked = []
    for variant in example_variants(text):
        try:
            data = yaml.load(variant, Loader=_UniqueKeyLoader)
        except yaml.YAMLError:
            continue  # alternatives that cannot stand together, or an entry out of its context
        assert schema_errors(data) == [], variant
        checked.append(data)
    providers = [d["providers"] for d in checked if d.get("providers")]
    assert any({"corp", "github", "work", "legacy"} <= set(p) for p in providers), "providers example not checked"
    assert any((d.get("signing") or {}).get("key") for d in checked), "signing example not checked"
    assert any(len(d["tokens"]) == 2 for d in checked), "HMAC issuer example not checked"
    assert any(r.get("identity_assertion") is True for d in checked for r in d["routes"])
    assert any(isinstance(r.get("identity_assertion"), dict) for d in checked for r in d["routes"])
    assert any((d.get("session") or {}).get("cookie_domain") for d in checked)


# --------------------------------------------------------------------------- the same keys, both ways

BASE = {
    "server": {"listen": "127.0.0.1:8080", "tls": {"cert": "cert.pem", "key": "key.pem"}},
    "session": {"secret": SECRET},
    "providers": {"corp": {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "x",
                           "claims": {"sub": "id"}}},
    "tokens": [{"issuer": "https://idp.example.com", "audience": "api", "algorithms": ["RS256"]}],
    "signing": {"token_lifetime": "1h"},
    "routes": [
        {"name": "app", "path": "/", "upstream": "https://127.0.0.1:9000", "auth": "login",
         "allow": [{"email_domain": "example.com"}], "identity_assertion": {"header": "X-Id"},
         "tls": {"ca": "cert.pem"}},
        {"name": "api", "path": "/api", "upstream": "http://127.0.0.1:9001", "auth": "token"},
    ],
}

# section -> (where its mapping is in BASE, where its schema is in SCHEMA, the key list its rule checks)
SECTIONS = {
    Config: ((), (), LOAD.TOP_KEYS),
    ServerConfig: (("server",), ("properties", "server"), server_rules.KEYS),
    ServerTLS: (("server", "tls"), ("properties", "server", "properties", "tls"), yaml_keys(ServerTLS)),
    SessionConfig: (("session",), ("properties", "session"), session_rules.KEYS),
    ProviderConfig: (("providers", "corp"), ("properties", "providers", "additionalProperties"),
                     providers_rules.KEYS),
    TokenIssuerConfig: (("tokens", 0), ("properties", "tokens", "items"), tokens_rules.KEYS),
    SigningConfig: (("signing",), ("properties", "signing"), signing_rules.KEYS),
    RouteConfig: (("routes", 0), ("properties", "routes", "items"), routes_rules.KEYS),
    Rule: (("routes", 0, "allow", 0), ("properties", "routes", "items", "properties", "allow", "items"),
           routes_rules.RULE_KEYS),
    UpstreamTLS: (("routes", 0, "tls"), ("properties", "routes", "items", "properties", "tls"),
                  yaml_keys(UpstreamTLS)),
    Assertion: (("routes", 0, "identity_assertion"),
                ("properties", "routes", "items", "properties", "identity_assertion", "anyOf", 2),
                yaml_keys(Assertion)),
}
IDS = [s.__name__ for s in SECTIONS]


def at(data, path):
    for step in path:
        data = data[step]
    return data


def test_the_base_config_loads_and_validates(files):
    config, errors = load_data(BASE, files)
    assert errors is None
    assert config.server.tls is not None and config.routes[0].identity_assertion.header == "X-Id"
    assert schema_errors(BASE) == []


@pytest.mark.parametrize("section", list(SECTIONS), ids=IDS)
def test_the_rules_key_list_is_the_schemas_properties(section):
    _, schema_path, rule_keys = SECTIONS[section]
    properties = at(SCHEMA, schema_path)["properties"]
    assert set(rule_keys) == set(properties) == set(yaml_keys(section))
    assert at(SCHEMA, schema_path)["additionalProperties"] is False


def test_the_claims_mapping_names_the_identity_fields():
    claims = SCHEMA["properties"]["providers"]["additionalProperties"]["properties"]["claims"]
    assert set(claims["properties"]) == set(schema_module.IDENTITY_FIELDS)
    assert claims["additionalProperties"] is False


# every name a key could plausibly be spelt as: every key of every section and every field name
CANDIDATES = sorted(_all_keys(SCHEMA) | {f.name for s in SECTIONS for f in fields(s)} | {"bogus_key"})


def _unknown(errors, key) -> bool:
    return any(f'unknown key "{key}"' in e or f'unknown top-level key "{key}"' in e for e in errors or [])


@pytest.mark.parametrize("section", list(SECTIONS), ids=IDS)
def test_the_keys_the_loader_accepts_are_the_schemas_properties(section, files):
    """Asked key by key, the loader knows exactly the schema's properties of each section."""
    base_path, schema_path, _ = SECTIONS[section]
    accepted = set()
    for key in CANDIDATES:
        config = copy.deepcopy(BASE)
        at(config, base_path)[key] = "zzz"
        _, errors = load_data(config, files)
        if not _unknown(errors, key):
            accepted.add(key)
    assert accepted == set(at(SCHEMA, schema_path)["properties"])


@pytest.mark.parametrize("section", list(SECTIONS) + ["claims"], ids=IDS + ["claims"])
def test_an_unknown_key_fails_at_every_level(section, files):
    base_path = ("providers", "corp", "claims") if section == "claims" else SECTIONS[section][0]
    config = copy.deepcopy(BASE)
    at(config, base_path)["bogus_key"] = "x"
    assert not valid(config)
    assert any("bogus_key" in e.message or "bogus_key" in str(list(e.absolute_path))
               or "bogus_key" in json.dumps(e.instance, default=str) for e in VALIDATOR.iter_errors(config))
    _, errors = load_data(config, files)
    assert _unknown(errors, "bogus_key")


def test_x_keys_hold_anchors_in_both(files):
    text = yaml.safe_dump(BASE, sort_keys=False) + "x-defaults: &d {timeout: 5s}\n"
    assert valid(yaml.safe_load(text))
    assert load_text(text, files)[1] is None


# --------------------------------------------------------------------------- the special shapes

def with_value(path, value):
    config = copy.deepcopy(BASE)
    *parents, last = path
    if value is DELETE:
        at(config, parents).pop(last, None)
    else:
        at(config, parents)[last] = value
    return config


DELETE = object()
R0, P0, T0, S = ("routes", 0), ("providers", "corp"), ("tokens", 0), ("server",)

# (where, value, accepted): the loader and the schema must both accept or both refuse
SHAPES = [
    # environment references wherever one value goes
    (S + ("workers",), "${V_INT}", True),
    (S + ("workers",), "${V_INT:-4}", True),
    (S + ("max_connections",), "${V_INT}", True),
    (S + ("shutdown_grace",), "${V_DUR:-30s}", True),
    (S + ("max_body_size",), "${V_SIZE}", True),
    (S + ("reuse_port",), "${V_BOOL}", True),
    (S + ("admin_listen",), "${V_HOST}:9092", True),
    (S + ("public_url",), "${V_URL}", True),
    (R0 + ("strip_prefix",), "${V_BOOL:-false}", True),
    (R0 + ("timeout",), "${V_DUR}", True),
    (R0 + ("upstream",), "${V_URL}", True),
    (R0 + ("identity_assertion",), "${V_BOOL}", True),
    (T0 + ("audience",), "${V_TEXT}", True),
    (T0 + ("leeway",), "${V_DUR}", True),
    (S + ("workers",), "$V_INT", False),  # not a reference: just text
    (R0 + ("strip_prefix",), "$V_BOOL", False),
    # server.admin_listen: HOST:PORT, or off (YAML's false) in any spelling
    (S + ("admin_listen",), "127.0.0.1:9092", True),
    (S + ("admin_listen",), "[::1]:9092", True),
    (S + ("admin_listen",), "off", True),
    (S + ("admin_listen",), "OFF", True),
    (S + ("admin_listen",), False, True),
    (S + ("admin_listen",), True, False),
    (S + ("admin_listen",), None, False),
    (S + ("admin_listen",), "9092", False),
    (S + ("listen",), "off", False),
    (S + ("listen",), 8080, False),
    # workers: a whole number of at least 1, or auto
    (S + ("workers",), "auto", True),
    (S + ("workers",), 2, True),
    (S + ("workers",), 0, False),
    (S + ("workers",), "Auto", False),
    (S + ("workers",), True, False),
    # durations: a number of seconds or 30s / 1h30m / 250ms
    (S + ("shutdown_grace",), 0, True),
    (S + ("shutdown_grace",), 2.5, True),
    (S + ("shutdown_grace",), "1h30m", True),
    (S + ("shutdown_grace",), "250ms", True),
    (S + ("shutdown_grace",), "45", True),
    (S + ("shutdown_grace",), "5 s", False),
    (S + ("shutdown_grace",), "-5s", False),
    (S + ("shutdown_grace",), -1, False),
    (S + ("shutdown_grace",), "1e3", False),
    (S + ("shutdown_grace",), True, False),
    (S + ("shutdown_grace",), 4e8, False),
    (S + ("idle_timeout",), 0, False),
    (R0 + ("timeout",), 0, False),
    # sizes: bytes, or 10MB / 512KB / 64KiB
    (S + ("max_body_size",), 0, True),
    (S + ("max_body_size",), "10MB", True),
    (S + ("max_body_size",), "64 KiB", True),
    (S + ("max_body_size",), "1.5g", True),
    (S + ("max_body_size",), 1.5, False),
    (S + ("max_body_size",), -1, False),
    (S + ("max_body_size",), "10XB", False),
    (R0 + ("max_body_size",), None, False),
    # text keys take numbers and booleans as their text; never an empty value
    (P0 + ("client_id",), 123456789, True),
    (P0 + ("client_id",), True, True),
    (P0 + ("client_id",), "", False),
    (P0 + ("client_id",), None, False),
    (P0 + ("client_id",), ["c"], False),
    (P0 + ("client_id",), DELETE, False),
    # the session secret may be empty only without providers; signing.key may be empty
    (("session", "secret"), None, False),
    (("signing", "key"), None, True),
    (("signing", "key"), "", True),
    # tokens[].audience: required; a string, any, or a non-empty list
    (T0 + ("audience",), "any", True),
    (T0 + ("audience",), ["a", "b"], True),
    (T0 + ("audience",), [], False),
    (T0 + ("audience",), None, False),
    (T0 + ("audience",), DELETE, False),
    (T0 + ("algorithms",), "RS256", False),  # a list only
    (T0 + ("algorithms",), [" rs256 "], True),
    (T0 + ("algorithms",), ["none"], False),
    (T0 + ("jwks_uri",), "https://idp.example.com/keys?x=1", True),
    # routes[].upstream: one URL or a non-empty list of them
    (R0 + ("upstream",), ["https://127.0.0.1:9000", "https://127.0.0.1:9002"], True),
    (R0 + ("upstream",), [], False),
    (R0 + ("upstream",), "ftp://127.0.0.1", False),
    (R0 + ("upstream",), "https://u:p@127.0.0.1", False),
    (R0 + ("upstream",), "https://127.0.0.1/?q", False),
    (R0 + ("upstream",), DELETE, False),
    (R0 + ("methods",), "GET", False),  # a list only
    (R0 + ("methods",), ["GET", "post"], True),
    (R0 + ("path",), "/a/../b", False),
    (R0 + ("path",), "/a//b", False),
    (R0 + ("path",), "a", False),
    (R0 + ("path",), "/a/b/", True),
    (R0 + ("name",), "bad name", False),
    (R0 + ("name",), 7, True),
    (R0 + ("host",), "*.example.com", True),
    (R0 + ("host",), "https://example.com", False),
    (R0 + ("websocket_origins",), ["https://app.example.com:8443"], True),
    (R0 + ("websocket_origins",), ["https://app.example.com/x"], False),
    (R0 + ("auth",), "basic", False),
    # routes[].allow[]: conditions with one value or a list; claim: name to value(s)
    (R0 + ("allow",), [{"group": "ops"}, {"email": ["a@example.com"], "method": "GET"}], True),
    (R0 + ("allow",), [{"claim": {"tenant": "acme", "level": [3, True]}}], True),
    (R0 + ("allow",), [{"claim": {"tenant": []}}], False),
    (R0 + ("allow",), [{"claim": {"tenant": {"nested": 1}}}], False),
    (R0 + ("allow",), [{"claim": {}}], False),
    (R0 + ("allow",), [{}], False),
    (R0 + ("allow",), [], False),
    (R0 + ("allow",), [{"email": "nobody"}], False),
    # routes[].identity_assertion: true, false, or {header, audience}
    (R0 + ("identity_assertion",), True, True),
    (R0 + ("identity_assertion",), False, True),
    (R0 + ("identity_assertion",), {}, True),
    (R0 + ("identity_assertion",), {"header": "X-Who", "audience": "billing"}, True),
    (R0 + ("identity_assertion",), {"header": "bad header"}, False),
    (R0 + ("identity_assertion",), "yes please", False),
    (R0 + ("identity_assertion",), None, False),
    # providers.NAME.claims: identity field -> the provider's field
    (P0 + ("claims",), {"email": "mail", "groups": "roles"}, True),
    (P0 + ("claims",), {"sub": ["id"]}, False),
    (P0 + ("claims",), None, False),
    # providers.NAME.type / preset
    (P0 + ("type",), "oidc", True),
    (P0 + ("type",), "saml", False),
    (P0 + ("preset",), "google", True),
    (P0 + ("preset",), "nope", False),
    (P0 + ("token_endpoint_auth_method",), "client_secret_jwt", False),
    (P0 + ("scopes",), "openid", False),
    (P0 + ("scopes",), [], False),
    # session.store: cookie or a redis URL
    (("session", "store"), "redis://127.0.0.1:6379/0", True),
    (("session", "store"), "rediss://:pw@127.0.0.1:6380/1", True),
    (("session", "store"), "memcached://127.0.0.1", False),
    (("session", "cookie_name"), "bad name", False),
    # server.tls / routes[].tls: mappings, not nullable; server.tls needs cert and key
    (S + ("tls",), None, False),
    (S + ("tls",), {"cert": "cert.pem"}, False),
    (R0 + ("tls",), None, False),
    (R0 + ("tls",), {}, True),
    (R0 + ("tls",), {"cert": "cert.pem"}, False),
    (R0 + ("tls",), {"cert": "cert.pem", "key": "key.pem", "server_name": "localhost"}, True),
    # sections that may be empty, and routes, which may not
    (("server",), None, True),
    (("signing",), None, True),
    (("tokens",), None, True),
    (("tokens",), [], True),
    (("routes",), [], False),
    (("routes",), None, False),
    (("routes",), DELETE, False),
    (S + ("log_format",), "json", True),
    (S + ("log_format",), "xml", False),
]


@pytest.mark.parametrize("path, value, accepted", SHAPES,
                         ids=[f"{'.'.join(map(str, p))}={'<deleted>' if v is DELETE else v!r}" for p, v, _ in SHAPES])
def test_the_schema_and_the_loader_agree_on_each_shape(path, value, accepted, files):
    config = with_value(path, value)
    _, errors = load_data(config, files)
    assert (errors is None) == accepted, errors
    assert valid(config) == accepted, schema_errors(config)


@pytest.mark.parametrize("text", [
    "workers: ${V_INT}", "workers: ${W:-4}", "shutdown_grace: ${V_DUR}", "shutdown_grace: ${G:-1h30m}",
    "reuse_port: ${V_BOOL}", "reuse_port: ${R:-false}", "max_body_size: ${V_SIZE}", "admin_listen: ${A:-off}",
])
def test_environment_references_validate_and_load(text, files):
    """The raw text is what an editor sees: a string where a number or a boolean is expected."""
    yaml_text = f"server:\n  {text}\nroutes:\n  - {{name: a, path: /, upstream: 'http://127.0.0.1:9', auth: public}}\n"
    data = yaml.safe_load(yaml_text)
    assert isinstance(data["server"][text.split(":")[0]], str)
    assert schema_errors(data) == []
    assert load_text(yaml_text, files)[1] is None


def test_cross_key_conditions(files):
    """Conditions between keys the rules check, as far as the file shows them, in both."""
    cases = [
        # login providers need session.secret; auth: login needs a provider
        ({"session": None}, False),
        ({"providers": None}, False),
        ({"providers": None, "routes": [{"name": "a", "path": "/", "upstream": "http://127.0.0.1:9", "auth": "token"}]},
         True),
        # a public route has no rules, providers or identity assertion
        ({"routes": [{"name": "a", "path": "/", "upstream": "http://127.0.0.1:9", "auth": "public",
                      "allow": [{"group": "x"}]}]}, False),
        ({"routes": [{"name": "a", "path": "/", "upstream": "http://127.0.0.1:9", "auth": "token",
                      "providers": ["corp"]}]}, False),
        ({"routes": [{"name": "a", "path": "/", "upstream": "http://127.0.0.1:9", "auth": "public",
                      "identity_assertion": True}]}, False),
        # providers: private_key_jwt needs a key and no secret; oidc needs issuer; oauth2 needs endpoints
        ({"providers": {"corp": {"issuer": "https://idp.example.com", "client_id": "c",
                                 "token_endpoint_auth_method": "private_key_jwt", "client_private_key": "key.pem"}}},
         True),
        ({"providers": {"corp": {"issuer": "https://idp.example.com", "client_id": "c",
                                 "token_endpoint_auth_method": "private_key_jwt"}}}, False),
        ({"providers": {"corp": {"issuer": "https://idp.example.com", "client_id": "c"}}}, False),
        ({"providers": {"corp": {"client_id": "c", "client_secret": "s"}}}, False),
        ({"providers": {"corp": {"type": "oauth2", "client_id": "c", "client_secret": "s",
                                 "authorization_endpoint": "https://a.example/auth"}}}, False),
        ({"providers": {"corp": {"type": "oauth2", "client_id": "c", "client_secret": "s",
                                 "issuer": "https://a.example", "authorization_endpoint": "https://a.example/a",
                                 "token_endpoint": "https://a.example/t", "userinfo_endpoint": "https://a.example/u"}}},
         False),
        ({"providers": {"corp": {"preset": "github", "client_id": "c", "client_secret": "s"}}}, True),
        ({"providers": {"corp": {"preset": "github", "client_id": "c", "client_secret": "s",
                                 "issuer": "https://github.com"}}}, False),
        ({"providers": {"corp": {"preset": "keycloak", "client_id": "c", "client_secret": "s",
                                 "base_url": "https://kc.example"}}}, False),
        ({"providers": {"corp": {"preset": "keycloak", "client_id": "c", "client_secret": "s",
                                 "base_url": "https://kc.example", "realm": "main"}}}, True),
        # tokens: one key source at most
        ({"tokens": [{"issuer": "ci", "audience": "any", "algorithms": ["HS256"], "secret": SECRET,
                      "jwks_uri": "https://idp.example.com/keys"}]}, False),
        ({"tokens": [{"issuer": "ci", "audience": "any", "algorithms": ["HS256"], "secret": SECRET}]}, True),
    ]
    for change, accepted in cases:
        config = {**copy.deepcopy(BASE), **copy.deepcopy(change)}
        _, errors = load_data(config, files)
        assert (errors is None) == accepted, (change, errors)
        assert valid(config) == accepted, (change, schema_errors(config))


# --------------------------------------------------------------------------- the property

def _fields_by_key(section):
    out = {}
    for f in fields(section):
        key = f.metadata.get("key", schema_module._SAME)
        if key is not None:
            out[f.name if key is schema_module._SAME else key] = f
    return out


ENV_OF_KIND = {"bool": "${V_BOOL}", "integer": "${V_INT}", "workers": "${V_INT:-2}", "duration": "${V_DUR}",
               "positive_duration": "${V_DUR}", "size": "${V_SIZE}", "hostport": "${V_HOST}:0",
               "admin_listen": "${V_HOST:-127.0.0.1}:0", "url": "${V_URL}", "url_query": "${V_URL}/x?y"}

POOLS = {
    "string": ["gateway", "x", 12345, True, 1.5, "", None, "${V_TEXT}", "${V_EMPTY}", ["a"], {"a": 1}],
    "token": ["_gw", "X-Who", "bad name", 123, "", "${V_TEXT}"],
    "method": ["GET", " post ", "GE T", 7, ""],
    "route_name": ["app2", "bad/name", 1, True, ""],
    "host": ["app.example.com", "*.example.com", "APP.example.com.", "bad host", "http://x", 1.5, ""],
    "hostname": [".example.com", "example.com", "localhost", "exa mple.com", "-", 1.5, ""],
    "email_domain": ["example.com", "@example.com", "not a domain", 2],
    "email": ["a@example.com", "A@Example.COM", "nobody", "a@b c", 3],
    "path": ["/", "/x", "/x/", "x", "/a//b", "/a/../b", "/a?b", "/a b", 5],
    "url": ["https://127.0.0.1:9000", "http://idp.example.com/x", "HTTPS://x.example", "ftp://x", "http://u:p@x",
            "http://x/?q", "http://x/#f", "not a url", "http://", 80],
    "url_query": ["https://idp.example.com/keys?a=1", "http://x/y", "http://x#f", "x"],
    "origin": ["https://app.example.com", "http://127.0.0.1:3000", "https://app.example.com/path", "HTTPS://x"],
    "store": ["cookie", "redis://127.0.0.1:6379/0", "rediss://:pw@h:6380/1?x=1", "memcached://x", "Cookie"],
    "bool": [True, False, "true", "yes", 1, None],
    "integer": [0, 5, -1, 1.5, "5", True, None],
    "workers": [1, 4, 0, -2, "auto", "Auto", 2.5, True],
    "duration": [0, 30, 1.5, "30s", "1h30m", "250ms", " 5m ", "5 s", "-5s", -1, True, "1e3", 4e8, "0s", None],
    "size": [0, 1024, "10MB", "512 kib", "1.5G", -1, 1.5, "10XB", True, "2k", None],
    "hostport": ["127.0.0.1:0", "[::1]:0", "localhost:0", "8080", "::1:80", "host:99999", "x:y", None],
    "admin_listen": ["127.0.0.1:0", "off", "OFF", False, True, None, "9091"],
    "auth": ["login", "token", "public", "basic"],
    "provider_type": ["oidc", "oauth2", "saml"],
    "preset": ["google", "github", "keycloak", "microsoft", "okta", "nope"],
    "auth_method": ["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"],
    "log_format": ["text", "json", "xml"],
    "algorithm": ["RS256", "hs256", " ES256 ", "EdDSA", "none", "XX1"],
}
POOLS["positive_duration"] = POOLS["duration"]
# keys whose values are files, secrets or addresses that must fit the rest of the config
KEY_POOLS = {
    (ServerTLS, "cert"): ["cert.pem", "missing.pem", "key.pem"],
    (ServerTLS, "key"): ["key.pem", "missing.pem", "cert.pem"],
    (UpstreamTLS, "cert"): ["cert.pem", "missing.pem"],
    (UpstreamTLS, "key"): ["key.pem", "missing.pem"],
    (UpstreamTLS, "ca"): ["cert.pem", "key.pem", "missing.pem"],
    (UpstreamTLS, "server_name"): ["localhost", "bad name", 5],
    (SigningConfig, "key"): ["key.pem", "pub.pem", "", None, "missing.pem"],
    (SigningConfig, "previous_keys"): [[], ["pub.pem"], ["key.pem", "pub.pem"], "pub.pem", ["missing.pem"]],
    (ProviderConfig, "client_private_key"): ["key.pem", "missing.pem"],
    (TokenIssuerConfig, "public_key"): ["pub.pem", "missing.pem"],
    (TokenIssuerConfig, "secret"): [SECRET, "short", "${V_SECRET}", None],
    (SessionConfig, "secret"): [SECRET, "short", "${V_SECRET}", None, ""],
    (SessionConfig, "previous_secrets"): [[], [SECRET], ["short"], SECRET],
    (SessionConfig, "cookie_domain"): [".example.com", "example.com", "localhost", "bad domain"],
    (RouteConfig, "providers"): [["corp"], ["nope"], [], "corp"],
    (ProviderConfig, "scopes"): [["openid"], ["openid", "email"], ["profile"], [], "openid"],
    (ProviderConfig, "tenant"): ["common", "9188040d-6c67-4c5b-b112-36a304b66dad", "contoso.onmicrosoft.com", "x"],
    (ProviderConfig, "realm"): ["main", "a b", ".."],
    (ServerConfig, "trusted_proxies"): [[], ["10.0.0.0/8"], ["nope"], "10.0.0.0/8"],
    (Config, "server"): [None, {}, {"listen": "127.0.0.1:0", "public_url": "https://apps.example.com"}, []],
    (Config, "session"): [None, {}, {"secret": SECRET}, "x"],
    (Config, "providers"): [None, {}, copy.deepcopy(BASE["providers"]),
                            {"bad name": copy.deepcopy(BASE["providers"]["corp"])}, []],
    (Config, "tokens"): [None, [], copy.deepcopy(BASE["tokens"]), {}],
    (Config, "signing"): [None, {}, {"key": "key.pem"}],
    (Config, "routes"): [None, [], copy.deepcopy(BASE["routes"][1:]), {}],
    (ServerConfig, "public_url"): ["http://127.0.0.1:8080", "https://apps.example.com", "ftp://x", "http://x/?q"],
}
NESTED = {  # values of keys whose value is a section, a list of sections or a special shape
    "tls": [{"cert": "cert.pem", "key": "key.pem"}, {"ca": "cert.pem"}, {}, None, {"cert": "cert.pem"}],
    "identity_assertion": [True, False, {}, {"header": "X-Who"}, {"header": "bad name"}, "${V_BOOL}", None, "x"],
    "claims": [{"sub": "id"}, {"email": "mail", "groups": "roles"}, {"bogus": "x"}, {}, None, {"sub": ["id"]}],
    "claim": [{"tenant": "acme"}, {"level": [1, True, "x"]}, {"t": []}, {}, {"t": {"n": 1}}, {"t": None}],
    "allow": [[{"group": "ops"}], [], [{}], [{"email": "a@example.com", "method": ["GET"]}], None],
}


def _pool(section, key, f):
    if (section, key) in KEY_POOLS:
        return KEY_POOLS[(section, key)]
    if key in NESTED and f.metadata["kind"] in ("section", "assertion", "claims", "claim_map", "list"):
        return NESTED[key]
    kind, many = f.metadata["kind"], f.metadata.get("many")
    one = POOLS[kind] + [ENV_OF_KIND.get(kind, "${V_TEXT}")]
    if many is None:
        return one
    lists = [[], [one[0]], [one[0], one[1]], [one[-1]], [one[2]], [None]]
    return lists + (one if many == "one_or_list" else [one[0], one[1]])


# the mappings a random config changes, and the dataclass declaring each
TARGETS = [(s, SECTIONS[s][0]) for s in SECTIONS]


@st.composite
def configs(draw):
    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        section, path = draw(st.sampled_from(TARGETS))
        try:
            mapping = at(config, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed it
        if not isinstance(mapping, dict):
            continue
        by_key = _fields_by_key(section)
        keys = sorted(at(SCHEMA, SECTIONS[section][1])["properties"])  # the schema's key set
        for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True)):
            choice = draw(st.integers(0, 9))
            if choice == 0:
                mapping.pop(key, None)
            else:
                mapping[key] = copy.deepcopy(draw(st.sampled_from(_pool(section, key, by_key[key]))))
        if draw(st.integers(0, 19)) == 0:
            mapping["bogus_key"] = "x"
    return config


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs())
def test_whatever_loads_validates(config, files):
    """A config the loader accepts is valid against the schema (so the schema refuses
    nothing the loader accepts); what the schema refuses, the loader refuses."""
    text = yaml.safe_dump(config, sort_keys=False)
    loaded, errors = load_text(text, files)
    data = yaml.safe_load(text)
    assert loaded is not None or errors  # it loads, or says why not (never another exception)
    if not valid(data):
        assert loaded is None, f"the loader accepts what the schema refuses: {schema_errors(data)}\n{text}"
