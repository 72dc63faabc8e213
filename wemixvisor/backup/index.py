"""What is in the backups directory, and the data dirs moved aside by restores.

Listing reads each manifest once per change, not once per call: `BackupIndex` keeps every
backup's summary with the identity (inode, size, mtime) of the manifest it was read from,
so a listing costs one directory read and one stat per backup. Manifests are replaced
atomically (a new inode), so a changed manifest is never mistaken for the one read before.
"""

from __future__ import annotations

import calendar
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from wemixvisor.backup.copy import scan
from wemixvisor.backup.errors import BackupError
from wemixvisor.backup.manifest import (
    ID_RE,
    ID_STAMP,
    MANIFEST,
    BackupSummary,
    Manifest,
    ManifestEntry,
    decode_summary,
    load_manifest,
    read_capped_manifest,
    write_manifest,
)
from wemixvisor.messages.backup import BackupInfo

PRE_RESTORE = "pre-restore"
"""The kind of a data dir a restore or rollback moved aside (`<data>.pre-restore-<stamp>`)."""

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _read_summary(path: Path) -> BackupSummary | None:
    try:
        return decode_summary(read_capped_manifest(path / MANIFEST))
    except (BackupError, msgspec.DecodeError):
        return None


def backup_dirs(backups_dir: Path) -> list[Path]:
    """The directories in `backups_dir` named like backups, oldest name first."""
    try:
        children = list(os.scandir(backups_dir))
    except FileNotFoundError:
        return []
    return sorted(
        Path(child.path)
        for child in children
        if ID_RE.fullmatch(child.name) and child.is_dir(follow_symlinks=False)
    )


class BackupIndex:
    """The summaries of one backups directory, re-read only where a manifest changed."""

    def __init__(self, backups_dir: Path) -> None:
        self.backups_dir = backups_dir
        self._known: dict[str, tuple[_Stamp | None, BackupSummary | None]] = {}
        self._lock = threading.Lock()

    def summaries(self) -> list[tuple[Path, BackupSummary | None]]:
        """Every backup directory with its summary (None: no readable manifest)."""
        with self._lock:
            found: dict[str, tuple[_Stamp | None, BackupSummary | None]] = {}
            listed: list[tuple[Path, BackupSummary | None]] = []
            for path in backup_dirs(self.backups_dir):
                stamp = _stamp(path / MANIFEST)
                known = self._known.get(path.name)
                if known is not None and known[0] == stamp and stamp is not None:
                    summary = known[1]
                else:
                    summary = _read_summary(path) if stamp is not None else None
                found[path.name] = (stamp, summary)
                listed.append((path, summary))
            self._known = found
            return listed

    def note(self, path: Path, manifest: Manifest) -> None:
        """`manifest` was just written to `path`: known without reading it back."""
        summary = BackupSummary(
            id=manifest.id,
            label=manifest.label,
            created_at=manifest.created_at,
            total_bytes=manifest.total_bytes,
            file_count=manifest.file_count,
            complete=manifest.complete,
            kind=manifest.kind,
            plan=manifest.plan,
        )
        with self._lock:
            self._known[path.name] = (_stamp(path / MANIFEST), summary)


_indexes: dict[Path, BackupIndex] = {}
_indexes_guard = threading.Lock()


def index_of(backups_dir: Path) -> BackupIndex:
    """The process's index of `backups_dir` (one per directory)."""
    with _indexes_guard:
        index = _indexes.get(backups_dir)
        if index is None:
            index = _indexes[backups_dir] = BackupIndex(backups_dir)
        return index


_records: dict[Path, tuple[_Stamp | None, list[ManifestEntry]]] = {}
_records_guard = threading.Lock()


def save_manifest(
    target: Path, manifest: Manifest, *, sync: Callable[[Path], bool] | None = None
) -> None:
    """Write `manifest` into backup `target` (`write_manifest`) and note it: in the index,
    and (a pre-staging's record) in memory, so that the work at H does not read it back."""
    write_manifest(target, manifest, sync=sync)
    index_of(target.parent).note(target, manifest)
    with _records_guard:
        _records.pop(target, None)
        if manifest.staged:
            _records[target] = (_stamp(target / MANIFEST), manifest.entries)


def staged_record(path: Path) -> list[ManifestEntry] | None:
    """The record a pre-staging left in the copy's manifest, when it can be trusted: written
    for this very directory after a mirror that ended. None: scan the copy instead.

    Taken from memory when this process wrote that very manifest file, else read (and
    validated) from disk.
    """
    stamp = _stamp(path / MANIFEST)
    with _records_guard:
        known = _records.get(path)
    if known is not None and stamp is not None and known[0] == stamp:
        return known[1]
    try:
        manifest = load_manifest(path)
    except BackupError:
        return None
    if manifest.complete or not manifest.staged or manifest.id != path.name:
        return None
    return manifest.entries


def _created_from_name(name: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(name[:16], ID_STAMP)))
    except ValueError:
        return 0.0


def list_backups(backups_dir: Path, data_dir: Path | None = None) -> list[BackupInfo]:
    """Every backup directory, oldest first; incomplete ones included (complete=False).

    With `data_dir`, the data dirs restores moved aside beside it are listed too (kind
    `pre-restore`).
    """
    infos: list[BackupInfo] = []
    for path, summary in index_of(backups_dir).summaries():
        if summary is None:
            infos.append(
                BackupInfo(
                    id=path.name,
                    label=path.name[17:],
                    created_at=_created_from_name(path.name),
                    complete=False,
                    total_bytes=0,
                    file_count=0,
                    path=str(path),
                )
            )
            continue
        infos.append(
            BackupInfo(
                id=path.name,
                label=summary.label,
                created_at=summary.created_at,
                # A manifest naming another directory is a pre-staged copy caught between its
                # rename and its final manifest: still the plan's, but not complete.
                complete=summary.complete and summary.id == path.name,
                total_bytes=summary.total_bytes,
                file_count=summary.file_count,
                path=str(path),
                kind=summary.kind,
                plan=summary.plan,
            )
        )
    if data_dir is not None:
        infos += list_set_aside(data_dir)
    infos.sort(key=lambda info: (info.created_at, info.id))
    return infos


def find_plan_backup(
    backups_dir: Path, plan_name: str, *, complete: bool, since: float = 0.0
) -> tuple[Path, BackupSummary] | None:
    """The newest backup made for `plan_name` with that completeness (and, for complete ones,
    created at or after `since`)."""
    best: tuple[Path, BackupSummary] | None = None
    for path, summary in index_of(backups_dir).summaries():
        if summary is None or summary.plan != plan_name or summary.complete != complete:
            continue
        if complete and summary.created_at < since:
            continue
        if best is None or (summary.created_at, path.name) >= (best[1].created_at, best[0].name):
            best = (path, summary)
    return best


def staging_copies(backups_dir: Path) -> list[tuple[Path, BackupSummary]]:
    """The pre-staged copies (incomplete upgrade backups of a plan), newest first."""
    found = [
        (path, summary)
        for path, summary in index_of(backups_dir).summaries()
        if summary is not None and not summary.complete and summary.plan is not None
    ]
    found.sort(key=lambda item: (item[1].created_at, item[0].name), reverse=True)
    return found


def set_aside_re(data_dir: Path) -> re.Pattern[str]:
    """What the name of a data dir moved aside by a restore looks like."""
    return re.compile(
        rf"\A{re.escape(data_dir.name)}\.pre-restore-([0-9]{{8}}T[0-9]{{6}}Z)"
        r"(-[a-z]{1,16})?(\.[0-9]{1,6})?\Z"
    )


_aside_sizes: dict[tuple[str, int, int], tuple[int, int]] = {}
_aside_guard = threading.Lock()


def _aside_usage(path: Path, info: os.stat_result) -> tuple[int, int]:
    """(bytes, files) of a moved-aside dir; computed once (nobody writes into it)."""
    key = (str(path), info.st_ino, info.st_mtime_ns)
    with _aside_guard:
        known = _aside_sizes.get(key)
    if known is not None:
        return known
    try:
        entries = scan(path)
    except (BackupError, OSError):
        return (0, 0)
    files = [entry for entry in entries if entry.kind == "file"]
    usage = (sum(entry.size for entry in files), len(files))
    with _aside_guard:
        _aside_sizes[key] = usage
    return usage


def list_set_aside(data_dir: Path) -> list[BackupInfo]:
    """The data dirs restores and rollbacks moved aside (`<data>.pre-restore-<stamp>`)."""
    pattern = set_aside_re(data_dir)
    try:
        children = list(os.scandir(data_dir.parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    infos: list[BackupInfo] = []
    for child in children:
        match = pattern.fullmatch(child.name)
        if match is None:
            continue
        try:
            info = child.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        total, files = _aside_usage(Path(child.path), info)
        infos.append(
            BackupInfo(
                id=child.name,
                label=PRE_RESTORE,
                created_at=_created_from_name(match.group(1)),
                complete=True,
                total_bytes=total,
                file_count=files,
                path=child.path,
                kind=PRE_RESTORE,
            )
        )
    return infos
