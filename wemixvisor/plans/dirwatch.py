"""inotify on the directories holding the watched plan and config files, so that an idle daemon
need not `stat` them every poll interval (SPEC §4, §16).

`DirectoryEvents` watches each directory for entries created, written, moved, removed or
changed in attributes, and calls `poke` when one of the watched names is touched: the files
poller then looks at once instead of at its next tick. While it is `healthy` the poller may
wait a long safety interval between looks; it stops being healthy — `lost` is called, and the
poller goes back to the configured interval after a look at once — when a watched directory is
removed or moved, or reading its events fails. Without inotify (another OS, no instance left)
it is never healthy. Changes it cannot see are the poller's to find: a watched path that is a
symbolic link (its target changes without an event in the directory) and changes made by
another host on a network filesystem — the caller polls at the configured interval while a
watched path is a link, and the safety interval bounds the rest.

The events are read on a thread of its own that blocks on the descriptor; nothing else waits.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from loguru import logger

try:
    from inotify_simple import INotify, flags
except ImportError:  # not Linux: the files are polled at the configured interval
    INotify = None

__all__ = ["DirectoryEvents"]

JOIN_TIMEOUT = 5.0


class DirectoryEvents:
    """Pokes when a watched name in a watched directory changes; see the module doc."""

    def __init__(
        self,
        paths: Iterable[Path],
        poke: Callable[[], None],
        lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._names: dict[str, set[str]] = {}
        for path in paths:
            self._names.setdefault(str(path.parent), set()).add(path.name)
        self._poke = poke
        self._on_lost = lost
        self._inotify: INotify | None = None
        self._watches: dict[int, str] = {}
        self._wake_read = self._wake_write = -1
        self._thread: threading.Thread | None = None
        self._healthy = False
        self._stopping = False

    @property
    def healthy(self) -> bool:
        """Whether every change to a watched name is seen (a link's target aside)."""
        return self._healthy

    def start(self) -> bool:
        """Watch the directories and read events on a thread; False (and a log line) when
        they cannot all be watched. Never raises."""
        if INotify is None:
            logger.info("plan files: inotify is not available; polling them")
            return False
        mask = (
            flags.CREATE
            | flags.CLOSE_WRITE
            | flags.MODIFY
            | flags.MOVED_TO
            | flags.MOVED_FROM
            | flags.DELETE
            | flags.ATTRIB
            | flags.DELETE_SELF
            | flags.MOVE_SELF
        )
        try:
            self._inotify = INotify()
            self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            for directory in self._names:
                self._watches[self._inotify.add_watch(directory, mask)] = directory
        except OSError as exc:
            logger.info(
                "plan files: cannot watch their directories ({}); polling them",
                os.strerror(exc.errno or 0),
            )
            self.close()
            return False
        self._healthy = True
        self._thread = threading.Thread(target=self._main, name="files-events", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop the thread and release the descriptors (idempotent)."""
        self._healthy = False
        self._stopping = True
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            with contextlib.suppress(OSError):
                inotify.close()
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_read = self._wake_write = -1

    def _main(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        try:
            while not self._stopping:
                readable, _, _ = select.select([inotify.fileno(), self._wake_read], [], [])
                if self._stopping or inotify.fileno() not in readable:
                    return
                if self._handle(inotify.read(timeout=0)):
                    self._poke()
        except (OSError, ValueError) as exc:
            if not self._stopping:
                self._lost(f"reading its events failed ({exc})")

    def _handle(self, events: Iterable[object]) -> bool:
        """Whether `events` touch a watched name (or leave something unseen)."""
        touched = False
        for event in events:
            mask, wd, name = event.mask, event.wd, event.name  # type: ignore[attr-defined]
            if mask & flags.Q_OVERFLOW:
                touched = True  # events were lost: look at everything
            elif mask & (flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED):
                self._lost(f"{self._watches.get(wd, 'a watched directory')} was removed or moved")
                touched = True
            elif name in self._names.get(self._watches.get(wd, ""), ()):
                touched = True
        return touched

    def _lost(self, why: str) -> None:
        if self._healthy:
            self._healthy = False
            logger.warning("plan files: {}; polling them every interval from now on", why)
            self._on_lost()
            self._poke()
