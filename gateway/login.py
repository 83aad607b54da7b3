"""Browser login: the OpenID Connect code flow, the session it creates, refresh and sign-out.

Sits beside authentication in the request path. A browser without a session
on a ``login`` route is sent to its identity provider (``begin``); the
provider sends it back to ``/oauth2/callback`` (``finish``), which checks, in
order, the error, the code and the state, then exchanges the code and stores
a session. ``load_identity`` is the session half of ``authn``: it reads the
session, refreshes the access token shortly before it expires (once per
session at a time), and ends the session when the provider says
``invalid_grant``.

Pending logins live in one small encrypted cookie each, named after their
state, so several tabs can log in at once; each expires after ten minutes,
is cleared when used, is single-use even if replayed, and a browser never
holds more than ``MAX_PENDING_LOGINS`` of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from typing import Any, Mapping, Optional
from urllib.parse import urlencode, urlsplit

from tornado import httputil

from .config import AUTH_LOGIN, Config, RouteConfig
from .redirects import safe_redirect_path
from .discovery import DiscoveryCache
from .jwks import JWKSRegistry
from .models import Identity
from .oidc import InvalidGrant, OIDCClient, OIDCError, ProviderUnavailable, new_pkce, random_token
from .sessions import CookieCodec, CookieUpdate, Session, SessionStore, SessionStoreError, make_session_store

log = logging.getLogger("gateway.login")

LOGIN_STATE_TTL = 600.0
MAX_PENDING_LOGINS = 3
REFRESH_BEFORE = 60.0  # refresh this long before the access token expires
REFRESH_WAIT = 10.0
REACHABLE_TIMEOUT = 2.0  # seconds to connect to the provider before a login redirect
REACHABLE_OK_FOR = 10.0  # a successful check is trusted this long
REACHABLE_DOWN_FOR = 2.0  # a failed one this long


class LoginManager:
    """Everything browser login needs for one config: provider clients, session store, cookie codecs."""

    def __init__(self, config: Config, http_client: Any, jwks: JWKSRegistry, discovery: DiscoveryCache,
                 *, clock: Any = time.time):
        self.config = config
        self.clock = clock
        session = config.session
        self.public_url = config.server.public_url.rstrip("/")
        self.secure = self.public_url.startswith("https://")
        self.redirect_uri = self.public_url + "/oauth2/callback"
        self.cookie_name = session.cookie_name
        self.login_cookie_prefix = session.cookie_name + "_login_"
        self.store: SessionStore = make_session_store(session)
        assert session.secret is not None
        self.state_codec = CookieCodec(session.secret, session.previous_secrets, purpose="login-state")
        self.clients = {
            name: OIDCClient(provider, http_client, redirect_uri=self.redirect_uri, discovery=discovery, jwks=jwks)
            for name, provider in config.providers.items()
        }
        self._refreshing: dict[str, asyncio.Future] = {}
        self._reachable: dict[str, tuple[float, bool]] = {}  # provider -> (valid until, reachable)

    async def start(self) -> None:
        for client in self.clients.values():
            asyncio.ensure_future(self._warm(client))

    async def _warm(self, client: OIDCClient) -> None:
        try:
            await client.metadata()
        except OIDCError as exc:
            log.warning("provider %s not reachable yet: %s", client.name, exc.description)

    async def readiness(self) -> list[str]:
        problems = []
        for name, client in self.clients.items():
            if not await client.ready():
                problems.append(f"provider {name}: discovery document not fetched yet")
        if not await self.store.ping():
            problems.append("session store unreachable")
        return problems

    async def close(self) -> None:
        await self.store.close()

    # -- starting a login ---------------------------------------------------------

    def providers_for(self, route: Optional[RouteConfig]) -> list[str]:
        if route is not None and route.providers:
            return [p for p in route.providers if p in self.clients]
        return list(self.clients)

    async def begin(self, handler: Any, route: Optional[RouteConfig], rd: Optional[str] = None,
                    provider: Optional[str] = None) -> None:
        """Send the browser to its provider, or show the chooser when the route accepts several."""
        rd = safe_redirect_path(rd if rd is not None else handler.request.uri)
        names = self.providers_for(route)
        if provider is not None:
            if provider not in names:
                return handler.fail(400, f"unknown provider {provider!r}", description="That sign-in option is not available here.")
            names = [provider]
        if not names:
            return handler.fail(500, "no provider for route")
        if len(names) > 1:
            choices = [
                {"url": "/oauth2/start?" + urlencode({"rd": rd, "provider": n}),
                 "label": self.config.providers[n].display_name or n}
                for n in names
            ]
            handler.set_header("Cache-Control", "no-store")
            handler.scope.reason = "login required (chooser)"
            return handler.finish(handler.render_string("chooser.html", title="Sign in", providers=choices,
                                                        request_id=handler.request_id))
        await self._redirect_to_provider(handler, names[0], rd)

    async def _redirect_to_provider(self, handler: Any, name: str, rd: str) -> None:
        client = self.clients[name]
        state = random_token(24)
        nonce = random_token(24)
        verifier, challenge = new_pkce()
        try:
            url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
            await self._check_reachable(client)
        except ProviderUnavailable as exc:
            log.warning("provider %s unavailable: %s", name, exc.description)
            return handler.fail(503, f"provider {name} unavailable",
                                description="The sign-in service is not reachable right now. Try again in a moment.",
                                retry_url="/oauth2/start?" + urlencode({"rd": rd, "provider": name}))
        except OIDCError as exc:
            return handler.fail(502, f"provider {name}: {exc.reason}", description=exc.description)
        self._evict_pending(handler)
        cookie = self.login_cookie_prefix + _state_id(state)
        payload = json.dumps({"s": state, "v": verifier, "n": nonce, "rd": rd, "p": name, "t": self.clock()}).encode()
        value = self.state_codec.encode(cookie, payload, LOGIN_STATE_TTL)
        self._set_cookie(handler, cookie, value, LOGIN_STATE_TTL)
        handler.set_header("Cache-Control", "no-store")
        handler.scope.reason = "login required"
        handler.redirect(url)

    async def _check_reachable(self, client: OIDCClient) -> None:
        """Is the provider up? A cached TCP connect to its token endpoint (which the callback needs).

        Discovery is cached for an hour, so without this a provider that went down
        afterwards would get the browser redirected into a connection error instead
        of a 503 page that offers to try again.
        """
        now = time.monotonic()
        checked = self._reachable.get(client.name)
        if checked is not None and now < checked[0]:
            if not checked[1]:
                raise ProviderUnavailable("the provider is not reachable", "unreachable")
            return
        endpoint = (await client.metadata()).get("token_endpoint", "")
        parts = urlsplit(endpoint)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        ok = True
        if host:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REACHABLE_TIMEOUT)
                writer.close()
            except (OSError, asyncio.TimeoutError):
                ok = False
        self._reachable[client.name] = (now + (REACHABLE_OK_FOR if ok else REACHABLE_DOWN_FOR), ok)
        if not ok:
            raise ProviderUnavailable("the provider is not reachable", "unreachable")

    def _evict_pending(self, handler: Any) -> None:
        """Keep at most MAX_PENDING_LOGINS - 1 older pending logins, dropping the oldest."""
        pending = []
        for name, morsel in handler.request.cookies.items():
            if name.startswith(self.login_cookie_prefix):
                raw = self.state_codec.decode(name, morsel.value)
                created = json.loads(raw).get("t", 0) if raw else 0
                pending.append((created, name))
        pending.sort()
        while len(pending) >= MAX_PENDING_LOGINS:
            _, name = pending.pop(0)
            self._clear_cookie(handler, name)

    # -- the callback -------------------------------------------------------------

    async def finish(self, handler: Any) -> None:
        """/oauth2/callback: error, then code, then state; then exchange and store the session."""
        args = handler.request.query_arguments
        get = lambda key: args[key][0].decode("utf-8", "replace") if key in args and args[key] else None
        state = get("state")
        pending = self._pending(handler, state) if state else None
        retry = "/oauth2/start?" + urlencode({"rd": pending["rd"] if pending else "/"})
        error = get("error")
        if error:
            if pending:
                self._clear_cookie(handler, self.login_cookie_prefix + _state_id(state or ""))
            description = "The sign-in was not completed"
            if error == "access_denied":
                description = "The sign-in was cancelled or refused."
            return handler.fail(403 if error == "access_denied" else 400, f"provider returned error {error[:64]}",
                                description=description + ".", retry_url=retry, retry_label="Sign in again")
        code = get("code")
        if not code:
            return handler.fail(400, "callback without code", description="The sign-in response had no code.",
                                retry_url=retry, retry_label="Sign in again")
        if not state or pending is None:
            return handler.fail(400, "unknown or expired state",
                                description="This sign-in link has expired or was already used.",
                                retry_url=retry, retry_label="Sign in again")
        cookie = self.login_cookie_prefix + _state_id(state)
        self._clear_cookie(handler, cookie)
        if not await self.store.mark_used("state:" + _state_id(state), LOGIN_STATE_TTL):
            return handler.fail(400, "state replayed", description="This sign-in link was already used.",
                                retry_url=retry, retry_label="Sign in again")
        client = self.clients.get(pending["p"])
        if client is None:
            return handler.fail(400, "provider no longer configured", retry_url=retry, retry_label="Sign in again")
        try:
            metadata = await client.metadata()
            client.check_authorization_response_iss(get("iss"), metadata)
            tokens = await client.exchange_code(code, pending["v"])
            assert tokens.id_token is not None
            id_claims = await client.validate_id_token(tokens.id_token, nonce=pending["n"], access_token=tokens.access_token)
            user = await client.user_claims(id_claims, tokens.access_token)
        except ProviderUnavailable as exc:
            log.warning("login via %s failed: provider unavailable: %s", client.name, exc.description)
            return handler.fail(503, f"provider {client.name} unavailable", retry_url=retry, retry_label="Try again",
                                description="The sign-in service is not reachable right now. Try again in a moment.")
        except OIDCError as exc:
            log.warning("login via %s failed: %s", client.name, exc.reason)
            return handler.fail(400 if not isinstance(exc, InvalidGrant) else 400, f"login failed: {exc.reason}",
                                description="The sign-in could not be completed.", retry_url=retry,
                                retry_label="Sign in again")
        now = self.clock()
        session = Session(
            id=random_token(16), provider=client.name, sub=user.sub, email=user.email, groups=tuple(user.groups),
            preferred_username=user.preferred_username, claims=dict(user.claims), id_token=tokens.id_token,
            access_token=tokens.access_token, refresh_token=tokens.refresh_token,
            access_expires_at=tokens.expires_at, access_issued_at=now, created_at=now,
            expires_at=now + self.config.session.lifetime,
        )
        try:
            await self._save(handler, session)
        except SessionStoreError as exc:
            log.error("cannot store the session of %s: %s", session.sub, exc)
            return handler.fail(503, "session store unavailable", retry_url=retry, retry_label="Try again")
        handler.scope.user = session.sub
        log.info("signed in %s via %s", session.sub, client.name)
        handler.set_header("Cache-Control", "no-store")
        handler.redirect(safe_redirect_path(pending["rd"]))

    def _pending(self, handler: Any, state: str) -> Optional[dict]:
        name = self.login_cookie_prefix + _state_id(state)
        morsel = handler.request.cookies.get(name)
        if morsel is None:
            return None
        raw = self.state_codec.decode(name, morsel.value)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or not _consteq(str(data.get("s", "")), state):
            return None
        return data

    # -- sessions on requests -----------------------------------------------------

    async def load_identity(self, handler: Any, route: Optional[RouteConfig]) -> Optional[Identity]:
        """The session's identity for this route, refreshed when due; None to (re)start login."""
        cookies = _cookie_map(handler.request)
        if not any(n == self.cookie_name or n.startswith(self.cookie_name + "_") for n in cookies):
            return None
        session = await self.store.load(cookies)
        if session is None:
            return None
        if route is not None and route.auth == AUTH_LOGIN and session.provider not in self.providers_for(route):
            return None
        if self._refresh_due(session):
            session = await self._refresh(handler, session, cookies)
            if session is None:
                return None
        return Identity(
            sub=session.sub, email=session.email, groups=tuple(session.groups),
            preferred_username=session.preferred_username, issuer=session.claims.get("iss"),
            claims=session.claims, source="session", expires_at=session.expires_at, session_id=session.id,
        )

    def _refresh_due(self, session: Session) -> bool:
        """Due shortly before expiry: REFRESH_BEFORE, or the last fifth of a shorter-lived token."""
        if not (session.refresh_token and session.access_expires_at):
            return False
        issued = session.access_issued_at or session.created_at
        margin = min(REFRESH_BEFORE, max(0.0, (session.access_expires_at - issued) / 5))
        return self.clock() >= session.access_expires_at - margin

    async def _refresh(self, handler: Any, session: Session, cookies: Mapping[str, str]) -> Optional[Session]:
        """Single flight per session: in this process by a shared future, across instances by the store's lock."""
        running = self._refreshing.get(session.id)
        if running is None:
            running = asyncio.ensure_future(self._do_refresh(session, cookies))
            self._refreshing[session.id] = running
            running.add_done_callback(lambda _f, sid=session.id: self._refreshing.pop(sid, None))
        try:
            outcome = await asyncio.shield(running)
            if outcome is None:
                await self._clear(handler, cookies)
                return None
            await self._save(handler, outcome)
        except SessionStoreError as exc:
            log.warning("session store failed during refresh: %s", exc)
            return session
        return outcome

    async def _do_refresh(self, session: Session, cookies: Mapping[str, str]) -> Optional[Session]:
        if not await self.store.lock(session.id, REFRESH_WAIT):
            # Another instance is refreshing this session: wait for it to store the result.
            deadline = time.monotonic() + REFRESH_WAIT
            latest: Optional[Session] = session
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                latest = await self.store.load(cookies)
                if latest is None:
                    return None
                if latest.access_token != session.access_token or not self._refresh_due(latest):
                    return latest
            return latest  # the newest stored copy, never an older one over a newer
        try:
            client = self.clients.get(session.provider)
            if client is None:
                return None
            try:
                tokens = await client.refresh(session.refresh_token or "")
            except InvalidGrant:
                log.info("refresh for %s refused (invalid_grant): session ended", session.sub)
                return None
            except OIDCError as exc:
                log.warning("refresh for %s failed (%s); keeping the session for now", session.sub, exc.reason)
                return session
            id_token = session.id_token
            if tokens.id_token:
                try:
                    claims = await client.validate_id_token(tokens.id_token, nonce=None)
                    if claims.get("sub") != session.sub:
                        log.warning("refreshed id_token names another subject: session of %s ended", session.sub)
                        return None
                    id_token = tokens.id_token
                except OIDCError as exc:
                    log.warning("refreshed id_token for %s rejected (%s): session ended", session.sub, exc.reason)
                    return None
            refreshed = dataclasses.replace(
                session, access_token=tokens.access_token, id_token=id_token,
                refresh_token=tokens.refresh_token or session.refresh_token, access_expires_at=tokens.expires_at,
                access_issued_at=self.clock(),
            )
            try:
                await self.store.save(refreshed, cookies)  # so other instances see it (Redis)
            except SessionStoreError as exc:
                log.warning("could not store the refreshed session: %s", exc)
            return refreshed
        finally:
            await self.store.unlock(session.id)

    async def _save(self, handler: Any, session: Session) -> None:
        update = await self.store.save(session, _cookie_map(handler.request))
        self._apply(handler, update)

    async def _clear(self, handler: Any, cookies: Mapping[str, str]) -> None:
        self._apply(handler, await self.store.clear(cookies))

    def _apply(self, handler: Any, update: CookieUpdate) -> None:
        for name in update.clear:
            self._clear_cookie(handler, name)
        for name, value in update.set:
            self._set_cookie(handler, name, value, update.max_age)

    # -- sign-out -----------------------------------------------------------------

    async def sign_out(self, handler: Any) -> None:
        rd = safe_redirect_path(handler.get_argument("rd", None))
        cookies = _cookie_map(handler.request)
        session = await self.store.load(cookies)
        await self._clear(handler, cookies)
        for name in cookies:
            if name.startswith(self.login_cookie_prefix):
                self._clear_cookie(handler, name)
        handler.set_header("Cache-Control", "no-store")
        if session is not None:
            handler.scope.user = session.sub
            handler.gateway.sessions_ended(session.id)
            client = self.clients.get(session.provider)
            if client is not None:
                try:
                    url = await client.end_session_url(id_token_hint=session.id_token,
                                                       post_logout_redirect_uri=self.public_url + rd)
                except OIDCError:
                    url = None
                if url:
                    return handler.redirect(url)
        handler.redirect(rd)

    # -- cookies ------------------------------------------------------------------

    def _set_cookie(self, handler: Any, name: str, value: str, max_age: float) -> None:
        handler.set_cookie(name, value, path="/", max_age=int(max_age), httponly=True, secure=self.secure,
                           samesite="Lax")

    def _clear_cookie(self, handler: Any, name: str) -> None:
        handler.clear_cookie(name, path="/", httponly=True, secure=self.secure, samesite="Lax")


def _state_id(state: str) -> str:
    """A short, cookie-name-safe id derived from the state (the state itself is not a name)."""
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def _cookie_map(request: httputil.HTTPServerRequest) -> dict[str, str]:
    return {name: morsel.value for name, morsel in request.cookies.items()}


def _consteq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())

