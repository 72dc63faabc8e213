"""Messages to the BackupActor. Replies go to `done` (a pykka future) when given: long copies
answer at once with an operation id and report completion as backup.* events."""

from __future__ import annotations

from typing import Any

import msgspec


class CreateBackup(msgspec.Struct, frozen=True):
    """Make a full backup now; `done` gets the operation id (str) or raises."""

    label: str = "manual"
    done: Any = None


class PrestageBackup(msgspec.Struct, frozen=True):
    """Copy the bulk of the data dir now, while the node runs, for plan `plan_name`.

    At the upgrade height only what changed since is copied (FinishBackup)."""

    plan_name: str


class FinishBackup(msgspec.Struct, frozen=True):
    """The node is stopped: bring the pre-staged copy of `plan_name` up to date (or make a full
    one if none was staged) and mark it complete. `done` gets the backup id (str) or raises
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
    kind: str = "full"  # "full" (on request) or "upgrade" (pre-staged for `plan`)
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


class PruneBackups(msgspec.Struct, frozen=True):
    """Remove incomplete backups and all but DAEMON_BACKUP_KEEP complete ones, never one an
    unfinished journal needs. `done` gets the list of removed ids."""

    done: Any = None
