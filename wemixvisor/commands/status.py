"""`wemixvisor status [--json]`: the node, the chain head, plans and the daemon, from the daemon."""

from __future__ import annotations

import argparse

from wemixvisor.commands.common import CliContext, add_timeout_argument, call, print_result


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `status`."""
    parser = subparsers.add_parser(
        "status",
        help="node state, head height, plans and the daemon (asks the running daemon)",
        description=(
            "Ask the running daemon through its control socket: node state, pid, uptime, "
            "restarts, binary and version, CPU and RSS, head height, pending plans and the last "
            "upgrade. Exit 3 when no daemon answers."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_timeout_argument(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the daemon's status."""
    print_result("status", call(ctx, {"type": "status"}, args.timeout), as_json=args.json)
    return 0
