"""Every verb, once: the instances the server, the operator tool and HTTP share."""

from __future__ import annotations

from typing import Any, Final

from wemixvisor.control.verbs.backups import (
    BackupCreateVerb,
    BackupDeleteVerb,
    BackupListVerb,
    BackupPruneVerb,
    BackupRestoreVerb,
)
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.config import ConfigReloadVerb, ConfigShowVerb
from wemixvisor.control.verbs.events import EventsVerb
from wemixvisor.control.verbs.info import GovernanceProposalsVerb, VersionVerb
from wemixvisor.control.verbs.node import LogsVerb, RestartVerb, StartVerb, StatusVerb, StopVerb
from wemixvisor.control.verbs.rehearse import RehearseUpgradeVerb
from wemixvisor.control.verbs.rollback import RollbackUpgradeVerb
from wemixvisor.control.verbs.upgrades import (
    CancelUpgradeVerb,
    ListUpgradesVerb,
    ScheduleUpgradeVerb,
)

__all__ = [
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
]

STATUS: Final = StatusVerb()
START: Final = StartVerb()
STOP: Final = StopVerb()
RESTART: Final = RestartVerb()
LOGS: Final = LogsVerb()
SCHEDULE_UPGRADE: Final = ScheduleUpgradeVerb()
CANCEL_UPGRADE: Final = CancelUpgradeVerb()
LIST_UPGRADES: Final = ListUpgradesVerb()
REHEARSE_UPGRADE: Final = RehearseUpgradeVerb()
ROLLBACK_UPGRADE: Final = RollbackUpgradeVerb()
BACKUP_CREATE: Final = BackupCreateVerb()
BACKUP_LIST: Final = BackupListVerb()
BACKUP_RESTORE: Final = BackupRestoreVerb()
BACKUP_PRUNE: Final = BackupPruneVerb()
BACKUP_DELETE: Final = BackupDeleteVerb()
CONFIG_SHOW: Final = ConfigShowVerb()
CONFIG_RELOAD: Final = ConfigReloadVerb()
GOVERNANCE_PROPOSALS: Final = GovernanceProposalsVerb()
EVENTS: Final = EventsVerb()
VERSION: Final = VersionVerb()

VERBS: Final[dict[str, Verb[Any, Any, Any]]] = {
    verb.name: verb
    for verb in (
        STATUS,
        START,
        STOP,
        RESTART,
        LOGS,
        SCHEDULE_UPGRADE,
        CANCEL_UPGRADE,
        LIST_UPGRADES,
        REHEARSE_UPGRADE,
        ROLLBACK_UPGRADE,
        BACKUP_CREATE,
        BACKUP_LIST,
        BACKUP_RESTORE,
        BACKUP_PRUNE,
        BACKUP_DELETE,
        CONFIG_SHOW,
        CONFIG_RELOAD,
        GOVERNANCE_PROPOSALS,
        EVENTS,
        VERSION,
    )
}
"""Verb name → its definition; one per request type of `protocol.REQUEST_TYPES`."""
