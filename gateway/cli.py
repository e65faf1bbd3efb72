"""The ``muster`` command: its parser and entry point (``gateway.cli:main``, ``python -m gateway``).

``muster serve`` runs the gateway; ``muster migrate`` applies database migrations and exits;
``muster token`` mints a token of the local issuer and ``muster ui`` a one-time dashboard
sign-in link (``gateway.cli_token``). Every setting is also a
flag of these commands (see ``gateway.settings``). The client commands (``submit``, ``jobs``,
``status``, ``logs``, ``cancel``, ``tenants``, ``cohorts``, ``cohort``, ``priority-classes``) live
in ``gateway.cli_client``.

Invariants kept here: the server is imported only by the command that runs it, so the client
commands start fast; exit 0 on success, 2 on a configuration error or a database that cannot be
reached (one line on stderr, never a traceback), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import __version__, logs
from gateway.cli_client import add_client_commands, run_client
from gateway.cli_token import mint_token, parse_ttl, sign_in_link
from gateway.domain.access import Role
from gateway.errors import ConfigError, DatabaseUnavailable
from gateway.settings import DEFAULT_URL, ClientSettings, Settings, add_flags

TOKEN_SETTINGS = frozenset(
    {
        "MUSTER_DATA_DIR",
        "MUSTER_ISSUER_KEY",
        "MUSTER_OIDC_ISSUER",
        "MUSTER_OIDC_AUDIENCE",
        "MUSTER_OIDC_GROUPS_CLAIM",
        "MUSTER_OIDC_USER_CLAIM",
        "MUSTER_ADMIN_GROUPS",
    }
)


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
    token = commands.add_parser(
        "token",
        help="mint a token of the local issuer (prints it)",
        description="Mint a bearer token signed with the local issuer's key (MUSTER_ISSUER_KEY, "
        "in the data directory by default) and print it. Roles come as groups "
        "muster:<tenant>:<role>; --admin adds the first of MUSTER_ADMIN_GROUPS.",
    )
    _add_identity_flags(token)
    token.add_argument(
        "--ttl", default="1h", type=parse_ttl, help="lifetime: 90s, 30m, 12h or 7d (default: 1h)"
    )
    add_flags(token, only=TOKEN_SETTINGS)
    ui = commands.add_parser(
        "ui",
        help="print a one-time link that signs a browser in to the dashboard (local issuer)",
        description="Print a link to the dashboard (/ui) that signs the browser in once, within "
        "a minute, as a platform admin by default, or as --tenant/--role/--user say. Needs the "
        "local issuer's key (MUSTER_ISSUER_KEY); the gateway must prove it holds that key "
        "before a link is made for it.",
    )
    _add_identity_flags(ui)
    ui.add_argument(
        "--url", help=f"the gateway's base URL (default: {DEFAULT_URL}) [env MUSTER_URL]"
    )
    ui.add_argument("--open", action="store_true", help="open the link in a web browser too")
    add_flags(ui, only=TOKEN_SETTINGS)
    add_client_commands(commands)
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script of every command (bash or zsh)",
        description="Print the completion script of every muster command and flag for bash or zsh "
        "(source it, or put it where the shell loads completions).",
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def _add_identity_flags(parser: argparse.ArgumentParser) -> None:
    """Whom a token or a sign-in link names, and the roles its groups give."""
    parser.add_argument(
        "--tenant", action="append", default=[], metavar="TENANT", help="a tenant (repeat)"
    )
    parser.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.SUBMITTER.value,
        help="the role in each --tenant (default: submitter)",
    )
    parser.add_argument("--admin", action="store_true", help="a platform admin's")
    parser.add_argument("--user", help="the user it names (default: your login name)")
    parser.add_argument(
        "--group", action="append", default=[], metavar="GROUP", help="another group (repeat)"
    )


# --- serve and migrate --------------------------------------------------------------------------


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


def _sign_in_link(settings: Settings, args: argparse.Namespace) -> str:
    try:
        url = ClientSettings.load(os.environ, url=args.url).url
        return sign_in_link(settings, args, url)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot make a sign-in link: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return run_client(args)
    if args.command == "completion":
        import shtab

        try:
            print(shtab.complete(parser, shell=args.shell))
        except BrokenPipeError:  # `muster completion bash | head`: the reader went away
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return 0
    try:
        settings = _settings(args)
        logs.configure(settings.logging.level, settings.logging.format)
        if args.command == "serve":
            from gateway.server import serve

            run(serve(settings))
        elif args.command == "migrate":
            from gateway.server import migrate_only

            where = asyncio.run(migrate_only(settings))
            print(f"migrations applied to {where}")
        elif args.command == "ui":
            link = _sign_in_link(settings, args)
            print(link)
            if args.open:
                import webbrowser

                webbrowser.open(link)
        elif args.command == "token":
            try:
                print(mint_token(settings, args))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot mint a token: {exc}") from exc
    except (ConfigError, DatabaseUnavailable) as exc:
        print(f"muster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
