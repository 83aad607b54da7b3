"""The schema declaration (gateway.config.schema) is what the config rules accept.

The accepted keys of every section are derived from the dataclasses; these
tests check, section by section, that every declared key is accepted, that
an undeclared one is an "unknown key" error, and that json_schema() lists
the same keys.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from gateway.config import (
    Config,
    ConfigError,
    ProviderConfig,
    RouteConfig,
    Rule,
    ServerConfig,
    SessionConfig,
    TokenIssuerConfig,
    json_schema,
    loads,
    yaml_keys,
)

BASE = {
    "server": {"listen": "127.0.0.1:8080"},
    "session": {"secret": "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a"},
    "providers": {"corp": {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "x"}},
    "tokens": [{"issuer": "https://idp.example.com", "audience": "any", "algorithms": ["RS256"]}],
    "routes": [
        {"name": "app", "path": "/", "upstream": "http://127.0.0.1:9000", "allow": [{"email_domain": "example.com"}]}
    ],
}

# section dataclass -> where its mapping is in BASE, and where its schema is in json_schema()
SECTIONS = {
    Config: ((), ()),
    ServerConfig: (("server",), ("properties", "server")),
    SessionConfig: (("session",), ("properties", "session")),
    ProviderConfig: (("providers", "corp"), ("properties", "providers", "additionalProperties")),
    TokenIssuerConfig: (("tokens", 0), ("properties", "tokens", "items")),
    RouteConfig: (("routes", 0), ("properties", "routes", "items")),
    Rule: (("routes", 0, "allow", 0), ("properties", "routes", "items", "properties", "allow", "items")),
}


def at(data, path):
    for step in path:
        data = data[step]
    return data


def errors_with(section, key, value="zzz"):
    config = copy.deepcopy(BASE)
    at(config, SECTIONS[section][0])[key] = value
    try:
        loads(yaml.safe_dump(config, sort_keys=False))
    except ConfigError as exc:
        return exc.errors
    return []


def test_the_base_config_is_valid():
    cfg = loads(yaml.safe_dump(BASE))
    assert cfg.routes[0].allow[0].email_domain == frozenset({"example.com"})


@pytest.mark.parametrize("section", list(SECTIONS), ids=lambda s: s.__name__)
def test_every_declared_key_is_accepted(section):
    for key in yaml_keys(section):
        unknown = [e for e in errors_with(section, key) if "unknown" in e and f'"{key}"' in e]
        assert unknown == [], (section.__name__, key)


@pytest.mark.parametrize("section", list(SECTIONS), ids=lambda s: s.__name__)
def test_an_undeclared_key_is_unknown(section):
    errors = errors_with(section, "bogus_key")
    assert len(errors) == 1
    assert 'unknown key "bogus_key" in ' in errors[0] or 'unknown top-level key "bogus_key"' in errors[0]


@pytest.mark.parametrize("section", list(SECTIONS), ids=lambda s: s.__name__)
def test_json_schema_lists_the_declared_keys(section):
    schema = at(json_schema(), SECTIONS[section][1])
    assert tuple(schema["properties"]) == yaml_keys(section)
    assert schema["additionalProperties"] is False


def test_yaml_names_that_differ_from_fields():
    assert "upstream" in yaml_keys(RouteConfig) and "upstreams" not in yaml_keys(RouteConfig)
    assert "line" not in yaml_keys(RouteConfig)
    assert "name" not in yaml_keys(ProviderConfig)
    assert "source" not in yaml_keys(Config)
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json_schema()["properties"]["routes"]["items"]["required"] == ["name", "path", "upstream"]
