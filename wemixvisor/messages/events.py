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


class UpgradeAwaitingOperator(Event, tag="upgrade.awaiting_operator", frozen=True):
    name: str
    height: int
    reason: str
