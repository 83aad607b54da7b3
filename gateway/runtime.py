"""The compiled configuration and what outlives a reload.

``Runtime`` is everything compiled from one config (route table, balancers,
token verifier, browser login); ``Gateway`` holds the current Runtime plus
what outlives a reload (HTTP clients, metrics, the access log, the open
WebSockets). A reload builds a new Runtime and swaps it in with one
assignment, so requests already running keep the one they started with.
The adapters and the pipeline read ``gateway.runtime`` once per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import IO, Any, Optional

from tornado.httpclient import AsyncHTTPClient
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .assertions import AssertionSigner
from .authn import Authenticator
from .config import DEFAULT_ASSERTION_HEADER, Config
from .discovery import DiscoveryCache
from .forwarding import Balancer, Clients
from .jwks import JWKSRegistry
from .login import LoginManager
from .logout import Logouts
from .models import Identity
from .revocations import Revocation, Revocations, session_ref
from .routing import RouteTable
from .script_tokens import AUDIENCE, ScriptTokens, own_identity
from .signing import KeyRing
from .telemetry import AccessLog, Metrics
from .tokens import TokenVerifier


class Runtime:
    """Everything derived from one config; never mutated after construction."""

    def __init__(self, config: Config, http_client: AsyncHTTPClient, revocations: Optional[Revocations] = None):
        self.config = config
        self.routes = RouteTable(config.routes)
        self.balancers = {route.name: Balancer(route.upstreams, route.tls) for route in config.routes}
        # Bearer tokens and ID tokens of one issuer share discovery and key caches.
        self.discovery = DiscoveryCache(http_client)
        self.jwks = JWKSRegistry(http_client)
        # The gateway's own keys: its tokens for scripts and the identity assertions to upstreams.
        self.keys = KeyRing.from_config(config.signing, issuer=config.server.public_url.rstrip("/"))
        self.assertions = AssertionSigner(self.keys)
        # every header name an assertion may travel in: a client's copy is removed on every route
        self.assertion_headers = frozenset(
            {DEFAULT_ASSERTION_HEADER.lower()}
            | {r.identity_assertion.header.lower() for r in config.routes if r.identity_assertion is not None})
        self.verifier = TokenVerifier(config.tokens, http_client, discovery=self.discovery, jwks_registry=self.jwks,
                                      own=(self.keys.issuer, self._own_identity))
        self.login: Optional[LoginManager] = None
        self.script_tokens: Optional[ScriptTokens] = None
        self.logouts: Optional[Logouts] = None
        if config.providers:
            self.login = LoginManager(config, http_client, self.jwks, self.discovery, revocations=revocations)
            self.script_tokens = ScriptTokens(self.keys, self.login.store, lifetime=config.signing.token_lifetime,
                                              codec=self.login.state_codec)
            self.logouts = Logouts(self.login)
        # Cookies get Secure when browsers reach the gateway over https (public_url)
        self.secure_cookies = self.login is not None and self.login.secure
        self.cookie_domain = config.session.cookie_domain if self.login is not None else ""
        # on every answer: HSTS when the gateway itself serves HTTPS and server.hsts asks for it
        server = config.server
        self.added_headers: tuple = ((("Strict-Transport-Security", f"max-age={int(server.hsts)}"),)
                                     if server.tls is not None and server.hsts > 0 else ())
        self.authn = Authenticator(self.verifier, self.login.load_identity if self.login else None,
                                   self.login.session_alive if self.login else None)

    def _own_identity(self, raw: str) -> "Identity":
        return own_identity(self.keys.verify(raw, audience=AUDIENCE))

    async def start(self) -> None:
        await self.verifier.start()
        if self.login is not None:
            await self.login.start()

    async def readiness(self) -> list[str]:
        problems = []
        if not await self.verifier.ready():
            problems.append("token signing keys not loaded yet")
        if self.login is not None:
            problems.extend(await self.login.readiness())
        return problems

    async def close(self) -> None:
        await self.verifier.close()
        if self.login is not None:
            await self.login.close()
        await self.jwks.close()


class Gateway:
    """The current Runtime plus what outlives a reload: HTTP clients, metrics, the access log, open sockets."""

    def __init__(
        self,
        config: Config,
        *,
        http_client: Optional[AsyncHTTPClient] = None,
        clients: Optional[Clients] = None,
        access_log: Optional[AccessLog] = None,
        log_stream: Optional[IO[str]] = None,
    ):
        # Identity-provider traffic (JWKS, discovery, code exchange) gets its own client,
        # so a slow provider never queues behind proxied requests.
        self.http = http_client or SimpleAsyncHTTPClient(force_instance=True, max_clients=64)
        self.clients = clients or Clients()
        self.metrics = Metrics.for_process()
        self.access_log = access_log or AccessLog(log_stream)
        # Ended sessions outlive a reload; they close the WebSockets of sessions they name, wherever they end.
        self.revocations = Revocations()
        self.revocations.listen(self._revoked)
        self.runtime = Runtime(config, self.http, self.revocations)
        self.websockets: set = set()
        self.active: set = set()  # adapters with a request in flight (each has cut_for_shutdown)
        self._session_sockets: dict = {}  # socket -> (SessionRef, expiry timer)

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        self.revocations.start()
        await self.runtime.start()

    def new_runtime(self, config: Config) -> Runtime:
        """A Runtime for a reloaded config, sharing what outlives it."""
        return Runtime(config, self.http, self.revocations)

    async def readiness(self) -> list[str]:
        """What is not ready yet; an empty list means ready."""
        return await self.runtime.readiness()

    def track_websocket(self, identity: Optional[Identity], socket: Any) -> None:
        """A relayed WebSocket; one opened with a session closes (1008) when that session ends or expires."""
        self.websockets.add(socket)
        if identity is None or not identity.session_id:
            return
        timer = None
        if identity.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, identity.expires_at - time.time())
            timer = loop.call_later(delay, lambda: socket.close(1008, "session expired"))
        self._session_sockets[socket] = (session_ref(identity), timer)

    def untrack_websocket(self, socket: Any) -> None:
        self.websockets.discard(socket)
        _, timer = self._session_sockets.pop(socket, (None, None))
        if timer is not None:
            timer.cancel()

    def _revoked(self, entry: Revocation) -> None:
        """A session ended (here, in another worker or instance): close the WebSockets it opened (1008)."""
        for socket, (ref, _) in list(self._session_sockets.items()):
            if self.revocations.matches(entry, ref):
                socket.close(1008, "session ended")

    def close_websockets(self, code: int = 1001, reason: str = "gateway shutting down") -> None:
        """Close both legs of every relayed WebSocket (going away, 1001, on shutdown)."""
        for socket in list(self.websockets):
            socket.close_both(code, reason)

    async def close(self) -> None:
        self.revocations.stop()
        await self.runtime.close()
        self.clients.close()
        self.http.close()
