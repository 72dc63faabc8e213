"""The bounded on-disk event journal (SPEC §10): every published event, kept across daemon runs.

ZeroMQ PUB drops what is published before a subscriber joins; the journal is what a late or
restarted subscriber replays before it follows the live socket. It lives in
`state/events/` as JSON-lines segment files `events-<index>.jsonl`, each line the exact payload
published. A segment is closed at `max_segment_bytes` and the oldest segments beyond
`max_segments` are deleted, so the journal never holds more than about
`max_segments * max_segment_bytes`.

Each event is one `write` of a whole line to a file opened O_APPEND: a daemon killed with SIGKILL
leaves at worst a torn LAST line, which readers skip; earlier lines are never rewritten.

A position in the journal is `(run_id, seq)`: `seq` restarts at 1 with every daemon run, so a
replay names the run it starts in (by default the newest run in the journal).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

__all__ = [
    "DEFAULT_MAX_SEGMENTS",
    "DEFAULT_MAX_SEGMENT_BYTES",
    "EventJournal",
    "JournalPosition",
    "JournalReplayError",
    "replay",
]

DEFAULT_MAX_SEGMENT_BYTES: Final = 8 * 1024 * 1024
DEFAULT_MAX_SEGMENTS: Final = 8

_SEGMENT_RE: Final = re.compile(r"\Aevents-(\d{8})\.jsonl\Z")
_MAX_LINE_BYTES: Final = 4 * 1024 * 1024  # an event bigger than this is not journaled


class JournalPosition(msgspec.Struct, frozen=True):
    """Where an event stands: its daemon run and its seq within that run."""

    run_id: str
    seq: int


class JournalReplayError(Exception):
    """A replay that cannot start where asked (an unknown run, a seq the journal no longer
    holds); the message says what the journal does hold."""


class _Envelope(msgspec.Struct):
    run_id: str = ""
    seq: int = 0


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _SEGMENT_RE.match(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


class EventJournal:
    """The writer: appends each published payload; one per daemon, on the publisher's thread."""

    def __init__(
        self,
        directory: Path,
        *,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> None:
        if max_segment_bytes < 1024 or max_segments < 2:
            raise ValueError("an event journal needs segments of at least 1 KiB, and 2 of them")
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.max_segments = max_segments
        self._fd: int | None = None
        self._index = 0
        self._size = 0
        self.write_errors = 0

    def open(self) -> None:
        """Create the directory (0700) and continue the newest segment, or start the first."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        segments = _segments(self.directory)
        self._index = segments[-1][0] if segments else 1
        self._open_segment(self._index)
        if self._size > 0:
            self._end_torn_line()

    def _open_segment(self, index: int) -> None:
        path = self.directory / f"events-{index:08d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def _end_torn_line(self) -> None:
        # A kill -9 mid-write can leave a line without its newline; start on a fresh line so
        # the next event is not glued onto the torn one (readers skip the torn line).
        path = self.directory / f"events-{self._index:08d}.jsonl"
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
        if last != b"\n":
            self._write(b"\n")

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def append(self, payload: bytes) -> None:
        """Journal one event payload (one JSON object, no newline inside).

        Never raises: a full disk or an I/O error counts in `write_errors` and the event stays
        published; the journal then has a gap that a replay reports."""
        if self._fd is None or len(payload) > _MAX_LINE_BYTES or b"\n" in payload:
            self.write_errors += 1
            return
        try:
            if self._size + len(payload) + 1 > self.max_segment_bytes and self._size > 0:
                self._rotate()
            self._write(payload + b"\n")
        except OSError:
            self.write_errors += 1

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self._index += 1
        self._open_segment(self._index)
        for _index, path in _segments(self.directory)[: -self.max_segments]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        """Close the current segment (the daemon is stopping)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lines(directory: Path) -> Iterator[bytes]:
    """Every complete line of every segment, oldest first; a segment pruned while being read
    is skipped (its events are gone)."""
    for _index, path in _segments(directory):
        try:
            with path.open("rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        end = data.rfind(b"\n")
        if end < 0:
            continue
        yield from data[:end].split(b"\n")


def _decoded(directory: Path) -> Iterator[tuple[JournalPosition, bytes]]:
    for line in _lines(directory):
        if not line:
            continue
        try:
            envelope = _envelope_decoder.decode(line)
        except msgspec.DecodeError:
            continue  # a torn line left by a kill, or a corrupted one: skipped, never fatal
        if envelope.run_id and envelope.seq > 0:
            yield JournalPosition(envelope.run_id, envelope.seq), line


def replay(
    directory: Path, *, since_seq: int | None = None, since_run: str | None = None
) -> Iterator[tuple[JournalPosition, bytes]]:
    """The journaled events from a position on, oldest first, as (position, payload).

    `since_run` names the run to start in (default: the newest run in the journal); `since_seq`
    the first seq of that run to include (default: the oldest the journal holds of it). Every
    event of later runs follows. JournalReplayError when the run is not in the journal, or when
    the journal no longer holds `since_seq` of it (rotated away); the message says what it holds.
    """
    runs: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    for position, _line in _decoded(directory):
        first_last = runs.get(position.run_id)
        if first_last is None:
            order.append(position.run_id)
            runs[position.run_id] = (position.seq, position.seq)
        else:
            runs[position.run_id] = (first_last[0], position.seq)
    if not order:
        if since_run is not None:
            raise JournalReplayError(f"the event journal is empty; run {since_run} is not in it")
        return
    run = since_run if since_run is not None else order[-1]
    if run not in runs:
        held = ", ".join(order[-5:])
        raise JournalReplayError(f"run {run} is not in the event journal (newest runs: {held})")
    first, last = runs[run]
    start = since_seq if since_seq is not None else first
    if start < first:
        raise JournalReplayError(
            f"the event journal holds run {run} from seq {first} to {last}; "
            f"seq {start} has been rotated away"
        )
    later = set(order[order.index(run) + 1 :])
    for position, line in _decoded(directory):
        if (position.run_id == run and position.seq >= start) or position.run_id in later:
            yield position, line
