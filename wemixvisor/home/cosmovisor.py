"""A cosmovisor home moved to wemixvisor's layout (`wemixvisor init --from-cosmovisor DIR`).

Cosmovisor keeps `DIR/cosmovisor/genesis/bin/$DAEMON_NAME`, `DIR/cosmovisor/upgrades/<name>/bin/
$DAEMON_NAME` (with the plan's `upgrade-info.json`), an absolute `current` link and the pending
plan in `DIR/data/upgrade-info.json`; it reads DAEMON_HOME, DAEMON_NAME and the other variables
wemixvisor reads under the same names. Everything is checked before anything is made: a broken
link, a link leaving the cosmovisor tree, a name that is not a plain upgrade name, a file where a
directory belongs — each is an error naming the path. The new `wemixvisor/` directory is built
under a temporary name beside it and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from wemixvisor.home import state
from wemixvisor.home.fsutil import ReadRefused, atomic_write_bytes, fsync_dir, read_capped
from wemixvisor.home.layout import (
    GENESIS,
    UPGRADES,
    Home,
    LayoutError,
    check_binary,
    install_binary,
    make_dir,
    validate_upgrade_name,
)
from wemixvisor.plans.files import PLAN_FILE
from wemixvisor.plans.queue import (
    MAX_PLAN_BYTES,
    PlanError,
    PlanStatus,
    QueuedPlan,
    QueueState,
    encode_state,
    parse_plan,
)

__all__ = ["COSMOVISOR_DIR", "import_cosmovisor"]

COSMOVISOR_DIR = "cosmovisor"


@dataclass
class _Upgrade:
    name: str
    binary: Path | None
    info: bytes | None


@dataclass
class _Found:
    """What a cosmovisor home holds, checked."""

    genesis: Path
    upgrades: list[_Upgrade] = field(default_factory=list)
    current: str = GENESIS
    current_text: str | None = None
    plan_file: Path | None = None
    plan_bytes: bytes | None = None
    applied_plan: tuple[str, int] | None = None


def _inside(tree: Path, path: Path, what: str) -> Path:
    """`path` with its links resolved, which must stay inside `tree`; LayoutError otherwise."""
    if not os.path.lexists(path):
        raise LayoutError(f"{what} {path} does not exist")
    resolved = Path(os.path.realpath(path))
    if not os.path.exists(resolved):
        raise LayoutError(f"{what} {path} is a broken link")
    if not resolved.is_relative_to(tree):
        raise LayoutError(f"{what} {path} leads to {resolved}, outside {tree}")
    return resolved


def _directory(tree: Path, path: Path, what: str) -> Path:
    resolved = _inside(tree, path, what)
    if not resolved.is_dir():
        raise LayoutError(f"{what} {path} is not a directory")
    return resolved


def _binary(tree: Path, path: Path, what: str) -> Path:
    resolved = _inside(tree, path, what)
    check_binary(resolved)
    return resolved


def _small_file(tree: Path, path: Path, what: str) -> bytes:
    resolved = _inside(tree, path, what)
    try:
        return read_capped(resolved, MAX_PLAN_BYTES)
    except (ReadRefused, OSError) as exc:
        raise LayoutError(f"{what} {path}: {exc}") from None


def _scan(source: Path, name: str) -> _Found:
    tree = Path(os.path.realpath(source / COSMOVISOR_DIR))
    _directory(tree, source / COSMOVISOR_DIR, "cosmovisor directory")
    _directory(tree, tree / GENESIS / "bin", "genesis directory")
    genesis = _binary(tree, tree / GENESIS / "bin" / name, "genesis binary")
    found = _Found(genesis=genesis)
    upgrades_dir = tree / UPGRADES
    if os.path.lexists(upgrades_dir):
        _directory(tree, upgrades_dir, "upgrades directory")
        for entry in sorted(upgrades_dir.iterdir()):
            try:
                validate_upgrade_name(entry.name)
            except LayoutError as exc:
                raise LayoutError(f"{entry}: {exc}") from None
            _directory(tree, entry, "upgrade directory")
            binary: Path | None = None
            if os.path.lexists(entry / "bin"):
                _directory(tree, entry / "bin", "upgrade directory")
                if os.path.lexists(entry / "bin" / name):
                    binary = _binary(tree, entry / "bin" / name, "upgrade binary")
            info_path = entry / PLAN_FILE
            info = _small_file(tree, info_path, "plan copy") if os.path.lexists(info_path) else None
            found.upgrades.append(_Upgrade(entry.name, binary, info))
    link = tree / "current"
    if os.path.lexists(link):
        if not link.is_symlink():
            raise LayoutError(f"{link} is not a symlink to genesis or upgrades/<name>")
        found.current_text = os.readlink(link)
        target = _directory(tree, link, "current")
        relative = target.relative_to(tree).as_posix()
        usable = {GENESIS} | {
            f"{UPGRADES}/{u.name}" for u in found.upgrades if u.binary is not None
        }
        if relative not in usable:
            raise LayoutError(
                f"{link} points at {found.current_text}, which is not genesis or an upgrade "
                f"with a bin/{name}"
            )
        found.current = relative
    _scan_plan_file(source, found)
    return found


def _scan_plan_file(source: Path, found: _Found) -> None:
    """The pending plan of cosmovisor's data dir: a plan `current` already runs was applied."""
    path = source / "data" / PLAN_FILE
    if not os.path.lexists(path):
        return
    raw = _small_file(Path(os.path.realpath(source / "data")), path, "plan file")
    try:
        plan = parse_plan(raw, "file")
    except PlanError as exc:
        raise LayoutError(f"plan file {path}: {exc}") from None
    if found.current == f"{UPGRADES}/{plan.name}":
        found.applied_plan = (plan.name, plan.height)
    found.plan_file, found.plan_bytes = path, raw


def _place(source: Path, dest: Path, final: Path, lines: list[str]) -> None:
    """Hard-link `source` as `dest` (shown as `final`), or copy it across file systems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError as exc:
        install_binary(source, dest)
        lines.append(f"copied {source} to {final} (no hard link: {exc.strerror or exc})")
    else:
        lines.append(f"linked {source} as {final}")


def _build(home: Home, found: _Found, build: Path, lines: list[str]) -> None:
    final = home.visor_dir

    def inside(path: Path) -> tuple[Path, Path]:
        relative = path.relative_to(final)
        return build / relative, final / relative

    _place(found.genesis, *inside(home.genesis_bin), lines)
    os.makedirs(build / UPGRADES, exist_ok=True)
    for upgrade in found.upgrades:
        if upgrade.binary is not None:
            _place(upgrade.binary, *inside(home.upgrade_bin(upgrade.name)), lines)
        else:
            lines.append(
                f"upgrade {upgrade.name} has no bin/{home.name}: add it with "
                f"`wemixvisor add-upgrade {upgrade.name} <binary>`"
            )
        os.makedirs(build / UPGRADES / upgrade.name, exist_ok=True)
        if upgrade.info is not None:
            dest, shown = inside(home.upgrade_dir(upgrade.name) / PLAN_FILE)
            atomic_write_bytes(dest, upgrade.info)
            lines.append(f"copied the plan of upgrade {upgrade.name} to {shown}")
    state_dir, _ = inside(home.state_dir)
    state_dir.mkdir(mode=0o700)
    if found.applied_plan is not None:
        name, height = found.applied_plan
        now = time.time()
        queue = QueueState(
            plans=[
                QueuedPlan(
                    plan=parse_plan(found.plan_bytes or b"", "file"),
                    status=PlanStatus.COMPLETED,
                    registered_at=now,
                    finished_at=now,
                    result="applied by cosmovisor",
                )
            ]
        )
        dest, shown = inside(state.queue_file(home))
        atomic_write_bytes(dest, encode_state(queue), mode=0o600)
        lines.append(f"recorded plan {name} at {height} as completed (current runs it) in {shown}")
    os.symlink(found.current, build / "current")
    text = f" (was {found.current_text})" if found.current_text is not None else ""
    lines.append(f"{final / 'current'} -> {found.current}{text}")


def _carry_plan_file(home: Home, found: _Found, lines: list[str]) -> None:
    if found.plan_file is None or found.plan_bytes is None or found.applied_plan is not None:
        return
    dest = home.data_dir / PLAN_FILE
    same_dir = os.path.realpath(found.plan_file.parent) == os.path.realpath(home.data_dir)
    if same_dir:
        lines.append(f"pending plan {found.plan_file} stays where it is: the daemon reads it")
        return
    if os.path.lexists(dest):
        lines.append(f"warning: {dest} exists; the pending plan in {found.plan_file} not copied")
        return
    atomic_write_bytes(dest, found.plan_bytes)
    lines.append(f"copied the pending plan {found.plan_file} to {dest}")


def import_cosmovisor(home: Home, source: Path) -> list[str]:
    """Build `home`'s wemixvisor layout from the cosmovisor home `source` (their DAEMON_HOME);
    what was done, one line per action. LayoutError, with nothing made, when the source is
    not a cosmovisor home this can take over or `home` already has a layout."""
    if not source.is_absolute():
        source = Path.cwd() / source
    if os.path.lexists(home.visor_dir):
        raise LayoutError(
            f"{home.visor_dir} already exists: --from-cosmovisor builds a new layout and never "
            "merges into one"
        )
    found = _scan(source, home.name)
    lines: list[str] = []
    make_dir(home.root, lines)
    build = home.root / f".wemixvisor.import-{secrets.token_hex(6)}"
    build.mkdir(mode=0o700)
    try:
        _build(home, found, build, lines)
        os.rename(build, home.visor_dir)
    except BaseException as exc:
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(exc, OSError):
            raise LayoutError(f"cannot build {home.visor_dir}: {exc}") from exc
        raise
    fsync_dir(home.root)
    lines.append(f"created {home.visor_dir} from {source / COSMOVISOR_DIR}")
    make_dir(home.logs_dir, lines)
    make_dir(home.data_dir, lines, mode=0o700)
    _carry_plan_file(home, found, lines)
    lines.append(
        f"environment: DAEMON_HOME={home.root} DAEMON_NAME={home.name}; cosmovisor's "
        "DAEMON_* and UNSAFE_SKIP_BACKUP variables are read under the same names"
    )
    return lines
