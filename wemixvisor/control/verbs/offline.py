"""The plan and backup verbs with the daemon down: `OfflineContext`, their context on the files.

What edits the daemon's state (the queue `state/plans.json`, the backups) is done holding the
daemon's lock, so that no daemon starts meanwhile; reading the state and writing the plan files
need no lock (the daemon only reads those, at its start and live), so a daemon starting while
the operator lists or schedules is not turned away. A plan is not put in the queue but merged
into the batch file (`upgrade-info.json.batch`); it is checked first by the queue's own rules
against the queue and the chain head, so what the daemon would refuse is refused now.
"""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Any

from wemixvisor.backup import store as backups
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.config import Config
from wemixvisor.control.protocol import ControlError, ErrorCode
from wemixvisor.control.verbs.base import DaemonState, PlanSnapshot, PruneOutcome, Registration
from wemixvisor.home.layout import Home
from wemixvisor.home.state import (
    DaemonRunningError,
    daemon_lock,
    daemon_pid,
    daemon_running,
    read_journal,
    read_queue,
    write_queue,
)
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.plans.files import (
    batch_file,
    file_plans,
    locked_plan_files,
    read_batch_objects,
    write_batch_objects,
)
from wemixvisor.plans.queue import (
    Plan,
    PlanError,
    PlanStatus,
    QueueState,
    RegisterOutcome,
    cancel,
    get,
    plan_to_object,
    register,
)

__all__ = ["HEAD_TIMEOUT", "OfflineContext", "chain_head"]

HEAD_TIMEOUT = 2.0
"""How long scheduling waits for the node's head before it schedules without the check."""


def chain_head(config: Config) -> tuple[int | None, str | None]:
    """The node's head height, or None and why it is unknown (the node may well be down)."""
    try:
        client = ChainClient(config.rpc.address, timeout=HEAD_TIMEOUT)
    except ValueError as exc:
        return None, str(exc)
    try:
        return client.block_number(), None
    except RpcError as exc:
        return None, str(exc)
    finally:
        client.close()


class OfflineContext:
    """PlanContext and BackupContext on the files of the home `config` describes.

    Use it as a context manager: the daemon's lock, once `require_lock` took it, is released
    when it closes. `dry_run` checks a plan to register without writing it. `warnings` collects
    what the operator should know (the head could not be checked); `journal_error` says why the
    journal could not be read by the last `plan_snapshot`.
    """

    def __init__(self, config: Config, *, dry_run: bool = False) -> None:
        self.config = config
        self.dry_run = dry_run
        self.locked = False
        self.warnings: list[str] = []
        self.journal_error: str | None = None
        self._home = Home.from_config(config)
        self._stack = contextlib.ExitStack()

    @property
    def home(self) -> Home:
        """The home whose files these are."""
        return self._home

    def __enter__(self) -> OfflineContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()
        self.locked = False

    def require_lock(self, refusal: str) -> None:
        """Take the daemon's lock (kept until the context closes) before the daemon's state is
        edited; `busy` (the daemon's pid, then `refusal`) when a daemon holds it."""
        if self.locked:
            return
        try:
            self._stack.enter_context(daemon_lock(self._home))
        except DaemonRunningError as exc:
            raise ControlError(ErrorCode.BUSY, f"{exc}; {refusal}") from None
        except PlanError as exc:
            raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot take the daemon's lock: {exc.strerror or exc}"
            ) from None
        self.locked = True

    def plan_snapshot(self) -> PlanSnapshot:
        """The queue and the journal as the daemon left them; no head (nobody follows it)."""
        try:
            journal: dict[str, Any] | None = read_journal(self._home)
            self.journal_error = None
        except PlanError as exc:
            journal, self.journal_error = None, str(exc)
        except OSError as exc:
            journal = None
            self.journal_error = f"cannot read the journal: {exc.strerror or exc}"
        return PlanSnapshot(queue=self._queue(), journal=journal, head=None)

    def register_plan(self, plan: Plan, *, now: bool) -> Registration:
        """Check `plan` as the daemon would register it now, then merge it into the batch file."""
        queue = self._queue()
        existing = get(queue, plan.name)
        if existing is not None and existing.status is PlanStatus.FAILED:
            raise ControlError(
                ErrorCode.CONFLICT,
                f"plan {plan.name!r} failed ({existing.result or 'no reason recorded'}); the "
                "daemon does not re-run a failed plan from the plan files (choose a new name)",
            )
        head, why_unknown = chain_head(self.config)
        if head is None:
            self.warnings.append(
                f"head unknown ({why_unknown}); height {plan.height} not checked against the chain"
            )
        try:
            outcome, entry = register(queue, plan, head=head, now=now, at=time.time())
        except PlanError as exc:
            raise ControlError(ErrorCode.CONFLICT, str(exc)) from None
        registration = Registration(outcome.value, entry, head)
        finished = entry is not None and entry.status is not PlanStatus.PENDING
        if outcome is RegisterOutcome.UNCHANGED and finished:
            return registration  # it ran (or runs): the verb refuses it
        self._merge_into_batch(plan, self._queue())
        return registration

    def _merge_into_batch(self, plan: Plan, queue: QueueState) -> None:
        """Put `plan` into the batch file (same name replaced, others kept), unless another
        plan of the files holds its height."""
        data_dir = self._home.data_dir
        try:
            with locked_plan_files(data_dir):
                entries = read_batch_objects(data_dir)
                for other in file_plans(data_dir)[0]:
                    if other.name == plan.name or other.height != plan.height:
                        continue
                    queued = get(queue, other.name)
                    # A plan the daemon finished or cancelled no longer holds its height.
                    if queued is None or queued.status is PlanStatus.PENDING:
                        raise ControlError(
                            ErrorCode.CONFLICT,
                            f"conflict: plan {other.name!r} is already in the plan files at "
                            f"height {plan.height}",
                        )
                if self.dry_run:
                    return
                merged: list[dict[str, Any]] = []
                replaced = False
                for obj in entries:
                    if obj.get("name") == plan.name:
                        if not replaced:
                            merged.append(plan_to_object(plan))
                            replaced = True
                        continue
                    merged.append(obj)
                if not replaced:
                    merged.append(plan_to_object(plan))
                write_batch_objects(data_dir, merged)
        except PlanError as exc:
            raise ControlError(ErrorCode.CONFLICT, str(exc)) from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot write {batch_file(data_dir)}: {exc.strerror or exc}"
            ) from None

    def cancel_plan(self, name: str) -> None:
        """Mark pending plan `name` cancelled in the queue (only while holding the lock)."""
        self.require_lock("the daemon owns the plan queue: stop it or use the control socket")
        queue = self._queue()
        try:
            cancel(queue, name, at=time.time(), reason="cancelled by the operator")
        except KeyError:
            raise ControlError(ErrorCode.NOT_FOUND, f"no plan named {name!r}") from None
        except PlanError as exc:
            raise ControlError(ErrorCode.CONFLICT, str(exc)) from None
        try:
            write_queue(self._home, queue)
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot write the plan queue: {exc.strerror or exc}"
            ) from None

    def daemon_state(self) -> DaemonState:
        """Whether a daemon runs (None when its lock cannot be read), and its pid."""
        if self.locked:
            return DaemonState(running=False, pid=None)
        try:
            running = daemon_running(self._home)
        except OSError:
            return DaemonState(running=None, pid=None)
        return DaemonState(running=running, pid=daemon_pid(self._home) if running else None)

    def list_backups(self) -> list[BackupInfo]:
        """The backups in the backup directory."""
        return backups.list_backups(self.config.backup.dir, self.config.node.data_dir)

    def prune_backups(self) -> PruneOutcome:
        """Remove incomplete backups and all but the configured number of complete ones, never
        one an unfinished upgrade or a pending plan needs (only while holding the lock)."""
        self.require_lock("a daemon started meanwhile; run the command again")
        backup_dir = self.config.backup.dir
        try:
            protected = backups.protected_backups(self._home, backup_dir)
            removed = backups.prune_backups(
                backup_dir, self.config.backup.keep, protected, data_dir=self.config.node.data_dir
            )
        except (backups.BackupError, OSError) as exc:
            raise ControlError(ErrorCode.INTERNAL, f"prune failed: {describe(exc)}") from None
        return PruneOutcome(operation=None, removed=removed)

    def delete_backup(self, backup_id: str) -> str:
        """Remove backup `backup_id` unless an unfinished upgrade needs it (only while holding
        the lock)."""
        self.require_lock("a daemon started meanwhile; run the command again")
        backup_dir = self.config.backup.dir
        try:
            needed = backups.journal_needs(self._home, backup_dir)
            path = backups.delete_backup(
                backup_dir, backup_id, data_dir=self.config.node.data_dir, needed=needed
            )
        except backups.BackupNotFound as exc:
            raise ControlError(ErrorCode.NOT_FOUND, str(exc)) from None
        except ValueError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        except (backups.BackupError, OSError) as exc:
            raise ControlError(ErrorCode.CONFLICT, f"not deleted: {describe(exc)}") from None
        return str(path)

    def _queue(self) -> QueueState:
        try:
            return read_queue(self._home)
        except PlanError as exc:
            raise ControlError(ErrorCode.INTERNAL, f"cannot read the plan queue: {exc}") from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot read the plan queue: {exc.strerror or exc}"
            ) from None


def describe(exc: BaseException) -> str:
    """An OSError's reason and file, or the exception's message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)
