"""The plan verbs: `schedule_upgrade`, `cancel_upgrade`, `list_upgrades`.

They run against a PlanContext: the daemon's orchestrator, or with the daemon down the queue and
plan files of its home (`offline.OfflineContext`). The queue's rules are the same either way.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
from msgspec import UNSET

from wemixvisor.control.protocol import (
    CancelUpgrade,
    ControlError,
    ErrorCode,
    ListUpgrades,
    ScheduleUpgrade,
)
from wemixvisor.control.verbs.base import PlanContext, PlanSnapshot, Verb
from wemixvisor.control.verbs.eta import switch_eta
from wemixvisor.control.verbs.render import NOT_YET_SEEN, render_plans
from wemixvisor.control.verbs.replies import (
    CancelUpgradeReply,
    ListUpgradesReply,
    PlanRow,
    Readiness,
    ScheduleUpgradeReply,
    UpgradeStatus,
)
from wemixvisor.plans.files import file_plans, locked_plan_files, remove_from_plan_files
from wemixvisor.plans.queue import (
    Plan,
    PlanError,
    PlanStatus,
    QueuedPlan,
    get,
    last_old_block,
    plan_from_object,
    validate_name,
)
from wemixvisor.upgrade.download.install import read_download_record
from wemixvisor.upgrade.preflight import custom_preupgrade_path, registration_problems
from wemixvisor.upgrade.window import WindowState

__all__ = [
    "CancelUpgradeVerb",
    "ListUpgradesVerb",
    "ScheduleUpgradeVerb",
    "plan_row",
    "upgrade_status",
]


class ScheduleUpgradeVerb(Verb[PlanContext, ScheduleUpgrade, ScheduleUpgradeReply]):
    """`schedule_upgrade`: register a plan; one already due (head ≥ H-1) only with `now`."""

    request_type = ScheduleUpgrade
    reply_type = ScheduleUpgradeReply
    summary = (
        "Schedule upgrade `name`: `height` is the new binary's first block, the switch comes"
        " after block height-1 (an already due height only with `now`)."
    )
    changes_state = True
    offline = True

    def execute(self, ctx: PlanContext, request: ScheduleUpgrade) -> ScheduleUpgradeReply:
        plan_object: dict[str, Any] = {"name": request.name, "height": request.height}
        if request.info is not None:
            plan_object["info"] = request.info
        if request.rehearse:
            plan_object["rehearse"] = True
        if request.mode is not None:
            plan_object["mode"] = request.mode
        if request.window is not None:
            plan_object["window"] = request.window
        try:
            plan = plan_from_object(plan_object, "control")
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        registration = ctx.register_plan(plan, now=request.now)
        entry = registration.entry
        if entry is not None and registration.outcome == "unchanged":
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
        registered = entry is not None and registration.outcome != "unchanged"
        return ScheduleUpgradeReply(
            name=plan.name,
            height=plan.height,
            outcome=registration.outcome,
            late=entry.late if entry is not None else False,
            head=registration.head,
            preflight=registration_problems(ctx.home, ctx.config, plan) if registered else UNSET,
        )

    def render(self, reply: ScheduleUpgradeReply) -> str:
        when = (
            f"at once (already due: head {reply.head} ≥ {last_old_block(reply.height)})"
            if reply.late
            else f"at height {reply.height}"
        )
        return f"scheduled upgrade {reply.name!r} {when} ({reply.outcome})"


class CancelUpgradeVerb(Verb[PlanContext, CancelUpgrade, CancelUpgradeReply]):
    """`cancel_upgrade`: cancel a pending plan and take it out of the plan files."""

    request_type = CancelUpgrade
    reply_type = CancelUpgradeReply
    summary = "Cancel pending plan `name` and take it out of the plan files."
    changes_state = True
    offline = True

    def execute(self, ctx: PlanContext, request: CancelUpgrade) -> CancelUpgradeReply:
        try:
            name = validate_name(request.name)
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        entry = get(ctx.plan_snapshot().queue, name)
        if entry is not None and entry.status not in (PlanStatus.PENDING, PlanStatus.CANCELLED):
            raise ControlError(
                ErrorCode.CONFLICT,
                f"plan {name!r} is {entry.status.value}, not pending; nothing cancelled",
            )
        # The files first: a plan cancelled in the queue but left in a file would be registered
        # again the next time the files are read, and from a file a passed height runs at once.
        data_dir = ctx.home.data_dir
        try:
            with locked_plan_files(data_dir):
                removed = remove_from_plan_files(data_dir, name)
        except PlanError as exc:
            raise ControlError(ErrorCode.CONFLICT, str(exc)) from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.INTERNAL, f"cannot edit the plan files: {exc.strerror or exc}"
            ) from None
        cancelled = False
        if entry is not None and entry.status is PlanStatus.PENDING:
            ctx.cancel_plan(name)
            cancelled = True
        if entry is None and not removed:
            raise ControlError(
                ErrorCode.NOT_FOUND, f"no plan named {name!r} in the queue or the plan files"
            )
        return CancelUpgradeReply(
            name=name,
            height=entry.plan.height if entry is not None else None,
            cancelled=cancelled,
            already_cancelled=entry is not None and entry.status is PlanStatus.CANCELLED,
            removed_from=[str(path) for path in removed],
        )

    def render(self, reply: CancelUpgradeReply) -> str:
        lines = [f"removed plan {reply.name!r} from {path}" for path in reply.removed_from]
        if reply.cancelled:
            lines.append(f"cancelled plan {reply.name!r} at height {reply.height}")
        elif reply.already_cancelled:
            lines.append(f"plan {reply.name!r} was already cancelled")
        else:
            lines.append(f"cancelled plan {reply.name!r} (the daemon had not seen it yet)")
        return "\n".join(lines)


def plan_row(entry: QueuedPlan, window: WindowState | None = None) -> PlanRow:
    """A queued plan as `list_upgrades` shows it (`window`: a window plan's slot)."""
    row = _row(
        entry.plan,
        status=entry.status.value,
        late=entry.late,
        result=entry.result,
        registered_at=entry.registered_at or None,
        finished_at=entry.finished_at,
    )
    if window is not None:
        row = msgspec.structs.replace(row, slot=window)
    if entry.rehearsal is None:
        return row
    return msgspec.structs.replace(row, rehearsal=entry.rehearsal)


def _row(
    plan: Plan,
    *,
    status: str,
    late: bool,
    result: str | None,
    registered_at: float | None = None,
    finished_at: float | None = None,
) -> PlanRow:
    info: Any = plan.info if plan.info is not None else plan.info_url
    window: dict[str, Any] = (
        {} if plan.window is None else {"mode": plan.mode, "window": plan.window}
    )
    return PlanRow(
        name=plan.name,
        height=plan.height,
        status=status,
        source=plan.source,
        late=late,
        result=result,
        registered_at=registered_at,
        finished_at=finished_at,
        **({"info": info} if info is not None else {}),
        **window,
    )


class ListUpgradesVerb(Verb[PlanContext, ListUpgrades, ListUpgradesReply]):
    """`list_upgrades`: the queue, the upgrade in progress, and plans only in the files."""

    request_type = ListUpgrades
    reply_type = ListUpgradesReply
    summary = "The plan queue, the upgrade in progress, and plans in the files not yet seen."
    offline = True

    def execute(self, ctx: PlanContext, request: ListUpgrades) -> ListUpgradesReply:
        snapshot = ctx.plan_snapshot()
        queue = snapshot.queue
        rows = [plan_row(entry, snapshot.windows.get(entry.plan.name)) for entry in queue.plans]
        in_files, problems = file_plans(ctx.home.data_dir)
        seen: set[str] = set()
        for plan in in_files:
            if get(queue, plan.name) is None and plan.name not in seen:
                seen.add(plan.name)
                rows.append(_row(plan, status="in_file", late=False, result=NOT_YET_SEEN))
        rows = [_with_eta(snapshot, _with_readiness(ctx, snapshot, row)) for row in rows]
        rows.sort(key=lambda row: row.height)
        return ListUpgradesReply(
            daemon=ctx.daemon_state(),
            plans=rows,
            journal=snapshot.journal,
            head=snapshot.head,
            problems=problems,
            block_time=snapshot.block_time,
        )

    def render(self, reply: ListUpgradesReply) -> str:
        return render_plans(reply.plans)


def _with_eta(snapshot: PlanSnapshot, row: PlanRow) -> PlanRow:
    """A waiting plan's row with the blocks and the time until it may switch."""
    if row.status not in ("pending", "in_file"):
        return row
    eta = switch_eta(
        row.height,
        snapshot.head,
        snapshot.block_time,
        late=row.late,
        window=row.window if isinstance(row.window, int) else None,
        slot=row.slot if isinstance(row.slot, WindowState) else None,
    )
    return msgspec.structs.replace(row, eta_blocks=eta.blocks, eta_seconds=eta.seconds)


def _with_readiness(ctx: PlanContext, snapshot: PlanSnapshot, row: PlanRow) -> PlanRow:
    """A waiting plan's row with what the home and the daemon tell of its readiness."""
    if row.status not in ("pending", "in_file"):
        return row
    home = ctx.home
    try:
        binary = home.upgrade_bin(row.name)
    except ValueError:
        return row
    staged = binary.is_file() and os.access(binary, os.X_OK)
    record = read_download_record(binary.parent.parent)
    script = custom_preupgrade_path(home, ctx.config)
    hooks = script is None or (script.is_file() and os.access(script, os.X_OK))
    readiness = Readiness(
        binary_staged=staged,
        checksum_verified=None if record is None else record.checksum is not None,
        hooks_present=hooks,
        preflight_ok=snapshot.preflight_ok.get(row.name),
    )
    return msgspec.structs.replace(row, readiness=readiness)


def upgrade_status(listing: ListUpgradesReply, journal_error: str | None = None) -> UpgradeStatus:
    """The pending part of a `list_upgrades` reply: plans waiting in the queue or the files."""
    return UpgradeStatus(
        daemon=listing.daemon,
        pending=[row for row in listing.plans if row.status in ("pending", "in_file")],
        journal=listing.journal,
        journal_error=journal_error,
        problems=listing.problems,
        head=listing.head,
        block_time=listing.block_time,
    )
