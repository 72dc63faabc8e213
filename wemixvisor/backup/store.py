"""Making backups of the node's data directory (SPEC §7).

A full backup mirrors the data dir (`backup.copy`) into a new backup directory whose manifest
(`backup.manifest`) is marked complete last, written from the same pass that copied (no second
scan). An upgrade backup is pre-staged while the node runs, with a change tracker
(`backup.tracking`) watching the data dir from before the copy's scan. After the node stopped
at H only the paths the tracker saw change are looked at and copied (when its record cannot be
trusted, the data dir is scanned once and compared with the record the pre-staging wrote in
the copy's manifest instead). Nothing is flushed then: the backup is sealed — deleted files
removed, the manifest written, one flush, the manifest renamed into place — once the node
runs again, and only a sealed backup is complete.

The whole queue shares ONE pre-staged copy: it belongs to the next plan due and is relabelled
(renamed, never copied again) when another plan becomes next.

The backup package's public names are re-exported here: callers import this one module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from wemixvisor.backup.copy import (
    Applied,
    Delta,
    Progress,
    Rescan,
    StageResult,
    apply_delta,
    flush_copy,
    plan_delta,
    rescan_changed,
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
    BackupSummary,
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
from wemixvisor.backup.tracking import ChangeTracker, StagingWatch, StagingWatches
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
    "ChangeTracker",
    "DataUsage",
    "Delta",
    "Free",
    "Manifest",
    "ManifestEntry",
    "PendingSeal",
    "Progress",
    "StageResult",
    "StagingWatch",
    "StagingWatches",
    "UnsealedBackup",
    "backup_dir",
    "backup_id",
    "check_backup_id",
    "check_space",
    "choose_prune",
    "complete_backup",
    "copy_upgrade_backup",
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
    head: int | None = None,
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
        head=head,
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
    tracker: ChangeTracker | None = None,
    head: int | None = None,
) -> tuple[Path, StageResult]:
    """Copy the data dir of a running node into the plan's staging backup (incomplete);
    `head`, the chain head as the copy begins, is recorded with it (a rehearsal checks it).

    There is one staging copy at most: the plan's own is refreshed, another plan's is
    relabelled and refreshed (only what changed since is copied), and only without any is a
    new one made. `on_target` learns the directory before the copy starts. A `tracker` is
    started right before the copy's scan: from then on it sees every change the record of
    this copy misses (see `StagingWatch`).
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
    if tracker is not None:
        tracker.start()
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
        target,
        label=label,
        source=data_dir,
        kind="upgrade",
        plan=plan_name,
        result=result,
        head=head,
    )
    return target, result


class UnsealedBackup:
    """The backup at H once its copy is made, before its seal (see `copy_upgrade_backup`).

    It is not a backup yet: its manifest does not say complete, so it is never restored, and
    a daemon that dies before `seal` leaves it incomplete (pruned later).
    """

    def __init__(
        self,
        target: Path,
        *,
        label: str,
        source: Path,
        plan: str,
        entries: Callable[[], list[ManifestEntry]],
        changed_bytes: int,
        began: float,
        copy_seconds: float,
        applied: Applied | None,
        tracked: bool,
        tracker: ChangeTracker | None = None,
    ) -> None:
        self.target = target
        self.label = label
        self.source = source
        self.plan = plan
        self._entries = entries
        self.changed_bytes = changed_bytes
        self.began = began
        self.copy_seconds = copy_seconds
        self._applied = applied
        self.tracked = tracked  # the changes came from tracking, not from a scan
        self._tracker = tracker  # released with the seal: the release costs the kernel time

    def abandon(self) -> None:
        """Never sealed (the daemon stops): the backup stays incomplete; its tracker goes."""
        if self._tracker is not None:
            self._tracker.close()

    @property
    def id(self) -> str:
        """The backup's id."""
        return self.target.name

    def seal(self) -> Manifest:
        """Make the backup count: its manifest (built from the staging record and the delta,
        in memory), one flush of the filesystem for the copy and the manifest, then the
        manifest's rename (see `write_manifest`)."""
        self.abandon()
        entries = self._entries()
        files = [entry for entry in entries if entry.kind == "file"]
        manifest = Manifest(
            id=self.target.name,
            label=self.label,
            created_at=time.time(),
            source=str(self.source),
            entries=entries,
            total_bytes=sum(entry.size for entry in files),
            file_count=len(files),
            complete=True,
            kind="upgrade",
            plan=self.plan,
            changed_bytes=self.changed_bytes,
            seconds=time.monotonic() - self.began,
            stopped_seconds=self.copy_seconds,
        )
        applied = self._applied

        def flush(target: Path) -> bool:
            if sync_filesystem(target):
                return True
            if applied is not None:
                flush_copy(target / DATA, applied)
            return False

        save_manifest(self.target, manifest, sync=flush)
        return manifest


def copy_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    watch: StagingWatch | None = None,
    since: float = 0.0,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> UnsealedBackup:
    """The node is stopped at H: bring the plan's pre-staged copy up to date; `seal` it once
    the node runs again.

    With a `watch` that tracked the data dir since the staging copy's record was taken, only
    the paths it saw change are looked at (one lstat each) and copied or removed; without one
    (the daemon restarted since, or the record cannot be trusted: the log says why) the data
    dir is scanned once and compared with the record. Nothing is flushed here: `seal` does
    that, then marks the backup complete. The copy is renamed to the time of H and equals the
    stopped data dir. Without a staged copy this is a full copy. A complete backup of the plan
    made at or after `since` (an upgrade resumed after its backup had completed) is reused as
    the staged copy. The watch's tracker is closed by the seal (or on failure here).
    """
    try:
        unsealed = _copy_upgrade_backup(
            data_dir,
            backups_dir,
            plan_name,
            watch=watch,
            since=since,
            progress=progress,
            available=available,
            on_target=on_target,
        )
    except BaseException:
        if watch is not None:
            watch.tracker.close()
        raise
    unsealed._tracker = None if watch is None else watch.tracker
    return unsealed


def _copy_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    watch: StagingWatch | None,
    since: float,
    progress: Progress,
    available: int | None,
    on_target: Callable[[Path], None],
) -> UnsealedBackup:
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None and since > 0:
        found = find_plan_backup(backups_dir, plan_name, complete=True, since=since)
    changes, why = _tracked_changes(data_dir, found, watch)
    if changes is None:
        logger.warning("backup at H of {}: scanning the whole data dir ({})", plan_name, why)
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
        elif changes is None:
            record = staged_record(staged)
        target = backups_dir / ident
        # The manifest still names the old directory: a crash from here on leaves a copy that
        # the next attempt scans rather than trusts.
        os.rename(staged, target)
    on_target(target)
    if changes is not None and watch is not None:
        tree = changes.entries
        delta = plan_delta(changes.want, changes.have, inode=True)
        # Files deleted from the data dir are deleted from the copy by the seal, once the node
        # runs: freeing a large file's blocks costs milliseconds, and until the seal nothing
        # uses the copy. What replaces them (a file turned directory) is made now.
        later = [e for e in delta.remove if e.kind != "dir" and e.path not in tree]
        delta = dataclasses.replace(
            delta,
            remove=[e for e in delta.remove if e.kind == "dir" or e.path in tree],
            freed_bytes=delta.freed_bytes - sum(e.size for e in later),
        )
        applied = apply_delta(
            data_dir,
            target / DATA,
            delta,
            live=False,
            recorded=True,
            space_dir=backups_dir,
            total=watch.total_bytes,
            progress=progress,
            available=available,
        )
        return UnsealedBackup(
            target,
            label=label,
            source=data_dir,
            plan=plan_name,
            entries=lambda: _removed_later(target / DATA, later, tree, applied),
            changed_bytes=applied.changed_bytes,
            began=began,
            copy_seconds=time.monotonic() - began,
            applied=applied,
            tracked=True,
        )
    result = stage(
        data_dir,
        target / DATA,
        live=False,
        space_dir=backups_dir,
        have=record,
        progress=progress,
        available=available,
        flush=False,
    )
    return UnsealedBackup(
        target,
        label=label,
        source=data_dir,
        plan=plan_name,
        entries=lambda: result.entries,
        changed_bytes=result.changed_bytes,
        began=began,
        copy_seconds=time.monotonic() - began,
        applied=result.applied,
        tracked=False,
    )


def _removed_later(
    copy: Path,
    removals: list[ManifestEntry],
    tree: dict[str, ManifestEntry],
    applied: Applied,
) -> list[ManifestEntry]:
    """Delete the files the node deleted from the copy (their directories keep the source's
    mtimes); the entries of the whole tree."""
    parents: set[str] = set()
    for entry in removals:
        with contextlib.suppress(FileNotFoundError):
            (copy / entry.path).unlink()
        parents.add(entry.path.rpartition("/")[0])
    for parent in parents:
        applied.touched.add(copy / parent if parent else copy)
        found = tree.get(parent)
        if found is not None:
            os.utime(copy / parent, ns=(found.mtime_ns, found.mtime_ns), follow_symlinks=False)
    return list(tree.values())


def _tracked_changes(
    data_dir: Path, found: tuple[Path, BackupSummary] | None, watch: StagingWatch | None
) -> tuple[Rescan | None, str]:
    """What changed since the staging record, from the watch (None, and why not)."""
    if watch is None:
        return None, "no change tracking since the pre-staging (the daemon restarted, or none)"
    if found is None or found[1].complete or found[0].name != watch.target:
        return None, "the pre-staged copy is not the one whose changes were tracked"
    dirty = watch.tracker.finish()
    if isinstance(dirty, str):
        return None, dirty
    dirty.update(watch.racy)
    changes = rescan_changed(data_dir, watch.record, dirty)
    if isinstance(changes, str):
        return None, changes
    return changes, ""


def finish_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    watch: StagingWatch | None = None,
    since: float = 0.0,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> Manifest:
    """`copy_upgrade_backup` then its seal, at once (nothing runs in between)."""
    return copy_upgrade_backup(
        data_dir,
        backups_dir,
        plan_name,
        watch=watch,
        since=since,
        progress=progress,
        available=available,
        on_target=on_target,
    ).seal()


class PendingSeal:
    """The saga's handle on the backup at H between its copy and its seal.

    The saga `request`s the seal once the node runs again (or will not) and `wait`s for it
    before the upgrade is reported completed or the backup restored; the job that made the
    copy waits for the request, seals, and reports with `sealed` or `failed`.
    """

    def __init__(self, backup_id: str) -> None:
        self.id = backup_id
        self._requested = threading.Event()
        self._over = threading.Event()
        self._error: BackupError | None = None

    def request(self) -> None:
        """Let the seal happen now (idempotent, never blocks)."""
        self._requested.set()

    def wait_requested(self, cancel: threading.Event, timeout: float) -> bool:
        """Wait until the seal is requested; False when `cancel` is set or time ran out."""
        deadline = time.monotonic() + timeout
        while not self._requested.wait(0.1):
            if cancel.is_set() or time.monotonic() >= deadline:
                return False
        return True

    def sealed(self) -> None:
        """The backup is complete."""
        self._over.set()

    def failed(self, error: BackupError) -> None:
        """The backup could not be sealed: it stays incomplete."""
        self._error = error
        self._over.set()

    def wait(self, timeout: float) -> None:
        """Wait for the seal; BackupError when it failed or did not happen in time."""
        if not self._over.wait(timeout):
            raise BackupError(f"backup {self.id} was not sealed within {timeout:g}s")
        if self._error is not None:
            raise self._error
