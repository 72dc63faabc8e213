"""`wemixvisor init <binary>`: create the home layout and install the genesis binary."""

from __future__ import annotations

import argparse
from pathlib import Path

from wemixvisor.commands.common import EXIT_OK, CliContext, CommandError
from wemixvisor.home.layout import Home, LayoutError, init_home


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `init` verb."""
    parser = subparsers.add_parser(
        "init",
        help="create the home layout, copy the genesis binary, point current at genesis",
        description=(
            "Create $DAEMON_HOME/wemixvisor, install BINARY as genesis/bin/$DAEMON_NAME and "
            "point current at genesis. Safe to re-run; an existing current is never re-pointed."
        ),
    )
    parser.add_argument("binary", type=Path, help="the node binary to run before any upgrade")
    parser.add_argument(
        "--force", action="store_true", help="replace an installed genesis binary that differs"
    )
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace, ctx: CliContext) -> int:
    """Initialise the home from the loaded configuration and print what was done."""
    # cli imports this module (via commands/__init__), so cli is imported at call time.

    config = ctx.config
    try:
        home = Home.from_config(config)
        lines = init_home(home, args.binary, force=args.force)
    except LayoutError as exc:
        raise CommandError(str(exc)) from exc
    for line in lines:
        print(line)
    return EXIT_OK
