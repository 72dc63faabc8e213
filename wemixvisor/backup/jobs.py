"""The BackupActor's operations, each run as a job off its mailbox (SPEC §7).

Each `*_body` returns the job's body: it copies, publishes the backup.* events, and returns
what settles the request (answers the futures of those waiting) once the actor knows the
operation is over. A body that needs the node down takes the node's lease first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.backup.admission import Kind
from wemixvisor.bus import Bus
from wemixvisor.config import Config
from wemixvisor.home import state
from wemixvisor.home.layout import Home
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import (
    BackupAccepted,
    CreateBackup,
    DeleteBackup,
    FinishBackup,
    PruneBackups,
    RestoreBackup,
)
from wemixvisor.messages.node import NodeState
from wemixvisor.node.client import NodeClient, NodeUnavailable
from wemixvisor.plans.queue import PlanError, PlanStatus

PROGRESS_INTERVAL = 0.5
"""Seconds between two backup.progress events of one operation (at most 2 per second)."""

SEAL_WAIT = 6 * 3600.0
"""Bound on the wait of the backup at H for the saga to ask for its seal (the saga asks on
every path; this only keeps a job from waiting forever)."""

_STOPPED = (NodeState.STOPPED, NodeState.EXITED, NodeState.FATAL)

Settle = Callable[[], None]
Body = Callable[[], Settle | None]


@dataclass
class Operation:
    """The operation running: its id, kind, plan (pre-staging, upgrade) and cancel flag."""

    id: str
    kind: Kind
    plan: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    head: int | None = None  # pre-staging: the chain head as it was asked for


@dataclass(frozen=True)
class JobContext:
    """What every job needs of its actor, captured when it starts."""

    config: Config
    home: Home
    bus: Bus
    available: int | None
    shutting_down: threading.Event
    staging: backups.StagingWatches | None = None  # the actor's watch on its staging copy


def fail(future: Any, exc: BaseException) -> None:
    """Raise `exc` to whoever waits on `future` (if anyone)."""
    if future is not None:
        future.set_exception((type(exc), exc, exc.__traceback__))


def answer(future: Any, value: Any) -> None:
    """Answer `value` to whoever waits on `future` (if anyone)."""
    if future is not None:
        future.set(value)


class ProgressEvents:
    """A progress callback that publishes backup.progress at most every PROGRESS_INTERVAL."""

    def __init__(self, bus: Bus, op_id: str) -> None:
        self._bus = bus
        self.op_id = op_id
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._bus.publish(ev.BackupProgress(id=self.op_id, bytes_done=done, bytes_total=total))


def create_body(ctx: JobContext, op: Operation, request: CreateBackup) -> Body:
    """`backup create`: the bulk while the node runs, the last pass with the node held."""
    config, bus, home, available = ctx.config, ctx.bus, ctx.home, ctx.available
    shutting_down = ctx.shutting_down
    node = NodeClient(bus, f"backup {op.id}", config.node.shutdown_grace)
    held = [False]

    def quiesce() -> None:
        lease = node.acquire(f"last pass of backup {op.id}")
        if not lease.granted:
            raise backups.BackupError(f"{lease.holder} started meanwhile: backup abandoned")
        held[0] = True
        status = node.stop(f"backup {op.id}")
        if status.state not in _STOPPED:
            raise backups.BackupError(f"the node did not stop (state {status.state})")

    def resume() -> None:
        if held[0]:
            # A daemon shutting down keeps the node down.
            if not shutting_down.is_set():
                node.start(f"backup {op.id} copied")
            node.release()
            held[0] = False

    def started(target: Path) -> None:
        bus.publish(ev.BackupStarted(id=target.name, label=request.label, kind="full"))

    def body() -> Settle | None:
        try:
            status = node.status()
        except NodeUnavailable as exc:
            fail(request.done, backups.BackupError(str(exc)))
            return None
        if status.lease is not None:
            fail(request.done, backups.BackupBusy(f"busy: the node is held by {status.lease}"))
            return None
        running = status.state not in _STOPPED
        answer(request.done, BackupAccepted(op.id, stops_node=running))
        try:
            manifest = backups.create_backup(
                config.node.data_dir,
                config.backup.dir,
                request.label,
                backup_id=op.id,
                quiesce=quiesce if running else None,
                resume=resume if running else None,
                progress=ProgressEvents(bus, op.id),
                cancel=op.cancel,
                available=available,
                on_target=started,
            )
        except backups.BackupCancelled:
            error = backups.BackupError("cancelled: the daemon is stopping")
            _report_failure(bus, op.id, request.label, "full", error)
            return None
        except (backups.BackupError, OSError, NodeUnavailable) as exc:
            _report_failure(bus, op.id, request.label, "full", exc)
            return None
        finally:
            if held[0]:
                node.release()
        _report_completed(bus, manifest)
        _auto_prune(config, home, bus)
        return None

    return body


def prestage_body(ctx: JobContext, op: Operation) -> Body:
    """The bulk of the next plan's backup, copied while the node runs, into the one staging
    copy; gives way when cancelled. Without a plan, the staging copy is removed."""
    config, bus, home, available = ctx.config, ctx.bus, ctx.home, ctx.available
    if op.plan is None:
        return _discard_body(ctx)
    plan_name = op.plan
    label = backups.upgrade_label(plan_name)

    def body() -> Settle | None:
        if not _plan_pending(home, plan_name):
            logger.info("not pre-staging a backup for {}: the plan is no longer pending", plan_name)
            return None
        target_id = [op.id]
        progress = ProgressEvents(bus, op.id)

        def started(target: Path) -> None:
            target_id[0] = progress.op_id = target.name
            bus.publish(ev.BackupStarted(id=target.name, label=label, kind="prestage"))

        # The copy's changes are tracked from before its scan until H (the last watch, of an
        # older copy, goes now: this copy changes meanwhile).
        if ctx.staging is not None:
            ctx.staging.close()
        tracker = backups.ChangeTracker(config.node.data_dir)
        try:
            target, result = backups.prestage_upgrade_backup(
                config.node.data_dir,
                config.backup.dir,
                plan_name,
                progress=progress,
                cancel=op.cancel,
                available=available,
                on_target=started,
                tracker=tracker,
                head=op.head,
            )
        except backups.BackupCancelled:
            tracker.close()
            logger.info("pre-staging for {} gave way to another backup operation", plan_name)
            bus.publish(
                ev.BackupCancelled(
                    id=target_id[0],
                    label=label,
                    reason="gave way to another backup operation",
                )
            )
            return None
        except (backups.BackupError, OSError) as exc:
            tracker.close()
            _report_failure(bus, target_id[0], label, "prestage", exc)
            return None
        except BaseException:
            tracker.close()
            raise
        if ctx.staging is None:
            tracker.close()
        else:
            ctx.staging.put(backups.StagingWatch.of(tracker, plan_name, target, result))
        logger.info(
            "pre-staged {} for {}: {} bytes, {} copied in {:.2f}s",
            target.name,
            plan_name,
            result.total_bytes,
            result.changed_bytes,
            result.seconds,
        )
        staged = ev.BackupStaged(
            id=target.name,
            label=label,
            plan=plan_name,
            total_bytes=result.total_bytes,
            changed_bytes=result.changed_bytes,
            seconds=result.seconds,
        )
        bus.publish(staged)
        bus.tell("orchestrator", staged)  # a plan's rehearsal runs on this copy (SPEC §19)
        return None

    return body


def _discard_body(ctx: JobContext) -> Body:
    """No plan needs a pre-staged copy (cancelled, failed, none left): the copy goes, unless
    an unfinished upgrade still needs it."""
    config, bus, home = ctx.config, ctx.bus, ctx.home

    def body() -> Settle | None:
        if ctx.staging is not None:
            ctx.staging.close()
        try:
            needed = backups.journal_needs(home, config.backup.dir)
            removed = backups.discard_staging(config.backup.dir, keep=None, needed=needed)
        except (backups.BackupError, OSError) as exc:
            logger.error("removing the pre-staged copy failed: {}", describe(exc))
            return None
        if removed:
            logger.info("removed pre-staged copies no plan needs: {}", ", ".join(removed))
            bus.publish(ev.BackupPruned(removed=removed))
        return None

    return body


def finish_body(ctx: JobContext, op: Operation, request: FinishBackup) -> Body:
    """The upgrade's backup at H: what changed since staging is copied while the saga holds
    the node stopped; the saga gets a `PendingSeal` at once and asks for the seal once the
    node runs again, and the backup only counts (is complete) once sealed."""
    config, bus, home, available = ctx.config, ctx.bus, ctx.home, ctx.available
    label = backups.upgrade_label(request.plan_name)

    def body() -> Settle | None:
        target_id = [op.id]
        progress = ProgressEvents(bus, op.id)

        def started(target: Path) -> None:
            target_id[0] = progress.op_id = target.name
            bus.publish(ev.BackupStarted(id=target.name, label=label, kind="upgrade"))

        watch = None if ctx.staging is None else ctx.staging.take(request.plan_name)
        try:
            unsealed = backups.copy_upgrade_backup(
                config.node.data_dir,
                config.backup.dir,
                request.plan_name,
                watch=watch,
                since=request.since,
                progress=progress,
                available=available,
                on_target=started,
            )
        except (backups.BackupError, OSError) as exc:
            _report_failure(bus, target_id[0], label, "upgrade", exc)
            error = backups.BackupError(describe(exc))
            return lambda: fail(request.done, error)
        seal = backups.PendingSeal(unsealed.id)
        logger.info(
            "backup {} copied ({} bytes, {}) in {:.3f}s; sealed once the node runs",
            unsealed.id,
            unsealed.changed_bytes,
            "tracked changes" if unsealed.tracked else "one scan",
            unsealed.copy_seconds,
        )
        answer(request.done, seal)
        if not seal.wait_requested(op.cancel, SEAL_WAIT):
            unsealed.abandon()
            seal.failed(backups.BackupError(f"backup {unsealed.id} was never sealed"))
            _report_failure(bus, unsealed.id, label, "upgrade", backups.BackupError("never sealed"))
            return None
        try:
            manifest = unsealed.seal()
        except (backups.BackupError, OSError) as exc:
            error = backups.BackupError(f"sealing backup {unsealed.id} failed: {describe(exc)}")
            seal.failed(error)
            _report_failure(bus, unsealed.id, label, "upgrade", exc)
            return None
        seal.sealed()
        _report_completed(bus, manifest)
        # The upgrade goes on at once; pruning old backups is no part of its downtime.
        _auto_prune(config, home, bus)
        return None

    return body


def restore_body(ctx: JobContext, op: Operation, request: RestoreBackup) -> Body:
    """A restore: the node stopped (held by this job, or by a rolling-back saga) meanwhile."""
    config, bus, available = ctx.config, ctx.bus, ctx.available
    shutting_down = ctx.shutting_down
    # A rollback's restore runs for the saga, which holds the node: it is neither stopped
    # nor started here. An operator's restore takes the node's lease first.
    owns_node = request.upgrade is None
    node = NodeClient(bus, f"restore {op.id}", config.node.shutdown_grace)

    def body() -> Settle | None:
        if owns_node:
            try:
                lease = node.acquire(f"restore of backup {request.backup_id}")
            except NodeUnavailable as exc:
                lease_error: backups.BackupError | None = backups.BackupError(str(exc))
            else:
                lease_error = (
                    None
                    if lease.granted
                    else backups.BackupBusy(f"busy: the node is held by {lease.holder}")
                )
            if lease_error is not None:
                fail(request.done, lease_error)
                return lambda: fail(request.finished, lease_error)
        answer(request.done, op.id)
        bus.publish(ev.BackupStarted(id=op.id, label=request.backup_id, kind="restore"))
        began = time.monotonic()
        try:
            try:
                if owns_node:
                    status = node.stop(f"restore of backup {request.backup_id}")
                    if status.state not in _STOPPED:
                        raise backups.BackupError(f"the node did not stop (state {status.state})")
                aside = backups.restore_backup(
                    config.backup.dir,
                    request.backup_id,
                    config.node.data_dir,
                    progress=ProgressEvents(bus, op.id),
                    available=available,
                )
            finally:
                # The node runs again either way: after a failure the live data is intact.
                if owns_node:
                    if not shutting_down.is_set():
                        node.start(f"restore of {request.backup_id}")
                    node.release()
        except (backups.BackupError, OSError, NodeUnavailable) as exc:
            _report_failure(bus, op.id, request.backup_id, "restore", exc)
            error = backups.BackupError(describe(exc))
            return lambda: fail(request.finished, error)
        seconds = time.monotonic() - began
        logger.warning(
            "restored backup {} into {}; the data it replaced is in {}",
            request.backup_id,
            config.node.data_dir,
            aside,
        )
        bus.publish(
            ev.BackupRestored(
                id=op.id, backup_id=request.backup_id, aside=str(aside), seconds=seconds
            )
        )
        return lambda: answer(request.finished, str(aside))

    return body


def prune_body(ctx: JobContext, request: PruneBackups) -> Body:
    """Retention: incomplete and surplus backups go, never one a journal needs."""
    config, bus, home = ctx.config, ctx.bus, ctx.home

    def body() -> Settle | None:
        try:
            removed = _prune(config, home, bus)
        except (backups.BackupError, OSError) as exc:
            error = backups.BackupError(describe(exc))
            return lambda: fail(request.done, error)
        return lambda: answer(request.done, removed)

    return body


def delete_body(ctx: JobContext, request: DeleteBackup) -> Body:
    """`backup delete`: any backup, unless an unfinished upgrade needs it."""
    config, bus, home = ctx.config, ctx.bus, ctx.home

    def body() -> Settle | None:
        try:
            needed = backups.journal_needs(home, config.backup.dir)
            path = backups.delete_backup(
                config.backup.dir,
                request.backup_id,
                data_dir=config.node.data_dir,
                needed=needed,
            )
        except (ValueError, backups.BackupError) as exc:
            error: Exception = exc
            return lambda: fail(request.done, error)
        except OSError as exc:
            failure = backups.BackupError(f"cannot delete {request.backup_id}: {describe(exc)}")
            return lambda: fail(request.done, failure)
        logger.info("deleted backup {} ({})", request.backup_id, path)
        bus.publish(ev.BackupDeleted(id=request.backup_id, path=str(path)))
        return lambda: answer(request.done, str(path))

    return body


def describe(exc: BaseException) -> str:
    """An error as the operator reads it (an OSError without its errno noise)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _report_failure(bus: Bus, op_id: str, label: str, kind: str, exc: BaseException) -> None:
    logger.error("backup {} ({}) failed: {}", op_id, kind, describe(exc))
    bus.publish(ev.BackupFailed(id=op_id, label=label, error=describe(exc), kind=kind))


def _report_completed(bus: Bus, manifest: backups.Manifest) -> None:
    stopped = manifest.stopped_seconds
    logger.info(
        "backup {} complete: {} bytes in {} files, {} copied in {:.2f}s{}",
        manifest.id,
        manifest.total_bytes,
        manifest.file_count,
        manifest.changed_bytes,
        manifest.seconds,
        "" if stopped is None else f"; the node was stopped for {stopped:.3f}s",
    )
    bus.publish(
        ev.BackupCompleted(
            id=manifest.id,
            label=manifest.label,
            total_bytes=manifest.total_bytes,
            changed_bytes=manifest.changed_bytes,
            seconds=manifest.seconds,
            kind=manifest.kind,
            node_stopped_seconds=manifest.stopped_seconds,
        )
    )


def _prune(config: Config, home: Home, bus: Bus) -> list[str]:
    protected = backups.protected_backups(home, config.backup.dir)
    removed = backups.prune_backups(
        config.backup.dir, config.backup.keep, protected, data_dir=config.node.data_dir
    )
    if removed:
        logger.info("pruned backups {}", ", ".join(removed))
        bus.publish(ev.BackupPruned(removed=removed))
    return removed


def _auto_prune(config: Config, home: Home, bus: Bus) -> None:
    try:
        _prune(config, home, bus)
    except (backups.BackupError, OSError) as exc:
        logger.error("pruning after the backup failed: {}", describe(exc))


def _plan_pending(home: Home, plan_name: str) -> bool:
    """False once the queue shows the plan running or over; True when unknown (the
    orchestrator may not have saved a plan it just registered)."""
    try:
        queue = state.read_queue(home)
    except PlanError:
        return True
    for entry in queue.plans:
        if entry.plan.name == plan_name:
            return entry.status is PlanStatus.PENDING
    return True
