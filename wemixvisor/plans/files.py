"""The plan files on disk (SPEC §2, §4): reading them safely, watching them, editing them.

Shared by the FileSourceActor (which watches `upgrade-info.json`, its `.batch` sibling and
`config.toml`) and the operator tool (which writes plans into the batch file). Validation of
what the files hold is `plans.queue`'s job; the daemon's own state files are `home.state`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from wemixvisor.home.fsutil import ReadRefused, atomic_write_bytes
from wemixvisor.home.fsutil import read_capped as read_capped_file
from wemixvisor.plans.queue import (
    MAX_PLAN_BYTES,
    Plan,
    PlanError,
    parse_batch,
    parse_plan,
    plan_from_object,
    validate_height,
    validate_name,
)

__all__ = [
    "BATCH_FILE",
    "PLAN_FILE",
    "STABLE_POLLS",
    "FileStamp",
    "FileWatch",
    "PlanRejection",
    "Reading",
    "batch_file",
    "file_plans",
    "locked_plan_files",
    "parse_batch_file",
    "plan_file",
    "plan_file_rejection",
    "read_batch_objects",
    "read_capped",
    "remove_from_plan_files",
    "stat_file",
    "write_batch_objects",
]

PLAN_FILE = "upgrade-info.json"
BATCH_FILE = "upgrade-info.json.batch"

STABLE_POLLS = 2
"""A file that does not parse is rejected only after this many polls found it unchanged."""


def plan_file(data_dir: Path) -> Path:
    """`<data dir>/upgrade-info.json`: one plan (cosmovisor-compatible)."""
    return data_dir / PLAN_FILE


def batch_file(data_dir: Path) -> Path:
    """`<data dir>/upgrade-info.json.batch`: a JSON array of plans."""
    return data_dir / BATCH_FILE


@dataclass(frozen=True)
class FileStamp:
    """What `stat` says about a file; any change means the content may have changed."""

    mtime_ns: int
    size: int
    inode: int
    regular: bool


def stat_file(path: Path) -> FileStamp | None:
    """The file's stamp (following symlinks: operators may link a plan file), None if absent."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return FileStamp(
        mtime_ns=info.st_mtime_ns,
        size=info.st_size,
        inode=info.st_ino,
        regular=stat.S_ISREG(info.st_mode),
    )


def read_capped(path: Path, limit: int = MAX_PLAN_BYTES) -> bytes:
    """The whole content of the regular file `path`, refused (PlanError) above `limit` bytes.

    The size is checked before reading, and the read stops at `limit + 1` bytes in case the file
    grows meanwhile: a hostile file never gets read entirely. FileNotFoundError passes through.
    """
    try:
        return read_capped_file(path, limit)
    except ReadRefused as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True)
class Reading:
    """One look at a watched file whose content has not been dealt with yet.

    `content` is the file's bytes, or None when the file is absent (only for watches that act
    on absence) or could not be read (`error` says why). `key` identifies the content (a hash,
    or the stamp of a file too large to read); `stable` is True once the file has stayed the
    same for `STABLE_POLLS` polls, the moment a failing file may be rejected.
    """

    content: bytes | None
    error: str | None
    key: str
    stable: bool


class FileWatch:
    """Decides, poll by poll, when a watched file's content is complete enough to act on.

    `poll()` returns a `Reading` for content not yet settled, None otherwise; the caller tries
    it and calls `settle(reading)` once it acted on it (or rejected it), so that the same
    content is never acted on twice. An unchanged, settled file costs one `stat` per poll.
    A file that disappears forgets its settled content: written again, it is read afresh.
    """

    def __init__(
        self, path: Path, limit: int = MAX_PLAN_BYTES, *, act_on_absence: bool = False
    ) -> None:
        self.path = path
        self._limit = limit
        self._act_on_absence = act_on_absence
        self._stamp: FileStamp | None = None
        self._seen = False
        self._unchanged = 0
        self._last_key: str | None = None
        self._settled_key: str | None = None

    def poll(self) -> Reading | None:
        """Look at the file once; a Reading if there is unsettled content to try."""
        stat_error: str | None = None
        try:
            stamp = stat_file(self.path)
        except OSError as exc:
            stamp, stat_error = None, f"cannot inspect {self.path}: {exc.strerror}"
        if self._seen and stamp == self._stamp:
            self._unchanged += 1
            if self._last_key is not None and self._last_key == self._settled_key:
                return None
        else:
            self._seen = True
            self._stamp = stamp
            self._unchanged = 0
        if stat_error is not None:
            return self._observe(None, None, stat_error, "error")
        if stamp is None:
            if not self._act_on_absence:
                self._last_key = self._settled_key = None
                return None
            return self._observe(stamp, None, None, "absent")
        if not stamp.regular:
            return self._observe(stamp, None, f"{self.path} is not a regular file", "irregular")
        if stamp.size > self._limit:
            reason = f"{self.path} is {stamp.size} bytes, over the {self._limit}-byte limit"
            return self._observe(stamp, None, reason, "oversize")
        try:
            content = read_capped(self.path, self._limit)
        except FileNotFoundError:
            # Removed between stat and open: the next poll sees it gone.
            return None
        except PlanError as exc:
            return self._observe(stamp, None, str(exc), "unreadable")
        except OSError as exc:
            return self._observe(stamp, None, f"cannot read {self.path}: {exc.strerror}", "error")
        return self._observe(stamp, content, None, hashlib.sha256(content).hexdigest())

    def _observe(
        self, stamp: FileStamp | None, content: bytes | None, error: str | None, kind: str
    ) -> Reading | None:
        # `kind` is the content's hash when there is content; content that cannot be hashed is
        # told apart by its stamp, so that a new write is a new key.
        key = kind
        if content is None and stamp is not None:
            key = f"{kind}:{stamp.mtime_ns}:{stamp.size}:{stamp.inode}"
        if key != self._last_key:
            self._last_key = key
            self._unchanged = 0
        if key == self._settled_key:
            return None
        return Reading(
            content=content, error=error, key=key, stable=self._unchanged >= STABLE_POLLS
        )

    def settle(self, reading: Reading) -> None:
        """The content of `reading` was acted on or rejected: do not offer it again."""
        self._settled_key = reading.key

    @property
    def quiet(self) -> bool:
        """Whether `poll()` will return None for as long as the file's stamp stays the same:
        its content was settled, or it is absent and absence is not acted on."""
        return self._seen and (self._last_key is None or self._last_key == self._settled_key)


@dataclass(frozen=True)
class PlanRejection:
    """A plan (or a whole file) that will not be registered, with what is known about it."""

    reason: str
    name: str | None = None
    height: int | None = None


def _hints(obj: object) -> tuple[str | None, int | None]:
    """The name and height of a rejected plan object, where they are valid on their own."""
    if not isinstance(obj, dict):
        return None, None
    name: str | None = None
    height: int | None = None
    with contextlib.suppress(PlanError):
        name = validate_name(obj.get("name"))
    with contextlib.suppress(PlanError):
        height = validate_height(obj.get("height"))
    return name, height


def plan_file_rejection(raw: bytes, error: PlanError) -> PlanRejection:
    """The rejection of a whole `upgrade-info.json`, with its name/height when they are valid."""
    try:
        decoded = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return PlanRejection(str(error))
    name, height = _hints(decoded)
    return PlanRejection(str(error), name, height)


def parse_batch_file(raw: bytes, source: str = "batch") -> tuple[list[Plan], list[PlanRejection]]:
    """Batch content → its valid plans and one rejection per invalid entry.

    A batch that is not a JSON array at all raises PlanError (the whole file is rejected).
    """
    plans, errors = parse_batch(raw, source)
    if not errors:
        return plans, []
    # Only when some entry failed: decode again to name the failing entries in the rejections.
    entries = msgspec.json.decode(raw)
    rejections: list[PlanRejection] = []
    for index, obj in enumerate(entries):
        try:
            plan_from_object(obj, source)
        except PlanError as exc:
            name, height = _hints(obj)
            rejections.append(PlanRejection(f"batch entry {index}: {exc}", name, height))
    return plans, rejections


@contextlib.contextmanager
def locked_plan_files(data_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write edits of the plan files between operator tools.

    The lock is an flock on the data directory itself: nothing extra is created in the node's
    data dir, and the daemon (which only reads the files, each written atomically) never waits.
    """
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PlanError(
            f"data directory {data_dir} does not exist; run `wemixvisor init <binary>` first"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_batch_objects(data_dir: Path) -> list[dict[str, Any]]:
    """The batch file's entries as raw JSON objects ([] if there is no batch file).

    Raises PlanError when the file exists but is not a JSON array of objects: an operator
    tool must not overwrite a file it cannot understand.
    """
    path = batch_file(data_dir)
    try:
        raw = read_capped(path)
    except FileNotFoundError:
        return []
    try:
        decoded = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        raise PlanError(f"{path} is not valid JSON; fix or remove it first") from None
    if not isinstance(decoded, list) or not all(isinstance(obj, dict) for obj in decoded):
        raise PlanError(f"{path} is not a JSON array of plan objects; fix or remove it first")
    return decoded


def write_batch_objects(data_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the batch file with `entries` atomically; PlanError if it would exceed 1 MiB."""
    path = batch_file(data_dir)
    raw = msgspec.json.format(msgspec.json.encode(entries), indent=2) + b"\n"
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(
            f"{path} would be {len(raw)} bytes, over the {MAX_PLAN_BYTES}-byte limit the daemon"
            " reads"
        )
    atomic_write_bytes(path, raw)


def remove_from_plan_files(data_dir: Path, name: str) -> list[Path]:
    """Remove plan `name` from the batch file and from `upgrade-info.json`; the files changed.

    A cancelled plan left in a file would be registered again the next time the daemon reads
    its files (at every start), so a cancel also takes it out of them. An `upgrade-info.json`
    holding that plan is removed; the batch file keeps its other entries (removed when none
    remain). Call under `locked_plan_files`.
    """
    changed: list[Path] = []
    entries = read_batch_objects(data_dir)
    kept = [entry for entry in entries if entry.get("name") != name]
    if len(kept) != len(entries):
        path = batch_file(data_dir)
        if kept:
            write_batch_objects(data_dir, kept)
        else:
            path.unlink()
        changed.append(path)
    single = plan_file(data_dir)
    try:
        raw = read_capped(single)
    except FileNotFoundError:
        return changed
    try:
        decoded = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return changed
    if isinstance(decoded, dict) and decoded.get("name") == name:
        single.unlink()
        changed.append(single)
    return changed


def file_plans(data_dir: Path) -> tuple[list[Plan], list[str]]:
    """The valid plans in `upgrade-info.json` and the batch file, and a problem line per
    file or entry that the daemon would reject."""
    plans: list[Plan] = []
    problems: list[str] = []
    single = plan_file(data_dir)
    try:
        plans.append(parse_plan(read_capped(single)))
    except FileNotFoundError:
        pass
    except PlanError as exc:
        problems.append(f"{single}: {exc}")
    except OSError as exc:
        problems.append(f"{single}: {exc.strerror}")
    batch = batch_file(data_dir)
    try:
        batch_plans, rejections = parse_batch_file(read_capped(batch))
    except FileNotFoundError:
        return plans, problems
    except PlanError as exc:
        problems.append(f"{batch}: {exc}")
        return plans, problems
    except OSError as exc:
        problems.append(f"{batch}: {exc.strerror}")
        return plans, problems
    plans.extend(batch_plans)
    problems.extend(f"{batch}: {rejection.reason}" for rejection in rejections)
    return plans, problems
