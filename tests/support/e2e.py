"""Helpers for the end-to-end tests that run the real ``gateway serve`` process.

* ``request()``: one HTTP exchange with ``http.client`` (no redirects followed,
  nothing decompressed, headers sent exactly as given, duplicates allowed);
* ``IdPThread``: a ``fake_idp.FakeIdP`` on an event loop of its own in a daemon
  thread, so synchronous tests (and a gateway in another process) can use it;
* ``wait_ready()``: poll the admin ``/ready`` endpoint;
* ``RSSSampler``: peak resident memory of a process, sampled from /proc.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

Headers = Union[Sequence[Tuple[str, str]], dict]


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    header_list: list = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name)

    def all(self, name: str) -> list:
        return self.headers.get_all(name) or []


def request(
    base_url: str,
    method: str = "GET",
    path: str = "/",
    headers: Optional[Headers] = None,
    body: Any = None,
    *,
    timeout: float = 10.0,
    chunked: bool = False,
    read: bool = True,
) -> Response:
    """Send one request to ``base_url`` + ``path`` (the path is sent as-is, not normalised).

    ``headers`` may hold the same name twice. A ``Host`` header in it replaces
    the default one. ``body`` may be bytes or an iterable of bytes (with
    ``chunked=True`` it is sent with Transfer-Encoding: chunked).
    """
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {name.lower() for name, _ in items}
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if "host" not in names:
            conn.putheader("Host", parts.netloc)
        for name, value in items:
            conn.putheader(name, value)
        if isinstance(body, (bytes, bytearray)) and "content-length" not in names and not chunked:
            conn.putheader("Content-Length", str(len(body)))
        elif body is None and method in ("POST", "PUT", "PATCH") and "content-length" not in names and not chunked:
            conn.putheader("Content-Length", "0")
        if chunked and "transfer-encoding" not in names:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders(body, encode_chunked=chunked)
        resp = conn.getresponse()
        data = resp.read() if read else b""
        return Response(resp.status, resp.reason, resp.msg, data, list(resp.getheaders()))
    finally:
        conn.close()


def wait_ready(admin_url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = request(admin_url, "GET", "/ready", timeout=5)
            if last.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"gateway not ready: {last and last.status} {last and last.body!r}")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class IdPThread:
    """A ``FakeIdP`` running on its own event loop in a daemon thread.

    ``.idp`` is the FakeIdP: set ``.idp.keys`` etc. from the test thread (the
    handlers read them at request time); ``.idp.requests`` counts requests.
    """

    def __init__(self, keys: Optional[Iterable[Any]] = None, **kwargs: Any):
        from tests.support.fake_idp import FakeIdP

        self.idp: Any = None
        ready = threading.Event()
        errors: list = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def make() -> Any:
                return FakeIdP(list(keys or []), **kwargs)

            try:
                self.idp = loop.run_until_complete(make())
            except Exception as exc:  # pragma: no cover
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.idp.close())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-idp")
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]

    @property
    def issuer(self) -> str:
        return self.idp.issuer

    @property
    def jwks_url(self) -> str:
        return self.idp.jwks_url

    def total_requests(self) -> int:
        return sum(self.idp.requests.values())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RSSSampler:
    """Samples VmRSS of ``pid`` every ``interval`` seconds in a thread; ``.peak_kb``."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rss-{pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = rss_kb(self.pid)
            except OSError:
                return
            self.peak_kb = max(self.peak_kb, value)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
