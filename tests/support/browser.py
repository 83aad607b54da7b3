"""Headless Debian Chromium driven by Playwright, confined to loopback.

    from tests.support.browser import chromium_browser

    with chromium_browser() as context:          # a playwright BrowserContext
        page = context.new_page()
        page.goto("http://127.0.0.1:8080/")
        ...
        context.blocked_requests                  # URLs aborted for not being loopback

``async_chromium_browser()`` is the same for Playwright's async API (use it
from tests that already run an asyncio/Tornado loop: the sync API refuses to
run inside a running loop).

Every request whose host is not 127.0.0.1 / localhost is aborted. Each call
gets a fresh, throw-away user-data dir (no cookies carried over).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Iterator
from urllib.parse import urlsplit

CHROMIUM_PATH = "/usr/bin/chromium"
APT_LOG = Path("/tmp/apt.log")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Redirect hops bypass request routing: make every other host unresolvable too.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--no-proxy-server",
]

ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost"})

DEFAULT_TIMEOUT_MS = 15_000


def wait_for_chromium(timeout: float = 600.0, path: str = CHROMIUM_PATH) -> str | None:
    """Return ``path`` once it exists and is executable.

    Chromium may still be being installed by apt in another process; while it
    is missing, wait until /tmp/apt.log reports "done" (or ``timeout``
    elapses). Returns None if it never appears. Never installs anything.
    """
    deadline = time.monotonic() + timeout
    while True:
        if os.access(path, os.X_OK):
            return path
        apt_done = False
        try:
            apt_done = any(
                line.strip().startswith("done") for line in APT_LOG.read_text(errors="replace").splitlines()
            )
        except OSError:
            pass
        if (apt_done or not APT_LOG.exists()) and not os.access(path, os.X_OK):
            # apt finished (or is not running at all): one last short grace period
            time.sleep(1.0)
            return path if os.access(path, os.X_OK) else None
        if time.monotonic() > deadline:
            return None
        time.sleep(2.0)


def host_allowed(url: str, allowed_hosts: Iterable[str] = ALLOWED_HOSTS) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in set(allowed_hosts)


def _launch_kwargs(user_data_dir: str, timeout_ms: int, headless: bool, extra: dict[str, Any]) -> dict[str, Any]:
    executable = wait_for_chromium()
    if executable is None:
        raise RuntimeError(f"{CHROMIUM_PATH} is not installed")
    kwargs: dict[str, Any] = {
        "user_data_dir": user_data_dir,
        "executable_path": executable,
        "headless": headless,
        "args": list(CHROMIUM_ARGS),
        "timeout": timeout_ms * 2,  # browser start-up
        "service_workers": "block",
        "viewport": {"width": 1280, "height": 900},
    }
    kwargs.update(extra)
    return kwargs


@contextlib.contextmanager
def chromium_browser(
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    allowed_hosts: Iterable[str] = ALLOWED_HOSTS,
    headless: bool = True,
    **context_options: Any,
) -> Iterator[Any]:
    """Yield a Playwright (sync API) BrowserContext of a fresh headless Chromium.

    ``timeout_ms`` is the default timeout of every action and navigation.
    Extra keyword arguments go to ``launch_persistent_context``.
    The context has ``blocked_requests``: the URLs aborted for not being local.
    """
    from playwright.sync_api import sync_playwright

    allowed = frozenset(allowed_hosts)
    user_data_dir = tempfile.mkdtemp(prefix="gw-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                **_launch_kwargs(user_data_dir, timeout_ms, headless, context_options)
            )
            try:
                blocked: list[str] = []
                context.blocked_requests = blocked  # type: ignore[attr-defined]

                def _guard(route: Any) -> None:
                    url = route.request.url
                    if host_allowed(url, allowed):
                        route.fallback()
                    else:
                        blocked.append(url)
                        route.abort("blockedbyclient")

                context.route("**/*", _guard)
                context.set_default_timeout(timeout_ms)
                context.set_default_navigation_timeout(timeout_ms)
                yield context
            finally:
                with contextlib.suppress(Exception):
                    context.close()
    finally:
        shutil.rmtree(user_data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def async_chromium_browser(
    *,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    allowed_hosts: Iterable[str] = ALLOWED_HOSTS,
    headless: bool = True,
    **context_options: Any,
) -> AsyncIterator[Any]:
    """Same as :func:`chromium_browser` with Playwright's async API."""
    import asyncio

    from playwright.async_api import async_playwright

    allowed = frozenset(allowed_hosts)
    user_data_dir = tempfile.mkdtemp(prefix="gw-chromium-")
    try:
        async with async_playwright() as pw:
            kwargs = await asyncio.get_running_loop().run_in_executor(
                None, _launch_kwargs, user_data_dir, timeout_ms, headless, context_options
            )
            context = await pw.chromium.launch_persistent_context(**kwargs)
            try:
                blocked: list[str] = []
                context.blocked_requests = blocked  # type: ignore[attr-defined]

                async def _guard(route: Any) -> None:
                    url = route.request.url
                    if host_allowed(url, allowed):
                        await route.fallback()
                    else:
                        blocked.append(url)
                        await route.abort("blockedbyclient")

                await context.route("**/*", _guard)
                context.set_default_timeout(timeout_ms)
                context.set_default_navigation_timeout(timeout_ms)
                yield context
            finally:
                with contextlib.suppress(Exception):
                    await context.close()
    finally:
        shutil.rmtree(user_data_dir, ignore_errors=True)
