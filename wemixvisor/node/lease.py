"""Who holds the node for maintenance (SPEC §6, §7): the NodeActor's lease book.

One holder at a time: an upgrade saga, a restore, a backup's last pass. The holder asks for the
lease, stops and starts the node as its work needs, and gives the lease back; meanwhile the
node refuses start/stop from anyone else. A request that may wait is queued and granted when
the lease comes back. No I/O: replies are futures, answered when the lease is granted.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from wemixvisor.messages.node import NodeLease


@dataclass
class LeaseBook:
    """The current lease, and the requests waiting for it (each with its reply future)."""

    current: NodeLease | None = None
    waiting: collections.deque[tuple[NodeLease, Any]] = field(default_factory=collections.deque)

    def allows(self, holder: str | None) -> bool:
        """Whether a command from `holder` is carried out: unless someone else holds the node."""
        return self.current is None or self.current.holder == holder

    def refuses(self, holder: str | None, verb: str) -> bool:
        """`not allows(holder)`, saying so in the log (the operator's `busy`)."""
        if self.current is None or self.current.holder == holder:
            return False
        logger.warning(
            "node {} refused: busy ({} holds the node: {})",
            verb,
            self.current.holder,
            self.current.reason,
        )
        return True

    def acquire(self, holder: str, reason: str) -> NodeLease:
        """Grant the node to `holder` (again, if it holds it) or refuse it (`granted` False,
        naming who holds it)."""
        if self.allows(holder):
            if self.current is None:
                logger.info("node leased to {} ({})", holder, reason)
            self.current = NodeLease(True, holder, reason)
            return self.current
        assert self.current is not None
        return NodeLease(False, self.current.holder, self.current.reason)

    def request(
        self, holder: str, reason: str, *, wait: bool, reply: Callable[[], Any]
    ) -> NodeLease | None:
        """`acquire`; with `wait`, a request that cannot be granted now is queued instead (None)
        with the future `reply()` returns, answered once the lease comes back."""
        answer = self.acquire(holder, reason)
        if answer.granted or not wait:
            return answer
        logger.info("{} waits for the node ({} holds it)", holder, answer.holder)
        self.waiting.append((NodeLease(True, holder, reason), reply()))
        return None

    def release(self, holder: str) -> NodeLease | None:
        """`holder` gives the node back; the next waiting request is granted (its future
        answered) and returned. None when nobody waits, or `holder` did not hold the node."""
        if self.current is None or self.current.holder != holder:
            return None
        logger.info("node lease of {} released", holder)
        self.current = None
        if not self.waiting:
            return None
        granted, reply = self.waiting.popleft()
        self.acquire(granted.holder, granted.reason)
        if reply is not None:
            reply.set(granted)
        return granted
