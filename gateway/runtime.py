"""The compiled configuration and what outlives a reload.

``Runtime`` is everything compiled from one config (route table, balancers,
token verifier, browser login); ``Gateway`` holds the current Runtime plus
what outlives a reload (HTTP clients, metrics, the access log, the open
WebSockets). A reload builds a new Runtime and swaps it in with one
assignment, so requests already running keep the one they started with.
The adapters and the pipeline read ``gateway.runtime`` once per request.
"""

from __future__ import annotations

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
from .models import Identity
from .routing import RouteTable
from .script_tokens import AUDIENCE, ScriptTokens, own_identity
from .signing import KeyRing
from .telemetry import AccessLog, Metrics
from .tokens import TokenVerifier


class Runtime:
    """Everything derived from one config; never mutated after construction."""

    def __init__(self, config: Config, http_client: AsyncHTTPClient):
        self.config = config
        self.routes = RouteTable(config.routes)
        self.balancers = {route.name: Balancer(route.upstreams) for route in config.routes}
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
        if config.providers:
            self.login = LoginManager(config, http_client, self.jwks, self.discovery)
            self.script_tokens = ScriptTokens(self.keys, self.login.store, lifetime=config.signing.token_lifetime)
        # Cookies get Secure when browsers reach the gateway over https (public_url)
        self.secure_cookies = self.login is not None and self.login.secure
        self.cookie_domain = config.session.cookie_domain if self.login is not None else ""
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
        self.metrics = Metrics()
        self.access_log = access_log or AccessLog(log_stream)
        self.runtime = Runtime(config, self.http)
        self.websockets: set = set()
        self.active: set = set()  # adapters with a request in flight (each has cut_for_shutdown)
        self._by_session: dict[str, set] = {}

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        await self.runtime.start()

    async def readiness(self) -> list[str]:
        """What is not ready yet; an empty list means ready."""
        return await self.runtime.readiness()

    def track_websocket(self, session_id: Optional[str], socket: Any) -> None:
        self.websockets.add(socket)
        if session_id:
            self._by_session.setdefault(session_id, set()).add(socket)

    def untrack_websocket(self, session_id: Optional[str], socket: Any) -> None:
        self.websockets.discard(socket)
        if session_id and session_id in self._by_session:
            self._by_session[session_id].discard(socket)
            if not self._by_session[session_id]:
                del self._by_session[session_id]

    def sessions_ended(self, session_id: str) -> None:
        """A session was signed out: close the WebSockets it opened (policy violation, 1008)."""
        for socket in list(self._by_session.pop(session_id, ())):
            socket.close(1008, "session ended")

    def close_websockets(self, code: int = 1001, reason: str = "gateway shutting down") -> None:
        """Close both legs of every relayed WebSocket (going away, 1001, on shutdown)."""
        for socket in list(self.websockets):
            socket.close_both(code, reason)

    async def close(self) -> None:
        await self.runtime.close()
        self.clients.close()
        self.http.close()
