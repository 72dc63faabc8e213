"""Every control verb, defined once (SPEC §11): what the daemon does for it, and how the
operator tool shows its result.

Each `Verb` names its request Struct (`protocol.py`), carries it out in the daemon (`execute`,
called on a control worker thread: it only asks actors, with bounded timeouts, and never waits
for a long operation — those are followed by `Operations`) and renders its result as text for
the CLI (`render`). The command modules in `commands/` add only their argument parsing.
"""

from __future__ import annotations

import abc
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import pykka
from loguru import logger

from wemixvisor import __version__
from wemixvisor.actors.files import PollFiles
from wemixvisor.backup.store import BackupBusy, BackupError, BackupNotFound, backup_id
from wemixvisor.bus import Bus
from wemixvisor.config import (
    Config,
    ConfigError,
    apply_reloadable,
    config_as_dict,
    load_config,
    reload_diff,
)
from wemixvisor.control.logtail import MAX_TAIL_BYTES, tail_lines
from wemixvisor.control.operations import Operations, Outcome
from wemixvisor.control.protocol import (
    BackupCreate,
    BackupList,
    BackupPrune,
    BackupRestore,
    CancelUpgrade,
    ConfigReload,
    ConfigShow,
    ControlError,
    ErrorCode,
    GovernanceProposals,
    ListUpgrades,
    Logs,
    Request,
    Restart,
    ScheduleUpgrade,
    Start,
    Status,
    Stop,
    Version,
)
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import CreateBackup, ListBackups, PruneBackups, RestoreBackup
from wemixvisor.messages.governance import GetChainInfo, GetProposals
from wemixvisor.messages.height import GetHeight, HeightStatus
from wemixvisor.messages.node import (
    GetNodeStatus,
    NodeState,
    NodeStatus,
    RestartNode,
    StartNode,
    StopNode,
)
from wemixvisor.messages.plans import CancelPlan, ListPlans, RegisterPlans
from wemixvisor.plans.files import file_plans, locked_plan_files, remove_from_plan_files
from wemixvisor.plans.queue import (
    PlanError,
    PlanStatus,
    QueuedPlan,
    QueueState,
    get,
    pending,
    plan_from_object,
    plan_to_object,
    validate_name,
)

__all__ = [
    "ASK_TIMEOUT",
    "VERBS",
    "ControlContext",
    "Dispatcher",
    "Verb",
    "plan_row",
]

ASK_TIMEOUT = 2.0
"""The longest a verb waits for one actor's answer before replying `timeout`."""

_EXITS_SHOWN = 5
_FAILED_STATES = (NodeState.FATAL, NodeState.BACKOFF, NodeState.EXITED)
_MAX_BACKUP_ID_CHARS = 200
_START_ALLOWANCE = 60.0  # seconds beyond STARTSECS a start may take before it counts as failed

R = TypeVar("R", bound=Request)


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

    `environ` and `overrides` are what the configuration was loaded from: `config_show` and
    `config_reload` load config.toml again with them, as the files actor does.
    """

    bus: Bus
    config: Config
    home: Home
    environ: Mapping[str, str]
    overrides: Mapping[str, str]
    started: float = field(default_factory=time.monotonic)
    actor_restarts: Callable[[], dict[str, int]] = dict
    stopping: threading.Event = field(default_factory=threading.Event)
    ask_timeout: float = ASK_TIMEOUT
    _running: Config | None = None
    _restart_required: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _run_id: tuple[Any, str] | None = None
    status_flight: _SingleFlight = field(default_factory=_SingleFlight)
    status_cache: tuple[float, Any] | None = None  # (monotonic time, result) of the last status

    def __post_init__(self) -> None:
        env = dict(self.environ)
        if "home" not in self.overrides:
            env["DAEMON_HOME"] = str(self.config.home)
        self.environ = env
        self._running = self.config

    def running_config(self) -> tuple[Config, Config, list[str], str | None]:
        """(previous, current) running configuration, the changed keys that need a restart,
        and why config.toml cannot be loaded now (None when it can).

        The running configuration is the startup one with the reloadable keys of the latest
        valid config.toml applied: what the actors run with.
        """
        try:
            loaded: Config | None = load_config(self.environ, self.overrides)
            error = None
        except ConfigError as exc:
            loaded, error = None, str(exc)
        with self._lock:
            previous = self._running if self._running is not None else self.config
            if loaded is not None:
                self._running = apply_reloadable(previous, loaded)
                self._restart_required = reload_diff(self.config, loaded)[1]
            return previous, self._running or self.config, list(self._restart_required), error

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


# --- asking actors, boundedly -----------------------------------------------------------------


def _unavailable(role: str) -> ControlError:
    return ControlError(
        ErrorCode.BUSY, f"the {role} actor is not running (it may be restarting); try again"
    )


def _late(role: str, timeout: float) -> ControlError:
    return ControlError(ErrorCode.TIMEOUT, f"the {role} actor did not answer within {timeout:g}s")


def _ask(ctx: ControlContext, role: str, message: Any) -> Any:
    try:
        return ctx.bus.ask(role, message, timeout=ctx.ask_timeout)
    except pykka.Timeout:
        raise _late(role, ctx.ask_timeout) from None
    except pykka.ActorDeadError:
        raise _unavailable(role) from None


def _ask_later(ctx: ControlContext, role: str, message: Any) -> pykka.Future[Any] | ControlError:
    """Send an ask without waiting, so that several actors work on one request at once."""
    ref = ctx.bus.ref(role)
    if ref is None:
        return _unavailable(role)
    try:
        return ref.ask(message, block=False)
    except pykka.ActorDeadError:
        return _unavailable(role)


def _answer(pending: pykka.Future[Any] | ControlError, role: str, deadline: float) -> Any:
    if isinstance(pending, ControlError):
        raise pending
    try:
        return pending.get(timeout=max(deadline - time.monotonic(), 0.0))
    except pykka.Timeout:
        raise _late(role, ASK_TIMEOUT) from None
    except pykka.ActorDeadError:
        raise _unavailable(role) from None


def _tell(ctx: ControlContext, role: str, message: Any) -> None:
    if not ctx.bus.tell(role, message):
        raise _unavailable(role)


def _wait_done(ctx: ControlContext, role: str, done: pykka.Future[Any]) -> Any:
    """The value an actor set on `done`; its exception becomes the matching error reply."""
    try:
        return done.get(timeout=ctx.ask_timeout)
    except pykka.Timeout:
        raise _late(role, ctx.ask_timeout) from None
    except ControlError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the actor reported becomes the reply
        raise _failure(exc) from None


def _failure(exc: Exception) -> ControlError:
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


def _node_status(ctx: ControlContext) -> NodeStatus:
    status: NodeStatus = _ask(ctx, "node", GetNodeStatus())
    return status


def _node_brief(status: NodeStatus) -> dict[str, Any]:
    return {"state": status.state.value, "pid": status.pid}


# --- the verbs --------------------------------------------------------------------------------


class Verb(abc.ABC, Generic[R]):
    """One control verb: its request type, what the daemon does, how the CLI shows the result.

    `changes_state` verbs are refused (`busy`) while the daemon is stopping.
    """

    request_type: type[R]
    changes_state: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The verb's `type` on the wire."""
        return str(self.request_type.__struct_config__.tag)

    @abc.abstractmethod
    def execute(self, ctx: ControlContext, operations: Operations, request: R) -> Any:
        """Carry out `request` in the daemon; the reply's result (ControlError to refuse)."""

    def render(self, result: Any) -> str:
        """The result as the operator tool prints it."""
        return msgspec.json.format(msgspec.json.encode(result), indent=2).decode()


class StatusVerb(Verb[Status]):
    """`status`: the node, the chain head, the plans and the daemon."""

    request_type = Status

    def execute(self, ctx: ControlContext, operations: Operations, request: Status) -> Any:
        return ctx.status_flight.call(lambda: self.refresh(ctx))

    def refresh(self, ctx: ControlContext) -> Any:
        """Gather a fresh status and keep it for quick answers."""
        result = self._gather(ctx)
        ctx.status_cache = (time.monotonic(), result)
        return result

    def _gather(self, ctx: ControlContext) -> dict[str, Any]:
        deadline = time.monotonic() + ctx.ask_timeout
        # The actors work on it at once; the node's answer is the one status cannot do without.
        node_pending = _ask_later(ctx, "node", GetNodeStatus())
        head_pending = _ask_later(ctx, "height", GetHeight())
        plans_pending = _ask_later(ctx, "orchestrator", ListPlans())
        # Validator facts come from the governance actor, when one runs (SPEC §13.2).
        chain_pending = (
            _ask_later(ctx, "governance", GetChainInfo())
            if ctx.bus.ref("governance") is not None
            else None
        )
        node: NodeStatus = _answer(node_pending, "node", deadline)
        problems: list[str] = []
        head: HeightStatus | None = None
        snapshot: Any = None
        chain: Any = None
        try:
            head = _answer(head_pending, "height", deadline)
        except ControlError as exc:
            problems.append(exc.message)
        try:
            snapshot = _answer(plans_pending, "orchestrator", deadline)
        except ControlError as exc:
            problems.append(exc.message)
        if chain_pending is not None:
            try:
                chain = _answer(chain_pending, "governance", deadline)
            except ControlError as exc:
                problems.append(exc.message)
        node_section = msgspec.to_builtins(node)
        node_section["exits"] = node_section["exits"][-_EXITS_SHOWN:]
        return {
            "node": node_section,
            "head": msgspec.to_builtins(head) if head is not None else None,
            "plans": _plans_section(snapshot) if snapshot is not None else None,
            "chain": msgspec.to_builtins(chain) if chain is not None else None,
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime": time.monotonic() - ctx.started,
                "run_id": ctx.run_id(),
                "home": str(ctx.home.root),
                "stopping": ctx.stopping.is_set(),
                "actor_restarts": ctx.actor_restarts(),
            },
            "problems": problems,
        }

    def render(self, result: Any) -> str:
        return render_status(result)


def _plans_section(snapshot: Any) -> dict[str, Any]:
    queue: QueueState = snapshot.queue
    finished = [
        entry
        for entry in queue.plans
        if entry.status in (PlanStatus.COMPLETED, PlanStatus.FAILED)
        and entry.finished_at is not None
    ]
    last = max(finished, key=lambda entry: entry.finished_at or 0.0, default=None)
    journal = snapshot.journal
    return {
        "pending": [
            {
                "name": entry.plan.name,
                "height": entry.plan.height,
                "late": entry.late,
                "source": entry.plan.source,
            }
            for entry in pending(queue)
        ],
        "in_progress": (
            {"name": journal.plan.name, "height": journal.plan.height, "step": journal.step.value}
            if journal is not None
            else None
        ),
        "last_upgrade": (
            {
                "name": last.plan.name,
                "height": last.plan.height,
                "status": last.status.value,
                "result": last.result,
                "finished_at": last.finished_at,
            }
            if last is not None
            else None
        ),
    }


def _start_check(ctx: ControlContext) -> Callable[[], Outcome | None]:
    def check() -> Outcome | None:
        status = _node_status_or_none(ctx)
        if status is None:
            return None
        if status.state is NodeState.RUNNING:
            return Outcome(True, f"node RUNNING (pid {status.pid})")
        if status.state in _FAILED_STATES:
            return Outcome(False, f"node {status.state.value}: {status.last_error or 'no error'}")
        return None

    return check


def _node_status_or_none(ctx: ControlContext) -> NodeStatus | None:
    try:
        status: NodeStatus = ctx.bus.ask("node", GetNodeStatus(), timeout=ctx.ask_timeout)
    except (pykka.Timeout, pykka.ActorDeadError):
        return None
    return status


class StartVerb(Verb[Start]):
    """`start`: start the node, or leave FATAL; followed until RUNNING or a failure state."""

    request_type = Start
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: Start) -> Any:
        before = _node_status(ctx)
        _tell(ctx, "node", StartNode(reason="control"))
        after = _node_status(ctx)
        timeout = ctx.config.node.startsecs + _START_ALLOWANCE
        operation = operations.begin("start", _start_check(ctx), timeout)
        return {"operation": operation, "before": _node_brief(before), "node": _node_brief(after)}

    def render(self, result: Any) -> str:
        return f"start requested (operation {result['operation']}); node {result['node']['state']}"


class StopVerb(Verb[Stop]):
    """`stop`: stop the node gracefully; followed until STOPPED."""

    request_type = Stop
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: Stop) -> Any:
        before = _node_status(ctx)
        done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
        _tell(ctx, "node", StopNode(reason="control", done=done))
        after = _node_status(ctx)

        def check() -> Outcome | None:
            try:
                status = done.get(timeout=0)
            except pykka.Timeout:
                return None
            return Outcome(status.state is NodeState.STOPPED, f"node {status.state.value}")

        # The node actor escalates to SIGKILL after the grace; allow for that and the reaping.
        timeout = ctx.config.node.shutdown_grace + 15.0
        operation = operations.begin("stop", check, timeout)
        return {"operation": operation, "before": _node_brief(before), "node": _node_brief(after)}

    def render(self, result: Any) -> str:
        return f"stop requested (operation {result['operation']}); node {result['node']['state']}"


class RestartVerb(Verb[Restart]):
    """`restart`: stop, then start; followed until a new process is RUNNING or fails."""

    request_type = Restart
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: Restart) -> Any:
        before = _node_status(ctx)
        _tell(ctx, "node", RestartNode(reason="control"))
        after = _node_status(ctx)
        old_pid = before.pid

        def check() -> Outcome | None:
            status = _node_status_or_none(ctx)
            if status is None:
                return None
            if status.state is NodeState.RUNNING and (old_pid is None or status.pid != old_pid):
                return Outcome(True, f"node RUNNING (pid {status.pid})")
            if status.state in _FAILED_STATES:
                return Outcome(False, f"node {status.state.value}: {status.last_error or '-'}")
            return None

        timeout = ctx.config.node.shutdown_grace + ctx.config.node.startsecs + _START_ALLOWANCE
        operation = operations.begin("restart", check, timeout)
        return {"operation": operation, "before": _node_brief(before), "node": _node_brief(after)}

    def render(self, result: Any) -> str:
        return (
            f"restart requested (operation {result['operation']}); node {result['node']['state']}"
        )


class LogsVerb(Verb[Logs]):
    """`logs`: the last lines of logs/node.log."""

    request_type = Logs

    def execute(self, ctx: ControlContext, operations: Operations, request: Logs) -> Any:
        path = ctx.home.node_log
        try:
            lines, more = tail_lines(path, request.lines, MAX_TAIL_BYTES)
        except FileNotFoundError:
            return {"path": str(path), "exists": False, "lines": [], "more": False}
        except OSError as exc:
            raise ControlError(ErrorCode.INTERNAL, f"cannot read {path}: {exc.strerror}") from None
        return {"path": str(path), "exists": True, "lines": lines, "more": more}

    def render(self, result: Any) -> str:
        if not result["exists"]:
            return f"no node log yet at {result['path']}"
        return "\n".join(result["lines"])


class ScheduleUpgradeVerb(Verb[ScheduleUpgrade]):
    """`schedule_upgrade`: register a plan; a passed height only with `now`."""

    request_type = ScheduleUpgrade
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: ScheduleUpgrade) -> Any:
        plan_object: dict[str, Any] = {"name": request.name, "height": request.height}
        if request.info is not None:
            plan_object["info"] = request.info
        try:
            plan = plan_from_object(plan_object, "control")
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        done: pykka.ThreadingFuture[list[tuple[str, str]]] = pykka.ThreadingFuture()
        _tell(
            ctx,
            "orchestrator",
            RegisterPlans(plans=[plan], source="control", now=request.now, done=done),
        )
        answers = _wait_done(ctx, "orchestrator", done)
        outcome = next((answer for name, answer in answers if name == plan.name), "")
        if outcome.startswith("rejected: "):
            raise ControlError(ErrorCode.CONFLICT, outcome.removeprefix("rejected: "))
        snapshot = _ask(ctx, "orchestrator", ListPlans())
        entry = get(snapshot.queue, plan.name)
        if entry is not None and outcome == "unchanged":
            if entry.status is PlanStatus.COMPLETED:
                raise ControlError(
                    ErrorCode.CONFLICT,
                    f"plan {plan.name!r} already completed; a completed plan never runs again "
                    "(choose a new name)",
                )
            if entry.status is PlanStatus.RUNNING:
                raise ControlError(
                    ErrorCode.CONFLICT, f"plan {plan.name!r} is being carried out now"
                )
        return {
            "name": plan.name,
            "height": plan.height,
            "outcome": outcome,
            "late": entry.late if entry is not None else False,
            "head": snapshot.head,
        }

    def render(self, result: Any) -> str:
        when = (
            f"at once (height passed, head is {result['head']})"
            if result["late"]
            else f"at height {result['height']}"
        )
        return f"scheduled upgrade {result['name']!r} {when} ({result['outcome']})"


class CancelUpgradeVerb(Verb[CancelUpgrade]):
    """`cancel_upgrade`: cancel a pending plan and take it out of the plan files."""

    request_type = CancelUpgrade
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: CancelUpgrade) -> Any:
        try:
            name = validate_name(request.name)
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        snapshot = _ask(ctx, "orchestrator", ListPlans())
        entry = get(snapshot.queue, name)
        if entry is not None and entry.status not in (PlanStatus.PENDING, PlanStatus.CANCELLED):
            raise ControlError(
                ErrorCode.CONFLICT,
                f"plan {name!r} is {entry.status.value}, not pending; nothing cancelled",
            )
        cancelled = False
        if entry is not None and entry.status is PlanStatus.PENDING:
            done: pykka.ThreadingFuture[str | None] = pykka.ThreadingFuture()
            _tell(ctx, "orchestrator", CancelPlan(name=name, source="control", done=done))
            error = _wait_done(ctx, "orchestrator", done)
            if error is not None:
                raise ControlError(ErrorCode.CONFLICT, str(error))
            cancelled = True
        # After the queue: a plan left in a file would be registered again at the next start
        # (and, its height passed by then, run at once).
        try:
            with locked_plan_files(ctx.home.data_dir):
                removed = remove_from_plan_files(ctx.home.data_dir, name)
        except PlanError as exc:
            raise ControlError(ErrorCode.CONFLICT, f"cancelled in the queue, but {exc}") from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot edit the plan files: {exc.strerror or exc}"
            ) from None
        if entry is None and not removed:
            raise ControlError(
                ErrorCode.NOT_FOUND, f"no plan named {name!r} in the queue or the plan files"
            )
        return {
            "name": name,
            "height": entry.plan.height if entry is not None else None,
            "cancelled": cancelled,
            "already_cancelled": entry is not None and entry.status is PlanStatus.CANCELLED,
            "removed_from": [str(path) for path in removed],
        }

    def render(self, result: Any) -> str:
        lines = [f"removed plan {result['name']!r} from {path}" for path in result["removed_from"]]
        if result["cancelled"]:
            lines.append(f"cancelled plan {result['name']!r} at height {result['height']}")
        elif result["already_cancelled"]:
            lines.append(f"plan {result['name']!r} was already cancelled")
        else:
            lines.append(f"cancelled plan {result['name']!r} (the daemon had not seen it yet)")
        return "\n".join(lines)


def plan_row(entry: QueuedPlan) -> dict[str, Any]:
    """A queued plan as `list_upgrades` (and the offline `upgrade list --json`) shows it."""
    row = plan_to_object(entry.plan)
    row.update(
        status=entry.status.value,
        source=entry.plan.source,
        late=entry.late,
        result=entry.result,
        registered_at=entry.registered_at or None,
        finished_at=entry.finished_at,
    )
    return row


class ListUpgradesVerb(Verb[ListUpgrades]):
    """`list_upgrades`: the queue, the upgrade in progress, and plans only in the files."""

    request_type = ListUpgrades

    def execute(self, ctx: ControlContext, operations: Operations, request: ListUpgrades) -> Any:
        snapshot = _ask(ctx, "orchestrator", ListPlans())
        queue: QueueState = snapshot.queue
        rows = [plan_row(entry) for entry in queue.plans]
        in_files, problems = file_plans(ctx.home.data_dir)
        seen: set[str] = set()
        for plan in in_files:
            if get(queue, plan.name) is None and plan.name not in seen:
                seen.add(plan.name)
                row = plan_to_object(plan)
                row.update(
                    status="in_file",
                    source=plan.source,
                    late=False,
                    result="in file, not yet seen by the daemon",
                    registered_at=None,
                    finished_at=None,
                )
                rows.append(row)
        rows.sort(key=lambda row: row["height"])
        journal = snapshot.journal
        return {
            "daemon": {"running": True, "pid": os.getpid()},
            "plans": rows,
            "journal": msgspec.to_builtins(journal) if journal is not None else None,
            "head": snapshot.head,
            "problems": problems,
        }

    def render(self, result: Any) -> str:
        if not result["plans"]:
            return "no plans"
        return "\n".join(
            f"{row['name']}  {row['height']}  {row['status']}  {row['source']}"
            for row in result["plans"]
        )


class BackupCreateVerb(Verb[BackupCreate]):
    """`backup_create`: a full backup now; completion arrives as backup.* events."""

    request_type = BackupCreate
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: BackupCreate) -> Any:
        label = request.label or "manual"
        try:
            backup_id(label, time.time())
        except BackupError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        _tell(ctx, "backup", CreateBackup(label=label, done=done))
        operation = _wait_done(ctx, "backup", done)
        return {"operation": str(operation), "label": label}

    def render(self, result: Any) -> str:
        return f"backup started (operation {result['operation']})"


class BackupListVerb(Verb[BackupList]):
    """`backup_list`: every backup, complete or not."""

    request_type = BackupList

    def execute(self, ctx: ControlContext, operations: Operations, request: BackupList) -> Any:
        return {"backups": msgspec.to_builtins(_ask(ctx, "backup", ListBackups()))}

    def render(self, result: Any) -> str:
        backups = result["backups"]
        if not backups:
            return "no backups"
        lines = []
        for backup in backups:
            state = "complete" if backup.get("complete") else "INCOMPLETE"
            lines.append(
                f"{backup.get('id')}  {state}  {_size(int(backup.get('total_bytes') or 0))}  "
                f"{backup.get('file_count')} files  {backup.get('label')}"
            )
        return "\n".join(lines)


class BackupRestoreVerb(Verb[BackupRestore]):
    """`backup_restore`: restore a backup (the node is stopped and restarted); at once."""

    request_type = BackupRestore
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: BackupRestore) -> Any:
        wanted = request.backup_id
        # The backup actor checks the id (it becomes a path); this only keeps a hostile
        # megabyte out of the error message.
        if len(wanted) > _MAX_BACKUP_ID_CHARS:
            raise ControlError(ErrorCode.BAD_REQUEST, "backup id too long")
        done: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
        _tell(ctx, "backup", RestoreBackup(backup_id=wanted, done=done))
        operation = _wait_done(ctx, "backup", done)
        return {"operation": str(operation), "backup_id": wanted}

    def render(self, result: Any) -> str:
        return f"restore of {result['backup_id']} started (operation {result['operation']})"


class BackupPruneVerb(Verb[BackupPrune]):
    """`backup_prune`: remove incomplete and surplus backups; a long prune answers with an
    operation id and reports its end as control.operation_completed."""

    request_type = BackupPrune
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: BackupPrune) -> Any:
        done: pykka.ThreadingFuture[list[str]] = pykka.ThreadingFuture()
        _tell(ctx, "backup", PruneBackups(done=done))
        try:
            removed = done.get(timeout=ctx.ask_timeout)
        except pykka.Timeout:

            def check() -> Outcome | None:
                try:
                    ids = done.get(timeout=0)
                except pykka.Timeout:
                    return None
                except Exception as exc:  # noqa: BLE001 - the prune's own failure, reported
                    return Outcome(False, str(exc))
                return Outcome(True, f"removed {len(ids)} backups: {', '.join(ids) or 'none'}")

            operation = operations.begin("backup_prune", check, 24 * 3600.0)
            return {"operation": operation, "removed": None}
        except Exception as exc:  # noqa: BLE001 - whatever the actor reported becomes the reply
            raise _failure(exc) from None
        return {"operation": None, "removed": list(removed)}

    def render(self, result: Any) -> str:
        if result["removed"] is None:
            return f"pruning (operation {result['operation']})"
        return "removed: " + (", ".join(result["removed"]) or "nothing")


class ConfigShowVerb(Verb[ConfigShow]):
    """`config_show`: the configuration the daemon runs with."""

    request_type = ConfigShow

    def execute(self, ctx: ControlContext, operations: Operations, request: ConfigShow) -> Any:
        _, running, restart_required, error = ctx.running_config()
        return {
            "config": config_as_dict(running),
            "config_file": str(running.config_path),
            "config_file_exists": running.config_path.is_file(),
            "restart_required": restart_required,
            "file_error": error,
        }


class ConfigReloadVerb(Verb[ConfigReload]):
    """`config_reload`: read config.toml now; reloadable keys apply, others need a restart."""

    request_type = ConfigReload
    changes_state = True

    def execute(self, ctx: ControlContext, operations: Operations, request: ConfigReload) -> Any:
        # The files actor applies the edit (and publishes config.reloaded or config.rejected).
        _ask(ctx, "files", PollFiles())
        previous, running, restart_required, error = ctx.running_config()
        if error is not None:
            raise ControlError(
                ErrorCode.BAD_REQUEST,
                f"config.toml rejected, the running configuration stays: {error}",
            )
        return {
            "changed": reload_diff(previous, running)[0],
            "restart_required": restart_required,
            "config_file": str(running.config_path),
        }

    def render(self, result: Any) -> str:
        changed = ", ".join(result["changed"]) or "nothing"
        text = f"reloaded: {changed} changed"
        if result["restart_required"]:
            text += f"; a restart is needed for: {', '.join(result['restart_required'])}"
        return text


class GovernanceProposalsVerb(Verb[GovernanceProposals]):
    """`governance_proposals`: what the governance actor follows (empty without one)."""

    request_type = GovernanceProposals

    def execute(
        self, ctx: ControlContext, operations: Operations, request: GovernanceProposals
    ) -> Any:
        if ctx.bus.ref("governance") is None:
            return {
                "proposals": [],
                "note": "governance is not followed (no governance actor is running)",
            }
        return {"proposals": msgspec.to_builtins(_ask(ctx, "governance", GetProposals()))}


class VersionVerb(Verb[Version]):
    """`version`: wemixvisor's version and the node binary's."""

    request_type = Version

    def execute(self, ctx: ControlContext, operations: Operations, request: Version) -> Any:
        status = _node_status_or_none(ctx)
        node = (
            {"binary": status.binary, "target": status.target, "version": status.version}
            if status is not None
            else None
        )
        return {"wemixvisor": __version__, "node": node}

    def render(self, result: Any) -> str:
        node = result["node"] or {}
        return (
            f"wemixvisor {result['wemixvisor']}\n"
            f"node: {node.get('version') or 'version unknown'} ({node.get('target') or '-'})"
        )


VERBS: dict[str, Verb[Any]] = {
    verb.name: verb
    for verb in (
        StatusVerb(),
        StartVerb(),
        StopVerb(),
        RestartVerb(),
        LogsVerb(),
        ScheduleUpgradeVerb(),
        CancelUpgradeVerb(),
        ListUpgradesVerb(),
        BackupCreateVerb(),
        BackupListVerb(),
        BackupRestoreVerb(),
        BackupPruneVerb(),
        ConfigShowVerb(),
        ConfigReloadVerb(),
        GovernanceProposalsVerb(),
        VersionVerb(),
    )
}
"""Verb name → its definition; one per request type of `protocol.REQUEST_TYPES`."""


STATUS_MAX_AGE = 0.25
"""A `status` this recent is answered at once, on the server thread (`Dispatcher.quick`)."""
STATUS_REFRESH_AGE = 0.05
"""A quick answer older than this also starts a refresh, so that busy clients keep it fresh."""


class Dispatcher:
    """The server's dispatch function: the request's verb, carried out in the daemon."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx
        self.operations = Operations(ctx.bus)
        self._refreshing = threading.Lock()

    def quick(self, request: Request) -> tuple[Any] | None:
        """An answer that needs no actor, given on the server thread itself, or None.

        Many clients polling `status` are answered from a status at most STATUS_MAX_AGE old:
        every hand-over between threads costs latency on a busy machine, and a quarter of a
        second is well inside what an operator's `status` means by "now".
        """
        if request.verb != "status":
            return None
        cached = self.ctx.status_cache
        if cached is None:
            return None
        age = time.monotonic() - cached[0]
        if age > STATUS_MAX_AGE:
            return None
        if age > STATUS_REFRESH_AGE and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="control-status", daemon=True).start()
        return (cached[1],)

    def _refresh(self) -> None:
        try:
            verb = VERBS["status"]
            assert isinstance(verb, StatusVerb)
            self.ctx.status_flight.call(lambda: verb.refresh(self.ctx))
        except ControlError as exc:
            logger.debug("status refresh: {}", exc.message)
        finally:
            self._refreshing.release()

    def __call__(self, request: Request) -> Any:
        verb = VERBS.get(request.verb)
        if verb is None:
            raise ControlError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {request.verb!r}")
        if verb.changes_state and self.ctx.stopping.is_set():
            raise ControlError(ErrorCode.BUSY, "the daemon is stopping")
        return verb.execute(self.ctx, self.operations, request)

    def close(self) -> None:
        """Stop following operations."""
        self.operations.stop()


# --- text for the operator --------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:.1f}s"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _chain_line(chain: Mapping[str, Any]) -> str:
    validator = chain.get("is_validator")
    role = "?" if validator is None else "validator" if validator else "not a validator"
    text = f"wbft      {chain.get('node_address') or '-'}  {role}"
    if chain.get("validator_count") is not None:
        text += f"  validators {chain['validator_count']}"
    sealing = chain.get("sealing")
    if sealing:
        text += f"  sealed {sealing['sealed']}/{sealing['blocks']} recent blocks"
    if chain.get("error"):
        text += f"  ({chain['error']})"
    return text


def render_status(result: Mapping[str, Any]) -> str:
    """`wemixvisor status` as text."""
    node = result["node"]
    lines = [
        f"node      {node['state']}  pid {node['pid'] or '-'}  up {_duration(node['uptime'])}  "
        f"restarts {node['restarts']} ({node['restarts_in_window']} in window)"
        + ("  adopted" if node.get("adopted") else ""),
        f"binary    {node['target'] or '-'}: {node['binary'] or '-'}  "
        f"({node['version'] or 'version unknown'})",
        f"cpu/rss   {node['cpu_percent']:.1f} %  {_size(int(node['rss_bytes']))}",
    ]
    if node.get("last_error"):
        lines.append(f"error     {node['last_error']}")
    head = result.get("head")
    if head is None:
        lines.append("head      unknown (height actor not answering)")
    else:
        height = head["height"] if head["height"] is not None else "unknown"
        rpc = "rpc up" if head["rpc_available"] else f"rpc DOWN: {head['last_error'] or '-'}"
        stalled = "  STALLED" if head["stalled"] else ""
        lines.append(f"head      {height}  ({head['mode']}, {rpc}){stalled}")
    plans = result.get("plans")
    if plans is None:
        lines.append("plans     unknown (orchestrator not answering)")
    else:
        waiting = plans["pending"]
        shown = ", ".join(
            f"{p['name']} at {p['height']}" + (" (late)" if p["late"] else "") for p in waiting
        )
        lines.append(f"plans     {len(waiting)} pending" + (f": {shown}" if shown else ""))
        if plans["in_progress"] is not None:
            running = plans["in_progress"]
            lines.append(
                f"upgrade   {running['name']} at {running['height']}: step {running['step']}"
            )
        last = plans["last_upgrade"]
        if last is not None:
            lines.append(
                f"last      {last['name']} at {last['height']} {last['status']} "
                f"{_clock(last['finished_at'])}" + (f": {last['result']}" if last["result"] else "")
            )
        else:
            lines.append("last      no upgrade yet")
    chain = result.get("chain")
    if chain is not None and chain.get("wbft"):
        lines.append(_chain_line(chain))
    daemon = result["daemon"]
    restarts = {role: n for role, n in daemon["actor_restarts"].items() if n}
    lines.append(
        f"daemon    {daemon['version']}  pid {daemon['pid']}  up {_duration(daemon['uptime'])}"
        f"  run {str(daemon['run_id'] or '-')[:8]}"
        + (f"  actor restarts {restarts}" if restarts else "")
        + ("  STOPPING" if daemon["stopping"] else "")
    )
    lines.extend(f"warning   {problem}" for problem in result.get("problems", []))
    return "\n".join(lines)
