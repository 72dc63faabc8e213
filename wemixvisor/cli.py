"""The `wemixvisor` operator tool: one argparse front end over the modules in `commands/`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from loguru import logger

from wemixvisor.commands import COMMANDS
from wemixvisor.config import Config, ConfigError, load_config

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        # The operator tool prints its own results; library chatter (reconnects, etc.) only
        # when something is wrong. The daemon (`run`) sets up its own logging.
        logger.remove()
        logger.add(sys.stderr, level="WARNING", format="wemixvisor: {level}: {message}")
    env = dict(os.environ)
    if args.home is not None:
        env["DAEMON_HOME"] = args.home
    ctx = CliContext(env=env, overrides=dict(args.settings))
    try:
        code: int = args.handler(args, ctx)
    except ConfigError as exc:
        print(f"wemixvisor: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"wemixvisor: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def home_from_env(env: dict[str, str]) -> Path:
    """DAEMON_HOME as given (validated by the config loader), default ~/.wemixd."""
    return Path(env.get("DAEMON_HOME") or Path.home() / ".wemixd")


if __name__ == "__main__":
    sys.exit(main())
