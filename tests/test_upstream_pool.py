"""The upstream connection pool, end to end: reuse, and a pooled connection the upstream closed.

A keep-alive upstream may close an idle connection at the moment the gateway
sends the next request on it (its keep-alive timeout ran out). Nothing was
answered, so a bodiless idempotent request is sent again on a new connection;
a POST never is (it could have been acted on). The upstream here is a raw
socket server whose every connection answers its first request with
keep-alive and then closes on the second without a byte.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional

import pytest

from tests.support.e2e import request
from tests.support.gateway_proc import GatewayProcess

pytestmark = pytest.mark.timeout(60)


class OneShotUpstream:
    """Answers one request per connection (keep-alive announced), then drops the connection unanswered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "OneShotUpstream":
        self.thread.start()
        return self

    def _serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_head(conn: socket.socket) -> Optional[bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        return data

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            head = self._read_head(conn)
            if head is None:
                return
            with self.lock:  # counted before the answer leaves: the test may read it as soon as the client has it
                self.answered += 1
            if head.startswith(b"HEAD "):  # a HEAD answer announcing a body is never reused: announce none
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
            else:
                body = b"pong %d" % self.connections
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
                             % (len(body), body))
            if self._read_head(conn) is not None:  # the next request on this connection: dropped unanswered
                with self.lock:
                    self.dropped += 1
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


@pytest.fixture
def pool_env():
    up = OneShotUpstream().start()
    gw = GatewayProcess(f"""
routes:
  - name: flaky
    path: /
    upstream: http://127.0.0.1:{up.port}
    auth: public
    timeout: 10s
""")
    try:
        gw.start()
        yield gw, up
    finally:
        gw.stop()
        up.stop()


def test_a_get_on_a_connection_the_upstream_dropped_is_sent_again(pool_env):
    gw, up = pool_env
    for i in range(5):
        r = request(gw.url, "GET", f"/x/{i}")
        assert r.status == 200, (i, r.status, r.body)
        assert r.body.startswith(b"pong")
    assert up.answered == 5
    assert up.dropped >= 1  # the retry really happened on a pooled connection that was dropped
    assert gw.alive()


def test_a_post_on_a_dropped_connection_is_not_sent_again(pool_env):
    gw, up = pool_env
    assert request(gw.url, "GET", "/first").status == 200  # leaves a pooled connection
    r = request(gw.url, "POST", "/once", body=b"payload")
    # the upstream drops a connection only once the next head arrived, so the POST always meets
    # the drop: 502, never replayed (the upstream answered only the GET)
    assert r.status == 502, r.status
    assert up.answered == 1 and up.dropped == 1
    assert gw.alive()


def test_a_head_request_is_retried_too(pool_env):
    gw, up = pool_env
    for _ in range(3):
        assert request(gw.url, "HEAD", "/h").status == 200
    assert up.answered == 3 and up.dropped >= 1
