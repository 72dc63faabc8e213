"""Free space: a backup or restore that cannot fit fails before it copies anything.

Both bytes and inodes count: a data dir of many small files can exhaust a filesystem's inodes
long before its bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wemixvisor.backup.errors import BackupError

SPACE_FACTOR = 1.1
"""A copy needs this many times its bytes (and files) free: filesystems need headroom."""


@dataclass(frozen=True)
class Free:
    """What an unprivileged writer may still use on a filesystem; `files` None when the
    filesystem does not count inodes (it reports 0 of 0)."""

    bytes: int
    files: int | None


def free_space(path: Path) -> Free:
    """Free bytes and inodes on the filesystem holding `path` (or its nearest existing
    parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = os.statvfs(probe)
    files = usage.f_favail if usage.f_files > 0 else None
    return Free(usage.f_bavail * usage.f_frsize, files)


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path`."""
    return free_space(path).bytes


def space_problem(
    target_dir: Path,
    needed: int,
    *,
    files: int = 0,
    available: int | None = None,
    free: Free | None = None,
    detail: str = "",
) -> str | None:
    """Why `needed` bytes in `files` new files would not fit in `target_dir` (with the 1.1
    headroom), with both figures; None when they fit.

    `available` overrides the filesystem's byte figure (a quota known better, or a test);
    `free` gives figures already read. `detail` explains `needed` in the message.
    """
    free = free_space(target_dir) if free is None else free
    have = free.bytes if available is None else available
    want = int(needed * SPACE_FACTOR)
    why = f": {detail}" if detail else ""
    if have < want:
        return (
            f"not enough free space in {target_dir}: need {want} bytes "
            f"(1.1 x {needed} to copy{why}), {have} available"
        )
    want_files = int(files * SPACE_FACTOR)
    if free.files is not None and free.files < want_files:
        return (
            f"not enough free inodes in {target_dir}: need {want_files} inodes "
            f"(1.1 x {files} files to create{why}), {free.files} available"
        )
    return None


def check_space(
    target_dir: Path, needed: int, available: int | None = None, *, files: int = 0
) -> None:
    """Fail fast unless at least 1.1 times `needed` bytes and `files` inodes are free; both
    figures in the error. `available` overrides the filesystem's byte figure."""
    problem = space_problem(target_dir, needed, files=files, available=available)
    if problem is not None:
        raise BackupError(problem)
