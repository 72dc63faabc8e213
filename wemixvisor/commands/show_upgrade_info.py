"""`wemixvisor show-upgrade-info`: the upgrade-info.json files, as cosmovisor shows them.

Two places hold one: the node's data dir (the plan trigger file) and the directory `current`
points at (the copy of the plan written when that upgrade became current). Both are printed as
one JSON object: `{"data": {"path", "upgrade_info"} | null, "current": {...} | null}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from wemixvisor.commands.common import EXIT_FAILURE, EXIT_OK, CliContext
from wemixvisor.home.layout import Home, LayoutError, read_current
from wemixvisor.plans.files import PLAN_FILE, plan_file, read_capped
from wemixvisor.plans.queue import PlanError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `show-upgrade-info` verb."""
    parser = subparsers.add_parser(
        "show-upgrade-info",
        help="print the upgrade-info.json of the data dir and of the current upgrade",
        description=(
            "Print, as one JSON object, $DAEMON_DATA_DIR/upgrade-info.json (key `data`) and the "
            "upgrade-info.json beside the current binary (key `current`); with neither, say so "
            "(exit 0; exit 1 when one exists but cannot be read)."
        ),
    )
    parser.set_defaults(handler=run_show_upgrade_info)


def _read(path: Path) -> tuple[Any, str | None]:
    """The decoded file (None if absent) and, if it cannot be shown, why."""
    try:
        raw = read_capped(path)
    except FileNotFoundError:
        return None, None
    except PlanError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return msgspec.json.decode(raw), None
    except (msgspec.DecodeError, RecursionError):
        return None, f"{path} is not valid JSON"


def run_show_upgrade_info(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print both files; exit 1 only when one exists but cannot be read and the other is absent."""

    home = Home.from_config(ctx.config)
    places: dict[str, Path | None] = {"data": plan_file(home.data_dir)}
    target: str | None = None
    try:
        current = read_current(home)
    except LayoutError as exc:
        print(f"wemixvisor: {exc}", file=sys.stderr)
        places["current"] = None
    else:
        target = current.target
        places["current"] = current.directory / PLAN_FILE
    document: dict[str, Any] = {}
    problems: list[str] = []
    for key, path in places.items():
        if path is None:
            document[key] = None
            continue
        info, error = _read(path)
        if error is not None:
            problems.append(error)
        if info is None:
            document[key] = None
            continue
        shown: dict[str, Any] = {"path": str(path), "upgrade_info": info}
        if key == "current":
            shown["target"] = target
        document[key] = shown
    for problem in problems:
        print(f"wemixvisor: {problem}", file=sys.stderr)
    if document["data"] is None and document["current"] is None:
        # No plan pending and none applied yet is a normal state, not a failure.
        where = " and ".join(str(path) for path in places.values() if path is not None)
        print(f"no upgrade-info.json (looked in {where})")
        return EXIT_FAILURE if problems else EXIT_OK
    print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
    return EXIT_OK
