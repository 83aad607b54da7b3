"""Redis as run in production, on loopback for tests: TLS, and a Sentinel-managed master and replica.

Typical use::

    tls = make_tls(tmp_path)                      # CA, server cert for 127.0.0.1, a second (wrong) CA
    with redis_node(tmp_path, "tls", tls_conf(tls)) as node:
        node.port                                 # its TLS port; node.url("rediss", ca=tls.ca)

    with sentinel_cluster(tmp_path, sentinels=2) as cluster:
        cluster.url                               # redis+sentinel://127.0.0.1:S1,127.0.0.1:S2/mymaster/0
        cluster.wait_replicated()                 # the replica has everything the master has
        cluster.failover()                        # SENTINEL FAILOVER: returns once every sentinel names the new master
        cluster.kill_master()                     # SIGKILL; cluster.wait_new_master(old) after

Every process has its own directory and config file (sentinels rewrite theirs), listens on
127.0.0.1 only, persists nothing, and is stopped by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

SERVICE = "mymaster"
DOWN_AFTER_MS = 500  # sentinel down-after-milliseconds: how long a silent master takes to be "down"
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT = 10.0


def redis_sentinel_path() -> Optional[str]:
    """``redis-sentinel`` (Debian package redis-sentinel), or None."""
    return shutil.which("redis-sentinel") or (
        "/usr/bin/redis-sentinel" if os.access("/usr/bin/redis-sentinel", os.X_OK) else None
    )


def redis_server_path() -> Optional[str]:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- TLS material


@dataclass
class TLSFiles:
    ca: str  # the CA that signed the server certificate
    cert: str  # server certificate for 127.0.0.1 / localhost (also usable as a client certificate)
    key: str
    wrong_ca: str  # a CA that signed nothing here


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_tls(directory: Path) -> TLSFiles:
    """A CA, a server certificate it signed (SAN 127.0.0.1 and localhost), and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("gateway test CA")
    _, wrong_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("redis.test")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # server and client: a sentinel and a replica present it when they connect to a master
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TLSFiles(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"),
                     str(directory / "wrong-ca.pem"))
    Path(files.ca).write_bytes(ca_cert.public_bytes(pem))
    Path(files.wrong_ca).write_bytes(wrong_cert.public_bytes(pem))
    Path(files.cert).write_bytes(cert.public_bytes(pem))
    Path(files.key).write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    os.chmod(files.key, 0o600)
    return files


def tls_conf(tls: TLSFiles, port: int) -> List[str]:
    """Config lines: TLS only on ``port`` (the plain port closed), clients not asked for certificates."""
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {tls.cert}",
        f"tls-key-file {tls.key}",
        f"tls-ca-cert-file {tls.ca}",
        "tls-auth-clients no",
        "tls-replication yes",  # replicas and sentinels talk TLS to this node too
    ]


# --------------------------------------------------------------------------- processes


def ping(port: int, tls: Optional[TLSFiles], timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if tls is not None:
                ctx = ssl.create_default_context(cafile=tls.ca)
                ctx.load_cert_chain(tls.cert, tls.key)  # for a node that asks clients for one
                sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except (OSError, ssl.SSLError):
        return False


class RedisNode:
    """One ``redis-server`` or ``redis-sentinel`` process with its own directory and config file."""

    def __init__(self, directory: Path, name: str, port: int, lines: Sequence[str], *,
                 sentinel: bool = False, tls: Optional[TLSFiles] = None):
        self.directory = Path(directory) / name
        self.name = name
        self.port = port
        self.lines = list(lines)
        self.sentinel = sentinel
        self.tls = tls
        self.proc: Optional[subprocess.Popen] = None
        self.paused = False
        self.log_path = self.directory / f"{name}.log"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def client(self, **kwargs):
        """A synchronous redis-py client to this node (for the test's own commands)."""
        import redis

        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=self.tls.ca)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def start(self) -> "RedisNode":
        binary = redis_sentinel_path() if self.sentinel else redis_server_path()
        if binary is None:
            raise RuntimeError("redis-sentinel is not installed" if self.sentinel else "redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")
        base = [
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.directory}",
            'logfile ""',
        ]
        if not self.sentinel:
            base += ['save ""', "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        if not any(line.startswith("port ") for line in self.lines):
            base.append(f"port {self.port}")
        conf.write_text("\n".join(base + self.lines) + "\n")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([binary, str(conf)], cwd=self.directory, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ping(self.port, self.tls):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer PING on port {self.port}:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL by PID: gone at once, no goodbye to replicas or sentinels."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP by PID: connections are accepted by the kernel but nothing answers (a hung host)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def redis_node(directory: Path, name: str, lines_for_port, *, sentinel: bool = False,
               tls: Optional[TLSFiles] = None, attempts: int = 3) -> Iterator[RedisNode]:
    """A started node on a free port (``lines_for_port(port)`` gives its config lines), stopped on exit."""
    error: Optional[Exception] = None
    for attempt in range(attempts):  # the free port may be taken between choosing and binding
        port = free_port()
        node = RedisNode(directory, f"{name}-{attempt}", port, lines_for_port(port), sentinel=sentinel, tls=tls)
        try:
            node.start()
        except RuntimeError as exc:
            error = exc
            continue
        try:
            yield node
        finally:
            node.stop()
        return
    assert error is not None
    raise error


# --------------------------------------------------------------------------- Sentinel


def _info(node: RedisNode, section: str = "replication") -> dict:
    return node.client().info(section)


@dataclass
class SentinelCluster:
    master: RedisNode
    replica: RedisNode
    sentinels: List[RedisNode]
    tls: Optional[TLSFiles] = None
    events: List[Tuple[str, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is None:
            return f"redis+sentinel://{hosts}/{SERVICE}/0"
        return f"rediss+sentinel://{hosts}/{SERVICE}/0?ssl_ca_certs={self.tls.ca}"

    def nodes(self) -> List[RedisNode]:
        return [self.master, self.replica]

    def by_port(self, port: int) -> RedisNode:
        return next(n for n in self.nodes() if n.port == port)

    def master_addresses(self) -> List[Optional[Tuple[str, int]]]:
        """What each live sentinel answers to SENTINEL GET-MASTER-ADDR-BY-NAME."""
        out = []
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                addr = s.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            except Exception:
                out.append(None)
                continue
            out.append((addr[0].decode(), int(addr[1])) if addr else None)
        return out

    def current_master_port(self) -> int:
        addrs = self.master_addresses()
        assert addrs and addrs[0] is not None, addrs
        return addrs[0][1]

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Every sentinel knows the master, the replica (link up) and every other sentinel."""
        deadline = time.monotonic() + timeout
        problems = "not checked"
        while time.monotonic() < deadline:
            problems = ""
            for s in self.sentinels:
                c = s.client()
                state = c.sentinel_master(SERVICE)
                replicas = c.sentinel_slaves(SERVICE)
                if state.get("num-other-sentinels", 0) < len(self.sentinels) - 1:
                    problems += f"{s.name}: sees {state.get('num-other-sentinels')} other sentinels; "
                good = [r for r in replicas if not r.get("is_sdown") and r.get("master-link-status") == "ok"]
                if not good:
                    problems += f"{s.name}: no good replica yet ({replicas}); "
            if not problems:
                return
            time.sleep(0.05)
        raise AssertionError(f"sentinels not ready within {timeout}s: {problems}")

    def wait_replicated(self, timeout: float = 5.0) -> None:
        """The replica has applied everything the current master has (its offset caught up)."""
        master = self.by_port(self.current_master_port())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _info(master)
            target = info["master_repl_offset"]
            offsets = [v["offset"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if offsets and min(offsets) >= target:
                return
            time.sleep(0.02)
        raise AssertionError(f"the replica did not catch up within {timeout}s: {_info(master)}")

    def wait_new_master(self, old_port: int, timeout: float = 15.0) -> float:
        """Until every live sentinel names a master other than ``old_port`` and it says role:master.
        Returns when that was (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            addrs = self.master_addresses()
            ports = {a[1] for a in addrs if a is not None}
            if addrs and None not in addrs and len(ports) == 1 and old_port not in ports:
                new = self.by_port(ports.pop())
                if _info(new).get("role") == "master":
                    return time.monotonic()
            time.sleep(0.02)
        raise AssertionError(f"no new master within {timeout}s: sentinels say {self.master_addresses()}\n"
                             + "\n".join(s.log_tail(1500) for s in self.sentinels))

    def failover(self) -> Tuple[float, float]:
        """SENTINEL FAILOVER; (when it was asked, when every sentinel named the new master)."""
        old = self.current_master_port()
        started = time.monotonic()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        return started, self.wait_new_master(old)

    def kill_master(self) -> Tuple[float, float]:
        """SIGKILL the master; (when it was killed, when every sentinel named the new master)."""
        old = self.current_master_port()
        started = time.monotonic()
        self.by_port(old).kill()
        return started, self.wait_new_master(old)

    def pause_master(self) -> Tuple[float, float]:
        """SIGSTOP the master; (when it was stopped, when every sentinel named the new master)."""
        old = self.current_master_port()
        started = time.monotonic()
        self.by_port(old).pause()
        return started, self.wait_new_master(old)

    def wait_old_master_is_replica(self, port: int, timeout: float = 10.0) -> None:
        """After SENTINEL FAILOVER the old master is reconfigured as a replica of the new one."""
        node = self.by_port(port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _info(node)
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                return
            time.sleep(0.05)
        raise AssertionError(f"old master on {port} is not a synced replica: {_info(node)}")


@contextlib.contextmanager
def sentinel_cluster(directory: Path, *, sentinels: int = 2, tls: Optional[TLSFiles] = None
                     ) -> Iterator[SentinelCluster]:
    """A master, a replica of it (--replicaof) and ``sentinels`` sentinels (quorum 1), all ready."""
    directory = Path(directory)

    def server_lines(extra: List[str]):
        def lines(port: int) -> List[str]:
            return (tls_conf(tls, port) if tls is not None else []) + extra
        return lines

    with contextlib.ExitStack() as stack:
        master = stack.enter_context(redis_node(directory, "master", server_lines([]), tls=tls))
        replica = stack.enter_context(redis_node(
            directory, "replica", server_lines([f"replicaof 127.0.0.1 {master.port}"]), tls=tls))
        # the replica must be attached before the sentinels' first INFO to the master, which is how
        # they learn about replicas (later INFOs come only every 10 s)
        deadline = time.monotonic() + 10
        while _info(master).get("connected_slaves", 0) < 1 or _info(replica).get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise AssertionError(f"replica did not sync:\n{replica.log_tail()}")
            time.sleep(0.02)

        def sentinel_lines(port: int) -> List[str]:
            lines = (tls_conf(tls, port) if tls is not None else []) + [
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            return lines

        nodes = [stack.enter_context(redis_node(directory, f"sentinel{i + 1}", sentinel_lines, sentinel=True,
                                                tls=tls))
                 for i in range(sentinels)]
        cluster = SentinelCluster(master, replica, nodes, tls)
        cluster.wait_ready()
        yield cluster
