"""Which backup request starts now, waits, or is refused as busy (SPEC §7)."""

from __future__ import annotations

import pytest

from wemixvisor.backup.admission import Admission, Kind, Load, admit, preempts

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
