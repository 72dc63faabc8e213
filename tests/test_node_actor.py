"""The NodeActor in-process, supervising a real anvil: status, verbs, watchers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from devtools.anvil import wait_for_rpc
from wemixvisor.actors.node import NodeActor
from wemixvisor.bus import Bus
from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, init_home
from wemixvisor.messages.events import Event
from wemixvisor.messages.node import (
    AcquireNodeLease,
    GetNodeStatus,
    NodeLease,
    NodeState,
    NodeStateChanged,
    NodeStatus,
    ReleaseNodeLease,
    RestartNode,
    StartNode,
    StopNode,
    WatchNode,
)
from wemixvisor.node.process import TreeSampler


class Collector(pykka.ThreadingActor):
    """Stands where the events publisher (or an orchestrator) would: keeps what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "get":
            return list(self.received)
        self.received.append(message)
        return None


@pytest.fixture
def node(
    tmp_path: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> Iterator[tuple[pykka.ActorRef[Any], pykka.ActorRef[Any], pykka.ActorRef[Any], str]]:
    home_dir = tmp_path / "home"
    home = Home(root=home_dir, name="anvil", data_dir=home_dir / "data")
    init_home(home, anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = load_config(
        env={
            "DAEMON_HOME": str(home_dir),
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": url,
            "DAEMON_SHUTDOWN_GRACE": "10s",
        }
    )
    bus = Bus()
    events = Collector.start()
    watcher = Collector.start()
    bus.register("events", events)
    ref = NodeActor.start(
        config=config,
        home=home,
        bus=bus,
        node_args=["--port", str(port), "--block-time", "1"],
        autostart=False,
    )
    ref.tell(WatchNode(watcher=watcher))
    yield ref, events, watcher, url
    done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
    ref.tell(StopNode(reason="test teardown", done=done))
    done.get(timeout=20)


def wait_state(ref: pykka.ActorRef[Any], state: NodeState, timeout: float = 15) -> NodeStatus:
    deadline = time.monotonic() + timeout
    while True:
        status: NodeStatus = ref.ask(GetNodeStatus(), timeout=5)
        if status.state is state:
            return status
        assert time.monotonic() < deadline, f"node stayed {status.state}, wanted {state}"
        time.sleep(0.02)


def topics(collector: pykka.ActorRef[Any]) -> list[str]:
    return [m.topic for m in collector.ask("get", timeout=5) if isinstance(m, Event)]


def test_status_reports_pid_version_and_resource_use_of_a_running_node(node: Any) -> None:
    ref, events, _watcher, url = node
    assert ref.ask(GetNodeStatus(), timeout=5).state is NodeState.STOPPED
    ref.tell(StartNode())
    wait_state(ref, NodeState.RUNNING)
    wait_for_rpc(url, timeout=10)
    deadline = time.monotonic() + 10
    status = ref.ask(GetNodeStatus(), timeout=5)
    while status.version is None and time.monotonic() < deadline:
        time.sleep(0.05)
        status = ref.ask(GetNodeStatus(), timeout=5)
    assert status.pid is not None
    assert status.version is not None and "1.5.1" in status.version
    assert status.target == "genesis"
    assert status.rss_bytes > 1_000_000
    assert status.uptime is not None and status.uptime >= 0
    assert status.adopted is False
    assert topics(events)[:2] == ["node.starting", "node.running"]
    # The heartbeat's ask reads neither CPU nor RSS: it gets the last sample, the tree unwalked.
    light = ref.ask(GetNodeStatus(stats=False), timeout=5)
    assert light.state is NodeState.RUNNING
    assert (light.cpu_percent, light.rss_bytes) == (status.cpu_percent, status.rss_bytes)


def test_a_sampler_gives_its_last_sample_without_walking_the_tree() -> None:
    sampler = TreeSampler(max_age=0.0)
    assert sampler.last(os.getpid()) == (0.0, 0)
    sampled = sampler.sample(os.getpid())
    assert sampled[1] > 1_000_000
    assert sampler.last(os.getpid()) == sampled
    assert sampler.last(os.getppid()) == (0.0, 0)  # another process: never sampled


def test_stop_start_and_restart_are_expected_transitions_seen_by_watchers(node: Any) -> None:
    ref, events, watcher, url = node
    ref.tell(StartNode())
    first = wait_state(ref, NodeState.RUNNING)
    done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
    ref.tell(StopNode(reason="maintenance", done=done))
    stopped = done.get(timeout=20)
    assert stopped.state is NodeState.STOPPED
    assert stopped.exits[-1].expected is True
    assert stopped.exits[-1].pid == first.pid

    ref.tell(RestartNode())  # from STOPPED: a plain start
    second = wait_state(ref, NodeState.RUNNING)
    ref.tell(RestartNode())
    deadline = time.monotonic() + 20
    third = ref.ask(GetNodeStatus(), timeout=5)
    while third.pid in (None, second.pid) or third.state is not NodeState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
        third = ref.ask(GetNodeStatus(), timeout=5)
    wait_for_rpc(url, timeout=10)
    assert third.restarts == 0  # operator restarts are not failures
    changes = [m for m in watcher.ask("get", timeout=5) if isinstance(m, NodeStateChanged)]
    states = [c.state for c in changes]
    assert states[:4] == [
        NodeState.STARTING,
        NodeState.RUNNING,
        NodeState.STOPPING,
        NodeState.STOPPED,
    ]
    assert "node.stopped" in topics(events)


def test_while_an_upgrade_holds_the_node_only_it_stops_and_starts_the_node(node: Any) -> None:
    ref, _events, _watcher, _url = node
    ref.tell(StartNode())
    running = wait_state(ref, NodeState.RUNNING)
    lease = ref.ask(AcquireNodeLease("upgrade v2", "upgrade at height 100"), timeout=5)
    assert lease == NodeLease(True, "upgrade v2", "upgrade at height 100")
    assert ref.ask(GetNodeStatus(), timeout=5).lease == "upgrade v2: upgrade at height 100"
    refused = ref.ask(AcquireNodeLease("restore x", "restore"), timeout=5)
    assert refused == NodeLease(False, "upgrade v2", "upgrade at height 100")

    # The operator's stop is refused: its future gets the node as it is.
    operator: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
    ref.tell(StopNode(reason="operator", done=operator))
    assert operator.get(timeout=5).state is NodeState.RUNNING
    assert ref.ask(GetNodeStatus(), timeout=5).pid == running.pid

    upgrade: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
    ref.tell(StopNode(reason="upgrade v2", done=upgrade, holder="upgrade v2"))
    assert upgrade.get(timeout=20).state is NodeState.STOPPED
    ref.tell(StartNode(reason="operator"))
    # A restore waiting for the node gets it when the upgrade gives it back.
    waiting: pykka.ThreadingFuture[NodeLease] = pykka.ThreadingFuture()
    ref.tell(AcquireNodeLease("restore x", "restore", wait=True, done=waiting))
    assert ref.ask(GetNodeStatus(), timeout=5).state is NodeState.STOPPED
    with pytest.raises(pykka.Timeout):
        waiting.get(timeout=0.2)
    ref.tell(ReleaseNodeLease("upgrade v2"))
    assert waiting.get(timeout=5) == NodeLease(True, "restore x", "restore")
    ref.tell(ReleaseNodeLease("restore x"))
    ref.tell(StartNode(reason="operator"))
    wait_state(ref, NodeState.RUNNING)
    assert ref.ask(GetNodeStatus(), timeout=5).lease is None
