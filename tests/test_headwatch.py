"""Following the head: the pure decisions (reading a height, retry delays, stall detection, how
often to poll near a plan) and the web3 watchers against real anvil (newHeads over ws and IPC,
polling over HTTP) and hostile websocket test doubles."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.anvil import AnvilProcess
from tests.support import Inbox
from wemixvisor.chain.headwatch import (
    FAST_POLL_INTERVAL,
    MAX_HEIGHT,
    NEAR_TRIGGER_BLOCKS,
    Backoff,
    HeadPoller,
    HeadSubscriber,
    HeadWatcher,
    MalformedAnswer,
    StallWatch,
    next_trigger_height,
    parse_height,
    poll_interval,
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


@pytest.mark.parametrize(
    ("head", "trigger", "interval"),
    [
        (None, None, 0.3),  # nothing known: the configured interval
        (100, None, 0.3),  # no plan
        (None, 110, 0.3),  # head unknown (RPC down): the configured interval
        (100, 110, 0.3),  # far from the plan
        (110 - NEAR_TRIGGER_BLOCKS - 1, 110, 0.3),
        (110 - NEAR_TRIGGER_BLOCKS, 110, FAST_POLL_INTERVAL),  # within a few blocks: fast
        (109, 110, FAST_POLL_INTERVAL),
        (110, 110, FAST_POLL_INTERVAL),  # at the trigger itself
        (111, 110, 0.3),  # past it: the upgrade has started
    ],
)
def test_polling_tightens_within_a_few_blocks_of_the_trigger(
    head: int | None, trigger: int | None, interval: float
) -> None:
    assert poll_interval(0.3, head, trigger) == interval


def test_tightened_polling_is_never_slower_than_configured() -> None:
    assert poll_interval(0.01, 109, 110) == 0.01
    assert FAST_POLL_INTERVAL <= 0.05


def test_the_next_trigger_is_h_minus_1_of_the_lowest_plan() -> None:
    assert next_trigger_height([]) is None
    assert next_trigger_height([500, 120, 300]) == 119
    assert next_trigger_height([1]) == 0


# the watchers against real nodes


class Seen:
    """What a watcher reported, in order, with waits under a deadline."""

    def __init__(self) -> None:
        self.inbox = Inbox()

    def head(self, height: int, _observed_at: float) -> None:
        self.inbox.put(("head", height))

    def failure(self, error: str) -> None:
        self.inbox.put(("failure", error))

    def refused(self, error: str) -> None:
        self.inbox.put(("refused", error))

    def wait(self, kind: str, where: Callable[[Any], bool] = lambda _: True) -> Any:
        found = self.inbox.wait_for(tuple, lambda item: item[0] == kind and where(item[1]), 30)
        return found[1]


@pytest.fixture
def watchers() -> Iterator[list[HeadWatcher]]:
    started: list[HeadWatcher] = []
    yield started
    for watcher in started:
        assert watcher.stop(join_timeout=5.0)


def subscriber(address: str, kind: str, seen: Seen, timeout: float = 2.0) -> HeadSubscriber:
    return HeadSubscriber(
        address,
        kind=kind,
        timeout=timeout,
        on_head=seen.head,
        on_failure=seen.failure,
        on_refused=seen.refused,
        backoff=Backoff(initial=0.05, cap=0.2),
    )


@pytest.mark.parametrize("kind", ["ws", "ipc"])
def test_newheads_subscription_follows_the_node_and_reconnects_after_it_restarts(
    anvil_bin_1_5_1: Path, short_root: Path, watchers: list[HeadWatcher], kind: str
) -> None:
    ipc = str(short_root / "n.ipc")
    state = str(short_root / "state.json")
    args = ["--ipc", ipc, "--state", state]
    first = AnvilProcess(anvil_bin_1_5_1, short_root, block_time=0.2, extra_args=args)
    first.start()
    second = AnvilProcess(
        anvil_bin_1_5_1, short_root, port=first.port, block_time=0.2, extra_args=args
    )
    seen = Seen()
    try:
        watcher = subscriber(first.ws_url if kind == "ws" else ipc, kind, seen)
        watchers.append(watcher)
        watcher.start()
        before = seen.wait("head", lambda height: height >= 3)
        first.stop()  # graceful: anvil keeps its chain in the state file
        seen.wait("failure")
        second.start()
        # Back on the restarted node: the chain continues where it was.
        seen.wait("head", lambda height: height > before)
        assert not [item for item in seen.inbox.items if item[0] == "refused"]
    finally:
        first.kill()
        second.kill()


def test_http_polling_follows_the_node(anvil: AnvilProcess, watchers: list[HeadWatcher]) -> None:
    seen = Seen()
    poller = HeadPoller(
        anvil.url, timeout=2.0, interval=0.05, on_head=seen.head, on_failure=seen.failure
    )
    watchers.append(poller)
    poller.start()
    first = seen.wait("head")
    seen.wait("head", lambda height: height > first)


# hostile websocket servers


Behaviour = Callable[[Any, dict[str, Any]], None]


def _answer(ws: Any, request: dict[str, Any], result: Any) -> None:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}))


def _notify(ws: Any, header: Any) -> None:
    message = {
        "jsonrpc": "2.0",
        "method": "eth_subscription",
        "params": {"subscription": "0xfeed", "result": header},
    }
    ws.send(json.dumps(message))


def _header(number: Any) -> dict[str, Any]:
    return {"hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32, "number": number}


def _serve_then(after_head: Callable[[Any], None]) -> Behaviour:
    def behave(ws: Any, request: dict[str, Any]) -> None:
        if request["method"] == "eth_subscribe":
            _answer(ws, request, "0xfeed")
        elif request["method"] == "eth_blockNumber":
            _answer(ws, request, "0x5")
            after_head(ws)

    return behave


def _refuse(ws: Any, request: dict[str, Any]) -> None:
    error = {"code": -32601, "message": "notifications not supported"}
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}))


HOSTILE: dict[str, Behaviour] = {
    "garbage": _serve_then(lambda ws: ws.send("{not json")),
    "decimal-number": _serve_then(lambda ws: _notify(ws, _header("123"))),
    "null-number": _serve_then(lambda ws: _notify(ws, _header(None))),
    "huge-number": _serve_then(lambda ws: _notify(ws, _header("0x" + "f" * 40))),
    "header-is-a-string": _serve_then(lambda ws: _notify(ws, "0x6")),
    "oversized": _serve_then(lambda ws: ws.send("x" * (2 << 20))),
    "drops": _serve_then(lambda ws: ws.close()),
}


@pytest.fixture
def hostile_ws() -> Iterator[Callable[[Behaviour], str]]:
    from websockets.sync.server import serve

    servers: list[Any] = []

    def start(behaviour: Behaviour) -> str:
        def handler(ws: Any) -> None:
            for raw in ws:
                behaviour(ws, json.loads(raw))

        server = serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"ws://127.0.0.1:{server.socket.getsockname()[1]}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_a_hostile_subscription_is_a_failure_and_never_a_height(
    hostile_ws: Callable[[Behaviour], str], watchers: list[HeadWatcher], behaviour: str
) -> None:
    seen = Seen()
    watcher = subscriber(hostile_ws(HOSTILE[behaviour]), "ws", seen)
    watchers.append(watcher)
    watcher.start()
    assert seen.wait("head") == 5
    seen.wait("failure")
    # Reconnected and failed again: only ever the one good height.
    seen.inbox.wait_count(tuple, 2, lambda item: item[0] == "failure", 30)
    heights = {item[1] for item in seen.inbox.items if item[0] == "head"}
    assert heights == {5}


def test_a_refused_subscription_is_reported_once_and_the_watcher_ends(
    hostile_ws: Callable[[Behaviour], str], watchers: list[HeadWatcher]
) -> None:
    seen = Seen()
    watcher = subscriber(hostile_ws(_refuse), "ws", seen)
    watchers.append(watcher)
    watcher.start()
    assert "notifications not supported" in seen.wait("refused")
    assert watcher.stop(join_timeout=5.0)
    assert [item[0] for item in seen.inbox.items] == ["refused"]


def test_a_silent_server_is_a_timeout_not_a_hang(
    hostile_ws: Callable[[Behaviour], str], watchers: list[HeadWatcher]
) -> None:
    seen = Seen()
    watcher = subscriber(hostile_ws(lambda ws, request: None), "ws", seen, timeout=0.5)
    watchers.append(watcher)
    watcher.start()
    seen.wait("failure")
