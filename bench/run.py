#!/usr/bin/env python3
"""Benchmark of the gateway against nginx proxy_pass, on this machine, in one run.

    python bench/run.py [--duration 10] [--connections 50] [--quick] [--no-memory] [--workers]

What it does (see bench/README.md):

1. checks that ``wrk``, ``nginx`` and ``taskset`` are installed (``haproxy``, ``apache2`` and
   mod_auth_openidc are optional: their rows are skipped, with the reason, when missing);
2. starts, on 127.0.0.1 and free ports, a static nginx upstream (CPU 1), nginx
   ``proxy_pass`` in front of it (one worker, upstream keepalive, CPU 0), the peers HAProxy
   ``jwt_verify`` and Apache + mod_auth_openidc verifying the RS256 token (CPU 0, see
   bench/peers.py) and one gateway process per engine (CPU 0) with a public route, an HS256
   and an RS256 bearer route;
3. runs ``wrk`` (CPU 1) against the upstream, nginx, the peers and the gateway routes (also
   ``rs-fresh``: a different RS256 token on every request), after checking that the peers and
   the RS256 rows refuse a missing and a badly signed token; prints requests/s, p50, p99, the
   ratio to nginx, the CPU us per request of each server and the gateway's Python build,
   checks the targets and writes bench/results/latest.json;
4. streams a 1 GiB upload and a 1 GiB download through a fresh gateway process
   and samples its RSS (VmRSS / VmHWM) every 50 ms;
5. with ``--workers`` (or ``--only workers``): runs wrk on the RS256 route of a gateway
   with ``server.workers: 1``, then ``server.workers: 2``, everything on CPUs 0,1, and
   prints req/s, p50, p99, the ratio and the CPU split (gateway per worker, wrk, upstream);
6. stops every process it started, by PID, and removes its temporary directory.

The 1,000-idle-WebSockets memory test is a separate script: bench/websockets.py.

Only the standard library, PyJWT and cryptography are used.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (bench/peers.py: HAProxy, Apache, the fresh-token script, the Python build)

REPO = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")

GATEWAY_CPU = "0"   # nginx proxy_pass, haproxy, apache and the gateway
CLIENT_CPU = "1"    # wrk, the upstreams and the memory-test client

TARGETS = {  # ratio of the gateway's requests/s to nginx proxy_pass, in the same run (issue 13's first targets)
    "public": 0.15,
    "rs256": 0.12,
    "rs256 fresh": 0.06,
}
CPU_TARGET_US = {"rs256": 130.0}  # CPU µs per request of the gateway process, RS256 with a repeated token
P99_LIMIT_MS = 20.0
RSS_LIMIT_BYTES = 100 * 1000 * 1000  # 100 MB
SLOW_SIZE = 100 * 1000 * 1000  # the slow-client download: 100 MB ...
SLOW_RATE = 50 * 1000 * 1000  # ... read at 50 MB/s

HS_SECRET = "bench-hs256-secret-0123456789abcdef0123456789abcdef"  # 52 bytes
SESSION_SECRET = "bench-session-secret-0123456789abcdef0123456789"
HS_ISSUER = "bench-hs"
RS_ISSUER = "https://bench-rs.invalid"
RS_AUDIENCE = "bench-api"

# --------------------------------------------------------------------------- utilities


GATEWAY_ROWS = ("public", "hs", "rs", "rs-fresh", "hsa", "tls")  # the rows served by the gateway
GATEWAY_PYTHON = sys.executable  # the interpreter that runs the gateway (--python)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: Optional[subprocess.Popen] = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(url: str, headers: Optional[Dict[str, str]] = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "r", errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return "(no log)"


class Processes:
    """Every process the benchmark starts; stopped by PID in ``stop_all``."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, argv: List[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)  # Ctrl-C reaches only us; we stop them
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _children(pid: int) -> List[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                return [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            return []

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.poll() is None:
            children = self._children(proc.pid)  # e.g. nginx workers
            try:
                proc.terminate()
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            for child in children:  # only if the master died without reaping them
                try:
                    os.kill(child, 0)
                except OSError:
                    continue
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


# --------------------------------------------------------------------------- prerequisites


def check_tools(wait: float, peer_rows: tuple = ()) -> Dict[str, str]:
    """wrk and nginx may still be installing (background apt-get); wait a bounded time.

    The peers' programs (``peer_rows``: haproxy, apache) are waited for the same way but are
    optional: returns row -> why it cannot run, for those still missing; those rows are skipped."""
    deadline = time.monotonic() + wait
    announced = False
    while True:
        missing = [t for t in ("wrk", "nginx", "taskset") if shutil.which(t) is None]
        peers_missing = {row: peers.missing_needs(row) for row in peer_rows}
        peers_missing = {row: m for row, m in peers_missing.items() if m}
        apt_done = False
        try:
            with open("/tmp/apt.log", errors="replace") as fh:
                apt_done = "done" in fh.read()
        except OSError:
            apt_done = True  # no install in progress
        if not missing and (not peers_missing or apt_done or time.monotonic() > deadline):
            return {row: peers.missing_reason(row, m) for row, m in peers_missing.items()}
        if apt_done or time.monotonic() > deadline:
            print(
                f"missing: {', '.join(missing)}\n"
                "install them with:\n    apt-get install -y wrk nginx-light util-linux",
                file=sys.stderr,
            )
            sys.exit(2)
        if not announced:
            waiting = missing + [n for m in peers_missing.values() for n in m]
            log(f"waiting for {', '.join(waiting)} (apt-get still running, see /tmp/apt.log)")
            announced = True
        time.sleep(5)


# --------------------------------------------------------------------------- servers

NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}
}}
"""

UPSTREAM_BODY = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "ok\\n"; }}
    }}"""

# The same upstream over TLS (a private CA the bench makes), for the gateway's https row.
TLS_UPSTREAM_BODY = """\
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        keepalive_requests 100000;
        default_type text/plain;
        location / {{ return 200 "ok\\n"; }}
    }}"""


def write_tls_upstream(tmp: str) -> Dict[str, str]:
    """A CA and a certificate for 127.0.0.1 signed by it (files in ``tmp``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    files = {"ca": os.path.join(tmp, "bench-ca.pem"), "cert": os.path.join(tmp, "upstream.crt"),
             "key": os.path.join(tmp, "upstream.key")}
    pem = serialization.Encoding.PEM
    with open(files["ca"], "wb") as fh:
        fh.write(ca.public_bytes(pem))
    with open(files["cert"], "wb") as fh:
        fh.write(cert.public_bytes(pem))
    with open(files["key"], "wb") as fh:
        fh.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files

PROXY_BODY = """\
    upstream backend {{
        server 127.0.0.1:{uport};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(procs: Processes, tmp: str, name: str, body: str, port: int, cpu: str) -> subprocess.Popen:
    prefix = os.path.join(tmp, name)
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(NGINX_COMMON.format(prefix=prefix, body=body))
    test = subprocess.run(
        ["nginx", "-t", "-q", "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c", conf],
        capture_output=True, text=True, timeout=20,
    )
    if test.returncode != 0:
        raise RuntimeError(f"nginx {name}: config test failed:\n{test.stderr}{tail(os.path.join(prefix, 'error.log'))}")
    proc = procs.start(
        ["taskset", "-c", cpu, "nginx", "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c", conf],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(prefix, "stderr.log"), "w"),
    )
    if not wait_port(port, 15, proc):
        raise RuntimeError(f"nginx {name} did not start:\n{tail(os.path.join(prefix, 'error.log'))}{tail(os.path.join(prefix, 'stderr.log'))}")
    return proc


MEM_UPSTREAM = r'''
"""Memory-test upstream: discards uploads, streams zeros for downloads."""
import asyncio, json, sys
import tornado.web
from tornado.httpserver import HTTPServer

CHUNK = b"\0" * 65536

@tornado.web.stream_request_body
class Upload(tornado.web.RequestHandler):
    def prepare(self):
        self.received = 0
    def data_received(self, chunk):
        self.received += len(chunk)
    def post(self):
        self.write(json.dumps({"received": self.received}))
    put = post

class Download(tornado.web.RequestHandler):
    async def get(self):
        n = int(self.get_argument("bytes"))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(n))
        while n > 0:
            piece = CHUNK if n >= len(CHUNK) else CHUNK[:n]
            self.write(piece)
            n -= len(piece)
            await self.flush()

async def main():
    app = tornado.web.Application([(r".*/upload", Upload), (r".*/download", Download)])
    server = HTTPServer(app, max_body_size=1 << 62, body_timeout=600, idle_connection_timeout=600)
    server.listen(int(sys.argv[1]), address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


def start_mem_upstream(procs: Processes, tmp: str, port: int) -> subprocess.Popen:
    script = os.path.join(tmp, "mem_upstream.py")
    with open(script, "w") as fh:
        fh.write(MEM_UPSTREAM)
    logf = os.path.join(tmp, "mem_upstream.log")
    proc = procs.start(
        ["taskset", "-c", CLIENT_CPU, sys.executable, script, str(port)],
        stdout=subprocess.DEVNULL, stderr=open(logf, "w"),
    )
    if not wait_port(port, 15, proc):
        raise RuntimeError(f"memory-test upstream did not start:\n{tail(logf)}")
    return proc


def write_keys(tmp: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


def write_routes(tmp: str, gw_port: int, upstream_port: int, mem_port: int, public_pem: str,
                 workers: Optional[int] = None, name: str = "routes.yaml", engine: Optional[str] = None,
                 tls_port: Optional[int] = None, tls_ca: str = "", cache_size: bool = True) -> str:
    """The benchmark's routes.yaml; ``workers`` adds ``server.workers: N`` (the --workers group),
    ``engine`` adds ``server.http_engine``."""
    pem = "\n".join("      " + line for line in public_pem.strip().splitlines())
    # Several workers with a listening socket each (server.reuse_port), so wrk's burst of
    # connections is spread evenly; with one shared socket one worker can take them all.
    workers_line = f"\n  workers: {workers}" if workers is not None else ""
    if workers is not None and workers > 1:
        workers_line += "\n  reuse_port: true"
    if engine:
        workers_line += f"\n  http_engine: {engine}"
    tls_route = "" if tls_port is None else (
        f"  - name: tls\n    path: /tls\n    upstream: https://127.0.0.1:{tls_port}\n    auth: public\n"
        f"    tls: {{ca: {tls_ca}}}\n")
    # tokens[].cache_size is newer than some --baseline checkouts: they get their fixed default instead
    cache_line = f"    cache_size: {peers.TOKEN_CACHE_SIZE}\n" if cache_size else ""
    text = f"""\
# Written by bench/run.py; removed with its temporary directory.
server:
  listen: 127.0.0.1:{gw_port}
  public_url: http://127.0.0.1:{gw_port}
  admin_listen: "off"{workers_line}

session:
  secret: {SESSION_SECRET}

tokens:
  - issuer: {HS_ISSUER}
    secret: {HS_SECRET}
    algorithms: [HS256]
    audience: any
{cache_line}  - issuer: {RS_ISSUER}
    audience: {RS_AUDIENCE}
    algorithms: [RS256]
{cache_line}    public_key: |
{pem}

routes:
  - name: public
    path: /public
    upstream: http://127.0.0.1:{upstream_port}
    auth: public
  - name: hs
    path: /hs
    upstream: http://127.0.0.1:{upstream_port}
    auth: token
  - name: rs
    path: /rs
    upstream: http://127.0.0.1:{upstream_port}
    auth: token
  - name: hsa
    path: /hsa
    upstream: http://127.0.0.1:{upstream_port}
    auth: token
    identity_assertion: true
{tls_route}  - name: mem
    path: /mem
    upstream: http://127.0.0.1:{mem_port}
    auth: public
    timeout: 10m
"""
    path = os.path.join(tmp, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


BASELINE = "before"  # the group of rows served by the --baseline checkout
OTHER_PYTHON = "also-python"  # the group of rows served by the --also-python interpreter


def checkout_name(path: str) -> str:
    """The short commit of the checkout at ``path`` (or its directory name when it is no git checkout)."""
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except OSError:
        pass
    return os.path.basename(os.path.abspath(path))


def check_gateway_config(routes: str, repo: str = REPO, python: Optional[str] = None) -> None:
    res = subprocess.run(
        [python or GATEWAY_PYTHON, "-m", "gateway", "check", "-c", routes],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )
    if res.returncode != 0:
        raise RuntimeError(f"`gateway check` failed (exit {res.returncode}):\n{res.stdout}{res.stderr}")


def start_gateway(procs: Processes, tmp: str, routes: str, port: int, tag: str, cpus: str = GATEWAY_CPU,
                  workers: int = 1, repo: str = REPO, python: Optional[str] = None, **popen_kw):
    """``taskset -c CPUS python -m gateway serve`` (the gateway of the checkout ``repo``); returns once
    ``workers`` processes logged "listening"."""
    logf = os.path.join(tmp, f"gateway-{tag}.log")
    proc = procs.start(
        ["taskset", "-c", cpus, python or GATEWAY_PYTHON, "-m", "gateway", "serve", "-c", routes,
         "--listen", f"127.0.0.1:{port}", "--admin-listen", "off"],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=open(logf, "w"), **popen_kw,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with status {proc.returncode} at start:\n{tail(logf)}")
        with open(logf, errors="replace") as fh:
            if sum("listening" in line for line in fh) >= workers:
                return proc, logf
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not log 'listening' ({workers} workers) within 30 s:\n{tail(logf)}")


def rs_claims() -> Dict[str, object]:
    now = int(time.time())
    return {"sub": "bench-user", "email": "bench@example.com", "iat": now, "nbf": now - 5, "exp": now + 3600,
            "iss": RS_ISSUER, "aud": RS_AUDIENCE}


def mint_tokens(private_pem: bytes) -> Dict[str, str]:
    """The repeated tokens: ``hs``, ``rs``, and ``rs-bad`` (the RS256 claims signed by another key)."""
    import jwt

    claims = rs_claims()
    hs = jwt.encode({**claims, "iss": HS_ISSUER, "aud": "bench"}, HS_SECRET, algorithm="HS256")
    rs = jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": "bench"})
    return {"hs": hs, "rs": rs, "rs-bad": peers.bad_signature_token(claims)}


# --------------------------------------------------------------------------- wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparseable wrk latency {text!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> Dict[str, object]:
    res: Dict[str, object] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError("no Requests/sec line in wrk output:\n" + out)
    res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("75", "p75_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", out, re.M)
        res[key] = parse_duration_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return res


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (everything but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def tree_pids(pids: List[int]) -> List[int]:
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(Processes._children(pid))
    return out


def wait_idle(max_wait: float, threshold: float = 0.10) -> float:
    """Wait (bounded) until the machine's busy CPU, with our servers idle, is below threshold cores.

    Other work on this 2-CPU machine (a test suite, a build) distorts every figure; returns the
    load seen last, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = cpu_busy_ticks(), time.monotonic()
        time.sleep(0.5)
        load = (cpu_busy_ticks() - b0) / CLK_TCK / (time.monotonic() - t0)
        if load < threshold or time.monotonic() > deadline:
            return load
        time.sleep(1.0)


def cpu_stat() -> Dict[str, List[int]]:
    """The ``cpu`` and ``cpuN`` lines of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    out = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            out[name] = [int(x) for x in fields]
    return out


def cpu_stat_delta(before: Dict[str, List[int]], after: Dict[str, List[int]], elapsed: float) -> Dict[str, object]:
    """Per CPU: busy share (all but idle and iowait) and irq+softirq share, in cores, over ``elapsed`` s."""
    res: Dict[str, object] = {}
    for name in after:
        if name not in before:
            continue
        d = [a - b for a, b in zip(after[name], before[name])]
        busy = sum(d) - d[3] - (d[4] if len(d) > 4 else 0)
        irq = (d[5] if len(d) > 5 else 0) + (d[6] if len(d) > 6 else 0)
        res[name] = {"busy_cores": busy / CLK_TCK / elapsed, "irq_softirq_cores": irq / CLK_TCK / elapsed}
    return res


def run_wrk_once(url: str, duration: float, connections: int, token: Optional[str], ours: List[int],
                 focus: Optional[List[int]] = None, cpus: str = CLIENT_CPU,
                 groups: Optional[Dict[str, List[int]]] = None,
                 during: Optional[Callable[[], object]] = None, script: Optional[str] = None) -> Dict[str, object]:
    """One wrk run (``taskset -c CPUS wrk``); also measures how much CPU other processes of the
    machine used meanwhile. ``groups`` (name -> PIDs, with their children) adds a CPU split
    (``cpu_split``: cores per group, per process, for wrk, and per CPU from /proc/stat);
    ``during()`` is called once half-way through, its result stored as ``during``; ``script`` is a
    wrk Lua script (``-s``), e.g. the fresh-token one."""
    argv = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s",
            "--latency", "--timeout", "5s"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    pids = tree_pids(ours)
    focus_pids = tree_pids(focus or [])
    group_pids = {name: tree_pids(roots) for name, roots in (groups or {}).items()}
    ours0 = sum(proc_ticks(p) for p in pids)
    focus0 = sum(proc_ticks(p) for p in focus_pids)
    per_pid0 = {p: proc_ticks(p) for g in group_pids.values() for p in g}
    stat0 = cpu_stat()
    busy0, t0 = cpu_busy_ticks(), time.monotonic()
    during_result = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        timer = threading.Timer(duration + 60, proc.kill)
        timer.start()
        probe = None
        if during is not None:
            probe = threading.Timer(duration / 2, lambda: during_result.append(during()))
            probe.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of wrk itself
        finally:
            timer.cancel()
            if probe is not None:
                probe.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - t0
        busy = (cpu_busy_ticks() - busy0) / CLK_TCK
        stat1 = cpu_stat()
        mine = (sum(proc_ticks(p) for p in pids) - ours0) / CLK_TCK + usage.ru_utime + usage.ru_stime
        server = (sum(proc_ticks(p) for p in focus_pids) - focus0) / CLK_TCK
        per_pid = {p: (proc_ticks(p) - t) / CLK_TCK / elapsed for p, t in per_pid0.items()}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {stderr}{stdout}")
    res = parse_wrk(stdout)
    res["raw"] = stdout
    res["cpu_ours_cores"] = mine / elapsed
    res["cpu_other_cores"] = max(0.0, busy - mine) / elapsed
    res["cpu_server_cores"] = server / elapsed if focus_pids else None
    if groups is not None:
        wrk_cores = (usage.ru_utime + usage.ru_stime) / elapsed
        split: Dict[str, object] = {name: sum(per_pid[p] for p in g) for name, g in group_pids.items()}
        split["wrk"] = wrk_cores
        split["per_process"] = {name: {str(p): per_pid[p] for p in g} for name, g in group_pids.items()}
        split["cpus"] = cpu_stat_delta(stat0, stat1, elapsed)
        split["total_busy_cores"] = busy / elapsed
        split["other_cores"] = max(0.0, busy / elapsed - wrk_cores - sum(per_pid.values()))
        res["cpu_split"] = split
    if during_result:
        res["during"] = during_result[0]
    return res


def run_wrk(url: str, duration: float, connections: int, token: Optional[str], warmup: float,
            ours: List[int], repeat: int = 1, idle_wait: float = 0.0, focus: Optional[List[int]] = None,
            **kw) -> Dict[str, object]:
    """Warm up, then ``repeat`` measurements; the one with the median requests/s is reported.
    ``kw`` goes to ``run_wrk_once`` (cpus, groups, during, script)."""
    if warmup > 0:
        run_wrk_once(url, warmup, connections, token, ours, focus, cpus=kw.get("cpus", CLIENT_CPU),
                     script=kw.get("script"))
    runs = []
    for _ in range(max(1, repeat)):
        if idle_wait > 0:
            wait_idle(idle_wait)
        runs.append(run_wrk_once(url, duration, connections, token, ours, focus, **kw))
    ordered = sorted(runs, key=lambda r: r["rps"])
    res = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        res["runs"] = [{k: v for k, v in r.items() if k != "raw"} for r in runs]
    return res


# --------------------------------------------------------------------------- memory


def read_status(pid: int) -> Dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) * 1024
    except OSError:
        pass
    return out


def reset_hwm(pid: int) -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = read_status(self.pid).get("VmRSS")
            if rss:
                self.peak = max(self.peak, rss)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)


def upload(port: int, size: int, deadline: float) -> Dict[str, object]:
    block = (bytes(range(256)) * 1024)  # 256 KiB pattern
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.monotonic()
    conn.putrequest("POST", "/mem/upload")
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    sent = 0
    view = memoryview(block)
    try:
        while sent < size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"upload: only {sent} of {size} bytes sent before the deadline")
            n = min(len(block), size - sent)
            conn.send(view[:n])
            sent += n
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise type(exc)(f"{exc} after {sent} of {size} bytes sent ({time.monotonic() - t0:.1f} s)") from None
    body = resp.read()
    elapsed = time.monotonic() - t0
    conn.close()
    received = None
    try:
        received = json.loads(body).get("received")
    except (ValueError, AttributeError):
        pass
    ok = resp.status == 200 and received == size
    return {"status": resp.status, "bytes": sent, "upstream_received": received, "seconds": elapsed,
            "mb_per_s": sent / 1e6 / elapsed, "ok": ok,
            "error": None if ok else f"status {resp.status}, body {body[:200]!r}"}


def download(port: int, size: int, deadline: float, rate: Optional[float] = None) -> Dict[str, object]:
    """GET ``size`` bytes and discard them; ``rate`` (bytes/s) makes a slow client, which
    exercises the gateway's back-pressure (pausing the upstream while the client lags)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.monotonic()
    conn.request("GET", f"/mem/download?bytes={size}")
    resp = conn.getresponse()
    buf = bytearray(64 * 1024 if rate else 256 * 1024)
    got = 0
    while True:
        if rate:
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() > deadline:
            raise TimeoutError(f"download: only {got} of {size} bytes read before the deadline")
        try:
            n = resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise type(exc)(f"{exc} after {got} of {size} bytes (status {resp.status}, "
                            f"{time.monotonic() - t0:.1f} s)") from None
        if not n:
            break
        got += n
    elapsed = time.monotonic() - t0
    conn.close()
    ok = resp.status == 200 and got == size
    return {"status": resp.status, "bytes": got, "seconds": elapsed, "mb_per_s": got / 1e6 / elapsed, "ok": ok,
            "error": None if ok else f"status {resp.status}, {got} of {size} bytes"}


def memory_test(procs: Processes, tmp: str, routes: str, size: int, timeout: float) -> Dict[str, object]:
    gw_port = free_port()
    gw, logf = start_gateway(procs, tmp, routes, gw_port, "memory")
    result: Dict[str, object] = {"size_bytes": size, "limit_bytes": RSS_LIMIT_BYTES}
    try:
        status, _ = http_get(f"http://127.0.0.1:{gw_port}/mem/download?bytes=10")
        if status != 200:
            log(f"WARNING: probe GET /mem/download?bytes=10 through the gateway answered {status}; measuring anyway")
            result["probe_status"] = status
        result["rss_at_start_bytes"] = read_status(gw.pid).get("VmRSS")
        slow_size = min(size, SLOW_SIZE)
        directions = (
            ("upload", upload, size),
            ("download", download, size),
            ("slow download", lambda p, n, d: download(p, n, d, rate=SLOW_RATE), slow_size),
        )
        for name, fn, nbytes in directions:
            hwm_reset = reset_hwm(gw.pid)
            log(f"memory: {name} of {nbytes / 2**20:.0f} MiB through the gateway")
            with RssSampler(gw.pid) as sampler:
                try:
                    res = fn(gw_port, nbytes, time.monotonic() + timeout)
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            status = read_status(gw.pid)
            res["size_bytes"] = nbytes
            res["peak_rss_sampled_bytes"] = sampler.peak
            res["rss_samples"] = sampler.samples
            res["vmhwm_bytes"] = status.get("VmHWM") if hwm_reset else None
            res["rss_after_bytes"] = status.get("VmRSS")
            res["peak_rss_bytes"] = max(sampler.peak, res["vmhwm_bytes"] or 0)
            res["pass"] = bool(res.get("ok")) and res["peak_rss_bytes"] < RSS_LIMIT_BYTES
            if gw.poll() is not None:
                res["error"] = (res.get("error") or "") + f"; gateway exited with {gw.returncode}"
                res["pass"] = False
            result[name] = res
        result["vmhwm_lifetime_bytes"] = read_status(gw.pid).get("VmHWM")
        result["gateway_log_tail"] = tail(logf, 20)
    finally:
        procs.stop(gw)
    return result


# --------------------------------------------------------------------------- workers

WORKERS_CPUS = "0,1"  # the --workers group: every process may run on both CPUs
WORKERS_VARIANTS = (1, 2)


def connections_per_pid(port: int) -> Dict[str, int]:
    """Established client connections on 127.0.0.1:PORT per owning PID (``ss -tnp``); {} without ss."""
    if shutil.which("ss") is None:
        return {}
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    counts: Dict[str, int] = {}
    for line in out.splitlines():
        for pid in set(re.findall(r"pid=(\d+)", line)):
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def workers_test(procs: Processes, tmp: str, args: argparse.Namespace, public_pem: str, token: str) -> Dict[str, object]:
    """``server.workers: 1`` then ``server.workers: 2`` on the RS256 route, same token, same wrk.

    Nothing is pinned to one core here: a fresh upstream nginx, the gateway (and so its forked
    workers) and wrk all run under ``taskset -c 0,1``, so the two variants get the same two CPUs
    and the scheduler places every process; the CPU split says who used what."""
    upstream_port = free_port()
    upstream = start_nginx(procs, tmp, "upstream-workers", UPSTREAM_BODY.format(port=upstream_port),
                           upstream_port, WORKERS_CPUS)
    result: Dict[str, object] = {"cpus": WORKERS_CPUS, "connections": args.connections, "duration_s": args.duration,
                                 "wrk_threads": 1, "variants": {}}
    try:
        for n in WORKERS_VARIANTS:
            port = free_port()
            routes = write_routes(tmp, port, upstream_port, free_port(), public_pem, workers=n,
                                  name=f"routes-workers{n}.yaml")
            check_gateway_config(routes)
            gw, logf = start_gateway(procs, tmp, routes, port, f"workers{n}", cpus=WORKERS_CPUS, workers=n)
            try:
                url = f"http://127.0.0.1:{port}/rs"
                status, body = http_get(url, {"Authorization": f"Bearer {token}"})
                if status != 200:
                    raise RuntimeError(f"probe GET {url} answered {status}: {body[:300]!r}\ngateway log:\n{tail(logf)}")
                workers = Processes._children(gw.pid) if n > 1 else [gw.pid]
                log(f"wrk gateway /rs, server.workers: {n} (pid {gw.pid}"
                    + (f", workers {', '.join(map(str, workers))}" if n > 1 else "")
                    + f", CPUs {WORKERS_CPUS}): {args.duration:.0f} s, {args.connections} connections")
                ours = [p.pid for p in procs.procs if p.poll() is None]
                r = run_wrk(url, args.duration, args.connections, token, args.warmup, ours, repeat=args.repeat,
                            idle_wait=args.idle_wait, focus=[gw.pid], cpus=WORKERS_CPUS,
                            groups={"gateway": [gw.pid], "upstream": [upstream.pid]},
                            during=lambda: connections_per_pid(port))
                if gw.poll() is not None:
                    raise RuntimeError(f"gateway exited with {gw.returncode}:\n{tail(logf)}")
                r["workers"] = n
                r["worker_pids"] = workers
                r["gateway_log_tail"] = tail(logf, 10)
                result["variants"][str(n)] = r
            finally:
                procs.stop(gw)
    finally:
        procs.stop(upstream)
    v = result["variants"]
    for r in v.values():
        gw_cores = (r.get("cpu_split") or {}).get("gateway")
        r["rps_per_gateway_core"] = r["rps"] / gw_cores if gw_cores else None
    if "1" in v and "2" in v:
        result["ratio_rps_2_to_1"] = v["2"]["rps"] / v["1"]["rps"]
        if v["1"]["rps_per_gateway_core"] and v["2"]["rps_per_gateway_core"]:
            # what 2 workers would give with two cores of their own (load generator elsewhere)
            result["efficiency_per_gateway_core_2_to_1"] = v["2"]["rps_per_gateway_core"] / v["1"]["rps_per_gateway_core"]
    return result


def print_workers(res: Dict[str, object]) -> None:
    print(f"workers comparison: gateway /rs (RS256, one repeated token), wrk -t1 -c{res['connections']} "
          f"{res['duration_s']:.0f} s; gateway, wrk and upstream nginx all on CPUs {res['cpus']}")
    print(f"{'':<20} {'req/s':>8} {'p50':>10} {'p99':>10}  CPU split in cores: gateway [per worker, its connections]"
          " + wrk + upstream nginx + other processes = busy")
    print("-" * 110)
    for key, r in res["variants"].items():
        sp = r.get("cpu_split") or {}
        workers = r.get("worker_pids") or []
        per = (sp.get("per_process") or {}).get("gateway", {})
        conns = r.get("during") or {}
        if len(workers) > 1:
            detail = " [" + ", ".join(f"w{i}: {per.get(str(p), 0):.2f}, {conns.get(str(p), '?')} conns"
                                       for i, p in enumerate(workers)) + "]"
        else:
            detail = ""
        cpus = sp.get("cpus") or {}
        per_cpu = " ".join(f"{name} {c['busy_cores'] * 100:.0f}% (irq+softirq {c['irq_softirq_cores'] * 100:.0f}%)"
                           for name, c in sorted(cpus.items()) if name != "cpu")
        notes = []
        if r.get("non_2xx"):
            notes.append(f"{r['non_2xx']} non-2xx")
        if sp.get("other_cores", 0) > 0.05:
            notes.append("other load: not trustworthy")
        errs = {k: x for k, x in (r.get("socket_errors") or {}).items() if x}
        if errs:
            notes.append("socket errors " + ", ".join(f"{k} {x}" for k, x in errs.items()))
        print(f"{'server.workers: ' + key:<20} {r['rps']:>8.0f} {fmt_ms(r['p50_ms']):>10} {fmt_ms(r['p99_ms']):>10}  "
              f"gateway {sp.get('gateway', 0):.2f}{detail} + wrk {sp.get('wrk', 0):.2f} + upstream {sp.get('upstream', 0):.2f}"
              f" + other {sp.get('other_cores', 0):.2f} = {sp.get('total_busy_cores', 0):.2f}"
              + (f"  {'; '.join(notes)}" if notes else ""))
        if per_cpu:
            print(f"{'':<52}per CPU: {per_cpu}")
        if r.get("runs"):
            print(f"{'':<52}runs (median shown): " + ", ".join(
                f"{x['rps']:.0f} req/s" + (f" [{'/'.join(str(c) for c in sorted((x.get('during') or {}).values(), reverse=True))} conns]"
                                            if len(workers) > 1 and x.get("during") else "")
                + (f" (other {x['cpu_split']['other_cores']:.2f})" if x.get("cpu_split") else "")
                for x in r["runs"]))
    for key, r in res["variants"].items():
        if r.get("rps_per_gateway_core"):
            print(f"server.workers: {key}: {r['rps_per_gateway_core']:.0f} req/s per core used by the gateway")
    if "ratio_rps_2_to_1" in res:
        print(f"ratio workers 2 / workers 1: {res['ratio_rps_2_to_1']:.2f}x req/s", end="")
        if res.get("efficiency_per_gateway_core_2_to_1"):
            print(f" (per gateway core: {res['efficiency_per_gateway_core_2_to_1']:.2f}, i.e. about "
                  f"{2 * res['efficiency_per_gateway_core_2_to_1']:.2f}x if the two workers had both cores to themselves)")
        else:
            print()
    print()


# --------------------------------------------------------------------------- report


def fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def mb(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / 1e6:.1f} MB"


def print_table(rows: List[Dict[str, object]], nginx_rps: Optional[float]) -> None:
    print()
    print(f"{'target':<44} {'req/s':>10} {'x nginx':>8} {'p50':>10} {'p99':>10} {'server CPU':>10} {'CPU us/req':>10}  notes")
    print("-" * 119)
    for r in rows:
        if "error" in r or "skipped" in r:
            why = f"ERROR: {r['error'].splitlines()[0]}" if "error" in r else f"SKIPPED: {r['skipped']}"
            print(f"{r['name']:<44} {'-':>10} {'-':>8} {'-':>10} {'-':>10} {'-':>10} {'-':>10}  {why}")
            continue
        ratio = f"{r['rps'] / nginx_rps:.3f}" if nginx_rps else "-"
        cpu = "-" if r.get("cpu_server_cores") is None else f"{r['cpu_server_cores'] * 100:.0f}%"
        notes = []
        if r.get("non_2xx"):
            notes.append(f"{r['non_2xx']} non-2xx")
        if r.get("cpu_other_cores", 0) > 0.05:
            notes.append(f"other load {r['cpu_other_cores']:.2f} cores")
        errs = {k: v for k, v in (r.get("socket_errors") or {}).items() if v}
        if errs:
            notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
        per = "-" if r.get("cpu_us_per_request") is None else f"{r['cpu_us_per_request']:.0f}"
        print(f"{r['name']:<44} {r['rps']:>10.0f} {ratio:>8} {fmt_ms(r['p50_ms']):>10} {fmt_ms(r['p99_ms']):>10} {cpu:>10} {per:>10}  {'; '.join(notes)}")
    print()


def check_targets(rows: Dict[str, Dict[str, object]], nginx_rps: Optional[float], connections: int) -> List[Dict[str, object]]:
    checks = []

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"target": name, "pass": ok, "detail": detail})

    for key, label in (("rs", "rs256"), ("rs-fresh", "rs256 fresh"), ("public", "public")):
        want = TARGETS[label]
        r = rows.get(key)
        if not r or "error" in r or not nginx_rps:
            add(f"gateway {label} >= {want}x nginx", False, "not measured")
            continue
        ratio = r["rps"] / nginx_rps
        clean = not r.get("non_2xx")
        add(f"gateway {label} >= {want}x nginx", ratio >= want and clean,
            f"{ratio:.3f}x ({r['rps']:.0f} / {nginx_rps:.0f} req/s)" + ("" if clean else f", {r['non_2xx']} non-2xx"))
    r = rows.get("rs")
    name = f"gateway rs256 <= {CPU_TARGET_US['rs256']:.0f} CPU us/request"
    per = (r or {}).get("cpu_us_per_request")
    add(name, per is not None and per <= CPU_TARGET_US["rs256"], "not measured" if per is None else f"{per:.0f} us")
    for key in ("public", "hs", "rs"):
        r = rows.get(key)
        name = f"gateway {key} p99 < {P99_LIMIT_MS:.0f} ms at {connections} connections"
        if not r or "error" in r or r.get("p99_ms") is None:
            add(name, False, "not measured")
        else:
            add(name, r["p99_ms"] < P99_LIMIT_MS and not r.get("non_2xx"), fmt_ms(r["p99_ms"]))
    return checks


# --------------------------------------------------------------------------- peers

CHECKED_ROWS = ("rs", "rs-fresh") + peers.PEER_ROWS  # must refuse missing/badly signed tokens before measuring


def start_peer(procs: Processes, spec: "peers.PeerSpec", cpu: str = GATEWAY_CPU) -> subprocess.Popen:
    """Test the peer's configuration, then ``taskset -c CPU`` it in the foreground (stopped by PID)."""
    test = subprocess.run(spec.check, capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise RuntimeError(f"{spec.row}: config test failed:\n{test.stderr}{test.stdout}")
    proc = procs.start(["taskset", "-c", cpu] + spec.serve, stdout=subprocess.DEVNULL,
                       stderr=open(spec.logs[-1], "w"))
    if not wait_port(spec.port, 15, proc):
        raise RuntimeError(f"{spec.row} did not start:\n" + "".join(tail(p) for p in spec.logs))
    return proc


def start_peers(procs: Processes, tmp: str, wanted: List[str], skipped: Dict[str, str], upstream_port: int,
                private_pem: bytes, rows: Dict[str, Dict[str, object]]) -> Dict[str, object]:
    """Start the wanted peers that are installed; returns row -> (label, port, process). A peer
    that is missing or does not start gets its row (``skipped`` / ``error``) here instead."""
    keys = peers.write_peer_keys(tmp, private_pem)
    builders = {
        "haproxy": lambda port: peers.haproxy_spec(tmp, port, upstream_port, keys["public"], RS_ISSUER, RS_AUDIENCE),
        "apache": lambda port: peers.apache_spec(tmp, port, upstream_port, keys["cert"], RS_ISSUER, RS_AUDIENCE),
    }
    started: Dict[str, object] = {}
    for row in wanted:
        spec = builders[row](free_port())
        if row in skipped:
            rows[row] = {"name": spec.label, "skipped": skipped[row]}
            log(f"{spec.label}: skipped: {skipped[row]}")
            continue
        try:
            proc = start_peer(procs, spec)
        except Exception as exc:  # noqa: BLE001 - reported per row
            rows[row] = {"name": spec.label, "error": str(exc)}
            log(f"{spec.label}: {exc}")
            continue
        log(f"{spec.label} on :{spec.port} (CPU {GATEWAY_CPU}, pid {proc.pid})")
        started[row] = (spec.label, spec.port, proc)
    return started


def peer_versions(started: Dict[str, object]) -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    if "haproxy" in started:
        out["haproxy"] = tool_version(["haproxy", "-v"])
    if "apache" in started:
        out["apache"] = tool_version(["apache2", "-v"])
        out["mod_auth_openidc"] = tool_version(["dpkg-query", "-W", "-f=${Version}", "libapache2-mod-auth-openidc"])
    return out


def probe_target(key: str, url: str, token, bad_token: str, gw_log: Optional[str]) -> None:
    """Raise unless the target answers 200 (and, for CHECKED_ROWS, 401 without a token and to a
    badly signed one). ``token`` is a token, a peers.FreshTokens or None."""
    probe = token.probe if isinstance(token, peers.FreshTokens) else token
    if key.split("@")[0] in CHECKED_ROWS:
        problem = peers.auth_check(http_get, url, probe, bad_token)
        if problem:
            raise RuntimeError(f"not measured: the 401/200 check failed: {problem}")
        return
    status, body = http_get(url, {"Authorization": f"Bearer {probe}"} if probe else {})
    if status != 200:
        raise RuntimeError(f"probe GET {url} answered {status}: {body[:300]!r}"
                           + (f"\ngateway log:\n{tail(gw_log)}" if gw_log else ""))


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each measurement (default 2)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--quick", action="store_true", help="5 s measurements (warm-up 1 s)")
    mem = ap.add_mutually_exclusive_group()
    mem.add_argument("--memory", dest="memory", action="store_true", default=True, help="run the memory test (default)")
    mem.add_argument("--no-memory", dest="memory", action="store_false", help="skip the 1 GiB upload/download test")
    ap.add_argument("--memory-size", default="1GiB", help="bytes per direction for the memory test (default 1GiB; K/M/G/KiB/MiB/GiB)")
    ap.add_argument("--memory-timeout", type=float, default=300.0, help="seconds allowed per direction (default 300)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per target; the median by req/s is reported (default 1)")
    ap.add_argument("--idle-wait", type=float, default=60.0,
                    help="before each measurement wait up to this many seconds for other processes to leave the CPUs idle (default 60; 0: don't)")
    ap.add_argument("--workers", action="store_true",
                    help="also compare server.workers: 1 and 2 on the RS256 route (everything on CPUs 0,1)")
    ap.add_argument("--engines", default="httptools,tornado",
                    help="comma-separated server.http_engine values, each a gateway of its own measured in this run; "
                         "the first one's rows are the ones checked against the targets (default httptools,tornado: the default engine first)")
    ap.add_argument("--baseline", default="",
                    help="a checkout of an earlier commit (e.g. made with git worktree add): its gateway, on its own "
                         "default engine, is measured in the same run as rows '@before', for before/after figures")
    ap.add_argument("--only", default="",
                    help="comma-separated subset of: upstream,nginx,haproxy,apache,public,hs,rs,rs-fresh,hsa,tls,"
                         "memory,workers (no target checks except memory)")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python that runs the gateway (default: this one); it needs the gateway's dependencies, "
                         "e.g. a venv made from it (see bench/README.md)")
    ap.add_argument("--also-python", default="",
                    help="another Python (e.g. a PGO/LTO build, or the plain one beside it): the gateway on the first "
                         "engine is measured on it too, in the same run, as rows '@also-python'")
    ap.add_argument("--tool-wait", type=float, default=600.0, help="seconds to wait for a running apt-get to install wrk/nginx")
    ap.add_argument("--output", default=os.path.join(RESULTS_DIR, "latest.json"), help="where to write the JSON results")
    args = ap.parse_args(argv)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "gateway", "__main__.py")):
        ap.error(f"--baseline {args.baseline}: not a checkout of the gateway (no gateway/__main__.py)")
    if args.also_python and not os.access(args.also_python, os.X_OK):
        ap.error(f"--also-python {args.also_python}: not an executable")
    if args.quick:
        args.duration = 5.0
        args.warmup = min(args.warmup, 1.0)
    size = parse_size(args.memory_size)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    global GATEWAY_PYTHON
    GATEWAY_PYTHON = args.python
    wanted_peers = [row for row in peers.PEER_ROWS if not only or row in only]

    skipped_peers = check_tools(args.tool_wait, tuple(wanted_peers))
    python_info = peers.python_build(GATEWAY_PYTHON)
    log(f"gateway Python: {peers.describe_build(python_info)}")
    other_info = peers.python_build(args.also_python) if args.also_python else None
    if other_info is not None:
        log(f"gateway Python of the '@{OTHER_PYTHON}' rows: {peers.describe_build(other_info)}")
    if (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 CPUs; the CPU pinning below will fail")

    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="gateway-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as an unprivileged user when started as root
    results: Dict[str, object] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_model": cpu_model(), "nginx": tool_version(["nginx", "-v"]), "wrk": tool_version(["wrk", "--version"])},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
                     "repeat": args.repeat, "idle_wait_s": args.idle_wait,
                     "wrk_threads": 1, "gateway_cpu": GATEWAY_CPU, "client_cpu": CLIENT_CPU,
                     "token_cache_size_per_issuer": peers.TOKEN_CACHE_SIZE},
        "gateway_python": python_info,
    }
    if other_info is not None:
        results["gateway_also_python"] = other_info
    rows: Dict[str, Dict[str, object]] = {}
    exit_code = 0
    try:
        upstream_port, proxy_port, mem_port, gw_port = free_port(), free_port(), free_port(), free_port()
        log(f"temp dir {tmp}")
        servers: Dict[str, subprocess.Popen] = {}
        tls_port = free_port()
        tls_files = write_tls_upstream(tmp)
        servers["upstream"] = start_nginx(
            procs, tmp, "upstream", UPSTREAM_BODY.format(port=upstream_port)
            + TLS_UPSTREAM_BODY.format(port=tls_port, cert=tls_files["cert"], key=tls_files["key"]),
            upstream_port, CLIENT_CPU)
        servers["nginx"] = start_nginx(procs, tmp, "proxy", PROXY_BODY.format(port=proxy_port, uport=upstream_port), proxy_port, GATEWAY_CPU)
        log(f"nginx upstream on :{upstream_port} (CPU {CLIENT_CPU}), nginx proxy_pass on :{proxy_port} (CPU {GATEWAY_CPU})")

        private_pem, public_pem = write_keys(tmp)
        routes = write_routes(tmp, gw_port, upstream_port, mem_port, public_pem, tls_port=tls_port,
                              tls_ca=tls_files["ca"])
        tokens = mint_tokens(private_pem)
        fresh = None
        if not only or "rs-fresh" in only:
            log(f"minting {peers.FRESH_TOKENS} RS256 tokens for the fresh-token rows")
            fresh = peers.FreshTokens(tmp, private_pem, rs_claims())
            results["settings"]["fresh_tokens"] = fresh.count
        peer_procs = start_peers(procs, tmp, wanted_peers, skipped_peers, upstream_port, private_pem, rows)
        servers.update({row: proc for row, (_, _, proc) in peer_procs.items()})
        if any("error" in rows.get(row, {}) for row in wanted_peers):
            exit_code = 1
        results["machine"].update(peer_versions(peer_procs))
        engines = [e.strip() for e in args.engines.split(",") if e.strip()] or ["tornado"]
        results["settings"]["engines"] = engines

        baseline_name = checkout_name(args.baseline) if args.baseline else ""
        other_version = str(other_info.get("version", "?")).split()[0] if other_info is not None else ""

        def gateway_targets(port: int, engine: str, first: bool) -> list:
            suffix = "" if first else f"@{engine}"
            tag = {BASELINE: f" [before: {baseline_name}]",
                   OTHER_PYTHON: f" [{engines[0]}, --also-python {other_version}]"}.get(engine, f" [{engine}]")
            return [
                ("public" + suffix, "gateway /public" + tag, f"http://127.0.0.1:{port}/public", None),
                ("hs" + suffix, "gateway /hs (HS256)" + tag, f"http://127.0.0.1:{port}/hs", tokens["hs"]),
                ("rs" + suffix, "gateway /rs (RS256)" + tag, f"http://127.0.0.1:{port}/rs", tokens["rs"]),
            ] + ([("rs-fresh" + suffix, "gateway /rs (RS256, fresh token)" + tag, f"http://127.0.0.1:{port}/rs", fresh)]
                 if fresh is not None else []) + [
                ("hsa" + suffix, "gateway /hsa (HS256 + identity assertion)" + tag, f"http://127.0.0.1:{port}/hsa",
                 tokens["hs"]),
                ("tls" + suffix, "gateway /tls (public, https upstream)" + tag, f"http://127.0.0.1:{port}/tls", None),
            ]

        # (engine or None, targets): the peers first, then one gateway process per engine
        groups: list = [(None, [
            ("upstream", "upstream (nginx, direct)", f"http://127.0.0.1:{upstream_port}/", None),
            ("nginx", "nginx proxy_pass", f"http://127.0.0.1:{proxy_port}/", None),
        ] + [(row, label, f"http://127.0.0.1:{port}/", tokens["rs"]) for row, (label, port, _) in peer_procs.items()])]
        for i, engine in enumerate(engines):
            groups.append((engine, gateway_targets(gw_port if i == 0 else free_port(), engine, i == 0)))
        if args.baseline:
            results["settings"]["baseline"] = {"path": args.baseline, "commit": baseline_name}
            groups.append((BASELINE, gateway_targets(free_port(), BASELINE, False)))
        if other_info is not None:
            groups.append((OTHER_PYTHON, gateway_targets(free_port(), OTHER_PYTHON, False)))
        order = []
        for engine, targets in groups:
            if engine is None:  # the peers in a fixed order, those that could not start too
                order += [t[0] for t in targets if t[0] not in peers.PEER_ROWS] + wanted_peers
            else:
                order += [t[0] for t in targets]
            if only:
                targets = [t for t in targets if t[0].split("@")[0] in only]
            gateway = None
            gw_log = None
            if engine is not None and targets:
                port = int(targets[0][2].split(":")[2].split("/")[0])
                before = engine == BASELINE
                repo = args.baseline if before else REPO
                # the --also-python rows: the first engine on the other interpreter; the before rows: its own default
                python, served = ((args.also_python, engines[0]) if engine == OTHER_PYTHON
                                  else (GATEWAY_PYTHON, None if before else engine))
                eroutes = write_routes(tmp, port, upstream_port, mem_port, public_pem, name=f"routes-{engine}.yaml",
                                       tls_port=tls_port, tls_ca=tls_files["ca"], engine=served, cache_size=not before)
                try:
                    check_gateway_config(eroutes, repo, python)
                    gateway, gw_log = start_gateway(procs, tmp, eroutes, port, f"bench-{engine}", repo=repo,
                                                    python=python)
                    log(f"gateway ({engine}) on :{port} (CPU {GATEWAY_CPU}, pid {gateway.pid})")
                    servers.update({t[0]: gateway for t in targets})
                except Exception as exc:  # noqa: BLE001 - reported per row
                    log(f"gateway ({engine}) not available: {exc}")
                    results["gateway_error"] = str(exc)
                    for key, name, *_ in targets:
                        rows[key] = {"name": name, "error": str(exc)}
                    targets = []
                    exit_code = 1

            for key, name, url, token in targets:
                script = token.script if isinstance(token, peers.FreshTokens) else None
                try:
                    probe_target(key, url, token, tokens["rs-bad"], gw_log)
                    log(f"wrk {name}: {args.duration:.0f} s, {args.connections} connections")
                    ours = [p.pid for p in procs.procs if p.poll() is None]
                    r = run_wrk(url, args.duration, args.connections, None if script else token, args.warmup, ours,
                                repeat=args.repeat, idle_wait=args.idle_wait, focus=[servers[key].pid],
                                script=script)
                    if r["cpu_other_cores"] > 0.10:
                        log(f"WARNING: other processes used {r['cpu_other_cores']:.2f} cores during this measurement")
                    if gateway is not None and gateway.poll() is not None:
                        raise RuntimeError(f"gateway exited with {gateway.returncode}:\n{tail(gw_log)}")
                    r["name"] = name
                    if engine is not None:
                        r["engine"] = engine
                    if r.get("cpu_server_cores") is not None and r.get("rps"):
                        r["cpu_us_per_request"] = r["cpu_server_cores"] / r["rps"] * 1e6
                    rows[key] = r
                except Exception as exc:  # noqa: BLE001 - reported per row
                    log(f"{name}: {exc}")
                    rows[key] = {"name": name, "error": str(exc)}
                    exit_code = 1
            if engine is None:  # the peers are measured: stop them before the gateway rows
                for _, _, proc in peer_procs.values():
                    procs.stop(proc)
            if gateway is not None:
                gw_hwm = read_status(gateway.pid).get("VmHWM")
                results.setdefault("gateway_vmhwm_after_wrk_bytes", {})[engine] = gw_hwm
                results.setdefault("gateway_log_tail", {})[engine] = tail(gw_log, 20)
                procs.stop(gateway)
                if gw_hwm:
                    print(f"gateway ({engine}) peak RSS (VmHWM) during the wrk runs: {mb(gw_hwm)}")

        nginx_rps = rows.get("nginx", {}).get("rps")
        table = [rows[k] for k in order if k in rows]
        for r in table:
            if nginx_rps and "rps" in r:
                r["ratio_to_nginx"] = r["rps"] / nginx_rps
                r["p50_ratio_to_nginx"] = (r["p50_ms"] / rows["nginx"]["p50_ms"]) if r.get("p50_ms") and rows["nginx"].get("p50_ms") else None
                r["p99_ratio_to_nginx"] = (r["p99_ms"] / rows["nginx"]["p99_ms"]) if r.get("p99_ms") and rows["nginx"].get("p99_ms") else None
        if table:
            print_table(table, nginx_rps)
            print(f"gateway Python: {peers.describe_build(python_info)}")
            if other_info is not None:
                print(f"gateway Python of the '@{OTHER_PYTHON}' rows: {peers.describe_build(other_info)}")
            print()
        results["throughput"] = {k: {kk: vv for kk, vv in rows[k].items() if kk != "raw"} for k in order if k in rows}
        results["wrk_output"] = {k: rows[k].get("raw") for k in order if k in rows}

        checks = check_targets(rows, nginx_rps, args.connections) if not only else []

        if args.workers or "workers" in only:
            try:
                wres = workers_test(procs, tmp, args, public_pem, tokens["rs"])
                results["workers"] = {k: v for k, v in wres.items() if k != "variants"}
                results["workers"]["variants"] = {k: {kk: vv for kk, vv in v.items() if kk != "raw"}
                                                  for k, v in wres["variants"].items()}
                results["wrk_output_workers"] = {k: v.get("raw") for k, v in wres["variants"].items()}
                print_workers(wres)
            except Exception as exc:  # noqa: BLE001
                log(f"workers comparison failed: {exc}")
                results["workers"] = {"error": str(exc)}
                exit_code = 1

        if args.memory and (not only or "memory" in only):
            try:
                mem_proc = start_mem_upstream(procs, tmp, mem_port)
                try:
                    memres = memory_test(procs, tmp, routes, size, args.memory_timeout)
                finally:
                    procs.stop(mem_proc)
                results["memory"] = memres
                print(f"memory test, {size / 2**30:.2f} GiB each way through the gateway's public route "
                      f"(slow download: {min(size, SLOW_SIZE) / 1e6:.0f} MB read at {SLOW_RATE / 1e6:.0f} MB/s):")
                for name in ("upload", "download", "slow download"):
                    r = memres[name]
                    if r.get("ok"):
                        print(f"  {name:<13}  peak RSS {mb(r['peak_rss_bytes'])} (sampled {mb(r['peak_rss_sampled_bytes'])}, "
                              f"VmHWM {mb(r['vmhwm_bytes'])}), {r['mb_per_s']:.0f} MB/s, {r['seconds']:.1f} s")
                    else:
                        print(f"  {name:<13}  FAILED: {r.get('error')}; peak RSS {mb(r.get('peak_rss_bytes'))}")
                    what = f"{size / 2**30:.2f} GiB {name}" if name != "slow download" else f"{r.get('size_bytes', 0) / 1e6:.0f} MB download to a slow client"
                    checks.append({"target": f"gateway RSS < {RSS_LIMIT_BYTES / 1e6:.0f} MB and transfer complete: {what}",
                                   "pass": r["pass"], "detail": f"peak {mb(r.get('peak_rss_bytes'))}" + ("" if r.get("ok") else f"; {r.get('error')}")})
                print()
            except Exception as exc:  # noqa: BLE001
                log(f"memory test failed: {exc}")
                results["memory"] = {"error": str(exc)}
                checks.append({"target": f"gateway RSS < {RSS_LIMIT_BYTES / 1e6:.0f} MB", "pass": False, "detail": str(exc).splitlines()[0]})

        if checks:
            if args.connections != 50:
                print(f"note: the targets are defined at 50 connections; this run used {args.connections}")
            for c in checks:
                print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['detail']}")
            if not all(c["pass"] for c in checks):
                exit_code = 1
        results["checks"] = checks
    except KeyboardInterrupt:
        log("interrupted")
        exit_code = 130
    except Exception as exc:  # noqa: BLE001
        log(f"error: {exc}")
        results["error"] = str(exc)
        exit_code = 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(results, fh, indent=2)
    log(f"results written to {os.path.relpath(args.output)}")
    return exit_code


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.I)
    if not m:
        raise SystemExit(f"--memory-size: cannot parse {text!r}")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(num * base ** " KMGT".index(unit or " "))


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def tool_version(argv: List[str]) -> Optional[str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stderr + p.stdout).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
