"""Every control verb, defined once (SPEC §11): request and reply Structs, what is done for it,
and how the operator tool shows its reply — shared by the wire protocol, the CLI (with the
daemon running or not) and, later, the HTTP API (SPEC §18).

- `base`: the `Verb` ABC and the contexts the plan and backup verbs run against;
- `replies`: every verb's reply Struct (the wire reply's `result`);
- `node`, `upgrades`, `rehearse`, `rollback`, `backups`, `config`, `info`, `events`: the verbs;
- `daemon`: `ControlContext`, the daemon's context (it asks actors);
- `offline`: `OfflineContext`, the context on a home's files while no daemon runs;
- `registry`: `VERBS` and one constant per verb; `dispatch`: the control server's `Dispatcher`;
- `render`: replies as text.
"""

from __future__ import annotations

from wemixvisor.control.verbs.base import (
    BackupContext,
    DaemonState,
    PlanContext,
    PlanSnapshot,
    PruneOutcome,
    Registration,
    Verb,
)
from wemixvisor.control.verbs.daemon import ASK_TIMEOUT, ControlContext
from wemixvisor.control.verbs.dispatch import Dispatcher
from wemixvisor.control.verbs.offline import OfflineContext
from wemixvisor.control.verbs.registry import (
    BACKUP_CREATE,
    BACKUP_DELETE,
    BACKUP_LIST,
    BACKUP_PRUNE,
    BACKUP_RESTORE,
    CANCEL_UPGRADE,
    CONFIG_RELOAD,
    CONFIG_SHOW,
    EVENTS,
    GOVERNANCE_PROPOSALS,
    LIST_UPGRADES,
    LOGS,
    REHEARSE_UPGRADE,
    RESTART,
    ROLLBACK_UPGRADE,
    SCHEDULE_UPGRADE,
    START,
    STATUS,
    STOP,
    VERBS,
    VERSION,
)
from wemixvisor.control.verbs.upgrades import plan_row, upgrade_status

__all__ = [
    "ASK_TIMEOUT",
    "BACKUP_CREATE",
    "BACKUP_DELETE",
    "BACKUP_LIST",
    "BACKUP_PRUNE",
    "BACKUP_RESTORE",
    "CANCEL_UPGRADE",
    "CONFIG_RELOAD",
    "CONFIG_SHOW",
    "EVENTS",
    "GOVERNANCE_PROPOSALS",
    "LIST_UPGRADES",
    "LOGS",
    "REHEARSE_UPGRADE",
    "RESTART",
    "ROLLBACK_UPGRADE",
    "SCHEDULE_UPGRADE",
    "START",
    "STATUS",
    "STOP",
    "VERBS",
    "VERSION",
    "BackupContext",
    "ControlContext",
    "DaemonState",
    "Dispatcher",
    "OfflineContext",
    "PlanContext",
    "PlanSnapshot",
    "PruneOutcome",
    "Registration",
    "Verb",
    "plan_row",
    "upgrade_status",
]
