"""Free space: a backup or restore that cannot fit fails before it copies anything."""

from __future__ import annotations

import os
from pathlib import Path

from wemixvisor.backup.errors import BackupError

SPACE_FACTOR = 1.1
"""A copy needs this many times its bytes free: filesystems need headroom to stay usable."""


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path` (or its nearest
    existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = os.statvfs(probe)
    return usage.f_bavail * usage.f_frsize


def check_space(target_dir: Path, needed: int, available: int | None = None) -> None:
    """Fail fast unless at least 1.1 times `needed` bytes are free; both figures in the error.

    `available` overrides the filesystem's figure (a quota known better, or a test).
    """
    available = free_bytes(target_dir) if available is None else available
    want = int(needed * SPACE_FACTOR)
    if available < want:
        raise BackupError(
            f"not enough free space in {target_dir}: need {want} bytes "
            f"(1.1 x {needed} to copy), {available} available"
        )
