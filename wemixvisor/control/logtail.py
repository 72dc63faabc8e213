"""Reading the node log from its end: the last lines (the `logs` verb) and following it
(`wemixvisor logs -f`, with `tail -F` semantics: survives the copy-truncate rotation of
`nodelog.py`, a rename, and the file missing for a while)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["MAX_TAIL_BYTES", "follow", "tail_lines"]

MAX_TAIL_BYTES = 1024 * 1024
"""The most bytes of the log end read for one `logs` answer."""

_CHUNK = 64 * 1024


def tail_lines(path: Path, count: int, max_bytes: int = MAX_TAIL_BYTES) -> tuple[list[str], bool]:
    """The last `count` lines of `path` within its last `max_bytes` bytes, and whether the file
    holds more than was returned. FileNotFoundError when there is no such file.

    Bytes that are not UTF-8 are replaced; a line longer than `max_bytes` is cut.
    """
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        handle.seek(start)
        data = handle.read(max_bytes)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if start > 0 and len(lines) > 1:
        # The first line began before the window: show only whole lines.
        lines.pop(0)
    more = start > 0 or len(lines) > count
    return [line.decode(errors="replace") for line in lines[-count:]], more


def follow(
    path: Path,
    write: Callable[[bytes], None],
    stop: threading.Event,
    *,
    interval: float = 0.2,
    from_end: bool = True,
) -> None:
    """Write what is appended to `path` until `stop` is set.

    A truncated file (copy-truncate) is read again from its start; a file replaced by another
    (rename rotation) is drained, then the new one is read from its start; a missing file is
    waited for.
    """
    handle: BinaryIO | None = None
    inode: int | None = None
    try:
        handle, inode = _open(path, from_end=from_end)
        while not stop.is_set():
            if handle is not None:
                data = handle.read(_CHUNK)
                if data:
                    write(data)
                    continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino != inode:
                if handle is not None:
                    # Whatever was appended to the old file before the swap comes first.
                    rest = handle.read()
                    if rest:
                        write(rest)
                    handle.close()
                handle, inode = _open(path, from_end=False)
                continue
            if handle is not None and st is not None and st.st_size < handle.tell():
                handle.seek(0)
                continue
            stop.wait(interval)
    finally:
        if handle is not None:
            handle.close()


def _open(path: Path, *, from_end: bool) -> tuple[BinaryIO | None, int | None]:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None, None
    with contextlib.suppress(OSError):
        if from_end:
            handle.seek(0, os.SEEK_END)
    return handle, os.fstat(handle.fileno()).st_ino
