"""Change tracking of the data dir while the node runs, so that the backup at H copies what
changed without looking at every file (SPEC §7).

A `ChangeTracker` watches the data dir with inotify from before the staging copy starts,
recursively: a new directory gets a watch and its content is listed, since files can be
created in it before its watch exists. Every event marks the path it names dirty, and the
directory it happened in (whose mtime changed). At H, once the node is stopped, `finish`
reads what is left in the kernel's queue and returns the dirty paths: every path the node
touched since the tracker started is among them.

The record cannot be trusted, and the tracker says why (the backup at H then scans the whole
data dir), when: the kernel's queue overflowed, the watch limit was reached, a watched
directory was removed or moved, more paths changed than the tracker keeps, its thread died,
or inotify is unavailable. Writes through a shared memory mapping make no inotify event: a node
that writes its database that way must not rely on tracking (geth-family databases and anvil
write with write(2)).

The tracker reads events on its own thread; nothing else blocks on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from wemixvisor.backup.copy import StageResult
from wemixvisor.backup.manifest import ManifestEntry

try:
    from inotify_simple import INotify
except ImportError:  # not Linux: tracking is unavailable, the backup at H scans
    INotify = None

MAX_PATHS = 200_000
"""Dirty paths kept at most; beyond, the record is dropped and the backup at H scans."""
MAX_WATCHES = 100_000
"""Directories watched at most (each costs kernel memory); beyond, the backup at H scans."""
JOIN_TIMEOUT = 5.0
"""Seconds `finish` waits for the tracker's thread to end."""

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_UNMOUNT = 0x2000
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_IN_ISDIR = 0x40000000
_WATCH_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_DONT_FOLLOW
)
_NEW_DIR = _IN_CREATE | _IN_MOVED_TO
_LOST_DIR = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED


class ChangeTracker:
    """Records the paths changed under `root` from `start()` on (relative, "" is `root`)."""

    def __init__(
        self, root: Path, *, max_paths: int = MAX_PATHS, max_watches: int = MAX_WATCHES
    ) -> None:
        self.root = root
        self.max_paths = max_paths
        self.max_watches = max_watches
        self._lock = threading.Lock()
        self._dirty: set[str] | None = set()
        self._untrusted: str | None = None
        self._watches: dict[int, str] = {}
        self._inotify: INotify | None = None
        self._wake_read = self._wake_write = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    @property
    def untrusted(self) -> str | None:
        """Why the record cannot be trusted, or None while it can."""
        with self._lock:
            return self._untrusted

    def fileno(self) -> int | None:
        """The inotify descriptor (None before `start`, without inotify, or once closed)."""
        inotify = self._inotify
        return None if inotify is None or inotify.closed else inotify.fileno()

    def start(self) -> None:
        """Watch `root` and every directory below it, then read events on a thread.

        Never raises: a tracker that cannot watch is untrusted (and says why).
        """
        if INotify is None:
            self._distrust("inotify is not available on this system")
            return
        try:
            self._inotify = INotify()
            self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self._distrust(f"inotify is unavailable ({os.strerror(exc.errno or 0)})")
            return
        with self._lock:
            self._watch_tree("", mark=False)
            if not self._watches:
                self._set_untrusted(f"cannot watch {self._show('')}: it does not exist")
        if self._untrusted is not None:
            return
        self._thread = threading.Thread(
            target=self._main, name=f"change-tracker {self.root.name}", daemon=True
        )
        self._thread.start()

    def finish(self) -> set[str] | str:
        """Stop tracking and return the dirty paths, or why they cannot be trusted.

        Called once the node is stopped: the events still queued in the kernel are read here,
        so every change made before this call is counted. Tracking ends here, but the inotify
        instance is only released by `close`: that costs the kernel a few milliseconds (its
        watches are torn down), which the caller spends once the node runs again.
        """
        thread = self._thread
        if thread is not None:
            died = not thread.is_alive()
            self._stop_thread(thread)
            if thread.is_alive():
                self._distrust("the tracker's thread did not stop")
            elif died:
                self._distrust("the tracker's thread died")
        with self._lock:
            if self._closed:
                return "the tracker was closed"
            if self._untrusted is None and self._inotify is not None:
                try:
                    self._drain()
                except (OSError, ValueError) as exc:
                    self._set_untrusted(f"reading the last events failed ({exc})")
            if self._untrusted is not None:
                return self._untrusted
            if self._inotify is None:
                return "the tracker never started"
            self._untrusted = "tracking ended"  # whatever happens next is not recorded
            dirty, self._dirty = self._dirty, None
            return dirty if dirty is not None else "no record"

    def close(self) -> None:
        """Stop the thread and release the inotify descriptor (idempotent)."""
        thread = self._thread
        if thread is not None:
            self._stop_thread(thread)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._dirty = None
            if self._inotify is not None and not self._inotify.closed:
                # Its descriptor may have been closed under it (the thread died of that).
                with contextlib.suppress(OSError):
                    self._inotify.close()
            for fd in (self._wake_read, self._wake_write):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _stop_thread(self, thread: threading.Thread) -> None:
        self._stopping = True
        if not self._closed and self._wake_write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
        if thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)

    def _main(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        poller = select.poll()
        try:
            poller.register(inotify.fileno(), select.POLLIN)
            poller.register(self._wake_read, select.POLLIN)
            while not self._stopping:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_read in ready or self._stopping:
                    return
                with self._lock:
                    if self._untrusted is not None or inotify.closed:
                        return
                    self._apply(inotify.read(timeout=0))
                    if self._untrusted is not None:
                        return
        except Exception as exc:  # noqa: BLE001 - a dead thread must leave the record untrusted
            self._distrust(f"the tracker's thread died ({exc!r})")

    def _drain(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        while self._untrusted is None:
            events = inotify.read(timeout=0)
            if not events:
                return
            self._apply(events)

    def _distrust(self, reason: str) -> None:
        with self._lock:
            self._set_untrusted(reason)

    def _set_untrusted(self, reason: str) -> None:
        if self._untrusted is None:
            self._untrusted = reason
            self._dirty = None  # the memory goes at once: the record is no longer used
            logger.warning(
                "change tracking of {} stopped: {}; the backup at H scans the whole data dir",
                self.root,
                reason,
            )

    def _apply(self, events: Iterable[tuple[int, int, int, str]]) -> None:
        """Record one batch of events (the lock is held)."""
        for wd, mask, _cookie, name in events:
            if self._untrusted is not None:
                return
            if mask & _IN_Q_OVERFLOW:
                self._set_untrusted("the kernel's event queue overflowed")
                return
            directory = self._watches.get(wd)
            if directory is None:
                continue  # a watch removed meanwhile
            if mask & _LOST_DIR:
                self._set_untrusted(f"the watched directory {self._show(directory)} went away")
                return
            path = f"{directory}/{name}" if directory and name else (name or directory)
            if mask & _IN_ISDIR and mask & (_IN_MOVED_FROM | _IN_DELETE):
                self._set_untrusted(f"the directory {self._show(path)} was removed or moved")
                return
            self._mark(directory)
            self._mark(path)
            if mask & _IN_ISDIR and mask & _NEW_DIR:
                self._watch_tree(path, mark=True)

    def _mark(self, path: str) -> None:
        dirty = self._dirty
        if dirty is None:
            return
        dirty.add(path)
        if len(dirty) > self.max_paths:
            self._set_untrusted(f"more than {self.max_paths} paths changed")

    def _watch_tree(self, top: str, *, mark: bool) -> None:
        """Watch `top` and the directories below it; with `mark`, everything found there is
        dirty (a new directory: its content may predate its watch). Lock held."""
        pending = [top]
        while pending and self._untrusted is None:
            rel = pending.pop()
            if not self._add_watch(rel):
                continue
            try:
                with os.scandir(self.root / rel if rel else self.root) as listing:
                    children = [(item.name, item.is_dir(follow_symlinks=False)) for item in listing]
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone again: its parent's event says so
            for name, is_dir in children:
                child = f"{rel}/{name}" if rel else name
                if mark:
                    self._mark(child)
                if is_dir:
                    pending.append(child)

    def _add_watch(self, rel: str) -> bool:
        inotify = self._inotify
        assert inotify is not None
        if len(self._watches) >= self.max_watches:
            self._set_untrusted(f"more than {self.max_watches} directories to watch")
            return False
        try:
            wd = inotify.add_watch(self.root / rel if rel else self.root, _WATCH_MASK)
        except (FileNotFoundError, NotADirectoryError):
            return False  # gone, or replaced by a file, before its watch: events say so
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                self._set_untrusted("the system's inotify watch limit was reached")
            else:
                self._set_untrusted(f"cannot watch {self._show(rel)} ({exc.strerror})")
            return False
        self._watches[wd] = rel
        return True

    def _show(self, rel: str) -> str:
        return repr(str(self.root / rel) if rel else str(self.root))


@dataclass
class StagingWatch:
    """A tracker and the staging copy whose record it complements: the record (what the
    copy holds, by path), the files copied racily (looked at again at H whatever the
    tracker saw), and the copy's bytes."""

    tracker: ChangeTracker
    plan: str
    target: str  # the staging copy's directory name when its record was written
    record: dict[str, ManifestEntry]
    racy: list[str]
    total_bytes: int

    @classmethod
    def of(
        cls, tracker: ChangeTracker, plan: str, target: Path, result: StageResult
    ) -> StagingWatch:
        """The watch of the staging copy `target` that pre-staging `result` left."""
        record = {entry.path: entry for entry in result.staged}
        return cls(tracker, plan, target.name, record, result.racy, result.total_bytes)


class StagingWatches:
    """The one staging watch of a BackupActor (thread-safe: its jobs hand it over)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watch: StagingWatch | None = None

    def put(self, watch: StagingWatch) -> None:
        """Keep `watch`; the one it replaces is closed."""
        with self._lock:
            old, self._watch = self._watch, watch
        if old is not None:
            old.tracker.close()

    def take(self, plan: str) -> StagingWatch | None:
        """The watch of `plan`'s staging copy, handed over (the caller closes it); a watch of
        another plan's copy is closed."""
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None and watch.plan != plan:
            watch.tracker.close()
            return None
        return watch

    def close(self) -> None:
        """Stop watching (the staging copy is gone, changes or the actor stops)."""
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.tracker.close()
