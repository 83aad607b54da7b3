"""Peer rows of bench/run.py: other proxies verifying the same RS256 bearer token.

* ``haproxy``: HAProxy (Debian 12: 2.6) with ``http-request ... jwt_verify``, one thread;
* ``apache``: Apache 2.4 (mpm_event, one child process) + mod_auth_openidc as an OAuth 2.0
  resource server (``AuthType oauth20``, the JWT verified locally with ``OIDCOAuthVerifyCertFiles``);
* ``rs-fresh``: the gateway's RS256 route with a different token on every request (a wrk Lua
  script cycling pre-minted tokens);
* the check that a peer answers 401 to a missing and to a badly signed token, 200 to the good one;
* which Python runs the gateway, and how it was built.

This module only writes configurations and describes commands; bench/run.py starts and stops
the processes (by PID). Only the standard library, PyJWT and cryptography are used.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

APACHE_MODULES = "/usr/lib/apache2/modules"
# row -> (the programs and files it needs, the Debian packages that provide them)
PEER_NEEDS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "haproxy": (("haproxy",), ("haproxy",)),
    "apache": (("apache2", f"{APACHE_MODULES}/mod_auth_openidc.so", f"{APACHE_MODULES}/mod_proxy_http.so"),
               ("apache2", "libapache2-mod-auth-openidc")),
}
PEER_ROWS = tuple(PEER_NEEDS)

FRESH_TOKENS = 20_000  # distinct RS256 tokens the rs-fresh row cycles through
# tokens[].cache_size the bench sets on each of its two issuers: the gateway keeps one LRU of
# their sum (2,000), far fewer than FRESH_TOKENS, so cycling them in order misses every time.
TOKEN_CACHE_SIZE = 1_000


# --------------------------------------------------------------------------- tools


def missing_needs(row: str) -> List[str]:
    """The programs (on PATH) or files (absolute paths) of ``row`` that are not on this machine."""
    needs, _ = PEER_NEEDS[row]
    return [n for n in needs if not (os.path.exists(n) if n.startswith("/") else shutil.which(n))]


def missing_reason(row: str, missing: List[str]) -> str:
    return (f"{', '.join(missing)} not installed; install with: "
            f"apt-get install -y {' '.join(PEER_NEEDS[row][1])}")


# --------------------------------------------------------------------------- keys


def write_peer_keys(tmp: str, private_pem: bytes) -> Dict[str, str]:
    """The bench's RSA public key as PEM (HAProxy 2.6 reads a public key) and in a self-signed
    certificate (mod_auth_openidc's OIDCOAuthVerifyCertFiles reads X.509 certificates)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(private_pem, password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench RS256 issuer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"public": os.path.join(tmp, "rs-public.pem"), "cert": os.path.join(tmp, "rs-cert.pem")}
    with open(files["public"], "wb") as fh:
        fh.write(key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    with open(files["cert"], "wb") as fh:
        fh.write(cert.public_bytes(pem))
    return files


def bad_signature_token(claims: Dict[str, object]) -> str:
    """The RS256 token's claims and header, signed with a key nobody trusts."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other, algorithm="RS256", headers={"kid": "bench"})


# --------------------------------------------------------------------------- peer configs


@dataclass
class PeerSpec:
    """How run.py starts one peer: ``check`` tests the config, ``serve`` runs it in the foreground."""
    row: str
    label: str
    port: int
    check: List[str]
    serve: List[str]
    logs: List[str] = field(default_factory=list)


HAPROXY_CFG = """\
# Written by bench/run.py; removed with its temporary directory.
global
    nbthread 1
    maxconn 4096
    pidfile {prefix}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:{port} backlog 4096
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.jwt_alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.jwt_alg,"{public_key}") -m int 1 }}
    http-request set-var(txn.now) date()
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {issuer} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {audience} }}
    default_backend upstream

backend upstream
    http-reuse always
    server nginx 127.0.0.1:{upstream_port} maxconn 64
"""


def haproxy_spec(tmp: str, port: int, upstream_port: int, public_key: str, issuer: str, audience: str) -> PeerSpec:
    prefix = os.path.join(tmp, "haproxy")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "haproxy.cfg")
    with open(conf, "w") as fh:
        fh.write(HAPROXY_CFG.format(prefix=prefix, port=port, upstream_port=upstream_port,
                                    public_key=public_key, issuer=issuer, audience=audience))
    return PeerSpec("haproxy", "haproxy jwt_verify (RS256)", port,
                    check=["haproxy", "-c", "-q", "-f", conf],
                    serve=["haproxy", "-db", "-f", conf],  # -db: foreground, no daemon
                    logs=[os.path.join(prefix, "stderr.log")])


APACHE_CFG = """\
# Written by bench/run.py; removed with its temporary directory. Self-contained: no
# /etc/apache2, no envvars.
ServerRoot {prefix}
ServerName 127.0.0.1
PidFile {prefix}/httpd.pid
DefaultRuntimeDir {prefix}
Mutex file:{prefix} default
ErrorLog {prefix}/error.log
LogLevel warn
{user}
Listen 127.0.0.1:{port}

LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule auth_openidc_module {modules}/mod_auth_openidc.so

# mpm_event, one child process with a fixed pool of threads (no spawning during the run)
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 300

# OAuth 2.0 resource server: the bearer JWT is verified locally against the issuer's certificate
OIDCCryptoPassphrase {passphrase}
OIDCOAuthVerifyCertFiles bench#{cert}
OIDCOAuthRemoteUserClaim sub
# (mod_auth_openidc checks exp itself; iss and aud as the gateway and the haproxy row do)
<Location />
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim iss:{issuer}
        Require claim aud:{audience}
    </RequireAll>
</Location>
# mod_proxy keeps the upstream connections open and reuses them (the default, stated here)
ProxyPass / http://127.0.0.1:{upstream_port}/ disablereuse=Off
"""


def apache_spec(tmp: str, port: int, upstream_port: int, cert: str, issuer: str, audience: str) -> PeerSpec:
    prefix = os.path.join(tmp, "apache")
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "httpd.conf")
    # As root, Apache's children must switch to an unprivileged user.
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    with open(conf, "w") as fh:
        fh.write(APACHE_CFG.format(prefix=prefix, port=port, upstream_port=upstream_port, cert=cert,
                                   modules=APACHE_MODULES, user=user, passphrase=os.urandom(16).hex(),
                                   issuer=issuer, audience=audience))
    return PeerSpec("apache", "apache mod_auth_openidc (RS256)", port,
                    check=["apache2", "-t", "-f", conf],
                    serve=["apache2", "-DFOREGROUND", "-f", conf],
                    logs=[os.path.join(prefix, "error.log"), os.path.join(prefix, "stderr.log")])


# --------------------------------------------------------------------------- 401/200 check


def auth_check(get: Callable, url: str, good: str, bad: str) -> Optional[str]:
    """None when ``url`` answers 401 without a token and with a badly signed one, and 200 with
    the good one; else what went wrong (the tokens themselves are never part of it)."""
    cases = (("no token", {}, 401), ("a token with a wrong signature", {"Authorization": f"Bearer {bad}"}, 401),
             ("the valid token", {"Authorization": f"Bearer {good}"}, 200))
    problems = []
    for what, headers, want in cases:
        try:
            status, _ = get(url, headers)
        except OSError as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        if status != want:
            problems.append(f"{what}: {status} (expected {want})")
    return "; ".join(problems) or None


# --------------------------------------------------------------------------- fresh tokens


class FreshTokens:
    """``count`` distinct valid RS256 tokens (distinct ``jti``) and a wrk Lua script that sends
    them in turn, one per request. ``probe`` is one of them, for the 200 check."""

    def __init__(self, tmp: str, private_pem: bytes, claims: Dict[str, object], count: int = FRESH_TOKENS):
        import jwt
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(private_pem, password=None)
        self.count = count
        self.tokens_file = os.path.join(tmp, "fresh-tokens.txt")
        with open(self.tokens_file, "w") as fh:
            for i in range(count):
                fh.write(jwt.encode({**claims, "jti": f"bench-fresh-{i}"}, key, algorithm="RS256",
                                    headers={"kid": "bench"}) + "\n")
        with open(self.tokens_file) as fh:
            self.probe = fh.readline().strip()
        self.script = os.path.join(tmp, "fresh-tokens.lua")
        with open(self.script, "w") as fh:
            fh.write(FRESH_LUA.replace("TOKENS_FILE", json.dumps(self.tokens_file)))


# Every request of every connection takes the next token; wrk runs one thread (-t1), so the
# order is one cycle through all of them. The requests are built once, in init().
FRESH_LUA = """\
local tokens = {}
for line in io.lines(TOKENS_FILE) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
local requests, n, i = {}, 0, 0
function init(args)
  for k = 1, #tokens do
    requests[k] = wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[k]})
  end
  n = #requests
  tokens = nil
end
function request()
  i = i % n + 1
  return requests[i]
end
"""


# --------------------------------------------------------------------------- the gateway's Python

BUILD_PROBE = r"""
import json, platform, sys, sysconfig
args = sysconfig.get_config_var("CONFIG_ARGS") or ""
cflags = " ".join(filter(None, (sysconfig.get_config_var(v) or "" for v in ("PY_CFLAGS", "PY_CFLAGS_NODIST"))))
print(json.dumps({"version": sys.version, "executable": sys.executable,
                  "base_executable": getattr(sys, "_base_executable", sys.executable),
                  "implementation": platform.python_implementation(),
                  "pgo": "--enable-optimizations" in args, "lto": "--with-lto" in args,
                  "flto_in_cflags": "-flto" in cflags,
                  "opt": list(dict.fromkeys(f for f in cflags.split() if f.startswith("-O"))), "config_args": args}))
"""


def python_build(python: str) -> Dict[str, object]:
    """What ``python`` is and how it was built, as reported by itself (sysconfig)."""
    try:
        res = subprocess.run([python, "-c", BUILD_PROBE], capture_output=True, text=True, timeout=30)
        info = json.loads(res.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"executable": python, "error": f"cannot run it: {exc}"}
    info["vendor_note"] = debian_pgo_lto_note(info.get("base_executable") or "", info.get("version") or "")
    return info


def debian_pgo_lto_note(executable: str, version: str) -> Optional[str]:
    """What Debian's changelog says about PGO/LTO for Debian's own interpreter (built by debian/rules,
    which strips the LTO flags from sysconfig, so CONFIG_ARGS cannot show them); None otherwise."""
    real = os.path.realpath(executable)
    if not real.startswith("/usr/bin/python3"):
        return None
    minor = ".".join(version.split()[0].split(".")[:2]) if version else ""
    log = f"/usr/share/doc/python{minor}/changelog.Debian.gz"
    try:
        with gzip.open(log, "rt", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    said = [line.strip(" *") for line in text.splitlines()
            if "lto" in line.lower() and ("pgo" in line.lower() or "sysconfigdata" in line.lower())]
    if not said:
        return None
    return (f"Debian build: {log} says " + "; ".join(f"'{s}'" for s in said)
            + " (so CONFIG_ARGS cannot show LTO/PGO; which architectures get them is decided by debian/rules)")


def describe_build(info: Dict[str, object]) -> str:
    if info.get("error"):
        return f"{info['executable']}: {info['error']}"
    flags = (f"CONFIG_ARGS: --enable-optimizations (PGO) {'yes' if info['pgo'] else 'no'}, "
             f"--with-lto {'yes' if info['lto'] else 'no'}; {' '.join(info['opt']) or 'no -O'}"
             + (", -flto" if info.get("flto_in_cflags") else ""))
    first_line = str(info["version"]).splitlines()[0]
    text = f"{info['executable']} (Python {first_line}); {flags}"
    if info.get("vendor_note"):
        text += f"; {info['vendor_note']}"
    return text
