"""The saga's steps (SPEC §5), each run on the saga's worker thread.

Each step may block: it talks to the NodeActor (through its lease, `NodeClient`) and to the
BackupActor with futures and bounded waits. A local failure raises StepFailed; the saga then
aborts or rolls back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.config import Config
from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.home.layout import Home, LayoutError
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import FinishBackup, RestoreBackup
from wemixvisor.messages.node import NodeState, NodeStatus
from wemixvisor.node.args import NodeArgsError, upgrade_node_args
from wemixvisor.node.client import NodeClient, NodeUnavailable
from wemixvisor.plans.queue import Plan, plan_to_object
from wemixvisor.upgrade import hooks
from wemixvisor.upgrade.journal import Journal, Step, save_journal
from wemixvisor.upgrade.preflight import custom_preupgrade_path

BACKUP_TIMEOUT = 6 * 3600.0
"""Bound on the wait for the backup at H (and a rollback's restore): generous, because without a
pre-staged copy it is a full copy of the data dir."""

RPC_RETRY = 0.003
"""Seconds between two RPC attempts while waiting for the new binary's first answer: that
answer ends the downtime."""

STATUS_RECHECK = 1.0
"""Seconds after which the node's status is asked again without any state change reported (a
restarted NodeActor forgets its watchers)."""

_DOWN = (NodeState.FATAL, NodeState.EXITED, NodeState.STOPPED)
_UP = (NodeState.STARTING, NodeState.RUNNING)


class StepFailed(Exception):
    """A local failure of a step: the saga rolls back."""

    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


@dataclass
class StepContext:
    """What the steps share: the upgrade, where it happens, and its timings."""

    journal: Journal
    home: Home
    config: Config
    bus: Bus
    journal_path: Path
    node: NodeClient
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    stop_began: float | None = None  # monotonic
    start_requested_at: float = field(default_factory=time.time)
    first_answer_at: float | None = None  # monotonic: the new binary's first RPC answer
    first_head: int | None = None
    seal: backups.PendingSeal | None = None  # the backup at H, copied but not sealed yet

    @property
    def plan(self) -> Plan:
        """The plan being applied."""
        return self.journal.plan


def stop_node(ctx: StepContext) -> None:
    """`stopping`: stop the node and wait until it is down; then DAEMON_RESTART_DELAY."""
    ctx.stop_began = time.monotonic()
    status = ctx.node.stop(f"upgrade {ctx.plan.name}")
    if status.state is not NodeState.STOPPED:
        raise StepFailed(Step.STOPPING, f"node did not stop (state {status.state})")
    delay = ctx.config.upgrade.restart_delay
    if delay > 0:
        time.sleep(delay)


def finish_backup(ctx: StepContext) -> None:
    """`backup`: ask the BackupActor to bring the plan's pre-staged backup up to date and wait
    for the copy (the node is stopped: only what changed since the pre-staging is copied).

    The backup is sealed (flushed and marked complete) once the node runs again: `seal_backup`
    asks for that, `await_seal` waits for it. A daemon killed meanwhile resumes here, and a
    backup of this upgrade that completed is reused.
    """
    if ctx.config.backup.skip:
        return
    journal = ctx.journal
    if journal.backup is not None and _backup_complete(ctx.config, journal.backup):
        return  # resumed after the backup had completed
    done: pykka.ThreadingFuture[backups.PendingSeal] = pykka.ThreadingFuture()
    request = FinishBackup(ctx.plan.name, done=done, since=journal.started_at)
    if not _tell_backup(ctx.bus, request):
        raise StepFailed(Step.BACKUP, "backup failed: no backup actor is running")
    try:
        seal = done.get(timeout=BACKUP_TIMEOUT)
    except pykka.Timeout:
        raise StepFailed(
            Step.BACKUP, f"backup failed: not finished within {BACKUP_TIMEOUT:g}s"
        ) from None
    except backups.BackupError as exc:
        raise StepFailed(Step.BACKUP, f"backup failed: {exc}") from None
    ctx.seal = seal
    # Journaled with the next step, not now (a durable write costs downtime): a daemon killed
    # before that resumes at the stop and makes the backup again, from this very copy.
    journal.backup = seal.id


def seal_backup(ctx: StepContext) -> None:
    """Let the backup at H be sealed now (the node answers again, or will not run): never
    waits."""
    if ctx.seal is not None:
        ctx.seal.request()


def await_seal(ctx: StepContext) -> None:
    """Seal the backup at H and wait for it: the upgrade is reported completed, and the backup
    restored, only once it is complete. A backup that could not be sealed is incomplete: the
    journal forgets it (it is never restored) and the log says so."""
    seal, ctx.seal = ctx.seal, None
    if seal is None:
        return
    seal.request()
    try:
        seal.wait(BACKUP_TIMEOUT)
    except backups.BackupError as exc:
        logger.error("upgrade {}: {}; it is incomplete and will not be used", ctx.plan.name, exc)
        ctx.journal.backup = None
        save_journal(ctx.journal_path, ctx.journal)


def check_resumed_backup(ctx: StepContext) -> None:
    """A resumed upgrade whose backup at H was copied but never sealed (the daemon died in
    between): that copy is incomplete and never counts. Before the switch the backup step runs
    again anyway; after it, while the new binary has not run (the data dir is still as at H)
    the backup is made again now, and otherwise the upgrade goes on without one."""
    backup_id = ctx.journal.backup
    step = ctx.journal.step
    if (
        ctx.config.backup.skip
        or backup_id is None
        or step in (Step.STOPPING, Step.BACKUP, Step.CUSTOM_PREUPGRADE)
        or _backup_complete(ctx.config, backup_id)
    ):
        return
    ctx.journal.backup = None
    if step in (Step.SWITCH, Step.APP_PREUPGRADE):
        logger.warning(
            "upgrade {}: backup {} was not sealed before the daemon stopped; making it again",
            ctx.plan.name,
            backup_id,
        )
        try:
            finish_backup(ctx)
        except StepFailed as failure:
            logger.error("upgrade {}: {}; going on without a backup", ctx.plan.name, failure)
            save_journal(ctx.journal_path, ctx.journal)
        return
    logger.error(
        "upgrade {}: backup {} was not sealed before the daemon stopped and the new binary may"
        " have run since: it is incomplete, will not be restored, and the upgrade goes on"
        " without a backup",
        ctx.plan.name,
        backup_id,
    )
    save_journal(ctx.journal_path, ctx.journal)


def restore_backup(ctx: StepContext, backup_id: str) -> str | None:
    """Restore the upgrade's backup through the BackupActor (the node is stopped); the id
    restored, or None when that failed: the live data is then left as it was."""
    name = ctx.plan.name
    accepted: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    finished: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    request = RestoreBackup(backup_id, done=accepted, finished=finished, upgrade=name)
    if not _tell_backup(ctx.bus, request):
        logger.error("rollback of {}: no backup actor to restore {}", name, backup_id)
        return None
    try:
        aside: str = finished.get(timeout=BACKUP_TIMEOUT)
    except (pykka.Timeout, backups.BackupError) as exc:
        logger.error(
            "rollback of {}: restoring backup {} failed ({}); the old binary starts on the"
            " data as the new one left it",
            name,
            backup_id,
            exc,
        )
        return None
    logger.warning("restored backup {}; the data the new binary wrote is in {}", backup_id, aside)
    return backup_id


def run_custom_preupgrade(ctx: StepContext) -> None:
    """`custom_preupgrade`: the operator's script; a non-zero exit or a timeout fails."""
    script = custom_preupgrade_path(ctx.home, ctx.config)
    if script is None:
        return
    result = hooks.run_custom_preupgrade(
        script,
        ctx.plan,
        home=ctx.home.root,
        timeout=ctx.config.upgrade.hook_timeout,
        base_env=ctx.environ,
    )
    logger.info("custom pre-upgrade: {}\n{}", result.describe(), result.output)
    if not result.ok:
        raise StepFailed(
            Step.CUSTOM_PREUPGRADE,
            f"custom pre-upgrade: {result.describe()}: {result.output[-500:].strip()}",
        )


def run_app_preupgrade(ctx: StepContext) -> None:
    """`app_preupgrade`: `<new bin> pre-upgrade` with its exit-code protocol."""
    upgrade = ctx.config.upgrade
    if not upgrade.app_preupgrade:
        return
    name = ctx.plan.name
    outcome = hooks.run_app_preupgrade(
        ctx.home.upgrade_bin(name),
        cwd=ctx.home.root,
        env=ctx.environ,
        timeout=upgrade.hook_timeout,
        max_retries=upgrade.preupgrade_max_retries,
        on_attempt=lambda attempt: ctx.bus.publish(
            ev.UpgradeStep(name=name, step=Step.APP_PREUPGRADE.value, attempt=attempt)
        ),
    )
    for attempt in outcome.attempts:
        logger.info("app pre-upgrade: {}\n{}", attempt.describe(), attempt.output)
    if not outcome.ok:
        raise StepFailed(Step.APP_PREUPGRADE, outcome.reason)


def prepare_args(ctx: StepContext) -> None:
    """While the upgrade is armed, before the stop: journal the node's arguments and those the
    plan declares (the quick preflight right before has checked the declaration; a record it
    cannot make stays None). A plan with `info.node_args` leaves its copy beside the new binary
    now: the binary's arguments are read from there when it starts, and written now it adds no
    downtime. A copy left there by an earlier arming of another version of the plan is
    rewritten too, so that the binary never starts with arguments the plan no longer gives."""
    try:
        ctx.journal.from_args = list(ctx.node.status().args)
    except NodeUnavailable:
        ctx.journal.from_args = None
    try:
        directory = ctx.home.target_dir(ctx.journal.to_target)
        ctx.journal.to_args = upgrade_node_args(directory, ctx.plan.info)
    except (LayoutError, NodeArgsError) as exc:
        logger.warning("upgrade {}: node arguments unknown: {}", ctx.plan.name, exc)
    declares = ctx.plan.info is not None and "node_args" in ctx.plan.info
    if declares or _plan_copy(ctx).exists():
        copy_plan(ctx)


def copy_plan(ctx: StepContext) -> None:
    """Keep the plan beside the new binary: a record for the operator."""
    # Written while the new binary starts, not before: a durable write here would add to
    # the downtime.
    atomic_write_bytes(_plan_copy(ctx), msgspec.json.encode(plan_to_object(ctx.plan)))


def _plan_copy(ctx: StepContext) -> Path:
    return ctx.home.target_dir(ctx.journal.to_target) / "upgrade-info.json"


def verify(ctx: StepContext) -> None:
    """`verifying`: alive past STARTSECS without an unexpected exit, and answering RPC.

    The node's state changes arrive as events (the saga watches the node): its status is asked
    when one arrives, not polled. RPC is tried every few ms until it answers, since the first
    answer ends the downtime; its head is the old binary's last block, since the new one
    continues from the same data.
    """
    config = ctx.config
    copy_plan(ctx)
    deadline = time.monotonic() + config.upgrade.verify_timeout
    alive_for = min(config.node.startsecs, config.upgrade.verify_timeout)
    client = ChainClient(config.rpc.address, timeout=min(config.rpc.timeout, 1.0))
    changes = ctx.node.watch()
    try:
        status, asked_at = ctx.node.status(), time.monotonic()
        while True:
            _check_alive(status, ctx.start_requested_at)
            if ctx.first_answer_at is None and status.state in _UP:
                head = _head_quietly(client)
                if head is not None:
                    ctx.first_answer_at = time.monotonic()
                    ctx.first_head = head
                    seal_backup(ctx)  # the downtime is over: the backup's flush may run
                    status, asked_at = ctx.node.status(), time.monotonic()
                    continue
            now = time.monotonic()
            if ctx.first_answer_at is None:
                wait = RPC_RETRY
            elif status.state is NodeState.RUNNING and status.uptime is not None:
                # Still RUNNING unless a state change says otherwise: no need to ask again.
                uptime = status.uptime + (now - asked_at)
                if uptime >= alive_for:
                    return
                wait = alive_for - uptime
            else:
                wait = STATUS_RECHECK
            if now >= deadline:
                status = ctx.node.status()
                _check_alive(status, ctx.start_requested_at)
                raise StepFailed(Step.VERIFYING, _verify_timeout_reason(ctx, status))
            recheck_at = asked_at + STATUS_RECHECK
            changed = changes.wait(min(wait, deadline - now, recheck_at - now))
            if changed or time.monotonic() >= recheck_at:
                status, asked_at = ctx.node.status(), time.monotonic()
    finally:
        ctx.node.unwatch(changes)
        client.close()


def _check_alive(status: NodeStatus, since: float) -> None:
    crashes = [e for e in status.exits if e.at >= since and not e.expected]
    if crashes:
        last = crashes[-1]
        how = f"signal {last.signal}" if last.signal else f"exit code {last.exit_code}"
        raise StepFailed(Step.VERIFYING, f"new binary exited ({how})")
    if status.state in _DOWN:
        raise StepFailed(Step.VERIFYING, f"new binary is {status.state}")


def _verify_timeout_reason(ctx: StepContext, status: NodeStatus) -> str:
    if ctx.first_answer_at is None:
        reason = (
            "RPC never answered"
            if status.state is NodeState.RUNNING
            else f"node still {status.state}"
        )
    else:
        reason = "node did not stay up"
    return f"{reason} within {ctx.config.upgrade.verify_timeout:g}s"


def _backup_complete(config: Config, backup_id: str) -> bool:
    try:
        path = backups.backup_dir(config.backup.dir, backup_id)
    except backups.BackupError:
        return False
    return backups.read_manifest(path) is not None


def _tell_backup(bus: Bus, message: Any) -> bool:
    # The backup actor may be between two lives (restarted by its supervisor): wait for it.
    deadline = time.monotonic() + 30
    while not bus.tell("backup", message):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _head_quietly(client: ChainClient) -> int | None:
    try:
        return client.block_number()
    except RpcError:
        return None
