"""The WBFT network test double (devtools.wbft) bringing a returning node back to the head.

Scenarios over real anvil nodes: a validator whose anvil is stopped, misses at least 1, 5 or 20
blocks (then a second validator stops and the chain halts) and restarts from its `--state` file
at a later wall-clock second than every block it missed (anvil's clock then starts past them) is
given those blocks with the network's timestamps and hashes, and commits again, restoring the
quorum — with anvil 1.5.1 and 1.7.1; during catch-up a binary without the fork stops at
F-1 until it is replaced; a node that cannot be brought along (a fresh genesis newer than the
chain, blocks of another chain, nonsense answers) is reported in its status, in the log and by
the network process, while the others go on without it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devtools.anvil import AnvilProcess, anvil_binary, rpc_call
from devtools.wbft import NetworkStatus, NodeSpec, NodeStatus, WbftNetwork
from devtools.wbft.rules import catch_up_refusal, parse_quantity
from devtools.wbft_network import _report
from tests.support import wait_until

BLOCK_TIME = 0.25
RETURNING = 3  # the validator that goes down and comes back
QUORUM_KEEPER = 2  # stopped once RETURNING missed its blocks: without both the chain halts


def call(url: str, method: str, *params: Any) -> Any:
    return rpc_call(url, method, list(params), timeout=5.0)


def block(url: str, number: int) -> dict[str, Any]:
    found: dict[str, Any] = call(url, "eth_getBlockByNumber", hex(number), False)
    return found


def last_committed(network: WbftNetwork, index: int, head: int) -> int:
    """The last block node `index` committed, up to `head` (0 if none)."""
    address = network.addresses[index]
    return max(
        (n for n in range(1, head + 1) if address in (network.committers(n) or ())), default=0
    )


def after_the_second_of(network: WbftNetwork, number: int) -> None:
    """Wait until the wall clock is past the second block `number` is stamped with: a node
    started now starts its clock later than every block up to `number`."""
    record = network.ledger.recorded(number)
    assert record is not None and record.timestamp is not None
    stamp = record.timestamp
    wait_until(lambda: time.time() >= stamp + 1, timeout=5, what=f"the second after {stamp}")


@pytest.mark.parametrize("version", ["1.5.1", "1.7.1"])
@pytest.mark.parametrize("missed", [1, 5, 20])
def test_a_validator_down_for_blocks_catches_up_and_commits_again(
    tmp_path: Path, version: str, missed: int
) -> None:
    with WbftNetwork.launch([version] * 4, tmp_path, block_time=BLOCK_TIME) as network:
        network.wait_for_height(2)
        network.stop_node(RETURNING)
        down = network.wait_for(lambda s: not s.nodes[RETURNING].answering)
        left_at = last_committed(network, RETURNING, down.head or 0)
        network.wait_for_height(left_at + missed)
        network.stop_node(QUORUM_KEEPER)  # 2 of 4: the chain halts until RETURNING is back
        halted = network.wait_for(lambda s: s.halted and not s.nodes[QUORUM_KEEPER].answering)
        halt = halted.head
        assert halt is not None and halt - left_at >= missed
        after_the_second_of(network, halt)

        network.start_node(RETURNING)  # its anvil's args carry no --timestamp: the wall clock
        back = network.wait_for(
            lambda s: s.head is not None and s.head > halt and s.nodes[RETURNING].committing
        )

        assert not back.halted and back.nodes[RETURNING].left_out is None
        returning = network.addresses[RETURNING]
        for number in range(left_at + 1, halt + 1):
            assert returning not in (network.committers(number) or ())
        # It took part in the quorum of the first block after its return.
        assert returning in (network.committers(halt + 1) or ())
        for number in range(1, halt + 2):
            ours = block(network.node_url(RETURNING), number)
            theirs = block(network.node_url(0), number)
            assert (ours["timestamp"], ours["hash"]) == (theirs["timestamp"], theirs["hash"])


def test_catch_up_withholds_the_fork_block_from_a_binary_without_the_fork(
    tmp_path: Path,
) -> None:
    fork = 8
    versions = ["1.7.1", "1.7.1", "1.7.1", "1.5.1"]
    with WbftNetwork.launch(versions, tmp_path, block_time=BLOCK_TIME, fork_block=fork) as network:
        network.wait_for_height(2)
        network.stop_node(RETURNING)
        network.wait_for(lambda s: not s.nodes[RETURNING].answering)
        passed = network.wait_for_height(fork + 6).head or 0
        after_the_second_of(network, passed)

        network.start_node(RETURNING)  # still the old binary
        old = network.wait_for(
            lambda s: (
                s.nodes[RETURNING].head == fork - 1 and s.nodes[RETURNING].left_out is not None
            )
        )
        assert "lacks the fork" in (old.nodes[RETURNING].left_out or "")
        assert not old.nodes[RETURNING].committing
        later = network.wait_for_ticks(4)
        assert (later.head or 0) > passed
        assert int(call(network.node_url(RETURNING), "eth_blockNumber"), 16) == fork - 1
        for number in range(1, fork):
            assert (
                block(network.node_url(RETURNING), number)["timestamp"]
                == block(network.node_url(0), number)["timestamp"]
            )

        network.stop_node(RETURNING)
        network.start_node(RETURNING, "1.7.1")  # the upgrade: same state file, new binary
        new = network.wait_for(
            lambda s: s.nodes[RETURNING].has_fork and s.nodes[RETURNING].committing
        )
        assert new.nodes[RETURNING].left_out is None
        assert new.nodes[RETURNING].head == new.head
        for number in range(1, (new.head or 0) + 1):
            assert (
                block(network.node_url(RETURNING), number)["timestamp"]
                == block(network.node_url(0), number)["timestamp"]
            )


def fresh_genesis_newer_than_the_chain(network: WbftNetwork, directory: Path) -> list[str]:
    """anvil arguments of a node that lost its data and started a genesis after the chain's."""
    newest = network.ledger.recorded(network.status().head or 0)
    assert newest is not None and newest.timestamp is not None
    return ["--timestamp", str(newest.timestamp + 1000)]


def blocks_of_another_chain(network: WbftNetwork, directory: Path) -> list[str]:
    """anvil arguments of a node that lost its data and then mined two blocks of its own."""
    del network
    state = directory / "own.json"
    with AnvilProcess(
        anvil_binary("1.5.1"),
        directory,
        block_time=None,
        state_file=state,
        extra_args=["--timestamp", "1700000000"],
    ) as own:
        for number in (1, 2):
            call(own.url, "evm_mine", 1_700_000_000 + number)
    return ["--state", str(state)]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (fresh_genesis_newer_than_the_chain, "a fresh genesis newer than the chain"),
        (blocks_of_another_chain, "it is on another chain"),
    ],
)
def test_a_node_that_cannot_catch_up_is_reported_and_the_others_go_on(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    arguments: Callable[[WbftNetwork, Path], list[str]],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="devtools.wbft.network")
    with WbftNetwork.launch(["1.5.1"] * 4, tmp_path, block_time=BLOCK_TIME) as network:
        network.wait_for_height(4)
        network.stop_node(RETURNING)
        network.wait_for(lambda s: not s.nodes[RETURNING].answering)
        port = int(network.node_url(RETURNING).rsplit(":", 1)[1])
        extra = ["--no-mining", *arguments(network, tmp_path)]
        stranger = AnvilProcess(
            anvil_binary("1.5.1"), tmp_path, port=port, block_time=None, extra_args=extra
        )
        try:
            stranger.start()
            own_head = int(call(stranger.url, "eth_blockNumber"), 16)
            seen = network.wait_for(lambda s: s.nodes[RETURNING].left_out is not None)
            status = seen.nodes[RETURNING]
            assert status.answering and not status.committing
            assert reason in (status.left_out or "")
            going_on = network.wait_for_height((seen.head or 0) + 3)
            assert going_on.nodes[RETURNING].left_out == status.left_out
            assert int(call(stranger.url, "eth_blockNumber"), 16) == own_head
            assert network.addresses[RETURNING] not in (
                network.committers(going_on.head or 0) or ()
            )
            address = network.addresses[RETURNING]
            messages = [r.getMessage() for r in caplog.records if address in r.getMessage()]
            reported = [m for m in messages if "left out" in m]
            appeared = [m for m in messages if " answers: " in m]
            # Once each time it (re)appears, not at every tick.
            assert reported and all(reason in m for m in reported)
            assert len(reported) == len(appeared) - 1  # its first appearance was as itself
        finally:
            stranger.stop()
            stranger.kill()


class LyingRelay:
    """A node that answers its own blocks with nonsense (while `lying`): an HTTP JSON-RPC relay
    in front of a real anvil that replaces the result of `eth_getBlockByNumber`."""

    def __init__(self, upstream: str, lie: object) -> None:
        self.upstream = upstream
        self.lie = lie
        self.lying = True
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                try:
                    result = call(relay.upstream, request["method"], *request["params"])
                    if relay.lying and request["method"] == "eth_getBlockByNumber":
                        result = relay.lie
                    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "result": result}
                except OSError:
                    self.send_error(502)
                    return
                except Exception as exc:  # anvil's error goes back as a JSON-RPC error
                    reply = {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": str(exc)}}
                payload = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> LyingRelay:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def anvils(tmp_path: Path) -> Iterator[list[AnvilProcess]]:
    """Four anvil 1.5.1 nodes with one genesis and a state file each, started by the test."""
    genesis = ["--no-mining", "--timestamp", str(int(time.time()))]
    started = [
        AnvilProcess(
            anvil_binary("1.5.1"),
            tmp_path,
            block_time=None,
            state_file=tmp_path / f"{index}.json",
            extra_args=genesis,
        )
        for index in range(4)
    ]
    try:
        for anvil in started:
            anvil.start()
        yield started
    finally:
        for anvil in started:
            anvil.stop()
            anvil.kill()


@pytest.mark.parametrize(
    "lie",
    [
        None,
        "not a block",
        {"number": "0x1"},
        {"timestamp": "0xzz"},
        {"timestamp": 1700000000},
        {"timestamp": "0x" + "f" * 17},  # more than 2**63-1
        {"timestamp": "0x" + "1" * 4_000_000},  # 4 MB
    ],
    ids=["null", "string", "no-timestamp", "not-hex", "json-int", "too-big", "oversized"],
)
def test_a_node_answering_nonsense_about_its_head_is_left_out_until_it_answers_sense(
    tmp_path: Path, anvils: list[AnvilProcess], lie: object
) -> None:
    with LyingRelay(anvils[RETURNING].url, lie) as relay:
        specs = [NodeSpec(anvil.url) for anvil in anvils[:RETURNING]] + [NodeSpec(relay.url)]
        with WbftNetwork(specs, block_time=BLOCK_TIME) as network:
            network.wait_for_height(2)
            anvils[RETURNING].stop()
            network.wait_for(lambda s: not s.nodes[RETURNING].answering)
            network.wait_for_height((network.status().head or 0) + 3)
            anvils[RETURNING] = AnvilProcess(
                anvil_binary("1.5.1"),
                tmp_path,
                port=anvils[RETURNING].port,
                block_time=None,
                state_file=tmp_path / f"{RETURNING}.json",
                extra_args=["--no-mining"],
            ).start()
            lied = network.wait_for(lambda s: s.nodes[RETURNING].left_out is not None)
            assert "cannot be caught up" in (lied.nodes[RETURNING].left_out or "")
            assert not lied.nodes[RETURNING].committing and not lied.halted

            relay.lying = False
            back = network.wait_for(lambda s: s.nodes[RETURNING].committing)
            assert back.nodes[RETURNING].left_out is None
            for number in range(1, (back.head or 0) + 1):
                assert (
                    block(anvils[RETURNING].url, number)["timestamp"]
                    == block(anvils[0].url, number)["timestamp"]
                )


def node(index: int, *, left_out: str | None = None, committing: bool = True) -> NodeStatus:
    return NodeStatus(
        index, f"0x{index:040x}", True, True, 5, "anvil/v1.5.1", False, committing, left_out
    )


def test_the_network_process_says_when_it_leaves_a_node_out_and_takes_it_back() -> None:
    first = NetworkStatus(5, False, 1, 3, (node(0), node(1, left_out=None)))
    assert _report(first, None) == ["block 5: 2 committed; 2/2 nodes answer"]
    out = NetworkStatus(5, False, 2, 3, (node(0), node(1, left_out="why", committing=False)))
    assert _report(out, first) == ["node 1 left out: why"]
    assert _report(out, out) == []
    back = NetworkStatus(6, False, 3, 3, (node(0), node(1)))
    assert _report(back, out) == [
        "block 6: 2 committed; 2/2 nodes answer",
        "node 1 takes part again",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0x0", 0),
        ("0x6b0f73b3", 0x6B0F73B3),
        ("0x7fffffffffffffff", 2**63 - 1),
        ("0x8000000000000000", None),
        ("0x" + "f" * 17, None),
        ("0x", None),
        ("12", None),
        (12, None),
        (None, None),
        ("0x" + "1" * 100_000, None),
    ],
)
def test_a_quantity_from_a_node_is_a_bounded_hex_string(
    value: object, expected: int | None
) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(
    ("own", "network", "following", "refused"),
    [
        (100, 100, 101, None),
        (100, 100, 100, None),  # blocks of one second share its stamp
        (100, None, 150, None),  # a block from before the network watched: only the order
        (100, 99, 150, "it is on another chain"),
        (200, None, 150, "a fresh genesis newer than the chain"),
        (200, 200, 150, "a fresh genesis newer than the chain"),
    ],
)
def test_a_node_is_given_the_next_block_only_on_the_networks_chain_and_in_time_order(
    own: int, network: int | None, following: int, refused: str | None
) -> None:
    refusal = catch_up_refusal(7, own, network, following)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal
