"""Durable file primitives: every file the daemon owns is written through these."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_failure(path: Path) -> Iterator[None]:
    """Remove `path` (a temporary file or link) if the block raises; then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], mode: int = 0o644) -> None:
    """Create `path` from what `write(handle)` writes, so that readers see the old file or the
    new one, never a mix.

    temp file in the same directory + fsync + rename + fsync of the directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    with removed_on_failure(tmp):
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`atomic_write` of `data`."""
    atomic_write(path, lambda handle: handle.write(data), mode)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode(), mode)


class ReadRefused(ValueError):
    """A file that is not read: not a regular file, or larger than the caller accepts."""


def read_capped(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The whole content of the regular file `path`; ReadRefused above `limit` bytes.

    The size is checked before reading, and the read stops at `limit + 1` bytes in case the file
    grows meanwhile: a hostile file is never read entirely. Opening is non-blocking, so a FIFO
    planted at the path cannot hang the reader. OSError (e.g. FileNotFoundError) passes through.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadRefused(f"{path} is not a regular file")
        if info.st_size > limit:
            raise ReadRefused(f"{path} is {info.st_size} bytes, over the {limit}-byte limit")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ReadRefused(f"{path} grew over the {limit}-byte limit while being read")
    return data
