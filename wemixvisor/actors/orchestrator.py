"""OrchestratorActor: owns the plan queue and runs each upgrade as a journaled saga (SPEC §4, §5).

The actor keeps the queue (state/plans.json) and decides *when*; each saga runs as a job (it
waits for the node, runs hooks, copies data) and reports back with a message. Preflight checks
run as ONE job at a time over every plan whose check is due (they execute the new binaries);
the one pre-staged backup copy is asked for the plan `staging_owner` names.

A few blocks before a plan's switch (`ARM_AHEAD_BLOCKS`) its saga starts armed: everything
before the stop that can be done early is done then, and at the switch the saga is told to go
(`UpgradeSaga.go`). An armed saga that no longer fits — its plan cancelled or replaced, another
plan first, the head gone back, the configuration reloaded — is disarmed and armed again when
it fits once more.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Any

import msgspec
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.operator_duties import OperatorDuties, RehearsalDone, RollbackFinished
from wemixvisor.actors.rolling_window import RollingWindow, WindowSurveyed
from wemixvisor.actors.workers import tell_if_alive
from wemixvisor.backup.staging import staging_owner
from wemixvisor.bus import Bus
from wemixvisor.chain.headwatch import NEAR_TRIGGER_BLOCKS, next_trigger_height
from wemixvisor.chain.wbft import start_signing_check
from wemixvisor.config import Config, apply_reloadable
from wemixvisor.home import state
from wemixvisor.home.layout import Home, LayoutError, read_current
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import PrestageBackup
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.height import (
    HeadObserved,
    NextTrigger,
    ResendNextTrigger,
    RpcAvailability,
)
from wemixvisor.messages.node import StartNode
from wemixvisor.messages.plans import (
    CancelPlan,
    ListPlans,
    RegisterPlans,
    RehearsePlan,
    ResendPlans,
    RollbackPlan,
)
from wemixvisor.plans import queue as queue_rules
from wemixvisor.plans.queue import Plan, PlanError, PlanStatus, QueueState, RegisterOutcome
from wemixvisor.upgrade.journal import Journal, JournalError, Step, load_journal
from wemixvisor.upgrade.preflight import preflight_plans
from wemixvisor.upgrade.saga import Outcome, SagaResult, UpgradeSaga
from wemixvisor.upgrade.window import WindowState

PREFLIGHT_RECHECK = 60.0  # seconds between re-checks of a plan whose preflight failed
PREFLIGHT_AHEAD_BLOCKS = 10  # re-check this many blocks before the switch (H-1, or the slot)
ARM_AHEAD_BLOCKS = NEAR_TRIGGER_BLOCKS
"""Blocks before its switch from which a plan is armed: the blocks where the head watcher polls
fast. At 0.1 s blocks that leaves about half a second for the arming (the validator record's
two calls are bounded at 0.25 s each); at 1 s blocks the node is held for about 5 s before
the stop, where an operator's stop, restart, backup or restore is refused as busy, as during
the upgrade itself."""
_LATENCY_SAMPLES = 10_000


class GetHeadLatency(msgspec.Struct, frozen=True):
    """Ask: `(height, observed_at, handled_at)` (monotonic seconds) of recent heads: when the
    head arrived on the RPC connection and when the orchestrator handled it (for benchmarks)."""


class QueueSnapshot(msgspec.Struct, frozen=True):
    """Answer to ListPlans."""

    queue: QueueState
    journal: Journal | None
    head: int | None
    # The latest preflight verdict of each pending plan that has one (True: nothing wrong).
    preflight_ok: dict[str, bool] = msgspec.field(default_factory=dict)
    windows: dict[str, WindowState] = msgspec.field(default_factory=dict)  # window plans (§19)


class _SagaFinished(msgspec.Struct, frozen=True):
    result: Any  # SagaResult


class _PreflightDone(msgspec.Struct, frozen=True):
    name: str
    height: int
    problems: list[str]


class _NetworkCheck(msgspec.Struct, frozen=True):
    """DAEMON_NETWORK_WAIT after an upgrade: has the chain moved past the new binary's first
    head?"""

    name: str
    height: int
    first_head: int
    since: float


class _PreflightDue(msgspec.Struct, frozen=True):
    name: str


class _PreflightsEnded(msgspec.Struct, frozen=True):
    """The preflight job checked (or, stopping, gave up on) the plans it was given."""


_UNDECIDED = "\0undecided"  # no staging owner told to the backup actor yet


class OrchestratorActor(OperatorDuties, RollingWindow, SupervisedActor):
    """Registers plans, watches the head, and starts the upgrade saga once the old binary
    holds H-1 (the new binary's first block is H)."""

    role = "orchestrator"

    def __init__(
        self,
        *,
        config: Config,
        home: Home,
        bus: Bus,
        failure_sink: FailureSink | None = None,
    ) -> None:
        super().__init__(failure_sink)
        self._config = config
        self._home = home
        self._bus = bus
        self._queue = QueueState()
        self._journal_file = state.journal_file(home)
        self._head: int | None = None
        self._rpc_available = False
        self._head_lost = False  # RPC went away after the last head: the head is unknown
        self._saga: UpgradeSaga | None = None
        self._preflight_ok: dict[str, bool] = {}
        self._checked_ahead: dict[str, int] = {}  # plan -> the switch head it was checked for
        self._arm_failed: set[str] = set()  # plans whose arming found preflight problems
        self._preflight_due: dict[str, Plan] = {}  # plans waiting for the preflight job
        self._preflight_running: set[str] = set()  # plans the running job has yet to report
        self._preflight_job = False
        self._staging_owner: str | None = _UNDECIDED
        self._waiting_for_download: set[str] = set()
        self._init_operator_duties()
        self._init_rolling_window()
        self._latency: collections.deque[tuple[int, float, float]] = collections.deque(
            maxlen=_LATENCY_SAMPLES
        )

    # lifecycle

    def setup(self) -> None:
        self._queue = self._load_queue()
        self._tell_next_trigger()
        try:
            journal = load_journal(self._journal_file)
        except JournalError as exc:
            journal = None
            aside = state.move_aside(self._journal_file)
            logger.error("{}; moved to {}; starting the node on `current` as it is", exc, aside)
            self._bus.tell("node", StartNode(reason="unreadable journal"))
        self._settle_unjournaled(journal.plan.name if journal is not None else None)
        if journal is not None:
            entry = queue_rules.get(self._queue, journal.plan.name)
            if entry is not None:
                entry.status = PlanStatus.RUNNING
            self._start_saga(journal, resume=True)
        self._resume_rollback()
        self._remove_rehearsal_leftovers()
        for entry in queue_rules.pending(self._queue):
            self._preflight(entry.plan)
        self._schedule_prestage()
        # After a restart of this actor, plans told to the one before may be lost.
        self._bus.tell("files", ResendPlans())

    def _settle_unjournaled(self, journaled: str | None) -> None:
        try:
            target: str | None = read_current(self._home).target
        except LayoutError:
            target = None
        settled = queue_rules.settle_unjournaled(self._queue, journaled, target, at=time.time())
        for entry in settled:
            logger.warning(
                "plan {} was left running without its journal (the daemon stopped between "
                "the two); `current` points at {}: {}",
                entry.plan.name,
                target,
                entry.status.value,
            )
        if settled:
            self._save_queue()

    def teardown(self) -> None:
        self._wait_for_rehearsal_cleanup()

    def release(self) -> None:
        # An armed saga gives the node back; one under way goes on (the journal resumes it).
        self._disarm("the orchestrator stopped")

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case HeadObserved():
                self._latency.append((message.height, message.observed_at, time.monotonic()))
                self._head = message.height
                self._head_lost = False
                self._on_head()
            case RpcAvailability(available=available):
                self._rpc_available = available
                if not available:
                    # An unknown head triggers nothing, and the node is not held meanwhile.
                    self._head_lost = True
                    self._disarm("RPC is unavailable: the head is unknown")
            case RegisterPlans():
                self._register(message)
            case ResendNextTrigger():
                self._tell_next_trigger()
            case CancelPlan():
                self._cancel(message)
            case ListPlans():
                running = self._saga is not None and not self._saga.armed
                return QueueSnapshot(
                    queue=msgspec.convert(msgspec.to_builtins(self._queue), QueueState),
                    journal=self._saga.journal if self._saga is not None and running else None,
                    head=self._head,
                    preflight_ok=dict(self._preflight_ok),
                    windows=self.window_states(),
                )
            case GetHeadLatency():
                return list(self._latency)
            case _SagaFinished(result=result):
                self._on_saga_finished(result)
            case _PreflightDone():
                self._on_preflight(message)
            case _PreflightsEnded():
                self._preflight_job = False
                self._preflight_running.clear()
                self._run_preflights()
            case _NetworkCheck():
                self._on_network_check(message)
            case WindowSurveyed():
                self._on_window_surveyed(message)
            case _PreflightDue(name=name):
                entry = queue_rules.get(self._queue, name)
                if entry is not None and entry.status is PlanStatus.PENDING:
                    self._preflight(entry.plan)
            case ConfigChanged(config=config):
                before, self._config = self._config, apply_reloadable(self._config, config)
                if self._config != before:
                    # Armed on the configuration before: armed again on this one.
                    self._disarm("the configuration was reloaded")
            case RehearsePlan():
                self._on_rehearse(message)
            case ev.BackupStaged(plan=plan):
                self._on_staged(plan)
            case RehearsalDone():
                self._on_rehearsed(message.name, message.outcome)
            case RollbackPlan():
                self._on_rollback(message)
            case RollbackFinished(result=result):
                self._on_rollback_finished(result)
            case _:
                logger.warning("orchestrator: unexpected message {!r}", message)
        return None

    # plans

    def _register(self, message: RegisterPlans) -> None:
        answers: list[tuple[str, str]] = []
        changed = False
        for plan in message.plans:
            try:
                outcome, entry = queue_rules.register(
                    self._queue, plan, head=self._head, now=message.now, at=time.time()
                )
            except PlanError as exc:
                answers.append((plan.name, f"rejected: {exc}"))
                logger.warning("plan {} from {} rejected: {}", plan.name, message.source, exc)
                self._bus.publish(
                    ev.PlanRejected(
                        reason=str(exc), source=message.source, name=plan.name, height=plan.height
                    )
                )
                continue
            answers.append((plan.name, outcome.value))
            if outcome is RegisterOutcome.UNCHANGED or entry is None:
                continue
            changed = True
            logger.info(
                "plan {} at height {} registered from {}{}",
                plan.name,
                plan.height,
                message.source,
                " (late: runs at once)" if entry.late else "",
            )
            self._bus.publish(
                ev.PlanRegistered(
                    name=plan.name,
                    height=plan.height,
                    source=plan.source,
                    late=entry.late,
                    updated=outcome is RegisterOutcome.UPDATED,
                )
            )
            self._checked_ahead.pop(plan.name, None)
            self._arm_failed.discard(plan.name)
            self._preflight(plan)
        if changed:
            self._save_queue()
            self._schedule_prestage()
        if message.done is not None:
            message.done.set(answers)
        self._maybe_start()
        self._review_arming()

    def _cancel(self, message: CancelPlan) -> None:
        try:
            entry = queue_rules.cancel(self._queue, message.name, at=time.time())
        except KeyError:
            error: str | None = f"no plan named {message.name!r}"
        except PlanError as exc:
            error = str(exc)
        else:
            error = None
            self._save_queue()
            self.timers.cancel(f"preflight-{message.name}")
            self._preflight_due.pop(message.name, None)
            self._schedule_prestage()
            self._bus.publish(
                ev.PlanCancelled(
                    name=entry.plan.name, height=entry.plan.height, source=message.source
                )
            )
            self._review_arming()
        if message.done is not None:
            message.done.set(error)

    # height

    def _on_head(self) -> None:
        head = self._head
        if head is None:
            return
        # First (after closing a window that passed, which says so before its plan runs): an
        # armed saga's stop waits for nothing else.
        self._window_on_head(head)
        self._maybe_start()
        for entry in queue_rules.pending(self._queue):
            plan = entry.plan
            # The switch's own head: H-1, or a window plan's slot (its window's surveys until
            # the slot is known), so that the re-check and the staging refresh come before it.
            switch_after = self._window_trigger(entry) - 1
            near = switch_after - PREFLIGHT_AHEAD_BLOCKS <= head < switch_after
            if near and self._checked_ahead.get(plan.name, -1) < switch_after:
                self._checked_ahead[plan.name] = switch_after
                self._preflight(plan)
                self._refresh_prestage(plan)
        if self._config.backup.prestage_horizon > 0:
            self._schedule_prestage()
        self._review_arming()

    # arming

    def _review_arming(self) -> None:
        """Arm the plan whose switch is within ARM_AHEAD_BLOCKS of the head; disarm a saga
        armed for a plan that no longer is the one."""
        wanted = self._arm_candidate()
        saga = self._saga
        if saga is not None:
            if saga.armed and (wanted is None or wanted[0].plan != saga.plan):
                self._disarm(self._disarm_reason(saga.plan, wanted))
            return
        if wanted is None or self._rollback is not None:
            return
        entry, switch_at = wanted
        if not self._armable(entry):
            return
        try:
            from_target = read_current(self._home).target
        except LayoutError:
            return  # at the switch the plan fails with the reason
        journal = Journal(
            plan=entry.plan,
            step=Step.STOPPING,
            from_target=from_target,
            to_target=f"upgrades/{entry.plan.name}",
            observed_height=None,
            late=entry.late,
            started_at=time.time(),
        )
        self._start_saga(journal, resume=False, armed_head=self._head, switch_at=switch_at)

    def _arm_candidate(self) -> tuple[queue_rules.QueuedPlan, int] | None:
        """The pending plan whose switch comes first, with the head it waits for, when the
        head is within ARM_AHEAD_BLOCKS of it."""
        head = self._head
        if head is None or self._head_lost:
            return None
        nearest: tuple[queue_rules.QueuedPlan, int] | None = None
        for entry in queue_rules.pending(self._queue):
            switch_at = self._switch_head(entry)
            if nearest is None or switch_at < nearest[1]:
                nearest = (entry, switch_at)
        if nearest is None or not arming_due(head, nearest[1]):
            return None
        return nearest

    def _armable(self, entry: queue_rules.QueuedPlan) -> bool:
        """Whether the plan may be armed now: not late (it starts at once), not held back for
        its rehearsal, its binary not still downloading, its arming not failed already."""
        name = entry.plan.name
        checking = name in self._preflight_running or name in self._preflight_due
        return not (
            entry.late
            or queue_rules.rehearsal_pending(entry) is not None
            or name in self._arm_failed
            or (checking and not self._home.upgrade_bin(name).exists())
        )

    def _disarm_reason(self, armed: Plan, wanted: tuple[queue_rules.QueuedPlan, int] | None) -> str:
        entry = queue_rules.get(self._queue, armed.name)
        if entry is None or entry.status is not PlanStatus.PENDING:
            status = "gone" if entry is None else entry.status.value
            return f"the plan is {status}"
        if entry.plan != armed:
            return "the plan was replaced"
        if wanted is not None:
            return f"plan {wanted[0].plan.name} switches first (at head {wanted[1]})"
        switch_at = self._switch_head(entry)
        if self._saga is not None and self._saga.switch_at != switch_at:
            return f"its switch moved to head {switch_at}"
        return f"the head ({self._head}) is more than {ARM_AHEAD_BLOCKS} blocks before the switch"

    def _disarm(self, reason: str) -> None:
        saga = self._saga
        if saga is not None and saga.armed and saga.disarm(reason):
            logger.info("disarming upgrade {}: {}", saga.plan.name, reason)

    def _go(self, saga: UpgradeSaga, entry: queue_rules.QueuedPlan) -> None:
        """The switch: the saga stops the node now; the queue says the plan runs."""
        head = self._head
        if head is not None and queue_rules.overshoot(entry.plan.height, head):
            # First seen past H-1 (RPC was down, or a fast sync): it runs at once all the
            # same, marked late; the saga reports the overshoot.
            entry.late = True
        if saga.go(observed_height=head, late=entry.late):
            entry.status = PlanStatus.RUNNING
            self._save_queue()

    def _maybe_start(self, chosen: queue_rules.QueuedPlan | None = None) -> None:
        """Start the due plan's saga (or `chosen`'s: a window plan in its slot): an armed saga
        of that plan goes; one armed for another plan is disarmed first."""
        if self._rollback is not None:
            return
        entry = chosen or queue_rules.due(self._queue, self._head)
        if entry is None:
            return
        saga = self._saga
        if saga is not None:
            if saga.armed and saga.plan == entry.plan:
                self._go(saga, entry)
            elif saga.armed:
                self._disarm(f"plan {entry.plan.name} is due first")
            return  # a disarmed saga's end starts this one
        name = entry.plan.name
        if self._held_back_for_rehearsal(entry):
            return
        checking = name in self._preflight_running or name in self._preflight_due
        if checking and not self._home.upgrade_bin(name).exists():
            # Its download started hours ago and is still running: the upgrade starts when it
            # ends (late, but on the right binary) rather than failing for a missing binary.
            if name not in self._waiting_for_download:
                self._waiting_for_download.add(name)
                logger.warning("upgrade {} is due but its binary is still downloading", name)
            return
        try:
            from_target = read_current(self._home).target
        except LayoutError as exc:
            from_target = None
            reason = f"cannot read `current`: {exc}"
        else:
            reason = ""
        plan = entry.plan
        if from_target is None:
            logger.error("upgrade {} cannot start: {}", plan.name, reason)
            self._finish_entry(entry, PlanStatus.FAILED, reason)
            self._bus.publish(
                ev.UpgradeFailed(
                    name=plan.name, height=plan.height, step="preflight", reason=reason
                )
            )
            return
        journal = Journal(
            plan=plan,
            step=Step.STOPPING,
            from_target=from_target,
            to_target=f"upgrades/{plan.name}",
            observed_height=self._head,
            late=entry.late,
            started_at=time.time(),
        )
        # Not armed ahead (first seen at its switch, or its arming did not fit): armed and
        # told to go at once.
        self._go(self._start_saga(journal, resume=False), entry)

    def _start_saga(
        self,
        journal: Journal,
        *,
        resume: bool,
        armed_head: int | None = None,
        switch_at: int | None = None,
    ) -> UpgradeSaga:
        saga = UpgradeSaga(
            journal=journal,
            home=self._home,
            config=self._config,
            bus=self._bus,
            journal_path=self._journal_file,
            on_post_upgrade=functools.partial(
                start_signing_check, config=self._config, publish=self._bus.publish
            ),
        )
        saga.armed_head, saga.switch_at = armed_head, switch_at
        if resume:
            saga.resuming()
        self._saga = saga
        self.workers.run(
            f"upgrade-{journal.plan.name}",
            lambda _stopping: _SagaFinished(saga.run(resume=resume)),
        )
        return saga

    def _on_saga_finished(self, result: SagaResult) -> None:
        journal = self._saga.journal if self._saga is not None else None
        self._saga = None
        if result.outcome is Outcome.DISARMED:
            # Nothing changed: the plan stays pending; a problem found while armed is a
            # preflight failure found ahead (re-checked as any), and it is not armed again
            # until a preflight passes.
            if result.problems:
                self._arm_failed.add(result.name)
                self._on_preflight(_PreflightDone(result.name, result.height, [*result.problems]))
            self._maybe_start()
            self._review_arming()
            return
        if result.outcome is Outcome.COMPLETED and result.first_head is not None:
            # A chain that does not move after the upgrade while the node answers RPC may be
            # waiting for 2/3 of the validators to upgrade too: reported, never rolled back.
            self.timers.schedule(
                "network-wait",
                self._config.upgrade.network_wait,
                _NetworkCheck(result.name, result.height, result.first_head, time.monotonic()),
            )
        entry = queue_rules.get(self._queue, result.name)
        if entry is not None:
            entry.late = entry.late or result.late
            status = PlanStatus.FAILED if result.outcome is Outcome.FAILED else PlanStatus.COMPLETED
            if journal is not None and status is PlanStatus.COMPLETED:
                # What an operator's rollback needs: the binary before, and the backup.
                entry.from_target, entry.backup = journal.from_target, journal.backup
            self._finish_entry(entry, status, result.detail)
        self._schedule_prestage()
        self._maybe_start()
        self._review_arming()

    def _on_network_check(self, check: _NetworkCheck) -> None:
        head = self._head
        if head is not None and head > check.first_head:
            return
        seconds = time.monotonic() - check.since
        logger.warning(
            "head has not moved past {} for {:.0f}s after upgrade {}: waiting for the network",
            check.first_head,
            seconds,
            check.name,
        )
        self._bus.publish(
            ev.UpgradeWaitingForNetwork(
                name=check.name, height=check.height, head=head, seconds=seconds
            )
        )

    def _finish_entry(self, entry: queue_rules.QueuedPlan, status: PlanStatus, detail: str) -> None:
        entry.status = status
        entry.finished_at = time.time()
        entry.result = detail
        self._save_queue()

    # preflight

    def _preflight(self, plan: Plan) -> None:
        """Have `plan` checked by the preflight job (the running one's next round)."""
        self._preflight_due[plan.name] = plan
        self._run_preflights()

    def _run_preflights(self) -> None:
        """One job checks every plan due, lowest height first, and reports each: however many
        plans are queued, one thread and one measurement of the data dir per round."""
        if self._preflight_job or not self._preflight_due:
            return
        plans = sorted(self._preflight_due.values(), key=lambda plan: plan.height)
        self._preflight_due = {}
        self._preflight_running = {plan.name for plan in plans}
        self._preflight_job = True
        home, config, publish, me = self._home, self._config, self._bus.publish, self.actor_ref

        def report(plan: Plan, problems: list[str]) -> None:
            tell_if_alive(me, _PreflightDone(plan.name, plan.height, problems))

        def check(stopping: threading.Event) -> _PreflightsEnded:
            # A missing binary is downloaded here, in this job, from registration on: the
            # saga at H only re-checks (quick) and never downloads.
            preflight_plans(home, config, plans, publish=publish, report=report, stopping=stopping)
            return _PreflightsEnded()

        self.workers.run("preflight", check)

    def _schedule_prestage(self) -> None:
        """Tell the backup actor which plan the one pre-staged copy is for, when that changed:
        it copies the bulk while the node runs (relabelling the copy of a plan that went), so
        that at H only what changed since is copied."""
        if self._config.backup.skip:
            return
        horizon = self._config.backup.prestage_horizon
        if horizon > 0 and self._head is None:
            return  # cannot tell yet whether the next plan is within the horizon
        owner = staging_owner(self._queue.plans, self._head, horizon)
        if owner != self._staging_owner:
            self._staging_owner = owner
            self._bus.tell("backup", PrestageBackup(owner, self._head))

    def _refresh_prestage(self, plan: Plan) -> None:
        """Shortly before H: bring the plan's staging copy up to date once more."""
        if not self._config.backup.skip and self._staging_owner == plan.name:
            self._bus.tell("backup", PrestageBackup(plan.name, self._head))

    def _on_preflight(self, result: _PreflightDone) -> None:
        self._preflight_running.discard(result.name)
        if result.name in self._waiting_for_download:
            self._waiting_for_download.discard(result.name)
            self._maybe_start()
        entry = queue_rules.get(self._queue, result.name)
        if entry is None or entry.status is not PlanStatus.PENDING:
            return
        if entry.rehearsal is not None and not entry.rehearsal.ok and entry.plan.rehearse:
            result = msgspec.structs.replace(
                result, problems=[*result.problems, f"rehearsal failed: {entry.rehearsal.reason}"]
            )
        if result.problems:
            logger.error(
                "preflight of {} (height {}) failed: {}",
                result.name,
                result.height,
                "; ".join(result.problems),
            )
            self._bus.publish(
                ev.PlanPreflightFailed(
                    name=result.name, height=result.height, problems=result.problems
                )
            )
            self.timers.schedule(
                f"preflight-{result.name}", PREFLIGHT_RECHECK, _PreflightDue(result.name)
            )
        else:
            self._arm_failed.discard(result.name)
            if self._preflight_ok.get(result.name) is False:
                logger.info("preflight of {} passes now", result.name)
        self._preflight_ok[result.name] = not result.problems

    # persistence

    def _load_queue(self) -> QueueState:
        try:
            return state.read_queue(self._home)
        except PlanError as exc:
            aside = state.move_aside(state.queue_file(self._home))
            logger.error("{}; moved to {}; plans in the files are read again", exc, aside)
            return QueueState()

    def _save_queue(self) -> None:
        state.write_queue(self._home, self._queue)
        self._tell_next_trigger()

    def _tell_next_trigger(self) -> None:
        # The height actor polls faster near this height (SPEC §16).
        heights = (self._window_trigger(entry) for entry in queue_rules.pending(self._queue))
        self._bus.tell("height", NextTrigger(next_trigger_height(heights)))


def arming_due(head: int, switch_at: int) -> bool:
    """Whether a plan whose switch waits for head `switch_at` is armed at `head`: from
    ARM_AHEAD_BLOCKS before it on (a window plan's slot may have begun: it waits for the
    survey's go)."""
    return head >= switch_at - ARM_AHEAD_BLOCKS
