"""Following a long operation of the daemon: a backup or restore (its backup.* events), or the
download of a plan's binary (download.*), with its progress on stderr until it ends."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from wemixvisor.commands.common import EXIT_FAILURE, CliContext, CommandError, open_client, request
from wemixvisor.control.client import ControlClient
from wemixvisor.control.protocol import BackupCreate, BackupList, BackupRestore, new_request_id
from wemixvisor.control.verbs import BACKUP_CREATE, BACKUP_LIST, BACKUP_RESTORE
from wemixvisor.control.verbs.render import size
from wemixvisor.events.subscriber import EventSubscriber

if TYPE_CHECKING:
    from wemixvisor.commands.terminal import ProgressBar

__all__ = [
    "ALIVE_CHECK",
    "CONNECT_WAIT",
    "ProgressView",
    "follow_download",
    "follow_operation",
    "subscribe",
]

CONNECT_WAIT = 2.0
"""Seconds to let the events subscription settle before a long request is sent."""

ALIVE_CHECK = 5.0
"""Seconds without an event of the operation before the daemon is asked whether it lives (and,
for a create, whether the backup completed: a late subscriber may have missed the end)."""

_SUCCESS = ("backup.completed", "backup.restored")
_FAILURE = ("backup.failed", "backup.cancelled")
_MIB = 1024 * 1024


class ProgressView:
    """Progress of a long copy or download on stderr: a rich progress bar redrawn in place on
    a terminal, else a plain line at most every few seconds (logs and pipes)."""

    def __init__(self, title: str, stream: IO[str] | None = None) -> None:
        self.title = title
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self._interval = 0.1 if self.tty else 2.0
        self._last = 0.0
        self._bar: ProgressBar | None = None
        self._latest: tuple[int, int | None] = (0, None)

    def __call__(self, done: int, total: int | None) -> None:
        """Show `done` of `total` bytes (rate-limited; None when the size is unknown)."""
        self._latest = (done, total)
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        if self.tty:
            if self._bar is None:
                # Imported here: rich only loads when a person watches the bar.
                from wemixvisor.commands.terminal import ProgressBar  # noqa: PLC0415

                self._bar = ProgressBar(self.title, self.stream)
            self._bar.update(done, total)
            return
        if total is not None:
            fraction = min(done / total, 1.0) if total > 0 else 0.0
            figures = f"{fraction:4.0%} {done / _MIB:,.1f}/{total / _MIB:,.1f} MiB"
        else:
            figures = f"{done / _MIB:,.1f} MiB"
        self.stream.write(f"{self.title}: {figures}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar (on a terminal)."""
        if self._bar is not None:
            self._bar.update(*self._latest)  # the last figures, even if rate-limited away
            self._bar.close()
            self._bar = None


def subscribe(ctx: CliContext, prefixes: list[str]) -> EventSubscriber:
    """A subscription to the daemon's events, given a moment to connect: made before a long
    request is sent, since events published before a subscriber joins are lost."""
    subscriber = EventSubscriber([ctx.config.events.endpoint], prefixes)
    settle = time.monotonic() + CONNECT_WAIT
    while not subscriber.connected and time.monotonic() < settle:
        subscriber.receive(timeout=0.05)
    return subscriber


def follow_operation(
    ctx: CliContext, backup_request: BackupCreate | BackupRestore, *, timeout: float, as_json: bool
) -> int:
    """Send a create or restore to the daemon and follow its events until it ends: exit 0 on
    success, 1 on failure."""
    subscriber = subscribe(ctx, ["backup."])
    try:
        with open_client(ctx, timeout) as client:
            if isinstance(backup_request, BackupCreate):
                accepted = request(client, BACKUP_CREATE, backup_request)
                operation, said = accepted.operation, BACKUP_CREATE.render(accepted)
            else:
                restoring = request(client, BACKUP_RESTORE, backup_request)
                operation, said = restoring.operation, BACKUP_RESTORE.render(restoring)
            if not as_json:
                # Said before the copy starts: a running node is about to be stopped.
                print(said, file=sys.stderr)
            created = operation if isinstance(backup_request, BackupCreate) else None
            return _follow(subscriber, client, operation, created=created, as_json=as_json)
    finally:
        subscriber.close()


def _follow(
    subscriber: EventSubscriber,
    client: ControlClient,
    operation: str,
    *,
    created: str | None,
    as_json: bool,
) -> int:
    """Show the operation's events until it ends; exit 0 on success, 1 on failure."""
    view = ProgressView(operation)
    quiet_since = time.monotonic()
    try:
        while True:
            event = subscriber.receive(timeout=1.0)
            if event is None or event.payload.get("id") != operation:
                if time.monotonic() - quiet_since >= ALIVE_CHECK:
                    quiet_since = time.monotonic()
                    # Raises exit 3 when the daemon went away.
                    listing = request(client, BACKUP_LIST, BackupList(id=new_request_id()))
                    if created is not None and any(
                        backup.id == created and backup.complete for backup in listing.backups
                    ):
                        view.close()
                        print(f"backup {created} complete")
                        return 0
                continue
            quiet_since = time.monotonic()
            payload = event.payload
            if as_json:
                print(event.to_json().decode(), flush=True)
            if event.topic == "backup.progress":
                if not as_json:
                    view(int(payload.get("bytes_done") or 0), int(payload.get("bytes_total") or 0))
            elif event.topic in _SUCCESS:
                view.close()
                if not as_json:
                    print(_describe_end(event.topic, payload))
                return 0
            elif event.topic in _FAILURE:
                view.close()
                reason = payload.get("error") or payload.get("reason") or ""
                raise CommandError(f"{event.topic} {operation}: {reason}", EXIT_FAILURE)
    except KeyboardInterrupt:
        view.close()
        print(
            f"{operation} goes on in the daemon; follow it with `wemixvisor events backup.`",
            file=sys.stderr,
        )
        return 0


def _describe_end(topic: str, payload: dict[str, Any]) -> str:
    seconds = float(payload.get("seconds") or 0)
    if topic == "backup.restored":
        return (
            f"restored {payload.get('backup_id')} in {seconds:.1f}s; "
            f"the data it replaced is in {payload.get('aside')}"
        )
    stopped = payload.get("node_stopped_seconds")
    node = "" if stopped is None else f"; the node was stopped for {float(stopped):.3f}s"
    return (
        f"backup {payload.get('id')} complete: {size(int(payload.get('total_bytes') or 0))} of "
        f"data, {size(int(payload.get('changed_bytes') or 0))} copied in {seconds:.1f}s{node}"
    )


def follow_download(
    subscriber: EventSubscriber, name: str, binary: Path, *, daemon_alive: Callable[[], bool]
) -> int:
    """Show the download of plan `name`'s binary until it is installed at `binary` (exit 0), or
    fails for good or the plan's preflight fails (exit 1 with the reason). Quiet spells are
    checked against the file itself (the end may have been missed) and the daemon's life."""
    view = ProgressView(f"download {name}")
    quiet_since = time.monotonic()
    try:
        while True:
            event = subscriber.receive(timeout=1.0)
            if event is None or event.payload.get("name") != name:
                if time.monotonic() - quiet_since >= ALIVE_CHECK:
                    quiet_since = time.monotonic()
                    if os.path.lexists(binary):
                        view.close()
                        print(f"{binary} installed")
                        return 0
                    if not daemon_alive():
                        raise CommandError("the daemon stopped; it downloads when it starts")
                continue
            quiet_since = time.monotonic()
            payload = event.payload
            if event.topic == "download.progress":
                total = payload.get("bytes_total")
                view(int(payload.get("bytes_done") or 0), None if total is None else int(total))
            elif event.topic == "download.completed":
                view.close()
                print(
                    f"downloaded {payload.get('url')}: {size(int(payload.get('bytes') or 0))} "
                    f"in {float(payload.get('seconds') or 0):.1f}s, installed as {binary}"
                )
                return 0
            elif event.topic == "download.failed":
                if not payload.get("will_retry"):
                    view.close()
                    raise CommandError(f"download of {name} failed: {payload.get('error')}")
                print(
                    f"download of {name}: attempt {payload.get('attempt')} failed "
                    f"({payload.get('error')}); the daemon retries",
                    file=sys.stderr,
                )
            elif event.topic == "plan.preflight_failed":
                view.close()
                problems = "; ".join(str(p) for p in payload.get("problems") or [])
                raise CommandError(f"preflight of {name} failed: {problems}")
    except KeyboardInterrupt:
        view.close()
        print(
            "the download goes on in the daemon; follow it with `wemixvisor events download.`",
            file=sys.stderr,
        )
        return 0
