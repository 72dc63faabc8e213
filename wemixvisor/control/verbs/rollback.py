"""The `rollback_upgrade` verb (SPEC §19): the operator's way back after a completed upgrade."""

from __future__ import annotations

import pykka

from wemixvisor.control.operations import Outcome
from wemixvisor.control.protocol import ControlError, ErrorCode, RollbackUpgrade
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.rehearse import refused
from wemixvisor.control.verbs.replies import RollbackUpgradeReply
from wemixvisor.messages.plans import Refusal, RollbackPlan
from wemixvisor.plans.queue import PlanError, get, validate_name
from wemixvisor.upgrade.rollback import RollbackResult
from wemixvisor.upgrade.steps import BACKUP_TIMEOUT

__all__ = ["RollbackUpgradeVerb"]


class RollbackUpgradeVerb(Verb[ControlContext, RollbackUpgrade, RollbackUpgradeReply]):
    """`rollback_upgrade`: answered at once; upgrade.rollback_* events report its steps."""

    request_type = RollbackUpgrade
    reply_type = RollbackUpgradeReply
    summary = (
        "Roll completed upgrade `name` back to the binary before it (`restore`: and its backup)."
    )
    long_operation = True
    changes_state = True

    def execute(self, ctx: ControlContext, request: RollbackUpgrade) -> RollbackUpgradeReply:
        try:
            name = validate_name(request.name)
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if request.restore:
            self._check_backup(ctx, name)
        done: pykka.ThreadingFuture[Refusal | None] = pykka.ThreadingFuture()
        finished: pykka.ThreadingFuture[RollbackResult] = pykka.ThreadingFuture()
        message = RollbackPlan(name=name, restore=request.restore, done=done, finished=finished)
        ctx.tell("orchestrator", message)
        refused(ctx.wait_done("orchestrator", done))

        def check() -> Outcome | None:
            try:
                result = finished.get(timeout=0)
            except pykka.Timeout:
                return None
            return Outcome(result.ok, result.detail)

        timeout = BACKUP_TIMEOUT + ctx.config.node.shutdown_grace + 600.0
        operation = ctx.begin_operation(self.name, check, timeout)
        return RollbackUpgradeReply(operation=operation, name=name, restore=request.restore)

    @staticmethod
    def _check_backup(ctx: ControlContext, name: str) -> None:
        """With --restore, the upgrade's backup must still be there and complete (retention
        may have pruned it); the backup actor owns the list."""
        entry = get(ctx.plan_snapshot().queue, name)
        if entry is None or entry.backup is None:
            return  # the orchestrator says why
        if not any(info.id == entry.backup and info.complete for info in ctx.list_backups()):
            raise ControlError(
                ErrorCode.BAD_REQUEST,
                f"the backup of {name!r} ({entry.backup}) is gone or incomplete: "
                "roll back without --restore",
            )

    def render(self, reply: RollbackUpgradeReply) -> str:
        restore = " with its backup restored" if reply.restore else ""
        return (
            f"rollback of {reply.name}{restore} started (operation {reply.operation}); "
            "follow it with `wemixvisor events upgrade.rollback`"
        )
