"""One upgrade as a journaled saga (SPEC §5), run as a job of the orchestrator.

Before each step the journal (state/journal.json) is rewritten durably, so a daemon killed at
any moment resumes the same upgrade on its next start: every step is idempotent, and a resume
re-enters at a step that is safe to repeat. The saga holds the node's lease from its start to
its end (a resumed saga takes it again): meanwhile nobody else stops or starts the node. The
steps themselves are in `wemixvisor.upgrade.steps`; they may block, the actors never do.

A new saga starts ARMED a few blocks before its switch: it does at once everything before the
stop that does not depend on the moment (the node's lease, the quick preflight, the validator
record, the node's arguments) and then waits for `go` (the head reached H-1, or a window plan's
slot said go) or `disarm`. After `go` only the durable journal write and the stop stand between
the head the orchestrator saw and the node's stop; before it nothing was written and the node
runs untouched, so a disarmed (or killed) armed saga leaves nothing behind.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from wemixvisor.bus import Bus
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.chain.wbft import NotWbft, WbftClient
from wemixvisor.config import Config
from wemixvisor.home.layout import Home, switch_current
from wemixvisor.messages import events as ev
from wemixvisor.messages.node import NodeState
from wemixvisor.node.client import NodeClient, NodeUnavailable
from wemixvisor.node.process import detect_version
from wemixvisor.plans.queue import Plan, overshoot
from wemixvisor.upgrade import steps
from wemixvisor.upgrade.journal import Journal, Step, clear_journal, save_journal
from wemixvisor.upgrade.preflight import check_plan
from wemixvisor.upgrade.steps import BACKUP_TIMEOUT, StepContext, StepFailed

VALIDATOR_QUERY_TIMEOUT = 0.25
"""Seconds each validator-status call before the stop may take (validator mode)."""


class Outcome(enum.StrEnum):
    """How a saga ended."""

    COMPLETED = "completed"
    FAILED = "failed"  # rolled back (or aborted before anything changed)
    AWAITING_OPERATOR = "awaiting_operator"
    DISARMED = "disarmed"  # armed, then given up before its stop: nothing changed


@dataclass(frozen=True)
class SagaResult:
    """What the orchestrator records for the plan."""

    name: str
    outcome: Outcome
    detail: str
    downtime: float | None = None
    height: int = 0
    first_head: int | None = None  # the new binary's first head, for the network watch
    late: bool = False  # the old binary was seen at or past H
    problems: tuple[str, ...] = ()  # DISARMED: what the preflight found while armed


# Steps a resumed saga re-enters at: before the switch everything restarts from the stop; the
# app pre-upgrade is repeated; once started, the start is checked again (adopted or not).
_RESUME_AT = {
    Step.STOPPING: Step.STOPPING,
    Step.BACKUP: Step.STOPPING,
    Step.CUSTOM_PREUPGRADE: Step.STOPPING,
    Step.SWITCH: Step.SWITCH,
    Step.APP_PREUPGRADE: Step.APP_PREUPGRADE,
    Step.STARTING: Step.STARTING,
    Step.VERIFYING: Step.STARTING,
}
_ORDER = [
    Step.STOPPING,
    Step.BACKUP,
    Step.CUSTOM_PREUPGRADE,
    Step.SWITCH,
    Step.APP_PREUPGRADE,
    Step.STARTING,
    Step.VERIFYING,
]


class UpgradeSaga:
    """Runs one journaled upgrade; `run` blocks (a job) and returns the result."""

    def __init__(
        self,
        *,
        journal: Journal,
        home: Home,
        config: Config,
        bus: Bus,
        journal_path: Path,
        environ: dict[str, str] | None = None,
        on_post_upgrade: Callable[[Journal], None] | None = None,
    ) -> None:
        self.journal = journal
        self.home = home
        self.config = config
        self.bus = bus
        self.journal_path = journal_path
        self.on_post_upgrade = on_post_upgrade
        self._overshoot_blocks = 0  # blocks at or beyond H reported by upgrade.overshoot
        # Arming (see the module's docstring): the orchestrator's `go` or `disarm`, once.
        self.armed_head: int | None = None  # the head it was armed at (for upgrade.armed)
        self.switch_at: int | None = None  # the head its switch waits for
        self._decision = threading.Lock()
        self._decided = threading.Event()
        self._go = False
        self._disarm_reason: str | None = None
        self._ended = False  # no longer waiting for a decision (it ended before the stop)
        self._committed = False  # past the decision: the stop is next
        self._lease_held = False
        self._announced = False  # upgrade.armed was published (upgrade.disarmed then follows)
        self.node = NodeClient(bus, journal.holder, config.node.shutdown_grace)
        self.ctx = StepContext(
            journal=journal,
            home=home,
            config=config,
            bus=bus,
            journal_path=journal_path,
            node=self.node,
            environ=dict(os.environ if environ is None else environ),
        )

    @property
    def plan(self) -> Plan:
        """The plan being applied."""
        return self.journal.plan

    # the orchestrator's decisions (any thread)

    @property
    def armed(self) -> bool:
        """Arming or armed: neither told to go nor to disarm, and not ended."""
        with self._decision:
            return not (self._go or self._ended or self._disarm_reason is not None)

    def go(self, *, observed_height: int | None, late: bool) -> bool:
        """Stop the node now (the head the switch waits for was seen: `observed_height`); False
        when the saga no longer waits for it (disarmed, or ended before the stop)."""
        with self._decision:
            if self._ended or self._disarm_reason is not None:
                return False
            if not self._go:
                self.journal.observed_height = observed_height
                self.journal.late = late
                self.journal.started_at = time.time()
                self._go = True
            self._decided.set()
            return True

    def resuming(self) -> None:
        """A saga resumed from its journal is past the decision: never armed, never told to go
        (its journal keeps the head and times of the run that started it)."""
        with self._decision:
            self._go = True
            self._decided.set()

    def disarm(self, reason: str) -> bool:
        """Give the armed saga up before its stop (it ends with Outcome.DISARMED, the lease
        given back); False once it was told to go, or ended."""
        with self._decision:
            if self._go or self._ended:
                return False
            if self._disarm_reason is None:
                self._disarm_reason = reason
            self._decided.set()
            return True

    # driving

    def run(self, *, resume: bool) -> SagaResult:
        """Run (or resume) the saga to completion or rollback, holding the node's lease
        meanwhile; never raises."""
        try:
            return self._run(resume=resume)
        except Exception as exc:  # noqa: BLE001  (a saga must end recorded, whatever happened)
            logger.exception("upgrade {} failed unexpectedly", self.plan.name)
            if not self._committed and not resume:
                # Before the stop nothing changed: the node keeps running on its binary.
                with self._decision:
                    self._ended = True
                return self._end_before_stop(f"internal error: {exc!r}", [])
            return self._rollback(self.journal.step, f"internal error: {exc!r}")
        finally:
            steps.seal_backup(self.ctx)  # never left waiting, whatever happened
            self.node.release()

    def _lease(self) -> str | None:
        """Take the node's lease, waiting for a holder to give it back; why not, if not."""
        reason = f"upgrade to {self.journal.to_target} at height {self.plan.height}"
        try:
            lease = self.node.acquire(reason, wait=BACKUP_TIMEOUT)
        except NodeUnavailable as exc:
            return str(exc)
        return None if lease.granted else f"the node is held by {lease.holder} ({lease.reason})"

    def _run(self, *, resume: bool) -> SagaResult:
        journal = self.journal
        if resume:
            refused = self._lease()
            if refused is not None:
                logger.error(
                    "resumed upgrade {} without the node's lease: {}", self.plan.name, refused
                )
            steps.check_resumed_backup(self.ctx)
            if journal.step is Step.ROLLING_BACK:
                return self._rollback(
                    Step(journal.failed_step or Step.STARTING),
                    journal.failure or "resumed rollback",
                )
            if journal.step is Step.COMPLETED:
                return self._finish()
            start = _RESUME_AT[journal.step]
            journal.resumed += 1
            logger.warning("resuming upgrade {} at step {}", self.plan.name, start)
        else:
            ended = self._arm_and_wait()
            if ended is not None:
                return ended
            start = Step.STOPPING
        for step in _ORDER[_ORDER.index(start) :]:
            self._enter(step)
            try:
                result = self._do(step)
            except StepFailed as failure:
                if failure.step in (Step.STOPPING, Step.BACKUP):
                    return self._abort(failure)
                return self._rollback(failure.step, failure.reason)
            if result is not None:
                return result
        return self._finish()

    def _arm_and_wait(self) -> SagaResult | None:
        """Arm, wait for the orchestrator's decision, and after `go` announce the start; a
        result when the saga ends before the stop (disarmed, or its preflight failed), None
        when the stop is next."""
        problems = self._arm()
        with self._decision:
            if problems and not self._go:
                # Found ahead of the switch: the plan stays, the orchestrator reports it as a
                # preflight failure, and the switch checks again.
                self._ended = True
        if self._ended:
            return self._end_before_stop("preflight: " + "; ".join(problems), problems)
        if not problems and not self._decided.is_set():
            logger.info(
                "upgrade {} armed at head {} for its switch at {}",
                self.plan.name,
                self.armed_head,
                self.switch_at,
            )
            self._announced = True
            self.bus.publish(
                ev.UpgradeArmed(
                    name=self.plan.name,
                    height=self.plan.height,
                    head=self.armed_head,
                    switch_at=self.switch_at,
                    lease=self._lease_held,
                )
            )
        self._decided.wait()
        with self._decision:
            if not self._go:
                self._ended = True
        if self._ended:
            return self._end_before_stop(self._disarm_reason or "disarmed", [])
        self._committed = True
        if not problems and not self._lease_held:
            refused = self._lease()  # a backup or restore held the node when it was armed
            if refused is not None:
                problems.append(refused)
        if problems:
            # Told to go before the preflight found these: the node keeps running on its
            # binary, and the upgrade fails.
            reason = "; ".join(problems)
            self.node.release()
            self.bus.publish(
                ev.UpgradeFailed(
                    name=self.plan.name, height=self.plan.height, step="preflight", reason=reason
                )
            )
            clear_journal(self.journal_path)
            return SagaResult(self.plan.name, Outcome.FAILED, f"preflight: {reason}")
        journal = self.journal
        self.bus.publish(
            ev.UpgradeStarted(
                name=self.plan.name,
                height=self.plan.height,
                observed_height=journal.observed_height or 0,
                late=journal.late,
                from_target=journal.from_target,
                to_target=journal.to_target,
            )
        )
        # Judged from the head the orchestrator saw, with no call to the node in between:
        # blocks imported since show in the new binary's first head (a second event then).
        overshoot = self._overshoot(journal.observed_height)
        if overshoot is not None:
            self.bus.publish(overshoot)
        return None

    def _arm(self) -> list[str]:
        """Everything before the stop that does not depend on the moment: the node's lease
        (without waiting: a backup or restore holding it is waited for after `go`), the quick
        preflight, the validator record, the node's arguments. The problems found."""
        reason = f"upgrade to {self.journal.to_target} at height {self.plan.height}"
        try:
            self._lease_held = self.node.acquire(reason).granted
        except NodeUnavailable:
            self._lease_held = False
        problems = check_plan(self.home, self.config, self.plan, quick=True)
        if problems:
            return problems
        if self.config.node.validator_mode:
            self._record_validator()
        steps.prepare_args(self.ctx)
        return []

    def _end_before_stop(self, reason: str, problems: list[str]) -> SagaResult:
        """The saga ends before its stop with nothing changed: the lease given back, and
        `upgrade.disarmed` after an `upgrade.armed`."""
        self.node.release()
        logger.info("upgrade {} disarmed: {}", self.plan.name, reason)
        if self._announced:
            self.bus.publish(
                ev.UpgradeDisarmed(name=self.plan.name, height=self.plan.height, reason=reason)
            )
        return SagaResult(
            self.plan.name,
            Outcome.DISARMED,
            reason,
            height=self.plan.height,
            problems=tuple(problems),
        )

    def _record_validator(self) -> None:
        """Validator mode: note whether the node is a validator, and its address, while the
        upgrade is armed; the signing check after the upgrade looks for that address (SPEC
        §13.2). Two local calls of a few milliseconds, bounded tightly: a plan first seen at
        its switch runs them right before the stop. A node that cannot tell leaves both
        unknown."""
        chain = ChainClient(self.config.rpc.address, timeout=VALIDATOR_QUERY_TIMEOUT)
        client = WbftClient(chain)
        try:
            self.journal.validator_address = client.node_address()
            self.journal.validator = client.is_validator()
        except NotWbft:
            self.journal.validator = None  # not a WBFT chain: the validator checks are off
        except RpcError as exc:
            self.journal.validator = None
            logger.info("upgrade {}: validator status unknown ({})", self.plan.name, exc)
        finally:
            chain.close()

    def _overshoot(self, head: int | None) -> ev.UpgradeOvershoot | None:
        """The event when the old binary's `head` is at or past H by more blocks than reported
        so far (the upgrade is then marked late); None otherwise."""
        blocks = 0 if head is None else overshoot(self.plan.height, head)
        if head is None or blocks <= self._overshoot_blocks:
            return None
        self._overshoot_blocks = blocks
        self.journal.late = True
        logger.error(
            "upgrade {}: the old binary reached block {}, {} block(s) at or beyond H={}; on a"
            " real fork they are invalid: rewind them with the node's own tools (see the README)",
            self.plan.name,
            head,
            blocks,
            self.plan.height,
        )
        return ev.UpgradeOvershoot(
            name=self.plan.name, height=self.plan.height, head=head, blocks=blocks
        )

    def _enter(self, step: Step) -> None:
        self.journal.step = step
        skipped = self._skipped(step)
        # Entering the backup is not journaled either: a resume re-enters at the stop whether
        # the journal says `stopping` or `backup`, and the downtime is spared a durable write.
        if not skipped and step is not Step.BACKUP:
            # Each durable write costs milliseconds of downtime between the stop and the start,
            # so a step with nothing to do is announced but not journaled: resuming at the
            # step before it is the same.
            if step is Step.STOPPING and self.journal.stop_requested_at is None:
                self.journal.stop_requested_at = time.time()
            if step is Step.STARTING:
                # Recorded before the start so that a rollback after a crash right after it
                # still restores the backup; restoring a copy of unchanged data is harmless.
                self.journal.new_binary_started = self.config.upgrade.restart_after_upgrade
            save_journal(self.journal_path, self.journal)
        self.bus.publish(
            ev.UpgradeStep(
                name=self.plan.name, step=step.value, detail="skipped" if skipped else ""
            )
        )
        logger.info("upgrade {}: {}{}", self.plan.name, step.value, " (skipped)" if skipped else "")

    def _skipped(self, step: Step) -> bool:
        upgrade = self.config.upgrade
        return (
            (step is Step.BACKUP and self.config.backup.skip)
            or (step is Step.CUSTOM_PREUPGRADE and not upgrade.custom_preupgrade)
            or (step is Step.APP_PREUPGRADE and not upgrade.app_preupgrade)
        )

    def _do(self, step: Step) -> SagaResult | None:
        match step:
            case Step.STOPPING:
                steps.stop_node(self.ctx)
            case Step.BACKUP:
                steps.finish_backup(self.ctx)
            case Step.CUSTOM_PREUPGRADE:
                steps.run_custom_preupgrade(self.ctx)
            case Step.SWITCH:
                switch_current(self.home, self.journal.to_target)
            case Step.APP_PREUPGRADE:
                steps.run_app_preupgrade(self.ctx)
            case Step.STARTING:
                return self._start_new()
            case Step.VERIFYING:
                steps.verify(self.ctx)
        return None

    def _start_new(self) -> SagaResult | None:
        if not self.config.upgrade.restart_after_upgrade:
            steps.await_seal(self.ctx)
            self.node.release()  # the operator starts the node: it is theirs again
            self.bus.publish(
                ev.UpgradeAwaitingOperator(
                    name=self.plan.name,
                    height=self.plan.height,
                    reason="DAEMON_RESTART_AFTER_UPGRADE=false: start the node when ready",
                )
            )
            self._mark(Step.COMPLETED)
            clear_journal(self.journal_path)
            return SagaResult(
                self.plan.name,
                Outcome.AWAITING_OPERATOR,
                "switched; node left stopped",
                late=self.journal.late,
            )
        self.ctx.start_requested_at = time.time()
        status = self.node.status()
        if status.state not in (NodeState.STARTING, NodeState.RUNNING):
            self.node.start(f"upgrade {self.plan.name}")
        return None

    # endings

    def _finish(self) -> SagaResult:
        steps.await_seal(self.ctx)
        downtime = None
        answered = self.ctx.first_answer_at or time.monotonic()
        if self.ctx.stop_began is not None:
            downtime = answered - self.ctx.stop_began
        elif self.journal.stop_requested_at is not None:
            # Resumed by another daemon run: only wall clocks span both runs.
            downtime = time.time() - (time.monotonic() - answered) - self.journal.stop_requested_at
        # The new binary starts from the old one's last block: blocks imported after the head
        # seen at the switch (while the stop was under way) show here.
        overshoot_found = self._overshoot(self.ctx.first_head)
        self._mark(Step.COMPLETED)
        version = detect_version(self.home.upgrade_bin(self.plan.name))
        # Given back before the news: whoever acts on it finds the node free.
        self.node.release()
        if overshoot_found is not None:
            self.bus.publish(overshoot_found)
        self.bus.publish(
            ev.UpgradeCompleted(
                name=self.plan.name,
                height=self.plan.height,
                downtime_seconds=downtime if downtime is not None else 0.0,
                version=version,
                first_head=self.ctx.first_head,
            )
        )
        logger.info(
            "upgrade {} completed (downtime {})",
            self.plan.name,
            f"{downtime:.3f}s" if downtime is not None else "unknown",
        )
        journal = self.journal
        clear_journal(self.journal_path)
        if self.on_post_upgrade is not None:
            self.on_post_upgrade(journal)
        return SagaResult(
            self.plan.name,
            Outcome.COMPLETED,
            "ok",
            downtime,
            height=self.plan.height,
            first_head=self.ctx.first_head,
            late=self.journal.late,
        )

    def _abort(self, failure: StepFailed) -> SagaResult:
        """A failure before anything was switched: back to the old binary, nothing to undo."""
        logger.error("upgrade {} aborted at {}: {}", self.plan.name, failure.step, failure.reason)
        self.node.start(f"upgrade {self.plan.name} aborted")
        self.node.release()
        self.bus.publish(
            ev.UpgradeFailed(
                name=self.plan.name,
                height=self.plan.height,
                step=failure.step.value,
                reason=failure.reason,
            )
        )
        clear_journal(self.journal_path)
        return SagaResult(
            self.plan.name,
            Outcome.FAILED,
            f"{failure.step}: {failure.reason}",
            late=self.journal.late,
        )

    def _rollback(self, failed_step: Step, reason: str) -> SagaResult:
        journal = self.journal
        first_time = journal.step is not Step.ROLLING_BACK
        journal.failure = reason
        journal.failed_step = failed_step.value
        self._mark(Step.ROLLING_BACK)
        if first_time:
            logger.error("upgrade {} failed at {}: {}", self.plan.name, failed_step, reason)
            self.bus.publish(
                ev.UpgradeFailed(
                    name=self.plan.name,
                    height=self.plan.height,
                    step=failed_step.value,
                    reason=reason,
                )
            )
        self.node.stop(f"rollback of {self.plan.name}")
        switch_current(self.home, journal.from_target)
        steps.await_seal(self.ctx)  # the backup is restored only once complete
        restored = None
        if journal.new_binary_started and journal.backup is not None:
            restored = steps.restore_backup(self.ctx, journal.backup)
        self.node.start(f"rollback of {self.plan.name}")
        self.node.release()
        self.bus.publish(
            ev.UpgradeRolledBack(
                name=self.plan.name,
                height=self.plan.height,
                target=journal.from_target,
                restored_backup=restored,
            )
        )
        clear_journal(self.journal_path)
        return SagaResult(
            self.plan.name, Outcome.FAILED, f"{failed_step}: {reason}", late=journal.late
        )

    def _mark(self, step: Step) -> None:
        self.journal.step = step
        save_journal(self.journal_path, self.journal)
