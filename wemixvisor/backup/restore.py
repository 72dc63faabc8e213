"""Restoring a backup in place of the node's data dir, which is moved aside, never deleted."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from wemixvisor.backup.copy import Progress, require_match, stage
from wemixvisor.backup.errors import BackupError
from wemixvisor.backup.manifest import DATA, ID_STAMP, backup_dir, load_manifest
from wemixvisor.home.fsutil import fsync_dir


def restore_backup(
    backups_dir: Path,
    backup_id: str,
    data_dir: Path,
    *,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
) -> Path:
    """Put backup `backup_id` back in place of `data_dir` (the node must be stopped).

    The backup is checked against its manifest before anything is touched; the copy is made
    beside the data dir, checked again, and only then swapped in. The live data is moved aside
    to `<data>.pre-restore-<stamp>` (returned), never deleted.
    """
    path = backup_dir(backups_dir, backup_id)
    manifest = load_manifest(path)
    if not manifest.complete:
        raise BackupError(f"{backup_id} is not a complete backup: refusing to restore it")
    require_match(path / DATA, manifest.entries, f"backup {backup_id}")
    staging = data_dir.with_name(f".{data_dir.name}.restoring")
    if os.path.lexists(staging):
        # Left by a restore that was killed: a partial copy, or (killed right after the swap)
        # the data it was moving aside. Kept aside too: nothing of the node's is ever deleted.
        os.rename(staging, _aside_name(data_dir, "leftover"))
    try:
        result = stage(
            path / DATA,
            staging,
            live=False,
            space_dir=data_dir.parent,
            entries=manifest.entries,
            progress=progress,
            available=available,
        )
        require_match(staging, result.entries, "the restored copy")
    except BaseException:
        # A half-made copy only takes space; the live data was not touched.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = _aside_name(data_dir)
    if os.path.lexists(data_dir) and _exchange(staging, data_dir):
        os.rename(staging, aside)
    else:
        if os.path.lexists(data_dir):
            os.rename(data_dir, aside)
        os.rename(staging, data_dir)
    fsync_dir(data_dir.parent)
    return aside


def _aside_name(data_dir: Path, what: str = "") -> Path:
    stamp = time.strftime(ID_STAMP, time.gmtime()) + (f"-{what}" if what else "")
    aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}")
    suffix = 1
    while os.path.lexists(aside):
        suffix += 1
        aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}.{suffix}")
    return aside


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    exchange: Callable[[int, bytes, int, bytes, int], int] = function
    return exchange


def _exchange(first: Path, second: Path) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): the data dir never goes missing,
    whenever the process dies. False when the system or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(code, os.strerror(code), str(first), None, str(second))
    return True
