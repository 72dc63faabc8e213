"""`wemixvisor init <binary>`: create the home layout and install the genesis binary;
`wemixvisor init --from-cosmovisor DIR`: build it from a cosmovisor home instead."""

from __future__ import annotations

import argparse
from pathlib import Path

from wemixvisor.commands.common import EXIT_OK, EXIT_USAGE, CliContext, CommandError
from wemixvisor.home.cosmovisor import import_cosmovisor
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
    parser.add_argument(
        "binary", type=Path, nargs="?", help="the node binary to run before any upgrade"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an installed genesis binary that differs"
    )
    parser.add_argument(
        "--from-cosmovisor",
        type=Path,
        metavar="DIR",
        help=(
            "build the layout from the cosmovisor home DIR (their DAEMON_HOME): binaries "
            "(hard-linked where possible), upgrades, current and the pending plan"
        ),
    )
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace, ctx: CliContext) -> int:
    """Initialise the home from the loaded configuration and print what was done."""
    if (args.binary is None) == (args.from_cosmovisor is None):
        raise CommandError("give either BINARY or --from-cosmovisor DIR", EXIT_USAGE)
    config = ctx.config
    try:
        home = Home.from_config(config)
        if args.from_cosmovisor is not None:
            lines = import_cosmovisor(home, args.from_cosmovisor)
        else:
            lines = init_home(home, args.binary, force=args.force)
    except LayoutError as exc:
        raise CommandError(str(exc)) from exc
    for line in lines:
        print(line)
    return EXIT_OK
