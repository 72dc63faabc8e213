"""The upgrade height is the fork block (SPEC §5): the old binary holds H-1, the new one makes H.

A geth-family hard fork activates at block F; a binary without it cannot import F, so it stays
at F-1. The WBFT network double (devtools.wbft) plays that network over the node a real
wemixvisor daemon supervises (`anvil --no-mining`): it never gives block F to anvil 1.5.1 and
mines on as soon as a node answering as 1.7.1 holds F-1. A daemon that waited for head >= H
would wait forever here; the daemon switches at F-1 and the chain continues past F. The same
over each way the daemon can follow the head (HTTP polling, ws, IPC), and an RPC outage at H-1
(an overshoot: reported with its count, the upgrade still runs).
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from devtools.wbft import NodeSpec, WbftNetwork
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.support import wait_until
from wemixvisor.control.client import ControlClient
from wemixvisor.control.verbs.render import render_status
from wemixvisor.control.verbs.replies import StatusReply
from wemixvisor.home.layout import Home, add_upgrade, init_home

FORK = 8  # the fork block F of the network, and the plan's height H
BLOCK_TIME = 0.5


class Node:
    """A home whose daemon supervises `anvil --no-mining` on `port` (blocks come from outside)."""

    def __init__(self, root: Path, genesis: Path, upgrade: Path, port: int) -> None:
        self.home = root / "home"
        self.layout = Home(root=self.home, name="anvil", data_dir=self.home / "data")
        init_home(self.layout, genesis)
        add_upgrade(self.layout, "fork", upgrade)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ipc = root / "anvil.ipc"
        self.daemon: Daemon | None = None

    def start(self, rpc_address: str, *, ipc: bool = False) -> EventLog:
        args = ["--no-mining", "--port", str(self.port)]
        args += ["--state", str(self.home / "data" / "state.json")]
        if ipc:
            args += ["--ipc", str(self.ipc)]
        env = {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": rpc_address,
            "DAEMON_STARTSECS": "300ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
            "UNSAFE_SKIP_BACKUP": "true",
        }
        self.daemon = Daemon(self.home, env, args).start()
        events = EventLog(self.daemon.events_endpoint)
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(self.url, timeout=20)
        return events

    def write_plan(self, height: int) -> None:
        plan = {"name": "fork", "height": height}
        (self.home / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))

    def head(self) -> int:
        return int(rpc_call(self.url, "eth_blockNumber"), 16)

    def plan_entry(self) -> dict[str, object]:
        queue = msgspec.json.decode(
            (self.home / "wemixvisor" / "state" / "plans.json").read_bytes()
        )
        [entry] = queue["plans"]
        assert isinstance(entry, dict)
        return entry


@pytest.fixture
def node_factory(
    short_root: Path,
    anvil_bin_1_5_1: Path,
    anvil_bin_1_7_1: Path,
    free_port: Callable[[], int],
) -> Iterator[Callable[[], Node]]:
    nodes: list[Node] = []

    def make() -> Node:
        node = Node(short_root / f"n{len(nodes)}", anvil_bin_1_5_1, anvil_bin_1_7_1, free_port())
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.daemon is not None:
            node.daemon.kill()
    kill_node_processes(short_root)


@pytest.mark.parametrize("follow", ["http", "ws", "ipc"])
def test_the_old_binary_holds_f_minus_1_and_the_new_one_carries_the_chain_past_f(
    node_factory: Callable[[], Node], follow: str
) -> None:
    node = node_factory()
    address = {"http": node.url, "ws": f"ws://127.0.0.1:{node.port}", "ipc": str(node.ipc)}
    events = node.start(address[follow], ipc=follow == "ipc")
    try:
        assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.5.1"
        # Registered before the network mines a block: the plan is not late.
        node.write_plan(FORK)
        registered = events.wait_for("plan.registered")
        assert (registered["height"], registered["late"]) == (FORK, False)
        with ControlClient(f"ipc://{node.home}/wemixvisor/control.sock", 10.0) as control:
            status = msgspec.convert(control.request({"type": "status"}), StatusReply)
        assert f"plans     1 pending: fork at {FORK} (switches after block {FORK - 1})" in (
            render_status(status)
        )

        spec = NodeSpec(node.url)
        with WbftNetwork([spec], block_time=BLOCK_TIME, fork_block=FORK) as network:
            started = events.wait_for("upgrade.started", timeout=FORK * BLOCK_TIME + 30)
            # The daemon switched on seeing F-1: the old binary could never have made F.
            assert started["observed_height"] == FORK - 1
            assert started["late"] is False
            completed = events.wait_for("upgrade.completed", timeout=60)
            assert completed["first_head"] == FORK - 1
            past = network.wait_for(
                lambda s: s.head is not None and s.head >= FORK + 2 and s.nodes[0].has_fork,
                timeout=30,
            )
            assert past.nodes[0].client_version == "anvil/v1.7.1"
            assert past.nodes[0].committing
            events.wait_for("height.observed", lambda p: p["height"] >= FORK + 2, timeout=20)
        assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.7.1"
        assert node.head() >= FORK + 2
        topics = [p["topic"] for p in events.seen]
        assert "upgrade.overshoot" not in topics
        assert "upgrade.failed" not in topics
        wait_until(lambda: node.plan_entry()["status"] != "running", what="plan finished")
        assert node.plan_entry()["status"] == "completed"
        assert node.plan_entry()["late"] is False
    finally:
        events.close()
    assert node.daemon is not None
    assert node.daemon.terminate() == 0


class RpcGate:
    """An HTTP JSON-RPC pass-through to a node that the test can close (503) and open again:
    the daemon's view of the node's RPC goes away while the node itself keeps importing."""

    def __init__(self, upstream: str) -> None:
        self.open = threading.Event()
        self.open.set()
        target = urllib.parse.urlsplit(upstream)
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = 503, b"closed"
                if gate.open.is_set():
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                    try:
                        conn.request("POST", "/", body, {"Content-Type": "application/json"})
                        response = conn.getresponse()
                        status, answer = response.status, response.read()
                    except OSError:
                        status, answer = 502, b"node unreachable"
                    finally:
                        conn.close()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_rpc_down_at_h_minus_1_is_an_overshoot_reported_with_its_count_and_still_upgrades(
    node_factory: Callable[[], Node],
) -> None:
    node = node_factory()
    gate = RpcGate(node.url)
    try:
        events = node.start(gate.url)
        try:
            height = node.head() + 3
            node.write_plan(height)
            events.wait_for("plan.registered")
            gate.open.clear()
            events.wait_for("rpc.unavailable", timeout=20)
            # Unseen by the daemon, the old binary imports H-1, H and H+1 ...
            while node.head() < height + 1:
                rpc_call(node.url, "evm_mine")
            # Nothing started (armed at registration at most, and disarmed with RPC gone).
            arming = ("upgrade.armed", "upgrade.disarmed")
            fired = [p["topic"] for p in events.seen if p["topic"].startswith("upgrade.")]
            assert [topic for topic in fired if topic not in arming] == []
            gate.open.set()
            # ... and is seen at H+1: the upgrade runs at once, marked late, and the two
            # blocks at or beyond H are reported.
            started = events.wait_for("upgrade.started", timeout=30)
            assert started["observed_height"] == height + 1
            assert started["late"] is True
            overshoot = events.wait_for("upgrade.overshoot", timeout=10)
            assert (overshoot["name"], overshoot["height"]) == ("fork", height)
            assert (overshoot["head"], overshoot["blocks"]) == (height + 1, 2)
            completed = events.wait_for("upgrade.completed", timeout=60)
            assert completed["first_head"] == height + 1
            assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.7.1"
            # The queue records the outcome once the orchestrator has the saga's result.
            wait_until(lambda: node.plan_entry()["status"] != "running", what="plan finished")
            entry = node.plan_entry()
            assert (entry["status"], entry["late"]) == ("completed", True)
        finally:
            events.close()
        assert node.daemon is not None
        assert node.daemon.terminate() == 0
    finally:
        gate.close()
