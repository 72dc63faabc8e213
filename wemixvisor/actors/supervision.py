"""Starts the daemon's actors in order, restarts one that fails, stops them in reverse.

Failures arrive on a queue (from actor threads); the daemon's main loop calls `handle_failures`
so restarts happen on one thread, with a per-actor back-off that keeps a crash loop from
spinning.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
from loguru import logger

from wemixvisor.bus import Bus

ActorFactory = Callable[["Supervisor"], pykka.ActorRef[Any]]

_RESTART_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 60.0


@dataclass
class _Child:
    role: str
    factory: ActorFactory
    ref: pykka.ActorRef[Any] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


@dataclass
class Failure:
    """An actor stopped by an unhandled exception."""

    role: str
    error: str


@dataclass
class Supervisor:
    """One-for-one supervision of the daemon's actors."""

    bus: Bus
    on_restart: Callable[[str, str], None] = lambda role, error: None
    _children: list[_Child] = field(default_factory=list)
    _failures: queue.SimpleQueue[Failure] = field(default_factory=queue.SimpleQueue)
    _stopping: bool = False

    def add(self, role: str, factory: ActorFactory) -> None:
        """Declare an actor; started by `start_all` in declaration order."""
        self._children.append(_Child(role, factory))

    def failure_sink(self, role: str, exc: BaseException | None) -> None:
        """Called from a failing actor's thread; only enqueues."""
        self._failures.put(Failure(role, repr(exc)))

    def start_all(self) -> None:
        """Start every declared actor, in order."""
        for child in self._children:
            self._start(child)

    def _start(self, child: _Child) -> None:
        child.ref = child.factory(self)
        child.started_at = time.monotonic()
        child.restart_at = None
        self.bus.register(child.role, child.ref)
        logger.debug("started {} actor", child.role)

    def handle_failures(self) -> float:
        """Restart failed actors that are due; return seconds until the next one is due."""
        now = time.monotonic()
        while True:
            try:
                failure = self._failures.get_nowait()
            except queue.Empty:
                break
            self._schedule_restart(failure.role, failure.error, now)
        # Catch-all: an actor that died without reporting (e.g. failed in on_start).
        for child in self._children:
            if child.ref is not None and not child.ref.is_alive() and child.restart_at is None:
                self._schedule_restart(child.role, "stopped unexpectedly", now)
        next_due = _RESTART_BACKOFF_MAX
        for child in self._children:
            if child.restart_at is None or self._stopping:
                continue
            if child.restart_at <= now:
                logger.warning("restarting {} actor (restart #{})", child.role, child.restarts + 1)
                child.restarts += 1
                self._start(child)
            else:
                next_due = min(next_due, child.restart_at - now)
        return next_due

    def _schedule_restart(self, role: str, error: str, now: float) -> None:
        child = next((c for c in self._children if c.role == role), None)
        if child is None or child.restart_at is not None or self._stopping:
            return
        if now - child.started_at >= _HEALTHY_AFTER:
            child.failures = 0
        delay = 0.0 if child.failures == 0 else min(_RESTART_BACKOFF_MAX, 0.1 * 2**child.failures)
        child.failures += 1
        child.restart_at = now + delay
        self.bus.unregister(role)
        logger.error("{} actor failed ({}); restart in {:.1f}s", role, error, delay)
        self.on_restart(role, error)

    def restarts(self) -> dict[str, int]:
        """How often each actor was restarted in this run."""
        return {child.role: child.restarts for child in self._children}

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every actor in reverse start order."""
        self._stopping = True
        for child in reversed(self._children):
            if child.ref is None:
                continue
            try:
                child.ref.stop(block=True, timeout=timeout)
            except pykka.ActorDeadError:
                pass
            except pykka.Timeout:
                logger.error("{} actor did not stop within {}s", child.role, timeout)
            self.bus.unregister(child.role)
