"""Which backups go: retention (`prune`) and the operator's `backup delete` (SPEC §7).

Retention keeps DAEMON_BACKUP_KEEP complete upgrade backups and as many data dirs moved aside
by restores; a backup the operator made (`backup create`) is theirs and only `backup delete`
removes it. Incomplete backups go, except what an unfinished upgrade or a pending plan needs.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from wemixvisor.backup.errors import BackupError, BackupNotFound
from wemixvisor.backup.index import (
    PRE_RESTORE,
    index_of,
    list_backups,
    set_aside_re,
    staging_copies,
)
from wemixvisor.backup.manifest import ID_RE
from wemixvisor.home import state
from wemixvisor.home.fsutil import fsync_dir
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.plans.queue import PlanError, PlanStatus

MAX_ID_CHARS = 200
_PLAIN_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,200}\Z")

_KEPT_BY_COUNT = ("upgrade", PRE_RESTORE)
"""Kinds retention keeps the newest DAEMON_BACKUP_KEEP of; `full` backups are never pruned."""


def check_backup_id(backup_id: object) -> str:
    """`backup_id` when it is a plain name (what `backup list` shows); ValueError for anything
    that could name another place: a path, `..`, a NUL, a name too long."""
    if (
        not isinstance(backup_id, str)
        or backup_id in (".", "..")
        or not _PLAIN_NAME.fullmatch(backup_id)
    ):
        shown = repr(backup_id)[:80] if isinstance(backup_id, str) else type(backup_id).__name__
        raise ValueError(f"invalid backup id {shown}: a name as listed by `wemixvisor backup list`")
    return backup_id


def _read_state(home: Home) -> tuple[list[dict[str, object]], set[str]]:
    """The journals of what is unfinished (an upgrade, an operator's rollback) and the plans
    pending or running."""
    try:
        journals = [
            journal
            for journal in (state.read_journal(home), state.read_rollback(home))
            if journal is not None
        ]
        queue = state.read_queue(home)
    except PlanError as exc:
        raise BackupError(f"not pruning: {exc}") from None
    active = {
        entry.plan.name
        for entry in queue.plans
        if entry.status in (PlanStatus.PENDING, PlanStatus.RUNNING)
    }
    return journals, active


def _journal_ids(journals: list[dict[str, object]], backups_dir: Path) -> set[str]:
    needed: set[str] = set()
    for journal in journals:
        named = journal.get("backup")  # an upgrade's backup, or the one a rollback restores
        if isinstance(named, str):
            needed.add(named)
        plan = journal.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("name"), str):
            needed |= {
                path.name
                for path, summary in staging_copies(backups_dir)
                if summary.plan == plan["name"]
            }
    return needed


def journal_needs(home: Home, backups_dir: Path) -> set[str]:
    """The backups an unfinished upgrade or rollback needs: the one its journal names and its
    plan's pre-staged copy. BackupError when the daemon's state is unreadable."""
    journals, _ = _read_state(home)
    return _journal_ids(journals, backups_dir)


def protected_backups(home: Home, backups_dir: Path) -> set[str]:
    """Backups nothing may prune: what an unfinished journal needs, and the staging copy of
    every plan still pending or running. BackupError when the daemon's state is unreadable
    (then nobody can tell what is needed)."""
    journals, active = _read_state(home)
    protected = _journal_ids(journals, backups_dir)
    protected |= {
        path.name for path, summary in staging_copies(backups_dir) if summary.plan in active
    }
    return protected


def choose_prune(backups: list[BackupInfo], keep: int, protected: set[str]) -> list[str]:
    """Ids to remove: every incomplete backup, and the complete upgrade backups and moved-aside
    data dirs beyond the `keep` newest of each; never a protected one, never an operator's."""
    doomed: list[str] = []
    for kind in _KEPT_BY_COUNT:
        kept = sorted(
            (info for info in backups if info.complete and info.kind == kind),
            key=lambda info: (info.created_at, info.id),
            reverse=True,
        )
        doomed += [info.id for info in kept[max(keep, 0) :]]
    doomed += [info.id for info in backups if not info.complete]
    return sorted(ident for ident in doomed if ident not in protected)


def prune_backups(
    backups_dir: Path, keep: int, protected: set[str], *, data_dir: Path | None = None
) -> list[str]:
    """Apply `choose_prune` to the backups on disk (and, with `data_dir`, the data dirs moved
    aside beside it); the ids removed."""
    listed = list_backups(backups_dir, data_dir)
    paths = {info.id: Path(info.path) for info in listed}
    removed: list[str] = []
    for ident in choose_prune(listed, keep, protected):
        shutil.rmtree(paths[ident])
        fsync_dir(paths[ident].parent)
        removed.append(ident)
    if removed:
        index_of(backups_dir).summaries()
    return removed


def delete_backup(backups_dir: Path, backup_id: str, *, data_dir: Path, needed: set[str]) -> Path:
    """Remove backup (or moved-aside data dir) `backup_id`, whatever its kind; its path.

    ValueError for an id that is not a plain name, BackupNotFound for an unknown one,
    BackupError when an unfinished upgrade needs it.
    """
    check_backup_id(backup_id)
    if ID_RE.fullmatch(backup_id):
        path = backups_dir / backup_id
    elif set_aside_re(data_dir).fullmatch(backup_id):
        path = data_dir.parent / backup_id
    else:
        raise BackupNotFound(f"no backup {backup_id} (see `wemixvisor backup list`)")
    if not path.is_dir() or path.is_symlink():
        raise BackupNotFound(f"no backup {backup_id} (see `wemixvisor backup list`)")
    if backup_id in needed:
        raise BackupError(
            f"backup {backup_id} is needed by the unfinished upgrade (its journal names it); "
            "it can be deleted once the upgrade has ended"
        )
    shutil.rmtree(path)
    fsync_dir(path.parent)
    return path
