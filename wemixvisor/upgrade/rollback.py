"""The operator's way back after a completed upgrade (SPEC §19): `upgrade rollback <name>`.

Stop the node, point `current` back at the binary the upgrade replaced, optionally restore the
upgrade's backup, start. Like the saga it is journaled (`state/rollback.json`, written durably
before each step) and holds the node's lease throughout, so a daemon killed at any step resumes
it at its next start. A failure before the node started again on the old binary undoes what was
done: the node runs as before the rollback. `refuse_rollback` is the pure decision whether a
rollback may start; `Rollback.run` blocks (an orchestrator job).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pykka
from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.config import Config
from wemixvisor.home import state
from wemixvisor.home.layout import Home, switch_current
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import RestoreBackup
from wemixvisor.messages.node import NodeState
from wemixvisor.messages.plans import Refusal
from wemixvisor.node.client import NodeClient, NodeUnavailable
from wemixvisor.plans.queue import PlanStatus, QueuedPlan
from wemixvisor.upgrade.steps import BACKUP_TIMEOUT, STATUS_RECHECK

__all__ = [
    "RollbackJournal",
    "RollbackResult",
    "RollbackStep",
    "load_rollback",
    "new_journal",
    "refuse_rollback",
]

_UP_ALLOWANCE = 60.0  # seconds beyond STARTSECS the old binary may take to come up


class RollbackStep(enum.StrEnum):
    """The rollback's steps, in order."""

    STOPPING = "stopping"
    SWITCH = "switch"
    RESTORE = "restore"
    STARTING = "starting"
    COMPLETED = "completed"


_ORDER = [RollbackStep.STOPPING, RollbackStep.SWITCH, RollbackStep.RESTORE, RollbackStep.STARTING]


class RollbackJournal(msgspec.Struct, kw_only=True):
    """state/rollback.json: the rollback in progress."""

    name: str
    height: int
    upgraded_target: str  # what `current` pointed at: upgrades/<name>
    target: str  # what it points at again: the binary before the upgrade
    restore: bool
    backup: str | None
    step: RollbackStep
    started_at: float
    restored: bool = False
    resumed: int = 0

    @property
    def holder(self) -> str:
        """Who holds the node's lease while this rollback runs."""
        return f"rollback {self.name}"


@dataclass(frozen=True)
class RollbackResult:
    """What the orchestrator records: whether `current` points back (`switched`), and the
    event it publishes once the queue says so (`upgrade.rollback_completed|failed`)."""

    name: str
    ok: bool
    switched: bool
    detail: str
    event: ev.Event


def load_rollback(path: Path) -> RollbackJournal | None:
    """The rollback in progress, None when there is none; JournalError when unreadable."""
    return state.load_journal(path, RollbackJournal)


def new_journal(entry: QueuedPlan, *, restore: bool, at: float) -> RollbackJournal:
    """The journal of a rollback of completed upgrade `entry` (refuse_rollback let it start)."""
    assert entry.from_target is not None
    return RollbackJournal(
        name=entry.plan.name,
        height=entry.plan.height,
        upgraded_target=f"upgrades/{entry.plan.name}",
        target=entry.from_target,
        restore=restore,
        backup=entry.backup if restore else None,
        step=RollbackStep.STOPPING,
        started_at=at,
    )


def refuse_rollback(
    entry: QueuedPlan | None,
    name: str,
    *,
    restore: bool,
    current: str | None,
    busy: str | None,
) -> Refusal | None:
    """Why rolling back upgrade `name` is refused now (None: it may start).

    `current` is what `current` points at (None: unreadable); `busy` names what is running (an
    upgrade, a rollback), if anything.
    """
    if entry is None:
        return Refusal("not_found", f"no plan named {name!r}")
    status = entry.status
    if status is PlanStatus.PENDING:
        return Refusal("conflict", f"plan {name!r} is pending: nothing to roll back (cancel it)")
    if status is PlanStatus.RUNNING or busy is not None:
        return Refusal("busy", f"{busy or f'upgrade {name}'} is running; try again afterwards")
    if status is not PlanStatus.COMPLETED:
        return Refusal(
            "conflict", f"plan {name!r} is {status.value}: only a completed upgrade rolls back"
        )
    if entry.from_target is None:
        return Refusal("conflict", f"the queue does not record which binary ran before {name!r}")
    upgraded = f"upgrades/{name}"
    if current != upgraded:
        return Refusal(
            "conflict",
            f"`current` points at {current or 'nothing readable'}, not {upgraded}: "
            f"{name!r} is not the binary running",
        )
    if restore and entry.backup is None:
        return Refusal(
            "bad_request",
            f"upgrade {name!r} made no backup (backups were skipped): roll back without --restore",
        )
    return None


class Rollback:
    """Runs one journaled rollback; `run` blocks (a job) and returns the result."""

    def __init__(
        self, *, journal: RollbackJournal, home: Home, config: Config, bus: Bus, path: Path
    ) -> None:
        self.journal = journal
        self.home = home
        self.config = config
        self.bus = bus
        self.path = path
        self.node = NodeClient(bus, journal.holder, config.node.shutdown_grace)
        self._began = time.monotonic()

    def run(self, *, resume: bool) -> RollbackResult:
        """Run (or resume) the rollback to its end; never raises."""
        journal = self.journal
        try:
            if journal.step is RollbackStep.COMPLETED:
                return self._completed()
            lease = self.node.acquire(f"rollback of {journal.name}", wait=BACKUP_TIMEOUT)
            if not lease.granted:
                return self._failed(
                    RollbackStep.STOPPING, f"the node is held by {lease.holder} ({lease.reason})"
                )
            if resume:
                journal.resumed += 1
                logger.warning("resuming the rollback of {} at {}", journal.name, journal.step)
            # Each step is safe to repeat: a resumed rollback re-enters at the step it was in.
            start = journal.step if resume else RollbackStep.STOPPING
            self.bus.publish(
                ev.UpgradeRollbackStarted(
                    name=journal.name,
                    height=journal.height,
                    target=journal.target,
                    restore=journal.restore,
                    backup=journal.backup,
                    resumed=resume,
                )
            )
            for step in _ORDER[_ORDER.index(start) :]:
                failure = self._step(step, resume=resume and step is start)
                if failure is not None:
                    return self._failed(step, failure)
            journal.step = RollbackStep.COMPLETED
            state.save_journal(self.path, journal)
            return self._completed()
        except NodeUnavailable as exc:
            return self._failed(journal.step, str(exc))
        except Exception as exc:  # noqa: BLE001 - a rollback ends reported, whatever happened
            logger.exception("rollback of {} failed unexpectedly", journal.name)
            return self._failed(journal.step, f"internal error: {exc!r}")
        finally:
            self.node.release()

    def _step(self, step: RollbackStep, *, resume: bool) -> str | None:
        journal = self.journal
        skipped = step is RollbackStep.RESTORE and not journal.restore
        journal.step = step
        state.save_journal(self.path, journal)
        self.bus.publish(
            ev.UpgradeRollbackStep(
                name=journal.name, step=step.value, detail="skipped" if skipped else ""
            )
        )
        logger.info("rollback of {}: {}{}", journal.name, step.value, " (skipped)" * skipped)
        match step:
            case RollbackStep.STOPPING:
                status = self.node.stop(f"rollback of {journal.name}")
                if status.state is not NodeState.STOPPED:
                    return f"the node did not stop (state {status.state})"
            case RollbackStep.SWITCH:
                if resume:
                    # Killed before the switch was made, the node may have been started again
                    # by nobody (it is held), but a stop of a stopped node costs nothing.
                    self.node.stop(f"rollback of {journal.name}")
                switch_current(self.home, journal.target)
            case RollbackStep.RESTORE if not skipped and not journal.restored:
                if resume:
                    self.node.stop(f"rollback of {journal.name}")
                reason = self._restore()
                if reason is not None:
                    return reason
                journal.restored = True
                state.save_journal(self.path, journal)
            case RollbackStep.STARTING:
                return self._start()
        return None

    def _restore(self) -> str | None:
        journal = self.journal
        assert journal.backup is not None
        accepted: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        finished: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        # As for the saga's rollback: this rollback holds the node; the backup actor only
        # copies.
        request = RestoreBackup(
            journal.backup, done=accepted, finished=finished, upgrade=journal.name
        )
        if not self.bus.tell_retrying("backup", request, within=30.0):
            return "no backup actor is running to restore the backup"
        try:
            aside: str = finished.get(timeout=BACKUP_TIMEOUT)
        except pykka.Timeout:
            return f"restoring {journal.backup} did not finish within {BACKUP_TIMEOUT:g}s"
        except backups.BackupError as exc:
            return f"restoring {journal.backup} failed: {exc}"
        logger.warning(
            "rollback of {}: restored {}; the data it replaced is in {}",
            journal.name,
            journal.backup,
            aside,
        )
        return None

    def _start(self) -> str | None:
        """Start the old binary and wait until it runs (RPC up or STARTSECS alive)."""
        journal = self.journal
        changes = self.node.watch()
        try:
            status = self.node.status()
            if status.state not in (NodeState.STARTING, NodeState.RUNNING):
                self.node.start(f"rollback of {journal.name}")
            deadline = time.monotonic() + self.config.node.startsecs + _UP_ALLOWANCE
            while True:
                status = self.node.status()
                if status.state is NodeState.RUNNING:
                    return None
                if status.state in (NodeState.FATAL, NodeState.EXITED, NodeState.BACKOFF):
                    return f"the old binary did not start: {status.last_error or status.state}"
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"the old binary is still {status.state.value}"
                changes.wait(min(left, STATUS_RECHECK))
        finally:
            self.node.unwatch(changes)

    def _completed(self) -> RollbackResult:
        journal = self.journal
        restored = journal.backup if journal.restored else None
        event = ev.UpgradeRollbackCompleted(
            name=journal.name,
            height=journal.height,
            target=journal.target,
            restored_backup=restored,
            seconds=time.monotonic() - self._began,
        )
        detail = f"rolled back to {journal.target}"
        if restored is not None:
            detail += f", backup {restored} restored"
        logger.warning("upgrade {} {}", journal.name, detail)
        return RollbackResult(journal.name, ok=True, switched=True, detail=detail, event=event)

    def _failed(self, step: RollbackStep, reason: str) -> RollbackResult:
        """Report the failure. Before the old binary was started, undo: `current` back at the
        upgraded binary (the data restored only after the switch stays as it was: a failed
        restore never touches it) and the node started."""
        journal = self.journal
        switched = step is RollbackStep.STARTING
        target: str | None = journal.target if switched else journal.upgraded_target
        logger.error("rollback of {} failed at {}: {}", journal.name, step.value, reason)
        if not switched:
            try:
                switch_current(self.home, journal.upgraded_target)
                self.node.start(f"rollback of {journal.name} undone")
            except Exception as exc:  # noqa: BLE001 - reported; the operator takes it from here
                logger.exception("undoing the rollback of {} failed", journal.name)
                reason = f"{reason}; undoing it failed too: {exc!r}"
                target = None
        event = ev.UpgradeRollbackFailed(
            name=journal.name, step=step.value, reason=reason, target=target
        )
        return RollbackResult(
            journal.name,
            ok=False,
            switched=switched,
            detail=f"rollback failed at {step}: {reason}",
            event=event,
        )
