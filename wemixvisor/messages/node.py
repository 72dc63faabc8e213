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
    """Start the node (also leaves FATAL and cuts a BACKOFF short)."""

    reason: str = "operator"


class StopNode(msgspec.Struct, frozen=True):
    """Stop the node gracefully; `done` (a pykka future) is set with the final NodeStatus."""

    reason: str = "operator"
    done: Any = None


class RestartNode(msgspec.Struct, frozen=True):
    """Stop, then start again."""

    reason: str = "operator"


class GetNodeStatus(msgspec.Struct, frozen=True):
    """Ask: answered with a NodeStatus."""


class WatchNode(msgspec.Struct, frozen=True):
    """Tell `watcher` (an ActorRef) a NodeStateChanged on every state change."""

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
