"""Tests for gateway.pages: every page the gateway renders, checked with axe-core in Chromium.

Each page is rendered by ``pages.render`` exactly as a browser receives it
and loaded into headless Chromium in the light and the dark color scheme;
axe-core (npm, pinned in tests/idp) must find no WCAG 2 A/AA violation,
contrast included.
"""

from __future__ import annotations

import json
import os

import pytest

from gateway.answers import Page, Refusal
from gateway.pages import render

AXE = os.path.join(os.path.dirname(__file__), "idp", "node_modules", "axe-core", "axe.min.js")

PAGES = {
    "403 with sign-out": Refusal(403, "x", signed_in_as="alice@example.com", sign_out_url="/oauth2/sign_out?rd=%2F"),
    "403 for a token": Refusal(403, "x", description="The token you sent does not give access to this page."),
    "404": Refusal(404, "no route"),
    "503 with retry": Refusal(503, "down", retry_url="/oauth2/start?rd=%2F", description="Try again in a moment."),
    "chooser": Page("chooser.html", {"title": "Sign in", "providers": [
        {"url": "/oauth2/start?provider=a", "label": "Corp"}, {"url": "/oauth2/start?provider=b", "label": "Partners"}]}),
    "signed out": Page("signed_out.html", {"title": "Signed out"}),
}


def html_of(answer) -> str:
    rendered = render(answer, browser=True, request_id="req-1")
    assert ("Content-Type", "text/html; charset=utf-8") in rendered.headers
    return rendered.body.decode()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_pages_have_no_external_assets(name):
    html = html_of(PAGES[name])
    for marker in ("http://", "https://", "<script", "src="):
        assert marker not in html, (name, marker)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe_in_light_and_dark(scheme):
    from tests.support.browser import chromium_browser

    assert os.path.exists(AXE), "axe-core is installed by scripts/test.sh (npm ci in tests/idp)"
    with chromium_browser(color_scheme=scheme) as context:
        page = context.new_page()
        found = {}
        for name, answer in PAGES.items():
            page.set_content(html_of(answer))
            page.add_script_tag(path=AXE)
            result = page.evaluate("""async () => {
                const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}});
                return r.violations.map(v => ({id: v.id, nodes: v.nodes.map(n => n.target.join(' '))}));
            }""")
            if result:
                found[name] = result
        assert not found, json.dumps(found, indent=1)
