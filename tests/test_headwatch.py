"""The pure decisions of head following: reading a height, retry delays, stall detection."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wemixvisor.chain.headwatch import (
    MAX_HEIGHT,
    Backoff,
    MalformedAnswer,
    StallWatch,
    decode_ws_message,
    parse_height,
)
from wemixvisor.chain.rpc import RpcError


@pytest.mark.parametrize(
    ("answer", "height"),
    [
        ("0x0", 0),
        ("0x1b4", 436),
        ("0xABCDEF", 0xABCDEF),
        ("0x00ff", 255),
        ("0xffffffffffffffff", MAX_HEIGHT),
    ],
)
def test_a_hex_quantity_is_a_height(answer: str, height: int) -> None:
    assert parse_height(answer) == height


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "123",
        "0x",
        "-0x1",
        "0x1ffffffffffffffffff",
        "0x10000000000000000",
        123,
        1.5,
        True,
        [],
        {},
        {"number": "0x1"},
        "",
        "0X1",
        " 0x1",
        "0x1 ",
        "0x1\n",
        "0x_1",
        "0xg",
        "0x\uff11",  # a fullwidth digit: int() would accept it
        "0x\u0661",  # an Arabic-Indic digit: likewise
    ],
)
def test_anything_else_is_a_malformed_answer_never_a_height(answer: Any) -> None:
    with pytest.raises(MalformedAnswer, match="not a block height"):
        parse_height(answer)


def test_a_malformed_answer_is_an_rpc_failure() -> None:
    assert issubclass(MalformedAnswer, RpcError)


def test_the_error_shows_a_huge_answer_cut_short() -> None:
    with pytest.raises(MalformedAnswer) as caught:
        parse_height("9" * 100_000)
    assert len(str(caught.value)) < 100
    with pytest.raises(MalformedAnswer, match="beyond 64 bits"):
        parse_height(10**5000)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.from_regex(r"-?0[xX][0-9a-fA-F]{0,20}", fullmatch=True),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(_json_values)
def test_any_json_value_is_a_height_in_range_or_a_malformed_answer(value: Any) -> None:
    # Through msgspec first, as the answer arrives: only what JSON can carry.
    decoded = msgspec.json.decode(msgspec.json.encode(value))
    valid = isinstance(decoded, str) and re.fullmatch(r"0x[0-9a-fA-F]{1,16}", decoded) is not None
    if not valid:
        with pytest.raises(MalformedAnswer, match=r"^not a block height: "):
            parse_height(decoded)
        return
    height = parse_height(decoded)
    assert isinstance(height, int)
    assert 0 <= height <= MAX_HEIGHT
    assert int(decoded, 16) == height


@given(st.integers(min_value=0, max_value=MAX_HEIGHT))
def test_every_uint64_round_trips(height: int) -> None:
    assert parse_height(hex(height)) == height


def test_backoff_starts_small_doubles_and_caps_at_two_seconds() -> None:
    backoff = Backoff()
    delays = [backoff.delay(failures) for failures in range(1, 10)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_backoff_survives_a_very_long_outage() -> None:
    assert Backoff().delay(10**9) == 2.0
    assert Backoff().delay(0) == 0.05


def test_a_head_unchanged_for_the_timeout_is_a_stall_reported_once() -> None:
    watch = StallWatch(0.5)
    watch.head_moved(10.0)
    assert watch.deadline() == 10.5
    assert watch.check(10.4) is None
    assert watch.check(10.6) == pytest.approx(0.6)
    assert watch.stalled
    assert watch.check(20.0) is None  # once per stall
    assert watch.deadline() is None


def test_only_a_moving_head_rearms_the_stall() -> None:
    watch = StallWatch(0.5)
    watch.head_moved(0.0)
    assert watch.check(1.0) is not None
    watch.rpc_lost()
    watch.rpc_resumed(5.0)
    assert watch.check(9.0) is None  # still the same stall
    assert watch.stalled
    watch.head_moved(10.0)
    assert not watch.stalled
    assert watch.check(10.6) == pytest.approx(0.6)


def test_no_stall_is_counted_while_rpc_is_down_and_the_clock_restarts_when_it_returns() -> None:
    watch = StallWatch(0.5)
    watch.head_moved(0.0)
    watch.rpc_lost()
    assert watch.deadline() is None
    assert watch.check(100.0) is None
    watch.rpc_resumed(100.0)
    assert watch.check(100.4) is None
    assert watch.check(100.5) == pytest.approx(0.5)


def test_stall_detection_off_and_changed_live() -> None:
    watch = StallWatch(0.0)
    watch.head_moved(0.0)
    assert watch.deadline() is None
    assert watch.check(1000.0) is None
    watch.set_timeout(2.0, now=5.0)  # counted from the change, not from the last head
    assert watch.deadline() == 7.0
    assert watch.check(6.9) is None
    assert watch.check(7.0) == 2.0
    watch.set_timeout(0.0, now=8.0)
    assert not watch.stalled
    assert watch.deadline() is None


_HEADER = {
    "hash": "0x" + "ab" * 32,
    "parentHash": "0x" + "cd" * 32,
    "logsBloom": "0x" + "00" * 256,
    "number": "0x2a",
    "timestamp": "0x6553f100",
}


def test_a_newheads_notification_yields_its_number_and_subscription() -> None:
    raw = msgspec.json.encode(
        {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": "0xfeed", "result": _HEADER},
        }
    )
    message = decode_ws_message(raw)
    assert message.method == "eth_subscription"
    assert message.params is not None
    assert message.params.subscription == "0xfeed"
    assert message.params.result is not None
    assert parse_height(message.params.result.number) == 42


def test_an_answer_yields_its_id_and_result() -> None:
    message = decode_ws_message('{"jsonrpc":"2.0","id":2,"result":"0x5"}')
    assert message.id == 2
    assert parse_height(message.result) == 5
    assert message.method is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        b"\xff\xfe",
        "[1, 2]",
        "5",
        '{"method": 5}',
        '{"method": "eth_subscription", "params": 5}',
        '{"method": "eth_subscription", "params": {"subscription": "0x1", "result": "0x5"}}',
    ],
)
def test_a_message_that_is_not_json_rpc_is_malformed(raw: str | bytes) -> None:
    with pytest.raises(MalformedAnswer, match="malformed message on the subscription"):
        decode_ws_message(raw)
