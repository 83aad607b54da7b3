"""``gateway demo``: the whole product on loopback, in one process, nothing to configure.

Starts an echo backend that shows the request it received (identity headers
included), the built-in development OpenID Connect provider, and the real
gateway in front of the backend with a ``login`` route, configured through the
same routes.yaml loader as ``gateway serve``. For trying the gateway only:
the provider, its password and the session secret live for one run.
"""

from __future__ import annotations

import html
import os
import secrets
import socket
import sys
import tempfile
import textwrap

from tornado import httpserver, netutil, web

from .config import ConfigError, load
from .devidp import DevIdentityProvider, log_without_query
from .server import Server, run


class EchoHandler(web.RequestHandler):
    """The demo backend: a page listing the headers the gateway sent it."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def _any(self) -> None:
        headers = sorted(self.request.headers.get_all())
        identity = [(k, v) for k, v in headers if k.lower().startswith("x-forwarded-") or k.lower() == "x-request-id"]
        if "text/html" not in self.request.headers.get("Accept", ""):
            self.write({"method": self.request.method, "path": self.request.path,
                        "headers": dict(headers)})
            return
        rows = "".join(f"<tr><th scope='row'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in identity)
        others = "".join(f"<tr><th scope='row'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                         for k, v in headers if (k, v) not in identity)
        user = html.escape(self.request.headers.get("X-Forwarded-Email") or self.request.headers.get("X-Forwarded-User") or "?")
        self.write(f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Demo backend</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2430}}
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}}th,td{{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #dfe3ea;font-size:.9rem;vertical-align:top}}
th{{width:40%;font-weight:600}}.note{{color:#5b6474}}a{{color:#2454d6}}</style></head><body>
<h1>Hello, {user}</h1>
<p class="note">This page is served by the demo backend, which has no login of its own.
The gateway checked your session and sent your identity in these headers:</p>
<table aria-label="Identity headers">{rows}</table>
<p><a href="/oauth2/userinfo">Your identity as JSON</a> · <a href="/oauth2/sign_out">Sign out</a></p>
<details><summary>All request headers</summary><table aria-label="All request headers">{others}</table></details>
<p class="note">Request: {html.escape(self.request.method or "")} {html.escape(self.request.uri or "")}</p>
</body></html>""")

    get = head = post = put = patch = delete = options = _any


def _listen(port: int = 0) -> tuple[list[socket.socket], int]:
    sockets = netutil.bind_sockets(port, address="127.0.0.1")
    return sockets, sockets[0].getsockname()[1]


def run_demo(port: int = 8080) -> int:
    try:
        gateway_sockets, gateway_port = _listen(port)
    except OSError as exc:
        print(f"gateway demo: cannot listen on 127.0.0.1:{port} ({exc.strerror}); try: gateway demo --port 0",
              file=sys.stderr)
        return 1
    for sock in gateway_sockets:
        sock.close()
    echo_sockets, echo_port = _listen()
    idp_sockets, idp_port = _listen()
    public_url = f"http://127.0.0.1:{gateway_port}"
    issuer = f"http://127.0.0.1:{idp_port}"
    client_secret = secrets.token_urlsafe(24)
    password = DevIdentityProvider.generate_password()
    idp = DevIdentityProvider(
        issuer, client_id="gateway-demo", client_secret=client_secret,
        redirect_uris=[public_url + "/oauth2/callback"], post_logout_redirect_uris=[public_url + "/"],
        users={"demo": {"password": password, "sub": "demo-user-1", "email": "demo@example.com",
                        "name": "Demo User", "preferred_username": "demo", "groups": ["demo", "developers"]}},
    )
    workdir = tempfile.mkdtemp(prefix="gateway-demo-")
    path = os.path.join(workdir, "routes.yaml")
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""\
            # Written by `gateway demo`; a real deployment writes its own (see routes.yaml).
            server:
              listen: 127.0.0.1:{gateway_port}
              public_url: {public_url}
              admin_listen: "off"
            session:
              secret: ${{DEMO_SESSION_SECRET}}
              lifetime: 1h
            providers:
              demo:
                issuer: {issuer}
                client_id: gateway-demo
                client_secret: ${{DEMO_CLIENT_SECRET}}
                display_name: the demo provider
            routes:
              - name: echo
                path: /
                upstream: http://127.0.0.1:{echo_port}
                auth: login
            """))
    os.environ["DEMO_SESSION_SECRET"] = secrets.token_urlsafe(32)
    os.environ["DEMO_CLIENT_SECRET"] = client_secret
    try:
        config = load(path)
    except ConfigError as exc:  # pragma: no cover - the demo config is ours
        print("\n".join(exc.errors), file=sys.stderr)
        return 1

    async def main() -> int:
        httpserver.HTTPServer(web.Application([(r".*", EchoHandler)], log_function=log_without_query)).add_sockets(echo_sockets)
        httpserver.HTTPServer(idp.make_app()).add_sockets(idp_sockets)
        banner = textwrap.dedent(f"""
            gateway demo: for trying the gateway on this machine, never for production.

              Open      {public_url}/
              Sign in   user "demo", password "{password}"

              started   echo backend                  http://127.0.0.1:{echo_port}
                        development OpenID provider   {issuer}
                        gateway (login route /)       {public_url}
              config    {path}
              stop      Ctrl-C
            """)
        on_listening = lambda: print(banner, file=sys.stderr, flush=True)  # noqa: E731
        return await Server(config, path, on_listening=on_listening).serve()

    return run(main)
