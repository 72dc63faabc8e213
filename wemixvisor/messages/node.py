"""Messages to and from the NodeActor."""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class NodeState(enum.StrEnum):
    """supervisord's process states."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class StartNode(msgspec.Struct, frozen=True):
    """Start the node (also leaves FATAL and cuts a BACKOFF short).

    `holder` names the lease holder asking (see AcquireNodeLease); while the node is leased,
    a start from anyone else is refused."""

    reason: str = "operator"
    holder: str | None = None


class StopNode(msgspec.Struct, frozen=True):
    """Stop the node gracefully; `done` (a pykka future) is set with the final NodeStatus.

    While the node is leased, a stop from anyone but the `holder` is refused: `done` gets the
    status as it is. `shutdown` (the daemon stopping) stops it whoever holds it."""

    reason: str = "operator"
    done: Any = None
    holder: str | None = None
    shutdown: bool = False


class RestartNode(msgspec.Struct, frozen=True):
    """Stop, then start again (refused like StartNode while leased by someone else)."""

    reason: str = "operator"
    holder: str | None = None


class AcquireNodeLease(msgspec.Struct, frozen=True):
    """Ask: the node is `holder`'s for maintenance (an upgrade, a restore, a backup's last
    pass) until it sends ReleaseNodeLease; answered with a NodeLease.

    While leased, the NodeActor obeys start/stop/restart only from the holder and refuses
    everyone else (`busy`). A holder asking again is granted again. With `wait`, a request the
    node cannot grant now is queued and answered when the lease is free (through `done`, a
    pykka future, when given; else the ask waits)."""

    holder: str
    reason: str
    wait: bool = False
    done: Any = None


class ReleaseNodeLease(msgspec.Struct, frozen=True):
    """The node is no longer `holder`'s (nothing happens if it was not)."""

    holder: str


class NodeLease(msgspec.Struct, frozen=True):
    """Answer to AcquireNodeLease: whether `holder` got the node; if not, who has it."""

    granted: bool
    holder: str
    reason: str


class GetNodeStatus(msgspec.Struct, frozen=True):
    """Ask: answered with a NodeStatus. `stats=False` for an asker that reads neither CPU nor
    RSS (the heartbeat): the process tree is not walked, the last sample is given."""

    stats: bool = True


class WatchNode(msgspec.Struct, frozen=True):
    """Tell `watcher` (an ActorRef, or anything with a `tell` method) a NodeStateChanged on
    every state change."""

    watcher: Any


class UnwatchNode(msgspec.Struct, frozen=True):
    """Stop telling `watcher` the state changes."""

    watcher: Any


class NodeStateChanged(msgspec.Struct, frozen=True):
    """Sent to watchers on every transition."""

    state: NodeState
    previous: NodeState
    pid: int | None


class ExitRecord(msgspec.Struct, frozen=True):
    """One past exit, newest last in NodeStatus.exits."""

    at: float
    pid: int
    exit_code: int | None
    signal: int | None
    expected: bool
    uptime: float


class NodeStatus(msgspec.Struct, frozen=True):
    """What `status` reports about the node process."""

    state: NodeState
    pid: int | None
    uptime: float | None
    restarts: int
    restarts_in_window: int
    exits: list[ExitRecord]
    binary: str | None
    target: str | None
    version: str | None
    adopted: bool
    cpu_percent: float
    rss_bytes: int
    last_error: str | None
    lease: str | None = None  # who holds the node for maintenance, and why
    args: list[str] = msgspec.field(default_factory=list)  # what the node process runs with
