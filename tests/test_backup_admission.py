"""Which backup request starts now, waits, or is refused as busy (SPEC §7)."""

from __future__ import annotations

import pytest

from wemixvisor.backup.admission import Admission, Kind, Load, admit, preempts
from wemixvisor.backup.staging import staging_owner
from wemixvisor.plans.queue import Plan, PlanStatus, QueuedPlan

IDLE = Load()
PRESTAGING = Load(Kind.PRESTAGE)
COPYING = Load(Kind.FULL)
RESTORING = Load(Kind.RESTORE)
QUEUED = Load(Kind.PRESTAGE, waiting=1)


@pytest.mark.parametrize(
    ("kind", "load", "expected"),
    [
        (Kind.FULL, IDLE, Admission.START),
        (Kind.PRUNE, IDLE, Admission.START),
        (Kind.PRESTAGE, IDLE, Admission.START),
        (Kind.FULL, PRESTAGING, Admission.QUEUE),
        (Kind.RESTORE, PRESTAGING, Admission.QUEUE),
        (Kind.FULL, COPYING, Admission.REFUSE),
        (Kind.PRUNE, COPYING, Admission.REFUSE),
        (Kind.RESTORE, RESTORING, Admission.REFUSE),
        (Kind.FULL, QUEUED, Admission.REFUSE),
        (Kind.PRESTAGE, COPYING, Admission.LATER),
        (Kind.PRESTAGE, PRESTAGING, Admission.LATER),
        (Kind.UPGRADE, COPYING, Admission.QUEUE_FIRST),
        (Kind.UPGRADE, RESTORING, Admission.QUEUE_FIRST),
        (Kind.UPGRADE, QUEUED, Admission.QUEUE_FIRST),
        (Kind.ROLLBACK_RESTORE, COPYING, Admission.QUEUE_FIRST),
    ],
)
def test_admission(kind: Kind, load: Load, expected: Admission) -> None:
    assert admit(kind, load) is expected


def test_pre_staging_gives_way_to_whatever_is_queued_behind_it() -> None:
    assert preempts(admit(Kind.UPGRADE, PRESTAGING), PRESTAGING)
    assert preempts(admit(Kind.FULL, PRESTAGING), PRESTAGING)
    assert not preempts(admit(Kind.UPGRADE, COPYING), COPYING)
    assert not preempts(admit(Kind.PRESTAGE, PRESTAGING), PRESTAGING)


def _queued(name: str, height: int, status: str = "pending", late: bool = False) -> QueuedPlan:
    return QueuedPlan(plan=Plan(name=name, height=height), status=PlanStatus(status), late=late)


@pytest.mark.parametrize(
    ("plans", "head", "horizon", "owner"),
    [
        ([], 10, 0, None),
        ([_queued("b", 300), _queued("a", 200), _queued("c", 400)], 10, 0, "a"),
        ([_queued("a", 200, "cancelled"), _queued("b", 300)], 10, 0, "b"),
        ([_queued("a", 200, "completed"), _queued("b", 300, "failed")], 10, 0, None),
        # The running plan keeps its copy until its backup at H is finished.
        ([_queued("a", 200, "running"), _queued("b", 150)], 199, 0, "a"),
        # A late plan runs at once: the copy stays with the plan after it.
        ([_queued("late", 5, late=True), _queued("b", 300)], 10, 0, "b"),
        # With a horizon, only within that many blocks of the height.
        ([_queued("a", 1000)], 10, 100, None),
        ([_queued("a", 1000)], 900, 100, "a"),
        ([_queued("a", 1000)], None, 100, None),
        ([_queued("a", 1000)], None, 0, "a"),
    ],
)
def test_one_staging_copy_belongs_to_the_next_plan_due(
    plans: list[QueuedPlan], head: int | None, horizon: int, owner: str | None
) -> None:
    assert staging_owner(plans, head, horizon) == owner
