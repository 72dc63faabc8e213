"""Which arguments the node runs with: those of the binary `current` points at (SPEC §4).

A plan may carry `info.node_args`, or its upgrade directory a file `node-args` (one argument
per line): from the switch on, that binary runs with them instead of `[node] args` and the
`run` arguments (releases rename and retire flags). The arguments are a property of the target
directory, so the `current` link is their one owner: a switch gives the new binary its
arguments, a rollback (which points `current` back) gives the old binary its own again, and a
restarted daemon finds them where it finds the binary, with no second state file that could
disagree with the link. The plan's list is read from the plan copy the switch leaves beside
the binary (`upgrades/<name>/upgrade-info.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from wemixvisor.home.layout import GENESIS, Home, LayoutError
from wemixvisor.plans.files import read_capped
from wemixvisor.plans.queue import (
    MAX_NODE_ARGS_BYTES,
    PlanError,
    parse_node_args_file,
    parse_plan,
    validate_node_args,
)

__all__ = ["NODE_ARGS_FILE", "NodeArgsError", "args_for_target", "upgrade_node_args"]

NODE_ARGS_FILE: Final = "node-args"
"""`upgrades/<name>/node-args`: the operator's way to give a binary its arguments."""

_PLAN_COPY: Final = "upgrade-info.json"


class NodeArgsError(Exception):
    """The arguments of a binary cannot be known; the message says which file and why."""


def upgrade_node_args(directory: Path, info: dict[str, Any] | None) -> list[str] | None:
    """The arguments declared for the binary of the upgrade `directory`: its node-args file,
    else the plan's `info.node_args`; None when neither declares any. Both present and
    different is an error: the operator must say which one holds."""
    path = directory / NODE_ARGS_FILE
    from_file: list[str] | None = None
    try:
        from_file = parse_node_args_file(read_capped(path, MAX_NODE_ARGS_BYTES), str(path))
    except FileNotFoundError:
        pass
    except PlanError as exc:
        raise NodeArgsError(str(exc)) from None
    except OSError as exc:
        raise NodeArgsError(f"cannot read {path}: {exc.strerror or exc}") from None
    from_plan: list[str] | None = None
    if info is not None and "node_args" in info:
        try:
            from_plan = validate_node_args(info["node_args"])
        except PlanError as exc:
            raise NodeArgsError(str(exc)) from None
    if from_file is not None and from_plan is not None and from_file != from_plan:
        raise NodeArgsError(f"{path} and the plan's info.node_args disagree: keep one of them")
    return from_file if from_file is not None else from_plan


def _plan_info(directory: Path) -> dict[str, Any] | None:
    path = directory / _PLAN_COPY
    try:
        return parse_plan(read_capped(path), str(path)).info
    except FileNotFoundError:
        return None
    except PlanError as exc:
        raise NodeArgsError(f"{path}: {exc}") from None
    except OSError as exc:
        raise NodeArgsError(f"cannot read {path}: {exc.strerror or exc}") from None


def args_for_target(home: Home, target: str, configured: list[str]) -> list[str]:
    """The arguments the binary of `target` runs with: those declared in its upgrade directory,
    else `configured` (`[node] args` and the `run` arguments). NodeArgsError when a declaration
    is unreadable or invalid."""
    if target == GENESIS:
        return list(configured)
    try:
        directory = home.target_dir(target)
    except LayoutError as exc:
        raise NodeArgsError(str(exc)) from None
    declared = upgrade_node_args(directory, _plan_info(directory))
    return list(configured) if declared is None else declared
