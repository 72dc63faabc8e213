"""A backup on disk: its name, its `manifest.json`, and the listing of the backups directory.

A backup is `backups/<UTC YYYYmmddTHHMMSSZ>-<label>/` holding `data/` (the copy) and
`manifest.json`. The manifest is written first with `complete: false` and, once every byte is
on disk, replaced atomically by one with `complete: true`: a backup without a complete manifest
is never restored.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from wemixvisor.backup.errors import BackupError, BackupNotFound
from wemixvisor.home.fsutil import (
    ReadRefused,
    atomic_write_bytes,
    fsync_dir,
    read_capped,
    removed_on_failure,
)

MANIFEST = "manifest.json"
DATA = "data"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest larger than this is refused before it is read (millions of files fit below it)."""

ID_STAMP = "%Y%m%dT%H%M%SZ"
"""The UTC time at the start of a backup id (`strftime` format)."""
_LABEL_RE = re.compile(r"\A[A-Za-z0-9._-]{1,72}\Z")
ID_RE = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,80}\Z")
"""What a backup id looks like; the backups directory's other entries are not backups."""


EntryKind = Literal["file", "dir", "symlink"]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class ManifestEntry(msgspec.Struct, frozen=True):
    """One entry of the data dir: its path relative to the data dir, and what it is."""

    path: str
    kind: EntryKind
    size: NonNegative = 0
    mtime_ns: int = 0
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)] = 0
    target: str | None = None  # symlinks only
    ino: NonNegative = 0  # files: the source's inode when scanned (a replaced file differs)


class Manifest(msgspec.Struct, kw_only=True):
    """manifest.json of a backup.

    `kind` is "full" (made on request) or "upgrade" (pre-staged for `plan`, finished at H);
    `changed_bytes` is what the last mirror copied, `seconds` how long it took.
    """

    id: str
    label: str
    created_at: float
    source: str
    entries: list[ManifestEntry]
    total_bytes: NonNegative
    file_count: NonNegative
    complete: bool = False
    kind: str = "full"
    plan: str | None = None
    changed_bytes: NonNegative = 0
    seconds: float = 0.0
    staged: bool = False  # incomplete, and `entries` records what the copy holds
    stopped_seconds: float | None = None  # how long the node was stopped for this backup
    # Pre-staged copies: the chain head the daemon saw as the copy began (None: not known).
    head: int | None = None


class BackupSummary(msgspec.Struct, kw_only=True):
    """A manifest without its entries: enough to list backups cheaply."""

    id: str = ""
    label: str = ""
    created_at: float = 0.0
    total_bytes: int = 0
    file_count: int = 0
    complete: bool = False
    kind: str = "full"
    plan: str | None = None


_decode_manifest = msgspec.json.Decoder(Manifest).decode
decode_summary = msgspec.json.Decoder(BackupSummary).decode
"""A manifest's JSON as its BackupSummary (the entries are skipped)."""


def check_label(label: str) -> str:
    if not isinstance(label, str) or label in (".", "..") or not _LABEL_RE.fullmatch(label):
        raise BackupError(f"invalid backup label {label!r}: 1-72 characters of A-Z a-z 0-9 . _ -")
    return label


def backup_id(label: str, at: float) -> str:
    """`<UTC YYYYmmddTHHMMSSZ>-<label>` for a backup made at `at`; BackupError for a bad label."""
    return time.strftime(ID_STAMP, time.gmtime(at)) + f"-{check_label(label)}"


def upgrade_label(plan_name: str) -> str:
    """The label of the backup made for upgrade `plan_name`: `pre-<plan>`."""
    return check_label(f"pre-{plan_name}")


def new_backup_id(backups_dir: Path, label: str, at: float | None = None) -> str:
    """`<UTC YYYYmmddTHHMMSSZ>-<label>`, with `.2`, `.3`… when that name is taken."""
    base = backup_id(label, time.time() if at is None else at)
    ident, suffix = base, 1
    while os.path.lexists(backups_dir / ident):
        suffix += 1
        ident = f"{base}.{suffix}"
    return ident


def backup_dir(backups_dir: Path, backup_id: str) -> Path:
    """The directory of backup `backup_id`; BackupNotFound for a malformed or unknown id.

    An id is a single plain name (never `..`, a slash or an absolute path), and the directory
    must be a real one, not a symlink planted in the backups directory.
    """
    if not isinstance(backup_id, str) or not ID_RE.fullmatch(backup_id):
        raise BackupNotFound(
            f"invalid backup id {backup_id!r}: expected <YYYYmmddTHHMMSSZ>-<label> as listed by"
            " `wemixvisor backup list`"
        )
    path = backups_dir / backup_id
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise BackupNotFound(f"no backup {backup_id} in {backups_dir}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise BackupNotFound(f"{path} is not a backup directory")
    return path


def write_manifest(
    target: Path, manifest: Manifest, *, sync: Callable[[Path], bool] | None = None
) -> None:
    """Replace the manifest of backup `target` atomically and durably.

    With `sync` (one flush of the whole filesystem, False when the system has none), the new
    file is written, then everything pending on the filesystem (the copy the manifest
    describes, and the file) is flushed in that one call, and only then is the file renamed
    into place and the rename made durable: the manifest is what makes a backup complete, so
    it never names data that a crash could still lose. Otherwise each is fsynced.
    """
    try:
        raw = msgspec.json.encode(manifest)
    except (UnicodeEncodeError, msgspec.EncodeError) as exc:
        raise BackupError(f"cannot write the manifest of {target.name}: {exc}") from None
    path = target / MANIFEST
    if sync is None:
        atomic_write_bytes(path, raw, mode=0o600)
        return
    tmp = target / f".{MANIFEST}.{secrets.token_hex(4)}.tmp"
    with removed_on_failure(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            if not sync(target):
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    fsync_dir(target)


def read_capped_manifest(path: Path, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of the manifest file `path`; BackupError when missing, unreadable or too big."""
    try:
        return read_capped(path, limit, follow_symlinks=False)
    except FileNotFoundError:
        raise BackupError(f"{path} is missing: the backup is incomplete") from None
    except ReadRefused as exc:
        raise BackupError(str(exc)) from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None


def _check_entry_paths(entries: list[ManifestEntry]) -> None:
    """Every path stays inside the tree and below a directory the manifest itself lists.

    Without the second rule a manifest could list `link -> /etc` and then `link/passwd`, and a
    restore would write through the link.
    """
    seen_dirs: set[str] = set()
    seen: set[str] = set()
    for entry in entries:
        path = entry.path
        parts = path.split("/")
        if (
            not path
            or "\0" in path
            or path.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise BackupError(f"manifest lists {path!r}, a path outside the data dir")
        if path in seen:
            raise BackupError(f"manifest lists {path!r} twice")
        parent = path.rpartition("/")[0]
        if parent and parent not in seen_dirs:
            raise BackupError(f"manifest lists {path!r} before (or without) its directory")
        if entry.kind == "symlink" and (not entry.target or "\0" in entry.target):
            raise BackupError(f"manifest lists symlink {path!r} without a valid target")
        seen.add(path)
        if entry.kind == "dir":
            seen_dirs.add(path)


def load_manifest(backup_path: Path) -> Manifest:
    """The validated manifest of the backup at `backup_path`; BackupError says what is wrong.

    Refused: a manifest over 64 MiB, unparsable or truncated JSON, fields of the wrong type,
    paths outside the tree, totals that do not add up, an id that is not the directory's.
    """
    raw = read_capped_manifest(backup_path / MANIFEST)
    try:
        manifest = _decode_manifest(raw)
    except msgspec.DecodeError as exc:
        raise BackupError(f"manifest of {backup_path.name} is unreadable: {exc}") from None
    if manifest.id != backup_path.name:
        raise BackupError(
            f"manifest of {backup_path.name} describes another backup ({manifest.id!r})"
        )
    _check_entry_paths(manifest.entries)
    files = [entry for entry in manifest.entries if entry.kind == "file"]
    if manifest.complete and (
        manifest.total_bytes != sum(entry.size for entry in files)
        or manifest.file_count != len(files)
    ):
        raise BackupError(f"manifest of {backup_path.name} has totals that do not add up")
    return manifest


def read_manifest(backup_path: Path) -> Manifest | None:
    """The backup's manifest when it is complete and valid, else None."""
    try:
        manifest = load_manifest(backup_path)
    except BackupError:
        return None
    return manifest if manifest.complete else None
