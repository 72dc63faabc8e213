"""Who holds the node for maintenance (SPEC §6, §7): the NodeActor's lease book.

One holder at a time: an upgrade saga, a restore, a backup's last pass. The holder asks for the
lease, stops and starts the node as its work needs, and gives the lease back; meanwhile the
node refuses start/stop from anyone else. A request that may wait is queued and granted when
the lease comes back. Pure bookkeeping: the NodeActor answers the futures it is handed back.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wemixvisor.messages.node import NodeLease


@dataclass
class LeaseBook:
    """The current lease, and the requests waiting for it (each with its reply handle)."""

    current: NodeLease | None = None
    waiting: collections.deque[tuple[NodeLease, Any]] = field(default_factory=collections.deque)

    def allows(self, holder: str | None) -> bool:
        """Whether a command from `holder` is carried out: unless someone else holds the node."""
        return self.current is None or self.current.holder == holder

    def acquire(self, holder: str, reason: str) -> NodeLease:
        """Grant the node to `holder` (again, if it holds it) or refuse it (`granted` False,
        naming who holds it)."""
        if self.allows(holder):
            self.current = NodeLease(True, holder, reason)
            return self.current
        assert self.current is not None
        return NodeLease(False, self.current.holder, self.current.reason)

    def enqueue(self, holder: str, reason: str, reply: Any) -> None:
        """Grant the node to `holder` once it is free; `reply` comes back from `release`."""
        self.waiting.append((NodeLease(True, holder, reason), reply))

    def request(
        self, holder: str, reason: str, *, wait: bool, reply: Callable[[], Any]
    ) -> NodeLease | None:
        """`acquire`; with `wait`, a request that cannot be granted now is queued instead (None)
        and `reply()` (what answers it later) is called at once to be kept with it."""
        answer = self.acquire(holder, reason)
        if answer.granted or not wait:
            return answer
        self.enqueue(holder, reason, reply())
        return None

    def release(self, holder: str) -> tuple[NodeLease, Any] | None:
        """`holder` gives the node back; the next waiting request is granted and returned
        with its reply handle (None when nobody waits, or `holder` did not hold the node)."""
        if self.current is None or self.current.holder != holder:
            return None
        self.current = None
        if not self.waiting:
            return None
        granted, reply = self.waiting.popleft()
        self.current = granted
        return granted, reply
