"""The daemon's side of the verbs: `ControlContext`, what they see of the running daemon.

Verbs run on a control worker thread; they only ask actors, with bounded timeouts, and never wait
for a long operation (those are followed by `Operations`). An actor that does not answer in time
is a `timeout` reply, one that is not running (restarting) a `busy` one.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.backup.store import BackupBusy, BackupError, BackupNotFound
from wemixvisor.bus import Bus
from wemixvisor.config import Config
from wemixvisor.control.operations import Check, Operations, Outcome
from wemixvisor.control.protocol import ControlError, ErrorCode
from wemixvisor.control.verbs.base import DaemonState, PlanSnapshot, PruneOutcome, Registration
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import BackupInfo, DeleteBackup, ListBackups, PruneBackups
from wemixvisor.messages.config import GetRunningConfig, RunningConfig
from wemixvisor.messages.height import GetHeight, HeightStatus
from wemixvisor.messages.node import GetNodeStatus, NodeStatus
from wemixvisor.messages.plans import CancelPlan, ListPlans, RegisterPlans
from wemixvisor.plans.queue import Plan, get

__all__ = ["ASK_TIMEOUT", "ControlContext"]

ASK_TIMEOUT = 2.0
"""The longest a verb waits for one actor's answer before replying `timeout`."""

_PRUNE_TIMEOUT = 24 * 3600.0


class _SingleFlight:
    """Callers arriving while a call is under way share its result instead of starting another.

    Status requests from many clients at once then cost the actors one round of asks (the node's
    answer samples its whole process tree, a walk of /proc) per round, not one per request; a
    shared answer is never older than the moment the caller arrived minus one such round.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: concurrent.futures.Future[Any] | None = None

    def call(self, work: Callable[[], Any]) -> Any:
        """`work()`'s result, or that of the call of it already under way."""
        with self._lock:
            shared = self._in_flight
            if shared is None:
                own: concurrent.futures.Future[Any] = concurrent.futures.Future()
                self._in_flight = own
        if shared is not None:
            return shared.result()
        try:
            own.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, to every caller sharing it
            own.set_exception(exc)
        finally:
            with self._lock:
                self._in_flight = None
        return own.result()


@dataclass
class ControlContext:
    """What the verbs see of the daemon: its actors (through the bus), configuration and life.

    `config` is the startup configuration; what the daemon runs with now is the files actor's
    (`running_config`). It is the daemon's PlanContext and BackupContext: it asks the
    orchestrator and the backup actor.
    """

    bus: Bus
    config: Config
    home: Home
    started: float = field(default_factory=time.monotonic)
    actor_restarts: Callable[[], dict[str, int]] = dict
    stopping: threading.Event = field(default_factory=threading.Event)
    ask_timeout: float = ASK_TIMEOUT
    operations: Operations | None = None  # set by the Dispatcher serving this context
    _run_id: tuple[Any, str] | None = None
    status_flight: _SingleFlight = field(default_factory=_SingleFlight)
    status_cache: tuple[float, Any] | None = None  # (monotonic time, reply) of the last status

    def running_config(self, *, check_file: bool = False) -> RunningConfig:
        """What the daemon runs with, from the one owner of it (the files actor); with
        `check_file`, also whether config.toml loads now."""
        answer: RunningConfig = self.ask("files", GetRunningConfig(check_file=check_file))
        return answer

    def run_id(self) -> str | None:
        """This daemon run's id (the events actor's), None if it does not answer."""
        ref = self.bus.ref("events")
        if ref is None:
            return None
        cached = self._run_id
        if cached is not None and cached[0] is ref:
            return cached[1]
        try:
            run_id = ref.proxy().run_id.get(timeout=self.ask_timeout)
        except (pykka.Timeout, pykka.ActorDeadError):
            return None
        self._run_id = (ref, str(run_id))
        return str(run_id)

    def begin_operation(self, verb: str, check: Check, timeout: float) -> str:
        """Follow a long operation until `check` reports its end; its operation id."""
        if self.operations is None:
            raise ControlError(ErrorCode.INTERNAL, "no control server follows operations")
        return self.operations.begin(verb, check, timeout)

    def ask(self, role: str, message: Any) -> Any:
        """The answer of actor `role` to `message`, within `ask_timeout`."""
        try:
            return self.bus.ask(role, message, timeout=self.ask_timeout)
        except pykka.Timeout:
            raise late(role, self.ask_timeout) from None
        except pykka.ActorDeadError:
            raise unavailable(role) from None

    def ask_later(self, role: str, message: Any) -> pykka.Future[Any] | ControlError:
        """Send an ask without waiting, so that several actors work on one request at once."""
        ref = self.bus.ref(role)
        if ref is None:
            return unavailable(role)
        try:
            return ref.ask(message, block=False)
        except pykka.ActorDeadError:
            return unavailable(role)

    def tell(self, role: str, message: Any) -> None:
        """Tell actor `role`; `busy` when it is not running."""
        if not self.bus.tell(role, message):
            raise unavailable(role)

    def wait_done(self, role: str, done: pykka.Future[Any]) -> Any:
        """The value an actor set on `done`; its exception becomes the matching error reply."""
        try:
            return done.get(timeout=self.ask_timeout)
        except pykka.Timeout:
            raise late(role, self.ask_timeout) from None
        except ControlError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the actor reported becomes the reply
            raise failure(exc) from None

    def node_status(self) -> NodeStatus:
        """The node actor's status of the node."""
        status: NodeStatus = self.ask("node", GetNodeStatus())
        return status

    def node_status_or_none(self) -> NodeStatus | None:
        """The node's status, None when the node actor does not answer."""
        try:
            status: NodeStatus = self.bus.ask("node", GetNodeStatus(), timeout=self.ask_timeout)
        except (pykka.Timeout, pykka.ActorDeadError):
            return None
        return status

    def plan_snapshot(self) -> PlanSnapshot:
        """The orchestrator's queue, journal and head, and the block time the height actor
        measured (None when it does not answer: the ETAs are then unknown, the plans are not)."""
        deadline = time.monotonic() + self.ask_timeout
        pace_pending = self.ask_later("height", GetHeight())
        snapshot = self.ask("orchestrator", ListPlans())
        journal = snapshot.journal
        head: HeightStatus | None
        try:
            head = answer(pace_pending, "height", deadline)
        except ControlError:
            head = None
        return PlanSnapshot(
            queue=snapshot.queue,
            journal=msgspec.to_builtins(journal) if journal is not None else None,
            head=snapshot.head,
            preflight_ok=dict(snapshot.preflight_ok),
            windows=snapshot.windows,
            block_time=head.block_time if head is not None else None,
        )

    def register_plan(self, plan: Plan, *, now: bool) -> Registration:
        """Have the orchestrator register `plan`; a refusal is a `conflict` reply."""
        done: pykka.ThreadingFuture[list[tuple[str, str]]] = pykka.ThreadingFuture()
        self.tell("orchestrator", RegisterPlans(plans=[plan], source="control", now=now, done=done))
        answers = self.wait_done("orchestrator", done)
        outcome = next((answer for name, answer in answers if name == plan.name), "")
        if outcome.startswith("rejected: "):
            raise ControlError(ErrorCode.CONFLICT, outcome.removeprefix("rejected: "))
        snapshot = self.ask("orchestrator", ListPlans())
        return Registration(outcome, get(snapshot.queue, plan.name), snapshot.head)

    def cancel_plan(self, name: str) -> None:
        """Have the orchestrator cancel pending plan `name`."""
        done: pykka.ThreadingFuture[str | None] = pykka.ThreadingFuture()
        self.tell("orchestrator", CancelPlan(name=name, source="control", done=done))
        error = self.wait_done("orchestrator", done)
        if error is not None:
            raise ControlError(ErrorCode.CONFLICT, str(error))

    def daemon_state(self) -> DaemonState:
        """This daemon runs."""
        return DaemonState(running=True, pid=os.getpid())

    def list_backups(self) -> list[BackupInfo]:
        """The backup actor's list."""
        backups: list[BackupInfo] = self.ask("backup", ListBackups())
        return backups

    def delete_backup(self, backup_id: str) -> str:
        """Have the backup actor delete it (after the operation running, if any)."""
        done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        self.tell("backup", DeleteBackup(backup_id, done=done))
        return str(self.wait_done("backup", done))

    def prune_backups(self) -> PruneOutcome:
        """Have the backup actor prune; a prune outlasting the ask is followed as an operation
        that ends with control.operation_completed."""
        done: pykka.ThreadingFuture[list[str]] = pykka.ThreadingFuture()
        self.tell("backup", PruneBackups(done=done))
        try:
            removed = done.get(timeout=self.ask_timeout)
        except pykka.Timeout:

            def check() -> Outcome | None:
                try:
                    ids = done.get(timeout=0)
                except pykka.Timeout:
                    return None
                except Exception as exc:  # noqa: BLE001 - the prune's own failure, reported
                    return Outcome(False, str(exc))
                return Outcome(True, f"removed {len(ids)} backups: {', '.join(ids) or 'none'}")

            return PruneOutcome(self.begin_operation("backup_prune", check, _PRUNE_TIMEOUT), None)
        except Exception as exc:  # noqa: BLE001 - whatever the actor reported becomes the reply
            raise failure(exc) from None
        return PruneOutcome(None, list(removed))


def unavailable(role: str) -> ControlError:
    """The `busy` reply for an actor that is not running."""
    return ControlError(
        ErrorCode.BUSY, f"the {role} actor is not running (it may be restarting); try again"
    )


def late(role: str, timeout: float) -> ControlError:
    """The `timeout` reply for an actor that did not answer in time."""
    return ControlError(ErrorCode.TIMEOUT, f"the {role} actor did not answer within {timeout:g}s")


def answer(pending: pykka.Future[Any] | ControlError, role: str, deadline: float) -> Any:
    """The answer to an `ask_later`, by `deadline` (monotonic)."""
    if isinstance(pending, ControlError):
        raise pending
    try:
        return pending.get(timeout=max(deadline - time.monotonic(), 0.0))
    except pykka.Timeout:
        raise late(role, ASK_TIMEOUT) from None
    except pykka.ActorDeadError:
        raise unavailable(role) from None


def failure(exc: Exception) -> ControlError:
    """The error reply for an exception an actor reported."""
    if isinstance(exc, KeyError | FileNotFoundError | LookupError):
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        return ControlError(ErrorCode.NOT_FOUND, text)
    if isinstance(exc, BackupBusy):
        return ControlError(ErrorCode.BUSY, str(exc))
    if isinstance(exc, BackupNotFound):
        return ControlError(ErrorCode.NOT_FOUND, str(exc))
    if isinstance(exc, BackupError):
        return ControlError(ErrorCode.CONFLICT, str(exc))
    if isinstance(exc, ValueError):
        return ControlError(ErrorCode.BAD_REQUEST, str(exc))
    logger.opt(exception=exc).error("control: an actor failed a request")
    return ControlError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
