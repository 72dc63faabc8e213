"""`wemixvisor add-upgrade <name> <binary> [--height H]`: install an upgrade binary
(cosmovisor-compatible), and with `--height` schedule it too."""

from __future__ import annotations

import argparse
from pathlib import Path

from wemixvisor.commands import upgrade
from wemixvisor.commands.common import EXIT_OK, CliContext, CommandError
from wemixvisor.home.layout import Home, LayoutError, add_upgrade


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `add-upgrade` verb."""
    parser = subparsers.add_parser(
        "add-upgrade",
        help="install a binary as upgrades/<name>/bin/$DAEMON_NAME",
        description=(
            "Copy BINARY to $DAEMON_HOME/wemixvisor/upgrades/NAME/bin/$DAEMON_NAME so that the "
            "upgrade NAME can run without downloading anything."
        ),
    )
    parser.add_argument("name", help="upgrade name: 1-64 characters of A-Z a-z 0-9 . _ -")
    parser.add_argument("binary", type=Path, help="the node binary for this upgrade")
    parser.add_argument(
        "--force", action="store_true", help="replace a binary already installed for NAME"
    )
    parser.add_argument(
        "--height",
        metavar="H",
        help=(
            "also schedule the upgrade at block height H, like `wemixvisor upgrade schedule NAME H`"
        ),
    )
    parser.set_defaults(handler=run_add_upgrade)


def run_add_upgrade(args: argparse.Namespace, ctx: CliContext) -> int:
    """Install the upgrade binary into the configured home and print where it went.

    With `--height` the plan is scheduled after the install, like `upgrade schedule`. With no
    daemon running it is checked first (name, height, the chain's head, conflicts), so that a
    refused plan installs nothing; a running daemon decides when it is asked, after the install.
    """
    request = None
    if args.height is not None:
        plan = upgrade.plan_from_arguments(args.name, args.height, None)
        request = upgrade.schedule_request(plan, now=False)
        upgrade.check_schedule(ctx, request)
    try:
        installed = add_upgrade(
            Home.from_config(ctx.config), args.name, args.binary, force=args.force
        )
    except LayoutError as exc:
        raise CommandError(str(exc)) from exc
    print(f"installed upgrade {args.name!r} binary {installed}")
    if request is not None:
        upgrade.schedule(ctx, request)
    return EXIT_OK
