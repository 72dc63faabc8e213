"""Making backups of the node's data directory (SPEC §7).

A full backup mirrors the data dir (`backup.copy`) into a new backup directory whose manifest
(`backup.manifest`) is marked complete last, written from the same pass that copied (no second
scan). An upgrade backup is pre-staged while the node runs and mirrored again after the node
stopped at H: the data dir is scanned once and compared with the record the pre-staging wrote
in the copy's manifest, so only the files the node changed meanwhile are touched.

The whole queue shares ONE pre-staged copy: it belongs to the next plan due and is relabelled
(renamed, never copied again) when another plan becomes next.

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
    scan,
    stage,
    sync_filesystem,
    tree_bytes,
    verify_against,
)
from wemixvisor.backup.errors import BackupBusy, BackupCancelled, BackupError, BackupNotFound
from wemixvisor.backup.index import (
    PRE_RESTORE,
    find_plan_backup,
    list_backups,
    list_set_aside,
    save_manifest,
    staged_record,
    staging_copies,
)
from wemixvisor.backup.manifest import (
    DATA,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    backup_dir,
    backup_id,
    check_label,
    load_manifest,
    new_backup_id,
    read_manifest,
    upgrade_label,
)
from wemixvisor.backup.restore import restore_backup
from wemixvisor.backup.retention import (
    check_backup_id,
    choose_prune,
    delete_backup,
    journal_needs,
    protected_backups,
    prune_backups,
)
from wemixvisor.backup.space import (
    SPACE_FACTOR,
    Free,
    check_space,
    free_bytes,
    free_space,
    space_problem,
)
from wemixvisor.home.fsutil import fsync_dir

__all__ = [
    "DATA",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "PRE_RESTORE",
    "SPACE_FACTOR",
    "BackupBusy",
    "BackupCancelled",
    "BackupError",
    "BackupNotFound",
    "DataUsage",
    "Delta",
    "Free",
    "Manifest",
    "ManifestEntry",
    "Progress",
    "StageResult",
    "backup_dir",
    "backup_id",
    "check_backup_id",
    "check_space",
    "choose_prune",
    "complete_backup",
    "create_backup",
    "delete_backup",
    "discard_staging",
    "finish_upgrade_backup",
    "free_bytes",
    "free_space",
    "journal_needs",
    "list_backups",
    "list_set_aside",
    "load_manifest",
    "new_backup_id",
    "plan_delta",
    "prestage_upgrade_backup",
    "protected_backups",
    "prune_backups",
    "read_manifest",
    "restore_backup",
    "scan",
    "space_problem",
    "stage",
    "staging_copies",
    "start_backup",
    "tree_bytes",
    "upgrade_label",
    "upgrade_space_problem",
    "verify_against",
]


class DataUsage:
    """Bytes and files of a data dir, from one scan (stat calls only)."""

    def __init__(self, data_dir: Path) -> None:
        entries = scan(data_dir) if data_dir.is_dir() else []
        files = [entry for entry in entries if entry.kind == "file"]
        self.bytes = sum(entry.size for entry in files)
        self.files = len(files)


def upgrade_space_problem(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    available: int | None = None,
    usage: DataUsage | None = None,
    free: Free | None = None,
) -> str | None:
    """Why the backup of upgrade `plan_name` would not fit (bytes or inodes), or None.

    What has to be copied is the data dir minus what is already pre-staged for the plan.
    `usage` and `free` give figures already measured (one scan serves every plan of a
    preflight round).
    """
    if not data_dir.is_dir():
        return None
    usage = DataUsage(data_dir) if usage is None else usage
    staged_bytes = staged_files = 0
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is not None:
        staged_bytes, staged_files = found[1].total_bytes, found[1].file_count
    return space_problem(
        backups_dir,
        max(usage.bytes - staged_bytes, 0),
        files=max(usage.files - staged_files, 0),
        available=available,
        free=free,
        detail=f"{usage.bytes} bytes in {usage.files} files of data, {staged_bytes} bytes "
        "already pre-staged",
    )


def _write_incomplete(
    target: Path,
    *,
    label: str,
    source: Path,
    kind: str,
    plan: str | None,
    created_at: float | None = None,
    result: StageResult | None = None,
) -> None:
    """Write the manifest of a backup that is not (or no longer) complete: never restored.

    With `result` it records what the copy holds (`staged`), which the next mirror trusts
    instead of scanning the copy; without, the next mirror scans it.
    """
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time() if created_at is None else created_at,
        source=str(source),
        entries=[] if result is None else result.staged,
        total_bytes=0 if result is None else result.total_bytes,
        file_count=0 if result is None else result.file_count,
        kind=kind,
        plan=plan,
        changed_bytes=0 if result is None else result.changed_bytes,
        seconds=0.0 if result is None else result.seconds,
        staged=result is not None,
    )
    save_manifest(target, manifest)


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
    stopped_seconds: float | None = None,
) -> Manifest:
    """Write the complete manifest, last, from the pass that made the copy (the copy is
    durable by then: `stage` flushed it)."""
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time(),
        source=str(source),
        entries=result.entries,
        total_bytes=result.total_bytes,
        file_count=result.file_count,
        complete=True,
        kind=kind,
        plan=plan,
        changed_bytes=result.changed_bytes,
        seconds=result.seconds if seconds is None else seconds,
        stopped_seconds=stopped_seconds,
    )
    # One flush of the filesystem (the copy's was flushed by `stage`) rather than two fsyncs.
    save_manifest(target, manifest, sync=sync_filesystem)
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
    so the node is down for the changed bytes only (`stopped_seconds` in the manifest).
    `on_target` learns the backup's directory once it exists, before the copy starts.
    Progress counts bytes of the data dir in the copy, over the data dir's bytes.
    """
    check_label(label)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    # The space is checked before anything is created: a backup that cannot fit leaves nothing.
    usage = DataUsage(data_dir)
    check_space(backups_dir, usage.bytes, available, files=usage.files)
    ident = backup_id or new_backup_id(backups_dir, label)
    target = start_backup(backups_dir, ident, label=label, source=data_dir)
    on_target(target)

    def mirror(live: bool, have: list[ManifestEntry] | None = None) -> StageResult:
        return stage(
            data_dir,
            target / DATA,
            live=live,
            space_dir=backups_dir,
            have=have,
            progress=progress,
            cancel=cancel,
            available=available,
        )

    stopped: float | None = None
    if quiesce is None:
        result = mirror(live=False)
    else:
        bulk = mirror(live=True)
        stop_began = time.monotonic()
        try:
            quiesce()
            last = mirror(live=False, have=bulk.staged)
        finally:
            if resume is not None:
                resume()
            stopped = time.monotonic() - stop_began
        result = StageResult(
            last.entries,
            last.staged,
            last.total_bytes,
            bulk.changed_bytes + last.changed_bytes,
            last.seconds,
        )
    return complete_backup(
        target,
        result,
        label=label,
        source=data_dir,
        seconds=time.monotonic() - began,
        stopped_seconds=stopped,
    )


def discard_staging(backups_dir: Path, *, keep: str | None, needed: set[str]) -> list[str]:
    """Remove the pre-staged copies of plans other than `keep`, except the `needed` ids; the
    ids removed."""
    removed: list[str] = []
    for path, summary in staging_copies(backups_dir):
        if summary.plan == keep or path.name in needed:
            continue
        shutil.rmtree(path)
        removed.append(path.name)
    if removed:
        fsync_dir(backups_dir)
    return removed


def _take_staging_copy(backups_dir: Path, data_dir: Path, plan_name: str) -> Path | None:
    """The one pre-staged copy, made the plan's: its own, else another plan's relabelled
    (renamed, its record kept). Other copies (left by older versions) are removed."""
    copies = staging_copies(backups_dir)
    mine = [path for path, summary in copies if summary.plan == plan_name]
    chosen = mine[0] if mine else (copies[0][0] if copies else None)
    for path, _ in copies:
        if path != chosen:
            shutil.rmtree(path)
    if chosen is None or mine:
        return chosen
    label = upgrade_label(plan_name)
    record = staged_record(chosen)
    target = backups_dir / new_backup_id(backups_dir, label)
    # A crash between the rename and the manifest leaves a copy whose manifest names another
    # directory: it is then scanned, not trusted.
    os.rename(chosen, target)
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time(),
        source=str(data_dir),
        entries=record or [],
        total_bytes=sum(e.size for e in record or [] if e.kind == "file"),
        file_count=sum(1 for e in record or [] if e.kind == "file"),
        kind="upgrade",
        plan=plan_name,
        staged=record is not None,
    )
    save_manifest(target, manifest)
    return target


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

    There is one staging copy at most: the plan's own is refreshed, another plan's is
    relabelled and refreshed (only what changed since is copied), and only without any is a
    new one made. `on_target` learns the directory before the copy starts.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    target = _take_staging_copy(backups_dir, data_dir, plan_name)
    record = None
    if target is None:
        usage = DataUsage(data_dir)
        check_space(backups_dir, usage.bytes, available, files=usage.files)
        target = start_backup(
            backups_dir,
            new_backup_id(backups_dir, label),
            label=label,
            source=data_dir,
            kind="upgrade",
            plan=plan_name,
        )
    else:
        record = staged_record(target)
        if record is not None:
            # The copy is about to change: its record must not outlive that if this stops.
            _write_incomplete(target, label=label, source=data_dir, kind="upgrade", plan=plan_name)
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=True,
        space_dir=backups_dir,
        have=record,
        progress=progress,
        cancel=cancel,
        available=available,
    )
    _write_incomplete(
        target, label=label, source=data_dir, kind="upgrade", plan=plan_name, result=result
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

    One scan of the data dir, compared with the pre-staging's record (size, mtime, inode):
    only files changed since are copied, deleted ones removed, then one flush of the
    filesystem and the complete manifest from the same pass. The result is renamed to the
    time of H and equals the stopped data dir. Without a staged copy this is a full copy.
    A complete backup of the plan made at or after `since` (an upgrade resumed after its
    backup had completed) is reused as the staged copy.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None and since > 0:
        found = find_plan_backup(backups_dir, plan_name, complete=True, since=since)
    ident = new_backup_id(backups_dir, label)
    record: list[ManifestEntry] | None = None
    if found is None:
        usage = DataUsage(data_dir)
        check_space(backups_dir, usage.bytes, available, files=usage.files)
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
            )
        else:
            record = staged_record(staged)
        target = backups_dir / ident
        # The manifest still names the old directory: a crash from here on leaves a copy that
        # the next attempt scans rather than trusts. Made durable with the copy.
        os.rename(staged, target)
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=False,
        space_dir=backups_dir,
        have=record,
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
