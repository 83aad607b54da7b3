"""Ended sessions, so that every door closes: cookies, the gateway's own tokens and WebSockets.

A session ends by sign-out, a refused refresh, a back-channel logout or an
admin revocation. Its cookie may still be replayed (the cookie store cannot
take it back) and its tokens are still signed, so the end is remembered
here until the session would have expired anyway:

* by the session's id (``id``), by the provider's session (``psid``: the
  ``sid`` of its ID token), by the provider's subject (``sub``: every
  session of that person at that provider that started before the end), or
  by the gateway's user (``user``: an admin's revocation, any provider);
* in this process, in the other workers of the instance (an append-only
  file the supervisor creates before forking: every worker appends and
  tails it; small, local, and needs no extra process), and, with
  ``store: redis``, in every instance (the store publishes it).

Listeners (the open WebSockets) are told of every entry, wherever it began.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger("gateway.revocations")

POLL_INTERVAL = 0.25  # how often a worker reads what the others appended ("within one second")
MAX_ENTRIES = 100_000
ENV_FILE = "GATEWAY_REVOCATIONS_FILE"


@dataclass(frozen=True)
class Revocation:
    kind: str  # "id" | "psid" | "sub" | "user"
    value: str
    provider: str = ""  # for psid and sub: the provider's name in routes.yaml
    before: float = 0.0  # sub: sessions that started at or before this time
    until: float = 0.0  # forgotten after this (no session it names can live longer)

    def key(self) -> Tuple[str, str, str]:
        return self.kind, self.provider, self.value

    def to_line(self) -> bytes:
        return (json.dumps(asdict(self), separators=(",", ":")) + "\n").encode()

    @classmethod
    def parse(cls, data: Any) -> Optional["Revocation"]:
        try:
            entry = cls(kind=str(data["kind"]), value=str(data["value"]), provider=str(data.get("provider", "")),
                        before=float(data.get("before", 0.0)), until=float(data.get("until", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None
        return entry if entry.kind in ("id", "psid", "sub", "user") and entry.value else None


@dataclass(frozen=True)
class SessionRef:
    """What a revocation can name a session by."""

    id: Optional[str]
    provider: Optional[str] = None
    psid: Optional[str] = None  # the provider's session id (ID token sid)
    psub: Optional[str] = None  # the provider's subject
    started: float = 0.0
    user: Optional[str] = None  # the gateway's user (X-Forwarded-User): what admins revoke by


def session_ref(identity: Any) -> SessionRef:
    """The session an identity (a session's, or one of the gateway's own tokens) belongs to."""
    return SessionRef(identity.session_id, identity.provider, identity.provider_sid, identity.provider_sub,
                      identity.started_at, identity.sub)


class Revocations:
    def __init__(self, *, clock: Callable[[], float] = time.time, path: Optional[str] = None):
        self.clock = clock
        self.path = path if path is not None else os.environ.get(ENV_FILE) or None
        self._entries: Dict[Tuple[str, str, str], Revocation] = {}
        self._listeners: List[Callable[[Revocation], None]] = []
        self._offset = 0  # how much of the shared file this process has read
        self._task: Optional["asyncio.Task[None]"] = None
        self.publish: Optional[Callable[[Revocation], Any]] = None  # set by a store that reaches other instances
        if self.path:
            self._read_new(notify=False)  # a restarted worker learns what ended before it

    def listen(self, callback: Callable[[Revocation], None]) -> None:
        self._listeners.append(callback)

    def add(self, entry: Revocation, *, share: bool = True) -> None:
        """Remember ``entry`` here; with ``share`` also in the other workers and instances."""
        self._apply(entry)
        if not share:
            return
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, entry.to_line())  # one small write with O_APPEND: never interleaved
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("cannot share a revocation with the other workers (%s): %s", self.path, exc)
        if self.publish is not None:
            outcome = self.publish(entry)
            if asyncio.iscoroutine(outcome):
                asyncio.ensure_future(outcome)

    def received(self, data: Any) -> None:
        """An entry from another instance (the store's subscription)."""
        entry = Revocation.parse(data)
        if entry is not None:
            self._apply(entry)

    def ended(self, ref: SessionRef) -> bool:
        if not self._entries:
            return False
        now = self.clock()
        for entry in (self._entries.get(("id", "", ref.id or "")),
                      self._entries.get(("psid", ref.provider or "", ref.psid or "")),
                      self._entries.get(("sub", ref.provider or "", ref.psub or "")),
                      self._entries.get(("user", "", ref.user or ""))):
            if entry is None or entry.until < now:
                continue
            if entry.kind in ("id", "psid") or ref.started <= entry.before:
                return True
        return False

    def matches(self, entry: Revocation, ref: SessionRef) -> bool:
        if entry.kind == "id":
            return ref.id == entry.value
        if entry.kind == "user":
            return ref.user == entry.value and ref.started <= entry.before
        if ref.provider != entry.provider:
            return False
        if entry.kind == "psid":
            return ref.psid == entry.value
        return ref.psub == entry.value and ref.started <= entry.before

    def _apply(self, entry: Revocation) -> None:
        known = self._entries.get(entry.key())
        if known is not None and known.before >= entry.before and known.until >= entry.until:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._prune()
        self._entries[entry.key()] = entry
        for callback in list(self._listeners):
            try:
                callback(entry)
            except Exception:  # a listener's bug must not stop the others
                log.exception("revocation listener failed")

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._entries.items() if e.until < now]:
            del self._entries[key]
        while len(self._entries) >= MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)))

    # -- the workers' shared file ------------------------------------------------------

    def start(self) -> None:
        if self.path and self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self._read_new(notify=True)

    def _read_new(self, *, notify: bool) -> None:
        assert self.path is not None
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        if size <= self._offset:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(size - self._offset)
        except OSError:
            return
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += complete
        for line in chunk[:complete].splitlines():
            try:
                entry = Revocation.parse(json.loads(line))
            except ValueError:
                entry = None
            if entry is None:
                continue
            if notify:
                self._apply(entry)
            else:
                self._entries[entry.key()] = entry
