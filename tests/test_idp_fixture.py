"""Smoke test of the OIDC provider fixture (tests/idp) and the Chromium helper.

Drives a real authorization-code + PKCE login through headless Chromium
against oidc-provider, then exercises the token endpoint (client_secret_basic
and client_secret_post), refresh, the forced refresh failure, RP-initiated
logout and a large (padded) ID token. Loopback only.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import chromium_browser, wait_for_chromium
from tests.support.oidc_provider import client, start_oidc_provider, user

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: no local OIDC provider"),
    pytest.mark.timeout(120),
]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers


class _CallbackServer:
    """Records every request to http://127.0.0.1:PORT/..., answers 200."""

    def __init__(self) -> None:
        self.hits: list[urllib.parse.SplitResult] = []
        self.event = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(urllib.parse.urlsplit(self.path))
                body = b"<!DOCTYPE html><title>callback</title><p>callback ok</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.event.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def last_query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.hits[-1].query))

    def __enter__(self) -> "_CallbackServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _authorize_url(issuer: str, client_id: str, redirect_uri: str) -> tuple[str, dict[str, str]]:
    verifier = _b64url(secrets.token_bytes(32))
    flow = {
        "verifier": verifier,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
    }
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid email profile groups",
        "state": flow["state"],
        "nonce": flow["nonce"],
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    return f"{issuer}/auth?{urllib.parse.urlencode(params)}", flow


def _token_request(
    token_endpoint: str, form: dict[str, str], *, basic: tuple[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if basic:
        cred = f"{urllib.parse.quote(basic[0], safe='')}:{urllib.parse.quote(basic[1], safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    req = urllib.request.Request(
        token_endpoint, data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST"
    )
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _login_in_browser(page: Any, url: str, cb: _CallbackServer, login: str, password: str) -> dict[str, str]:
    cb.event.clear()
    page.goto(url)
    page.get_by_label("Username").fill(login)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"http://127.0.0.1:{cb.port}/**")
    assert cb.event.wait(5)
    return cb.last_query()


# --------------------------------------------------------------------------- test


def test_idp_fixture_end_to_end(tmp_path: Path) -> None:
    if wait_for_chromium(timeout=300) is None:
        pytest.fail("/usr/bin/chromium is not installed")

    with _CallbackServer() as cb:
        redirect_basic = cb.url("/cb-basic")
        redirect_post = cb.url("/cb-post")
        logged_out = cb.url("/logged-out")
        clients = [
            client("gw-basic", "basic-secret", [redirect_basic], post_logout_redirect_uris=[logged_out]),
            client("gw-post", "post-secret", [redirect_post], token_endpoint_auth_method="client_secret_post"),
        ]
        users = [
            user("alice", "alice-pw", email="alice@example.test", groups=["users", "admins"], name="Alice A"),
            user("bob", "bob-pw", groups=["users"], padding=6000),
        ]
        with start_oidc_provider(tmp_path, clients=clients, users=users, access_token_ttl=5) as idp:
            assert idp.issuer == f"http://localhost:{idp.port}"

            # --- discovery
            disc = idp.discovery()
            assert disc["issuer"] == idp.issuer
            assert "S256" in disc["code_challenge_methods_supported"]
            assert disc["end_session_endpoint"] == f"{idp.issuer}/session/end"
            assert disc["token_endpoint"] == idp.token_endpoint
            assert set(disc["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
            assert disc["authorization_response_iss_parameter_supported"] is True

            with chromium_browser() as context:
                page = context.new_page()

                # --- login: wrong password first, then the right one
                url, flow = _authorize_url(idp.issuer, "gw-basic", redirect_basic)
                page.goto(url)
                assert page.title() == "Sign in"
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill("wrong")
                page.get_by_role("button", name="Sign in").click()
                assert "Invalid username or password" in page.get_by_role("alert").inner_text()
                page.get_by_label("Password").fill("alice-pw")
                cb.event.clear()
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{redirect_basic}?**")
                assert cb.event.wait(5)
                q = cb.last_query()
                assert q["state"] == flow["state"]
                assert q["iss"] == idp.issuer  # RFC 9207
                assert q["code"]

                # --- code -> tokens (client_secret_basic)
                status, tokens = _token_request(
                    idp.token_endpoint,
                    {
                        "grant_type": "authorization_code",
                        "code": q["code"],
                        "redirect_uri": redirect_basic,
                        "code_verifier": flow["verifier"],
                    },
                    basic=("gw-basic", "basic-secret"),
                )
                assert status == 200, tokens
                assert tokens["token_type"].lower() == "bearer"
                assert tokens["expires_in"] <= 5
                assert tokens["refresh_token"]
                claims = _jwt_claims(tokens["id_token"])
                assert claims["iss"] == idp.issuer
                assert claims["aud"] == "gw-basic"
                assert claims["sub"] == "alice"
                assert claims["nonce"] == flow["nonce"]
                assert claims["email"] == "alice@example.test"
                assert claims["email_verified"] is True
                assert claims["groups"] == ["users", "admins"]
                assert claims["preferred_username"] == "alice"
                assert claims["name"] == "Alice A"
                assert "padding" not in claims

                # --- refresh
                status, refreshed = _token_request(
                    idp.token_endpoint,
                    {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                    basic=("gw-basic", "basic-secret"),
                )
                assert status == 200, refreshed
                assert refreshed["access_token"] != tokens["access_token"]
                assert _jwt_claims(refreshed["id_token"])["groups"] == ["users", "admins"]
                stats = idp.stats()
                assert stats["token_requests"] == 2
                assert stats["refresh_requests"] == 1
                assert stats["client_secret_basic"] == 2
                assert stats["client_secret_post"] == 0

                # --- the registered auth method is enforced (oidc-provider alone would accept both)
                status, err = _token_request(
                    idp.token_endpoint,
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": tokens["refresh_token"],
                        "client_id": "gw-basic",
                        "client_secret": "basic-secret",
                    },
                )
                assert status == 401
                assert err["error"] == "invalid_client"
                assert idp.stats()["client_auth_rejected"] == 1

                # --- forced refresh failure
                idp.fail_next_refresh()
                rt = refreshed.get("refresh_token", tokens["refresh_token"])
                status, err = _token_request(
                    idp.token_endpoint,
                    {"grant_type": "refresh_token", "refresh_token": rt},
                    basic=("gw-basic", "basic-secret"),
                )
                assert status == 400
                assert err["error"] == "invalid_grant"
                stats = idp.stats()
                assert stats["refresh_requests"] == 2
                assert stats["forced_refresh_failures"] == 1
                assert stats["pending_refresh_failures"] == 0

                # --- second client, same browser session: SSO (no login page), client_secret_post
                url, flow = _authorize_url(idp.issuer, "gw-post", redirect_post)
                cb.event.clear()
                page.goto(url)
                page.wait_for_url(f"{redirect_post}?**")
                assert cb.event.wait(5)
                q = cb.last_query()
                assert q["state"] == flow["state"]
                status, post_tokens = _token_request(
                    idp.token_endpoint,
                    {
                        "grant_type": "authorization_code",
                        "code": q["code"],
                        "redirect_uri": redirect_post,
                        "code_verifier": flow["verifier"],
                        "client_id": "gw-post",
                        "client_secret": "post-secret",
                    },
                )
                assert status == 200, post_tokens
                assert _jwt_claims(post_tokens["id_token"])["aud"] == "gw-post"
                assert post_tokens["refresh_token"]
                assert idp.stats()["client_secret_post"] == 2  # the rejected one above + this

                # --- RP-initiated logout: the confirmation page submits itself
                cb.event.clear()
                logout_url = f"{idp.end_session_endpoint}?" + urllib.parse.urlencode(
                    {
                        "id_token_hint": tokens["id_token"],
                        "post_logout_redirect_uri": logged_out,
                        "state": "bye",
                    }
                )
                page.goto(logout_url)
                page.wait_for_url(f"{logged_out}?**")
                assert cb.event.wait(5)
                assert cb.last_query()["state"] == "bye"

                # --- new login (session gone) as bob, whose ID token is padded to > 6 KB
                url, flow = _authorize_url(idp.issuer, "gw-basic", redirect_basic)
                q = _login_in_browser(page, url, cb, "bob", "bob-pw")
                status, bob_tokens = _token_request(
                    idp.token_endpoint,
                    {
                        "grant_type": "authorization_code",
                        "code": q["code"],
                        "redirect_uri": redirect_basic,
                        "code_verifier": flow["verifier"],
                    },
                    basic=("gw-basic", "basic-secret"),
                )
                assert status == 200, bob_tokens
                assert len(bob_tokens["id_token"]) > 6000
                bob_claims = _jwt_claims(bob_tokens["id_token"])
                assert bob_claims["sub"] == "bob"
                assert len(bob_claims["padding"]) == 6000

                # nothing left loopback
                assert context.blocked_requests == []
