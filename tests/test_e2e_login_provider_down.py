"""A provider that goes down after the gateway fetched its discovery document.

Discovery is cached for an hour, so the gateway must notice the outage itself before
sending a browser there: a 503 page that offers to try again, while other routes keep
being served, and sign-in works again once the provider is back.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.e2e import IdPThread, request, wait_ready
from tests.support.gateway_proc import GatewayProcess
from tests.support.upstream import Upstream

pytestmark = pytest.mark.timeout(60)

BROWSER = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}


def discovery(issuer: str) -> str:
    return json.dumps({
        "issuer": issuer, "authorization_endpoint": issuer + "/auth", "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks", "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"], "id_token_signing_alg_values_supported": ["RS256"],
    })


def config(issuer: str, upstream: str) -> str:
    return f"""
session:
  secret: "Zp4-wQ8rT2mY6vK0xN3bH7cJ9dL5fS1gA"
providers:
  corp:
    issuer: {issuer}
    client_id: gateway
    client_secret: not-used-here
routes:
  - name: app
    path: /app
    upstream: {upstream}
    auth: login
  - name: pub
    path: /pub
    upstream: {upstream}
    auth: public
"""


def test_provider_down_after_discovery_gives_a_503_page_and_other_routes_keep_working():
    idp = IdPThread()
    idp.idp.discovery_body = discovery(idp.issuer)
    upstream = Upstream("provider-down").start()
    gw = GatewayProcess(config(idp.issuer, upstream.url))
    try:
        gw.start()
        wait_ready(gw.admin_url)  # discovery fetched: the provider was up at start
        idp.stop()  # ... and now it is gone

        r = request(gw.url, "GET", "/app/page", BROWSER)
        assert r.status == 503, r.body[:300]
        assert r.header("Content-Type").startswith("text/html")
        assert b"/oauth2/start?" in r.body and b"Try again" in r.body
        assert r.header("Location") is None
        entry = gw.wait_log(lambda e: e.get("path") == "/app/page")
        assert entry["status"] == 503 and "unavailable" in entry.get("reason", "")

        assert request(gw.url, "GET", "/pub/x").status == 200  # other routes are still served
        api = request(gw.url, "GET", "/app/api", {"Accept": "application/json"})
        assert api.status == 401  # API calls never depend on the provider
        assert gw.alive()
    finally:
        gw.stop()
        upstream.stop()


def test_provider_back_up_gets_the_redirect_again():
    idp = IdPThread()
    idp.idp.discovery_body = discovery(idp.issuer)
    upstream = Upstream("provider-up").start()
    gw = GatewayProcess(config(idp.issuer, upstream.url))
    try:
        gw.start()
        wait_ready(gw.admin_url)
        r = request(gw.url, "GET", "/app/page", BROWSER)
        assert r.status == 302
        assert r.header("Location").startswith(idp.issuer + "/auth?")
    finally:
        gw.stop()
        upstream.stop()
        idp.stop()
