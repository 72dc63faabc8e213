"""Long operations started through the control socket, followed until they end.

A verb that starts something long (the node's start, stop or restart; a prune that outlasts its
request) answers at once with an operation id and registers a check here. One helper thread
runs the checks every `interval` until each operation is done or its time is up, and publishes
`control.operation_completed` for it. Checks only ask actors with short timeouts.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from wemixvisor.bus import Bus
from wemixvisor.messages.control import OperationCompleted

__all__ = ["Check", "Operations", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """How an operation ended."""

    ok: bool
    detail: str


Check = Callable[[], Outcome | None]
"""Returns the outcome once the operation is over, None while it is still going on."""


@dataclass
class _Operation:
    id: str
    verb: str
    check: Check
    deadline: float


class Operations:
    """The operations in progress of one control server."""

    def __init__(self, bus: Bus, interval: float = 0.05) -> None:
        self._bus = bus
        self._interval = interval
        self._run = uuid.uuid4().hex[:8]
        self._numbers = itertools.count(1)
        self._pending: list[_Operation] = []
        self._lock = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="control-operations", daemon=True)
        self._thread.start()

    def begin(self, verb: str, check: Check, timeout: float) -> str:
        """Follow a new operation; its id (unique within this daemon's life)."""
        operation = f"{verb}-{self._run}-{next(self._numbers)}"
        with self._lock:
            self._pending.append(_Operation(operation, verb, check, time.monotonic() + timeout))
            self._lock.notify()
        return operation

    def stop(self) -> None:
        """Stop following (operations in progress are not reported)."""
        with self._lock:
            self._stopped = True
            self._lock.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopped:
                    self._lock.wait()
                if self._stopped:
                    return
                pending = list(self._pending)
            finished = [op for op in pending if self._settle(op)]
            with self._lock:
                self._pending = [op for op in self._pending if op not in finished]
                if self._pending and not self._stopped:
                    self._lock.wait(self._interval)

    def _settle(self, operation: _Operation) -> bool:
        try:
            outcome = operation.check()
        except Exception as exc:  # noqa: BLE001 - an operation must end reported, whatever broke
            logger.exception("checking operation {} failed", operation.id)
            outcome = Outcome(False, f"cannot follow the operation: {exc}")
        if outcome is None and time.monotonic() >= operation.deadline:
            outcome = Outcome(False, "did not finish in time")
        if outcome is None:
            return False
        log = logger.info if outcome.ok else logger.warning
        log("operation {} ({}) ended: {}", operation.id, operation.verb, outcome.detail)
        self._bus.publish(
            OperationCompleted(
                operation=operation.id, verb=operation.verb, ok=outcome.ok, detail=outcome.detail
            )
        )
        return True
