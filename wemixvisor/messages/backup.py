"""Messages to the BackupActor. Replies go to `done` (a pykka future) when given: long copies
answer at once with an operation id and report completion as backup.* events."""

from __future__ import annotations

from typing import Any

import msgspec


class CreateBackup(msgspec.Struct, frozen=True):
    """Make a full backup now; `done` gets a BackupAccepted or raises."""

    label: str = "manual"
    done: Any = None


class BackupAccepted(msgspec.Struct, frozen=True):
    """A `backup create` that started: its operation id, and whether the node runs (it is
    then stopped for the last pass only)."""

    operation: str
    stops_node: bool


class PrestageBackup(msgspec.Struct, frozen=True):
    """The one pre-staged copy is for plan `plan_name` from now on: copy the bulk of the data
    dir (or refresh the copy, relabelled if it was another plan's) while the node runs.

    At the upgrade height only what changed since is copied (FinishBackup). None: no plan
    needs a copy now; the staging copy of any plan not running is removed."""

    plan_name: str | None
    head: int | None = None  # the chain head the asker saw: recorded with the copy


class FinishBackup(msgspec.Struct, frozen=True):
    """The node is stopped: bring the pre-staged copy of `plan_name` up to date (or make a full
    one if none was staged). `done` gets a wemixvisor.backup.store.PendingSeal (the backup's
    id, and the seal to ask for once the node runs again: only then is it complete) or raises
    wemixvisor.backup.store.BackupError."""

    plan_name: str
    done: Any = None
    since: float = 0.0  # a complete backup of the plan made since then is reused (resumed saga)


class ListBackups(msgspec.Struct, frozen=True):
    """Ask: answered with a list of BackupInfo."""


class BackupInfo(msgspec.Struct, frozen=True):
    """One backup as `backup list` shows it."""

    id: str
    label: str
    created_at: float
    complete: bool
    total_bytes: int
    file_count: int
    path: str
    kind: str = "full"  # "full" (on request), "upgrade" (for `plan`), "pre-restore" (set aside)
    plan: str | None = None


class RestoreBackup(msgspec.Struct, frozen=True):
    """Stop the node, move live data aside, copy the backup back, check it, restart the node.
    `done` gets the operation id (str) or raises.

    `finished`, if given, is set when the restore is over: with the path the live data was
    moved to, or the error. `upgrade` names the upgrade whose rollback restores: the saga owns
    the node then, so the node is neither stopped nor started here."""

    backup_id: str
    done: Any = None
    finished: Any = None
    upgrade: str | None = None


class DeleteBackup(msgspec.Struct, frozen=True):
    """Remove backup (or moved-aside data dir) `backup_id`, whatever its kind; `done` gets
    the removed path (str) or raises (ValueError, BackupNotFound, BackupError when an
    unfinished upgrade needs it, BackupBusy)."""

    backup_id: str
    done: Any = None


class PruneBackups(msgspec.Struct, frozen=True):
    """Remove incomplete backups and all but DAEMON_BACKUP_KEEP complete upgrade backups (and
    moved-aside data dirs), never an operator's, never one an unfinished journal needs.
    `done` gets the list of removed ids."""

    done: Any = None
