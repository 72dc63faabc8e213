"""Rolling-window plans (SPEC §19): the plan fields, the slots and the decision at each head."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from wemixvisor.plans.queue import (
    MAX_WINDOW,
    PlanError,
    QueuedPlan,
    QueueState,
    decode_state,
    encode_state,
    parse_plan,
    plan_from_object,
    plan_to_object,
)
from wemixvisor.upgrade.window import (
    Slot,
    WindowVerdict,
    activity_blocks,
    assign_slot,
    judge,
    window_bounds,
)

VALIDATORS = [f"0x{index:040x}" for index in (7, 3, 9, 1)]  # index order, not sorted


# plan fields


@pytest.mark.parametrize(
    ("fields", "mode", "window"),
    [
        ({}, "at", None),
        ({"mode": "at"}, "at", None),
        ({"mode": "window", "window": 20}, "window", 20),
        ({"window": 20}, "window", 20),  # a window implies the mode
        ({"info": {"mode": "window", "window": 5}}, "window", 5),  # governance carries info only
        ({"mode": "at", "info": {"mode": "window", "window": 5}}, "at", None),  # top level wins
        ({"mode": "window", "window": MAX_WINDOW}, "window", MAX_WINDOW),
    ],
)
def test_mode_and_window_are_read_from_the_plan(
    fields: dict[str, object], mode: str, window: int | None
) -> None:
    plan = plan_from_object({"name": "v2", "height": 200_000, **fields}, "file")
    assert (plan.mode, plan.window) == (mode, window)
    again = plan_from_object(plan_to_object(plan), "file")
    assert (again.mode, again.window) == (mode, window)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"mode": "window"}, 'needs "window"'),
        ({"mode": "rolling", "window": 5}, "mode must be one of at, window"),
        ({"mode": "x" * 10_000, "window": 5}, "mode must be one of"),
        ({"mode": 1, "window": 5}, "mode must be one of"),
        ({"mode": None, "window": True}, "must be an integer"),
        ({"mode": "window", "window": "20"}, "must be an integer"),
        ({"mode": "window", "window": 2.5}, "must be an integer"),
        ({"mode": "window", "window": 0}, "1-100000 blocks"),
        ({"mode": "window", "window": -3}, "1-100000 blocks"),
        ({"mode": "window", "window": MAX_WINDOW + 1}, "1-100000 blocks"),
        ({"mode": "window", "window": 10**4000}, "digits"),
        ({"mode": "window", "window": 100}, "before block 1"),
        ({"mode": "at", "window": 5}, 'only meaningful with mode "window"'),
        ({"info": {"mode": "window", "window": [1]}}, "must be an integer"),
    ],
)
def test_bad_mode_or_window_is_refused_with_the_reason(
    fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(PlanError, match=reason) as caught:
        plan_from_object({"name": "v2", "height": 100, **fields}, "file")
    assert len(str(caught.value)) < 200


def test_a_huge_window_integer_in_a_file_is_refused_in_one_line() -> None:
    raw = b'{"name": "v2", "height": 100, "mode": "window", "window": ' + b"9" * 5000 + b"}"
    with pytest.raises(PlanError, match=r"out of|1-100000") as caught:
        parse_plan(raw)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 200


def test_a_hand_edited_queue_with_a_bad_window_is_unreadable() -> None:
    plan = plan_from_object({"name": "v2", "height": 100, "mode": "window", "window": 10}, "file")
    raw = encode_state(QueueState(plans=[QueuedPlan(plan=plan)]))
    assert decode_state(raw).plans[0].plan.window == 10
    broken = msgspec.json.decode(raw)
    broken["plans"][0]["plan"]["window"] = 0
    with pytest.raises(PlanError, match=r"plans\[0\].*1-100000"):
        decode_state(msgspec.json.encode(broken))


# slots


def test_window_bounds_are_h_minus_w_to_h_minus_margin() -> None:
    assert window_bounds(100, 20, 2) == (80, 98)
    assert window_bounds(10, 20, 2) == (1, 8)


@pytest.mark.parametrize(
    ("me", "start", "end", "index"),
    [
        (VALIDATORS[0], 80, 83, 0),
        (VALIDATORS[1], 84, 87, 1),
        (VALIDATORS[2], 88, 91, 2),
        (VALIDATORS[3], 92, 95, 3),
    ],
)
def test_four_validators_get_four_slots_in_index_order(
    me: str, start: int, end: int, index: int
) -> None:
    slot = assign_slot(100, 20, 2, VALIDATORS, me.upper().replace("0X", "0x"))
    assert slot == Slot(start=start, end=end, index=index, count=4, validator=True, shared=False)


@pytest.mark.parametrize(("count", "window"), [(1, 5), (3, 10), (4, 20), (7, 50), (4, 6)])
def test_slots_never_overlap_and_stay_inside_the_window(count: int, window: int) -> None:
    validators = [f"0x{index:040x}" for index in range(count)]
    first, last = window_bounds(1000, window, 2)
    slots = [assign_slot(1000, window, 2, validators, me) for me in validators]
    taken: set[int] = set()
    for slot in slots:
        assert slot is not None
        assert not slot.shared
        assert first <= slot.start <= slot.end <= last
        blocks = set(range(slot.start, slot.end + 1))
        assert not blocks & taken
        taken |= blocks


def test_a_window_shorter_than_the_validator_set_shares_slots_and_says_so() -> None:
    validators = [f"0x{index:040x}" for index in range(4)]
    slots = [assign_slot(100, 4, 2, validators, me) for me in validators]  # blocks 96-98
    assert all(slot is not None and slot.shared for slot in slots)
    starts = [slot.start for slot in slots if slot is not None]
    assert starts == sorted(starts)
    assert set(starts) <= {96, 97, 98}


def test_an_empty_window_has_no_slot() -> None:
    assert assign_slot(100, 1, 2, VALIDATORS, VALIDATORS[0]) is None


def test_a_non_validator_takes_the_slot_of_a_hash_of_its_address() -> None:
    me = "0x" + "ab" * 20
    expected = int.from_bytes(hashlib.sha256(me.encode()).digest(), "big") % 4
    slot = assign_slot(100, 20, 2, VALIDATORS, me.upper().replace("0X", "0x"))
    assert slot is not None
    assert (slot.index, slot.validator, slot.start) == (expected, False, 80 + 4 * expected)
    alone = assign_slot(100, 20, 2, [], me)
    assert alone is not None
    assert (alone.index, alone.count, alone.start, alone.end) == (0, 1, 80, 98)


@pytest.mark.parametrize(
    ("validators", "blocks"), [(0, 4), (1, 4), (4, 8), (100, 200), (900, 1024)]
)
def test_the_activity_window_is_twice_the_validators_within_bounds(
    validators: int, blocks: int
) -> None:
    assert activity_blocks(validators) == blocks


# the decision at each head

SLOT = Slot(start=84, end=87, index=1, count=4, validator=True, shared=False)


@pytest.mark.parametrize(
    ("head", "slot", "validator", "active", "verdict"),
    [
        (83, SLOT, True, 3, WindowVerdict.BEFORE_SLOT),
        (84, SLOT, True, 3, WindowVerdict.GO),
        (84, SLOT, True, 2, WindowVerdict.WAIT_FOR_QUORUM),  # 4 validators need 3 others
        (90, SLOT, True, 3, WindowVerdict.GO),  # past its own turn, still in the window
        (98, SLOT, True, 2, WindowVerdict.WAIT_FOR_QUORUM),  # H-margin: the last chance
        (99, SLOT, True, 3, WindowVerdict.CLOSED),  # H-1: a plain plan's moment
        (84, SLOT, False, 0, WindowVerdict.GO),  # a non-validator never risks the quorum
        (84, None, True, 3, WindowVerdict.CLOSED),  # no slot at all
    ],
)
def test_the_verdict_at_each_head(
    head: int, slot: Slot | None, validator: bool, active: int, verdict: WindowVerdict
) -> None:
    assert (
        judge(
            head=head,
            height=100,
            margin=2,
            slot=slot,
            validator=validator,
            active_others=active,
            quorum=3,
        )
        is verdict
    )


def test_with_a_margin_of_one_the_window_closes_before_h_minus_one() -> None:
    # H-1 is the plain plan's trigger: the window never claims it.
    verdict = judge(
        head=99, height=100, margin=1, slot=SLOT, validator=True, active_others=3, quorum=3
    )
    assert verdict is WindowVerdict.CLOSED
