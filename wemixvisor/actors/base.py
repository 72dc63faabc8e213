"""What every daemon actor shares: failure reporting to its supervisor, timers, workers, and
answers that come later than the message they answer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

from wemixvisor.actors.workers import Workers, tell_if_alive

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
        timer = threading.Timer(max(delay, 0.0), tell_if_alive, (self._owner, message))
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


class _Inbox(queue.Queue[Any]):
    """pykka's threading inbox, remembering the envelope being handled (see `reply_later`)."""

    current: Any = None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        envelope = super().get(block, timeout)
        self.current = envelope
        return envelope


class SupervisedActor(pykka.ThreadingActor):
    """A ThreadingActor whose crashes are reported to its supervisor, which restarts it.

    Subclasses override `setup` (first thing on the actor's thread), `teardown` (a normal
    stop) and `release` (free threads and sockets: runs whether the actor stopped or failed).
    """

    role = "actor"

    def __init__(self, failure_sink: FailureSink | None = None) -> None:
        super().__init__()
        self._failure_sink = failure_sink
        self.timers = Timers(self.actor_ref)
        self.workers = Workers(self.actor_ref)

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _Inbox()

    def reply_later(self) -> pykka.Future[Any] | None:
        """Take over the answer to the `ask` being handled: pykka no longer answers it with
        `on_receive`'s return value; whoever holds the returned future answers it (typically
        a job). None when the message was told, not asked."""
        envelope = self.actor_inbox.current if isinstance(self.actor_inbox, _Inbox) else None
        if envelope is None:
            return None
        future: pykka.Future[Any] | None = envelope.reply_to
        envelope.reply_to = None
        return future

    def on_start(self) -> None:
        # pykka stops an actor whose on_start raises without calling on_failure: report it here.
        try:
            self.setup()
        except Exception as exc:
            # `setup` frees what it took before raising; the workers it started end here.
            self.timers.cancel_all()
            self.workers.stop_all()
            self._report_failure(exc)
            raise

    def setup(self) -> None:
        """Runs on the actor's thread before the first message (override)."""

    def on_stop(self) -> None:
        self._release_all()
        self.teardown()

    def teardown(self) -> None:
        """Runs on the actor's thread when it stops normally, after `release` (override)."""

    def release(self) -> None:
        """Free what this actor holds besides its timers and workers (override): sockets,
        threads of its own. Runs when it stops and when it fails (pykka skips on_stop then),
        so that the actor the supervisor starts next finds them free."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release_all()
        self._report_failure(exception_value)

    def _release_all(self) -> None:
        self.timers.cancel_all()
        self.workers.stop_all()
        self.release()

    def _report_failure(self, exc: BaseException | None) -> None:
        logger.error("{} actor failed: {!r}", self.role, exc)
        if self._failure_sink is not None:
            self._failure_sink(self.role, exc)
