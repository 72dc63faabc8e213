"""Plan validation and the plan queue's rules (SPEC §4), as pure functions over plain data."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wemixvisor.plans import queue as plans
from wemixvisor.plans.queue import (
    MAX_HEIGHT,
    MAX_PLAN_BYTES,
    Plan,
    PlanError,
    PlanStatus,
    QueuedPlan,
    QueueState,
    RegisterOutcome,
    decode_state,
    encode_state,
    parse_batch,
    parse_plan,
    plan_from_object,
    plan_to_object,
)


def raw(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def plan(name: str, height: int, source: str = "file", **info: Any) -> Plan:
    return Plan(name=name, height=height, info=info or None, source=source)


@pytest.mark.parametrize(
    "name",
    ["v1.2.0", "a", "A_b-c.d", "x" * 64, "...", "-", "UPGRADE", "v1..2"],
)
def test_valid_names_are_used_as_given(name: str) -> None:
    assert parse_plan(raw({"name": name, "height": 1})).name == name


@pytest.mark.parametrize(
    "name",
    [
        "../../x",
        "a/b",
        "/etc",
        ".",
        "..",
        "",
        "x" * 65,
        "vé",
        "v1\u00a0",
        "v\u0661",  # an Arabic-Indic digit: a digit to str.isdigit, not to the name rule
        "a\x00b",
        "a\nb",
        "v1\n",
        "a b",
        "a\\b",
        "~root",
    ],
)
def test_names_that_could_leave_the_upgrades_dir_or_confuse_are_refused(name: str) -> None:
    with pytest.raises(PlanError, match="name"):
        parse_plan(raw({"name": name, "height": 1}))


@pytest.mark.parametrize("name", [1, None, True, ["v1"], {"v": 1}])
def test_a_name_that_is_not_a_string_is_refused(name: object) -> None:
    with pytest.raises(PlanError, match="name must be a string"):
        parse_plan(raw({"name": name, "height": 1}))


def test_a_huge_name_is_shortened_in_the_reason() -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(raw({"name": "a/" * 10_000, "height": 1}))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("height", "expected"),
    [(1, 1), (1_500_000, 1_500_000), ("12", 12), (" 7 ", 7), ("007", 7), (MAX_HEIGHT, MAX_HEIGHT)],
)
def test_heights_integers_and_decimal_strings(height: object, expected: int) -> None:
    assert parse_plan(raw({"name": "v", "height": height})).height == expected


@pytest.mark.parametrize(
    ("height", "reason"),
    [
        (0, "> 0"),
        (-1, "> 0"),
        ("0", "> 0"),
        ("-1", "not a decimal integer"),
        ("12a", "not a decimal integer"),
        ("0x10", "not a decimal integer"),
        ("1e3", "not a decimal integer"),
        ("", "not a decimal integer"),
        ("+5", "not a decimal integer"),
        ("\u0661\u0662", "not a decimal integer"),
        ("9" * 25, "not a decimal integer"),
        (2**63, "out of range"),
        (2**64 - 1, "out of range"),
        (1e3, "got float"),
        (1.5, "got float"),
        (True, "boolean"),
        (False, "boolean"),
        (None, "got NoneType"),
        ([1], "got list"),
        ({"h": 1}, "got dict"),
    ],
)
def test_bad_heights_are_refused_with_the_reason(height: object, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(raw({"name": "v", "height": height}))


def test_an_integer_of_thousands_of_digits_is_refused_in_a_short_reason() -> None:
    document = b'{"name": "v", "height": ' + b"9" * 4000 + b"}"
    with pytest.raises(PlanError) as caught:
        parse_plan(document)
    assert len(str(caught.value)) < 200


def test_missing_fields_are_named() -> None:
    with pytest.raises(PlanError, match="no name"):
        parse_plan(raw({"height": 1}))
    with pytest.raises(PlanError, match="no height"):
        parse_plan(raw({"name": "v"}))


def test_time_and_unknown_keys_are_ignored() -> None:
    parsed = parse_plan(raw({"name": "v", "height": 5, "time": "0001-01-01T00:00:00Z", "x": 1}))
    assert parsed == Plan(name="v", height=5, source="file")


def test_info_as_an_object() -> None:
    info = {"binaries": {"linux/amd64": "https://h/b.tgz?checksum=sha256:ab"}}
    parsed = parse_plan(raw({"name": "v", "height": 5, "info": info}))
    assert parsed.info == info
    assert parsed.info_url is None


def test_info_as_a_json_string_is_decoded() -> None:
    info = {"binaries": {"any": "https://h/b.zip"}}
    parsed = parse_plan(raw({"name": "v", "height": 5, "info": msgspec.json.encode(info).decode()}))
    assert parsed.info == info


@pytest.mark.parametrize("url", ["https://h/info.json", "http://h/i", "file:///srv/info.json"])
def test_info_as_an_url_is_kept_for_the_downloader(url: str) -> None:
    parsed = parse_plan(raw({"name": "v", "height": 5, "info": f"  {url} "}))
    assert parsed.info is None
    assert parsed.info_url == url


@pytest.mark.parametrize("info", [None, "", "   "])
def test_empty_info_means_none(info: object) -> None:
    parsed = parse_plan(raw({"name": "v", "height": 5, "info": info}))
    assert parsed.info is None
    assert parsed.info_url is None


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        ("garbage", "neither a JSON object nor"),
        ("ftp://h/x", "neither a JSON object nor"),
        ("[1, 2]", "must hold a JSON object"),
        ('"https://h"', "must hold a JSON object"),
        ("[" * 50_000, "neither a JSON object nor"),
        (12, "got int"),
        ([{"binaries": {}}], "got list"),
        ({"binaries": ["https://h"]}, "platform"),
        ({"binaries": {"linux/amd64": 5}}, "URL string"),
        ({"binaries": {"linux/amd64": "  "}}, "URL string"),
    ],
)
def test_bad_info_is_refused(info: object, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(raw({"name": "v", "height": 5, "info": info}))


def test_plan_to_object_round_trips() -> None:
    for original in (
        plan("v", 9),
        plan("v", 9, binaries={"any": "https://h/x"}),
        Plan(name="v", height=9, info_url="https://h/info.json"),
    ):
        assert parse_plan(raw(plan_to_object(original))) == original


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"name": "v", "height": 5', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
        (b"[]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'"v"', "must be a JSON object"),
    ],
)
def test_documents_that_are_not_a_plan(document: bytes, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(document)


def test_a_document_over_one_mebibyte_is_refused_unparsed() -> None:
    document = raw({"name": "v", "height": 5, "pad": "x" * MAX_PLAN_BYTES})
    with pytest.raises(PlanError, match="limit"):
        parse_plan(document)


def test_batch_entries_stand_or_fall_alone() -> None:
    document = raw(
        [
            {"name": "v1", "height": 10},
            {"name": "../evil", "height": 20},
            {"name": "v3", "height": "30"},
            "not an object",
        ]
    )
    valid, errors = parse_batch(document)
    assert [(p.name, p.height, p.source) for p in valid] == [
        ("v1", 10, "batch"),
        ("v3", 30, "batch"),
    ]
    assert [str(error).split(":")[0] for error in errors] == ["batch entry 1", "batch entry 3"]


@pytest.mark.parametrize(
    ("document", "reason"),
    [(b'{"name": "v", "height": 1}', "must be a JSON array"), (b"[{", "not valid JSON")],
)
def test_a_batch_that_is_not_an_array_is_refused_whole(document: bytes, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_batch(document)


def test_an_empty_batch_holds_nothing() -> None:
    assert parse_batch(b"[]") == ([], [])


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_hostile_names = st.sampled_from(["../../x", "a/b", ".", "..", "x" * 65, "v\x00", "é", ""])
_plan_like = st.fixed_dictionaries(
    {},
    optional={
        "name": _hostile_names | st.text(max_size=70) | _json_values,
        "height": st.integers(min_value=-(2**70), max_value=2**70)
        | st.text(max_size=25)
        | _json_values,
        "info": _json_values | st.text(max_size=40),
    },
)
_documents = (
    st.binary(max_size=300)
    | _json_values.map(raw)
    | _plan_like.map(raw)
    | st.lists(_plan_like, max_size=4).map(raw)
    | st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth)
)


@settings(max_examples=400, deadline=None)
@given(_documents)
def test_any_bytes_become_a_plan_or_a_plan_error(document: bytes) -> None:
    try:
        parsed = parse_plan(document)
    except PlanError:
        pass
    else:
        assert 1 <= parsed.height <= MAX_HEIGHT
        assert parsed.name not in (".", "..")
        assert "/" not in parsed.name
    try:
        valid, errors = parse_batch(document)
    except PlanError:
        return
    assert all(isinstance(error, PlanError) for error in errors)
    assert all(p.source == "batch" for p in valid)


@settings(max_examples=200, deadline=None)
@given(_plan_like)
def test_plan_from_object_only_raises_plan_error(obj: dict[str, Any]) -> None:
    with contextlib.suppress(PlanError):
        plan_from_object(obj, "governance")


def queue_with(*entries: Plan) -> QueueState:
    state = QueueState()
    for entry in entries:
        plans.register(state, entry, head=None, now=False, at=1.0)
    return state


def test_a_new_plan_is_added_pending() -> None:
    state = QueueState()
    outcome, entry = plans.register(state, plan("v1", 100), head=50, now=False, at=7.0)
    assert outcome is RegisterOutcome.ADDED
    assert entry is not None
    assert (entry.status, entry.late, entry.registered_at) == (PlanStatus.PENDING, False, 7.0)
    assert plans.pending(state) == [entry]


def test_the_same_plan_again_changes_nothing() -> None:
    state = queue_with(plan("v1", 100))
    outcome, _ = plans.register(state, plan("v1", 100), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.UNCHANGED
    assert len(state.plans) == 1


def test_a_pending_plan_gets_a_new_height() -> None:
    state = queue_with(plan("v1", 100))
    outcome, entry = plans.register(state, plan("v1", 200), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.UPDATED
    assert entry is not None
    assert entry.plan.height == 200
    assert len(state.plans) == 1


def test_two_pending_plans_at_one_height_conflict_and_the_later_is_refused() -> None:
    state = queue_with(plan("v1", 100))
    with pytest.raises(PlanError, match="conflict: plan 'v1'"):
        plans.register(state, plan("v2", 100), head=None, now=False, at=2.0)
    assert [e.plan.name for e in state.plans] == ["v1"]


def test_a_finished_plan_no_longer_holds_its_height() -> None:
    state = queue_with(plan("v1", 100))
    plans.cancel(state, "v1", at=2.0)
    outcome, _ = plans.register(state, plan("v2", 100), head=None, now=False, at=3.0)
    assert outcome is RegisterOutcome.ADDED


@pytest.mark.parametrize("source", ["file", "batch", "governance"])
def test_a_passed_height_from_files_or_governance_runs_at_once_marked_late(source: str) -> None:
    state = QueueState()
    outcome, entry = plans.register(state, plan("v1", 100, source), head=100, now=False, at=1.0)
    assert outcome is RegisterOutcome.ADDED
    assert entry is not None
    assert entry.late
    assert plans.due(state, head=None) is entry


def test_a_passed_height_from_control_is_refused_without_now() -> None:
    state = QueueState()
    with pytest.raises(PlanError, match="has passed"):
        plans.register(state, plan("v1", 100, "control"), head=150, now=False, at=1.0)
    assert state.plans == []


def test_a_passed_height_from_control_with_now_is_late() -> None:
    state = QueueState()
    _, entry = plans.register(state, plan("v1", 100, "control"), head=150, now=True, at=1.0)
    assert entry is not None
    assert entry.late


def test_a_future_height_is_not_late_whatever_the_source() -> None:
    state = QueueState()
    _, entry = plans.register(state, plan("v1", 200, "control"), head=150, now=False, at=1.0)
    assert entry is not None
    assert not entry.late


@pytest.mark.parametrize(("head", "late"), [(98, False), (99, True), (100, True)])
def test_a_plan_is_already_due_when_the_head_holds_h_minus_1(head: int, late: bool) -> None:
    state = QueueState()
    _, entry = plans.register(state, plan("v1", 100, "file"), head=head, now=False, at=1.0)
    assert entry is not None
    assert entry.late is late
    control = QueueState()
    if late:
        with pytest.raises(PlanError, match=f"head \\({head}\\) has passed or reached block 99"):
            plans.register(control, plan("v1", 100, "control"), head=head, now=False, at=1.0)
        assert control.plans == []
    else:
        _, entry = plans.register(control, plan("v1", 100, "control"), head=head, now=False, at=1.0)
        assert entry is not None
        assert not entry.late


def test_unknown_head_never_makes_a_plan_late() -> None:
    state = QueueState()
    _, entry = plans.register(state, plan("v1", 1, "control"), head=None, now=False, at=1.0)
    assert entry is not None
    assert not entry.late


@pytest.mark.parametrize("source", ["file", "batch", "control", "governance"])
def test_a_completed_plan_never_runs_again(source: str) -> None:
    state = queue_with(plan("v1", 100))
    state.plans[0].status = PlanStatus.COMPLETED
    outcome, entry = plans.register(state, plan("v1", 100, source), head=90, now=True, at=2.0)
    assert outcome is RegisterOutcome.UNCHANGED
    assert entry is not None
    assert entry.status is PlanStatus.COMPLETED
    with pytest.raises(PlanError, match="already completed at height 100"):
        plans.register(state, plan("v1", 500, source), head=90, now=True, at=2.0)
    assert [(e.plan.height, e.status) for e in state.plans] == [(100, PlanStatus.COMPLETED)]
    assert plans.due(state, head=10_000) is None


def test_a_running_plan_is_not_registered_again() -> None:
    state = queue_with(plan("v1", 100))
    state.plans[0].status = PlanStatus.RUNNING
    outcome, _ = plans.register(state, plan("v1", 200, "control"), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.UNCHANGED


@pytest.mark.parametrize("source", ["file", "batch", "governance"])
def test_a_failed_plan_is_not_re_run_from_files_or_governance(source: str) -> None:
    state = queue_with(plan("v1", 100))
    state.plans[0].status = PlanStatus.FAILED
    outcome, entry = plans.register(state, plan("v1", 100, source), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.UNCHANGED
    assert entry is not None
    assert entry.status is PlanStatus.FAILED


def test_a_failed_plan_is_re_run_when_rescheduled_through_control() -> None:
    state = queue_with(plan("v1", 100))
    state.plans[0].status = PlanStatus.FAILED
    outcome, entry = plans.register(state, plan("v1", 300, "control"), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.ADDED
    assert entry is not None
    assert entry.status is PlanStatus.PENDING
    assert [e.plan.height for e in state.plans] == [300]


def test_cancel_a_pending_plan() -> None:
    state = queue_with(plan("v1", 100))
    entry = plans.cancel(state, "v1", at=5.0, reason="operator")
    assert (entry.status, entry.finished_at, entry.result) == (
        PlanStatus.CANCELLED,
        5.0,
        "operator",
    )
    assert plans.pending(state) == []
    assert plans.due(state, head=1000) is None


def test_cancel_an_unknown_plan_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        plans.cancel(QueueState(), "v1", at=1.0)


@pytest.mark.parametrize("status", [PlanStatus.COMPLETED, PlanStatus.RUNNING, PlanStatus.FAILED])
def test_only_a_pending_plan_can_be_cancelled(status: PlanStatus) -> None:
    state = queue_with(plan("v1", 100))
    state.plans[0].status = status
    with pytest.raises(PlanError, match=f"is {status.value}, not pending"):
        plans.cancel(state, "v1", at=1.0)


def test_a_cancelled_plan_can_be_scheduled_again() -> None:
    state = queue_with(plan("v1", 100))
    plans.cancel(state, "v1", at=1.0)
    outcome, entry = plans.register(state, plan("v1", 200), head=None, now=False, at=2.0)
    assert outcome is RegisterOutcome.ADDED
    assert entry is not None
    assert entry.status is PlanStatus.PENDING
    assert len(state.plans) == 1


def test_pending_is_lowest_height_first() -> None:
    state = queue_with(plan("c", 300), plan("a", 100), plan("b", 200))
    assert [e.plan.name for e in plans.pending(state)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("height", "head", "starts"),
    [
        (100, None, False),  # an unknown head never starts anything
        (100, 0, False),
        (100, 97, False),
        (100, 98, False),  # two blocks before H: the old binary still has H-1 to import
        (100, 99, True),  # H-1: the old binary's last block; the new binary makes H
        (100, 100, True),  # seen at H (an overshoot): at once all the same
        (100, 5000, True),
        (1, 0, True),  # H=1: the genesis is the old binary's last block
        (2, 0, False),
        (2, 1, True),
    ],
)
def test_a_head_starts_the_plan_once_the_old_binary_holds_h_minus_1(
    height: int, head: int | None, starts: bool
) -> None:
    assert plans.starts_now(height, head) is starts
    assert plans.last_old_block(height) == height - 1


@pytest.mark.parametrize(
    ("height", "head", "blocks"),
    [(100, 98, 0), (100, 99, 0), (100, 100, 1), (100, 101, 2), (100, 150, 51), (1, 0, 0)],
)
def test_overshoot_counts_the_old_binarys_blocks_at_or_beyond_h(
    height: int, head: int, blocks: int
) -> None:
    assert plans.overshoot(height, head) == blocks


def test_due_needs_the_head_to_reach_h_minus_1() -> None:
    state = queue_with(plan("a", 100), plan("b", 200))
    assert plans.due(state, head=None) is None
    assert plans.due(state, head=98) is None
    due = plans.due(state, head=99)
    assert due is not None
    assert due.plan.name == "a"
    due = plans.due(state, head=250)
    assert due is not None
    assert due.plan.name == "a"


def test_due_on_unknown_head_only_for_late_plans() -> None:
    state = QueueState()
    plans.register(state, plan("future", 500), head=None, now=False, at=1.0)
    assert plans.due(state, head=None) is None
    plans.register(state, plan("late", 50), head=60, now=False, at=1.0)
    due = plans.due(state, head=None)
    assert due is not None
    assert due.plan.name == "late"


def test_get_finds_by_name() -> None:
    state = queue_with(plan("a", 100))
    found = plans.get(state, "a")
    assert found is not None
    assert found.plan.height == 100
    assert plans.get(state, "b") is None


def test_encode_decode_round_trip() -> None:
    state = QueueState(
        plans=[
            QueuedPlan(plan=plan("a", 100, binaries={"any": "https://h/x"}), registered_at=1.5),
            QueuedPlan(
                plan=Plan(name="b", height=200, info_url="https://h/i", source="control"),
                status=PlanStatus.FAILED,
                late=True,
                registered_at=2.0,
                finished_at=3.0,
                result="verify: RPC never answered",
            ),
        ]
    )
    assert decode_state(encode_state(state)) == state
    assert decode_state(encode_state(QueueState())) == QueueState()


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"null",
        b"[]",
        b"{",
        b'{"plans": 3}',
        b'{"plans": [{"plan": {"name": "v", "height": 1}, "status": "exploded"}]}',
        b'{"plans": [{"plan": {"name": "../x", "height": 1}}]}',
        b'{"plans": [{"plan": {"name": "v", "height": -5}}]}',
        b'{"plans": [{"plan": {"name": "v", "height": 1, "info": ' + b"[" * 50_000 + b"}}]}",
        b"\xff",
    ],
)
def test_a_queue_file_that_is_not_a_queue_is_a_plan_error(document: bytes) -> None:
    with pytest.raises(PlanError, match="plan queue is unreadable"):
        decode_state(document)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | _json_values.map(raw))
def test_decode_state_only_raises_plan_error(document: bytes) -> None:
    with contextlib.suppress(PlanError):
        decode_state(document)


def test_plans_left_running_without_a_journal_are_settled_by_current() -> None:
    def entry(name: str, status: PlanStatus) -> QueuedPlan:
        return QueuedPlan(plan=Plan(name=name, height=100), status=status)

    state = QueueState(
        plans=[
            entry("switched", PlanStatus.RUNNING),
            entry("not-yet", PlanStatus.RUNNING),
            entry("journaled", PlanStatus.RUNNING),
            entry("done", PlanStatus.COMPLETED),
            entry("waiting", PlanStatus.PENDING),
        ]
    )
    settled = plans.settle_unjournaled(state, "journaled", "upgrades/switched", at=5.0)
    assert [e.plan.name for e in settled] == ["switched", "not-yet"]
    assert [e.status for e in state.plans] == [
        PlanStatus.COMPLETED,
        PlanStatus.PENDING,
        PlanStatus.RUNNING,
        PlanStatus.COMPLETED,
        PlanStatus.PENDING,
    ]
    assert state.plans[0].finished_at == 5.0
    # A broken `current` settles nothing as completed.
    state.plans[2].status = PlanStatus.RUNNING
    assert [e.status for e in plans.settle_unjournaled(state, None, None, at=6.0)] == [
        PlanStatus.PENDING
    ]
