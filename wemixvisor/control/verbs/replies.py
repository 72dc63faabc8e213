"""The reply of every verb: a Struct whose JSON is the wire reply's `result` (SPEC §11).

Field order is the order on the wire. A field that is `UNSET` is left out of the JSON (a plan
row's `info` when the plan has none, the `note` of governance proposals when an actor runs).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from wemixvisor.control.verbs.base import DaemonState
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.messages.governance import ChainInfo, Proposal
from wemixvisor.messages.height import HeightStatus
from wemixvisor.messages.node import NodeStatus
from wemixvisor.plans.queue import RehearsalRecord
from wemixvisor.upgrade.window import WindowState

__all__ = [
    "BackupCreateReply",
    "BackupDeleteReply",
    "BackupListReply",
    "BackupPruneReply",
    "BackupRestoreReply",
    "CancelUpgradeReply",
    "ConfigReloadReply",
    "ConfigShowReply",
    "DaemonSection",
    "DaemonState",
    "EventsReply",
    "GovernanceProposalsReply",
    "InProgress",
    "LastUpgrade",
    "ListUpgradesReply",
    "LogsReply",
    "NodeBrief",
    "NodeOperationReply",
    "PendingPlan",
    "PlanRow",
    "PlansSection",
    "Readiness",
    "RehearseUpgradeReply",
    "RollbackUpgradeReply",
    "ScheduleUpgradeReply",
    "StatusReply",
    "UpgradeStatus",
    "VersionNode",
    "VersionReply",
]


class PendingPlan(msgspec.Struct, frozen=True):
    """A pending plan in `status`."""

    name: str
    height: int
    late: bool
    source: str
    mode: str = "at"
    window: int | None = None  # blocks, with mode "window" (SPEC §19)
    slot: WindowState | None = None  # the window plan's slot and verdict, once surveyed
    # Blocks until it may switch (H-1; a window plan: its slot) and that many block times
    # (null: the head or the block time is not known yet).
    eta_blocks: int | None = None
    eta_seconds: float | None = None


class InProgress(msgspec.Struct, frozen=True):
    """The upgrade being carried out, and its step."""

    name: str
    height: int
    step: str


class LastUpgrade(msgspec.Struct, frozen=True):
    """The upgrade that finished last, and how."""

    name: str
    height: int
    status: str
    result: str | None
    finished_at: float | None


class PlansSection(msgspec.Struct, frozen=True):
    """The plans part of `status`."""

    pending: list[PendingPlan]
    in_progress: InProgress | None
    last_upgrade: LastUpgrade | None


class DaemonSection(msgspec.Struct, frozen=True):
    """The daemon part of `status`."""

    version: str
    pid: int
    uptime: float
    run_id: str | None
    home: str
    stopping: bool
    actor_restarts: dict[str, int]


class StatusReply(msgspec.Struct, frozen=True):
    """`status`: the node, the chain head, the plans, validator facts and the daemon; a part
    whose actor did not answer is null, with the reason in `problems`."""

    node: NodeStatus
    head: HeightStatus | None
    plans: PlansSection | None
    chain: ChainInfo | None
    daemon: DaemonSection
    problems: list[str]


class NodeBrief(msgspec.Struct, frozen=True):
    """The node's state and pid."""

    state: str
    pid: int | None


class NodeOperationReply(msgspec.Struct, frozen=True):
    """`start`, `stop`, `restart`: the operation id, the node before and right after."""

    operation: str
    before: NodeBrief
    node: NodeBrief


class LogsReply(msgspec.Struct, frozen=True):
    """`logs`: the last lines of the node log (`more`: the file holds earlier ones)."""

    path: str
    exists: bool
    lines: list[str]
    more: bool


class ScheduleUpgradeReply(msgspec.Struct, frozen=True):
    """`schedule_upgrade`: what registering did (`added`, `updated`, `unchanged`), and the
    problems the first preflight found (left out when nothing was registered)."""

    name: str
    height: int
    outcome: str
    late: bool
    head: int | None
    preflight: list[str] | UnsetType = UNSET


class CancelUpgradeReply(msgspec.Struct, frozen=True):
    """`cancel_upgrade`: whether the queue's plan was cancelled, and the files it left."""

    name: str
    height: int | None
    cancelled: bool
    already_cancelled: bool
    removed_from: list[str]


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of a waiting plan's readiness (null: not known here)."""

    binary_staged: bool | None = None  # upgrades/<name>/bin/$DAEMON_NAME is there, executable
    # Downloaded against the plan's checksum (false: downloaded without one; null: the binary
    # was not downloaded, so there was nothing to check it against).
    checksum_verified: bool | None = None
    hooks_present: bool | None = None  # the configured custom pre-upgrade script (true: none)
    preflight_ok: bool | None = None  # the daemon's last preflight of the plan passed


class PlanRow(msgspec.Struct, frozen=True, kw_only=True):
    """A plan of `list_upgrades`: queued, or `in_file` (not yet seen by the daemon);
    `readiness` for the plans still waiting."""

    name: str
    height: int
    info: dict[str, Any] | str | UnsetType = UNSET
    status: str
    source: str
    late: bool
    result: str | None
    registered_at: float | None
    finished_at: float | None
    readiness: Readiness | UnsetType = UNSET
    rehearsal: RehearsalRecord | UnsetType = UNSET  # its binary's last rehearsal (SPEC §19)
    mode: str | UnsetType = UNSET  # "window" for a rolling-window plan (left out for "at")
    window: int | UnsetType = UNSET
    slot: WindowState | UnsetType = UNSET  # its slot, the verdict and the ETA, once surveyed
    # For a plan still waiting: blocks until it may switch (H-1; a window plan: its slot) and
    # that many measured block times (null: the head or the block time is not known yet).
    eta_blocks: int | UnsetType | None = UNSET
    eta_seconds: float | UnsetType | None = UNSET


class ListUpgradesReply(msgspec.Struct, frozen=True):
    """`list_upgrades`: every plan by height, the journal of the upgrade in progress."""

    daemon: DaemonState
    plans: list[PlanRow]
    journal: dict[str, Any] | None
    head: int | None
    problems: list[str]
    # Seconds, as the daemon measured it (null: not yet; left out by a daemon that does not)
    block_time: float | UnsetType | None = UNSET


class UpgradeStatus(msgspec.Struct, frozen=True):
    """`upgrade status`: the pending part of `list_upgrades`, and why the journal is unreadable
    (when it is)."""

    daemon: DaemonState
    pending: list[PlanRow]
    journal: dict[str, Any] | None
    journal_error: str | None
    problems: list[str]
    head: int | UnsetType | None = UNSET
    block_time: float | UnsetType | None = UNSET  # seconds, as the daemon measured it


class RehearseUpgradeReply(msgspec.Struct, frozen=True):
    """`rehearse_upgrade`: the operation that rehearses plan `name`."""

    operation: str
    name: str


class RollbackUpgradeReply(msgspec.Struct, frozen=True):
    """`rollback_upgrade`: the operation that rolls upgrade `name` back."""

    operation: str
    name: str
    restore: bool


class BackupCreateReply(msgspec.Struct, frozen=True):
    """`backup_create`: the operation that makes the backup; `stops_node`: the node runs, so
    it is stopped for the last pass (what changed while the bulk was copied)."""

    operation: str
    label: str
    stops_node: bool = False


class BackupListReply(msgspec.Struct, frozen=True):
    """`backup_list`."""

    backups: list[BackupInfo]


class BackupRestoreReply(msgspec.Struct, frozen=True):
    """`backup_restore`: the operation that restores it."""

    operation: str
    backup_id: str


class BackupDeleteReply(msgspec.Struct, frozen=True):
    """`backup_delete`: the backup removed, and where it was."""

    backup_id: str
    path: str


class BackupPruneReply(msgspec.Struct, frozen=True):
    """`backup_prune`: the removed ids, or (null) the operation of a prune still going on."""

    operation: str | None
    removed: list[str] | None


class ConfigShowReply(msgspec.Struct, frozen=True):
    """`config_show`: the running configuration, and the file's state."""

    config: dict[str, Any]
    config_file: str
    config_file_exists: bool
    restart_required: list[str]
    file_error: str | None


class ConfigReloadReply(msgspec.Struct, frozen=True):
    """`config_reload`: the keys changed now, and those waiting for a restart."""

    changed: list[str]
    restart_required: list[str]
    config_file: str


class GovernanceProposalsReply(msgspec.Struct, frozen=True):
    """`governance_proposals`; `note` says why there are none when governance is not followed."""

    proposals: list[Proposal]
    note: str | UnsetType = UNSET


class VersionNode(msgspec.Struct, frozen=True):
    """The node binary `current` points at."""

    binary: str | None
    target: str | None
    version: str | None


class VersionReply(msgspec.Struct, frozen=True):
    """`version`: wemixvisor's, and the node binary's (null when the node actor is silent);
    `events_endpoint` is where the daemon publishes its events (a client of the control socket
    learns it here, e.g. the web console)."""

    wemixvisor: str
    node: VersionNode | None
    events_endpoint: str | None = None


class EventsReply(msgspec.Struct, frozen=True):
    """`events`: journaled payloads, oldest first; `more` when the journal holds more after the
    last one (ask again from its seq + 1 in its run); `run_id` the run the replay started in
    (null when the journal is empty)."""

    events: list[dict[str, Any]]
    more: bool
    run_id: str | None
