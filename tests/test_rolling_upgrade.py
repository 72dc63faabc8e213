"""A validator set upgrades in a rolling window without losing its quorum (SPEC §19).

Four (or three) real daemons, each supervising `anvil --no-mining` 1.5.1, under the WBFT
network double (devtools.wbft: blocks mined in lockstep only while a quorum of validators
answers, the fork block H withheld from 1.5.1). Each daemon gets the same plan with
`"mode": "window"`; each takes the slot of its validator index, checks that the others keep the
quorum without it, and switches to anvil 1.7.1 before H. The chain is judged from outside: block
timestamps (it never stops), the committers of each block (who was down when), and which binary
answers.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from devtools.wbft import NodeSpec, WbftNetwork
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.control.client import ControlClient
from wemixvisor.control.verbs.render import render_upgrade_status
from wemixvisor.control.verbs.replies import ListUpgradesReply
from wemixvisor.control.verbs.upgrades import upgrade_status
from wemixvisor.home.layout import Home, add_upgrade, init_home

BLOCK_TIME = 1.0
HEIGHT = 26  # the plan's H and the network's fork block
WINDOW = 20  # blocks 6-24 (margin 2): four slots of 4 blocks


class Validator:
    """A home whose daemon supervises `anvil --no-mining` on `port`, reached through the
    network double's proxy on `proxy_port` (which serves `istanbul_*`)."""

    def __init__(self, root: Path, genesis: Path, upgrade: Path, port: int, proxy: int) -> None:
        self.home = root / "home"
        self.layout = Home(root=self.home, name="anvil", data_dir=self.home / "data")
        init_home(self.layout, genesis)
        add_upgrade(self.layout, "fork", upgrade)
        self.port, self.proxy_port = port, proxy
        self.url = f"http://127.0.0.1:{port}"
        self.daemon: Daemon | None = None
        self.events: EventLog | None = None

    def start(self) -> EventLog:
        args = ["--no-mining", "--port", str(self.port)]
        args += ["--state", str(self.home / "data" / "state.json")]
        env = {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{self.proxy_port}",
            "DAEMON_STARTSECS": "300ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
            "UNSAFE_SKIP_BACKUP": "true",
            "VALIDATOR_MODE": "true",
        }
        self.daemon = Daemon(self.home, env, args).start()
        self.events = EventLog(self.daemon.events_endpoint)
        self.events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(self.url, timeout=20)
        return self.events

    def write_plan(self) -> None:
        plan = {"name": "fork", "height": HEIGHT, "mode": "window", "window": WINDOW}
        (self.home / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))

    def control(self, request: dict[str, object]) -> object:
        with ControlClient(f"ipc://{self.home}/wemixvisor/control.sock", 10.0) as control:
            return control.request(request)


@pytest.fixture
def validators(
    short_root: Path,
    anvil_bin_1_5_1: Path,
    anvil_bin_1_7_1: Path,
    free_port: Callable[[], int],
) -> Iterator[Callable[[int], list[Validator]]]:
    made: list[Validator] = []

    def make(count: int) -> list[Validator]:
        for index in range(count):
            root = short_root / f"v{index}"
            made.append(Validator(root, anvil_bin_1_5_1, anvil_bin_1_7_1, free_port(), free_port()))
        return made

    yield make
    for validator in made:
        if validator.events is not None:
            validator.events.close()
        if validator.daemon is not None:
            validator.daemon.kill()
    kill_node_processes(short_root)


def network_of(nodes: list[Validator]) -> WbftNetwork:
    specs = [NodeSpec(node.url, proxy_port=node.proxy_port) for node in nodes]
    return WbftNetwork(specs, block_time=BLOCK_TIME, fork_block=HEIGHT)


def register_everywhere(nodes: list[Validator]) -> list[EventLog]:
    logs = [node.start() for node in nodes]
    for node, events in zip(nodes, logs, strict=True):
        node.write_plan()
        registered = events.wait_for("plan.registered")
        assert (registered["height"], registered["late"]) == (HEIGHT, False)
    return logs


def seen_or_next(events: EventLog, topic: str, timeout: float) -> dict[str, Any]:
    """The first `topic` event already seen, else the next one."""
    earlier = next((payload for payload in events.seen if payload["topic"] == topic), None)
    return earlier if earlier is not None else events.wait_for(topic, timeout=timeout)


def seen_or_next_where(
    events: EventLog, topic: str, where: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The first `topic` event matching `where` already seen, else the next one."""
    earlier = next((p for p in events.seen if p["topic"] == topic and where(p)), None)
    return earlier if earlier is not None else events.wait_for(topic, where, timeout=timeout)


def heads_at(events: EventLog, topic: str) -> list[int]:
    """The head the daemon had last reported when it published each `topic` event."""
    head, heads = 0, []
    for payload in events.seen:
        if payload["topic"] == "height.observed":
            head = payload["height"]
        elif payload["topic"] == topic:
            heads.append(head)
    return heads


def block_timestamps(url: str, last: int) -> list[int]:
    blocks = [rpc_call(url, "eth_getBlockByNumber", [hex(n), False]) for n in range(1, last + 1)]
    return [int(block["timestamp"], 16) for block in blocks]


def downtime_runs(network: WbftNetwork, addresses: list[str], last: int) -> list[list[int]]:
    """For each validator, the blocks (1..last) it did not commit."""
    committers = {n: set(network.committers(n) or ()) for n in range(1, last + 1)}
    return [[n for n in committers if address not in committers[n]] for address in addresses]


def test_four_validators_upgrade_one_slot_after_another_and_the_chain_never_stops(
    validators: Callable[[int], list[Validator]],
) -> None:
    nodes = validators(4)
    logs = register_everywhere(nodes)
    with network_of(nodes) as network:
        completed = [
            events.wait_for("upgrade.completed", timeout=HEIGHT * BLOCK_TIME + 60)
            for events in logs
        ]
        network.wait_for(
            lambda s: (
                s.head is not None
                and s.head >= HEIGHT + 2
                and all(node.has_fork and node.committing for node in s.nodes)
            ),
            timeout=60,
        )
        last = HEIGHT + 2
        runs = downtime_runs(network, network.addresses, last)
    started = [next(p for p in events.seen if p["topic"] == "upgrade.started") for events in logs]
    observed = [payload["observed_height"] for payload in started]
    # Slot i opens at block 6 + 4i: validator-index order, every switch before H-1.
    assert observed == sorted(observed)
    for index, height in enumerate(observed):
        assert 6 + 4 * index <= height < HEIGHT - 1, observed
    # Each validator missed at most one short run of blocks (often none: a restart of anvil is
    # quicker than a block), and no block was missed by two validators.
    for run in runs:
        assert run == list(range(run[0], run[-1] + 1)) if run else True, runs
    missed = [block for run in runs for block in run]
    assert len(missed) == len(set(missed)), runs
    # The chain never stopped: no interval over two block times, judged by block timestamps.
    stamps = block_timestamps(nodes[0].url, last)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) <= 2 * BLOCK_TIME, gaps
    for node, events, done in zip(nodes, logs, completed, strict=True):
        assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.7.1"
        topics = {p["topic"] for p in events.seen}
        assert not topics & {"upgrade.failed", "upgrade.window_closed", "upgrade.overshoot"}
        assert done["name"] == "fork"
    # Each was armed ahead of its own slot, not of H-1: in its slot only the stop was left.
    for index, events in enumerate(logs):
        armed = next(p for p in events.seen if p["topic"] == "upgrade.armed")
        assert armed["switch_at"] == 6 + 4 * index, armed
        assert armed["head"] < armed["switch_at"] <= observed[index]
        assert "upgrade.disarmed" not in {p["topic"] for p in events.seen}


def test_three_validators_wait_in_vain_the_window_closes_and_all_switch_at_h_minus_1(
    validators: Callable[[int], list[Validator]],
) -> None:
    nodes = validators(3)
    logs = register_everywhere(nodes)
    with network_of(nodes) as network:
        waiting = logs[0].wait_for("upgrade.waiting_for_quorum", timeout=HEIGHT * BLOCK_TIME)
        assert (waiting["active"], waiting["needed"], waiting["slot_start"]) == (2, 3, 6)
        # Said ahead of H as well: with 3 validators (quorum 3) any one's downtime halts the chain.
        # (A check right as the chain starts finds nobody sealed yet: active_without_me 0.)
        for events in logs:
            risk = seen_or_next_where(
                events,
                "validator.quorum_at_risk",
                lambda p: p["active_without_me"] == 2,
                HEIGHT * BLOCK_TIME,
            )
            assert (risk["validators"], risk["quorum"], risk["active_without_me"]) == (3, 3, 2)
        listing = msgspec.convert(nodes[0].control({"type": "list_upgrades"}), ListUpgradesReply)
        shown = render_upgrade_status(upgrade_status(listing))
        assert "waiting for quorum: 2 other validators up, 3 needed" in shown
        closed = [
            seen_or_next(events, "upgrade.window_closed", HEIGHT * BLOCK_TIME + 30)
            for events in logs
        ]
        assert all("short of the quorum" in payload["reason"] for payload in closed)
        started = [seen_or_next(events, "upgrade.started", 30) for events in logs]
        assert [payload["observed_height"] for payload in started] == [HEIGHT - 1] * 3
        # The preflight's re-check "shortly before the switch" keys on the slot: the last
        # slot (blocks 18-23) is checked again (with its quorum warning) from block 8 on,
        # before the slot, not 10 blocks before H-1.
        last = next(
            events
            for events in logs
            if next(p for p in events.seen if p["topic"] == "upgrade.waiting_for_quorum")[
                "slot_start"
            ]
            == 18
        )
        assert any(8 <= head < 18 for head in heads_at(last, "validator.quorum_at_risk"))
        for events in logs:
            seen_or_next(events, "upgrade.completed", 60)
        network.wait_for(
            lambda s: s.head is not None and s.head >= HEIGHT + 1 and not s.halted, timeout=60
        )
    for node, events in zip(nodes, logs, strict=True):
        assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.7.1"
        assert "upgrade.failed" not in {p["topic"] for p in events.seen}


def test_a_validator_already_down_makes_the_others_wait_until_it_returns(
    validators: Callable[[int], list[Validator]],
) -> None:
    nodes = validators(4)
    logs = register_everywhere(nodes)
    assert nodes[3].daemon is not None
    # The node the daemon runs (its other children come and go: a preflight's `--version`).
    record = msgspec.json.decode((nodes[3].home / "wemixvisor/state/node.pid").read_bytes())
    anvil_pid = int(record["pid"])
    with network_of(nodes) as network:
        # Validator 3 hangs (SIGSTOP) well before the window opens at block 6: the network
        # goes on with 3 of 4. (Hung, not killed: its daemon would restart a killed node at
        # once, and the outage must last until the window opens.)
        network.wait_for_height(1)
        os.kill(anvil_pid, signal.SIGSTOP)
        try:
            network.wait_for(lambda s: not s.nodes[3].committing, timeout=30)
            # Validator 0's slot opens with validator 3 down: 2 others up, 3 needed. It waits.
            waiting = logs[0].wait_for("upgrade.waiting_for_quorum", timeout=HEIGHT * BLOCK_TIME)
            assert (waiting["active"], waiting["needed"], waiting["slot_start"]) == (2, 3, 6)
            assert not any(p["topic"] == "upgrade.started" for p in logs[0].seen)
        finally:
            os.kill(anvil_pid, signal.SIGCONT)
        network.wait_for(lambda s: s.nodes[3].committing, timeout=30)
        started = logs[0].wait_for("upgrade.started", timeout=30)
        # It went once validator 3 was committing again, still inside the window.
        assert waiting["head"] < started["observed_height"] < HEIGHT - 2
        assert "upgrade.window_closed" not in {p["topic"] for p in logs[0].seen}
        for events in logs:
            seen_or_next(events, "upgrade.completed", HEIGHT * BLOCK_TIME + 60)
        network.wait_for(
            lambda s: s.head is not None and s.head >= HEIGHT + 1 and not s.halted, timeout=60
        )
    for node, events in zip(nodes, logs, strict=True):
        assert rpc_call(node.url, "web3_clientVersion") == "anvil/v1.7.1"
        assert "upgrade.failed" not in {p["topic"] for p in events.seen}
