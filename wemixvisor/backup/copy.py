"""The copy engine: mirroring one directory tree onto another, copying only what differs.

The destination tree is compared with the source (kind, size, mtime_ns, mode) and only what
differs is copied, what is gone is removed. Files are copied with the kernel's fast paths
(FICLONE reflink, then `copy_file_range`), falling back to plain reads and writes, and keep
their mtime so that the next mirror recognises them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import operator
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from wemixvisor.backup.errors import BackupCancelled, BackupError
from wemixvisor.backup.manifest import ManifestEntry
from wemixvisor.backup.space import check_space
from wemixvisor.home.fsutil import fsync_dir

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

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as a copy advances."""


def scan(root: Path) -> list[ManifestEntry]:
    """Every directory, regular file and symlink under `root` (symlinks not followed).

    Parents come before their children. Entries that vanish while scanning (a running node
    deletes files) are left out; sockets, fifos and devices are not data and are skipped.
    """
    entries: list[ManifestEntry] = []
    append = entries.append
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as listing:
                children = list(listing)
        except (FileNotFoundError, NotADirectoryError):
            if not rel_dir:
                raise BackupError(f"{root} does not exist or is not a directory") from None
            continue
        children.sort(key=_name)
        prefix = f"{rel_dir}/" if rel_dir else ""
        subdirs: list[str] = []
        # The hot loop of the work at H (one stat per entry): plain mode masks, no helpers.
        for child in children:
            name = child.name
            rel = prefix + name
            if not name.isascii():
                try:
                    name.encode()
                except UnicodeEncodeError:
                    raise BackupError(
                        f"cannot back up {root / rel!r}: its name is not UTF-8"
                    ) from None
            try:
                info = child.stat(follow_symlinks=False)
                mode = info.st_mode
                kind = mode & _FORMAT
                if kind == _REGULAR:
                    append(
                        ManifestEntry(
                            rel,
                            "file",
                            info.st_size,
                            info.st_mtime_ns,
                            mode & 0o7777,
                            None,
                            info.st_ino,
                        )
                    )
                elif kind == _DIRECTORY:
                    append(ManifestEntry(rel, "dir", 0, info.st_mtime_ns, mode & 0o7777))
                    subdirs.append(rel)
                elif kind == _SYMLINK:
                    append(ManifestEntry(rel, "symlink", target=os.readlink(child.path)))
            except FileNotFoundError:
                continue
        pending.extend(reversed(subdirs))
    return entries


_FORMAT = 0o170000
_REGULAR = stat.S_IFREG
_DIRECTORY = stat.S_IFDIR
_SYMLINK = stat.S_IFLNK
_name = operator.attrgetter("name")


def _check_name(root: Path, rel: str) -> None:
    if not rel.isascii():
        try:
            rel.encode()
        except UnicodeEncodeError:
            raise BackupError(f"cannot back up {root / rel!r}: its name is not UTF-8") from None


def _entry_of(rel: str, info: os.stat_result, path: Path) -> ManifestEntry | None:
    """The entry `scan` makes of `rel` from its lstat `info` (None: not data)."""
    mode = info.st_mode
    kind = mode & _FORMAT
    if kind == _REGULAR:
        return ManifestEntry(
            rel, "file", info.st_size, info.st_mtime_ns, mode & 0o7777, None, info.st_ino
        )
    if kind == _DIRECTORY:
        return ManifestEntry(rel, "dir", 0, info.st_mtime_ns, mode & 0o7777)
    if kind == _SYMLINK:
        return ManifestEntry(rel, "symlink", target=os.readlink(path))
    return None


@dataclass(frozen=True)
class Rescan:
    """The source's entries after looking again at the paths a tracker saw change.

    `entries` is the whole tree (the record with the changes applied, parents first);
    `want` and `have` are the changed part of it and of the record, which `plan_delta`
    compares (parents first)."""

    entries: dict[str, ManifestEntry]
    want: list[ManifestEntry]
    have: list[ManifestEntry]


def rescan_changed(
    root: Path, record: dict[str, ManifestEntry], changed: Iterable[str]
) -> Rescan | str:
    """Look again at the `changed` paths under `root` (one lstat each; a directory that is
    new to the record is scanned whole) and apply what is found to a copy of `record`, the
    entries of an earlier scan. A string says why this cannot stand for a scan: a changed
    file with several hard links (its other names changed unseen).

    Equal to a fresh `scan(root)` provided every path changed since `record` was taken is in
    `changed` (with the directory each change happened in).
    """
    entries = dict(record)
    touched: set[str] = set()
    for rel in sorted(changed):
        if not rel:
            continue  # the root itself: its mode is copied by every mirror
        _check_name(root, rel)
        path = root / rel
        old = entries.get(rel)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            info = None
        entry = None if info is None else _entry_of(rel, info, path)
        if entry is not None and entry.kind == "file" and info is not None and info.st_nlink > 1:
            return f"{path!r} changed and has {info.st_nlink} hard links"
        if old is not None and (entry is None or entry.kind != old.kind):
            del entries[rel]
            touched.add(rel)
            if old.kind == "dir":
                inside = f"{rel}/"
                for gone in [key for key in entries if key.startswith(inside)]:
                    del entries[gone]
                    touched.add(gone)
            old = None
        if entry is None:
            continue
        entries[rel] = entry
        touched.add(rel)
        if entry.kind == "dir" and old is None:
            for child in scan(path):
                full = f"{rel}/{child.path}"
                entries[full] = msgspec.structs.replace(child, path=full)
                touched.add(full)
    order = sorted(touched)
    return Rescan(
        entries,
        [entries[rel] for rel in order if rel in entries],
        [record[rel] for rel in order if rel in record],
    )


def _same(want: ManifestEntry, have: ManifestEntry, *, inode: bool = False) -> bool:
    """Whether `have` (in the copy) already is `want` (in the source).

    `inode`: `have` is the record of an earlier copy of the same source (not a scan of the
    copy), whose inode must match too: a file replaced by another one is copied again.
    """
    if want.kind != have.kind:
        return False
    if want.kind == "file":
        same = (want.size, want.mtime_ns, want.mode) == (have.size, have.mtime_ns, have.mode)
        return same and (not inode or want.ino == have.ino)
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
    fresh: set[str]  # paths of `copy` with no file in the copy yet (created, not overwritten)

    @property
    def copy_bytes(self) -> int:
        """Bytes to copy."""
        return sum(entry.size for entry in self.copy)

    @property
    def new_inodes(self) -> int:
        """Files, directories and links the copy gains."""
        return len(self.fresh) + len(self.make_dirs) + len(self.links)

    @property
    def net_bytes(self) -> int:
        """How much more disk the copy needs afterwards (never below 0)."""
        return max(self.copy_bytes - self.freed_bytes, 0)


def plan_delta(
    want: Iterable[ManifestEntry], have: Iterable[ManifestEntry], *, inode: bool = False
) -> Delta:
    """The mirror plan: compare the source's entries with the copy's (size + mtime_ns + mode
    for files, and the inode with `inode`; target for symlinks, kind for everything) and list
    what to do."""
    wanted = {entry.path: entry for entry in want}
    remove: list[ManifestEntry] = []
    removed_dirs: set[str] = set()
    freed = 0
    for entry in have:
        source = wanted.get(entry.path)
        if source == entry:
            continue  # the very same entry (a record of the same source): nothing to do
        parent = entry.path.rpartition("/")[0]
        inside_removed = bool(parent) and parent in removed_dirs
        gone = source is None or source.kind != entry.kind
        if gone or inside_removed:
            if entry.kind == "dir":
                removed_dirs.add(entry.path)
            if entry.kind == "file":
                freed += entry.size
            if not inside_removed:
                remove.append(entry)
            continue
        if entry.kind == "file" and source is not None and not _same(source, entry, inode=inode):
            freed += entry.size
    kept = {entry.path: entry for entry in have}
    make_dirs: list[ManifestEntry] = []
    links: list[ManifestEntry] = []
    copy: list[ManifestEntry] = []
    dirs: list[ManifestEntry] = []
    created: set[str] = set()
    for entry in wanted.values():
        existing = kept.get(entry.path)
        if existing == entry:
            if entry.kind == "dir":
                dirs.append(entry)
            continue
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
        elif fresh or existing is None or not _same(entry, existing, inode=inode):
            copy.append(entry)
            if fresh:
                created.add(entry.path)
    return Delta(remove, make_dirs, links, copy, dirs, freed, created)


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


def require_match(root: Path, entries: list[ManifestEntry], what: str) -> None:
    problems = verify_against(root, entries)
    if problems:
        raise BackupError(f"{what} does not match its manifest: {'; '.join(problems[:5])}")


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (stat calls only)."""
    return sum(entry.size for entry in scan(root) if entry.kind == "file")


@dataclass
class _Copier:
    """Copies files with the fastest path the filesystem takes, counting progress."""

    progress: Progress
    cancel: threading.Event | None
    live: bool
    total: int = 0  # bytes of the whole tree: progress shows how much of it is in the copy
    base: int = 0  # bytes already in the copy before this mirror
    done: int = 0  # bytes copied by this mirror
    copied: list[Path] = field(default_factory=list)
    racy: list[str] = field(default_factory=list)
    reflink: bool = True
    copy_range: bool = True

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise BackupCancelled("cancelled")

    def copy_file(
        self, entry: ManifestEntry, source: Path, dest: Path, *, exists: bool = True
    ) -> ManifestEntry | None:
        """Copy one regular file (not following symlinks) with its mode and mtime; `exists`
        False says that `dest` is known not to exist yet.

        Returns the record of what was copied (size, the mtime given to the copy, mode, and
        the source's inode), which the next mirror compares the source with instead of
        scanning the copy; None when a running node removed the file meanwhile.
        """
        try:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.live:
                return None  # deleted by the running node; the next mirror sees it gone
            raise
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            if self.live:
                return None  # replaced by a symlink meanwhile; the next mirror sees it
            raise BackupError(f"{source} turned into a symlink while copying") from None
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                if self.live:
                    return None
                raise BackupError(f"{source} is not a regular file")
            dst = _open_for_overwrite(dest) if exists else _create_or_overwrite(dest)
            try:
                copied = self._copy_data(src, dst, info.st_size)
                os.ftruncate(dst, copied)
                mtime = info.st_mtime_ns
                if self.live and time.time_ns() - mtime < _RACY_NS:
                    mtime -= 1
                    self.racy.append(entry.path)
                mode = stat.S_IMODE(info.st_mode)
                os.fchmod(dst, mode)
                os.utime(dst, ns=(info.st_atime_ns, mtime))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.copied.append(dest)
        return ManifestEntry(entry.path, "file", copied, mtime, mode, ino=info.st_ino)

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
        self.progress(self.base + self.done, max(self.total, self.base + self.done))


def _create(dest: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(dest, flags, 0o600)


def _create_or_overwrite(dest: Path) -> int:
    try:
        return _create(dest)
    except FileExistsError:
        return _open_for_overwrite(dest)  # a copy the record did not list: overwritten


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


def sync_filesystem(path: Path) -> bool:
    """Flush every pending write of the filesystem holding `path` (syncfs); False when the
    system has no syncfs (then the caller fsyncs what it wrote)."""
    return _libc_syncfs(path)


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
class Applied:
    """What `apply_delta` did: bytes copied, the record of each file copied (None: it
    vanished from the running node), the files copied racily, and the files and directories
    to flush."""

    changed_bytes: int
    copied: dict[str, ManifestEntry | None]
    racy: list[str]
    files: list[Path]
    touched: set[Path]


@dataclass(frozen=True)
class StageResult:
    """What one mirror did: the source's entries at that time, the record of what the copy
    holds now (what the next mirror compares with), and the bytes copied. `racy` lists the
    files copied from a running node within a timestamp tick of their last change (their
    record never matches the source: whatever tracks changes must look at them again)."""

    entries: list[ManifestEntry]
    staged: list[ManifestEntry]
    total_bytes: int
    changed_bytes: int
    seconds: float
    racy: list[str] = field(default_factory=list)
    applied: Applied | None = None  # what was written (to flush, when not flushed yet)

    @property
    def file_count(self) -> int:
        """Regular files in the source."""
        return sum(1 for entry in self.entries if entry.kind == "file")


def stage(
    source: Path,
    dest: Path,
    *,
    live: bool,
    space_dir: Path,
    entries: list[ManifestEntry] | None = None,
    have: list[ManifestEntry] | None = None,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
    flush: bool = True,
) -> StageResult:
    """Mirror `source` into `dest`: copy new and changed files, remove what is gone.

    `live` means the source may change meanwhile (the node runs): vanishing files are skipped
    and recently modified ones are recorded so that the next mirror copies them again.
    `entries` gives the source's entries instead of scanning it (a restore copies what its
    manifest lists). `have` is the record an earlier mirror into `dest` returned (`staged`):
    it stands for the copy, which is then not scanned, and files are compared by inode too.
    Free space (bytes and inodes) on `space_dir` is checked first, for the net growth.
    Progress counts the bytes of the whole tree that are in the copy. Without `flush` the
    copy is left in the page cache: the caller flushes it before a manifest claims it.
    """
    began = time.monotonic()
    want = scan(source) if entries is None else entries
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    recorded = have is not None
    if have is None:
        have = scan(dest)
    delta = plan_delta(want, have, inode=recorded)
    total = sum(entry.size for entry in want)  # only files have a size
    applied = apply_delta(
        source,
        dest,
        delta,
        live=live,
        recorded=recorded,
        space_dir=space_dir,
        total=total,
        progress=progress,
        cancel=cancel,
        available=available,
    )
    if flush:
        flush_copy(dest, applied)
    staged: list[ManifestEntry] = want
    if applied.copied:
        held = [applied.copied.get(entry.path, entry) for entry in want]
        staged = [entry for entry in held if entry is not None]
    return StageResult(
        entries=want,
        staged=staged,
        total_bytes=total,
        changed_bytes=applied.changed_bytes,
        seconds=time.monotonic() - began,
        racy=applied.racy,
        applied=applied,
    )


def flush_copy(dest: Path, applied: Applied) -> None:
    """Make what `apply_delta` wrote under `dest` durable (one syncfs where possible)."""
    _flush(dest, applied.files, applied.touched)


def apply_delta(
    source: Path,
    dest: Path,
    delta: Delta,
    *,
    live: bool,
    recorded: bool,
    space_dir: Path,
    total: int,
    progress: Progress = lambda done, total: None,
    cancel: threading.Event | None = None,
    available: int | None = None,
) -> Applied:
    """Carry out `delta` from `source` onto `dest` (nothing is flushed).

    `recorded`: the delta was planned against a record of the copy rather than a scan of it,
    so what it removes or creates may already be so. `total` is the bytes of the whole source
    tree (progress). Free space for the net growth is checked first.
    """
    check_space(space_dir, delta.net_bytes, available, files=delta.new_inodes)
    # `total` may be an older measure of the tree (the staging record's) than the files the
    # delta copies now: progress never counts below zero or past its total.
    total = max(total, delta.copy_bytes)
    copier = _Copier(
        progress=progress,
        cancel=cancel,
        live=live,
        total=total,
        base=total - delta.copy_bytes,
    )
    touched: set[Path] = {dest}
    for entry in delta.remove:
        copier.check_cancel()
        path = dest / entry.path
        if entry.kind == "dir":
            shutil.rmtree(path, ignore_errors=recorded and not os.path.lexists(path))
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        touched.add(path.parent)
    for entry in delta.make_dirs:
        path = dest / entry.path
        path.mkdir(mode=0o700, exist_ok=recorded)
        touched.add(path.parent)
    for entry in delta.links:
        path = dest / entry.path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        assert entry.target is not None
        path.symlink_to(entry.target)
        touched.add(path.parent)
    progress(copier.base, total)
    copied: dict[str, ManifestEntry | None] = {}
    for entry in delta.copy:
        copier.check_cancel()
        path = dest / entry.path
        exists = entry.path not in delta.fresh
        copied[entry.path] = copier.copy_file(entry, source / entry.path, path, exists=exists)
        if copied[entry.path] is None and exists:
            # Gone from the running node: its old copy goes too, or no record would list it.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        touched.add(path.parent)
    # Deepest first: setting a parent's mtime must come after its children changed it.
    for entry in reversed(delta.dirs):
        path = dest / entry.path
        os.chmod(path, entry.mode or 0o700)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    with contextlib.suppress(FileNotFoundError):
        root = source.stat()
        os.chmod(dest, stat.S_IMODE(root.st_mode))
    progress(copier.base + copier.done, max(total, copier.base + copier.done))
    return Applied(copier.done, copied, copier.racy, copier.copied, touched)
