"""What scenario tests share: a message inbox with deadline waits, a recording stand-in actor,
and polling a condition under a deadline.

Waiting always has a deadline and ends as soon as the awaited thing happened; a test that must
show something did NOT happen waits for a later event that proves the moment passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

T = TypeVar("T")


class Inbox:
    """Messages a stand-in actor received, in order; waits for one under a deadline."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def put(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        """Every message of `kind` received so far."""
        with self._changed:
            return [item for item in self.items if isinstance(item, kind)]

    def wait_for(
        self, kind: type[T], where: Callable[[T], bool] = lambda _: True, timeout: float = 10.0
    ) -> T:
        """The first message of `kind` for which `where` holds, waiting up to `timeout`."""
        return self.wait_count(kind, 1, where=where, timeout=timeout)[0]

    def wait_count(
        self,
        kind: type[T],
        count: int,
        where: Callable[[T], bool] = lambda _: True,
        timeout: float = 10.0,
    ) -> list[T]:
        """Wait until at least `count` matching messages arrived; returns all of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self.items if isinstance(item, kind) and where(item)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{count} x {kind.__name__} not received within {timeout}s; "
                        f"got {self.items[-10:]!r}"
                    )
                self._changed.wait(left)


class Recorder(pykka.ThreadingActor):
    """Stands where another actor (the events publisher, the orchestrator) would: puts every
    message it is told into its inbox, and answers asks with None."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> Any:
        self.inbox.put(message)
        return None


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` every 20 ms until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s")
        time.sleep(0.02)
