"""Preflight checks of a plan (SPEC §5): everything that can be known hours before H.

`quick` checks are stat calls only, cheap enough to repeat at H itself right before the node is
stopped: the node is never stopped for an upgrade that cannot start.
"""

from __future__ import annotations

from pathlib import Path

from wemixvisor.config import Config
from wemixvisor.layout import Home, LayoutError, check_binary
from wemixvisor.plans import Plan
from wemixvisor.process import detect_version


def custom_preupgrade_path(home: Home, config: Config) -> Path | None:
    """The configured custom pre-upgrade script, or None when there is none."""
    name = config.upgrade.custom_preupgrade
    return home.visor_dir / name if name else None


def check_plan(home: Home, config: Config, plan: Plan, *, quick: bool = False) -> list[str]:
    """Problems that would make the upgrade fail; an empty list means ready.

    Without `quick`, the new binary is also run (`version`, else `--version`) to prove it
    executes on this machine.
    """
    problems: list[str] = []
    try:
        binary = home.upgrade_bin(plan.name)
    except LayoutError as exc:
        return [str(exc)]
    try:
        check_binary(binary)
    except LayoutError as exc:
        problems.append(f"new binary: {exc}")
    else:
        if not quick and detect_version(binary) is None:
            problems.append(
                f"new binary {binary} reports no version (`version` or `--version` failed)"
            )
    script = custom_preupgrade_path(home, config)
    if script is not None:
        try:
            check_binary(script)
        except LayoutError as exc:
            problems.append(f"custom pre-upgrade script: {exc}")
    return problems
