"""`wemixvisor alert (--webhook URL | --exec CMD) [--topics PREFIX...]`: events to alerting.

Runs until SIGTERM or Ctrl-C. It follows the daemon's events socket (reconnecting when the
daemon restarts) and delivers each matching event as an alert, see `wemixvisor.events.alert`.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from types import FrameType

from wemixvisor.commands.common import EXIT_USAGE, CliContext, CommandError, seconds
from wemixvisor.events.alert import AlertForwarder, ExecSink, Sink, WebhookSink
from wemixvisor.events.subscriber import EventSubscriber


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `alert`."""
    parser = subparsers.add_parser(
        "alert",
        help="forward events to a webhook or a command, for alerting",
        description=(
            "POST each matching event as JSON (with a `text` line for chat tools) to a webhook, "
            "retrying with back-off while it is down, or run a command per event with the "
            "event's JSON on stdin. Gaps in the events are reported as alerts of their own."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook", metavar="URL", help="http(s) URL to POST each alert to")
    target.add_argument(
        "--exec",
        dest="command",
        metavar="CMD",
        help="command run per alert (split like a shell would, but run without one)",
    )
    parser.add_argument(
        "--topics",
        nargs="+",
        action="extend",
        default=[],
        metavar="PREFIX",
        help="only topics starting with these, e.g. node. upgrade. (default: all)",
    )
    parser.add_argument(
        "--connect",
        dest="endpoints",
        action="append",
        metavar="ENDPOINT",
        help="events endpoint of a daemon, repeatable (default: events.endpoint of this home)",
    )
    parser.add_argument(
        "--delivery-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="time limit of one POST or one command run (default 10)",
    )
    parser.add_argument(
        "--max-backoff",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="longest pause between retries of an undelivered alert (default 30)",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=1000,
        metavar="N",
        help="alerts kept while the receiver is down; the oldest are dropped beyond (default 1000)",
    )
    parser.set_defaults(handler=handle)


def _sink(args: argparse.Namespace) -> Sink:

    try:
        if args.webhook is not None:
            return WebhookSink(args.webhook, timeout=args.delivery_timeout)
        return ExecSink(shlex.split(args.command), timeout=args.delivery_timeout)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Forward events until SIGTERM or Ctrl-C."""

    if args.queue < 1:
        raise CommandError("--queue must be at least 1", EXIT_USAGE)
    sink = _sink(args)
    endpoints: list[str] = args.endpoints or [ctx.config.events.endpoint]
    try:
        subscriber = EventSubscriber(endpoints, args.topics)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    forwarder = AlertForwarder(
        subscriber, sink, queue_size=args.queue, backoff_max=args.max_backoff
    )
    print(
        f"wemixvisor alert: forwarding {' '.join(args.topics) or 'all events'} from "
        f"{', '.join(endpoints)} to {sink.describe()}",
        file=sys.stderr,
        flush=True,
    )
    try:
        forwarder.run(stop)
    finally:
        subscriber.close()
    print(
        f"wemixvisor alert: {forwarder.forwarded} forwarded, {forwarder.failed} failed, "
        f"{forwarder.dropped} dropped, {forwarder.missed} events missed",
        file=sys.stderr,
    )
    return 0
