"""BackupActor: makes, pre-stages, finishes, lists, restores and prunes backups (SPEC §7).

The actor only decides and answers; every copy runs on a worker thread that publishes the
backup.* events and reports back with a message. One operation runs at a time. A pre-staging
copy is background work nobody waits for: it gives way to any other request (cancelled at its
next chunk, taken up again afterwards, incrementally). Otherwise a request while busy is refused
with BackupBusy, except the upgrade's own requests (FinishBackup, a rollback's RestoreBackup),
which wait for their turn: an upgrade must get its backup.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.config import Config, apply_reloadable
from wemixvisor.home import state
from wemixvisor.home.layout import Home
from wemixvisor.messages import events as ev
from wemixvisor.messages.backup import (
    CreateBackup,
    FinishBackup,
    ListBackups,
    PrestageBackup,
    PruneBackups,
    RestoreBackup,
)
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.node import GetNodeStatus, NodeState, NodeStatus, StartNode, StopNode
from wemixvisor.plans.queue import PlanError, PlanStatus

PROGRESS_INTERVAL = 0.5
"""Seconds between two backup.progress events of one operation (at most 2 per second)."""

_NODE_ANSWER_TIMEOUT = 30.0  # the node actor may be restarting: how long to keep asking
_STOPPED = (NodeState.STOPPED, NodeState.EXITED, NodeState.FATAL)


class _OperationDone(msgspec.Struct, frozen=True):
    op_id: str


@dataclass
class _Operation:
    id: str
    kind: str  # "full", "prestage", "upgrade", "restore", "prune"
    plan: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


Settle = Callable[[], None]


def _fail(future: Any, exc: BaseException) -> None:
    if future is not None:
        future.set_exception((type(exc), exc, exc.__traceback__))


def _answer(future: Any, value: Any) -> None:
    if future is not None:
        future.set(value)


class _ProgressEvents:
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


class BackupActor(SupervisedActor):
    """Serialises backup operations and runs each on a worker thread."""

    role = "backup"

    def __init__(
        self,
        *,
        config: Config,
        home: Home,
        bus: Bus,
        available: int | None = None,
        failure_sink: FailureSink | None = None,
    ) -> None:
        """`available` overrides the free-space figure of every check (tests, quotas)."""
        super().__init__(failure_sink)
        self._config = config
        self._home = home
        self._bus = bus
        self._available = available
        self._op: _Operation | None = None
        self._waiting: collections.deque[tuple[Any, str]] = collections.deque()
        self._prestage_wanted: list[str] = []
        self._shutting_down = threading.Event()

    def teardown(self) -> None:
        # Workers are daemon threads: they stop at their next chunk, leaving an incomplete
        # backup (pruned later) and the node as it is.
        self._shutting_down.set()
        if self._op is not None:
            self._op.cancel.set()

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case ListBackups():
                return backups.list_backups(self._config.backup.dir)
            case CreateBackup():
                self._on_create(message)
            case PrestageBackup(plan_name=plan_name):
                self._on_prestage(plan_name)
            case FinishBackup():
                self._on_finish(message)
            case RestoreBackup():
                self._on_restore(message)
            case PruneBackups():
                self._on_prune(message)
            case _OperationDone(op_id=op_id):
                if self._op is not None and self._op.id == op_id:
                    self._op = None
                self._next()
            case ConfigChanged(config=config):
                self._config = apply_reloadable(self._config, config)
            case _:
                logger.warning("backup actor: unexpected message {!r}", message)
        return None

    # requests

    def _busy(self) -> bool:
        """Whether a request that cannot wait must be refused now."""
        return bool(self._waiting) or (self._op is not None and self._op.kind != "prestage")

    def _busy_error(self) -> backups.BackupBusy:
        running = self._op.kind if self._op is not None else "queued"
        return backups.BackupBusy(f"busy: a backup operation ({running}) is running; try later")

    def _upgrading(self) -> bool:
        return state.upgrade_in_progress(self._home)

    def _on_create(self, message: CreateBackup) -> None:
        if self._upgrading():
            _fail(message.done, backups.BackupBusy("busy: an upgrade is in progress"))
            return
        if self._busy():
            _fail(message.done, self._busy_error())
            return
        try:
            backup_id = backups.new_backup_id(self._config.backup.dir, message.label)
        except backups.BackupError as exc:
            _fail(message.done, exc)
            return
        _answer(message.done, backup_id)
        self._admit(message, backup_id)

    def _on_prestage(self, plan_name: str) -> None:
        if self._config.backup.skip:
            return
        if self._op is None and not self._waiting:
            self._start(PrestageBackup(plan_name), "")
        elif plan_name not in self._prestage_wanted:
            self._prestage_wanted.append(plan_name)

    def _on_finish(self, message: FinishBackup) -> None:
        with contextlib.suppress(ValueError):
            self._prestage_wanted.remove(message.plan_name)
        if self._op is not None and self._op.kind == "restore":
            _fail(message.done, self._busy_error())
            return
        self._admit(message, "", first=True)

    def _on_restore(self, message: RestoreBackup) -> None:
        fail = message.finished
        try:
            backups.backup_dir(self._config.backup.dir, message.backup_id)
        except backups.BackupError as exc:
            _fail(message.done, exc)
            _fail(fail, exc)
            return
        if message.upgrade is None and (self._upgrading() or self._busy()):
            error = (
                backups.BackupBusy("busy: an upgrade is in progress")
                if self._upgrading()
                else self._busy_error()
            )
            _fail(message.done, error)
            _fail(fail, error)
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        op_id = f"restore-{stamp}-{secrets.token_hex(3)}"
        _answer(message.done, op_id)
        self._admit(message, op_id, first=message.upgrade is not None)

    def _on_prune(self, message: PruneBackups) -> None:
        if self._busy():
            _fail(message.done, self._busy_error())
            return
        self._admit(message, "")

    def _admit(self, request: Any, op_id: str, *, first: bool = False) -> None:
        """Start `request` now, or after the running operation (a pre-staging one is cancelled)."""
        if self._op is None and not self._waiting:
            self._start(request, op_id)
            return
        if first:
            self._waiting.appendleft((request, op_id))
        else:
            self._waiting.append((request, op_id))
        op = self._op
        if op is not None and op.kind == "prestage" and not op.cancel.is_set():
            op.cancel.set()
            finishing = isinstance(request, FinishBackup) and request.plan_name == op.plan
            if op.plan is not None and not finishing and op.plan not in self._prestage_wanted:
                self._prestage_wanted.append(op.plan)

    def _next(self) -> None:
        if self._op is not None:
            return
        if self._waiting:
            request, op_id = self._waiting.popleft()
            self._start(request, op_id)
        elif self._prestage_wanted:
            self._start(PrestageBackup(self._prestage_wanted.pop(0)), "")

    # workers

    def _start(self, request: Any, op_id: str) -> None:
        match request:
            case CreateBackup():
                op = _Operation(op_id, "full")
                body = self._create_body(op, request)
            case PrestageBackup(plan_name=plan_name):
                op = _Operation(f"prestage-{plan_name}", "prestage", plan=plan_name)
                body = self._prestage_body(op)
            case FinishBackup(plan_name=plan_name):
                op = _Operation(f"upgrade-{plan_name}", "upgrade", plan=plan_name)
                body = self._finish_body(op, request)
            case RestoreBackup():
                op = _Operation(op_id, "restore")
                body = self._restore_body(op, request)
            case PruneBackups():
                op = _Operation(f"prune-{secrets.token_hex(3)}", "prune")
                body = self._prune_body(request)
            case _:
                raise TypeError(f"not a backup operation: {request!r}")
        self._op = op
        ref = self.actor_ref

        def run() -> None:
            settle: Settle | None = None
            try:
                settle = body()
            except Exception:  # noqa: BLE001  (the operation must end reported, whatever happened)
                logger.exception("backup operation {} failed unexpectedly", op.id)
            finally:
                # The actor learns first, so that whatever a waiter sends next finds it idle.
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(_OperationDone(op.id))
                if settle is not None:
                    settle()

        threading.Thread(target=run, name=f"backup-{op.kind}", daemon=True).start()

    def _create_body(self, op: _Operation, request: CreateBackup) -> Callable[[], Settle | None]:
        config, bus, home, available = self._config, self._bus, self._home, self._available
        shutting_down = self._shutting_down
        node = _NodeControl(bus, config.node.shutdown_grace)
        stopped = [False]

        def quiesce() -> None:
            if state.upgrade_in_progress(home):
                raise backups.BackupError("an upgrade started meanwhile: backup abandoned")
            node.stop(f"backup {op.id}")
            stopped[0] = True

        def resume() -> None:
            # An upgrade that began meanwhile owns the node; so does a daemon shutting down.
            if stopped[0] and not shutting_down.is_set() and not state.upgrade_in_progress(home):
                bus.tell("node", StartNode(reason=f"backup {op.id} copied"))

        def started(target: Path) -> None:
            bus.publish(ev.BackupStarted(id=target.name, label=request.label, kind="full"))

        def body() -> Settle | None:
            try:
                running = node.state() not in _STOPPED
                manifest = backups.create_backup(
                    config.node.data_dir,
                    config.backup.dir,
                    request.label,
                    backup_id=op.id,
                    quiesce=quiesce if running else None,
                    resume=resume if running else None,
                    progress=_ProgressEvents(bus, op.id),
                    cancel=op.cancel,
                    available=available,
                    on_target=started,
                )
            except backups.BackupCancelled:
                error = backups.BackupError("cancelled: the daemon is stopping")
                _report_failure(bus, op.id, request.label, "full", error)
                return None
            except (backups.BackupError, OSError) as exc:
                _report_failure(bus, op.id, request.label, "full", exc)
                return None
            _report_completed(bus, manifest)
            _auto_prune(config, home, bus)
            return None

        return body

    def _prestage_body(self, op: _Operation) -> Callable[[], Settle | None]:
        config, bus, home, available = self._config, self._bus, self._home, self._available
        plan_name = op.plan or ""
        label = backups.upgrade_label(plan_name)

        def body() -> Settle | None:
            if not _plan_pending(home, plan_name):
                logger.info(
                    "not pre-staging a backup for {}: the plan is no longer pending", plan_name
                )
                return None
            target_id = [op.id]
            progress = _ProgressEvents(bus, op.id)

            def started(target: Path) -> None:
                target_id[0] = progress.op_id = target.name
                bus.publish(ev.BackupStarted(id=target.name, label=label, kind="prestage"))

            try:
                target, result = backups.prestage_upgrade_backup(
                    config.node.data_dir,
                    config.backup.dir,
                    plan_name,
                    progress=progress,
                    cancel=op.cancel,
                    available=available,
                    on_target=started,
                )
            except backups.BackupCancelled:
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
                _report_failure(bus, target_id[0], label, "prestage", exc)
                return None
            logger.info(
                "pre-staged {} for {}: {} bytes, {} copied in {:.2f}s",
                target.name,
                plan_name,
                result.total_bytes,
                result.changed_bytes,
                result.seconds,
            )
            bus.publish(
                ev.BackupStaged(
                    id=target.name,
                    label=label,
                    plan=plan_name,
                    total_bytes=result.total_bytes,
                    changed_bytes=result.changed_bytes,
                    seconds=result.seconds,
                )
            )
            return None

        return body

    def _finish_body(self, op: _Operation, request: FinishBackup) -> Callable[[], Settle | None]:
        config, bus, home, available = self._config, self._bus, self._home, self._available
        label = backups.upgrade_label(request.plan_name)

        def body() -> Settle | None:
            target_id = [op.id]
            progress = _ProgressEvents(bus, op.id)

            def started(target: Path) -> None:
                target_id[0] = progress.op_id = target.name
                bus.publish(ev.BackupStarted(id=target.name, label=label, kind="upgrade"))

            try:
                manifest = backups.finish_upgrade_backup(
                    config.node.data_dir,
                    config.backup.dir,
                    request.plan_name,
                    since=request.since,
                    progress=progress,
                    available=available,
                    on_target=started,
                )
            except (backups.BackupError, OSError) as exc:
                _report_failure(bus, target_id[0], label, "upgrade", exc)
                error = backups.BackupError(_describe(exc))
                return lambda: _fail(request.done, error)
            _report_completed(bus, manifest)
            # The upgrade goes on at once; pruning old backups is no part of its downtime.
            _answer(request.done, manifest.id)
            _auto_prune(config, home, bus)
            return None

        return body

    def _restore_body(self, op: _Operation, request: RestoreBackup) -> Callable[[], Settle | None]:
        config, bus, available = self._config, self._bus, self._available
        shutting_down = self._shutting_down
        node = _NodeControl(bus, config.node.shutdown_grace)
        owns_node = request.upgrade is None

        def body() -> Settle | None:
            bus.publish(ev.BackupStarted(id=op.id, label=request.backup_id, kind="restore"))
            began = time.monotonic()
            try:
                try:
                    if owns_node:
                        node.stop(f"restore of backup {request.backup_id}")
                    aside = backups.restore_backup(
                        config.backup.dir,
                        request.backup_id,
                        config.node.data_dir,
                        progress=_ProgressEvents(bus, op.id),
                        available=available,
                    )
                finally:
                    # The node runs again either way: after a failure the live data is intact.
                    if owns_node and not shutting_down.is_set():
                        bus.tell("node", StartNode(reason=f"restore of {request.backup_id}"))
            except (backups.BackupError, OSError) as exc:
                _report_failure(bus, op.id, request.backup_id, "restore", exc)
                error = backups.BackupError(_describe(exc))
                return lambda: _fail(request.finished, error)
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
            return lambda: _answer(request.finished, str(aside))

        return body

    def _prune_body(self, request: PruneBackups) -> Callable[[], Settle | None]:
        config, bus, home = self._config, self._bus, self._home

        def body() -> Settle | None:
            try:
                removed = _prune(config, home, bus)
            except (backups.BackupError, OSError) as exc:
                error = backups.BackupError(_describe(exc))
                return lambda: _fail(request.done, error)
            return lambda: _answer(request.done, removed)

        return body


class _NodeControl:
    """The node as a worker thread sees it: asks and waits through the bus, bounded."""

    def __init__(self, bus: Bus, grace: float) -> None:
        self._bus = bus
        self._grace = grace

    def state(self) -> NodeState:
        try:
            status: NodeStatus = self._bus.ask_retrying(
                "node", GetNodeStatus(), within=_NODE_ANSWER_TIMEOUT
            )
        except (pykka.ActorDeadError, pykka.Timeout):
            raise backups.BackupError("the node actor does not answer") from None
        return status.state

    def stop(self, reason: str) -> None:
        """Stop the node and wait until it is down; BackupError if it does not go down."""
        within = self._grace + _NODE_ANSWER_TIMEOUT
        deadline = time.monotonic() + within
        done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
        if not self._bus.tell_retrying("node", StopNode(reason=reason, done=done), within=within):
            raise backups.BackupError("no node actor to stop the node")
        try:
            status: NodeStatus = done.get(timeout=max(deadline - time.monotonic(), 0.1))
        except pykka.Timeout:
            raise backups.BackupError("the node did not stop in time") from None
        if status.state not in _STOPPED:
            raise backups.BackupError(f"the node did not stop (state {status.state})")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _report_failure(bus: Bus, op_id: str, label: str, kind: str, exc: BaseException) -> None:
    logger.error("backup {} ({}) failed: {}", op_id, kind, _describe(exc))
    bus.publish(ev.BackupFailed(id=op_id, label=label, error=_describe(exc), kind=kind))


def _report_completed(bus: Bus, manifest: backups.Manifest) -> None:
    logger.info(
        "backup {} complete: {} bytes in {} files, {} copied in {:.2f}s",
        manifest.id,
        manifest.total_bytes,
        manifest.file_count,
        manifest.changed_bytes,
        manifest.seconds,
    )
    bus.publish(
        ev.BackupCompleted(
            id=manifest.id,
            label=manifest.label,
            total_bytes=manifest.total_bytes,
            changed_bytes=manifest.changed_bytes,
            seconds=manifest.seconds,
            kind=manifest.kind,
        )
    )


def _prune(config: Config, home: Home, bus: Bus) -> list[str]:
    protected = backups.protected_backups(home, config.backup.dir)
    removed = backups.prune_backups(config.backup.dir, config.backup.keep, protected)
    if removed:
        logger.info("pruned backups {}", ", ".join(removed))
        bus.publish(ev.BackupPruned(removed=removed))
    return removed


def _auto_prune(config: Config, home: Home, bus: Bus) -> None:
    try:
        _prune(config, home, bus)
    except (backups.BackupError, OSError) as exc:
        logger.error("pruning after the backup failed: {}", _describe(exc))


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
