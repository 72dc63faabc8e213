"""One upgrade as a journaled saga (SPEC §5), run on a worker thread of the orchestrator.

Before each step the journal (state/journal.json) is rewritten durably, so a daemon killed at
any moment resumes the same upgrade on its next start: every step is idempotent, and a resume
re-enters at a step that is safe to repeat. The worker talks to the NodeActor through the bus
with futures and bounded waits; it may block, the actors never do.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.chain.rpc import RpcClient, RpcError
from wemixvisor.chain.wbft import NotWbft, WbftClient
from wemixvisor.config import Config
from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.home.layout import Home, switch_current
from wemixvisor.home.state import JournalError, clear_journal, load_journal, save_journal  # noqa: F401
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import FinishBackup, RestoreBackup
from wemixvisor.messages.node import GetNodeStatus, NodeState, NodeStatus, StartNode, StopNode
from wemixvisor.node.process import detect_version
from wemixvisor.plans.queue import Plan, plan_to_object
from wemixvisor.upgrade import hooks
from wemixvisor.upgrade.preflight import check_plan, custom_preupgrade_path

BACKUP_TIMEOUT = 6 * 3600.0
"""Bound on the wait for the backup at H (and a rollback's restore): generous, because without a
pre-staged copy it is a full copy of the data dir."""


VALIDATOR_QUERY_TIMEOUT = 0.25
"""Seconds each validator-status call before the stop may take (validator mode)."""


class Step(enum.StrEnum):
    """The saga's steps, in order, plus the rollback."""

    STOPPING = "stopping"
    BACKUP = "backup"
    CUSTOM_PREUPGRADE = "custom_preupgrade"
    SWITCH = "switch"
    APP_PREUPGRADE = "app_preupgrade"
    STARTING = "starting"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"


class Journal(msgspec.Struct, kw_only=True):
    """state/journal.json: the upgrade in progress."""

    plan: Plan
    step: Step
    from_target: str
    to_target: str
    observed_height: int | None
    late: bool
    started_at: float
    stop_requested_at: float | None = None
    backup: str | None = None
    new_binary_started: bool = False
    failure: str | None = None
    failed_step: str | None = None
    resumed: int = 0
    # Validator mode: whether the node validated, and with which address, right before the stop
    # (None when unknown: not validator mode, not a WBFT chain, or the node did not answer).
    validator: bool | None = None
    validator_address: str | None = None

    @property
    def name(self) -> str:
        """The plan's name."""
        return self.plan.name

    @property
    def height(self) -> int:
        """The plan's height H."""
        return self.plan.height


class Outcome(enum.StrEnum):
    """How a saga ended."""

    COMPLETED = "completed"
    FAILED = "failed"  # rolled back (or aborted before anything changed)
    AWAITING_OPERATOR = "awaiting_operator"


@dataclass(frozen=True)
class SagaResult:
    """What the orchestrator records for the plan."""

    name: str
    outcome: Outcome
    detail: str
    downtime: float | None = None
    height: int = 0
    first_head: int | None = None  # the new binary's first head, for the network watch


class StepFailed(Exception):
    """A local failure of a step: the saga rolls back."""

    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


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
    """Runs one journaled upgrade; `run` blocks (worker thread) and returns the result."""

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
        self.environ = dict(os.environ if environ is None else environ)
        self.on_post_upgrade = on_post_upgrade
        self._stop_began: float | None = None
        self._start_requested_at = time.time()
        self._first_answer_at: float | None = None
        self._first_head: int | None = None

    @property
    def plan(self) -> Plan:
        """The plan being applied."""
        return self.journal.plan

    # driving

    def run(self, *, resume: bool) -> SagaResult:
        """Run (or resume) the saga to completion or rollback; never raises."""
        try:
            return self._run(resume=resume)
        except Exception as exc:  # noqa: BLE001  (a saga must end recorded, whatever happened)
            logger.exception("upgrade {} failed unexpectedly", self.plan.name)
            return self._rollback(self.journal.step, f"internal error: {exc!r}")

    def _run(self, *, resume: bool) -> SagaResult:
        journal = self.journal
        if journal.step is Step.ROLLING_BACK:
            return self._rollback(
                Step(journal.failed_step or Step.STARTING), journal.failure or "resumed rollback"
            )
        if journal.step is Step.COMPLETED:
            return self._finish()
        start = _RESUME_AT[journal.step] if resume else Step.STOPPING
        if resume:
            journal.resumed += 1
            logger.warning("resuming upgrade {} at step {}", self.plan.name, start)
        else:
            problems = check_plan(self.home, self.config, self.plan, quick=True)
            if problems:
                # Nothing changed yet: the node keeps running on its binary.
                reason = "; ".join(problems)
                self.bus.publish(
                    ev.UpgradeFailed(
                        name=self.plan.name,
                        height=self.plan.height,
                        step="preflight",
                        reason=reason,
                    )
                )
                clear_journal(self.journal_path)
                return SagaResult(self.plan.name, Outcome.FAILED, f"preflight: {reason}")
            if self.config.node.validator_mode:
                self._record_validator()
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

    def _record_validator(self) -> None:
        """Validator mode: note whether the node is a validator, and its address, before the
        stop; the signing check after the upgrade looks for that address (SPEC §13.2).

        Two local calls of a few milliseconds, bounded tightly: the old binary must not import
        blocks beyond H while they run. A node that cannot tell leaves both unknown.
        """
        client = WbftClient(RpcClient(self.config.rpc.address, timeout=VALIDATOR_QUERY_TIMEOUT))
        try:
            self.journal.validator_address = client.node_address()
            self.journal.validator = client.is_validator()
        except NotWbft:
            self.journal.validator = None  # not a WBFT chain: the validator checks are off
        except RpcError as exc:
            self.journal.validator = None
            logger.info("upgrade {}: validator status unknown ({})", self.plan.name, exc)

    def _enter(self, step: Step) -> None:
        self.journal.step = step
        skipped = self._skipped(step)
        if not skipped:
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
                self._stop_node()
            case Step.BACKUP:
                self._backup()
            case Step.CUSTOM_PREUPGRADE:
                self._custom_preupgrade()
            case Step.SWITCH:
                self._switch()
            case Step.APP_PREUPGRADE:
                self._app_preupgrade()
            case Step.STARTING:
                return self._start_new()
            case Step.VERIFYING:
                self._verify()
        return None

    # steps

    def _stop_node(self) -> None:
        self._stop_began = time.monotonic()
        status = self._stop_and_wait(f"upgrade {self.plan.name}")
        if status.state is not NodeState.STOPPED:
            raise StepFailed(Step.STOPPING, f"node did not stop (state {status.state})")
        delay = self.config.upgrade.restart_delay
        if delay > 0:
            time.sleep(delay)

    def _backup(self) -> None:
        """Ask the BackupActor to finish the plan's pre-staged backup and wait for it here.

        The node is stopped: only what changed since the pre-staging is copied. A daemon killed
        meanwhile resumes here, and a backup of this upgrade that completed is reused.
        """
        if self.config.backup.skip:
            return
        if self.journal.backup is not None and self._backup_complete(self.journal.backup):
            return  # resumed after the backup had completed
        done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        request = FinishBackup(self.plan.name, done=done, since=self.journal.started_at)
        if not self._tell_backup(request):
            raise StepFailed(Step.BACKUP, "backup failed: no backup actor is running")
        try:
            backup_id: str = done.get(timeout=BACKUP_TIMEOUT)
        except pykka.Timeout:
            raise StepFailed(
                Step.BACKUP, f"backup failed: not finished within {BACKUP_TIMEOUT:g}s"
            ) from None
        except backups.BackupError as exc:
            raise StepFailed(Step.BACKUP, f"backup failed: {exc}") from None
        self.journal.backup = backup_id
        save_journal(self.journal_path, self.journal)

    def _backup_complete(self, backup_id: str) -> bool:
        try:
            path = backups.backup_dir(self.config.backup.dir, backup_id)
        except backups.BackupError:
            return False
        return backups.read_manifest(path) is not None

    def _tell_backup(self, message: Any) -> bool:
        # The backup actor may be between two lives (restarted by its supervisor): wait for it.
        deadline = time.monotonic() + 30
        while not self.bus.tell("backup", message):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _restore(self, backup_id: str) -> str | None:
        """Restore the upgrade's backup through the BackupActor (the node is stopped); the id
        restored, or None when that failed: the live data is then left as it was."""
        accepted: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        finished: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        request = RestoreBackup(backup_id, done=accepted, finished=finished, upgrade=self.plan.name)
        if not self._tell_backup(request):
            logger.error("rollback of {}: no backup actor to restore {}", self.plan.name, backup_id)
            return None
        try:
            aside: str = finished.get(timeout=BACKUP_TIMEOUT)
        except (pykka.Timeout, backups.BackupError) as exc:
            logger.error(
                "rollback of {}: restoring backup {} failed ({}); the old binary starts on the"
                " data as the new one left it",
                self.plan.name,
                backup_id,
                exc,
            )
            return None
        logger.warning(
            "restored backup {}; the data the new binary wrote is in {}", backup_id, aside
        )
        return backup_id

    def _custom_preupgrade(self) -> None:
        script = custom_preupgrade_path(self.home, self.config)
        if script is None:
            return
        result = hooks.run_custom_preupgrade(
            script,
            self.plan,
            home=self.home.root,
            timeout=self.config.upgrade.hook_timeout,
            base_env=self.environ,
        )
        logger.info("custom pre-upgrade: {}\n{}", result.describe(), result.output)
        if not result.ok:
            raise StepFailed(
                Step.CUSTOM_PREUPGRADE,
                f"custom pre-upgrade: {result.describe()}: {result.output[-500:].strip()}",
            )

    def _switch(self) -> None:
        switch_current(self.home, self.journal.to_target)

    def _copy_plan(self) -> None:
        # Written while the new binary starts, not before: it is a record for the operator,
        # and a durable write here would add to the downtime.
        plan_copy = self.home.target_dir(self.journal.to_target) / "upgrade-info.json"
        atomic_write_bytes(plan_copy, msgspec.json.encode(plan_to_object(self.plan)))

    def _app_preupgrade(self) -> None:
        if not self.config.upgrade.app_preupgrade:
            return
        outcome = hooks.run_app_preupgrade(
            self.home.upgrade_bin(self.plan.name),
            cwd=self.home.root,
            env=self.environ,
            timeout=self.config.upgrade.hook_timeout,
            max_retries=self.config.upgrade.preupgrade_max_retries,
            on_attempt=lambda attempt: self.bus.publish(
                ev.UpgradeStep(name=self.plan.name, step=Step.APP_PREUPGRADE.value, attempt=attempt)
            ),
        )
        for attempt in outcome.attempts:
            logger.info("app pre-upgrade: {}\n{}", attempt.describe(), attempt.output)
        if not outcome.ok:
            raise StepFailed(Step.APP_PREUPGRADE, outcome.reason)

    def _start_new(self) -> SagaResult | None:
        if not self.config.upgrade.restart_after_upgrade:
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
                self.plan.name, Outcome.AWAITING_OPERATOR, "switched; node left stopped"
            )
        self._start_requested_at = time.time()
        status = self._node_status()
        if status.state not in (NodeState.STARTING, NodeState.RUNNING):
            self.bus.tell("node", StartNode(reason=f"upgrade {self.plan.name}"))
        return None

    def _verify(self) -> None:
        """Alive past STARTSECS without an unexpected exit, and answering RPC.

        The first RPC answer ends the downtime; its head is the old binary's last block,
        since the new one continues from the same data.
        """
        config = self.config
        self._copy_plan()
        deadline = time.monotonic() + config.upgrade.verify_timeout
        client = RpcClient(config.rpc.address, timeout=min(config.rpc.timeout, 1.0))
        since = self._start_requested_at
        next_status = 0.0
        status = self._node_status()
        while True:
            now = time.monotonic()
            if now >= next_status:
                # The node's state is asked every 50 ms; RPC is tried every few ms, since the
                # first answer ends the downtime.
                status = self._node_status()
                next_status = now + 0.05
                crashes = [e for e in status.exits if e.at >= since and not e.expected]
                if crashes:
                    last = crashes[-1]
                    how = f"signal {last.signal}" if last.signal else f"exit code {last.exit_code}"
                    raise StepFailed(Step.VERIFYING, f"new binary exited ({how})")
                if status.state in (NodeState.FATAL, NodeState.EXITED, NodeState.STOPPED):
                    raise StepFailed(Step.VERIFYING, f"new binary is {status.state}")
            if self._first_answer_at is None and status.state in (
                NodeState.STARTING,
                NodeState.RUNNING,
            ):
                head = _hex_height(_call_quietly(client, "eth_blockNumber"))
                if head is not None:
                    self._first_answer_at = time.monotonic()
                    self._first_head = head
                    next_status = 0.0  # check the state at once
                    continue
            alive_long_enough = (
                status.state is NodeState.RUNNING
                and status.uptime is not None
                and status.uptime >= min(config.node.startsecs, config.upgrade.verify_timeout)
            )
            if self._first_answer_at is not None and alive_long_enough:
                return
            if now >= deadline:
                if self._first_answer_at is None:
                    reason = (
                        "RPC never answered"
                        if status.state is NodeState.RUNNING
                        else f"node still {status.state}"
                    )
                else:
                    reason = "node did not stay up"
                raise StepFailed(
                    Step.VERIFYING, f"{reason} within {config.upgrade.verify_timeout:g}s"
                )
            time.sleep(0.003 if self._first_answer_at is None else 0.02)

    # endings

    def _finish(self) -> SagaResult:
        downtime = None
        answered = self._first_answer_at or time.monotonic()
        if self._stop_began is not None:
            downtime = answered - self._stop_began
        elif self.journal.stop_requested_at is not None:
            # Resumed by another daemon run: only wall clocks span both runs.
            downtime = time.time() - (time.monotonic() - answered) - self.journal.stop_requested_at
        self._mark(Step.COMPLETED)
        version = detect_version(self.home.upgrade_bin(self.plan.name))
        self.bus.publish(
            ev.UpgradeCompleted(
                name=self.plan.name,
                height=self.plan.height,
                downtime_seconds=downtime if downtime is not None else 0.0,
                version=version,
                first_head=self._first_head,
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
            first_head=self._first_head,
        )

    def _abort(self, failure: StepFailed) -> SagaResult:
        """A failure before anything was switched: back to the old binary, nothing to undo."""
        logger.error("upgrade {} aborted at {}: {}", self.plan.name, failure.step, failure.reason)
        self.bus.publish(
            ev.UpgradeFailed(
                name=self.plan.name,
                height=self.plan.height,
                step=failure.step.value,
                reason=failure.reason,
            )
        )
        self.bus.tell("node", StartNode(reason=f"upgrade {self.plan.name} aborted"))
        clear_journal(self.journal_path)
        return SagaResult(self.plan.name, Outcome.FAILED, f"{failure.step}: {failure.reason}")

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
        self._stop_and_wait(f"rollback of {self.plan.name}")
        switch_current(self.home, journal.from_target)
        restored = None
        if journal.new_binary_started and journal.backup is not None:
            restored = self._restore(journal.backup)
        self.bus.tell("node", StartNode(reason=f"rollback of {self.plan.name}"))
        self.bus.publish(
            ev.UpgradeRolledBack(
                name=self.plan.name,
                height=self.plan.height,
                target=journal.from_target,
                restored_backup=restored,
            )
        )
        clear_journal(self.journal_path)
        return SagaResult(self.plan.name, Outcome.FAILED, f"{failed_step}: {reason}")

    # node access

    def _mark(self, step: Step) -> None:
        self.journal.step = step
        save_journal(self.journal_path, self.journal)

    def _node_status(self) -> NodeStatus:
        deadline = time.monotonic() + 30
        while True:
            try:
                status: NodeStatus = self.bus.ask("node", GetNodeStatus(), timeout=5)
                return status
            except (pykka.ActorDeadError, pykka.Timeout):
                # The node actor is being restarted by its supervisor: wait for it.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _stop_and_wait(self, reason: str) -> NodeStatus:
        deadline = time.monotonic() + self.config.node.shutdown_grace + 30
        while True:
            done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
            if self.bus.tell("node", StopNode(reason=reason, done=done)):
                try:
                    status: NodeStatus = done.get(timeout=max(deadline - time.monotonic(), 0.1))
                    return status
                except pykka.Timeout:
                    return self._node_status()
            if time.monotonic() >= deadline:
                return self._node_status()
            time.sleep(0.05)


def _call_quietly(client: RpcClient, method: str) -> Any:
    try:
        return client.call(method)
    except RpcError:
        return None


def _hex_height(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x") and 2 < len(value) <= 18:
        with contextlib.suppress(ValueError):
            return int(value, 16)
    return None
