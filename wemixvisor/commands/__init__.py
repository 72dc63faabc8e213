"""One module per operator verb; each exposes `register(subparsers)` and sets `handler`.

A handler has the signature `(args: argparse.Namespace, ctx: CliContext) -> int` (exit code).
"""

from __future__ import annotations

import argparse
from typing import Protocol

from wemixvisor.commands import (
    add_upgrade,
    alert,
    backup,
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
)


class Command(Protocol):
    """What `cli.build_parser` needs of a command module."""

    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add this verb's parser and set its `handler` default."""


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
)
