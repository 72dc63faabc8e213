"""The daemon-owned state files under `$DAEMON_HOME/wemixvisor/state/` (SPEC §2).

This module is their one owner: where each file lives, how it is read and written (durably:
temp file, fsync, rename, fsync of the directory), and the lock that makes one daemon per home.
Other modules ask it instead of joining paths onto `state/` or taking locks themselves.

- `daemon.lock`: an flock held for a daemon's life (and by the operator tool while it edits the
  daemon's state offline); it holds the pid of the last daemon.
- `plans.json`: the persistent plan queue.
- `journal.json`: the upgrade in progress (its `Journal` type belongs to the upgrade saga).
- `rollback.json`: an operator's rollback in progress (its type belongs to `upgrade.rollback`).
- `node.pid`: the running node, for adoption after a daemon restart.
- `governance.json`: what governance applied.
- `daemon.json`: the running daemon's pid, endpoints, version and home, written at its start and
  removed at its stop: what the operator tool uses when config.toml is broken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.home.layout import Home
from wemixvisor.plans.files import read_capped
from wemixvisor.plans.queue import PlanError, QueueState, decode_state, encode_state

__all__ = [
    "MAX_STATE_BYTES",
    "DaemonRecord",
    "DaemonRunningError",
    "JournalError",
    "clear_daemon_record",
    "clear_journal",
    "daemon_lock",
    "daemon_pid",
    "daemon_record_file",
    "daemon_running",
    "events_dir",
    "governance_file",
    "journal_file",
    "load_journal",
    "lock_file",
    "move_aside",
    "node_pid_file",
    "queue_file",
    "read_daemon_record",
    "read_journal",
    "read_queue",
    "read_rollback",
    "rollback_file",
    "save_journal",
    "upgrade_in_progress",
    "write_daemon_record",
    "write_queue",
]

MAX_STATE_BYTES = 16 * 1024 * 1024
"""Cap on a state file read by the operator tool or the daemon: a larger one is not a state file."""

_PID_BYTES = 32

_Struct = TypeVar("_Struct", bound=msgspec.Struct)


def lock_file(home: Home) -> Path:
    """`state/daemon.lock`: flocked by the running daemon; holds the last daemon's pid."""
    return home.state_dir / "daemon.lock"


def queue_file(home: Home) -> Path:
    """`state/plans.json`: the daemon's persistent plan queue."""
    return home.state_dir / "plans.json"


def journal_file(home: Home) -> Path:
    """`state/journal.json`: the upgrade in progress, if any."""
    return home.state_dir / "journal.json"


def rollback_file(home: Home) -> Path:
    """`state/rollback.json`: the operator's rollback of a completed upgrade in progress."""
    return home.state_dir / "rollback.json"


def node_pid_file(home: Home) -> Path:
    """`state/node.pid`: the node the daemon started, for adoption after a daemon restart."""
    return home.state_dir / "node.pid"


def events_dir(home: Home) -> Path:
    """`state/events/`: the bounded journal of every published event (SPEC §10)."""
    return home.state_dir / "events"


def governance_file(home: Home) -> Path:
    """`state/governance.json`: what governance proposals were seen and applied."""
    return home.state_dir / "governance.json"


def daemon_record_file(home: Home) -> Path:
    """`state/daemon.json`: the running daemon's pid, endpoints and version."""
    return home.state_dir / "daemon.json"


_MAX_RECORD_BYTES = 64 * 1024


class DaemonRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a daemon records about itself at start (`state/daemon.json`)."""

    pid: int
    control_endpoint: str
    events_endpoint: str
    version: str
    home: str
    started_at: float


def write_daemon_record(home: Home, record: DaemonRecord) -> None:
    """Record the running daemon (atomic, 0600): readers see the old record or the new one."""
    atomic_write_bytes(daemon_record_file(home), msgspec.json.encode(record), mode=0o600)


def read_daemon_record(home: Home) -> DaemonRecord | None:
    """The last daemon's record; None when there is none. PlanError when it is unreadable."""
    path = daemon_record_file(home)
    try:
        raw = read_capped(path, _MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except PlanError as exc:
        raise PlanError(f"daemon record {exc}") from None
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(raw, type=DaemonRecord)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise PlanError(f"{path} is not a daemon record: {exc}") from None


def clear_daemon_record(home: Home, pid: int) -> None:
    """Remove the record of daemon `pid` when it stops (a successor's record is left alone)."""
    try:
        record = read_daemon_record(home)
    except PlanError:
        record = None
    if record is None or record.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            daemon_record_file(home).unlink()


def move_aside(path: Path) -> Path:
    """Rename an unreadable state file to `<name>.unreadable-<unix time>`; the new path.

    The daemon then starts without it, and the operator still has the file to look at.
    """
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    os.replace(path, aside)
    return aside


def _read_state(path: Path) -> bytes | None:
    """A state file's bytes, None when it does not exist; PlanError when it is refused."""
    try:
        return read_capped(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None


def read_queue(home: Home) -> QueueState:
    """The plan queue in `state/plans.json` (empty if no daemon ever wrote one).

    PlanError when the file is refused or is not a queue.
    """
    path = queue_file(home)
    try:
        raw = _read_state(path)
    except PlanError as exc:
        raise PlanError(f"plan queue {exc}") from None
    if raw is None:
        return QueueState()
    try:
        return decode_state(raw)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None


def write_queue(home: Home, queue: QueueState) -> None:
    """Save the plan queue durably (readers see the old queue or the new one)."""
    atomic_write_bytes(queue_file(home), encode_state(queue), mode=0o600)


class JournalError(Exception):
    """The journal exists but cannot be read."""


def upgrade_in_progress(home: Home) -> bool:
    """Whether a journal says an upgrade is under way (it is removed when the upgrade ends)."""
    return journal_file(home).exists()


def load_journal(path: Path, journal_type: type[_Struct]) -> _Struct | None:
    """The journal at `path` as `journal_type`; None when no upgrade is in progress.

    JournalError when the file exists but does not decode.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=journal_type)
    except msgspec.DecodeError as exc:
        raise JournalError(f"{path} is unreadable: {exc}") from None


def save_journal(path: Path, journal: msgspec.Struct) -> None:
    """Write the journal durably: before each upgrade step, so a killed daemon resumes it."""
    atomic_write_bytes(path, msgspec.json.encode(journal), mode=0o600)


def clear_journal(path: Path) -> None:
    """The upgrade is over: remove its journal."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_journal(home: Home) -> dict[str, Any] | None:
    """The journal as a raw JSON object, for readers that must not depend on its exact shape
    (the operator tool, backup retention); None when there is none.

    PlanError when the file exists but is not a JSON object.
    """
    return _read_object(journal_file(home))


def read_rollback(home: Home) -> dict[str, Any] | None:
    """The rollback journal as a raw JSON object (backup retention keeps what it restores);
    None when there is none, PlanError when it is not a JSON object."""
    return _read_object(rollback_file(home))


def _read_object(path: Path) -> dict[str, Any] | None:
    raw = _read_state(path)
    if raw is None:
        return None
    try:
        decoded = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise PlanError(f"journal {path} is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise PlanError(f"journal {path} is not a JSON object")
    return decoded


class DaemonRunningError(Exception):
    """A daemon holds the home's lock; `pid` is what it wrote into the lock file, if readable."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"daemon is running (pid {pid if pid is not None else '?'})")
        self.pid = pid


def _parse_pid(raw: bytes) -> int | None:
    text = raw.decode(errors="replace").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def daemon_pid(home: Home) -> int | None:
    """The pid the last daemon wrote into `state/daemon.lock` (it may have exited since)."""
    try:
        with lock_file(home).open("rb") as handle:
            return _parse_pid(handle.read(_PID_BYTES))
    except OSError:
        return None


def daemon_running(home: Home) -> bool:
    """Whether a daemon runs on this home: it holds an exclusive flock on `state/daemon.lock`.

    Tries a shared lock without blocking and releases it at once; a lock that cannot be taken
    means a daemon holds it. A missing lock file means no daemon ever ran here.
    """
    try:
        fd = os.open(lock_file(home), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def daemon_lock(home: Home, *, record_pid: bool = False) -> Iterator[None]:
    """Hold the home's lock exclusively: one daemon per home, and no daemon while the operator
    tool edits the daemon's state offline.

    The kernel releases the flock when its holder dies, so a killed daemon never leaves a stale
    lock. The daemon passes `record_pid` to write its pid into the lock file; the operator tool
    leaves the last daemon's pid as it is. DaemonRunningError when another process holds it;
    PlanError when the home was never initialised.
    """
    if not home.visor_dir.is_dir():
        raise PlanError(f"{home.visor_dir} does not exist; run `wemixvisor init <binary>` first")
    home.state_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(lock_file(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DaemonRunningError(_parse_pid(os.pread(fd, _PID_BYTES, 0))) from None
        if record_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
