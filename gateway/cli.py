"""The ``gateway`` command: serve, check, doctor, explain, schema, demo, login, token, logout; argument parsing only.

The only module that reads the command line or configures logging; what a
command does lives in ``server`` (serve), ``config`` (check, schema), ``doctor``, ``explain``, ``demo`` and
``cli_login`` (login, token, logout: the client side, for scripts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from . import __version__
from .config import DEFAULT_CONFIG_PATH, ConfigError, json_schema, load


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Authentication gateway: JWT and OpenID Connect in front of your backends.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the gateway")
    _config_arg(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="override server.listen (port 0 picks a free port)")
    serve.add_argument("--admin-listen", metavar="HOST:PORT|off", help="override server.admin_listen")
    check = sub.add_parser("check", help="validate the config; print every error")
    _config_arg(check)
    doctor = sub.add_parser("doctor", help="check the live setup: providers, keys, upstreams, Redis, cookies")
    _config_arg(doctor)
    doctor.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="timeout of each network step (default 3)")
    sub.add_parser("schema", help="print the JSON Schema of routes.yaml (the repository ships it as routes.schema.json)")
    demo = sub.add_parser("demo", help="self-contained demo on loopback (not for production)")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080; 0 picks a free one)")
    login = sub.add_parser("login", help="sign in to a gateway with a browser and store a token for scripts")
    login.add_argument("url", metavar="URL", help="the gateway, e.g. https://apps.example.com")
    login.add_argument("--no-browser", action="store_true",
                       help="print the sign-in address (first line of stdout) instead of opening a browser")
    login.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long to wait for the browser to sign in (default 300)")
    token = sub.add_parser("token", help="print the stored token for a gateway (for Authorization: Bearer)")
    token.add_argument("url", metavar="URL", help="the gateway, as given to login (only its origin counts)")
    logout = sub.add_parser("logout", help="forget the stored token for a gateway")
    logout.add_argument("url", metavar="URL", help="the gateway, as given to login (only its origin counts)")
    explain = sub.add_parser("explain", help="why a request would be forwarded or refused (offline)")
    _config_arg(explain)
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL", help="e.g. https://apps.example.com/admin/users")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                         help="a request header (repeatable); Host overrides the URL's host")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--claims", metavar="JSON", help="the identity as token claims, e.g. '{\"sub\": \"alice\"}'")
    who.add_argument("--token", metavar="JWT", help="a bearer token, verified with the configured keys")
    explain.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "schema":
        sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
        return 0
    if args.command in ("login", "token", "logout"):
        from . import cli_login

        if args.command == "login":
            return cli_login.login(args.url, open_browser=not args.no_browser, timeout=args.timeout)
        if args.command == "token":
            return cli_login.print_token(args.url)
        return cli_login.logout(args.url)
    if args.command == "doctor":
        from .doctor import run_doctor

        logging.basicConfig(stream=sys.stderr, level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        return run_doctor(args.config, timeout=args.timeout)
    _setup_logging()
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "serve":
        from .server import serve

        return serve(args.config, args.listen, args.admin_listen)
    from .demo import run_demo

    return run_demo(port=args.port)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG_PATH),
        help="config file (default: $GATEWAY_CONFIG or ./routes.yaml)",
    )


def _setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 when the request would be forwarded, 1 otherwise (a refusal, or a request or config that is wrong)."""
    import asyncio
    import json

    from .explain import ExplainError, explain, render

    logging.getLogger().setLevel(logging.ERROR)  # the story is the output; fetch warnings would only interleave
    try:
        config = load(args.config)
        story = asyncio.run(explain(config, args.method, args.url, args.header, claims=args.claims, token=args.token))
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except ExplainError as exc:
        print(f"gateway explain: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(story, indent=2, default=str) if args.json else render(story))
    return 0 if story["verdict"]["forwarded"] else 1


def cmd_check(path: str) -> int:
    try:
        config = load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    print(f"{path}: OK ({len(config.routes)} routes, {len(config.providers)} providers, {len(config.tokens)} token issuers)"
          + (f", {len(config.warnings)} warning(s)" if config.warnings else ""))
    return 0
