"""Backups of the node's data directory (SPEC §7): copy, manifest, restore.

A backup is `backups/<UTC YYYYmmddTHHMMSSZ>-<label>/` holding `data/` (the copy) and
`manifest.json`. The manifest is written last, atomically, with `complete: true`: a backup
without one is incomplete, never restored, and pruned.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from wemixvisor.fsutil import atomic_write_bytes, fsync_dir

MANIFEST = "manifest.json"
SPACE_FACTOR = 1.1
_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message says why, with figures."""


class ManifestEntry(msgspec.Struct, frozen=True):
    """One entry of the data dir, relative to it."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    size: int = 0
    mtime_ns: int = 0
    target: str | None = None  # symlinks only


class Manifest(msgspec.Struct, kw_only=True):
    """manifest.json of a backup."""

    id: str
    label: str
    created_at: float
    source: str
    entries: list[ManifestEntry]
    total_bytes: int
    file_count: int
    complete: bool = False


def backup_id(label: str, at: float) -> str:
    """`<UTC YYYYmmddTHHMMSSZ>-<label>`; the label is checked like a plan name."""
    if not _LABEL_RE.fullmatch(label) or label in (".", ".."):
        raise BackupError(f"invalid backup label {label!r}: 1-64 characters of A-Z a-z 0-9 . _ -")
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at)) + f"-{label}"


def scan(root: Path) -> list[ManifestEntry]:
    """Every directory, regular file and symlink under `root` (symlinks not followed).

    Sockets, fifos and devices are not data a node needs restored and are skipped.
    """
    entries: list[ManifestEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            path = base / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                entries.append(ManifestEntry(rel, "symlink", target=os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(ManifestEntry(rel, "dir", mtime_ns=info.st_mtime_ns))
            elif stat.S_ISREG(info.st_mode):
                entries.append(ManifestEntry(rel, "file", info.st_size, info.st_mtime_ns))
    return entries


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path`."""
    usage = os.statvfs(path)
    return usage.f_bavail * usage.f_frsize


def check_space(target_dir: Path, needed: int, available: int | None = None) -> None:
    """Fail fast unless at least 1.1 times `needed` bytes are free; both figures in the error."""
    available = free_bytes(target_dir) if available is None else available
    want = int(needed * SPACE_FACTOR)
    if available < want:
        raise BackupError(
            f"not enough free space in {target_dir}: need {want} bytes "
            f"(1.1 x {needed} to copy), {available} available"
        )


def _copy_entries(
    source: Path, dest: Path, entries: list[ManifestEntry], total: int, progress: Progress
) -> None:
    done = 0
    for entry in entries:
        src = source / entry.path
        dst = dest / entry.path
        if entry.kind == "dir":
            dst.mkdir(parents=True, exist_ok=True)
        elif entry.kind == "symlink":
            assert entry.target is not None
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(entry.target)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
            done += entry.size
            progress(done, total)


def create_backup(
    data_dir: Path,
    backups_dir: Path,
    label: str,
    *,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
) -> Path:
    """Copy `data_dir` into a new complete backup; return its directory.

    `available` overrides the free-space reading (operators' tests, or a quota known better).
    """
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    backups_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    ident = backup_id(label, now)
    target = backups_dir / ident
    suffix = 1
    while target.exists():
        suffix += 1
        target = backups_dir / f"{ident}.{suffix}"
    entries = scan(data_dir)
    total = sum(entry.size for entry in entries)
    check_space(backups_dir, total, available)
    target.mkdir()
    _copy_entries(data_dir, target / "data", entries, total, progress)
    (target / "data").mkdir(exist_ok=True)
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=now,
        source=str(data_dir),
        entries=entries,
        total_bytes=total,
        file_count=sum(1 for entry in entries if entry.kind == "file"),
        complete=True,
    )
    _sync_tree(target / "data")
    atomic_write_bytes(target / MANIFEST, msgspec.json.encode(manifest), mode=0o600)
    return target


def _sync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def read_manifest(backup_dir: Path) -> Manifest | None:
    """The backup's manifest when it is complete and readable, else None."""
    try:
        raw = (backup_dir / MANIFEST).read_bytes()
        manifest = msgspec.json.decode(raw, type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None
    return manifest if manifest.complete else None


def verify_against(root: Path, manifest: Manifest) -> list[str]:
    """Differences between the tree at `root` and the manifest (kinds, sizes, links)."""
    expected = {entry.path: entry for entry in manifest.entries}
    actual = {entry.path: entry for entry in scan(root)}
    problems = [f"missing {path}" for path in expected.keys() - actual.keys()]
    problems += [f"unexpected {path}" for path in actual.keys() - expected.keys()]
    for path in expected.keys() & actual.keys():
        want, have = expected[path], actual[path]
        if want.kind != have.kind or (want.kind == "file" and want.size != have.size):
            problems.append(f"{path}: expected {want.kind} of {want.size} bytes")
        elif want.kind == "symlink" and want.target != have.target:
            problems.append(f"{path}: link target differs")
    return sorted(problems)


def restore_backup(backup_dir: Path, data_dir: Path) -> Path:
    """Put the backup's data back in place of `data_dir` (the node must be stopped).

    The live data is moved aside to `data.pre-restore-<ts>` (returned), never deleted, and the
    restored tree is checked against the manifest.
    """
    manifest = read_manifest(backup_dir)
    if manifest is None:
        raise BackupError(f"{backup_dir} is not a complete backup: refusing to restore it")
    check_space(data_dir.parent, manifest.total_bytes)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}")
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}.{suffix}")
    staging = data_dir.with_name(f".{data_dir.name}.restoring")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(staging)
    _copy_entries(
        backup_dir / "data", staging, manifest.entries, manifest.total_bytes, lambda d, t: None
    )
    staging.mkdir(exist_ok=True)
    problems = verify_against(staging, manifest)
    if problems:
        raise BackupError(f"restored copy does not match the manifest: {problems[:5]}")
    _sync_tree(staging)
    if data_dir.exists():
        os.replace(data_dir, aside)
    os.replace(staging, data_dir)
    fsync_dir(data_dir.parent)
    return aside
