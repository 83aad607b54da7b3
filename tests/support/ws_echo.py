"""A WebSocket echo upstream and WebSocket clients, each on an event loop of its own thread.

For tests that drive everything else synchronously (Playwright's sync API, subprocesses)::

    with WebSocketThread() as ws:
        ws.upstream_url                    # "http://127.0.0.1:PORT": paths ending in /ws echo; others answer 200
        sock = ws.open("ws://127.0.0.1:8080/app/ws", {"Cookie": jar})
        sock.echo("hi")                    # "hi", through the gateway
        sock.close_code(timeout=5)         # the code the gateway closed it with (1008...), or None
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from tornado import httpserver, netutil, web, websocket
from tornado.httpclient import HTTPRequest


class _Echo(websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def on_message(self, message: Any) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class _Plain(web.RequestHandler):
    def get(self) -> None:
        self.write({"path": self.request.path, "user": self.request.headers.get("X-Forwarded-User")})

    post = get


class Socket:
    def __init__(self, owner: "WebSocketThread", conn: Any):
        self._owner = owner
        self._conn = conn

    def echo(self, text: str, timeout: float = 5.0) -> Optional[str]:
        async def go() -> Optional[str]:
            await self._conn.write_message(text)
            return await self._conn.read_message()
        return self._owner.call(go(), timeout)

    def close_code(self, timeout: float = 5.0) -> Optional[int]:
        """Wait until the server closes the socket; its close code (None if it stays open)."""
        async def go() -> Optional[int]:
            try:
                while True:
                    message = await asyncio.wait_for(self._conn.read_message(), timeout)
                    if message is None:
                        return self._conn.close_code
            except asyncio.TimeoutError:
                return None
        return self._owner.call(go(), timeout + 2)

    def close(self) -> None:
        self._owner.loop.call_soon_threadsafe(self._conn.close)


class WebSocketThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.upstream_url = ""
        self._server: Optional[httpserver.HTTPServer] = None

    def __enter__(self) -> "WebSocketThread":
        self._thread.start()

        async def serve() -> int:
            app = web.Application([(r".*/ws", _Echo), (r"/.*", _Plain)])
            self._server = httpserver.HTTPServer(app)
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            self._server.add_sockets(sockets)
            return sockets[0].getsockname()[1]

        self.upstream_url = f"http://127.0.0.1:{self.call(serve())}"
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.stop()
        try:
            self.call(stop(), 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self, url: str, headers: Optional[dict] = None) -> Socket:
        async def go() -> Any:
            return await websocket.websocket_connect(HTTPRequest(url, headers=headers or {}))
        return Socket(self, self.call(go()))
