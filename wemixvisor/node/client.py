"""The NodeActor as a worker thread sees it (a backup job, the upgrade saga).

Workers may block, actors never do: these calls ask the NodeActor through the bus and wait,
bounded, riding out a restart of the actor by its supervisor. Every command carries the
worker's lease `holder` name, so that the node obeys it while it holds the lease.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import pykka

from wemixvisor.bus import Bus
from wemixvisor.messages.node import (
    AcquireNodeLease,
    GetNodeStatus,
    NodeLease,
    NodeStateChanged,
    NodeStatus,
    ReleaseNodeLease,
    StartNode,
    StopNode,
    UnwatchNode,
    WatchNode,
)

ANSWER_TIMEOUT = 30.0
"""How long to keep asking a NodeActor that is not there (being restarted)."""
_RETRY = 0.05


class NodeUnavailable(Exception):
    """No NodeActor answered within ANSWER_TIMEOUT."""


class NodeChanges:
    """A queue of the node's state changes (NodeStateChanged), fed by the NodeActor."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[NodeStateChanged] = queue.SimpleQueue()

    def tell(self, message: Any) -> None:
        """Called by the NodeActor (it tells watchers as it would tell an actor)."""
        if isinstance(message, NodeStateChanged):
            self.queue.put(message)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; True when there were any (all taken)."""
        try:
            self.queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return True


class NodeClient:
    """Asks and commands of one lease holder to the node, from a worker thread."""

    def __init__(self, bus: Bus, holder: str, grace: float) -> None:
        self._bus = bus
        self.holder = holder
        self._grace = grace

    def status(self) -> NodeStatus:
        """The node's status; NodeUnavailable when no NodeActor answers."""
        try:
            status: NodeStatus = self._bus.ask_retrying(
                "node", GetNodeStatus(), within=ANSWER_TIMEOUT
            )
        except (pykka.ActorDeadError, pykka.Timeout):
            raise NodeUnavailable("the node actor does not answer") from None
        return status

    def acquire(self, reason: str, *, wait: float = 0.0) -> NodeLease:
        """Take the lease on the node; with `wait` > 0, wait that long for a holder to give
        it back. The answer says whether it was granted (and who holds it if not)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            done: pykka.ThreadingFuture[NodeLease] = pykka.ThreadingFuture()
            request = AcquireNodeLease(self.holder, reason, wait=wait > 0, done=done)
            if self._bus.tell("node", request):
                try:
                    lease: NodeLease = done.get(timeout=max(wait, 5.0))
                    return lease
                except pykka.Timeout:
                    if wait > 0:
                        # Not granted in time: withdraw, so that a late grant is given back.
                        self.release()
                        status = self.status()
                        return NodeLease(False, status.lease or "?", "not released in time")
            if time.monotonic() >= deadline:
                raise NodeUnavailable("no node actor to lease the node from")
            time.sleep(_RETRY)

    def release(self) -> None:
        """Give the lease back (nothing happens if this holder does not hold it)."""
        self._tell(ReleaseNodeLease(self.holder))

    def start(self, reason: str) -> bool:
        """Ask the node to start; False when no NodeActor took the request."""
        return self._tell(StartNode(reason=reason, holder=self.holder))

    def stop(self, reason: str) -> NodeStatus:
        """Stop the node and wait until it is down (grace, then kill); its status then.

        A stop that takes longer than the grace plus ANSWER_TIMEOUT returns the status as it
        is; NodeUnavailable when no NodeActor answers at all.
        """
        deadline = time.monotonic() + self._grace + ANSWER_TIMEOUT
        while True:
            done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
            if self._bus.tell("node", StopNode(reason=reason, done=done, holder=self.holder)):
                try:
                    status: NodeStatus = done.get(timeout=max(deadline - time.monotonic(), 0.1))
                    return status
                except pykka.Timeout:
                    return self.status()
            if time.monotonic() >= deadline:
                return self.status()
            time.sleep(_RETRY)

    def watch(self) -> NodeChanges:
        """Have the node's state changes queued from now on (`unwatch` to stop)."""
        changes = NodeChanges()
        self._tell(WatchNode(watcher=changes))
        return changes

    def unwatch(self, changes: NodeChanges) -> None:
        """Stop queuing state changes for `changes`."""
        self._bus.tell("node", UnwatchNode(watcher=changes))

    def _tell(self, message: Any) -> bool:
        return self._bus.tell_retrying("node", message, within=ANSWER_TIMEOUT)
