"""`wemixvisor start | stop | restart`: drive the node through the daemon, and wait for it.

The daemon answers at once; the command then polls `status` until the node reaches the state
asked for (`stop`: STOPPED; `start`: RUNNING; `restart`: RUNNING as a new process) or a failure
state (FATAL, BACKOFF, EXITED: exit 1), or the deadline passes (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec

from wemixvisor.commands.common import (
    EXIT_FAILURE,
    CliContext,
    CommandError,
    add_timeout_argument,
    open_client,
    print_reply,
    request,
    seconds,
)
from wemixvisor.control.protocol import Status, new_request_id
from wemixvisor.control.verbs import RESTART, START, STATUS, STOP, Verb
from wemixvisor.control.verbs.replies import NodeOperationReply
from wemixvisor.messages.node import NodeState, NodeStatus

_POLL_INTERVAL = 0.1
_FAILED = (NodeState.FATAL, NodeState.BACKOFF, NodeState.EXITED)
_NODE_VERBS: dict[str, Verb[Any, Any, NodeOperationReply]] = {
    "start": START,
    "stop": STOP,
    "restart": RESTART,
}
_START_ALLOWANCE = 60.0

_VERBS = {
    "start": "start the node (also leaves FATAL) and wait until it runs",
    "stop": "stop the node gracefully and wait until it is stopped",
    "restart": "stop the node, start it again, and wait until the new process runs",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `start`, `stop` and `restart`."""
    for verb, text in _VERBS.items():
        parser = subparsers.add_parser(
            verb, help=text, description=text[0].upper() + text[1:] + "."
        )
        parser.add_argument(
            "--no-wait", action="store_true", help="return once the daemon accepted the request"
        )
        parser.add_argument(
            "--wait",
            type=seconds,
            metavar="SECONDS",
            help="give up waiting after SECONDS (default: from the grace and STARTSECS)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON objects")
        add_timeout_argument(parser)
        parser.set_defaults(handler=handle, verb=verb, talks_to_daemon=True)


def _deadline(verb: str, ctx: CliContext) -> float:
    node = ctx.config.node
    if verb == "stop":
        return node.shutdown_grace + 15.0
    if verb == "start":
        return node.startsecs + _START_ALLOWANCE
    return node.shutdown_grace + node.startsecs + _START_ALLOWANCE


def _reached(verb: str, node: NodeStatus, old_pid: int | None) -> bool | None:
    """True when the node is where `verb` wanted it, False on a failure state, else None."""
    state = node.state
    if verb == "stop":
        return True if state is NodeState.STOPPED else None
    if state is NodeState.RUNNING and (verb == "start" or old_pid is None or node.pid != old_pid):
        return True
    return False if state in _FAILED else None


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Send the verb, then wait for the node's resulting state."""
    verb = _NODE_VERBS[args.verb]
    with open_client(ctx, args.timeout) as client:
        reply = request(client, verb, verb.request_type(id=new_request_id()))
        if args.no_wait:
            print_reply(verb, reply, as_json=args.json)
            return 0
        old_pid = reply.before.pid
        wait = args.wait if args.wait is not None else _deadline(args.verb, ctx)
        deadline = time.monotonic() + wait
        while True:
            node = request(client, STATUS, Status(id=new_request_id())).node
            reached = _reached(args.verb, node, old_pid)
            if reached is not None or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_INTERVAL)
    if args.json:
        print(msgspec.json.encode({"operation": reply.operation, "node": node}).decode())
    if reached:
        if not args.json:
            pid = f" (pid {node.pid})" if node.pid is not None else ""
            print(f"node {node.state.value}{pid}")
        return 0
    if reached is None:
        raise CommandError(f"node still {node.state.value} after {wait:g}s", EXIT_FAILURE)
    detail = f": {node.last_error}" if node.last_error else ""
    print(f"wemixvisor: node {node.state.value}{detail}", file=sys.stderr)
    return EXIT_FAILURE
