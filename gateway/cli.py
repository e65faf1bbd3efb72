"""The ``muster`` command.

``muster serve`` runs the gateway; ``muster migrate`` applies database migrations and exits.
Every setting is also a flag of these commands (see ``gateway.settings``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import __version__, logs
from gateway.errors import ConfigError, DatabaseUnavailable
from gateway.settings import Settings, add_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muster",
        description="Muster: a job-queue gateway for distributed ML training on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"muster {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway (API, admission, reconciliation)")
    add_flags(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    add_flags(migrate)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {key: value for key, value in vars(args).items() if key.startswith("MUSTER_")}
    return Settings.load(os.environ, flags)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the service on uvloop where it is installed (it is a dependency on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        logs.configure(settings.log_level, settings.log_format)
        if args.command == "serve":
            from gateway.server import serve

            run(serve(settings))
        elif args.command == "migrate":
            from gateway.server import migrate_only

            where = asyncio.run(migrate_only(settings))
            print(f"migrations applied to {where}")
    except (ConfigError, DatabaseUnavailable) as exc:
        print(f"muster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
