"""What every operator verb shares: its context, exit codes, errors, and the daemon client.

Exit codes (SPEC §12): 0 ok, 1 an error reply, 3 no daemon answering (the message names the
endpoint; the wait is bounded by `--timeout`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import msgspec

from wemixvisor.config import Config, load_config
from wemixvisor.control import client_for
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.control.verbs import VERBS
from wemixvisor.home.ipc import EndpointError

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliContext",
    "Command",
    "CommandError",
    "add_timeout_argument",
    "call",
    "open_client",
    "print_result",
    "request",
    "seconds",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CommandError(Exception):
    """A command failed in a way the operator must read; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CliContext:
    """What every command gets: the global flags and a lazily loaded configuration."""

    env: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)

    @cached_property
    def config(self) -> Config:
        """Configuration from flags > environment > config.toml > defaults."""
        return load_config(env=self.env, overrides=self.overrides)


class Command(Protocol):
    """What `cli.build_parser` needs of a command module."""

    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add this verb's parser and set its `handler` default."""


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

    try:
        return client_for(ctx.config, timeout)
    except EndpointError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None


def request(client: ControlClient, payload: dict[str, Any]) -> Any:
    """One request; an error reply is exit 1, no answer exit 3 (as CommandError)."""

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
