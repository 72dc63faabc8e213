"""What the operator tool's socket verbs share: the client, exit codes, and printing a result.

Exit codes (SPEC §12): 0 ok, 1 an error reply, 3 no daemon answering (the message names the
endpoint; the wait is bounded by `--timeout`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import msgspec

from wemixvisor.control import client_for
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.control.verbs import VERBS
from wemixvisor.ipc import EndpointError

if TYPE_CHECKING:
    from wemixvisor.cli import CliContext

__all__ = [
    "DEFAULT_TIMEOUT",
    "add_timeout_argument",
    "call",
    "open_client",
    "print_result",
    "request",
    "seconds",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds the operator tool waits for a reply before it says the daemon is unreachable."""


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 2.5, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds greater than 0, got {text!r}")
    return value


def add_timeout_argument(parser: argparse.ArgumentParser) -> None:
    """`--timeout SECONDS`: how long to wait for the daemon's reply."""
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"wait this long for the daemon's reply, then exit 3 (default {DEFAULT_TIMEOUT:g})",
    )


def open_client(ctx: CliContext, timeout: float) -> ControlClient:
    """A client of the daemon of this home (CURVE keys from the home for a tcp endpoint)."""
    from wemixvisor.cli import EXIT_FAILURE, CommandError  # noqa: PLC0415

    try:
        return client_for(ctx.config, timeout)
    except EndpointError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None


def request(client: ControlClient, payload: dict[str, Any]) -> Any:
    """One request; an error reply is exit 1, no answer exit 3 (as CommandError)."""
    from wemixvisor.cli import EXIT_FAILURE, EXIT_UNREACHABLE, CommandError  # noqa: PLC0415

    try:
        return client.request(payload)
    except ControlUnreachable as exc:
        raise CommandError(str(exc), EXIT_UNREACHABLE) from None
    except ControlError as exc:
        raise CommandError(f"{exc.code}: {exc.message}", EXIT_FAILURE) from None


def call(ctx: CliContext, payload: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Send one request to the daemon of this home and return its result."""
    with open_client(ctx, timeout) as client:
        return request(client, payload)


def print_result(verb: str, result: Any, *, as_json: bool) -> None:
    """The result as one JSON object, or as the verb renders it for people."""
    if as_json:
        print(msgspec.json.encode(result).decode())
    else:
        print(VERBS[verb].render(result))
