"""Size-based copy-truncate rotation of logs/node.log.

The node writes through an O_APPEND descriptor it inherited, so the daemon can neither reopen
nor rename it under the node: it copies the file aside and truncates it in place, and the
node's next write lands at the (new) end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
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


ROTATE_INTERVAL = 5.0
"""Seconds between two checks of the node log's size."""


def log_rotation(path: Path, max_bytes: int, keep: int) -> Callable[[], None]:
    """One check of the node log (a poller's call): rotated when over `max_bytes`."""

    def check() -> None:
        try:
            if rotate_if_needed(path, max_bytes, keep):
                logger.info("rotated {}", path)
        except OSError as exc:
            logger.warning("could not rotate {}: {}", path, exc)

    return check
