"""The node verbs: `status`, `start`, `stop`, `restart`, `logs` (daemon only)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pykka

from wemixvisor import __version__
from wemixvisor.control.logtail import MAX_TAIL_BYTES, tail_lines
from wemixvisor.control.operations import Check, Outcome
from wemixvisor.control.protocol import ControlError, ErrorCode, Logs, Restart, Start, Status, Stop
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext, answer
from wemixvisor.control.verbs.eta import switch_eta
from wemixvisor.control.verbs.render import render_status
from wemixvisor.control.verbs.replies import (
    DaemonSection,
    InProgress,
    LastUpgrade,
    LogsReply,
    NodeBrief,
    NodeOperationReply,
    PendingPlan,
    PlansSection,
    StatusReply,
)
from wemixvisor.home.layout import LayoutError, read_current
from wemixvisor.messages.governance import ChainInfo, GetChainInfo
from wemixvisor.messages.height import GetHeight, HeightStatus
from wemixvisor.messages.node import (
    GetNodeStatus,
    NodeState,
    NodeStatus,
    RestartNode,
    StartNode,
    StopNode,
)
from wemixvisor.messages.plans import ListPlans
from wemixvisor.plans.queue import PlanStatus, QueuedPlan, QueueState, pending
from wemixvisor.upgrade.window import WindowState

__all__ = ["LogsVerb", "RestartVerb", "StartVerb", "StatusVerb", "StopVerb", "read_node_log"]

_EXITS_SHOWN = 5
_FAILED_STATES = (NodeState.FATAL, NodeState.BACKOFF, NodeState.EXITED)
_START_ALLOWANCE = 60.0  # seconds beyond STARTSECS a start may take before it counts as failed


class StatusVerb(Verb[ControlContext, Status, StatusReply]):
    """`status`: the node, the chain head, the plans and the daemon."""

    request_type = Status
    reply_type = StatusReply
    summary = "Node, chain head, plans and daemon at a glance."

    def execute(self, ctx: ControlContext, request: Status) -> StatusReply:
        reply: StatusReply = ctx.status_flight.call(lambda: self.refresh(ctx))
        return reply

    def refresh(self, ctx: ControlContext) -> StatusReply:
        """Gather a fresh status and keep it for quick answers."""
        reply = self._gather(ctx)
        ctx.status_cache = (time.monotonic(), reply)
        return reply

    def _gather(self, ctx: ControlContext) -> StatusReply:
        deadline = time.monotonic() + ctx.ask_timeout
        # The actors work on it at once; the node's answer is the one status cannot do without.
        node_pending = ctx.ask_later("node", GetNodeStatus())
        head_pending = ctx.ask_later("height", GetHeight())
        plans_pending = ctx.ask_later("orchestrator", ListPlans())
        # Validator facts come from the governance actor, when one runs (SPEC §13.2).
        chain_pending = (
            ctx.ask_later("governance", GetChainInfo())
            if ctx.bus.ref("governance") is not None
            else None
        )
        node: NodeStatus = answer(node_pending, "node", deadline)
        problems: list[str] = []
        head: HeightStatus | None = None
        snapshot: Any = None
        chain: ChainInfo | None = None
        try:
            head = answer(head_pending, "height", deadline)
        except ControlError as exc:
            problems.append(exc.message)
        try:
            snapshot = answer(plans_pending, "orchestrator", deadline)
        except ControlError as exc:
            problems.append(exc.message)
        if chain_pending is not None:
            try:
                chain = answer(chain_pending, "governance", deadline)
            except ControlError as exc:
                problems.append(exc.message)
        return StatusReply(
            node=_with_configured_binary(ctx, node),
            head=_without_stale_error(head),
            plans=(
                _plans_section(snapshot, head.block_time if head is not None else None)
                if snapshot is not None
                else None
            ),
            chain=chain,
            daemon=DaemonSection(
                version=__version__,
                pid=os.getpid(),
                uptime=time.monotonic() - ctx.started,
                run_id=ctx.run_id(),
                home=str(ctx.home.root),
                stopping=ctx.stopping.is_set(),
                actor_restarts=ctx.actor_restarts(),
            ),
            problems=problems,
        )

    def render(self, reply: StatusReply) -> str:
        return render_status(reply)


def _with_configured_binary(ctx: ControlContext, node: NodeStatus) -> NodeStatus:
    """The node's status with its last exits; without a process (FATAL, STOPPED) the binary
    is the one `current` points at, the one the next start runs."""
    node = msgspec.structs.replace(node, exits=node.exits[-_EXITS_SHOWN:])
    if node.binary is not None:
        return node
    try:
        current = read_current(ctx.home)
    except LayoutError:
        return node  # the node's last_error says why it cannot start
    return msgspec.structs.replace(node, binary=str(current.binary), target=current.target)


def _without_stale_error(head: HeightStatus | None) -> HeightStatus | None:
    """The RPC error of an outage that is over is not shown as the state of RPC."""
    if head is None or not head.rpc_available or head.last_error is None:
        return head
    return msgspec.structs.replace(head, last_error=None)


def _pending_plan(entry: QueuedPlan, snapshot: Any, block_time: float | None) -> PendingPlan:
    plan = entry.plan
    slot: WindowState | None = snapshot.windows.get(plan.name)
    eta = switch_eta(
        plan.height, snapshot.head, block_time, late=entry.late, window=plan.window, slot=slot
    )
    return PendingPlan(
        name=plan.name,
        height=plan.height,
        late=entry.late,
        source=plan.source,
        mode=plan.mode,
        window=plan.window,
        slot=slot,
        eta_blocks=eta.blocks,
        eta_seconds=eta.seconds,
    )


def _plans_section(snapshot: Any, block_time: float | None) -> PlansSection:
    queue: QueueState = snapshot.queue
    finished = [
        entry
        for entry in queue.plans
        if entry.status in (PlanStatus.COMPLETED, PlanStatus.FAILED, PlanStatus.ROLLED_BACK)
        and entry.finished_at is not None
    ]
    last = max(finished, key=lambda entry: entry.finished_at or 0.0, default=None)
    journal = snapshot.journal
    return PlansSection(
        pending=[_pending_plan(entry, snapshot, block_time) for entry in pending(queue)],
        in_progress=(
            InProgress(name=journal.plan.name, height=journal.plan.height, step=journal.step.value)
            if journal is not None
            else None
        ),
        last_upgrade=(
            LastUpgrade(
                name=last.plan.name,
                height=last.plan.height,
                status=last.status.value,
                result=last.result,
                finished_at=last.finished_at,
            )
            if last is not None
            else None
        ),
    )


def _brief(status: NodeStatus) -> NodeBrief:
    return NodeBrief(state=status.state.value, pid=status.pid)


def _node_operation(
    ctx: ControlContext,
    verb: str,
    message: object,
    check_for: Callable[[NodeStatus], Check],
    timeout: float,
) -> NodeOperationReply:
    """Tell the node actor `message` and follow the operation with the check made for the
    node's status before it."""
    before = ctx.node_status()
    ctx.tell("node", message)
    after = ctx.node_status()
    operation = ctx.begin_operation(verb, check_for(before), timeout)
    return NodeOperationReply(operation=operation, before=_brief(before), node=_brief(after))


def _running_check(ctx: ControlContext, old_pid: int | None) -> Check:
    """Done when the node is RUNNING (as another process than `old_pid`), failed on a failure
    state."""

    def check() -> Outcome | None:
        status = ctx.node_status_or_none()
        if status is None:
            return None
        if status.state is NodeState.RUNNING and (old_pid is None or status.pid != old_pid):
            return Outcome(True, f"node RUNNING (pid {status.pid})")
        if status.state in _FAILED_STATES:
            return Outcome(False, f"node {status.state.value}: {status.last_error or 'no error'}")
        return None

    return check


_NodeRequest = TypeVar("_NodeRequest", Start, Stop, Restart)


class _NodeOperationVerb(Verb[ControlContext, _NodeRequest, NodeOperationReply]):
    """A verb that drives the node: answered at once, followed as an operation."""

    reply_type = NodeOperationReply
    long_operation = True
    changes_state = True

    def render(self, reply: NodeOperationReply) -> str:
        return f"{self.name} requested (operation {reply.operation}); node {reply.node.state}"


class StartVerb(_NodeOperationVerb[Start]):
    """`start`: start the node, or leave FATAL; followed until RUNNING or a failure state."""

    request_type = Start
    summary = "Start the node (also leaves FATAL)."

    def execute(self, ctx: ControlContext, request: Start) -> NodeOperationReply:
        timeout = ctx.config.node.startsecs + _START_ALLOWANCE
        return _node_operation(
            ctx, "start", StartNode(reason="control"), lambda _: _running_check(ctx, None), timeout
        )


class StopVerb(_NodeOperationVerb[Stop]):
    """`stop`: stop the node gracefully; followed until STOPPED."""

    request_type = Stop
    summary = "Stop the node gracefully."

    def execute(self, ctx: ControlContext, request: Stop) -> NodeOperationReply:
        done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()

        def check() -> Outcome | None:
            try:
                status = done.get(timeout=0)
            except pykka.Timeout:
                return None
            return Outcome(status.state is NodeState.STOPPED, f"node {status.state.value}")

        # The node actor escalates to SIGKILL after the grace; allow for that and the reaping.
        timeout = ctx.config.node.shutdown_grace + 15.0
        message = StopNode(reason="control", done=done)
        return _node_operation(ctx, "stop", message, lambda _: check, timeout)


class RestartVerb(_NodeOperationVerb[Restart]):
    """`restart`: stop, then start; followed until a new process is RUNNING or fails."""

    request_type = Restart
    summary = "Stop the node, then start it again."

    def execute(self, ctx: ControlContext, request: Restart) -> NodeOperationReply:
        timeout = ctx.config.node.shutdown_grace + ctx.config.node.startsecs + _START_ALLOWANCE

        def check_for(before: NodeStatus) -> Check:
            return _running_check(ctx, before.pid)

        return _node_operation(ctx, "restart", RestartNode(reason="control"), check_for, timeout)


def read_node_log(path: Path, lines: int) -> LogsReply:
    """The last `lines` of the node log at `path` as the `logs` reply (the daemon's, and the
    operator tool's own when no daemon answers); OSError when it exists but cannot be read."""
    try:
        tail, more = tail_lines(path, lines, MAX_TAIL_BYTES)
    except FileNotFoundError:
        return LogsReply(path=str(path), exists=False, lines=[], more=False)
    return LogsReply(path=str(path), exists=True, lines=tail, more=more)


class LogsVerb(Verb[ControlContext, Logs, LogsReply]):
    """`logs`: the last lines of logs/node.log."""

    request_type = Logs
    reply_type = LogsReply
    summary = "The last lines of the node log."

    def execute(self, ctx: ControlContext, request: Logs) -> LogsReply:
        path = ctx.home.node_log
        try:
            return read_node_log(path, request.lines)
        except OSError as exc:
            raise ControlError(ErrorCode.INTERNAL, f"cannot read {path}: {exc.strerror}") from None

    def render(self, reply: LogsReply) -> str:
        if not reply.exists:
            return f"no node log yet at {reply.path}"
        return "\n".join(reply.lines)
