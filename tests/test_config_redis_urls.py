"""``session.store`` Redis URLs: the forms the config accepts, and the exact message for each bad one.

Plain (``redis://``), TLS (``rediss://`` with ``ssl_*`` options) and Sentinel
(``redis+sentinel://`` / ``rediss+sentinel://`` with a list of sentinels, a service name and a
database). No message may contain the URL's password.
"""

from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, loads
from gateway.sessions.redis_connect import RedisTarget, parse_url

SECRET = "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a"
PASSWORD = "pw-0b5d+x"  # never in a message


def config(store: str) -> str:
    # JSON strings are YAML strings: the URL goes in exactly as written, whatever it contains
    return (
        "session:\n"
        f"  secret: {SECRET}\n"
        f"  store: {json.dumps(store)}\n"
        "routes:\n"
        "  - {name: app, path: /, upstream: 'http://127.0.0.1:9000', auth: public}\n"
    )


def store_errors(store: str) -> list[str]:
    try:
        loads(config(store))
    except ConfigError as exc:
        return exc.errors
    return []


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # only its existence is checked here
    return str(path)


# --------------------------------------------------------------------------- accepted


GOOD = [
    ("redis://127.0.0.1:6379/0", RedisTarget("redis", (("127.0.0.1", 6379),), 0)),
    ("redis://redis.internal", RedisTarget("redis", (("redis.internal", 6379),), 0)),
    (f"redis://:{PASSWORD}@127.0.0.1:6380/3", RedisTarget("redis", (("127.0.0.1", 6380),), 3, password=PASSWORD)),
    ("redis://gw:s3cret@[::1]:6379/1", RedisTarget("redis", (("::1", 6379),), 1, username="gw", password="s3cret")),
    ("rediss://redis.internal:6380/2", RedisTarget("rediss", (("redis.internal", 6380),), 2)),
    ("rediss://h:6380/0?ssl_cert_reqs=none", RedisTarget("rediss", (("h", 6380),), 0, options={"ssl_cert_reqs": "none"})),
    ("rediss://h:6380/0?ssl_check_hostname=false",
     RedisTarget("rediss", (("h", 6380),), 0, options={"ssl_check_hostname": "false"})),
    ("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
     RedisTarget("redis+sentinel", (("127.0.0.1", 26379), ("127.0.0.1", 26380)), 0, "mymaster")),
    ("redis+sentinel://s1,s2:26380,[::1]/mymaster",
     RedisTarget("redis+sentinel", (("s1", 26379), ("s2", 26380), ("::1", 26379)), 0, "mymaster")),
    (f"redis+sentinel://:{PASSWORD}@s1:26379/my-master.1/5/",
     RedisTarget("redis+sentinel", (("s1", 26379),), 5, "my-master.1", password=PASSWORD)),
    ("redis+sentinel://s1:26379/mymaster/0?sentinel_password=x",
     RedisTarget("redis+sentinel", (("s1", 26379),), 0, "mymaster", options={"sentinel_password": "x"})),
    ("rediss+sentinel://s1:26379,s2:26379/mymaster/0?ssl_cert_reqs=required",
     RedisTarget("rediss+sentinel", (("s1", 26379), ("s2", 26379)), 0, "mymaster",
                 options={"ssl_cert_reqs": "required"})),
]


@pytest.mark.parametrize("url,target", GOOD, ids=[g[0] for g in GOOD])
def test_accepted_urls_and_what_they_mean(url: str, target: RedisTarget) -> None:
    assert store_errors(url) == []
    assert loads(config(url)).session.store == url
    parsed = parse_url(url)
    assert parsed == target
    assert parsed.password == target.password  # not part of ==/repr: compared on its own
    assert PASSWORD not in repr(parsed)


def test_tls_files_are_accepted_when_they_exist(ca_file: str) -> None:
    url = f"rediss://127.0.0.1:6380/0?ssl_ca_certs={ca_file}&ssl_certfile={ca_file}&ssl_keyfile={ca_file}"
    assert store_errors(url) == []
    assert parse_url(url).options == {"ssl_ca_certs": ca_file, "ssl_certfile": ca_file, "ssl_keyfile": ca_file}
    sentinel = f"rediss+sentinel://127.0.0.1:26379/mymaster/0?ssl_ca_certs={ca_file}"
    assert store_errors(sentinel) == []


# --------------------------------------------------------------------------- refused, exact messages

PLAIN_FORM = "redis://HOST:PORT/DB"
SENTINEL_FORM = "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB"
TLS_OPTIONS = "ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, ssl_check_hostname"

BAD = [
    # scheme
    ("memcached://cache:11211",
     'must be "cookie" or a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL'),
    ("redis+cluster://h:1/0",
     'must be "cookie" or a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL'),
    ("127.0.0.1:6379",
     'must be "cookie" or a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL'),
    ("redis://h:6379/0 ", "must be a URL without spaces"),
    ("redis://h:6379/0#x", "must not have a fragment (#...)"),
    # no hosts
    ("redis://", f"has no host (expected {PLAIN_FORM})"),
    (f"redis://:{PASSWORD}@/0", f"has no host (expected {PLAIN_FORM})"),
    ("rediss:///0", "has no host (expected rediss://HOST:PORT/DB)"),
    ("redis+sentinel://", f"has no sentinel HOST:PORT (expected {SENTINEL_FORM})"),
    (f"redis+sentinel://:{PASSWORD}@/mymaster/0", f"has no sentinel HOST:PORT (expected {SENTINEL_FORM})"),
    ("rediss+sentinel:///mymaster/0",
     "has no sentinel HOST:PORT (expected rediss+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE/DB)"),
    ("redis+sentinel://s1:26379,,s2:26379/mymaster/0",
     f'has an empty sentinel address in "s1:26379,,s2:26379" (expected {SENTINEL_FORM})'),
    ("redis+sentinel://s1:26379,/mymaster/0",
     f'has an empty sentinel address in "s1:26379," (expected {SENTINEL_FORM})'),
    ("redis+sentinel://:26379/mymaster/0", 'has an address without a host ":26379"'),
    ("redis://a:1,b:2/0",
     f"has several hosts; a list of sentinels needs redis+sentinel:// (expected {PLAIN_FORM})"),
    ("redis://bad_host!:6379/0", 'host "bad_host!" is not a valid host name or IP address'),
    ("redis://[::1:6379/0",
     f"has an invalid address (an IPv6 address is written [::1]:PORT; expected {PLAIN_FORM})"),
    # no service name
    ("redis+sentinel://s1:26379", f"has no service name (expected {SENTINEL_FORM}, e.g. /mymaster/0)"),
    ("redis+sentinel://s1:26379/", f"has no service name (expected {SENTINEL_FORM}, e.g. /mymaster/0)"),
    ("redis+sentinel://s1:26379//0", f"has no service name (expected {SENTINEL_FORM}, e.g. /mymaster/0)"),
    ("redis+sentinel://s1:26379/my%20master/0", 'has an invalid service name "my master" (letters, digits, _ . - only)'),
    ("redis+sentinel://s1:26379/mymaster!/0", 'has an invalid service name "mymaster!" (letters, digits, _ . - only)'),
    # bad port
    ("redis://h:99999/0", 'has an invalid port "99999" in "h:99999" (a number from 1 to 65535)'),
    ("redis://h:0/0", 'has an invalid port "0" in "h:0" (a number from 1 to 65535)'),
    ("redis://h:port/0", 'has an invalid port "port" in "h:port" (a number from 1 to 65535)'),
    ("redis://h:/0", 'has an invalid port "" in "h:" (a number from 1 to 65535)'),
    ("redis+sentinel://s1:26379,s2:70000/mymaster/0",
     'has an invalid port "70000" in "s2:70000" (a number from 1 to 65535)'),
    ("redis+sentinel://s1:-1/mymaster/0", 'has an invalid port "-1" in "s1:-1" (a number from 1 to 65535)'),
    ("redis+sentinel://[::1]:x/mymaster/0", 'has an invalid port "x" in "[::1]:x" (a number from 1 to 65535)'),
    # bad db
    ("redis://h:6379/x", 'has an invalid database "x" (a number such as 0)'),
    ("redis://h:6379/-1", 'has an invalid database "-1" (a number such as 0)'),
    ("redis://h:6379/0/1", f'has too many path segments in "/0/1" (expected {PLAIN_FORM})'),
    ("redis+sentinel://s1:26379/mymaster/db0", 'has an invalid database "db0" (a number such as 0)'),
    ("redis+sentinel://s1:26379/mymaster/0/1",
     f'has too many path segments in "/mymaster/0/1" (expected {SENTINEL_FORM})'),
    # options
    ("redis://h:6379/0?ssl_ca_certs=/etc/ca.pem", "option ssl_ca_certs needs a TLS URL (rediss://)"),
    ("redis+sentinel://s1/mymaster/0?ssl_cert_reqs=none", "option ssl_cert_reqs needs a TLS URL (rediss+sentinel://)"),
    ("redis://h:6379/0?socket_timeout=1", 'has an unknown option "socket_timeout" (redis:// URLs take no options)'),
    ("rediss://h:6379/0?ssl_ca_cert=/x", f'has an unknown option "ssl_ca_cert" (known for rediss://: {TLS_OPTIONS})'),
    ("rediss://h/0?sentinel_password=x",
     f'has an unknown option "sentinel_password" (known for rediss://: {TLS_OPTIONS})'),
    ("redis+sentinel://s1/mymaster/0?db=1",
     'has an unknown option "db" (known for redis+sentinel://: sentinel_password)'),
    ("rediss://h/0?ssl_cert_reqs=optional", 'option ssl_cert_reqs must be required or none (got "optional")'),
    ("rediss://h/0?ssl_check_hostname=maybe", 'option ssl_check_hostname must be true or false (got "maybe")'),
    ("rediss://h/0?ssl_ca_certs=", "option ssl_ca_certs is empty"),
    ("rediss://h/0?ssl_cert_reqs=none&ssl_cert_reqs=required", "option ssl_cert_reqs is given twice"),
    ("rediss://h/0?ssl_ca_certs=certs/ca.pem", 'option ssl_ca_certs must be an absolute path (got "certs/ca.pem")'),
    ("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem",
     "option ssl_ca_certs: /nonexistent/ca.pem does not exist or is not a file"),
    ("rediss+sentinel://s1/mymaster/0?ssl_ca_certs=/nonexistent/ca.pem",
     "option ssl_ca_certs: /nonexistent/ca.pem does not exist or is not a file"),
    ("rediss://h/0?ssl_keyfile=/etc/hostname", "option ssl_keyfile needs ssl_certfile (the client certificate)"),
]


@pytest.mark.parametrize("url,message", BAD, ids=[b[0] for b in BAD])
def test_refused_urls_say_exactly_what_is_wrong(url: str, message: str) -> None:
    assert store_errors(url) == [f"routes.yaml:3: session: store {message}"]


@pytest.mark.parametrize("url", [u for u, _ in BAD if PASSWORD in u] + [
    f"redis://:{PASSWORD}@h:99999/0", f"redis+sentinel://:{PASSWORD}@s1:26379/mymaster/x",
    f"rediss://:{PASSWORD}@h/0?bogus=1", f"redis+sentinel://:{PASSWORD}@s1:26379",
])
def test_messages_never_contain_the_password(url: str) -> None:
    errors = store_errors(url)
    assert errors and all(PASSWORD not in e for e in errors), errors


def test_a_sentinel_url_without_a_database_uses_database_0() -> None:
    assert parse_url("redis+sentinel://s1:26379/mymaster").db == 0
    # a lone number after the hosts is a service name, not a database: services are named
    assert parse_url("redis+sentinel://s1:26379/0").service == "0"


def test_the_cookie_store_is_still_accepted() -> None:
    assert loads(config("cookie")).session.store == "cookie"


def test_redacted_in_logs() -> None:
    from gateway.sessions import redact_url

    url = f"rediss+sentinel://:{PASSWORD}@s1:26379,s2:26380/mymaster/0?sentinel_password={PASSWORD}"
    assert redact_url(url) == "rediss+sentinel://s1:26379,s2:26380/mymaster/0"
    assert redact_url(f"rediss://gw:{PASSWORD}@h:6380/0?ssl_ca_certs=/x") == "rediss://h:6380/0"
