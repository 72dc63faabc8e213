"""The HeightActor following a real anvil (http, ws, IPC) and hostile RPC test doubles."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from devtools.anvil import AnvilProcess, rpc_call
from wemixvisor.actors.height import HeightActor
from wemixvisor.actors.orchestrator import OrchestratorActor
from wemixvisor.bus import Bus
from wemixvisor.chain.headwatch import FAST_POLL_INTERVAL
from wemixvisor.config import Config, load_config, reload_diff
from wemixvisor.home.layout import Home, init_home
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.events import HeightObserved, NodeStalled, RpcRecovered, RpcUnavailable
from wemixvisor.messages.height import (
    GetHeight,
    HeadObserved,
    HeightStatus,
    NextTrigger,
    ResendNextTrigger,
    RpcAvailability,
)

T = TypeVar("T")


class Inbox:
    """What a test collector received, with waiting for a condition under a deadline."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._changed = threading.Condition()

    def put(self, item: Any) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        with self._changed:
            return [item for item in self._items if isinstance(item, kind)]

    def wait_for(self, kind: type[T], count: int = 1, timeout: float = 5.0) -> list[T]:
        """Wait until at least `count` messages of `kind` arrived; returns all of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self._items if isinstance(item, kind)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{count} x {kind.__name__} not received within {timeout}s; "
                        f"got {self._items[-10:]!r}"
                    )
                self._changed.wait(remaining)

    def stays_without(self, kind: type[Any], count: int, window: float) -> bool:
        """True when no more than `count` messages of `kind` arrive within `window` seconds."""
        try:
            self.wait_for(kind, count + 1, timeout=window)
        except AssertionError:
            return True
        return False


class RecordingCollector(pykka.ThreadingActor):
    """Test collector: stands where the orchestrator or the events publisher would."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self._inbox = inbox

    def on_receive(self, message: Any) -> Any:
        self._inbox.put(message)
        return None


class World:
    """A bus with test collectors as `orchestrator` and `events`, and the HeightActor."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.bus = Bus()
        self.orchestrator = Inbox()
        self.events = Inbox()
        self.bus.register("orchestrator", RecordingCollector.start(self.orchestrator))
        self.bus.register("events", RecordingCollector.start(self.events))
        self.height: pykka.ActorRef[Any] | None = None

    def config(self, address: str, **env: str) -> Config:
        values = {
            "DAEMON_HOME": str(self.home),
            "DAEMON_RPC_ADDRESS": address,
            "DAEMON_POLL_INTERVAL": "50ms",
            "DAEMON_RPC_TIMEOUT": "1s",
        }
        values.update(env)
        return load_config(env=values)

    def start(self, address: str, **env: str) -> pykka.ActorRef[Any]:
        self.height = HeightActor.start(self.config(address, **env), self.bus)
        self.bus.register("height", self.height)
        return self.height

    def status(self) -> HeightStatus:
        assert self.height is not None
        status = self.height.ask(GetHeight(), timeout=2.0)
        assert isinstance(status, HeightStatus)
        return status

    def heights(self) -> list[int]:
        return [head.height for head in self.orchestrator.of(HeadObserved)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    try:
        yield World(tmp_path / "home")
    finally:
        pykka.ActorRegistry.stop_all()


@pytest.fixture
def anvils(anvil_bin_1_5_1: Path, tmp_path: Path) -> Iterator[Callable[..., AnvilProcess]]:
    """`anvils(port=None, block_time=1.0, extra_args=())` → a started anvil, killed afterwards."""
    started: list[AnvilProcess] = []

    def start(
        port: int | None = None,
        block_time: float | None = 1.0,
        extra_args: tuple[str, ...] = (),
    ) -> AnvilProcess:
        node = AnvilProcess(
            anvil_bin_1_5_1, tmp_path, port=port, block_time=block_time, extra_args=extra_args
        )
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.kill()


def consecutive(heights: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(heights))


def test_polling_http_reports_every_block_once_in_order(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    node = anvils(block_time=1.0)
    world.start(node.url, DAEMON_POLL_INTERVAL="100ms")

    heads = world.orchestrator.wait_for(HeadObserved, 3, timeout=5.0)
    heights = [head.height for head in heads]
    assert consecutive(heights), heights
    assert {head.source for head in heads} == {"poll"}
    assert all(head.observed_at <= time.monotonic() for head in heads)
    observed = world.events.wait_for(HeightObserved, 3)
    assert [event.height for event in observed][:3] == heights[:3]
    assert {event.source for event in observed} == {"poll"}

    status = world.status()
    assert status.height is not None
    assert status.height >= heights[-1]
    assert status.mode == "poll"
    assert status.rpc_available
    assert status.observed_age is not None
    assert 0 <= status.observed_age < 2.0
    assert not status.stalled
    # Up from the start: nothing to recover from.
    assert world.events.of(RpcUnavailable) == []
    assert world.events.of(RpcRecovered) == []
    assert world.orchestrator.of(RpcAvailability) == []


def test_a_ws_subscription_reports_every_block(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    node = anvils(block_time=1.0)
    world.start(node.ws_url)

    heads = world.orchestrator.wait_for(HeadObserved, 3, timeout=5.0)
    heights = [head.height for head in heads]
    assert consecutive(heights), heights
    assert {head.source for head in heads} == {"ws"}
    world.events.wait_for(HeightObserved, 3)
    status = world.status()
    assert status.mode == "ws"
    assert status.height is not None
    assert status.height >= heights[-1]
    assert status.rpc_available


def test_an_ipc_address_subscribes_to_new_heads(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    # Unix socket paths are limited to 107 bytes: a short name directly under /tmp.
    ipc_path = f"/tmp/wvh-{uuid.uuid4().hex[:10]}.ipc"
    try:
        anvils(block_time=1.0, extra_args=("--ipc", ipc_path))
        world.start(ipc_path)
        heads = world.orchestrator.wait_for(HeadObserved, 2, timeout=5.0)
        assert consecutive([head.height for head in heads])
        assert {head.source for head in heads} == {"ipc"}
        status = world.status()
        assert (status.mode, status.poll_interval, status.fallback) == ("ipc", None, None)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ipc_path)


def test_rpc_down_at_start_is_reported_once_then_recovery_when_the_node_comes_up(
    world: World, anvils: Callable[..., AnvilProcess], free_port: Callable[[], int]
) -> None:
    port = free_port()
    world.start(f"http://127.0.0.1:{port}")

    [down] = world.events.wait_for(RpcUnavailable)
    assert down.address == f"http://127.0.0.1:{port}"
    assert "refused" in down.error.lower()
    [availability] = world.orchestrator.wait_for(RpcAvailability)
    assert availability == RpcAvailability(False, down.error)
    # Several retries (50, 100, 200 ms...) fall into this window: still one event.
    assert world.events.stays_without(RpcUnavailable, 1, window=0.5)
    status = world.status()
    assert status.height is None
    assert not status.rpc_available
    assert status.last_error == down.error
    assert world.orchestrator.of(HeadObserved) == []

    anvils(port=port, block_time=1.0)
    [recovered] = world.events.wait_for(RpcRecovered, timeout=5.0)
    assert recovered.down_seconds > 0.4
    world.orchestrator.wait_for(RpcAvailability, 2)
    assert world.orchestrator.of(RpcAvailability)[-1] == RpcAvailability(True)
    heads = world.orchestrator.wait_for(HeadObserved, 2, timeout=5.0)
    assert consecutive([head.height for head in heads])
    assert world.status().rpc_available


def test_ws_reconnects_after_the_node_is_killed_and_restarted(
    world: World, anvils: Callable[..., AnvilProcess], free_port: Callable[[], int]
) -> None:
    port = free_port()
    world.start(f"ws://127.0.0.1:{port}")
    world.events.wait_for(RpcUnavailable)
    assert world.orchestrator.of(HeadObserved) == []

    node = anvils(port=port, block_time=1.0)
    world.events.wait_for(RpcRecovered, timeout=5.0)
    world.orchestrator.wait_for(HeadObserved, 2, timeout=5.0)

    node.kill()  # SIGKILL: no goodbye on the socket
    world.events.wait_for(RpcUnavailable, 2, timeout=5.0)
    # down, up, down: every head told before the outage is in the orchestrator's inbox by now
    world.orchestrator.wait_for(RpcAvailability, 3)
    assert not world.status().rpc_available
    seen = len(world.orchestrator.of(HeadObserved))

    anvils(port=port, block_time=1.0)  # a fresh chain: its head is lower than the last one
    world.events.wait_for(RpcRecovered, 2, timeout=5.0)
    heads = world.orchestrator.wait_for(HeadObserved, seen + 1, timeout=5.0)
    assert heads[seen].height < heads[seen - 1].height
    assert heads[seen].source == "ws"
    assert world.orchestrator.of(RpcAvailability)[-1] == RpcAvailability(True)


@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_stalled_head_is_reported_once_per_stall(
    scheme: str, world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    node = anvils(block_time=None)  # no interval mining: the head stays put
    world.start(f"{scheme}://127.0.0.1:{node.port}", DAEMON_STALL_TIMEOUT="500ms")
    world.orchestrator.wait_for(HeadObserved)

    [stall] = world.events.wait_for(NodeStalled, timeout=3.0)
    assert stall.height == 0
    assert stall.seconds >= 0.5
    assert world.status().stalled
    assert world.events.stays_without(NodeStalled, 1, window=0.7)

    rpc_call(node.url, "evm_mine")
    heads = world.orchestrator.wait_for(HeadObserved, 2)
    assert heads[-1].height == 1
    assert not world.status().stalled

    stalls = world.events.wait_for(NodeStalled, 2, timeout=3.0)
    assert stalls[-1].height == 1
    assert world.status().stalled


def test_config_changed_applies_poll_interval_and_stall_timeout_live(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    node = anvils(block_time=None)
    old = world.config(node.url, DAEMON_POLL_INTERVAL="30s")
    ref = world.start(node.url, DAEMON_POLL_INTERVAL="30s")
    world.orchestrator.wait_for(HeadObserved)

    rpc_call(node.url, "evm_mine")
    # At one poll every 30 s the new block goes unseen for now...
    assert world.orchestrator.stays_without(HeadObserved, 1, window=0.4)

    new = world.config(node.url, DAEMON_POLL_INTERVAL="50ms", DAEMON_STALL_TIMEOUT="300ms")
    changed, _ = reload_diff(old, new)
    assert set(changed) == {"rpc.poll_interval", "rpc.stall_timeout"}
    ref.tell(ConfigChanged(new, changed))
    # ...and is seen at once after the change, and stalls are watched from then on.
    heads = world.orchestrator.wait_for(HeadObserved, 2, timeout=3.0)
    assert heads[-1].height == 1
    [stall] = world.events.wait_for(NodeStalled, timeout=2.0)
    assert stall.height == 1


class HostileHttpRpcDouble:
    """Test double: an HTTP JSON-RPC server on 127.0.0.1 answering every call with one script."""

    def __init__(
        self, answer: Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]
    ):
        self.release = threading.Event()
        release = self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer(self, release)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class QuietServer(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the client hanging up on a hostile answer is the point

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short shutdown poll: closing the double should not cost half a second per case.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def _body(body: bytes) -> Callable[[http.server.BaseHTTPRequestHandler, threading.Event], None]:
    def answer(handler: http.server.BaseHTTPRequestHandler, release: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _never_ending(handler: http.server.BaseHTTPRequestHandler, release: threading.Event) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"jsonrpc":"2.0","id":1,')
    handler.wfile.flush()
    release.wait(10.0)


def _result(value: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":1,"result":' + value.encode() + b"}"


_HUGE = b'{"jsonrpc":"2.0","id":1,"result":"0x1","padding":"' + b"x" * (20 << 20) + b'"}'

HOSTILE_HTTP = {
    "null": (_body(_result("null")), "not a block height: null"),
    "decimal": (_body(_result('"123"')), "not a block height: '123'"),
    "empty hex": (_body(_result('"0x"')), "not a block height: '0x'"),
    "negative": (_body(_result('"-0x1"')), "not a block height: '-0x1'"),
    "beyond uint64": (_body(_result('"0x1ffffffffffffffffff"')), "not a block height"),
    "number": (_body(_result("123")), "not a block height: 123"),
    "no result": (_body(b'{"jsonrpc":"2.0","id":1}'), "malformed JSON-RPC answer"),
    "not json": (_body(b"<html>gateway</html>"), "malformed JSON-RPC answer"),
    "20 MB": (_body(_HUGE), "answer over"),
    "error object": (
        _body(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom"}}'),
        "JSON-RPC error -32000: boom",
    ),
    "never ends": (_never_ending, "timed out"),
    "wrong protocol": (_body(b'{"jsonrpc":"1.0","id":1,"result":"0x5"}'), "malformed"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HTTP))
def test_a_hostile_http_answer_is_never_a_height(case: str, world: World) -> None:
    answer, reason = HOSTILE_HTTP[case]
    double = HostileHttpRpcDouble(answer)
    try:
        world.start(double.url, DAEMON_RPC_TIMEOUT="200ms")
        [down] = world.events.wait_for(RpcUnavailable, timeout=3.0)
        assert reason in down.error
        [availability] = world.orchestrator.wait_for(RpcAvailability)
        assert not availability.available
        status = world.status()  # still answering
        assert status.height is None
        assert not status.rpc_available
        assert status.last_error is not None
        assert reason in status.last_error
        assert world.orchestrator.of(HeadObserved) == []
        assert world.events.of(HeightObserved) == []
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


class HostileWsRpcDouble:
    """Test double: a websocket JSON-RPC server that confirms the newHeads subscription, sends
    one scripted notification at once, and answers `eth_blockNumber` with a valid 0x5."""

    SUBSCRIPTION = "0x9cef478923ff08bf67fde6c64013158d"

    def __init__(
        self,
        notification: str | bytes | None,
        subscribe_answer: str | None = None,
        *,
        silent: bool = False,
    ):
        def handler(connection: ServerConnection) -> None:
            with contextlib.suppress(ConnectionClosed):
                for raw in connection:
                    request = json.loads(raw)
                    if silent:
                        continue
                    if request["method"] == "eth_subscribe":
                        connection.send(
                            subscribe_answer
                            or json.dumps(
                                {"jsonrpc": "2.0", "id": request["id"], "result": self.SUBSCRIPTION}
                            )
                        )
                        if notification is not None:
                            connection.send(notification)
                    else:
                        connection.send(
                            json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x5"})
                        )

        self._server: Server = serve(handler, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5.0)


def _heads(result: Any, subscription: Any = HostileWsRpcDouble.SUBSCRIPTION) -> str:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": subscription, "result": result},
        }
    )


HOSTILE_WS: dict[str, tuple[str | bytes | None, str | None, str]] = {
    "not json": ("garbage", None, "malformed JSON-RPC answer"),
    "binary garbage": (b"\xff\x00\x01", None, "malformed JSON-RPC answer"),
    "decimal number": (_heads({"number": "123"}), None, "not a block height: '123'"),
    "null number": (_heads({"number": None}), None, "not a block height: null"),
    "no number": (_heads({"hash": "0x00"}), None, "not a block height: null"),
    "negative": (_heads({"number": "-0x1"}), None, "not a block height: '-0x1'"),
    "beyond uint64": (_heads({"number": "0x" + "f" * 17}), None, "not a block height"),
    "integer number": (_heads({"number": 5}), None, "not a block height: 5"),
    "null header": (_heads(None), None, "malformed JSON-RPC answer"),
    "header not an object": (_heads("0x5"), None, "without a block number"),
    "params not an object": (
        json.dumps({"jsonrpc": "2.0", "method": "eth_subscription", "params": 5}),
        None,
        "malformed JSON-RPC answer",
    ),
    "oversized": (_heads({"number": "0x5", "extra": "x" * (2 << 20)}), None, "exceeds limit"),
}


@pytest.mark.parametrize("case", list(HOSTILE_WS))
def test_a_hostile_ws_notification_is_never_a_height(case: str, world: World) -> None:
    notification, subscribe_answer, reason = HOSTILE_WS[case]
    double = HostileWsRpcDouble(notification, subscribe_answer)
    try:
        world.start(double.url)
        [down] = world.events.wait_for(RpcUnavailable, timeout=3.0)
        assert reason in down.error
        status = world.status()
        assert status.height in (None, 5)  # only ever eth_blockNumber's valid answer
        assert not status.rpc_available
        assert status.mode == "ws"
        assert set(world.heights()) <= {5}
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


def test_a_ws_peer_that_never_answers_the_subscription_is_unavailable(world: World) -> None:
    double = HostileWsRpcDouble(None, silent=True)
    try:
        world.start(double.url, DAEMON_RPC_TIMEOUT="200ms")
        [down] = world.events.wait_for(RpcUnavailable, timeout=3.0)
        assert "no answer to eth_subscribe within 0.2s" in down.error
        assert world.status().height is None
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


def test_a_ws_address_served_by_plain_http_fails_the_handshake(world: World) -> None:
    double = HostileHttpRpcDouble(_body(_result('"0x5"')))
    try:
        world.start(double.url.replace("http://", "ws://"))
        [down] = world.events.wait_for(RpcUnavailable, timeout=3.0)
        assert "Invalid" in down.error  # websockets' InvalidStatus / InvalidMessage
        assert world.status().fallback is None
        assert world.orchestrator.of(HeadObserved) == []
        assert world.status().mode == "ws"
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


def test_a_notification_of_another_subscription_is_ignored(world: World) -> None:
    double = HostileWsRpcDouble(_heads({"number": "0x63"}, subscription="0xother"))
    try:
        world.start(double.url)
        [head] = world.orchestrator.wait_for(HeadObserved)
        assert head.height == 5  # from eth_blockNumber, not from the stray notification
        assert world.events.of(RpcUnavailable) == []
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


def test_stopping_the_actor_ends_a_blocked_subscription_promptly(world: World) -> None:
    double = HostileWsRpcDouble(None)  # subscribes, answers 0x5, then stays silent
    try:
        earlier = {thread for thread in threading.enumerate() if thread.name == "height-ws"}
        ref = world.start(double.url)
        world.orchestrator.wait_for(HeadObserved)
        began = time.monotonic()
        ref.stop(timeout=5.0)
        assert time.monotonic() - began < 1.0
        ours = [t for t in threading.enumerate() if t.name == "height-ws" and t not in earlier]
        assert ours == []
    finally:
        double.close()


def test_a_refused_subscription_falls_back_to_polling_and_says_so(world: World) -> None:
    refusal = json.dumps(
        {"jsonrpc": "2.0", "id": 0, "error": {"code": -32601, "message": "no subscriptions"}}
    )
    double = HostileWsRpcDouble(None, refusal)
    try:
        world.start(double.url, DAEMON_POLL_INTERVAL="100ms")
        [head] = world.orchestrator.wait_for(HeadObserved, timeout=5.0)
        assert (head.height, head.source) == (5, "poll")
        status = world.status()
        assert (status.mode, status.poll_interval) == ("poll", 0.1)
        assert status.fallback is not None
        assert "-32601" in status.fallback
        assert world.events.of(RpcUnavailable) == []
    finally:
        pykka.ActorRegistry.stop_all()
        double.close()


def test_polling_tightens_near_the_next_plans_trigger_height(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    node = anvils(block_time=None)  # blocks only when the test mines one
    ref = world.start(node.url, DAEMON_POLL_INTERVAL="30s")
    world.orchestrator.wait_for(HeadObserved)
    assert world.status().poll_interval == 30.0
    # A plan far ahead changes nothing...
    ref.tell(NextTrigger(100))
    assert world.status().poll_interval == 30.0
    # ...one within a few blocks of the head makes the poller fast at once,
    ref.tell(NextTrigger(3))
    assert world.status().poll_interval == FAST_POLL_INTERVAL
    rpc_call(node.url, "evm_mine")
    # so a new block is seen long before the 30 s interval would have seen it.
    heads = world.orchestrator.wait_for(HeadObserved, 2, timeout=5.0)
    assert heads[-1].height == 1
    # The plan ran (or was cancelled): no trigger, the configured interval again.
    ref.tell(NextTrigger(None))
    assert world.status().poll_interval == 30.0


def test_a_starting_height_actor_asks_the_orchestrator_for_the_next_trigger_again(
    world: World, anvils: Callable[..., AnvilProcess]
) -> None:
    # A HeightActor restarted by its supervisor forgot the trigger; the queue may not change
    # for hours, so it asks rather than waits.
    node = anvils(block_time=None)
    ref = world.start(node.url, DAEMON_POLL_INTERVAL="30s")
    world.orchestrator.wait_for(ResendNextTrigger)
    ref.stop()
    world.start(node.url, DAEMON_POLL_INTERVAL="30s")
    assert len(world.orchestrator.wait_for(ResendNextTrigger, 2)) == 2


def test_the_orchestrator_tells_the_next_trigger_again_when_asked(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    config = load_config(env={"DAEMON_HOME": str(tmp_path / "home"), "DAEMON_NAME": "anvil"})
    home = Home.from_config(config)
    init_home(home, anvil_bin_1_5_1)
    bus = Bus()
    height = Inbox()
    bus.register("height", RecordingCollector.start(height))
    try:
        orchestrator = OrchestratorActor.start(config=config, home=home, bus=bus)
        bus.register("orchestrator", orchestrator)
        assert height.wait_for(NextTrigger)[0] == NextTrigger(None)  # told at its start
        orchestrator.tell(ResendNextTrigger())
        assert height.wait_for(NextTrigger, 2)[1] == NextTrigger(None)
    finally:
        pykka.ActorRegistry.stop_all()
