"""`wemixvisor events [PREFIX...]`: tail the events of one or many daemons, one line each.

Text lines read `HH:MM:SS.mmm topic seq=N key=value ...`; `--json` prints each event's JSON
object instead. Missed events (a gap in a daemon's `seq`) are reported on stderr.

`--since SEQ` (and `--since-run RUN_ID`) first replays the daemon's event journal from there
(through its `events` control verb), then follows live with no gap and no repeat
(`events.follow`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from wemixvisor.commands.common import (
    DEFAULT_TIMEOUT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliContext,
    CommandError,
    command_error,
    open_client,
    seconds,
)
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.events.follow import EventFollower, journal_pages
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent

# Envelope keys left out of text lines: the time and topic lead the line already, the run is
# named in gap warnings.
_HIDDEN_KEYS = frozenset({"topic", "run_id", "ts"})

# Without --timeout, say once on stderr that nothing answers rather than wait in silence.
_UNREACHABLE_NOTE_AFTER = 5.0

_encode_json = msgspec.json.Encoder().encode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `events` verb."""
    parser = subparsers.add_parser(
        "events",
        help="tail events of one or many daemons",
        description=(
            "Print the daemon's events as they happen, one line each. Events published before "
            "this command connected are shown only with --since/--since-run, replayed from the "
            "daemon's event journal."
        ),
    )
    parser.add_argument(
        "prefixes",
        nargs="*",
        metavar="PREFIX",
        help="only topics starting with one of these, e.g. node. upgrade. (default: all)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print each event as one JSON object per line"
    )
    parser.add_argument(
        "--connect",
        dest="endpoints",
        action="append",
        metavar="ENDPOINT",
        help="events endpoint of a daemon, repeatable (default: events.endpoint of this home)",
    )
    parser.add_argument(
        "--since",
        type=_positive_int,
        metavar="SEQ",
        help="first replay the journal from this seq (of the newest run, or of --since-run)",
    )
    parser.add_argument(
        "--since-run",
        metavar="RUN_ID",
        help="the daemon run --since counts in (default: the newest run in the journal)",
    )
    parser.add_argument(
        "--control",
        metavar="ENDPOINT",
        help="control endpoint of the daemon whose journal --since replays "
        "(default: control.endpoint of this home)",
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="exit after N events")
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="exit after SECONDS without an event (exit 3 if none arrived at all)",
    )
    parser.set_defaults(handler=handle, talks_to_daemon=True)


def handle(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print events until --count is reached, --timeout passes idle, or Ctrl-C."""
    # cli imports this module (via commands/__init__), so cli is imported at call time.

    endpoints: list[str] = args.endpoints or [ctx.config.events.endpoint]
    replaying = args.since is not None or args.since_run is not None
    if replaying and len(endpoints) > 1:
        raise CommandError(
            "--since replays the journal of one daemon: give one --connect", EXIT_USAGE
        )
    try:
        subscriber = EventSubscriber(endpoints, () if replaying else args.prefixes)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    client: ControlClient | None = None
    receive: Callable[[float | None], ReceivedEvent | None] = subscriber.receive
    if replaying:
        client = (
            ControlClient(args.control, DEFAULT_TIMEOUT)
            if args.control
            else open_client(ctx, DEFAULT_TIMEOUT)
        )
        follower = EventFollower(
            journal_pages(client),
            subscriber,
            since=args.since,
            since_run=args.since_run,
            prefixes=args.prefixes,
        )
        receive = _replay_errors(follower.receive)
    shown = 0
    idle_since = time.monotonic()
    note_due: float | None = idle_since + _UNREACHABLE_NOTE_AFTER
    try:
        while args.count is None or shown < args.count:
            waits = [] if note_due is None else [note_due - time.monotonic()]
            if args.timeout is not None:
                waits.append(idle_since + args.timeout - time.monotonic())
            event = receive(min(waits) if waits else None)
            if event is None:
                now = time.monotonic()
                if note_due is not None and now >= note_due:
                    note_due = None
                    _note_unreachable(subscriber)
                if args.timeout is not None and now >= idle_since + args.timeout:
                    if shown:
                        return EXIT_OK
                    raise CommandError(_silence_message(subscriber, args.timeout), EXIT_UNREACHABLE)
                continue
            idle_since = time.monotonic()
            note_due = None
            if event.gap:
                print(
                    f"wemixvisor events: missed {event.gap} events (run {event.run_id[:8]})",
                    file=sys.stderr,
                    flush=True,
                )
            line = event.to_json().decode() if args.json else format_event(event)
            # Flushed per line: the output is typically piped into another tool.
            print(line, flush=True)
            shown += 1
    except BrokenPipeError:
        # The reader went away (`| head`): the normal end of a pipeline, not an error.
        _silence_stdout()
    finally:
        subscriber.close()
        if client is not None:
            client.close()
    return EXIT_OK


def _replay_errors(
    receive: Callable[[float | None], ReceivedEvent | None],
) -> Callable[[float | None], ReceivedEvent | None]:
    """`receive`, with a journal that cannot be replayed as the operator's error."""

    def guarded(timeout: float | None) -> ReceivedEvent | None:
        try:
            return receive(timeout)
        except ControlUnreachable as exc:
            raise CommandError(f"cannot replay the journal: {exc}", EXIT_UNREACHABLE) from None
        except ControlError as exc:
            raise command_error(exc) from None

    return guarded


def format_event(event: ReceivedEvent) -> str:
    """`HH:MM:SS.mmm topic seq=N key=value ...` in local time; strings quoted when needed."""
    try:
        clock = datetime.fromtimestamp(event.ts).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):  # a ts no clock can show
        clock = "??:??:??.???"
    fields = [f"{_text(key)}={_value(value)}" for key, value in _shown_fields(event.payload)]
    return " ".join([clock, _text(event.topic), *fields])


def _shown_fields(payload: dict[str, Any]) -> list[tuple[str, Any]]:
    fields = [("seq", payload["seq"])]
    fields += [(k, v) for k, v in payload.items() if k not in _HIDDEN_KEYS and k != "seq"]
    return fields


def _value(value: Any) -> str:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")  # milliseconds are enough to read
    encoded = _encode_json(value).decode()
    # Numbers, booleans, null and compact lists read best as bare JSON.
    if encoded.isprintable() and not any(c.isspace() for c in encoded):
        return encoded
    return _text(encoded)


def _text(text: str) -> str:
    """`text` as is when it is a plain token, else double-quoted with escapes.

    Events come from another process: control characters are escaped so that nothing in a
    payload can drive the operator's terminal.
    """
    if text and text.isprintable() and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char.isprintable() and (char == " " or not char.isspace()):
            escaped.append(char)
        elif ord(char) <= 0xFFFF:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(f"\\U{ord(char):08x}")
    return '"' + "".join(escaped) + '"'


def _note_unreachable(subscriber: EventSubscriber) -> None:
    silent = [ep for ep in subscriber.endpoints if ep not in subscriber.connected]
    if silent:
        print(
            f"wemixvisor events: no daemon answering at {', '.join(silent)} yet; still waiting",
            file=sys.stderr,
            flush=True,
        )


def _silence_message(subscriber: EventSubscriber, timeout: float) -> str:
    message = f"no events from {', '.join(subscriber.endpoints)} within {timeout:g}s"
    never = [ep for ep in subscriber.endpoints if ep not in subscriber.ever_connected]
    if len(never) == len(subscriber.endpoints):
        message += ": no daemon answered"
    elif never:
        message += f" (no daemon answered at {', '.join(never)})"
    return message


def _silence_stdout() -> None:
    # Point stdout at /dev/null so the interpreter's final flush does not fail again.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value
