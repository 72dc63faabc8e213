"""Following a backup or restore: its progress on stderr, and the daemon's backup.* events of
an operation until it ends."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from wemixvisor.commands.common import EXIT_FAILURE, CliContext, CommandError, open_client, request
from wemixvisor.control.client import ControlClient
from wemixvisor.control.protocol import BackupCreate, BackupList, BackupRestore, new_request_id
from wemixvisor.control.verbs import BACKUP_CREATE, BACKUP_LIST, BACKUP_RESTORE
from wemixvisor.control.verbs.render import size
from wemixvisor.events.subscriber import EventSubscriber

__all__ = ["ALIVE_CHECK", "CONNECT_WAIT", "ProgressView", "follow_operation"]

CONNECT_WAIT = 2.0
"""Seconds to let the events subscription settle before a long request is sent."""

ALIVE_CHECK = 5.0
"""Seconds without an event of the operation before the daemon is asked whether it lives (and,
for a create, whether the backup completed: a late subscriber may have missed the end)."""

_SUCCESS = ("backup.completed", "backup.restored")
_FAILURE = ("backup.failed", "backup.cancelled")
_BAR_WIDTH = 30
_MIB = 1024 * 1024


class ProgressView:
    """Progress of a long copy on stderr: a bar redrawn in place on a terminal, else a plain
    line at most every few seconds (logs and pipes)."""

    def __init__(self, title: str, stream: IO[str] | None = None) -> None:
        self.title = title
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self._interval = 0.1 if self.tty else 2.0
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Show `done` of `total` bytes (rate-limited)."""
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        figures = f"{fraction:4.0%} {done / _MIB:,.1f}/{total / _MIB:,.1f} MiB"
        if self.tty:
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            self.stream.write(f"\r{self.title} [{bar}] {figures}")
            self._drawn = True
        else:
            self.stream.write(f"{self.title}: {figures}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def follow_operation(
    ctx: CliContext, backup_request: BackupCreate | BackupRestore, *, timeout: float, as_json: bool
) -> int:
    """Send a create or restore to the daemon and follow its events until it ends: exit 0 on
    success, 1 on failure."""
    # Subscribed before asking: events published before a subscriber joins are lost.
    subscriber = EventSubscriber([ctx.config.events.endpoint], ["backup."])
    try:
        settle = time.monotonic() + CONNECT_WAIT
        while not subscriber.connected and time.monotonic() < settle:
            subscriber.receive(timeout=0.05)
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
