"""What every daemon actor shares: failure reporting to its supervisor, and timers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

FailureSink = Callable[[str, BaseException | None], None]


class Timers:
    """One-shot timers that tell the owning actor a message when they fire.

    Timers run on their own threads (pykka has none); a fired timer only enqueues a message,
    so the actor still handles everything on its own thread.
    """

    def __init__(self, owner: pykka.ActorRef[Any]) -> None:
        self._owner = owner
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()

    def schedule(self, name: str, delay: float, message: Any) -> None:
        """(Re)arm timer `name`; an earlier timer of that name is cancelled."""

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._owner.tell(message)

        timer = threading.Timer(max(delay, 0.0), fire)
        timer.name = f"timer-{name}"
        timer.daemon = True
        with self._lock:
            previous = self._timers.pop(name, None)
            self._timers[name] = timer
        if previous is not None:
            previous.cancel()
        timer.start()

    def cancel(self, name: str) -> None:
        """Disarm timer `name` if armed."""
        with self._lock:
            timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        """Disarm every timer (actor stopping)."""
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()


class SupervisedActor(pykka.ThreadingActor):
    """A ThreadingActor whose crashes are reported to its supervisor, which restarts it."""

    role = "actor"

    def __init__(self, failure_sink: FailureSink | None = None) -> None:
        super().__init__()
        self._failure_sink = failure_sink
        self.timers = Timers(self.actor_ref)

    def on_start(self) -> None:
        # pykka stops an actor whose on_start raises without calling on_failure: report it here.
        try:
            self.setup()
        except Exception as exc:
            self._report_failure(exc)
            raise

    def setup(self) -> None:
        """Runs on the actor's thread before the first message (override)."""

    def on_stop(self) -> None:
        self.timers.cancel_all()
        self.teardown()

    def teardown(self) -> None:
        """Runs on the actor's thread when it stops normally (override)."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.timers.cancel_all()
        self._report_failure(exception_value)

    def _report_failure(self, exc: BaseException | None) -> None:
        logger.error("{} actor failed: {!r}", self.role, exc)
        if self._failure_sink is not None:
            self._failure_sink(self.role, exc)
