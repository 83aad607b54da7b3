"""A real upstream for the tests: a Tornado server on 127.0.0.1 in a thread of its own.

It echoes what it received (method, path, query, headers, body size) as JSON, and
has endpoints for the awkward cases: slow answers, resets, big streamed bodies,
several Set-Cookie headers, redirects, compressed bodies.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
import socket
import threading
from typing import Any, Optional

from tornado import gen, httpserver, web
from tornado.iostream import StreamClosedError


@web.stream_request_body
class EchoHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND")

    def prepare(self) -> None:
        self.received = 0
        self.request.connection.set_max_body_size(1 << 40)

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self.application.settings["state"]["bytes_in"] += len(chunk)

    async def _any(self, *args: Any) -> None:
        state = self.application.settings["state"]
        state["requests"] += 1
        path = self.request.path
        q = self.request.query_arguments
        if path.startswith("/slow"):
            await asyncio.sleep(float(self.get_query_argument("s", "5")))
        if path.startswith("/reset"):
            self.request.connection.stream.close()
            return
        if path.startswith("/stream"):
            total = int(self.get_query_argument("bytes", "0"))
            chunk = b"\0" * 65536
            self.set_header("Content-Type", "application/octet-stream")
            sent = 0
            try:
                while sent < total:
                    part = chunk[: min(len(chunk), total - sent)]
                    self.write(part)
                    await self.flush()
                    sent += len(part)
            except StreamClosedError:
                return
            return
        if path.startswith("/cookies"):
            self.add_header("Set-Cookie", "a=1; Path=/")
            self.add_header("Set-Cookie", "b=2; Path=/")
            self.add_header("Set-Cookie", "c=3; Path=/; HttpOnly")
        if path.startswith("/redirect"):
            self.redirect("/elsewhere", status=302)
            return
        if path.startswith("/gzip"):
            self.set_header("Content-Encoding", "gzip")
            self.set_header("Content-Type", "text/plain")
            self.finish(gzip.compress(b"hello compressed world"))
            return
        if path.startswith("/status/"):
            self.set_status(int(path.split("/")[2]))
            if self.get_status() in (204, 304):
                self.finish()
                return
        if path.startswith("/hopbyhop"):
            self.set_header("Connection", "X-Private-Hop")
            self.set_header("X-Private-Hop", "secret")
            self.set_header("Keep-Alive", "timeout=5")
            self.set_header("X-End-To-End", "kept")
        body = {
            "method": self.request.method,
            "path": path,
            "uri": self.request.uri,
            "query": {k: [v.decode() for v in vs] for k, vs in q.items()},
            "headers": {k: v for k, v in self.request.headers.get_all()},
            "header_list": list(self.request.headers.get_all()),
            "body_bytes": self.received,
            "server": self.application.settings["state"]["name"],
        }
        history = self.application.settings["state"].get("history")
        if history is not None:
            history.append(body)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    get = head = post = put = patch = delete = options = propfind = _any


class Upstream:
    """Start with ``Upstream().start()``; ``url`` is its base URL; ``stop()`` ends it."""

    def __init__(self, name: str = "upstream"):
        self.state = {"requests": 0, "bytes_in": 0, "name": name, "history": collections.deque(maxlen=512)}
        self.port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Upstream":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application([(r".*", EchoHandler)], state=self.state)
            server = httpserver.HTTPServer(app, max_body_size=1 << 40)
            server.add_sockets([sock])
            self._server = server
            self._ready.set()
            loop.run_forever()
            server.stop()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=f"upstream-{self.port}")
        self._thread.start()
        self._ready.wait(5)
        return self

    def received(self, path: Optional[str] = None) -> list:
        """The echoed requests (as in the JSON answers), oldest first; only those for ``path`` if given."""
        return [r for r in list(self.state["history"]) if path is None or r["path"] == path]

    def last(self, path: Optional[str] = None) -> Optional[dict]:
        """The most recent echoed request (for ``path`` if given), or None."""
        found = self.received(path)
        return found[-1] if found else None

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    return free_port()
