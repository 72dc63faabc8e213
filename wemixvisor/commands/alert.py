"""`wemixvisor alert (--webhook URL | --exec CMD) [--topics PREFIX...]`: events to alerting.

Runs until SIGTERM or Ctrl-C. It follows the daemon's events socket (reconnecting when the
daemon restarts) and delivers each matching event as an alert, see `wemixvisor.events.alert`.
Following one daemon, it records the last event it delivered (`--cursor`) and, restarted,
replays what it missed from the daemon's event journal before following live events again.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from wemixvisor.commands.common import (
    DEFAULT_TIMEOUT,
    EXIT_USAGE,
    CliContext,
    CommandError,
    open_client,
    seconds,
)
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.events.alert import (
    AlertForwarder,
    DeliveryCursor,
    ExecSink,
    Receiver,
    Sink,
    WebhookSink,
)
from wemixvisor.events.follow import EventFollower, FetchPage, journal_pages
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent


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
        "--cursor",
        type=Path,
        metavar="FILE",
        help=(
            "where the last delivered event is recorded, to resume from after a restart "
            "(default: wemixvisor/alerts/<target>.json in the home; one daemon only)"
        ),
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
    cursor = _cursor(args, ctx, endpoints)
    position = cursor.load() if cursor is not None else None
    try:
        # A resumed forwarder replays every topic (gaps are judged on all of them) and filters
        # what it delivers itself.
        subscriber = EventSubscriber(endpoints, () if position else args.topics)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    source: Receiver = subscriber
    client: ControlClient | None = None
    if position is not None:
        client = open_client(ctx, DEFAULT_TIMEOUT)
        source = _resumed(journal_pages(client), subscriber, position, args.topics)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    forwarder = AlertForwarder(
        source, sink, queue_size=args.queue, backoff_max=args.max_backoff, cursor=cursor
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
        if client is not None:
            client.close()
    print(
        f"wemixvisor alert: {forwarder.forwarded} forwarded, {forwarder.failed} failed, "
        f"{forwarder.dropped} dropped, {forwarder.missed} events missed",
        file=sys.stderr,
    )
    return 0


def _cursor(
    args: argparse.Namespace, ctx: CliContext, endpoints: list[str]
) -> DeliveryCursor | None:
    """The cursor file of this forwarder: given, or one per target and topics in the home;
    none when following several daemons (a journal replay is one daemon's)."""
    if args.cursor is not None:
        return DeliveryCursor(args.cursor)
    if len(endpoints) > 1 or (args.endpoints and args.endpoints[0] != ctx.config.events.endpoint):
        return None
    target = args.webhook if args.webhook is not None else args.command
    key = hashlib.sha256("\0".join([target, *sorted(args.topics)]).encode()).hexdigest()[:16]
    return DeliveryCursor(ctx.config.home / "wemixvisor" / "alerts" / f"{key}.json")


def _resumed(
    fetch_page: FetchPage,
    subscriber: EventSubscriber,
    position: tuple[str, int],
    topics: list[str],
) -> Receiver:
    """A follower replaying from the event after `position`; when the journal no longer holds
    it (rotated away, another daemon's home), live events only, said on stderr."""
    run_id, seq = position
    follower = EventFollower(
        fetch_page, subscriber, since=seq + 1, since_run=run_id, prefixes=topics
    )

    class Guarded:
        def receive(self, timeout: float | None = None) -> ReceivedEvent | None:
            try:
                return follower.receive(timeout)
            except (ControlError, ControlUnreachable) as exc:
                print(
                    f"wemixvisor alert: cannot resume after run {run_id} seq {seq} ({exc}); "
                    "following live events",
                    file=sys.stderr,
                    flush=True,
                )
                self.receive = subscriber.receive  # type: ignore[method-assign]
                return subscriber.receive(timeout)

    return Guarded()
