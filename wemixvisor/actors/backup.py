"""BackupActor: makes, pre-stages, finishes, lists, restores and prunes backups (SPEC §7).

The actor only decides and answers: `wemixvisor.backup.admission` says whether a request
starts now, waits, or is refused as busy; every copy, and every listing, runs as a job that
publishes the backup.* events and reports back with a message. A job that needs the node down
(a restore, a backup's last pass while the node runs) takes the node's lease first: while an
upgrade holds the node, such requests are refused as busy.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Any

import msgspec
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.backup import jobs
from wemixvisor.backup import store as backups
from wemixvisor.backup.admission import Admission, Kind, Load, admit, preempts
from wemixvisor.bus import Bus
from wemixvisor.config import Config, apply_reloadable
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import (
    CreateBackup,
    DeleteBackup,
    FinishBackup,
    ListBackups,
    PrestageBackup,
    PruneBackups,
    RestoreBackup,
)
from wemixvisor.messages.config import ConfigChanged


class _OperationDone(msgspec.Struct, frozen=True):
    op_id: str
    settle: Any = None  # jobs.Settle: answers those waiting, once the actor knows it is idle


def _settle(done: _OperationDone) -> None:
    if done.settle is not None:
        done.settle()


def _kind_of(request: Any) -> Kind:
    match request:
        case CreateBackup():
            return Kind.FULL
        case PrestageBackup():
            return Kind.PRESTAGE
        case FinishBackup():
            return Kind.UPGRADE
        case RestoreBackup(upgrade=upgrade):
            return Kind.RESTORE if upgrade is None else Kind.ROLLBACK_RESTORE
        case PruneBackups():
            return Kind.PRUNE
        case DeleteBackup():
            return Kind.DELETE
    raise TypeError(f"not a backup operation: {request!r}")


class BackupActor(SupervisedActor):
    """Serialises backup operations and runs each as a job."""

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
        self._op: jobs.Operation | None = None
        self._waiting: collections.deque[tuple[Any, str]] = collections.deque()
        # The one staging copy's next owner, copied once nothing else runs or waits.
        self._prestage_wanted: PrestageBackup | None = None
        self._shutting_down = threading.Event()
        # The change tracking of the staging copy (a thread of its own), handed between jobs.
        self._staging = backups.StagingWatches()

    def teardown(self) -> None:
        # Jobs stop at their next chunk, leaving an incomplete backup (pruned later) and the
        # node as it is. A backup at H not sealed yet stays incomplete.
        self._shutting_down.set()
        if self._op is not None:
            self._op.cancel.set()

    def release(self) -> None:
        # Stopped or failed: the watch on the staging copy goes (the next actor has none, and
        # its backup at H scans).
        self._staging.close()

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case ListBackups():
                self._list()
            case (
                CreateBackup()
                | PrestageBackup()
                | FinishBackup()
                | RestoreBackup()
                | PruneBackups()
                | DeleteBackup()
            ):
                self._request(message)
            case _OperationDone(op_id=op_id):
                if self._op is not None and self._op.id == op_id:
                    self._op = None
                # The actor learns first, so that whatever a waiter sends next finds it idle.
                _settle(message)
                self._next()
            case ConfigChanged(config=config):
                self._config = apply_reloadable(self._config, config)
            case _:
                logger.warning("backup actor: unexpected message {!r}", message)
        return None

    def _list(self) -> None:
        """Reading every manifest can take a while: a job answers the ask."""
        reply = self.reply_later()
        backup_dir, data_dir = self._config.backup.dir, self._config.node.data_dir

        def job(_stopping: threading.Event) -> None:
            try:
                listed = backups.list_backups(backup_dir, data_dir)
            except Exception as exc:  # noqa: BLE001 - the asker gets whatever went wrong
                jobs.fail(reply, exc)
            else:
                jobs.answer(reply, listed)

        self.workers.run("backup-list", job)

    # requests

    def _load(self) -> Load:
        return Load(self._op.kind if self._op is not None else None, len(self._waiting))

    def _busy_error(self) -> backups.BackupBusy:
        running = self._op.kind.value if self._op is not None else "queued"
        return backups.BackupBusy(f"busy: a backup operation ({running}) is running; try later")

    def _request(self, request: Any) -> None:
        kind = _kind_of(request)
        op_id = ""
        match request:
            case PrestageBackup() if self._config.backup.skip:
                return
            case FinishBackup(plan_name=plan_name):
                wanted = self._prestage_wanted
                if wanted is not None and wanted.plan_name == plan_name:
                    self._prestage_wanted = None
            case CreateBackup(label=label, done=done):
                try:
                    op_id = backups.new_backup_id(self._config.backup.dir, label)
                except backups.BackupError as exc:
                    jobs.fail(done, exc)
                    return
            case RestoreBackup(backup_id=backup_id):
                try:
                    backups.backup_dir(self._config.backup.dir, backup_id)
                except backups.BackupError as exc:
                    jobs.fail(request.done, exc)
                    jobs.fail(request.finished, exc)
                    return
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                op_id = f"restore-{stamp}-{secrets.token_hex(3)}"
        load = self._load()
        admission = admit(kind, load)
        if preempts(admission, load):
            self._preempt_prestage(request)
        match admission:
            case Admission.START:
                self._start(request, op_id)
            case Admission.QUEUE:
                self._waiting.append((request, op_id))
            case Admission.QUEUE_FIRST:
                self._waiting.appendleft((request, op_id))
            case Admission.LATER:
                self._prestage_wanted = request  # the latest owner wins: one copy
            case Admission.REFUSE:
                error = self._busy_error()
                jobs.fail(request.done, error)
                if isinstance(request, RestoreBackup):
                    jobs.fail(request.finished, error)

    def _preempt_prestage(self, request: Any) -> None:
        """The running pre-staging copy gives way; it is taken up again afterwards."""
        op = self._op
        if op is None or op.cancel.is_set():
            return
        op.cancel.set()
        finishing = isinstance(request, FinishBackup) and request.plan_name == op.plan
        if not finishing and self._prestage_wanted is None:
            self._prestage_wanted = PrestageBackup(op.plan, op.head)

    def _next(self) -> None:
        if self._op is not None:
            return
        if self._waiting:
            request, op_id = self._waiting.popleft()
            self._start(request, op_id)
        elif self._prestage_wanted is not None:
            wanted, self._prestage_wanted = self._prestage_wanted, None
            self._start(wanted, "")

    # jobs

    def _start(self, request: Any, op_id: str) -> None:
        ctx = jobs.JobContext(
            self._config,
            self._home,
            self._bus,
            self._available,
            self._shutting_down,
            self._staging,
        )
        match request:
            case CreateBackup():
                op = jobs.Operation(op_id, Kind.FULL)
                body = jobs.create_body(ctx, op, request)
            case PrestageBackup(plan_name=plan_name, head=head):
                op = jobs.Operation(
                    f"prestage-{plan_name or 'none'}", Kind.PRESTAGE, plan=plan_name, head=head
                )
                body = jobs.prestage_body(ctx, op)
            case FinishBackup(plan_name=plan_name):
                op = jobs.Operation(f"upgrade-{plan_name}", Kind.UPGRADE, plan=plan_name)
                body = jobs.finish_body(ctx, op, request)
            case RestoreBackup():
                op = jobs.Operation(op_id, _kind_of(request))
                body = jobs.restore_body(ctx, op, request)
            case DeleteBackup():
                op = jobs.Operation(f"delete-{secrets.token_hex(3)}", Kind.DELETE)
                body = jobs.delete_body(ctx, request)
            case _:
                op = jobs.Operation(f"prune-{secrets.token_hex(3)}", Kind.PRUNE)
                body = jobs.prune_body(ctx, request)
        self._op = op

        def job(_stopping: threading.Event) -> _OperationDone:
            settle: jobs.Settle | None = None
            try:
                settle = body()
            except Exception:  # noqa: BLE001  (the operation must end reported, whatever happened)
                logger.exception("backup operation {} failed unexpectedly", op.id)
            return _OperationDone(op.id, settle)

        self.workers.run(f"backup-{op.kind.value}", job, undelivered=_settle)
