"""Which plan owns the one pre-staged copy (SPEC §7), pure.

The whole queue shares one staging copy: it is made for the next plan due and handed on
(relabelled, never copied again) as plans run, fail or are cancelled. A plan that runs keeps
it until its backup at H is finished. A late plan (already due when it arrived) runs at once:
there is no time to pre-stage for it, and the copy stays with the plan after it.
"""

from __future__ import annotations

from collections.abc import Iterable

from wemixvisor.plans.queue import PlanStatus, QueuedPlan


def staging_owner(plans: Iterable[QueuedPlan], head: int | None, horizon: int) -> str | None:
    """The plan the staging copy is for now; None when no plan needs one.

    The running plan keeps it; else the pending plan (not late) of the lowest height, with a
    `horizon` (blocks; 0: none) only once the head is within that many blocks of its height
    (an unknown head is not within any horizon).
    """
    entries = list(plans)
    for entry in entries:
        if entry.status is PlanStatus.RUNNING:
            return entry.plan.name
    pending = sorted(
        (entry for entry in entries if entry.status is PlanStatus.PENDING and not entry.late),
        key=lambda entry: entry.plan.height,
    )
    if not pending:
        return None
    nxt = pending[0].plan
    if horizon > 0 and (head is None or nxt.height - head > horizon):
        return None
    return nxt.name
