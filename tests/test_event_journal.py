"""The on-disk event journal: bounded, replayable from any position, and never corrupted by a
kill -9 of its writer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from wemixvisor.events.journal import EventJournal, JournalPosition, JournalReplayError, replay


def payload(run: str, seq: int, pad: int = 0) -> bytes:
    return msgspec.json.encode(
        {"topic": "supervisor.heartbeat", "seq": seq, "run_id": run, "ts": 1.0, "pad": "x" * pad}
    )


def journal(directory: Path, **kwargs: int) -> EventJournal:
    writer = EventJournal(directory, **kwargs)
    writer.open()
    return writer


def positions(directory: Path, **kwargs: object) -> list[tuple[str, int]]:
    return [(p.run_id, p.seq) for p, _ in replay(directory, **kwargs)]  # type: ignore[arg-type]


def test_replay_of_the_newest_run_from_a_seq_and_of_a_named_run(tmp_path: Path) -> None:
    writer = journal(tmp_path)
    for seq in range(1, 6):
        writer.append(payload("run-a", seq))
    for seq in range(1, 4):
        writer.append(payload("run-b", seq))
    writer.close()

    assert positions(tmp_path) == [("run-b", 1), ("run-b", 2), ("run-b", 3)]
    assert positions(tmp_path, since_seq=2) == [("run-b", 2), ("run-b", 3)]
    assert positions(tmp_path, since_seq=99) == []
    assert positions(tmp_path, since_run="run-a", since_seq=4) == [
        ("run-a", 4),
        ("run-a", 5),
        ("run-b", 1),
        ("run-b", 2),
        ("run-b", 3),
    ]
    ((position, line),) = list(replay(tmp_path, since_seq=3))
    assert position == JournalPosition("run-b", 3)
    assert line == payload("run-b", 3)


def test_a_replay_of_an_unknown_run_or_an_empty_journal_says_so(tmp_path: Path) -> None:
    assert positions(tmp_path) == []
    with pytest.raises(JournalReplayError, match="empty"):
        positions(tmp_path, since_run="nope")
    writer = journal(tmp_path)
    writer.append(payload("run-a", 1))
    with pytest.raises(JournalReplayError, match=r"run nope is not in the event journal.*run-a"):
        positions(tmp_path, since_run="nope")


def test_rotation_keeps_the_journal_bounded_and_says_what_was_rotated_away(
    tmp_path: Path,
) -> None:
    writer = journal(tmp_path, max_segment_bytes=4096, max_segments=3)
    for seq in range(1, 2001):
        writer.append(payload("run-a", seq, pad=100))
    writer.close()

    segments = sorted(tmp_path.iterdir())
    assert len(segments) == 3
    assert sum(p.stat().st_size for p in segments) <= 3 * 4096
    held = positions(tmp_path)
    assert held[-1] == ("run-a", 2000)
    assert [seq for _, seq in held] == list(range(held[0][1], 2001))  # no gap in what is held
    with pytest.raises(JournalReplayError, match="rotated away"):
        positions(tmp_path, since_seq=1)


def test_a_writer_reopened_continues_the_newest_segment(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.append(payload("run-a", 1))
    first.close()
    second = journal(tmp_path)
    second.append(payload("run-b", 1))
    second.close()
    assert len(list(tmp_path.iterdir())) == 1
    assert positions(tmp_path, since_run="run-a") == [("run-a", 1), ("run-b", 1)]


def test_torn_and_corrupt_lines_are_skipped_and_later_events_still_read(tmp_path: Path) -> None:
    writer = journal(tmp_path)
    writer.append(payload("run-a", 1))
    writer.close()
    segment = next(tmp_path.iterdir())
    with segment.open("ab") as handle:
        handle.write(b'{"topic": "node.exi')  # a write cut short by a kill
    writer = journal(tmp_path)  # the next daemon starts on a fresh line
    writer.append(payload("run-b", 1))
    writer.close()
    with segment.open("ab") as handle:
        handle.write(b"\x00\xff garbage\n[1, 2]\n{}\n" + b"{" * 100_000 + b"\n")
    writer = journal(tmp_path)
    writer.append(payload("run-b", 2))
    writer.close()

    assert positions(tmp_path, since_run="run-a") == [("run-a", 1), ("run-b", 1), ("run-b", 2)]


def test_oversized_or_multiline_payloads_are_counted_not_journaled(tmp_path: Path) -> None:
    writer = journal(tmp_path)
    writer.append(b'{"run_id": "r", "seq": 1,\n"x": 1}')
    writer.append(b'{"run_id": "r", "seq": 2, "x": "' + b"y" * (5 * 1024 * 1024) + b'"}')
    assert writer.write_errors == 2
    assert positions(tmp_path) == []


def test_a_writer_killed_mid_stream_leaves_every_earlier_line_intact(tmp_path: Path) -> None:
    script = (
        "import sys, msgspec\n"
        "from pathlib import Path\n"
        "from wemixvisor.events.journal import EventJournal\n"
        "j = EventJournal(Path(sys.argv[1])); j.open()\n"
        "seq = 0\n"
        "while True:\n"
        "    seq += 1\n"
        "    j.append(msgspec.json.encode({'run_id': 'killed', 'seq': seq, 'pad': 'z' * 300}))\n"
        "    if seq == 500: print('ready', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    held = positions(tmp_path)
    assert len(held) >= 500
    assert [seq for _, seq in held] == list(range(1, len(held) + 1))


def test_a_replay_of_100000_events_starts_within_a_second(tmp_path: Path) -> None:
    """Not a timing assertion on the daemon: a bound on the test's own replay, generous 5x."""
    writer = journal(tmp_path, max_segment_bytes=64 * 1024 * 1024)
    line = payload("run-a", 1, pad=120)
    for seq in range(1, 100_001):
        writer.append(line.replace(b'"seq":1', b'"seq":' + str(seq).encode()))
    writer.close()
    started = time.monotonic()
    first = next(replay(tmp_path, since_seq=99_990))
    elapsed = time.monotonic() - started
    assert first[0] == JournalPosition("run-a", 99_990)
    assert elapsed < 1.0, f"replay of 100,000 events took {elapsed:.2f}s to start"
