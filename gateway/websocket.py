"""WebSocket upgrades: admitted like any request, then relayed frame by frame.

The fast delegate hands requests carrying ``Upgrade: websocket`` here
instead of to ``ProxyHandler``. The handshake goes through the same
``pipeline.admit`` as a plain request (401/403 before any upgrade, never a login
redirect), then the gateway connects to the upstream first, so a dead upstream
is a 502 rather than an accepted socket that closes at once, and only then
accepts the client. Messages are relayed one at a time in each direction: a
slow reader on either side stops the gateway from reading the other, so nothing
buffers without bound. Close codes pass through both ways, and signing out a
session closes the sockets it opened.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Union

from tornado import httputil, websocket
from tornado.httpclient import HTTPRequest

from . import pipeline
from .answers import Refusal
from .handlers import GatewayHandler
from .models import Identity
from .pipeline import Admitted

log = logging.getLogger("gateway.websocket")

# Set by the WebSocket handshake itself on each leg; never copied across.
HANDSHAKE_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept",
    "sec-websocket-protocol", "origin",
})
MAX_MESSAGE = 16 * 1024 * 1024


class WebSocketRelay(GatewayHandler, websocket.WebSocketHandler):
    identity: Optional[Identity] = None
    upstream: Optional[websocket.WebSocketClientConnection] = None
    _pump: Optional["asyncio.Future[None]"] = None
    _closing = False

    async def prepare(self) -> None:
        # Refuse a malformed handshake before anything is opened toward the upstream.
        headers = self.request.headers
        if (self.request.method != "GET" or "upgrade" not in headers.get("Connection", "").lower()
                or not headers.get("Sec-WebSocket-Key") or headers.get("Sec-WebSocket-Version") != "13"):
            return self.answer(Refusal(400, "malformed websocket handshake", description="Malformed WebSocket handshake.",
                                       headers=(("Sec-WebSocket-Version", "13"),)))
        outcome = await pipeline.admit(self.accepted, self.runtime, websocket=True, found=self.found)
        if not isinstance(outcome, Admitted):
            return self.answer(outcome)  # type: ignore[arg-type]
        self.admitted = outcome
        self.identity = outcome.identity

    async def get(self, *args: Any, **kwargs: Any) -> None:
        admitted, req = self.admitted, self.request
        route, plan = admitted.route, admitted.plan
        base = plan.balancer.order()[0]
        url = "ws" + base[4:] + plan.path_and_query
        headers = httputil.HTTPHeaders()
        for name, value in plan.headers:
            if name.lower() not in HANDSHAKE_HEADERS:
                headers.add(name, value)
        protocols = [p.strip() for p in req.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        if req.headers.get("Origin"):
            headers["Origin"] = req.headers["Origin"]
        if route.preserve_host:
            headers["Host"] = req.host
        self.scope.upstream = base
        try:
            self.upstream = await websocket.websocket_connect(
                HTTPRequest(url, headers=headers, connect_timeout=route.connect_timeout,
                            request_timeout=route.timeout, follow_redirects=False),
                subprotocols=protocols or None, max_message_size=MAX_MESSAGE, ping_interval=None,
            )
        except Exception as exc:  # refused, reset, timeout, or the upstream declined the upgrade
            kind = "timeout" if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower() else "connect"
            self.gateway.metrics.count_upstream_error(route.name, kind)
            log.warning("websocket upstream %s for route %s: %s", base, route.name, exc)
            return self.answer(Refusal(504 if kind == "timeout" else 502, f"websocket upstream {kind}"))
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> Optional[str]:
        chosen = self.upstream.selected_subprotocol if self.upstream is not None else None
        return chosen if chosen in subprotocols else None

    def get_compression_options(self) -> Optional[dict]:
        return None

    def check_origin(self, origin: str) -> bool:
        """A session's sockets only from the gateway's own pages (or websocket_origins); bearer and
        public upgrades are the upstream's to judge (it gets Origin)."""
        if self.identity is None or self.identity.source != "session":
            return True
        allowed = pipeline.websocket_origin_allowed(self.accepted, self.admitted.route, self.runtime, origin)
        if not allowed:
            self.scope.reason = "websocket origin not allowed for a session"
            log.warning("websocket from origin %s refused on route %s: not the gateway's own",
                        origin[:100], self.admitted.route.name)
        return allowed

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self.gateway.track_websocket(self.identity, self)
        self._pump = asyncio.ensure_future(self._upstream_to_client())

    async def _upstream_to_client(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        while True:
            message = await upstream.read_message()
            if message is None:
                if not self._closing:
                    self._closing = True
                    self.close(upstream.close_code or 1000, upstream.close_reason or "")
                return
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                return

    async def on_message(self, message: Union[str, bytes]) -> None:
        if self.upstream is None:
            return
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            self.close(1011, "upstream closed")

    def close_both(self, code: int, reason: str) -> None:
        if self.upstream is not None and not self._closing:
            self._closing = True
            self.upstream.close(code, reason)
        self.close(code, reason)

    def on_ping(self, data: bytes) -> None:
        if self.upstream is not None and self.upstream.protocol is not None:
            try:
                self.upstream.ping(data)
            except websocket.WebSocketClosedError:
                pass

    def on_close(self) -> None:
        self.gateway.untrack_websocket(self)
        if self.upstream is not None and not self._closing:
            self._closing = True
            code = self.close_code if self.close_code not in (None, 1005, 1006) else 1000
            self.upstream.close(code, self.close_reason or "")

    def on_connection_close(self) -> None:
        # The client went away before or during the upstream handshake.
        if self.upstream is not None and self.ws_connection is None:
            self.upstream.close()
        super().on_connection_close()

    def on_finish(self) -> None:
        # An HTTP answer instead of an upgrade (the client's handshake was refused): drop the upstream leg.
        if self.upstream is not None and self.ws_connection is None:
            self.upstream.close()
