"""The ``gateway`` command: serve, check, demo; argument parsing only.

The only module that reads the command line or configures logging; what a
command does lives in ``server`` (serve), ``config`` (check) and ``demo``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from . import __version__
from .config import DEFAULT_CONFIG_PATH, ConfigError, load


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
    demo = sub.add_parser("demo", help="self-contained demo on loopback (not for production)")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080; 0 picks a free one)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging()
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
