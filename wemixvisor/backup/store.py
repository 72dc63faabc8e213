"""Making backups of the node's data directory (SPEC §7), and retention.

A full backup mirrors the data dir (`backup.copy`) into a new backup directory whose manifest
(`backup.manifest`) is marked complete last. An upgrade backup is pre-staged while the node runs
and mirrored again after the node stopped at H, when only the files the node changed meanwhile
are copied. Pruning keeps the newest complete backups and whatever an upgrade still needs.

The backup package's public names are re-exported here: callers import this one module.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wemixvisor.backup.copy import (
    Delta,
    Progress,
    StageResult,
    plan_delta,
    require_match,
    scan,
    stage,
    tree_bytes,
    verify_against,
)
from wemixvisor.backup.errors import BackupBusy, BackupCancelled, BackupError, BackupNotFound
from wemixvisor.backup.manifest import (
    DATA,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    backup_dir,
    backup_id,
    check_label,
    find_plan_backup,
    list_backups,
    load_manifest,
    new_backup_id,
    read_manifest,
    upgrade_label,
    write_manifest,
)
from wemixvisor.backup.restore import restore_backup
from wemixvisor.backup.space import SPACE_FACTOR, check_space, free_bytes
from wemixvisor.home import state
from wemixvisor.home.fsutil import fsync_dir
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.plans.queue import PlanError, PlanStatus

__all__ = [
    "DATA",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "SPACE_FACTOR",
    "BackupBusy",
    "BackupCancelled",
    "BackupError",
    "BackupNotFound",
    "Delta",
    "Manifest",
    "ManifestEntry",
    "Progress",
    "StageResult",
    "backup_dir",
    "backup_id",
    "check_space",
    "choose_prune",
    "complete_backup",
    "create_backup",
    "finish_upgrade_backup",
    "free_bytes",
    "list_backups",
    "load_manifest",
    "new_backup_id",
    "plan_delta",
    "prestage_upgrade_backup",
    "protected_backups",
    "prune_backups",
    "read_manifest",
    "restore_backup",
    "scan",
    "stage",
    "start_backup",
    "tree_bytes",
    "upgrade_label",
    "upgrade_space_problem",
    "verify_against",
]


def upgrade_space_problem(
    data_dir: Path, backups_dir: Path, plan_name: str, *, available: int | None = None
) -> str | None:
    """Why the backup of upgrade `plan_name` would not fit, or None when it fits.

    What has to be copied is the data dir's size minus what is already pre-staged for the plan;
    only stat calls, cheap enough to run at H right before the node is stopped.
    """
    if not data_dir.is_dir():
        return None
    data_bytes = tree_bytes(data_dir)
    staged = 0
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is not None:
        staged = found[1].total_bytes
    needed = max(data_bytes - staged, 0)
    available = free_bytes(backups_dir) if available is None else available
    want = int(needed * SPACE_FACTOR)
    if available >= want:
        return None
    return (
        f"not enough free space for the backup in {backups_dir}: need {want} bytes (1.1 x "
        f"{needed} to copy: {data_bytes} bytes of data, {staged} already pre-staged), "
        f"{available} available"
    )


def _write_incomplete(
    target: Path,
    *,
    label: str,
    source: Path,
    kind: str,
    plan: str | None,
    created_at: float | None = None,
    total_bytes: int = 0,
    changed_bytes: int = 0,
    seconds: float = 0.0,
) -> None:
    """Write the manifest of a backup that is not (or no longer) complete: it lists no entries,
    so it is never restored; `total_bytes` is what is staged so far."""
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time() if created_at is None else created_at,
        source=str(source),
        entries=[],
        total_bytes=total_bytes,
        file_count=0,
        kind=kind,
        plan=plan,
        changed_bytes=changed_bytes,
        seconds=seconds,
    )
    write_manifest(target, manifest)


def start_backup(
    backups_dir: Path,
    backup_id: str,
    *,
    label: str,
    source: Path,
    kind: str = "full",
    plan: str | None = None,
) -> Path:
    """Create the backup directory with an incomplete manifest; return the directory."""
    check_label(label)
    backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = backups_dir / backup_id
    target.mkdir(mode=0o700)
    _write_incomplete(target, label=label, source=source, kind=kind, plan=plan)
    return target


def complete_backup(
    target: Path,
    result: StageResult,
    *,
    label: str,
    source: Path,
    kind: str = "full",
    plan: str | None = None,
    seconds: float | None = None,
) -> Manifest:
    """Check the copy against what was scanned and write the complete manifest, last."""
    require_match(target / DATA, result.entries, f"the copy in {target.name}")
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time(),
        source=str(source),
        entries=result.entries,
        total_bytes=result.total_bytes,
        file_count=sum(1 for entry in result.entries if entry.kind == "file"),
        complete=True,
        kind=kind,
        plan=plan,
        changed_bytes=result.changed_bytes,
        seconds=result.seconds if seconds is None else seconds,
    )
    write_manifest(target, manifest)
    return manifest


def create_backup(
    data_dir: Path,
    backups_dir: Path,
    label: str,
    *,
    backup_id: str | None = None,
    quiesce: Callable[[], None] | None = None,
    resume: Callable[[], None] | None = None,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> Manifest:
    """A full backup of `data_dir`; its manifest.

    Without `quiesce` nobody may write to the data dir meanwhile (the node is stopped). With it,
    the node runs: the bulk is copied live, then `quiesce()` stops the node, only what changed
    meanwhile is copied, and `resume()` (always called once `quiesce` was) starts it again,
    so the node is down for the changed bytes only and the backup is consistent. `on_target`
    learns the backup's directory once it exists, before the copy starts.
    """
    check_label(label)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    # The space is checked before anything is created: a backup that cannot fit leaves nothing.
    check_space(backups_dir, tree_bytes(data_dir), available)
    ident = backup_id or new_backup_id(backups_dir, label)
    target = start_backup(backups_dir, ident, label=label, source=data_dir)
    on_target(target)

    def mirror(live: bool) -> StageResult:
        return stage(
            data_dir,
            target / DATA,
            live=live,
            space_dir=backups_dir,
            progress=progress,
            cancel=cancel,
            available=available,
        )

    if quiesce is None:
        result = mirror(live=False)
    else:
        bulk = mirror(live=True)
        try:
            quiesce()
            result = mirror(live=False)
        finally:
            if resume is not None:
                resume()
        result = StageResult(
            result.entries,
            result.total_bytes,
            bulk.changed_bytes + result.changed_bytes,
            result.seconds,
        )
    return complete_backup(
        target, result, label=label, source=data_dir, seconds=time.monotonic() - began
    )


def prestage_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> tuple[Path, StageResult]:
    """Copy the data dir of a running node into the plan's staging backup (incomplete).

    A staging backup left by an earlier call (or an earlier daemon) is refreshed: only what
    changed since is copied. `on_target` learns the directory before the copy starts.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None:
        check_space(backups_dir, tree_bytes(data_dir), available)
        target = start_backup(
            backups_dir,
            new_backup_id(backups_dir, label),
            label=label,
            source=data_dir,
            kind="upgrade",
            plan=plan_name,
        )
    else:
        target = found[0]
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=True,
        space_dir=backups_dir,
        progress=progress,
        cancel=cancel,
        available=available,
    )
    # Still incomplete; the staged size serves the space check at H. The entries stay out: the
    # copy of a running node is described by the copy itself, which the next mirror scans.
    _write_incomplete(
        target,
        label=label,
        source=data_dir,
        kind="upgrade",
        plan=plan_name,
        total_bytes=result.total_bytes,
        changed_bytes=result.changed_bytes,
        seconds=result.seconds,
    )
    return target, result


def finish_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    since: float = 0.0,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> Manifest:
    """The node is stopped at H: bring the plan's pre-staged copy up to date and complete it.

    Only files changed since the pre-staging are copied, deleted ones removed; the result is
    renamed to the time of H and equals the stopped data dir. Without a staged copy this is a
    full copy. A complete backup of the plan made at or after `since` (an upgrade resumed after
    its backup had completed) is reused as the staged copy.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None and since > 0:
        found = find_plan_backup(backups_dir, plan_name, complete=True, since=since)
    ident = new_backup_id(backups_dir, label)
    if found is None:
        check_space(backups_dir, tree_bytes(data_dir), available)
        target = start_backup(
            backups_dir, ident, label=label, source=data_dir, kind="upgrade", plan=plan_name
        )
    else:
        staged = found[0]
        if found[1].complete:
            # About to change: it must not stay marked complete while it does.
            _write_incomplete(
                staged,
                label=label,
                source=data_dir,
                kind="upgrade",
                plan=plan_name,
                created_at=found[1].created_at,
                total_bytes=found[1].total_bytes,
            )
        target = backups_dir / ident
        # Made durable with the copy, before the manifest: a rename lost in a crash leaves the
        # staging copy under its old name, where the next attempt finds it all the same.
        os.rename(staged, target)
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=False,
        space_dir=backups_dir,
        progress=progress,
        available=available,
    )
    return complete_backup(
        target,
        result,
        label=label,
        source=data_dir,
        kind="upgrade",
        plan=plan_name,
        seconds=time.monotonic() - began,
    )


def protected_backups(home: Home, backups_dir: Path) -> set[str]:
    """Backups nothing may prune: the one an unfinished journal names, and the staging copy of
    every plan still pending or running. BackupError when the daemon's state is unreadable
    (then nobody can tell what is needed)."""
    try:
        journal = state.read_journal(home)
        rollback = state.read_rollback(home)
        queue = state.read_queue(home)
    except PlanError as exc:
        raise BackupError(f"not pruning: {exc}") from None
    protected: set[str] = set()
    active = {
        entry.plan.name
        for entry in queue.plans
        if entry.status in (PlanStatus.PENDING, PlanStatus.RUNNING)
    }
    if rollback is not None and isinstance(rollback.get("backup"), str):
        protected.add(rollback["backup"])  # an operator's rollback in progress restores it
    if journal is not None:
        named = journal.get("backup")
        if isinstance(named, str):
            protected.add(named)
        plan = journal.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("name"), str):
            active.add(plan["name"])
    for info in list_backups(backups_dir):
        if not info.complete and info.plan in active:
            protected.add(info.id)
    return protected


def choose_prune(backups: list[BackupInfo], keep: int, protected: set[str]) -> list[str]:
    """Ids to remove: every incomplete backup and all complete ones but the `keep` newest,
    except the protected ones."""
    complete = sorted(
        (info for info in backups if info.complete),
        key=lambda info: (info.created_at, info.id),
        reverse=True,
    )
    doomed = [info.id for info in complete[max(keep, 0) :]]
    doomed += [info.id for info in backups if not info.complete]
    return sorted(ident for ident in doomed if ident not in protected)


def prune_backups(backups_dir: Path, keep: int, protected: set[str]) -> list[str]:
    """Apply `choose_prune` to the backups on disk; the ids removed."""
    removed: list[str] = []
    for ident in choose_prune(list_backups(backups_dir), keep, protected):
        shutil.rmtree(backups_dir / ident)
        removed.append(ident)
    if removed:
        fsync_dir(backups_dir)
    return removed
