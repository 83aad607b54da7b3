"""Browser login: the OpenID Connect code flow, the session it creates, refresh and sign-out.

Sits beside authentication in the request path, below the handlers: every
method takes the request's cookies (and arguments) as plain values and
returns what to answer (``Redirect``, ``Page``, ``Refusal``, each with the
cookie updates to send), never touching a handler. A browser without a
session on a ``login`` route is sent to its identity provider (``begin``); the
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
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from typing import Any, Mapping, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from .answers import Answer, CookieOp, Cookies, Page, Redirect, Refusal
from .config import AUTH_LOGIN, Config, RouteConfig
from .redirects import safe_redirect_path
from .revocations import Revocation, Revocations, SessionRef, session_ref
from .routing import normalize_host
from .discovery import DiscoveryCache
from .jwks import JWKSRegistry
from .models import Identity
from .providers import (Misconfigured, ProviderClient, ProviderError, ProviderUnavailable, TokenRefused, make_client,
                        new_pkce, random_token)
from .providers.client import redact
from .sessions import CookieCodec, CookieUpdate, Session, SessionStore, SessionStoreError, make_session_store

UNAVAILABLE = "The sign-in service is not reachable right now. Try again in a moment."

log = logging.getLogger("gateway.login")

LOGIN_STATE_TTL = 600.0
HANDOFF_TTL = 60.0  # a sign-in handed from the public_url callback to another host must be taken this soon
SIGNED_OUT_TTL = 600  # how long the round trip through the provider's sign-out may take
MAX_PENDING_LOGINS = 3
REFRESH_BEFORE = 60.0  # refresh this long before the access token expires
REFRESH_WAIT = 10.0
REACHABLE_TIMEOUT = 2.0  # seconds to connect to the provider before a login redirect
REACHABLE_OK_FOR = 10.0  # a successful check is trusted this long
REACHABLE_DOWN_FOR = 2.0  # a failed one this long
RETRY_FIRST = 2.0  # after a failed refresh (provider down), wait this long before the next try ...
RETRY_MAX = 60.0  # ... doubling up to this
MAX_RETRY_ENTRIES = 10_000


def rule_claims(config: Config) -> Tuple[str, ...]:
    """Every claim an allow rule of a route names: sessions keep them, so claim rules work on login routes."""
    names = dict.fromkeys(name for route in config.routes for rule in route.allow for name, _ in rule.claim)
    return tuple(names)


class LoginManager:
    """Everything browser login needs for one config: provider clients, session store, cookie codecs."""

    def __init__(self, config: Config, http_client: Any, jwks: JWKSRegistry, discovery: DiscoveryCache,
                 *, clock: Any = time.time, revocations: Optional[Revocations] = None):
        self.config = config
        self.clock = clock
        session = config.session
        self.public_url = config.server.public_url.rstrip("/")
        self.secure = self.public_url.startswith("https://")
        self.redirect_uri = self.public_url + "/oauth2/callback"
        self.cookie_name = session.cookie_name
        self.login_cookie_prefix = session.cookie_name + "_login_"
        self.signed_out_cookie = session.cookie_name + "_signed_out"  # carries rd across the provider's sign-out
        self.handoff_cookie = session.cookie_name + "_handoff"  # binds a handoff to the browser that started it
        self.public_host = normalize_host(urlsplit(self.public_url).netloc)
        self.cookie_domain = session.cookie_domain
        self._route_hosts = tuple(dict.fromkeys(r.host for r in config.routes if r.host))
        self.store: SessionStore = make_session_store(session)
        # Ended sessions (outlive a reload: the Gateway's), shared with the workers and, through Redis, instances.
        self.revocations = revocations if revocations is not None else Revocations(clock=clock, path="")
        assert session.secret is not None
        self.state_codec = CookieCodec(session.secret, session.previous_secrets, purpose="login-state")
        keep = rule_claims(config)
        self.clients: dict[str, ProviderClient] = {
            name: make_client(provider, http_client, redirect_uri=self.redirect_uri, discovery=discovery,
                              jwks=jwks, keep=keep, clock=clock)
            for name, provider in config.providers.items()
        }
        self._refreshing: dict[str, asyncio.Future] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # session id -> (next refresh try, delay)
        self._reachable: dict[str, tuple[float, bool]] = {}  # provider -> (valid until, reachable)

    async def start(self) -> None:
        self.store.subscribe(self.revocations)  # Redis: other instances' ends reach this one
        for client in self.clients.values():
            asyncio.ensure_future(self._warm(client))

    async def _warm(self, client: ProviderClient) -> None:
        try:
            await client.endpoints()
        except ProviderError as exc:
            log.warning("provider %s not usable yet: %s", client.name, exc.reason)

    async def readiness(self) -> list[str]:
        problems = []
        for name, client in self.clients.items():
            problem = await client.problem()
            if problem is not None:
                problems.append(f"provider {name}: {problem}")
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

    def needs_handoff(self, host: str) -> bool:
        """A login on ``host`` cannot see cookies set at the public_url callback."""
        host = normalize_host(host)
        if not host or host == self.public_host:
            return False
        domain = self.cookie_domain
        return not (domain and (host == domain[1:] or host.endswith(domain)))

    def host_allowed(self, host: str) -> bool:
        """Only hosts a route names (exactly or by its ``*.`` wildcard) may receive a handoff."""
        host = normalize_host(host)
        for pattern in self._route_hosts:
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern[2:]):
                return True
        return False

    async def begin(self, route: Optional[RouteConfig], cookies: Mapping[str, str], rd: str,
                    provider: Optional[str] = None, host: str = "",
                    handoff: Optional[Tuple[str, str]] = None) -> Answer:
        """Send the browser to its provider, or show the chooser when the route accepts several.

        On a host whose cookies the callback cannot set (another host than
        public_url's, not under ``cookie_domain``), the login first moves to
        public_url's ``/oauth2/start`` with the host and a binding to this
        browser; ``handoff`` is that (host, binding digest) arriving there.
        """
        rd = safe_redirect_path(rd)
        if handoff is None and self.needs_handoff(host):
            if not self.host_allowed(host):
                return Refusal(400, "login on a host no route names", description="Sign-in is not available here.")
            binding = random_token(24)
            value = self.state_codec.encode(self.handoff_cookie, binding.encode(), LOGIN_STATE_TTL)
            params = {"rd": rd, "host": normalize_host(host), "b": _digest(binding)}
            if provider is not None:
                params["provider"] = provider
            return Redirect(self.public_url + "/oauth2/start?" + urlencode(params), reason="login required (handoff)",
                            cookies=(CookieOp(self.handoff_cookie, value, int(LOGIN_STATE_TTL)),))
        if handoff is not None and (not self.host_allowed(handoff[0]) or not self.needs_handoff(handoff[0])
                                    or len(handoff[1]) != 43):
            return Refusal(400, "bad handoff host", description="Sign-in is not available for that site.")
        origin = normalize_host(host)
        if handoff is None and origin and origin != self.public_host and self.host_allowed(origin):
            handoff = (origin, "")  # under cookie_domain: no handoff, but rd is a path on this host
        names = self.providers_for(route)
        if provider is not None:
            if provider not in names:
                return Refusal(400, f"unknown provider {provider!r}",
                               description="That sign-in option is not available here.")
            names = [provider]
        if not names:
            return Refusal(500, "no provider for route")
        if len(names) > 1:
            extra = {"host": handoff[0], "b": handoff[1]} if handoff else {}
            choices = [
                {"url": "/oauth2/start?" + urlencode({"rd": rd, "provider": n, **extra}),
                 "label": self.config.providers[n].display_name or n}
                for n in names
            ]
            return Page("chooser.html", {"title": "Sign in", "providers": choices}, reason="login required (chooser)")
        return await self._redirect_to_provider(names[0], rd, cookies, handoff)

    async def _redirect_to_provider(self, name: str, rd: str, cookies: Mapping[str, str],
                                    handoff: Optional[Tuple[str, str]] = None) -> Answer:
        client = self.clients[name]
        state = random_token(24)
        nonce = random_token(24)
        verifier, challenge = new_pkce()
        try:
            url = await client.authorization_url(state=state, nonce=nonce, code_challenge=challenge)
            await self._check_reachable(client)
        except ProviderUnavailable as exc:
            log.warning("provider %s unavailable: %s", name, exc.reason)
            return Refusal(503, f"provider {name} unavailable", description=UNAVAILABLE,
                           retry_url="/oauth2/start?" + urlencode({"rd": rd, "provider": name}))
        except ProviderError as exc:
            return Refusal(502, f"provider {name}: {exc.reason}", description=exc.description)
        cookie = self.login_cookie_prefix + _state_id(state)
        pending = {"s": state, "v": verifier, "n": nonce, "rd": rd, "p": name, "t": self.clock()}
        if handoff is not None:
            pending["h"], pending["b"] = handoff
        value = self.state_codec.encode(cookie, json.dumps(pending).encode(), LOGIN_STATE_TTL)
        ops = self._evict_pending(cookies) + (CookieOp(cookie, value, int(LOGIN_STATE_TTL)),)
        return Redirect(url, reason="login required", cookies=ops)

    async def _check_reachable(self, client: ProviderClient) -> None:
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
        endpoint = (await client.endpoints()).get("token_endpoint", "")
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

    def _evict_pending(self, cookies: Mapping[str, str]) -> Cookies:
        """Keep at most MAX_PENDING_LOGINS - 1 older pending logins, dropping the oldest."""
        pending = []
        for name, value in cookies.items():
            if name.startswith(self.login_cookie_prefix):
                raw = self.state_codec.decode(name, value)
                try:
                    created = json.loads(raw).get("t", 0) if raw else 0
                except (ValueError, AttributeError):
                    created = 0
                pending.append((created if isinstance(created, (int, float)) else 0, name))
        pending.sort()
        dropped = []
        while len(pending) >= MAX_PENDING_LOGINS:
            _, name = pending.pop(0)
            dropped.append(CookieOp(name))
        return tuple(dropped)

    # -- the callback -------------------------------------------------------------

    async def finish(self, args: Mapping[str, str], cookies: Mapping[str, str]) -> Tuple[Answer, Optional[str]]:
        """/oauth2/callback: error, then code, then state; then exchange and store the session.

        Returns the answer and, when someone signed in, their subject (for the log).
        """
        state = args.get("state")
        pending = self._pending(cookies, state) if state else None
        retry = "/oauth2/start?" + urlencode({"rd": pending["rd"] if pending else "/"})
        again = {"retry_url": retry, "retry_label": "Sign in again"}
        error = args.get("error")
        if error:
            used: Cookies = (CookieOp(self.login_cookie_prefix + _state_id(state or "")),) if pending else ()
            detail = redact(args.get("error_description"), ())
            log.warning("login via %s: the provider answered error=%s%s",
                        pending["p"] if pending else "an unknown provider (no matching state)",
                        redact(error, ())[:64], f" ({detail})" if detail else "")
            description = "The sign-in was not completed"
            if error == "access_denied":
                description = "The sign-in was cancelled or refused."
            return Refusal(403 if error == "access_denied" else 400, f"provider returned error {error[:64]}",
                           description=description + ".", cookies=used, **again), None
        code = args.get("code")
        if not code:
            return Refusal(400, "callback without code", description="The sign-in response had no code.",
                           **again), None
        if not state or pending is None:
            return Refusal(400, "unknown or expired state",
                           description="This sign-in link has expired or was already used.", **again), None
        used = (CookieOp(self.login_cookie_prefix + _state_id(state)),)
        if not await self.store.mark_used("state:" + _state_id(state), LOGIN_STATE_TTL):
            return Refusal(400, "state replayed", description="This sign-in link was already used.",
                           cookies=used, **again), None
        client = self.clients.get(pending["p"])
        if client is None:
            return Refusal(400, "provider no longer configured", cookies=used, **again), None
        try:
            tokens, user = await client.sign_in(code=code, verifier=pending["v"], nonce=pending["n"],
                                                iss=args.get("iss"))
        except ProviderUnavailable as exc:
            log.warning("login via %s failed: provider unavailable (%s)", client.name, exc.reason)
            return Refusal(503, f"provider {client.name} unavailable", description=UNAVAILABLE, cookies=used,
                           retry_url=retry, retry_label="Try again"), None
        except Misconfigured as exc:
            log.warning("login via %s failed: %s", client.name, exc.reason)
            return Refusal(502, f"login failed: {exc.reason}", description=exc.description, cookies=used), None
        except ProviderError as exc:
            log.warning("login via %s failed: %s", client.name, exc.reason)
            return Refusal(400, f"login failed: {exc.reason}", description="The sign-in could not be completed. "
                           + (exc.description if exc.reason.startswith("no_") else ""),
                           cookies=used, **again), None
        now = self.clock()
        session = Session(
            id=random_token(16), provider=client.name, sub=user.user, email=user.email, groups=tuple(user.groups),
            preferred_username=user.preferred_username, claims=dict(user.claims), id_token=tokens.id_token,
            access_token=tokens.access_token, refresh_token=tokens.refresh_token,
            access_expires_at=tokens.expires_at, access_issued_at=now, created_at=now,
            expires_at=now + self.config.session.lifetime,
        )
        if pending.get("h") and pending.get("b"):
            return await self._hand_over(session, pending, used), session.sub
        try:
            saved = await self._save(session, cookies)
        except ValueError as exc:  # too large even for several cookies (thousands of groups)
            log.error("the session of %s is too large to store: %s; use session.store: redis://", session.sub, exc)
            return Refusal(502, "session too large", cookies=used,
                           description="Your account has more groups or claims than a sign-in can hold here; "
                                       "the administrator has been told why (in the log)."), None
        except SessionStoreError as exc:
            log.error("cannot store the session of %s: %s", session.sub, exc)
            return Refusal(503, "session store unavailable", cookies=used, retry_url=retry,
                           retry_label="Try again"), None
        log.info("signed in %s via %s", session.sub, client.name)
        return Redirect(self._on_origin(pending.get("h"), pending["rd"]), cookies=used + saved), session.sub

    def _on_origin(self, host: Optional[str], rd: str) -> str:
        """``rd`` on the host where the login started (public_url's scheme and port)."""
        rd = safe_redirect_path(rd)
        if not host or not self.host_allowed(host):
            return rd
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{host}{':%d' % parts.port if parts.port else ''}{rd}"

    async def _hand_over(self, session: Session, pending: dict, used: Cookies) -> Answer:
        """Keep the new session for its host under a single-use code; the browser carries only the code."""
        code = random_token(32)
        note = json.dumps({"session": session.to_dict(), "h": pending["h"], "b": pending["b"], "rd": pending["rd"]})
        try:
            await self.store.put_handoff(code, self.state_codec.encode("handoff", note.encode(), HANDOFF_TTL).encode(),
                                         HANDOFF_TTL)
        except SessionStoreError as exc:
            log.error("cannot store the sign-in handoff of %s: %s", session.sub, exc)
            return Refusal(503, "session store unavailable", cookies=used)
        log.info("signed in %s via %s; handing over to %s", session.sub, session.provider, pending["h"])
        return Redirect(self._on_origin(pending["h"], "/oauth2/handoff?" + urlencode({"code": code})),
                        reason="signed in (handoff)", cookies=used)

    async def take_handoff(self, args: Mapping[str, str], cookies: Mapping[str, str],
                           host: str) -> Tuple[Answer, Optional[str]]:
        """/oauth2/handoff on the host where the login started: the session becomes this host's cookie."""
        again = {"retry_url": "/oauth2/start?rd=%2F", "retry_label": "Sign in again"}
        done: Cookies = (CookieOp(self.handoff_cookie),) if self.handoff_cookie in cookies else ()
        code = args.get("code") or ""
        raw = await self.store.take_handoff(code) if 20 <= len(code) <= 100 else None
        note = self.state_codec.decode("handoff", raw.decode("ascii", "replace")) if raw else None
        if note is None:
            return Refusal(400, "handoff unknown, used or expired",
                           description="This sign-in link has expired or was already used.", cookies=done,
                           **again), None
        try:
            data = json.loads(note)
            session = Session.from_dict(data["session"])
        except (ValueError, KeyError, TypeError):
            return Refusal(400, "handoff unreadable", cookies=done, **again), None
        value = cookies.get(self.handoff_cookie)
        binding = self.state_codec.decode(self.handoff_cookie, value) if value else None
        if data.get("h") != normalize_host(host) or binding is None or not _consteq(
                _digest(binding.decode("ascii", "replace")), str(data.get("b", ""))):
            log.warning("sign-in handoff for %s refused: another browser or host", session.sub)
            return Refusal(400, "handoff from another browser or host",
                           description="This sign-in link belongs to another browser.", cookies=done, **again), None
        try:
            saved = await self._save(session, cookies)
        except (SessionStoreError, ValueError) as exc:
            log.error("cannot store the session of %s: %s", session.sub, exc)
            return Refusal(503, "session store unavailable", cookies=done), None
        return Redirect(safe_redirect_path(data.get("rd", "/")), reason="signed in", cookies=done + saved), session.sub

    def _pending(self, cookies: Mapping[str, str], state: str) -> Optional[dict]:
        name = self.login_cookie_prefix + _state_id(state)
        value = cookies.get(name)
        if value is None:
            return None
        raw = self.state_codec.decode(name, value)
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

    async def load_identity(self, cookies: Mapping[str, str],
                            route: Optional[RouteConfig]) -> Tuple[Optional[Identity], Cookies]:
        """The session's identity for this route, refreshed when due (None to (re)start login),
        and the cookie updates a refresh made."""
        if not any(n == self.cookie_name or n.startswith(self.cookie_name + "_") for n in cookies):
            return None, ()
        session = await self.store.load(cookies)
        if session is None:
            return None, ()
        if self.revocations.ended(_ref(session)):  # signed out, logged out or revoked: a replayed cookie
            return None, await self._clear(cookies)
        if route is not None and route.auth == AUTH_LOGIN and session.provider not in self.providers_for(route):
            return None, ()
        ops: Cookies = ()
        if self._refresh_due(session):
            refreshed, ops = await self._refresh(session, cookies)
            if refreshed is None:
                return None, ops
            session = refreshed
        return Identity(
            sub=session.sub, email=session.email, groups=tuple(session.groups),
            preferred_username=session.preferred_username, issuer=session.claims.get("iss"),
            claims=session.claims, source="session", expires_at=session.expires_at, session_id=session.id,
            provider=session.provider, provider_sid=_text(session.claims.get("sid")),
            provider_sub=_text(session.claims.get("sub")) or session.sub, started_at=session.created_at,
        ), ops

    def _refresh_due(self, session: Session) -> bool:
        """Due shortly before expiry: REFRESH_BEFORE, or the last fifth of a shorter-lived token."""
        if not (session.refresh_token and session.access_expires_at):
            return False
        issued = session.access_issued_at or session.created_at
        margin = min(REFRESH_BEFORE, max(0.0, (session.access_expires_at - issued) / 5))
        return self.clock() >= session.access_expires_at - margin

    async def session_alive(self, identity: Identity) -> bool:
        """Has the session of this identity (one of the gateway's own tokens) not ended?"""
        if not identity.session_id or self.revocations.ended(session_ref(identity)):
            return False
        return await self.store.alive(identity.session_id)

    def _end(self, session: Session) -> None:
        """Remember an ended session (here, in the workers, in other instances): its cookie and tokens are refused."""
        self._retry.pop(session.id, None)
        self.revocations.add(Revocation("id", session.id, until=session.expires_at))

    def _past_grace(self, session: Session) -> bool:
        """Access never outlives the access token by more than ``session.refresh_grace``."""
        assert session.access_expires_at is not None
        return self.clock() > session.access_expires_at + self.config.session.refresh_grace

    async def _refresh(self, session: Session, cookies: Mapping[str, str]) -> Tuple[Optional[Session], Cookies]:
        """Single flight per session: in this process by a shared future, across instances by the store's lock.

        A refused refresh ends the session; an unreachable provider is retried
        with backoff (not on every request) until the grace runs out.
        """
        retry = self._retry.get(session.id)
        if retry is not None and self.clock() < retry[0]:
            if self._past_grace(session):
                log.info("session of %s ended: the provider could not refresh it within the grace", session.sub)
                return None, await self._clear(cookies)
            return session, ()
        running = self._refreshing.get(session.id)
        if running is None:
            running = asyncio.ensure_future(self._do_refresh(session, cookies))
            self._refreshing[session.id] = running
            running.add_done_callback(lambda _f, sid=session.id: self._refreshing.pop(sid, None))
        try:
            outcome, renewed = await asyncio.shield(running)
            if renewed is None:
                self._end(session)
                return None, await self._clear(cookies)
            if outcome == "kept":
                return renewed, ()
            return renewed, await self._save(renewed, cookies)
        except SessionStoreError as exc:
            log.warning("session store failed during refresh: %s", exc)
            return session, ()

    def _back_off(self, session: Session) -> None:
        previous = self._retry.get(session.id)
        delay = RETRY_FIRST if previous is None else min(previous[1] * 2, RETRY_MAX)
        if len(self._retry) >= MAX_RETRY_ENTRIES:
            self._retry.pop(next(iter(self._retry)))
        self._retry[session.id] = (self.clock() + delay, delay)

    async def _do_refresh(self, session: Session, cookies: Mapping[str, str]) -> Tuple[str, Optional[Session]]:
        """("renewed", session), ("kept", session) while the provider is down, or ("ended", None)."""
        if not await self.store.lock(session.id, REFRESH_WAIT):
            # Another instance is refreshing this session: wait for it to store the result.
            deadline = time.monotonic() + REFRESH_WAIT
            latest: Optional[Session] = session
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                latest = await self.store.load(cookies)
                if latest is None:
                    return "ended", None
                if latest.access_token != session.access_token or not self._refresh_due(latest):
                    return "renewed", latest
            return "kept", latest  # the newest stored copy, never an older one over a newer
        try:
            client = self.clients.get(session.provider)
            if client is None:
                return "ended", None
            try:
                tokens = await client.renew(session.refresh_token or "", sub=str(session.claims.get("sub", session.sub)))
            except TokenRefused as exc:
                log.info("refresh for %s refused (%s): session ended", session.sub, exc.reason)
                return "ended", None
            except ProviderUnavailable as exc:
                self._back_off(session)
                if self._past_grace(session):
                    log.info("refresh for %s failed (%s) past the grace: session ended", session.sub, exc.reason)
                    return "ended", None
                log.warning("refresh for %s failed (%s); retrying in %.0f s", session.sub, exc.reason,
                            self._retry[session.id][1])
                return "kept", session
            except ProviderError as exc:
                log.warning("refreshed tokens for %s rejected (%s): session ended", session.sub, exc.reason)
                return "ended", None
            self._retry.pop(session.id, None)
            refreshed = dataclasses.replace(
                session, access_token=tokens.access_token, id_token=tokens.id_token or session.id_token,
                refresh_token=tokens.refresh_token or session.refresh_token, access_expires_at=tokens.expires_at,
                access_issued_at=self.clock(),
            )
            try:
                await self.store.save(refreshed, cookies)  # so other instances see it (Redis)
            except SessionStoreError as exc:
                log.warning("could not store the refreshed session: %s", exc)
            return "renewed", refreshed
        finally:
            await self.store.unlock(session.id)

    async def _save(self, session: Session, cookies: Mapping[str, str]) -> Cookies:
        return _ops(await self.store.save(session, cookies))

    async def _clear(self, cookies: Mapping[str, str]) -> Cookies:
        return _ops(await self.store.clear(cookies))

    # -- sign-out -----------------------------------------------------------------

    async def sign_out(self, rd: Optional[str], cookies: Mapping[str, str]) -> Tuple[Answer, Optional[Session]]:
        """End the session, and at the provider when it offers end_session_endpoint.

        The provider is always given one registered ``post_logout_redirect_uri``
        (``<public_url>/`` unless the provider sets its own), never ``rd``: ``rd``
        travels in a short-lived cookie of ours, and ``landing`` sends the browser
        on to it when it comes back. Without ``rd`` the browser ends on a "signed
        out" page. Returns the answer and the session that ended, whose
        WebSockets the caller closes.
        """
        target = safe_redirect_path(rd) if rd else ""
        session = await self.store.load(cookies)
        if session is not None:
            self._end(session)
            self._revoke_at_provider(session)
        ops = await self._clear(cookies)
        ops += tuple(CookieOp(name) for name in cookies
                     if name.startswith(self.login_cookie_prefix) or name == self.signed_out_cookie)
        if session is not None:
            client = self.clients.get(session.provider)
            if client is not None:
                landing = client.config.post_logout_redirect_uri or self.public_url + "/"
                state = random_token(16)
                try:
                    url = await client.end_session_url(id_token_hint=session.id_token,
                                                       post_logout_redirect_uri=landing, state=state)
                except ProviderError:
                    url = None
                if url:
                    at = urlsplit(landing).path or "/"
                    note = json.dumps({"rd": target, "at": at, "s": state}).encode()
                    value = self.state_codec.encode(self.signed_out_cookie, note, SIGNED_OUT_TTL)
                    return Redirect(url, reason="signed out", cookies=ops + (
                        CookieOp(self.signed_out_cookie, value, SIGNED_OUT_TTL),)), session
        if target:
            return Redirect(target, reason="signed out", cookies=ops), session
        return _signed_out_page(ops), session

    def _revoke_at_provider(self, session: Session) -> None:
        """RFC 7009, in the background: a slow or failing provider never holds up the sign-out."""
        client = self.clients.get(session.provider)
        if client is None or not (session.refresh_token or session.access_token):
            return

        async def revoke() -> None:
            try:
                await client.revoke(session.refresh_token, session.access_token)
            except Exception as exc:  # logged, never raised: the sign-out is done already
                log.warning("revoking the tokens of %s at %s failed: %s", session.sub, client.name, exc)

        asyncio.ensure_future(revoke())

    def landing(self, cookies: Mapping[str, str], path: str, query: str = "") -> Optional[Answer]:
        """Back from the provider's sign-out at its landing path: on to ``rd``, or the "signed out" page.

        A ``state`` the provider echoes must be the one sent (some providers echo none).
        """
        value = cookies.get(self.signed_out_cookie)
        if value is None:
            return None
        raw = self.state_codec.decode(self.signed_out_cookie, value)
        try:
            note = json.loads(raw) if raw else None
        except ValueError:
            note = None
        if not isinstance(note, dict) or note.get("at") != path:
            return None
        echoed = parse_qs(query).get("state") if query else None
        if echoed and not _consteq(echoed[0], str(note.get("s", ""))):
            return None
        done = (CookieOp(self.signed_out_cookie),)
        rd = note.get("rd")
        if isinstance(rd, str) and rd:
            return Redirect(safe_redirect_path(rd), reason="signed out", cookies=done)
        return _signed_out_page(done)


def _signed_out_page(cookies: Cookies) -> Page:
    return Page("signed_out.html", {"title": "Signed out"}, reason="signed out", cookies=cookies)


def _ops(update: CookieUpdate) -> Cookies:
    return tuple(CookieOp(name) for name in update.clear) + tuple(
        CookieOp(name, value, int(update.max_age)) for name, value in update.set)


def _state_id(state: str) -> str:
    """A short, cookie-name-safe id derived from the state (the state itself is not a name)."""
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def _digest(binding: str) -> str:
    """What travels in URLs instead of a browser's binding: its SHA-256, base64url (43 characters)."""
    return base64.urlsafe_b64encode(hashlib.sha256(binding.encode()).digest()).rstrip(b"=").decode()


def _ref(session: Session) -> SessionRef:
    return SessionRef(session.id, session.provider, _text(session.claims.get("sid")),
                      _text(session.claims.get("sub")) or session.sub, session.created_at, session.sub)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _consteq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())

