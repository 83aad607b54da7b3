"""The browser fixtures of the login end-to-end modules: one Chromium per module, a clean jar per test.

    from tests.support.browser_fixtures import LOOPBACK_ONLY_ARGS, browser_context, ctx, page  # noqa: F401

``ctx`` is the module's browser with an empty cookie jar (signed out of the gateway and of the
provider) and a fresh request guard; ``page`` a new tab in it. Pages a test opened are closed after it.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.support.browser import CHROMIUM_ARGS, chromium_browser, wait_for_chromium

# The route guard of tests/support/browser.py does not see redirect hops (Playwright routes only the
# first request of a redirect chain), so also make every other host name unresolvable in Chromium.
LOOPBACK_ONLY_ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")
    with chromium_browser(args=LOOPBACK_ONLY_ARGS) as context:
        yield context


@pytest.fixture
def ctx(browser_context: Any) -> Iterator[Any]:
    browser_context.clear_cookies()
    browser_context.blocked_requests.clear()
    before = list(browser_context.pages)
    yield browser_context
    for p in list(browser_context.pages):
        if p not in before:
            p.close()


@pytest.fixture
def page(ctx: Any) -> Any:
    return ctx.new_page()
