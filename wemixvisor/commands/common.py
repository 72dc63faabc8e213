"""What every operator verb shares: its context, exit codes, errors, and the daemon client.

Exit codes (SPEC §12): 0 ok, 1 an error reply, 3 no daemon answering (the message names the
endpoint; the wait is bounded by `--timeout`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import msgspec

from wemixvisor.config import Config, ConfigError, load_config
from wemixvisor.control import client_for
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError, Request
from wemixvisor.control.verbs import OfflineContext, Verb
from wemixvisor.home.ipc import EndpointError
from wemixvisor.home.layout import Home, LayoutError
from wemixvisor.home.state import (
    daemon_pid,
    daemon_record_file,
    daemon_running,
    read_daemon_record,
)
from wemixvisor.plans.queue import PlanError

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
    "ask_daemon",
    "call",
    "command_error",
    "daemon_runs",
    "open_client",
    "print_reply",
    "print_text",
    "request",
    "run_offline",
    "seconds",
    "warn_fall_back",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

Req = TypeVar("Req", bound=Request)
Rep = TypeVar("Rep", bound=msgspec.Struct)


class CommandError(Exception):
    """A command failed in a way the operator must read; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class CliContext:
    """What every command gets: the global flags and a lazily loaded configuration.

    `talks_to_daemon` marks a verb that only asks the running daemon (status, logs, events…):
    for it a broken config.toml is a warning, and the daemon is found through the endpoints it
    recorded at start (`state/daemon.json`), so the operator is never locked out of it.
    """

    env: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)
    talks_to_daemon: bool = False

    @cached_property
    def config(self) -> Config:
        """Configuration from flags > environment > config.toml > defaults."""
        try:
            return load_config(env=self.env, overrides=self.overrides)
        except ConfigError as exc:
            if not self.talks_to_daemon:
                raise
            return self._daemon_config(exc)

    def _daemon_config(self, error: ConfigError) -> Config:
        """Flags, environment and defaults without config.toml, with the running daemon's
        recorded endpoints; `error` again when even that cannot be loaded."""
        try:
            config = load_config(env=self.env, overrides=self.overrides, read_file=False)
        except ConfigError:
            raise error from None
        try:
            home = Home.from_config(config)
        except LayoutError:
            raise error from None
        print(f"wemixvisor: warning: {error}", file=sys.stderr)
        try:
            record = read_daemon_record(home) if daemon_running(home) else None
        except (PlanError, OSError) as exc:
            print(f"wemixvisor: warning: {exc}", file=sys.stderr)
            record = None
        if record is None or record.home != str(home.root):
            print(
                "wemixvisor: warning: config.toml left out: using the environment and defaults "
                "(no usable record of a running daemon)",
                file=sys.stderr,
            )
            return config
        print(
            f"wemixvisor: warning: using the endpoints daemon pid {record.pid} recorded in "
            f"{daemon_record_file(home)}",
            file=sys.stderr,
        )
        return msgspec.structs.replace(
            config,
            control=msgspec.structs.replace(config.control, endpoint=record.control_endpoint),
            events=msgspec.structs.replace(config.events, endpoint=record.events_endpoint),
        )


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


def command_error(exc: ControlError) -> CommandError:
    """The exit-1 error for a refusal, in the operator's words (the flag, not the field)."""
    message = exc.message.replace("send it with now=true", "use --now")
    return CommandError(f"{exc.code}: {message}", EXIT_FAILURE)


def request(client: ControlClient, verb: Verb[Any, Req, Rep], message: Req) -> Rep:
    """One request and its decoded reply; an error reply is exit 1, no answer exit 3 (as
    CommandError)."""
    try:
        return _reply(client, verb, message)
    except ControlUnreachable as exc:
        raise CommandError(str(exc), EXIT_UNREACHABLE) from None


def call(
    ctx: CliContext, verb: Verb[Any, Req, Rep], message: Req, timeout: float = DEFAULT_TIMEOUT
) -> Rep:
    """Send one request to the daemon of this home and return its decoded reply."""
    with open_client(ctx, timeout) as client:
        return request(client, verb, message)


def ask_daemon(
    ctx: CliContext, verb: Verb[Any, Req, Rep], message: Req, timeout: float = DEFAULT_TIMEOUT
) -> Rep:
    """The running daemon's reply; an error reply is exit 1 (CommandError). ControlUnreachable
    passes through: each command decides what a silent daemon means."""
    with open_client(ctx, timeout) as client:
        return _reply(client, verb, message)


def _reply(client: ControlClient, verb: Verb[Any, Req, Rep], message: Req) -> Rep:
    try:
        result = client.request(message)
    except ControlError as exc:
        raise command_error(exc) from None
    try:
        return verb.decode_reply(result)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None


def daemon_runs(home: Home) -> bool:
    """Whether a daemon holds the home's lock (False when the lock cannot be read)."""
    try:
        return daemon_running(home)
    except OSError:
        return False


def run_offline(
    ctx: CliContext,
    verb: Verb[Any, Req, Rep],
    message: Req,
    *,
    dry_run: bool = False,
    locked: str | None = None,
) -> tuple[Rep, OfflineContext]:
    """Carry out an offline verb on the home's files, as the daemon would; its reply and the
    context it ran in (closed by then). With `locked` (what to say when a daemon holds it), the
    daemon's lock is taken before anything is done. Warnings go to stderr; a refusal is exit 1."""
    if not verb.offline:
        raise CommandError(f"{verb.name} needs a running daemon", EXIT_UNREACHABLE)
    offline = OfflineContext(ctx.config, dry_run=dry_run)
    try:
        with offline:
            if locked is not None:
                offline.require_lock(locked)
            reply = verb.execute(offline, message)
    except ControlError as exc:
        raise command_error(exc) from None
    finally:
        if not dry_run:
            for warning in offline.warnings:
                print(f"wemixvisor: {warning}", file=sys.stderr)
    return reply, offline


def warn_fall_back(exc: ControlUnreachable, home: Home) -> None:
    """Say that the running daemon is silent and the files are used instead."""
    pid = daemon_pid(home)
    print(
        f"wemixvisor: daemon (pid {pid if pid is not None else '?'}) runs but {exc}; "
        "using the plan files",
        file=sys.stderr,
    )


def print_text(text: str) -> None:
    """Print what a verb rendered: on a terminal with tables and colour, else as it is."""
    if sys.stdout.isatty():
        # Imported here: rich only loads when a person reads the output.
        from wemixvisor.commands.terminal import show  # noqa: PLC0415

        show(text)
    else:
        print(text)


def print_reply(verb: Verb[Any, Any, Rep], reply: Rep, *, as_json: bool) -> None:
    """The reply as one JSON object, or as the verb renders it for people."""
    if as_json:
        print(msgspec.json.encode(reply).decode())
    else:
        print_text(verb.render(reply))
