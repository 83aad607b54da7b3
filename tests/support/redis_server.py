"""Run a real ``redis-server`` on loopback for tests.

Typical use::

    from tests.support.redis_server import start_redis, redis_available

    with start_redis(tmp_path) as server:
        server.url        # "redis://127.0.0.1:PORT/0"
        server.pause()    # SIGSTOP: connections hang, as with a stuck server
        server.resume()   # SIGCONT
        server.stop()     # gone: connections are refused
        server.start()    # again, on the same port (empty: nothing is persisted)

No persistence (``--save "" --appendonly no``), bound to 127.0.0.1 only, and the
process is always killed by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 5.0


def redis_server_path() -> Optional[str]:
    """The ``redis-server`` binary, or None when it is not installed."""
    if os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    return shutil.which("redis-server")


def redis_available() -> bool:
    return redis_server_path() is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pong(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: Optional[int] = None):
        self.directory = Path(directory)
        self.port = port or _free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> "RedisServer":
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"redis-{self.port}.log"
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--save", "",
                    "--appendonly", "no",
                    "--bind", "127.0.0.1",
                    "--port", str(self.port),
                    "--dir", str(self.directory),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _pong(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT}s:\n{tail}")

    def stop(self) -> None:
        """Terminate (then kill) the process by its PID and reap it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self._paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self._paused = False
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.proc is not None and self._paused:
            os.kill(self.proc.pid, signal.SIGCONT)
            self._paused = False


@contextlib.contextmanager
def start_redis(tmp_path: Path, attempts: int = 3) -> Iterator[RedisServer]:
    """A running ``redis-server`` on a free loopback port, stopped on exit."""
    error: Optional[Exception] = None
    for _ in range(attempts):  # the free port may be taken between choosing and binding
        server = RedisServer(Path(tmp_path) / "redis")
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    assert error is not None
    raise error
