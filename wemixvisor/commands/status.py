"""`wemixvisor status [--json]`: the node, the chain head, plans and the daemon, from the daemon."""

from __future__ import annotations

import argparse

from wemixvisor.commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CliContext,
    add_timeout_argument,
    call,
    print_reply,
)
from wemixvisor.control.protocol import Status, new_request_id
from wemixvisor.control.verbs import STATUS
from wemixvisor.messages.node import NodeState


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `status`."""
    parser = subparsers.add_parser(
        "status",
        help="node state, head height, plans and the daemon (asks the running daemon)",
        description=(
            "Ask the running daemon through its control socket: node state, pid, uptime, "
            "restarts, binary and version, CPU and RSS, head height, pending plans and the last "
            "upgrade. Exit 1 when the node is not RUNNING (FATAL, stopped, starting…), 3 when "
            "no daemon answers: health checks and probes rely on it."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_timeout_argument(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the daemon's status; exit 1 unless the node is RUNNING (SPEC §12)."""
    reply = call(ctx, STATUS, Status(id=new_request_id()), args.timeout)
    print_reply(STATUS, reply, as_json=args.json)
    return EXIT_OK if reply.node.state is NodeState.RUNNING else EXIT_FAILURE
