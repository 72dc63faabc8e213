"""What the orchestrator does for the operator beside the saga (SPEC §19): rehearsals of a
plan's new binary before H, and the rollback of a completed upgrade.

`OperatorDuties` is a part of `OrchestratorActor` (a mixin: its handlers run on the actor's
thread, on the actor's queue); the work itself runs as jobs (`upgrade.rehearsal`,
`upgrade.rollback`) that report back with the messages below.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from wemixvisor.actors.workers import Workers
from wemixvisor.bus import Bus
from wemixvisor.config import Config
from wemixvisor.home import state
from wemixvisor.home.layout import Home, LayoutError, read_current
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import PrestageBackup
from wemixvisor.messages.node import StartNode
from wemixvisor.messages.plans import Refusal, RehearsePlan, RollbackPlan
from wemixvisor.plans import queue as queue_rules
from wemixvisor.plans.queue import Plan, PlanStatus, QueuedPlan, QueueState
from wemixvisor.upgrade import rehearsal
from wemixvisor.upgrade.journal import JournalError
from wemixvisor.upgrade.rollback import (
    Rollback,
    RollbackJournal,
    RollbackResult,
    load_rollback,
    new_journal,
    refuse_rollback,
)
from wemixvisor.upgrade.saga import UpgradeSaga

REHEARSAL_STOP_WAIT = 15.0
"""Seconds a stopping orchestrator waits for its rehearsal's process and copy to be removed."""


class RehearsalDone(msgspec.Struct, frozen=True):
    """A rehearsal job ended."""

    name: str
    outcome: Any  # rehearsal.RehearsalOutcome


class RollbackFinished(msgspec.Struct, frozen=True):
    """A rollback job ended."""

    result: Any  # RollbackResult


class OperatorDuties:
    """Rehearsals and rollbacks, as handlers of the orchestrator's messages."""

    # The orchestrator's own, used here.
    _config: Config
    _home: Home
    _bus: Bus
    _queue: QueueState
    _head: int | None
    _saga: UpgradeSaga | None
    workers: Workers

    if TYPE_CHECKING:  # the orchestrator's methods, which this mixin calls

        def _save_queue(self) -> None: ...

        def _finish_entry(self, entry: QueuedPlan, status: PlanStatus, detail: str) -> None: ...

        def _maybe_start(self) -> None: ...

    def _init_operator_duties(self) -> None:
        self._rehearsing: tuple[str, threading.Event] | None = None  # plan, its job's end
        self._rehearsal_waiters: dict[str, list[Any]] = {}  # plan -> futures of `finished`
        self._rehearsal_wanted: set[str] = set()  # waiting for their pre-staged copy
        self._rollback: Rollback | None = None
        self._rollback_waiters: list[Any] = []
        self._held_back: set[str] = set()  # due plans held back for their rehearsal (logged)

    def _wait_for_rehearsal_cleanup(self) -> None:
        """At the actor's stop: the rehearsal's job, told to stop, kills its process and
        removes its copy before the daemon goes (a killed daemon's go at the next start)."""
        if self._rehearsing is not None:
            self._rehearsing[1].wait(REHEARSAL_STOP_WAIT)

    def _held_back_for_rehearsal(self, entry: QueuedPlan) -> bool:
        """A due plan that requires a passing rehearsal and has none never starts."""
        unrehearsed = queue_rules.rehearsal_pending(entry)
        if unrehearsed is None:
            return False
        name = entry.plan.name
        if name not in self._held_back:
            self._held_back.add(name)
            logger.error("upgrade {} is due but does not start: {}", name, unrehearsed)
        if entry.rehearsal is None:
            self._want_rehearsal(entry.plan)
        return True

    # rehearsal (SPEC §19)

    def _remove_rehearsal_leftovers(self) -> None:
        backups_dir = self._config.backup.dir

        def clean(_stopping: threading.Event) -> None:
            removed = rehearsal.remove_leftovers(backups_dir)
            if removed:
                logger.warning("removed rehearsal left-overs: {}", ", ".join(removed))

        self.workers.run("rehearsal-leftovers", clean)

    def _busy(self, *, rehearsing: bool = True) -> str | None:
        """What runs that a rehearsal or a rollback must not run beside, if anything. A
        rollback does not wait for a rehearsal (`rehearsing=False`): they share nothing."""
        if self._saga is not None:
            return f"upgrade {self._saga.plan.name}"
        if self._rollback is not None:
            return f"the rollback of {self._rollback.journal.name}"
        if rehearsing and self._rehearsing is not None:
            return f"the rehearsal of {self._rehearsing[0]}"
        return None

    def _rehearsal_refusal(self, name: str) -> Refusal | None:
        return rehearsal.refuse_rehearsal(
            queue_rules.get(self._queue, name),
            name,
            config=self._config,
            busy=self._busy(),
            installed=self._home.upgrade_bin(name).is_file(),
        )

    def _on_rehearse(self, message: RehearsePlan) -> None:
        refusal = self._rehearsal_refusal(message.name)
        if message.done is not None:
            message.done.set(refusal)
        if refusal is not None:
            return
        if message.finished is not None:
            self._rehearsal_waiters.setdefault(message.name, []).append(message.finished)
        self._start_rehearsal(message.name)

    def _want_rehearsal(self, plan: Plan) -> None:
        """Rehearse `plan` once its pre-staged copy is there (asked for, unless it is)."""
        if plan.name in self._rehearsal_wanted or self._config.backup.skip:
            return
        self._rehearsal_wanted.add(plan.name)
        self._bus.tell("backup", PrestageBackup(plan.name, self._head))

    def _on_staged(self, name: str) -> None:
        entry = queue_rules.get(self._queue, name)
        if entry is None or entry.status is not PlanStatus.PENDING:
            return
        wanted = name in self._rehearsal_wanted or (entry.plan.rehearse and entry.rehearsal is None)
        if wanted and self._rehearsal_refusal(name) is None:
            self._rehearsal_wanted.discard(name)
            self._start_rehearsal(name)

    def _start_rehearsal(self, name: str) -> None:
        ended = threading.Event()
        self._rehearsing = (name, ended)
        home, config, publish = self._home, self._config, self._bus.publish

        def started(port: int, expected: int | None) -> None:
            logger.info("rehearsing {} on port {}", name, port)
            publish(ev.UpgradeRehearsalStarted(name=name, port=port, expected_head=expected))

        def job(stopping: threading.Event) -> RehearsalDone:
            try:
                outcome = rehearsal.rehearse(
                    home, config, name, stopping=stopping, on_started=started
                )
            finally:
                ended.set()
            return RehearsalDone(name, outcome)

        self.workers.run(f"rehearsal-{name}", job)

    def _on_rehearsed(self, name: str, outcome: rehearsal.RehearsalOutcome) -> None:
        self._rehearsing = None
        if outcome.needs_staging:
            logger.info("rehearsal of {} waits for its pre-staged backup", name)
            self._rehearsal_wanted.discard(name)
            entry = queue_rules.get(self._queue, name)
            if entry is not None:
                self._want_rehearsal(entry.plan)
            return
        event = outcome.event(name)
        log = logger.info if outcome.ok else logger.error
        log("rehearsal of {}: {}", name, "passed" if outcome.ok else outcome.reason)
        # Recorded with the plan before it is announced: whoever acts on the event finds it.
        entry = queue_rules.get(self._queue, name)
        pending = entry is not None and entry.status is PlanStatus.PENDING
        if entry is not None and pending:
            entry.rehearsal = outcome.record(time.time())
            self._save_queue()
        self._bus.publish(event)
        for waiter in self._rehearsal_waiters.pop(name, []):
            waiter.set(event)
        if entry is None or not pending:
            return
        self._held_back.discard(name)
        if not outcome.ok and entry.plan.rehearse:
            problems = [f"rehearsal failed: {outcome.reason}"]
            self._bus.publish(
                ev.PlanPreflightFailed(name=name, height=entry.plan.height, problems=problems)
            )
        self._maybe_start()

    # the operator's rollback (SPEC §19)

    def _on_rollback(self, message: RollbackPlan) -> None:
        entry = queue_rules.get(self._queue, message.name)
        try:
            current: str | None = read_current(self._home).target
        except LayoutError:
            current = None
        refusal = refuse_rollback(
            entry,
            message.name,
            restore=message.restore,
            current=current,
            busy=self._busy(rehearsing=False),
        )
        if message.done is not None:
            message.done.set(refusal)
        if refusal is not None or entry is None:
            return
        journal = new_journal(entry, restore=message.restore, at=time.time())
        if message.finished is not None:
            self._rollback_waiters.append(message.finished)
        self._start_rollback(journal, resume=False)

    def _resume_rollback(self) -> None:
        path = state.rollback_file(self._home)
        try:
            journal = load_rollback(path)
        except JournalError as exc:
            aside = state.move_aside(path)
            logger.error("{}; moved to {}; the node runs on `current` as it is", exc, aside)
            self._bus.tell("node", StartNode(reason="unreadable rollback journal"))
            return
        if journal is not None:
            self._start_rollback(journal, resume=True)

    def _start_rollback(self, journal: RollbackJournal, *, resume: bool) -> None:
        run = Rollback(
            journal=journal,
            home=self._home,
            config=self._config,
            bus=self._bus,
            path=state.rollback_file(self._home),
        )
        self._rollback = run
        self.workers.run(
            f"rollback-{journal.name}",
            lambda _stopping: RollbackFinished(run.run(resume=resume)),
        )

    def _on_rollback_finished(self, result: RollbackResult) -> None:
        self._rollback = None
        entry = queue_rules.get(self._queue, result.name)
        if entry is not None and result.switched:
            self._finish_entry(entry, PlanStatus.ROLLED_BACK, result.detail)
        # The queue says what happened before the journal goes: a kill in between resumes it.
        state.clear_journal(state.rollback_file(self._home))
        self._bus.publish(result.event)
        for waiter in self._rollback_waiters:
            waiter.set(result)
        self._rollback_waiters.clear()
        self._maybe_start()
