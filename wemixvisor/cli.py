"""The `wemixvisor` operator tool: one argparse front end over the modules in `commands/`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from loguru import logger

from wemixvisor.commands import (
    add_upgrade,
    alert,
    backup,
    completion,
    config,
    events,
    governance,
    init,
    keys,
    logs,
    node_control,
    run,
    show_upgrade_info,
    status,
    upgrade,
    version,
    web,
)
from wemixvisor.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    CliContext,
    Command,
    CommandError,
)
from wemixvisor.config import ConfigError

COMMANDS: tuple[Command, ...] = (
    init,
    add_upgrade,
    run,
    events,
    config,
    version,
    upgrade,
    show_upgrade_info,
    status,
    node_control,
    logs,
    backup,
    alert,
    keys,
    governance,
    web,
    completion,
)
"""Every verb, in the order `--help` lists them."""


def _parse_set(value: str) -> tuple[str, str]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects section.key=value, got {value!r}")
    return key.strip(), raw


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each verb registers itself from its module in `commands/`."""
    parser = argparse.ArgumentParser(
        prog="wemixvisor",
        description="Run a WBFT node and upgrade its binary at an agreed block height.",
    )
    parser.add_argument("--home", help="DAEMON_HOME (absolute path); overrides the environment")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        type=_parse_set,
        metavar="SECTION.KEY=VALUE",
        help="override one configuration key, e.g. --set node.max_restarts=3 (repeatable)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


_GLOBAL_OPTIONS_WITH_VALUE = ("--home", "--set")


def split_node_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` cut after a `run` verb: (wemixvisor's own arguments, the node's arguments).

    Everything after `run` belongs to the node verbatim, options included (cosmovisor's `run
    arg1 arg2`), so argparse never sees it; wemixvisor's options go before the verb. Without a
    `run` verb, the node's part is empty.
    """
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _GLOBAL_OPTIONS_WITH_VALUE:
            index += 2
        elif word.startswith("-"):
            index += 1  # --home=X, --set=K=V, -h: one word
        else:
            if word == "run":
                return list(argv[: index + 1]), list(argv[index + 1 :])
            break
    return list(argv), []


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the reader of the pipe is gone, and what is still buffered
    must not fail again at exit."""
    try:
        stdout = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file (captured output)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stdout)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    own, node_args = split_node_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if args.command == "run":
        args.node_args = node_args
    else:
        # The operator tool prints its own results; library chatter (reconnects, etc.) only
        # when something is wrong. The daemon (`run`) sets up its own logging.
        logger.remove()
        logger.add(sys.stderr, level="WARNING", format="wemixvisor: {level}: {message}")
    env = dict(os.environ)
    if args.home is not None:
        env["DAEMON_HOME"] = args.home
    ctx = CliContext(
        env=env,
        overrides=dict(args.settings),
        talks_to_daemon=getattr(args, "talks_to_daemon", False),
    )
    code: int = EXIT_OK
    try:
        code = int(args.handler(args, ctx))
        # Inside the try: a reader that went away (`status | head -1`) is seen here, not as
        # a traceback when the interpreter flushes at exit.
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return code
    except ConfigError as exc:
        print(f"wemixvisor: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"wemixvisor: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
