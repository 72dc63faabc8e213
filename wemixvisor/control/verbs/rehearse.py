"""The `rehearse_upgrade` verb (SPEC §19): a plan's new binary on a copy of the data, before H."""

from __future__ import annotations

import pykka

from wemixvisor.control.operations import Outcome
from wemixvisor.control.protocol import ControlError, ErrorCode, RehearseUpgrade
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.replies import RehearseUpgradeReply
from wemixvisor.messages import events as ev
from wemixvisor.messages.plans import Refusal, RehearsePlan
from wemixvisor.plans.queue import PlanError, validate_name

__all__ = ["RehearseUpgradeVerb", "refused"]

OPERATION_TIMEOUT = 24 * 3600.0
"""A rehearsal may first wait for its plan's pre-staged copy (a full copy of the data dir)."""


def refused(answer: object) -> None:
    """Raise the orchestrator's refusal as the matching error reply (nothing when accepted)."""
    if isinstance(answer, Refusal):
        raise ControlError(answer.code, answer.message)


class RehearseUpgradeVerb(Verb[ControlContext, RehearseUpgrade, RehearseUpgradeReply]):
    """`rehearse_upgrade`: answered at once; upgrade.rehearsed reports how it went."""

    request_type = RehearseUpgrade
    reply_type = RehearseUpgradeReply
    summary = "Rehearse pending plan `name`'s binary on a scratch copy of its pre-staged backup."
    long_operation = True
    changes_state = True

    def execute(self, ctx: ControlContext, request: RehearseUpgrade) -> RehearseUpgradeReply:
        try:
            name = validate_name(request.name)
        except PlanError as exc:
            raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
        done: pykka.ThreadingFuture[Refusal | None] = pykka.ThreadingFuture()
        finished: pykka.ThreadingFuture[ev.UpgradeRehearsed] = pykka.ThreadingFuture()
        ctx.tell("orchestrator", RehearsePlan(name=name, done=done, finished=finished))
        refused(ctx.wait_done("orchestrator", done))

        def check() -> Outcome | None:
            try:
                event = finished.get(timeout=0)
            except pykka.Timeout:
                return None
            if event.ok:
                return Outcome(True, f"rehearsal of {name} passed (head {event.head})")
            return Outcome(False, f"rehearsal of {name} failed: {event.reason}")

        operation = ctx.begin_operation(self.name, check, OPERATION_TIMEOUT)
        return RehearseUpgradeReply(operation=operation, name=name)

    def render(self, reply: RehearseUpgradeReply) -> str:
        return (
            f"rehearsal of {reply.name} started (operation {reply.operation}); "
            "its outcome is the upgrade.rehearsed event"
        )
