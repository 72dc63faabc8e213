"""Work done for an actor off its mailbox, reported back to it as messages.

An actor never blocks its mailbox on slow I/O (SPEC §1). What is slow runs on a worker thread:

- a job (`Workers.run`): run once, tell the actor what it returned;
- a poller (`Workers.poll`): call something every interval, tell the actor each result; its
  interval can change (a reloaded configuration) and it stops with its actor.

Both are one `Worker`: a daemon thread that tells its owner a message if the owner is still
alive. A dead owner is not an error: the actor that replaced it runs workers of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

_MIN_INTERVAL = 0.01  # an absurdly small interval must not turn a poller into a busy loop


def tell_if_alive(owner: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell `owner` `message`; False when the actor is gone."""
    try:
        owner.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


class Worker:
    """One thread working for one actor; `stopping` is set when the actor no longer wants it."""

    def __init__(self, owner: pykka.ActorRef[Any], name: str) -> None:
        self.owner = owner
        self.name = name
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._on_end: Callable[[Worker], None] = lambda worker: None

    def tell(self, message: Any) -> bool:
        """Tell the owner `message` unless this worker was stopped or the owner is gone."""
        if self.stopping.is_set():
            return False
        return tell_if_alive(self.owner, message)

    def stop(self) -> None:
        """Ask the worker to end; it ends at its next check (a call in progress finishes)."""
        self.stopping.set()

    def _start(self, on_end: Callable[[Worker], None]) -> None:
        self._on_end = on_end
        self._thread.start()

    def _main(self) -> None:
        try:
            self.work()
        except Exception:  # noqa: BLE001  (a worker's bug is logged; the actor lives on)
            logger.exception("worker {} failed", self.name)
        finally:
            self._on_end(self)

    def work(self) -> None:
        """The thread's body (subclasses)."""


class Job(Worker):
    """Runs `job(stopping)` once and tells the owner what it returned (nothing for None).

    The result is told even when the job was asked to stop: a job that was cancelled says so
    in its result, and a job whose result must not arrive returns None. `undelivered` gets a
    result the owner is no longer there to take (e.g. to answer those waiting for it).
    """

    def __init__(
        self,
        owner: pykka.ActorRef[Any],
        name: str,
        job: Callable[[threading.Event], Any],
        undelivered: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(owner, name)
        self._job = job
        self._undelivered = undelivered

    def work(self) -> None:
        result = self._job(self.stopping)
        if result is None or tell_if_alive(self.owner, result):
            return
        if self._undelivered is not None:
            self._undelivered(result)


class Poller(Worker):
    """Calls `call()` every interval and tells the owner each result (nothing for None).

    `paced`: the next call waits until the actor said it handled the previous result
    (`handled`), so that a slow actor never has results piling up in its mailbox.
    `interval_after`, when given, picks the wait after each result (e.g. retry sooner after
    an error). `first_after` delays the first call (0: at once).
    """

    def __init__(
        self,
        owner: pykka.ActorRef[Any],
        name: str,
        call: Callable[[], Any],
        interval: float,
        *,
        paced: bool = False,
        interval_after: Callable[[Any], float] | None = None,
        first_after: float = 0.0,
    ) -> None:
        super().__init__(owner, name)
        self._call = call
        self._interval = interval
        self._interval_after = interval_after
        self._first_after = first_after
        self._paced = paced
        self._idle = threading.Event()
        self._idle.set()
        self._wake = threading.Event()
        self._poked = False

    @property
    def interval(self) -> float:
        """Seconds between two calls."""
        return self._interval

    def set_interval(self, interval: float) -> None:
        """Use `interval` from the next wait on (a wait in progress is cut short)."""
        self._interval = interval
        self._wake.set()

    def handled(self) -> None:
        """The actor handled the last result: a paced poller may call again."""
        self._idle.set()

    def poke(self) -> None:
        """Call again now rather than at the end of the wait in progress (any thread)."""
        self._poked = True
        self._wake.set()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def _wait(self, seconds: float) -> bool:
        """Wait `seconds` (re-reading the interval when it changes); False once stopping."""
        while not self.stopping.is_set():
            self._wake.clear()
            if not self._wake.wait(max(seconds, _MIN_INTERVAL)) or self._poked:
                self._poked = False
                return not self.stopping.is_set()
            seconds = self._interval
        return False

    def work(self) -> None:
        if self._first_after > 0 and not self._wait(self._first_after):
            return
        while not self.stopping.is_set():
            wait = self._interval
            if self._idle.is_set():
                if self._paced:
                    self._idle.clear()
                result = self._call()
                if result is None:
                    if self._paced:
                        self._idle.set()  # nothing was told: nothing to wait for
                elif not self.tell(result):
                    return
                if self._interval_after is not None:
                    wait = self._interval_after(result)
            if not self._wait(wait):
                return


class Workers:
    """The workers of one actor; `stop_all` when the actor stops or fails."""

    def __init__(self, owner: pykka.ActorRef[Any]) -> None:
        self._owner = owner
        self._running: set[Worker] = set()
        self._lock = threading.Lock()

    def run(
        self,
        name: str,
        job: Callable[[threading.Event], Any],
        *,
        undelivered: Callable[[Any], None] | None = None,
    ) -> Job:
        """Run `job(stopping)` once on a worker thread; its result (unless None) is told."""
        worker = Job(self._owner, name, job, undelivered)
        self._launch(worker)
        return worker

    def poll(
        self,
        name: str,
        call: Callable[[], Any],
        interval: float,
        *,
        paced: bool = False,
        interval_after: Callable[[Any], float] | None = None,
        first_after: float = 0.0,
    ) -> Poller:
        """Call `call()` every `interval` on a worker thread; each result (unless None) is told."""
        worker = Poller(
            self._owner,
            name,
            call,
            interval,
            paced=paced,
            interval_after=interval_after,
            first_after=first_after,
        )
        self._launch(worker)
        return worker

    def stop_all(self) -> None:
        """Ask every worker to end (the actor is stopping or failed)."""
        with self._lock:
            workers = list(self._running)
        for worker in workers:
            worker.stop()

    def _launch(self, worker: Worker) -> None:
        with self._lock:
            self._running.add(worker)
        worker._start(self._ended)

    def _ended(self, worker: Worker) -> None:
        with self._lock:
            self._running.discard(worker)
