"""`wemixvisor logs [-n N] [-f]`: the node's log.

Without `-f`, the daemon sends the last N lines of logs/node.log; with no daemon answering,
they are read from the file here (the node log is a local file of the home). With `-f` the file
is read here directly and followed like `tail -F`: through the daemon's copy-truncate rotation,
and while no daemon runs.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from types import FrameType

from wemixvisor.commands.common import (
    CliContext,
    CommandError,
    add_timeout_argument,
    ask_daemon,
    print_reply,
)
from wemixvisor.control.client import ControlUnreachable
from wemixvisor.control.logtail import follow, tail_lines
from wemixvisor.control.protocol import MAX_LOG_LINES, Logs, new_request_id
from wemixvisor.control.verbs import LOGS
from wemixvisor.control.verbs.node import read_node_log
from wemixvisor.home.layout import Home


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `logs`."""
    parser = subparsers.add_parser(
        "logs",
        help="the node's log: the last lines, or follow it with -f",
        description=(
            "Print the last lines of $DAEMON_HOME/logs/node.log (asks the daemon; reads the "
            "file itself when no daemon answers). With -f, read the file directly and keep "
            "printing what the node writes, across rotations."
        ),
    )
    parser.add_argument(
        "-n",
        "--lines",
        type=_line_count,
        default=50,
        metavar="N",
        help=f"how many of the last lines to print (default 50, at most {MAX_LOG_LINES})",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (not with -f)")
    add_timeout_argument(parser)
    parser.set_defaults(handler=handle, talks_to_daemon=True)


def _line_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_LOG_LINES:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_LOG_LINES}, got {value}")
    return value


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the last lines, then follow if asked."""
    if not args.follow:
        try:
            reply = ask_daemon(ctx, LOGS, Logs(id=new_request_id(), lines=args.lines), args.timeout)
        except ControlUnreachable as exc:
            print(f"wemixvisor: {exc}; reading the node log directly", file=sys.stderr)
            path = Home.from_config(ctx.config).node_log
            try:
                reply = read_node_log(path, args.lines)
            except OSError as exc:
                raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        print_reply(LOGS, reply, as_json=args.json)
        return 0
    config = ctx.config
    path = Home.from_config(config).node_log
    try:
        lines, _ = tail_lines(path, args.lines)
    except FileNotFoundError:
        print(f"wemixvisor: waiting for {path}", file=sys.stderr, flush=True)
        lines = []
    for line in lines:
        print(line)
    sys.stdout.flush()
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    # The reader went away (`| head`): the normal end of a pipeline.
    with contextlib.suppress(BrokenPipeError):
        follow(path, write, stop)
    return 0
