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


def check(tmp_path, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30, env=env)


def test_check_warns_of_setups_that_cannot_work_but_passes(tmp_path):
    result = check(tmp_path, """\
server:
  listen: 0.0.0.0:8080
session:
  secret: q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a
providers:
  corp:
    issuer: https://idp.example
    client_id: gateway
    client_secret: s3cr3t-client
routes:
  - name: api
    path: /api
    upstream: http://127.0.0.1:9000
    auth: token
  - name: app
    path: /
    upstream: http://127.0.0.1:9000
""")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "routes.yaml"
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{path}:5: warning: browser login while listening on 0.0.0.0 without server.public_url")
    assert lines[1] == (f'{path}:11: warning: route "api" has auth: token but no tokens: issuer is configured, '
                        "so every request to it gets 401")
    assert "2 warning(s)" in result.stdout


def test_check_has_no_warning_for_a_sound_setup(tmp_path):
    result = check(tmp_path, """\
server:
  listen: 0.0.0.0:8080
  public_url: https://gw.example.com
session:
  secret: q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a
providers:
  corp:
    issuer: https://idp.example
    client_id: gateway
    client_secret: s3cr3t-client
routes:
  - name: app
    path: /
    upstream: http://127.0.0.1:9000
""")
    assert result.returncode == 0 and result.stderr == "" and "warning(s)" not in result.stdout


def test_log_format_json_makes_the_operational_log_json_lines(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG.format(listen=0, admin=0).replace("server:\n", "server:\n  log_format: json\n", 1))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(path)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stderr.readline()
        import json

        entry = json.loads(line)
        assert entry["level"] == "info" and entry["message"].startswith("gateway listening on http://127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_log_format_must_be_text_or_json(tmp_path):
    result = check(tmp_path, CONFIG.format(listen=8080, admin=9091).replace("server:\n", "server:\n  log_format: xml\n", 1))
    assert result.returncode == 1
    assert 'server: log_format must be "text" or "json", not "xml"' in result.stderr


def test_http_engine_must_be_tornado_or_httptools(tmp_path):
    result = check(tmp_path, CONFIG.format(listen=8080, admin=9091).replace("server:\n", "server:\n  http_engine: h2o\n", 1))
    assert result.returncode != 0
    assert 'server: http_engine must be "tornado" or "httptools", not "h2o"' in result.stderr
    for engine in ("tornado", "httptools"):
        ok = check(tmp_path, CONFIG.format(listen=8080, admin=9091).replace("server:\n", f"server:\n  http_engine: {engine}\n", 1))
        assert ok.returncode == 0, ok.stderr
