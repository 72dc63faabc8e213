"""Backups of the node's data directory (SPEC §7): copies, pre-staging, manifests, restore, pruning.

A backup is `backups/<UTC YYYYmmddTHHMMSSZ>-<label>/` holding `data/` (the copy) and
`manifest.json`. The manifest is written first with `complete: false` and, once every byte is
on disk, replaced atomically by one with `complete: true`: a backup without a complete manifest
(a daemon killed while writing it, a pre-staged copy waiting for its upgrade) is never restored
and is pruned once nothing needs it.

Every copy is a *mirror*: the destination tree is compared with the source (kind, size,
mtime_ns, mode) and only what differs is copied, what is gone is removed. A first copy mirrors
into an empty tree; a pre-staged upgrade backup is mirrored while the node runs and mirrored
again after the node stopped at H, when only the files the node changed meanwhile are copied.
Files are copied with the kernel's fast paths (FICLONE reflink, then `copy_file_range`), falling
back to plain reads and writes, and keep their mtime so that the next mirror recognises them.
"""

from __future__ import annotations

import calendar
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from wemixvisor.home import state
from wemixvisor.home.fsutil import ReadRefused, atomic_write_bytes, fsync_dir, read_capped
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.plans.queue import PlanError, PlanStatus

__all__ = [
    "DATA",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "SPACE_FACTOR",
    "BackupBusy",
    "BackupCancelled",
    "BackupError",
    "BackupNotFound",
    "Delta",
    "Manifest",
    "ManifestEntry",
    "Progress",
    "StageResult",
    "backup_dir",
    "backup_id",
    "check_space",
    "choose_prune",
    "complete_backup",
    "create_backup",
    "finish_upgrade_backup",
    "free_bytes",
    "list_backups",
    "load_manifest",
    "new_backup_id",
    "plan_delta",
    "prestage_upgrade_backup",
    "protected_backups",
    "prune_backups",
    "read_manifest",
    "restore_backup",
    "scan",
    "stage",
    "start_backup",
    "tree_bytes",
    "upgrade_label",
    "upgrade_space_problem",
    "verify_against",
]

MANIFEST = "manifest.json"
DATA = "data"
SPACE_FACTOR = 1.1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""A manifest larger than this is refused before it is read (millions of files fit below it)."""

# A file modified this recently when it is copied from a running node may change again within
# the same filesystem timestamp tick, keeping its size and mtime: its copy is given an mtime
# that can never match, so that the next mirror copies it again.
_RACY_NS = 2_000_000_000
_CHUNK = 16 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), from linux/fs.h
_NO_FAST_PATH = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF}
)
_STAMP = "%Y%m%dT%H%M%SZ"
_LABEL_RE = re.compile(r"\A[A-Za-z0-9._-]{1,72}\Z")
_ID_RE = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,80}\Z")

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as a copy advances."""


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message says why, with figures."""


class BackupBusy(BackupError):
    """Another backup operation is running (control code `busy`)."""


class BackupNotFound(BackupError, LookupError):
    """No backup of that id (control code `not_found`)."""


class BackupCancelled(BackupError):
    """The operation was cancelled (a pre-staging copy giving way to the upgrade)."""


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


class _Summary(msgspec.Struct, kw_only=True):
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
_decode_summary = msgspec.json.Decoder(_Summary).decode


# --- names ------------------------------------------------------------------------------------


def _check_label(label: str) -> str:
    if not isinstance(label, str) or label in (".", "..") or not _LABEL_RE.fullmatch(label):
        raise BackupError(f"invalid backup label {label!r}: 1-72 characters of A-Z a-z 0-9 . _ -")
    return label


def backup_id(label: str, at: float) -> str:
    """`<UTC YYYYmmddTHHMMSSZ>-<label>` for a backup made at `at`; BackupError for a bad label."""
    return time.strftime(_STAMP, time.gmtime(at)) + f"-{_check_label(label)}"


def upgrade_label(plan_name: str) -> str:
    """The label of the backup made for upgrade `plan_name`: `pre-<plan>`."""
    return _check_label(f"pre-{plan_name}")


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
    if not isinstance(backup_id, str) or not _ID_RE.fullmatch(backup_id):
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


# --- scanning and comparing -------------------------------------------------------------------


def scan(root: Path) -> list[ManifestEntry]:
    """Every directory, regular file and symlink under `root` (symlinks not followed).

    Parents come before their children. Entries that vanish while scanning (a running node
    deletes files) are left out; sockets, fifos and devices are not data and are skipped.
    """
    entries: list[ManifestEntry] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as listing:
                children = sorted(listing, key=lambda child: child.name)
        except (FileNotFoundError, NotADirectoryError):
            if not rel_dir:
                raise BackupError(f"{root} does not exist or is not a directory") from None
            continue
        subdirs: list[str] = []
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            try:
                rel.encode()
            except UnicodeEncodeError:
                raise BackupError(f"cannot back up {root / rel!r}: its name is not UTF-8") from None
            try:
                info = child.stat(follow_symlinks=False)
                kind = info.st_mode
                if stat.S_ISLNK(kind):
                    entry = ManifestEntry(rel, "symlink", target=os.readlink(child.path))
                elif stat.S_ISDIR(kind):
                    entry = ManifestEntry(
                        rel, "dir", mtime_ns=info.st_mtime_ns, mode=stat.S_IMODE(kind)
                    )
                    subdirs.append(rel)
                elif stat.S_ISREG(kind):
                    entry = ManifestEntry(
                        rel, "file", info.st_size, info.st_mtime_ns, stat.S_IMODE(kind)
                    )
                else:
                    continue
            except FileNotFoundError:
                continue
            entries.append(entry)
        pending.extend(reversed(subdirs))
    return entries


def _same(want: ManifestEntry, have: ManifestEntry) -> bool:
    """Whether `have` (in the copy) already is `want` (in the source)."""
    if want.kind != have.kind:
        return False
    if want.kind == "file":
        return (want.size, want.mtime_ns, want.mode) == (have.size, have.mtime_ns, have.mode)
    if want.kind == "symlink":
        return want.target == have.target
    return True


@dataclass(frozen=True)
class Delta:
    """What turns the copy (`have`) into the source (`want`); see `plan_delta`."""

    remove: list[ManifestEntry]  # topmost entries of the copy to delete (whole subtrees)
    make_dirs: list[ManifestEntry]  # directories to create, parents first
    links: list[ManifestEntry]  # symlinks to (re)create
    copy: list[ManifestEntry]  # files to copy, new or changed
    dirs: list[ManifestEntry]  # every directory of the source (modes and mtimes to set)
    freed_bytes: int  # bytes of the copy's files that are replaced or removed

    @property
    def copy_bytes(self) -> int:
        """Bytes to copy."""
        return sum(entry.size for entry in self.copy)

    @property
    def net_bytes(self) -> int:
        """How much more disk the copy needs afterwards (never below 0)."""
        return max(self.copy_bytes - self.freed_bytes, 0)


def plan_delta(want: Iterable[ManifestEntry], have: Iterable[ManifestEntry]) -> Delta:
    """The mirror plan: compare the source's entries with the copy's (size + mtime_ns + mode
    for files, target for symlinks, kind for everything) and list what to do."""
    wanted = {entry.path: entry for entry in want}
    remove: list[ManifestEntry] = []
    removed_dirs: set[str] = set()
    freed = 0
    for entry in have:
        parent = entry.path.rpartition("/")[0]
        inside_removed = bool(parent) and parent in removed_dirs
        source = wanted.get(entry.path)
        gone = source is None or source.kind != entry.kind
        if gone or inside_removed:
            if entry.kind == "dir":
                removed_dirs.add(entry.path)
            if entry.kind == "file":
                freed += entry.size
            if not inside_removed:
                remove.append(entry)
            continue
        if entry.kind == "file" and source is not None and not _same(source, entry):
            freed += entry.size
    kept = {entry.path: entry for entry in have}
    make_dirs: list[ManifestEntry] = []
    links: list[ManifestEntry] = []
    copy: list[ManifestEntry] = []
    dirs: list[ManifestEntry] = []
    for entry in wanted.values():
        existing = kept.get(entry.path)
        parent = entry.path.rpartition("/")[0]
        fresh = (
            existing is None
            or existing.kind != entry.kind
            or (bool(parent) and parent in removed_dirs)
        )
        if entry.kind == "dir":
            dirs.append(entry)
            if fresh:
                make_dirs.append(entry)
        elif entry.kind == "symlink":
            if fresh or existing is None or not _same(entry, existing):
                links.append(entry)
        elif fresh or existing is None or not _same(entry, existing):
            copy.append(entry)
    return Delta(remove, make_dirs, links, copy, dirs, freed)


def verify_against(root: Path, entries: Iterable[ManifestEntry]) -> list[str]:
    """Differences between the tree at `root` and `entries`: kinds, sizes, mtimes and modes
    of files, link targets. An empty list means they match."""
    expected = {entry.path: entry for entry in entries}
    actual = {entry.path: entry for entry in scan(root)}
    problems = [f"missing {path}" for path in expected.keys() - actual.keys()]
    problems += [f"unexpected {path}" for path in actual.keys() - expected.keys()]
    for path in expected.keys() & actual.keys():
        want, have = expected[path], actual[path]
        if want.kind != have.kind:
            problems.append(f"{path}: a {have.kind}, expected a {want.kind}")
        elif want.kind == "file" and want.size != have.size:
            problems.append(f"{path}: {have.size} bytes, expected {want.size}")
        elif not _same(want, have):
            problems.append(f"{path}: differs from the manifest")
    return sorted(problems)


def _require_match(root: Path, entries: list[ManifestEntry], what: str) -> None:
    problems = verify_against(root, entries)
    if problems:
        raise BackupError(f"{what} does not match its manifest: {'; '.join(problems[:5])}")


# --- space ------------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem holding `path` (or its nearest
    existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = os.statvfs(probe)
    return usage.f_bavail * usage.f_frsize


def check_space(target_dir: Path, needed: int, available: int | None = None) -> None:
    """Fail fast unless at least 1.1 times `needed` bytes are free; both figures in the error.

    `available` overrides the filesystem's figure (a quota known better, or a test).
    """
    available = free_bytes(target_dir) if available is None else available
    want = int(needed * SPACE_FACTOR)
    if available < want:
        raise BackupError(
            f"not enough free space in {target_dir}: need {want} bytes "
            f"(1.1 x {needed} to copy), {available} available"
        )


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (stat calls only)."""
    return sum(entry.size for entry in scan(root) if entry.kind == "file")


def upgrade_space_problem(
    data_dir: Path, backups_dir: Path, plan_name: str, *, available: int | None = None
) -> str | None:
    """Why the backup of upgrade `plan_name` would not fit, or None when it fits.

    What has to be copied is the data dir's size minus what is already pre-staged for the plan;
    only stat calls, cheap enough to run at H right before the node is stopped.
    """
    if not data_dir.is_dir():
        return None
    data_bytes = tree_bytes(data_dir)
    staged = 0
    found = _find_plan_backup(backups_dir, plan_name, complete=False)
    if found is not None:
        staged = found[1].total_bytes
    needed = max(data_bytes - staged, 0)
    available = free_bytes(backups_dir) if available is None else available
    want = int(needed * SPACE_FACTOR)
    if available >= want:
        return None
    return (
        f"not enough free space for the backup in {backups_dir}: need {want} bytes (1.1 x "
        f"{needed} to copy: {data_bytes} bytes of data, {staged} already pre-staged), "
        f"{available} available"
    )


# --- copying ----------------------------------------------------------------------------------


@dataclass
class _Copier:
    """Copies files with the fastest path the filesystem takes, counting progress."""

    progress: Progress
    cancel: threading.Event | None
    live: bool
    total: int = 0
    done: int = 0
    copied: list[Path] = field(default_factory=list)
    reflink: bool = True
    copy_range: bool = True

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise BackupCancelled("cancelled")

    def copy_file(self, source: Path, dest: Path, *, exists: bool = True) -> None:
        """Copy one regular file (not following symlinks) with its mode and mtime; `exists`
        False says that `dest` is known not to exist yet."""
        try:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.live:
                return  # deleted by the running node; the next mirror sees it gone
            raise
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            if self.live:
                return  # replaced by a symlink meanwhile; the next mirror sees what it is
            raise BackupError(f"{source} turned into a symlink while copying") from None
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                if self.live:
                    return
                raise BackupError(f"{source} is not a regular file")
            dst = _open_for_overwrite(dest) if exists else _create(dest)
            try:
                os.ftruncate(dst, self._copy_data(src, dst, info.st_size))
                mtime = info.st_mtime_ns
                if self.live and time.time_ns() - mtime < _RACY_NS:
                    mtime -= 1
                os.fchmod(dst, stat.S_IMODE(info.st_mode))
                os.utime(dst, ns=(info.st_atime_ns, mtime))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.copied.append(dest)

    def _copy_data(self, src: int, dst: int, size: int) -> int:
        """Copy from the start of `src` over `dst`; the bytes copied."""
        if self.reflink and size > 0:
            try:
                fcntl.ioctl(dst, _FICLONE, src)
            except OSError as exc:
                if exc.errno not in _NO_FAST_PATH and exc.errno != errno.EPERM:
                    raise
                self.reflink = False
            else:
                self._advance(size)
                return size
        copied = 0
        if self.copy_range:
            while True:
                self.check_cancel()
                try:
                    count = os.copy_file_range(src, dst, _CHUNK)
                except OSError as exc:
                    if exc.errno not in _NO_FAST_PATH or copied:
                        raise
                    self.copy_range = False
                    break
                if count == 0:
                    break
                copied += count
                self._advance(count)
            if self.copy_range and copied >= size:
                return copied
        # Plain copy: the whole file without the fast path, or the rest after copy_file_range
        # stopped early (some filesystems report 0 before the end); both continue at the
        # current file offsets.
        while True:
            self.check_cancel()
            chunk = os.read(src, _READ_CHUNK)
            if not chunk:
                return copied
            view = memoryview(chunk)
            while view:
                written = os.write(dst, view)
                view = view[written:]
            copied += len(chunk)
            self._advance(len(chunk))

    def _advance(self, count: int) -> None:
        self.done += count
        self.progress(self.done, max(self.total, self.done))


def _create(dest: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(dest, flags, 0o600)


def _open_for_overwrite(dest: Path) -> int:
    """`dest` opened for writing from its start.

    An existing copy is overwritten in place (then truncated to the new length): its blocks are
    reused, where deleting and re-creating it would free and allocate them all again, which
    costs more than copying a small change. A read-only or multiply-linked file is replaced.
    """
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _create(dest)
    except PermissionError:
        pass
    else:
        if os.fstat(fd).st_nlink == 1:
            return fd
        os.close(fd)
    dest.unlink()
    return _create(dest)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    try:
        function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    return function


def _libc_syncfs(path: Path) -> bool:
    syncfs = _syncfs()
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)


def _flush(root: Path, copied: list[Path], touched_dirs: set[Path]) -> None:
    """Make the copied files and the directory changes durable before a manifest claims them.

    One syncfs of the backup's filesystem costs about one journal commit, where an fsync per
    file and directory costs one each; without syncfs, that is the fallback.
    """
    if _libc_syncfs(root):
        return
    for path in copied:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in sorted(touched_dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(directory)


@dataclass(frozen=True)
class StageResult:
    """What one mirror did: the source's entries at that time and the bytes copied."""

    entries: list[ManifestEntry]
    total_bytes: int
    changed_bytes: int
    seconds: float


def stage(
    source: Path,
    dest: Path,
    *,
    live: bool,
    space_dir: Path,
    entries: list[ManifestEntry] | None = None,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
) -> StageResult:
    """Mirror `source` into `dest`: copy new and changed files, remove what is gone.

    `live` means the source may change meanwhile (the node runs): vanishing files are skipped
    and recently modified ones are marked so that the next mirror copies them again.
    `entries` gives the source's entries instead of scanning it (a restore copies what its
    manifest lists). Free space on `space_dir` is checked first, for the net growth.
    """
    began = time.monotonic()
    want = scan(source) if entries is None else entries
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    have = scan(dest)
    delta = plan_delta(want, have)
    check_space(space_dir, delta.net_bytes, available)
    copier = _Copier(progress=progress, cancel=cancel, live=live, total=delta.copy_bytes)
    touched: set[Path] = {dest}
    for entry in delta.remove:
        copier.check_cancel()
        path = dest / entry.path
        if entry.kind == "dir":
            shutil.rmtree(path)
        else:
            path.unlink()
        touched.add(path.parent)
    for entry in delta.make_dirs:
        path = dest / entry.path
        path.mkdir(mode=0o700)
        touched.add(path.parent)
    for entry in delta.links:
        path = dest / entry.path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        assert entry.target is not None
        path.symlink_to(entry.target)
        touched.add(path.parent)
    progress(0, delta.copy_bytes)
    staged_files = {entry.path for entry in have if entry.kind == "file"}
    for entry in delta.copy:
        copier.check_cancel()
        path = dest / entry.path
        copier.copy_file(source / entry.path, path, exists=entry.path in staged_files)
        touched.add(path.parent)
    # Deepest first: setting a parent's mtime must come after its children changed it.
    for entry in reversed(delta.dirs):
        path = dest / entry.path
        os.chmod(path, entry.mode or 0o700)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    with contextlib.suppress(FileNotFoundError):
        root = source.stat()
        os.chmod(dest, stat.S_IMODE(root.st_mode))
    _flush(dest, copier.copied, touched)
    progress(copier.done, max(delta.copy_bytes, copier.done))
    return StageResult(
        entries=want,
        total_bytes=sum(entry.size for entry in want if entry.kind == "file"),
        changed_bytes=copier.done,
        seconds=time.monotonic() - began,
    )


# --- manifests --------------------------------------------------------------------------------


def _write_manifest(target: Path, manifest: Manifest) -> None:
    try:
        raw = msgspec.json.encode(manifest)
    except (UnicodeEncodeError, msgspec.EncodeError) as exc:
        raise BackupError(f"cannot write the manifest of {target.name}: {exc}") from None
    atomic_write_bytes(target / MANIFEST, raw, mode=0o600)


def _read_capped(path: Path, limit: int) -> bytes:
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
    raw = _read_capped(backup_path / MANIFEST, MAX_MANIFEST_BYTES)
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


def _summary(path: Path) -> _Summary | None:
    try:
        return _decode_summary(_read_capped(path / MANIFEST, MAX_MANIFEST_BYTES))
    except (BackupError, msgspec.DecodeError):
        return None


def _backup_dirs(backups_dir: Path) -> list[Path]:
    try:
        children = list(os.scandir(backups_dir))
    except FileNotFoundError:
        return []
    return sorted(
        Path(child.path)
        for child in children
        if _ID_RE.fullmatch(child.name) and child.is_dir(follow_symlinks=False)
    )


def _created_from_name(name: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(name[:16], _STAMP)))
    except ValueError:
        return 0.0


def list_backups(backups_dir: Path) -> list[BackupInfo]:
    """Every backup directory, oldest first; incomplete ones included (complete=False)."""
    infos: list[BackupInfo] = []
    for path in _backup_dirs(backups_dir):
        summary = _summary(path)
        if summary is None:
            infos.append(
                BackupInfo(
                    id=path.name,
                    label=path.name[17:],
                    created_at=_created_from_name(path.name),
                    complete=False,
                    total_bytes=0,
                    file_count=0,
                    path=str(path),
                )
            )
            continue
        infos.append(
            BackupInfo(
                id=path.name,
                label=summary.label,
                created_at=summary.created_at,
                # A manifest naming another directory is a pre-staged copy caught between its
                # rename and its final manifest: still the plan's, but not complete.
                complete=summary.complete and summary.id == path.name,
                total_bytes=summary.total_bytes,
                file_count=summary.file_count,
                path=str(path),
                kind=summary.kind,
                plan=summary.plan,
            )
        )
    infos.sort(key=lambda info: (info.created_at, info.id))
    return infos


def _find_plan_backup(
    backups_dir: Path, plan_name: str, *, complete: bool, since: float = 0.0
) -> tuple[Path, _Summary] | None:
    """The newest backup made for `plan_name` with that completeness (and, for complete ones,
    created at or after `since`)."""
    best: tuple[Path, _Summary] | None = None
    for path in _backup_dirs(backups_dir):
        summary = _summary(path)
        if summary is None or summary.plan != plan_name or summary.complete != complete:
            continue
        if complete and summary.created_at < since:
            continue
        if best is None or (summary.created_at, path.name) >= (best[1].created_at, best[0].name):
            best = (path, summary)
    return best


# --- backups ----------------------------------------------------------------------------------


def start_backup(
    backups_dir: Path,
    backup_id: str,
    *,
    label: str,
    source: Path,
    kind: str = "full",
    plan: str | None = None,
) -> Path:
    """Create the backup directory with an incomplete manifest; return the directory."""
    _check_label(label)
    backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = backups_dir / backup_id
    target.mkdir(mode=0o700)
    _write_manifest(
        target,
        Manifest(
            id=backup_id,
            label=label,
            created_at=time.time(),
            source=str(source),
            entries=[],
            total_bytes=0,
            file_count=0,
            kind=kind,
            plan=plan,
        ),
    )
    return target


def complete_backup(
    target: Path,
    result: StageResult,
    *,
    label: str,
    source: Path,
    kind: str = "full",
    plan: str | None = None,
    seconds: float | None = None,
) -> Manifest:
    """Check the copy against what was scanned and write the complete manifest, last."""
    _require_match(target / DATA, result.entries, f"the copy in {target.name}")
    manifest = Manifest(
        id=target.name,
        label=label,
        created_at=time.time(),
        source=str(source),
        entries=result.entries,
        total_bytes=result.total_bytes,
        file_count=sum(1 for entry in result.entries if entry.kind == "file"),
        complete=True,
        kind=kind,
        plan=plan,
        changed_bytes=result.changed_bytes,
        seconds=result.seconds if seconds is None else seconds,
    )
    _write_manifest(target, manifest)
    return manifest


def create_backup(
    data_dir: Path,
    backups_dir: Path,
    label: str,
    *,
    backup_id: str | None = None,
    quiesce: Callable[[], None] | None = None,
    resume: Callable[[], None] | None = None,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> Manifest:
    """A full backup of `data_dir`; its manifest.

    Without `quiesce` nobody may write to the data dir meanwhile (the node is stopped). With it,
    the node runs: the bulk is copied live, then `quiesce()` stops the node, only what changed
    meanwhile is copied, and `resume()` (always called once `quiesce` was) starts it again,
    so the node is down for the changed bytes only and the backup is consistent. `on_target`
    learns the backup's directory once it exists, before the copy starts.
    """
    _check_label(label)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    # The space is checked before anything is created: a backup that cannot fit leaves nothing.
    check_space(backups_dir, tree_bytes(data_dir), available)
    ident = backup_id or new_backup_id(backups_dir, label)
    target = start_backup(backups_dir, ident, label=label, source=data_dir)
    on_target(target)

    def mirror(live: bool) -> StageResult:
        return stage(
            data_dir,
            target / DATA,
            live=live,
            space_dir=backups_dir,
            progress=progress,
            cancel=cancel,
            available=available,
        )

    if quiesce is None:
        result = mirror(live=False)
    else:
        bulk = mirror(live=True)
        try:
            quiesce()
            result = mirror(live=False)
        finally:
            if resume is not None:
                resume()
        result = StageResult(
            result.entries,
            result.total_bytes,
            bulk.changed_bytes + result.changed_bytes,
            result.seconds,
        )
    return complete_backup(
        target, result, label=label, source=data_dir, seconds=time.monotonic() - began
    )


def prestage_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> tuple[Path, StageResult]:
    """Copy the data dir of a running node into the plan's staging backup (incomplete).

    A staging backup left by an earlier call (or an earlier daemon) is refreshed: only what
    changed since is copied. `on_target` learns the directory before the copy starts.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    found = _find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None:
        check_space(backups_dir, tree_bytes(data_dir), available)
        target = start_backup(
            backups_dir,
            new_backup_id(backups_dir, label),
            label=label,
            source=data_dir,
            kind="upgrade",
            plan=plan_name,
        )
    else:
        target = found[0]
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=True,
        space_dir=backups_dir,
        progress=progress,
        cancel=cancel,
        available=available,
    )
    # Still incomplete; the staged size serves the space check at H. The entries stay out: the
    # copy of a running node is described by the copy itself, which the next mirror scans.
    _write_manifest(
        target,
        Manifest(
            id=target.name,
            label=label,
            created_at=time.time(),
            source=str(data_dir),
            entries=[],
            total_bytes=result.total_bytes,
            file_count=0,
            kind="upgrade",
            plan=plan_name,
            changed_bytes=result.changed_bytes,
            seconds=result.seconds,
        ),
    )
    return target, result


def finish_upgrade_backup(
    data_dir: Path,
    backups_dir: Path,
    plan_name: str,
    *,
    since: float = 0.0,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
    on_target: Callable[[Path], None] = lambda target: None,
) -> Manifest:
    """The node is stopped at H: bring the plan's pre-staged copy up to date and complete it.

    Only files changed since the pre-staging are copied, deleted ones removed; the result is
    renamed to the time of H and equals the stopped data dir. Without a staged copy this is a
    full copy. A complete backup of the plan made at or after `since` (an upgrade resumed after
    its backup had completed) is reused as the staged copy.
    """
    label = upgrade_label(plan_name)
    if not data_dir.is_dir():
        raise BackupError(f"data dir {data_dir} does not exist")
    began = time.monotonic()
    found = _find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None and since > 0:
        found = _find_plan_backup(backups_dir, plan_name, complete=True, since=since)
    ident = new_backup_id(backups_dir, label)
    if found is None:
        check_space(backups_dir, tree_bytes(data_dir), available)
        target = start_backup(
            backups_dir, ident, label=label, source=data_dir, kind="upgrade", plan=plan_name
        )
    else:
        staged = found[0]
        if found[1].complete:
            # About to change: it must not stay marked complete while it does.
            _write_manifest(
                staged,
                Manifest(
                    id=staged.name,
                    label=label,
                    created_at=found[1].created_at,
                    source=str(data_dir),
                    entries=[],
                    total_bytes=found[1].total_bytes,
                    file_count=0,
                    kind="upgrade",
                    plan=plan_name,
                ),
            )
        target = backups_dir / ident
        # Made durable with the copy, before the manifest: a rename lost in a crash leaves the
        # staging copy under its old name, where the next attempt finds it all the same.
        os.rename(staged, target)
    on_target(target)
    result = stage(
        data_dir,
        target / DATA,
        live=False,
        space_dir=backups_dir,
        progress=progress,
        available=available,
    )
    return complete_backup(
        target,
        result,
        label=label,
        source=data_dir,
        kind="upgrade",
        plan=plan_name,
        seconds=time.monotonic() - began,
    )


# --- restore ----------------------------------------------------------------------------------


def restore_backup(
    backups_dir: Path,
    backup_id: str,
    data_dir: Path,
    *,
    progress: Progress = lambda done, total: None,
    available: int | None = None,
) -> Path:
    """Put backup `backup_id` back in place of `data_dir` (the node must be stopped).

    The backup is checked against its manifest before anything is touched; the copy is made
    beside the data dir, checked again, and only then swapped in. The live data is moved aside
    to `<data>.pre-restore-<stamp>` (returned), never deleted.
    """
    path = backup_dir(backups_dir, backup_id)
    manifest = load_manifest(path)
    if not manifest.complete:
        raise BackupError(f"{backup_id} is not a complete backup: refusing to restore it")
    _require_match(path / DATA, manifest.entries, f"backup {backup_id}")
    staging = data_dir.with_name(f".{data_dir.name}.restoring")
    if os.path.lexists(staging):
        # Left by a restore that was killed: a partial copy, or (killed right after the swap)
        # the data it was moving aside. Kept aside too: nothing of the node's is ever deleted.
        os.rename(staging, _aside_name(data_dir, "leftover"))
    try:
        result = stage(
            path / DATA,
            staging,
            live=False,
            space_dir=data_dir.parent,
            entries=manifest.entries,
            progress=progress,
            available=available,
        )
        _require_match(staging, result.entries, "the restored copy")
    except BaseException:
        # A half-made copy only takes space; the live data was not touched.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = _aside_name(data_dir)
    if os.path.lexists(data_dir) and _exchange(staging, data_dir):
        os.rename(staging, aside)
    else:
        if os.path.lexists(data_dir):
            os.rename(data_dir, aside)
        os.rename(staging, data_dir)
    fsync_dir(data_dir.parent)
    return aside


def _aside_name(data_dir: Path, what: str = "") -> Path:
    stamp = time.strftime(_STAMP, time.gmtime()) + (f"-{what}" if what else "")
    aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}")
    suffix = 1
    while os.path.lexists(aside):
        suffix += 1
        aside = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}.{suffix}")
    return aside


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    exchange: Callable[[int, bytes, int, bytes, int], int] = function
    return exchange


def _exchange(first: Path, second: Path) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): the data dir never goes missing,
    whenever the process dies. False when the system or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(code, os.strerror(code), str(first), None, str(second))
    return True


# --- retention --------------------------------------------------------------------------------


def protected_backups(home: Home, backups_dir: Path) -> set[str]:
    """Backups nothing may prune: the one an unfinished journal names, and the staging copy of
    every plan still pending or running. BackupError when the daemon's state is unreadable
    (then nobody can tell what is needed)."""
    try:
        journal = state.read_journal(home)
        queue = state.read_queue(home)
    except PlanError as exc:
        raise BackupError(f"not pruning: {exc}") from None
    protected: set[str] = set()
    active = {
        entry.plan.name
        for entry in queue.plans
        if entry.status in (PlanStatus.PENDING, PlanStatus.RUNNING)
    }
    if journal is not None:
        named = journal.get("backup")
        if isinstance(named, str):
            protected.add(named)
        plan = journal.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("name"), str):
            active.add(plan["name"])
    for info in list_backups(backups_dir):
        if not info.complete and info.plan in active:
            protected.add(info.id)
    return protected


def choose_prune(backups: list[BackupInfo], keep: int, protected: set[str]) -> list[str]:
    """Ids to remove: every incomplete backup and all complete ones but the `keep` newest,
    except the protected ones."""
    complete = sorted(
        (info for info in backups if info.complete),
        key=lambda info: (info.created_at, info.id),
        reverse=True,
    )
    doomed = [info.id for info in complete[max(keep, 0) :]]
    doomed += [info.id for info in backups if not info.complete]
    return sorted(ident for ident in doomed if ident not in protected)


def prune_backups(backups_dir: Path, keep: int, protected: set[str]) -> list[str]:
    """Apply `choose_prune` to the backups on disk; the ids removed."""
    removed: list[str] = []
    for ident in choose_prune(list_backups(backups_dir), keep, protected):
        shutil.rmtree(backups_dir / ident)
        removed.append(ident)
    if removed:
        fsync_dir(backups_dir)
    return removed
