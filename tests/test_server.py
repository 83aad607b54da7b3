"""Tests for gateway.server: what ``gateway serve`` says when it cannot start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
server:
  listen: 127.0.0.1:{listen}
  admin_listen: 127.0.0.1:{admin}
routes:
  - name: site
    path: /
    upstream: http://127.0.0.1:9
    auth: public
"""


def serve(tmp_path, listen: int, admin: int, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG.format(listen=listen, admin=admin))
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "-c", str(path), *extra],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_busy_listen_address_names_the_address_and_the_key(tmp_path, busy_port):
    result = serve(tmp_path, busy_port, free_port())
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port} (server.listen): Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_admin_address_names_admin_listen(tmp_path, busy_port):
    result = serve(tmp_path, free_port(), busy_port)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port} (server.admin_listen): Address already in use" in result.stderr


def test_busy_override_names_the_flag(tmp_path, busy_port):
    result = serve(tmp_path, free_port(), free_port(), "--listen", f"127.0.0.1:{busy_port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port} (--listen)" in result.stderr
