"""Size-based copy-truncate rotation of logs/node.log.

The node writes through an O_APPEND descriptor it inherited, so the daemon can neither reopen
nor rename it under the node: it copies the file aside and truncates it in place, and the
node's next write lands at the (new) end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from loguru import logger


def rotated_name(path: Path, index: int) -> Path:
    """node.log.1 is the newest rotated file."""
    return path.with_name(f"{path.name}.{index}")


def rotate_if_needed(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotate `path` when it has grown past `max_bytes`; keep `keep` rotated files."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes or keep < 1:
        return False
    with contextlib.suppress(FileNotFoundError):
        rotated_name(path, keep).unlink()
    for index in range(keep - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(rotated_name(path, index), rotated_name(path, index + 1))
    shutil.copyfile(path, rotated_name(path, 1))
    # Lines the node writes between the copy and the truncate are lost: the price of
    # copy-truncate, and the reason the check runs often while the file is small.
    os.truncate(path, 0)
    return True


class LogRotator:
    """A helper thread that checks the node log's size every `interval` seconds."""

    def __init__(self, path: Path, max_bytes: int, keep: int, interval: float = 5.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-log-rotator", daemon=True)

    def start(self) -> None:
        """Begin checking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop checking (returns at once; the thread ends within one interval)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if rotate_if_needed(self.path, self.max_bytes, self.keep):
                    logger.info("rotated {}", self.path)
            except OSError as exc:
                logger.warning("could not rotate {}: {}", self.path, exc)
