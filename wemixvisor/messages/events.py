"""Lifecycle events broadcast on the ZeroMQ PUB socket (SPEC §10).

Each event is a msgspec Struct tagged with its topic. The envelope fields (`seq`, `run_id`, `ts`)
are filled in by the events publisher at send time; producers leave them at their defaults.
On the wire: multipart `[topic, json]`, the JSON object holding `topic`, the envelope and the
event's own fields.
"""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, tag_field="topic", kw_only=True, frozen=True):
    """Base of every event; `topic` is the tag, e.g. `node.exited`."""

    seq: int = 0
    run_id: str = ""
    ts: float = 0.0

    @property
    def topic(self) -> str:
        tag = type(self).__struct_config__.tag
        assert isinstance(tag, str)
        return tag


# supervisor.*


class SupervisorStarted(Event, tag="supervisor.started", frozen=True):
    version: str
    pid: int
    home: str


class SupervisorStopping(Event, tag="supervisor.stopping", frozen=True):
    reason: str


class SupervisorHeartbeat(Event, tag="supervisor.heartbeat", frozen=True):
    uptime: float
    node_state: str
    events_published: int
    events_dropped: int


class ActorRestarted(Event, tag="supervisor.actor_restarted", frozen=True):
    actor: str
    error: str


# node.*


class NodeStarting(Event, tag="node.starting", frozen=True):
    binary: str
    target: str
    args: list[str]
    attempt: int


class NodeRunning(Event, tag="node.running", frozen=True):
    pid: int
    startup_seconds: float
    by: str  # "rpc" when RPC answered first, "startsecs" when it stayed alive long enough


class NodeExited(Event, tag="node.exited", frozen=True):
    pid: int
    exit_code: int | None
    signal: int | None
    expected: bool
    state: str  # the state the node was in when it exited
    uptime: float


class NodeBackoff(Event, tag="node.backoff", frozen=True):
    delay: float
    restarts_in_window: int
    max_restarts: int


class NodeFatal(Event, tag="node.fatal", frozen=True):
    reason: str
    restarts_in_window: int


class NodeStopping(Event, tag="node.stopping", frozen=True):
    pid: int
    reason: str
    grace: float


class NodeStopped(Event, tag="node.stopped", frozen=True):
    pid: int | None
    killed: bool  # True when the grace ran out and the group was SIGKILLed
    seconds: float


class NodeAdopted(Event, tag="node.adopted", frozen=True):
    pid: int
    binary: str
    uptime: float


class NodeStalled(Event, tag="node.stalled", frozen=True):
    height: int
    seconds: float


class NodeStartFailed(Event, tag="node.start_failed", frozen=True):
    binary: str
    error: str


# config.*


class ConfigReloaded(Event, tag="config.reloaded", frozen=True):
    changed: list[str]
    restart_required: list[str]


class ConfigRejected(Event, tag="config.rejected", frozen=True):
    error: str


# Internal messages of the events actor (not broadcast as such).


class PublishHeartbeat(msgspec.Struct, frozen=True):
    """Tell the events actor to publish `supervisor.heartbeat` with its publish counters."""

    uptime: float
    node_state: str


# height.* / rpc.*


class HeightObserved(Event, tag="height.observed", frozen=True):
    height: int
    source: str  # "ws" (newHeads subscription) or "poll" (eth_blockNumber)


class RpcUnavailable(Event, tag="rpc.unavailable", frozen=True):
    address: str
    error: str


class RpcRecovered(Event, tag="rpc.recovered", frozen=True):
    address: str
    down_seconds: float


# plan.*


class PlanRegistered(Event, tag="plan.registered", frozen=True):
    name: str
    height: int
    source: str
    late: bool
    updated: bool  # an existing pending plan of that name got a new height or info


class PlanRejected(Event, tag="plan.rejected", frozen=True):
    reason: str
    source: str
    name: str | None = None
    height: int | None = None


class PlanCancelled(Event, tag="plan.cancelled", frozen=True):
    name: str
    height: int
    source: str


class PlanPreflightFailed(Event, tag="plan.preflight_failed", frozen=True):
    name: str
    height: int
    problems: list[str]


# upgrade.*


class UpgradeStarted(Event, tag="upgrade.started", frozen=True):
    name: str
    height: int
    observed_height: int
    late: bool
    from_target: str
    to_target: str


class UpgradeArmed(Event, tag="upgrade.armed", frozen=True):
    """A plan's switch is a few blocks away: everything before the stop that does not depend
    on the moment is done (quick preflight, the node's lease, its arguments, the validator
    record), so that at the switch only the journal write and the stop remain. Not a
    commitment: `upgrade.disarmed` says when it was given up before the stop."""

    name: str
    height: int
    head: int | None  # the head at which it was armed
    switch_at: int | None  # the head the switch waits for: H-1, or a window plan's slot start
    lease: bool  # whether the node's lease is held (else it is taken at the switch)


class UpgradeDisarmed(Event, tag="upgrade.disarmed", frozen=True):
    """An armed plan was given up before its stop (cancelled, replaced, another plan first, the
    head gone back or unknown, the configuration reloaded, the daemon stopping): nothing
    changed. Follows an `upgrade.armed`; a preflight problem found while arming is a
    `plan.preflight_failed` instead."""

    name: str
    height: int
    reason: str


class UpgradeOvershoot(Event, tag="upgrade.overshoot", frozen=True):
    """The old binary was seen at or past H (RPC down at H-1, or a fast sync through H): on a
    real fork those blocks are invalid and must be rewound with the node's own tools."""

    name: str
    height: int
    head: int  # the old binary's head: seen at the switch, or the new binary's first head
    blocks: int  # head - H + 1: blocks at or beyond H the old binary imported


class UpgradeStep(Event, tag="upgrade.step", frozen=True):
    name: str
    step: str
    attempt: int = 1
    detail: str = ""


class UpgradeCompleted(Event, tag="upgrade.completed", frozen=True):
    name: str
    height: int
    downtime_seconds: float
    version: str | None
    first_head: int | None  # the new binary's first head: the old binary's last block


class UpgradeFailed(Event, tag="upgrade.failed", frozen=True):
    name: str
    height: int
    step: str
    reason: str


class UpgradeRolledBack(Event, tag="upgrade.rolled_back", frozen=True):
    name: str
    height: int
    target: str
    restored_backup: str | None


class UpgradeWaitingForNetwork(Event, tag="upgrade.waiting_for_network", frozen=True):
    name: str
    height: int
    head: int | None
    seconds: float


class UpgradeWaitingForQuorum(Event, tag="upgrade.waiting_for_quorum", frozen=True):
    """A rolling-window plan's slot has come, but the other active validators would fall short
    of the quorum while this one is down: it tries again at the next block (SPEC §19)."""

    name: str
    height: int
    head: int
    slot_start: int
    slot_end: int
    active: int  # other validators up now
    needed: int  # the quorum they must reach without this node


class UpgradeWindowClosed(Event, tag="upgrade.window_closed", frozen=True):
    """A rolling-window plan found no safe moment in its window (or could not take a slot):
    it upgrades at H-1 like a plain plan."""

    name: str
    height: int
    head: int | None
    reason: str


class UpgradeAwaitingOperator(Event, tag="upgrade.awaiting_operator", frozen=True):
    name: str
    height: int
    reason: str


class UpgradeRehearsalStarted(Event, tag="upgrade.rehearsal_started", frozen=True):
    """The new binary runs on a scratch copy of the pre-staged backup (SPEC §19)."""

    name: str
    port: int
    expected_head: int | None  # the head recorded with the copy, when it is known


class UpgradeRehearsed(Event, tag="upgrade.rehearsed", frozen=True):
    """How the rehearsal of a plan's new binary went; `log_tail` is its own log on failure."""

    name: str
    ok: bool
    seconds: float
    head: int | None
    reason: str = ""
    log_tail: list[str] = []


class UpgradeRollbackStarted(Event, tag="upgrade.rollback_started", frozen=True):
    """The operator rolls a completed upgrade back to `target`."""

    name: str
    height: int
    target: str
    restore: bool
    backup: str | None
    resumed: bool = False


class UpgradeRollbackStep(Event, tag="upgrade.rollback_step", frozen=True):
    name: str
    step: str
    detail: str = ""


class UpgradeRollbackCompleted(Event, tag="upgrade.rollback_completed", frozen=True):
    name: str
    height: int
    target: str
    restored_backup: str | None
    seconds: float


class UpgradeRollbackFailed(Event, tag="upgrade.rollback_failed", frozen=True):
    """The rollback stopped at `step`; `target` is what `current` points at now."""

    name: str
    step: str
    reason: str
    target: str | None


# download.*


class DownloadStarted(Event, tag="download.started", frozen=True):
    name: str
    url: str


class DownloadProgress(Event, tag="download.progress", frozen=True):
    name: str
    bytes_done: int
    bytes_total: int | None  # None when the server does not say how big the file is


class DownloadCompleted(Event, tag="download.completed", frozen=True):
    name: str
    url: str
    sha256: str
    bytes: int
    seconds: float


class DownloadFailed(Event, tag="download.failed", frozen=True):
    name: str
    url: str  # empty when no URL could be chosen from the plan
    error: str
    attempt: int  # attempts made so far; 0 when refused before anything was fetched
    will_retry: bool


# backup.*


class BackupStarted(Event, tag="backup.started", frozen=True):
    id: str  # the backup's id; for a restore, the operation's
    label: str
    kind: str  # "full", "prestage" (copy while the node runs), "upgrade" (finish at H), "restore"


class BackupProgress(Event, tag="backup.progress", frozen=True):
    id: str
    bytes_done: int
    bytes_total: int


class BackupCompleted(Event, tag="backup.completed", frozen=True):
    id: str
    label: str
    total_bytes: int
    changed_bytes: int  # what this operation copied; small for an upgrade backup pre-staged
    seconds: float
    kind: str = "full"
    node_stopped_seconds: float | None = None  # `backup create` of a running node: its stop


class BackupStaged(Event, tag="backup.staged", frozen=True):
    id: str  # the incomplete staging backup, finished (and renamed) at the plan's height
    label: str
    plan: str
    total_bytes: int
    changed_bytes: int
    seconds: float


class BackupFailed(Event, tag="backup.failed", frozen=True):
    id: str
    label: str
    error: str
    kind: str = ""


class BackupCancelled(Event, tag="backup.cancelled", frozen=True):
    id: str
    label: str
    reason: str


class BackupRestored(Event, tag="backup.restored", frozen=True):
    id: str  # the restore operation
    backup_id: str
    aside: str  # where the live data was moved
    seconds: float


class BackupPruned(Event, tag="backup.pruned", frozen=True):
    removed: list[str]


class BackupDeleted(Event, tag="backup.deleted", frozen=True):
    id: str  # removed by the operator (`backup delete`)
    path: str


# governance.* / validator.*


class GovernanceProposal(Event, tag="governance.proposal", frozen=True):
    contract: str
    id: int
    state: str  # voting, approved, rejected, executed (GovBase also: failed, expired, cancelled)
    votes_for: int
    votes_against: int
    quorum: int | None
    kind: str = "upgrade"  # the contract's kind: upgrade or govbase
    name: str | None = None  # an upgrade proposal's plan name (only when it is a valid name)
    height: int | None = None
    # GovBase names (SPEC §13.3): status is state, approved/rejected the votes, required the
    # approvals needed; expires_at is createdAt + proposalExpiry (unix seconds).
    status: str | None = None
    approved: int | None = None
    rejected: int | None = None
    required: int | None = None
    expires_at: int | None = None
    failed_executions: int = 0  # executions with success=false: still approved, retryable


class ValidatorSigning(Event, tag="validator.signing", frozen=True):
    address: str
    height: int  # the upgrade's height H
    block: int  # the first block after H this node committed


class ValidatorNotSigning(Event, tag="validator.not_signing", frozen=True):
    address: str
    height: int  # the upgrade's height H
    blocks_checked: int  # blocks after H whose committers were read
    reason: str = ""


class ValidatorQuorumAtRisk(Event, tag="validator.quorum_at_risk", frozen=True):
    address: str
    plan: str  # the upgrade whose downtime is meant
    height: int
    validators: int
    quorum: int  # ⌈2n/3⌉
    active: int  # validators that sealed in the node's recent window
    active_without_me: int
