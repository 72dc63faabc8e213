"""The backup verbs: `backup_create`, `backup_list`, `backup_restore`, `backup_prune`,
`backup_delete`.

Creating and restoring are the backup actor's long operations (daemon only: without a daemon
the operator tool copies with its own progress bar); listing, pruning and deleting run against
a BackupContext, the daemon's or the offline one.
"""

from __future__ import annotations

import time

import pykka

from wemixvisor.backup.store import BackupError, backup_id, check_backup_id
from wemixvisor.control.protocol import (
    BackupCreate,
    BackupDelete,
    BackupList,
    BackupPrune,
    BackupRestore,
    ControlError,
    ErrorCode,
)
from wemixvisor.control.verbs.base import BackupContext, Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.render import render_backups
from wemixvisor.control.verbs.replies import (
    BackupCreateReply,
    BackupDeleteReply,
    BackupListReply,
    BackupPruneReply,
    BackupRestoreReply,
)
from wemixvisor.messages.backup import BackupAccepted, CreateBackup, RestoreBackup

__all__ = [
    "BackupCreateVerb",
    "BackupDeleteVerb",
    "BackupListVerb",
    "BackupPruneVerb",
    "BackupRestoreVerb",
]

_MAX_BACKUP_ID_CHARS = 200


class BackupCreateVerb(Verb[ControlContext, BackupCreate, BackupCreateReply]):
    """`backup_create`: a full backup now; completion arrives as backup.* events."""

    request_type = BackupCreate
    reply_type = BackupCreateReply
    summary = "Make a full backup of the node's data now."
    long_operation = True
    changes_state = True

    def execute(self, ctx: ControlContext, request: BackupCreate) -> BackupCreateReply:
        label = request.label or "manual"
        try:
            backup_id(label, time.time())
        except BackupError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        done: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
        ctx.tell("backup", CreateBackup(label=label, done=done))
        accepted: BackupAccepted = ctx.wait_done("backup", done)
        return BackupCreateReply(
            operation=accepted.operation, label=label, stops_node=accepted.stops_node
        )

    def render(self, reply: BackupCreateReply) -> str:
        if reply.stops_node:
            return (
                f"backup started (operation {reply.operation}): the node runs, so its data is "
                "copied while it runs, then the node is stopped for the changes only and "
                "started again"
            )
        return f"backup started (operation {reply.operation})"


class BackupListVerb(Verb[BackupContext, BackupList, BackupListReply]):
    """`backup_list`: every backup, complete or not."""

    request_type = BackupList
    reply_type = BackupListReply
    summary = "The backups, complete or not."
    offline = True

    def execute(self, ctx: BackupContext, request: BackupList) -> BackupListReply:
        return BackupListReply(backups=ctx.list_backups())

    def render(self, reply: BackupListReply) -> str:
        return render_backups(reply)


class BackupRestoreVerb(Verb[ControlContext, BackupRestore, BackupRestoreReply]):
    """`backup_restore`: restore a backup (the node is stopped and restarted); at once."""

    request_type = BackupRestore
    reply_type = BackupRestoreReply
    summary = "Restore backup `backup_id` in place of the node's data (node stopped, restarted)."
    long_operation = True
    changes_state = True

    def execute(self, ctx: ControlContext, request: BackupRestore) -> BackupRestoreReply:
        wanted = request.backup_id
        # The backup actor checks the id (it becomes a path); this only keeps a hostile
        # megabyte out of the error message.
        if len(wanted) > _MAX_BACKUP_ID_CHARS:
            raise ControlError(ErrorCode.BAD_REQUEST, "backup id too long")
        done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        ctx.tell("backup", RestoreBackup(backup_id=wanted, done=done))
        operation = ctx.wait_done("backup", done)
        return BackupRestoreReply(operation=str(operation), backup_id=wanted)

    def render(self, reply: BackupRestoreReply) -> str:
        return f"restore of {reply.backup_id} started (operation {reply.operation})"


class BackupPruneVerb(Verb[BackupContext, BackupPrune, BackupPruneReply]):
    """`backup_prune`: remove incomplete and surplus backups; a long prune answers with an
    operation id and reports its end as control.operation_completed."""

    request_type = BackupPrune
    reply_type = BackupPruneReply
    summary = "Remove incomplete backups and all but the configured number of complete ones."
    long_operation = True
    changes_state = True
    offline = True

    def execute(self, ctx: BackupContext, request: BackupPrune) -> BackupPruneReply:
        outcome = ctx.prune_backups()
        return BackupPruneReply(operation=outcome.operation, removed=outcome.removed)

    def render(self, reply: BackupPruneReply) -> str:
        if reply.removed is None:
            return f"pruning (operation {reply.operation})"
        return "removed: " + (", ".join(reply.removed) or "nothing")


class BackupDeleteVerb(Verb[BackupContext, BackupDelete, BackupDeleteReply]):
    """`backup_delete`: remove one backup, whatever its kind (retention never removes the
    operator's own backups; this does)."""

    request_type = BackupDelete
    reply_type = BackupDeleteReply
    summary = "Remove backup `backup_id` (any kind, or a data dir a restore set aside)."
    changes_state = True
    offline = True

    def execute(self, ctx: BackupContext, request: BackupDelete) -> BackupDeleteReply:
        try:
            wanted = check_backup_id(request.backup_id)
        except ValueError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        path = ctx.delete_backup(wanted)
        return BackupDeleteReply(backup_id=wanted, path=path)

    def render(self, reply: BackupDeleteReply) -> str:
        return f"deleted {reply.backup_id} ({reply.path})"
