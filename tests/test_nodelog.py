"""Copy-truncate rotation of node.log while a real process keeps appending to it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from wemixvisor.node.logfile import rotate_if_needed, rotated_name


def test_small_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_bytes(b"x" * 10)
    assert rotate_if_needed(log, max_bytes=100, keep=3) is False
    assert not rotated_name(log, 1).exists()


def test_missing_log_is_not_an_error(tmp_path: Path) -> None:
    assert rotate_if_needed(tmp_path / "node.log", max_bytes=1, keep=3) is False


def test_rotation_keeps_n_files_newest_first(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    for generation in range(5):
        log.write_bytes(f"gen{generation}\n".encode() * 50)
        assert rotate_if_needed(log, max_bytes=100, keep=3)
    assert log.stat().st_size == 0
    assert rotated_name(log, 1).read_bytes().startswith(b"gen4")
    assert rotated_name(log, 3).read_bytes().startswith(b"gen2")
    assert not rotated_name(log, 4).exists()


def test_a_writer_with_o_append_keeps_writing_at_the_start_after_truncation(
    tmp_path: Path,
) -> None:
    log = tmp_path / "node.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    writer = subprocess.Popen(
        ["sh", "-c", "i=0; while [ $i -lt 4000 ]; do echo line$i; i=$((i+1)); done; sleep 30"],
        stdout=fd,
    )
    os.close(fd)
    try:
        deadline = time.monotonic() + 10
        while log.stat().st_size < 20_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rotate_if_needed(log, max_bytes=1000, keep=2)
        # No sparse hole: the file restarts at offset 0 instead of the old end.
        size_after = log.stat().st_size
        assert size_after < 20_000
        assert b"\0" not in log.read_bytes()
        assert rotated_name(log, 1).stat().st_size >= 20_000
    finally:
        writer.kill()
        writer.wait()
