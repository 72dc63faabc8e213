"""The WBFT network test double (devtools.wbft) over real anvil nodes.

Scenarios: validators mine in lockstep while a quorum answers and the chain halts without it;
a node that comes back is caught up and commits again; a node whose binary predates the fork
block stays at F-1 until it is restarted with a binary that has the fork; each node's proxy
serves `istanbul_*` with go-stablenet's shapes over HTTP and WebSocket (or refuses it) and
always over IPC (geth's framing, newHeads subscriptions), hands out long WBFT extraData, and
survives hostile input.
"""

from __future__ import annotations

import http.client
import json
import math
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devtools.anvil import AnvilProcess, RpcError, anvil_binary, rpc_call
from devtools.wbft import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    Ledger,
    NodeSpec,
    WbftNetwork,
    client_has_fork,
    istanbul,
    quorum_size,
    validator_address,
)
from devtools.wbft.ipc import ValueSplitter
from devtools.wbft.istanbul import NodeView
from wemixvisor.chain.client import ChainClient, load_web3
from wemixvisor.chain.wbft import WbftClient

BLOCK_TIME = 0.25
REPO = Path(__file__).resolve().parent.parent
REFUSING = 3  # node whose proxy refuses istanbul_*, like geth HTTP without --http.api istanbul


def call(url: str, method: str, *params: Any) -> Any:
    return rpc_call(url, method, list(params), timeout=5.0)


def post(url: str, body: bytes) -> tuple[int, Any]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=5)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(payload)
    except ValueError:
        return response.status, payload


class IpcConnection:
    """A raw client of geth's IPC framing: JSON values written and read back to back."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.splitter = ValueSplitter()
        self.values: list[bytes] = []

    def __enter__(self) -> IpcConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(payload)

    def call(self, request_id: int, method: str, *params: Any) -> Any:
        request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        self.send(json.dumps(request).encode())
        return self.receive()

    def receive(self) -> Any:
        """The next JSON value; EOFError when the endpoint closed the connection."""
        while not self.values:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.values += self.splitter.feed(chunk)
        return json.loads(self.values.pop(0))

    def drain(self) -> None:
        """Read until the endpoint closes the connection (EOFError)."""
        while True:
            self.receive()


def block(url: str, number: int) -> dict[str, Any]:
    found: dict[str, Any] = call(url, "eth_getBlockByNumber", hex(number), False)
    return found


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WbftNetwork]:
    """Four anvil 1.5.1 validators, 0.25 s blocks; node 3's proxy refuses istanbul_* over
    HTTP/WS; every node has an IPC endpoint."""
    served = [index != REFUSING for index in range(4)]
    directory = tmp_path_factory.mktemp("wbft")
    with WbftNetwork.launch(
        ["1.5.1"] * 4, directory, serve_istanbul=served, block_time=BLOCK_TIME, ipc=True
    ) as running:
        running.wait_for_height(3)
        yield running


@pytest.mark.parametrize(
    ("validators", "quorum"),
    [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (8, 6), (9, 7), (10, 7)],
)
def test_quorum_is_wbfts_quorum_size_not_two_thirds(validators: int, quorum: int) -> None:
    assert quorum_size(validators) == quorum
    assert quorum == math.ceil(validators - (validators - 1) / 3)


def test_whether_a_binary_has_the_fork_comes_from_its_client_version() -> None:
    assert client_has_fork("anvil/v1.7.1", {"1.7.1"})
    assert not client_has_fork("anvil/v1.5.1", {"1.7.1"})
    assert client_has_fork("Geth/v1.0.1-stable-abc/linux-amd64/go1.22", {"1.0.1"})
    assert not client_has_fork("", {"1.7.1"})


def test_validator_index_order_is_not_sorted_order() -> None:
    addresses = [validator_address(index) for index in range(4)]
    assert len(set(addresses)) == 4
    assert addresses != sorted(addresses)


def test_a_missing_proposer_shows_as_a_round_change_in_the_answers() -> None:
    validators = [validator_address(index) for index in range(4)]
    ledger = Ledger(validators)
    ledger.seal(1, 100, validators)  # validator 1 proposes block 1 in round 0
    ledger.seal(2, 101, [validators[0], validators[1], validators[3]])  # 2 is down: round 1
    node = NodeView(validators[0], head=2, block_hash="0x" + "ab" * 32)
    status = istanbul.answer("istanbul_status", [], node, ledger)
    assert status["blockRange"] == {"startBlock": 1, "endBlock": 2, "totalBlocks": 2}
    assert status["roundStats"] == {"roundDistribution": {"0": 1, "1": 1}, "totalRounds": 2}
    assert status["author"] == {
        validators[0]: 0,
        validators[1]: 1,
        validators[2]: 0,
        validators[3]: 1,
    }
    assert status["sealerActivity"]["committed"][validators[2]] == 1
    assert status["sealerActivity"]["prevCommitted"][validators[2]] == 1  # block 2 seals block 1
    signers = istanbul.answer("istanbul_getCommitSignersFromBlock", ["0x2"], node, ledger)
    assert signers == {
        "Number": 2,
        "Hash": node.block_hash,
        "Author": validators[3],
        "Committers": [validators[0], validators[1], validators[3]],
    }
    outsider = NodeView(validator_address(9), head=2)
    assert istanbul.answer("istanbul_isValidator", [None], outsider, ledger) is False
    assert len(bytes.fromhex(ledger.extra_data(2)[2:])) >= 200


def test_four_validators_mine_in_lockstep(network: WbftNetwork) -> None:
    status = network.wait_for_height((network.status().head or 0) + 4)
    assert status.quorum == 3
    assert all(node.answering and node.committing for node in status.nodes)
    head = status.head
    assert head is not None
    # Same binary, same genesis, same timestamps: the four chains are byte-identical.
    for number in range(1, head + 1):
        blocks = [block(network.node_url(index), number) for index in range(4)]
        assert len({(b["hash"], b["timestamp"]) for b in blocks}) == 1, number
        assert network.committers(number) == tuple(network.addresses)
    stamps = [int(block(network.node_url(0), n)["timestamp"], 16) for n in range(head + 1)]
    assert stamps == sorted(stamps)


def test_istanbul_shapes_over_http(network: WbftNetwork) -> None:
    url = network.proxy_url(0)
    me, validators = network.addresses[0], network.addresses
    assert call(url, "istanbul_nodeAddress") == me
    assert call(url, "istanbul_isValidator", None) is True
    assert call(url, "istanbul_isValidator", "0xffffff") is False  # go-wbft swallows the error
    assert call(url, "istanbul_getValidators", "latest") == validators  # index order
    assert call(url, "istanbul_getValidators", None) == validators
    assert call(url, "istanbul_getValidators", "0x1") == validators
    with pytest.raises(RpcError, match="unknown block"):
        call(url, "istanbul_getValidators", "0xffffff")

    signers = call(url, "istanbul_getCommitSignersFromBlock", "0x2")
    assert list(signers) == ["Number", "Hash", "Author", "Committers"]
    assert signers["Number"] == 2  # a JSON integer, not a hex string
    assert signers["Hash"] == block(network.node_url(0), 2)["hash"]
    assert signers["Author"] in validators
    assert signers["Committers"] == validators

    status = call(url, "istanbul_status")
    assert set(status) == {"sealerActivity", "author", "blockRange", "roundStats"}
    assert set(status["sealerActivity"]) == {
        "total",
        "prepared",
        "committed",
        "prevPrepared",
        "prevCommitted",
    }
    assert set(status["sealerActivity"]["committed"]) == set(validators)
    assert set(status["roundStats"]) == {"roundDistribution", "totalRounds"}
    ranged = call(url, "istanbul_status", "0x1", "0x3")
    assert ranged["blockRange"] == {"startBlock": 1, "endBlock": 3, "totalBlocks": 3}
    assert ranged["sealerActivity"]["committed"] == dict.fromkeys(validators, 3)
    assert sum(ranged["author"].values()) == 3
    assert ranged["roundStats"] == {"roundDistribution": {"0": 3}, "totalRounds": 3}
    with pytest.raises(RpcError, match="pass the end block number"):
        call(url, "istanbul_status", "0x1")
    with pytest.raises(RpcError, match="at most 1024"):
        call(url, "istanbul_status", "0x1", hex(1025))
    with pytest.raises(RpcError, match="current block height"):
        call(url, "istanbul_status", "0xfff0", "0xffff")


def test_istanbul_over_websocket(network: WbftNetwork) -> None:
    with connect(network.proxy_ws_url(1), proxy=None, open_timeout=5) as ws:
        requests = [
            ("istanbul_nodeAddress", []),
            ("istanbul_getValidators", ["latest"]),
            ("istanbul_getCommitSignersFromBlock", ["0x1"]),
            ("istanbul_status", ["0x1", "0x2"]),
            ("eth_blockNumber", []),
        ]
        replies = []
        for index, (method, params) in enumerate(requests):
            ws.send(json.dumps({"jsonrpc": "2.0", "id": index, "method": method, "params": params}))
            replies.append(json.loads(ws.recv(timeout=5)))
    assert [reply["id"] for reply in replies] == list(range(len(requests)))
    results = [reply["result"] for reply in replies]
    assert results[0] == network.addresses[1]
    assert results[1] == network.addresses
    assert results[2]["Number"] == 1
    assert results[2]["Committers"] == network.addresses
    assert results[3]["blockRange"]["totalBlocks"] == 2
    assert int(results[4], 16) >= 3


def test_a_refused_namespace_answers_method_not_found(network: WbftNetwork) -> None:
    url = network.proxy_url(REFUSING)
    for method in ("istanbul_nodeAddress", "istanbul_getValidators", "istanbul_status"):
        with pytest.raises(RpcError) as raised:
            call(url, method)
        assert raised.value.code == -32601
        assert raised.value.message == f"the method {method} does not exist/is not available"
    assert int(call(url, "eth_blockNumber"), 16) >= 3  # everything else still reaches the node
    with connect(network.proxy_ws_url(REFUSING), proxy=None, open_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "istanbul_nodeAddress"}))
        assert json.loads(ws.recv(timeout=5))["error"]["code"] == -32601
    # The operator adds `istanbul` to --http.api: the same node now answers.
    network.set_istanbul_served(REFUSING, True)
    try:
        assert call(url, "istanbul_nodeAddress") == network.addresses[REFUSING]
    finally:
        network.set_istanbul_served(REFUSING, False)


def test_wemixvisors_own_client_reads_the_double(network: WbftNetwork) -> None:
    for url in (network.proxy_url(2), network.proxy_ws_url(2)):
        client = WbftClient(ChainClient(url, timeout=5))
        assert client.node_address() == network.addresses[2]
        assert client.validators() == list(network.ledger.validators)  # index order
        assert client.commit_signers(2).committers == sorted(network.addresses)
        assert client.recent_status(64).block_range.end_block >= 3
        # The daemon's client reads a block with WBFT's long extraData through web3's
        # handling of it (the seal lands in proofOfAuthorityData).
        seal = client.chain.block(2)["proofOfAuthorityData"]
        assert len(seal) >= 200
        client.chain.close()


def test_ipc_serves_istanbul_where_http_and_ws_refuse_it(network: WbftNetwork) -> None:
    path = network.proxy_ipc_path(REFUSING)
    assert path.stat().st_mode & 0o777 == 0o600
    with IpcConnection(path) as ipc:
        # Two calls in one write, no separator, then one split over two writes.
        ipc.send(
            b'{"jsonrpc":"2.0","id":1,"method":"istanbul_nodeAddress","params":[]}'
            b'{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber","params":[]}'
        )
        assert ipc.receive() == {
            "jsonrpc": "2.0",
            "id": 1,
            "result": network.addresses[REFUSING],
        }
        assert int(ipc.receive()["result"], 16) >= 3
        ipc.send(b'[{"jsonrpc":"2.0","id":3,"method":"istanbul_getVal')
        ipc.send(b'idators","params":["latest"]},{"jsonrpc":"2.0","id":4,"method":"eth_chainId"}]')
        validators, chain_id = ipc.receive()
        assert (validators["id"], validators["result"]) == (3, network.addresses)
        assert (chain_id["id"], chain_id["result"]) == (4, "0x7a69")
        raw = ipc.call(5, "eth_getBlockByNumber", "0x2", False)["result"]
        assert len(bytes.fromhex(raw["extraData"][2:])) >= 200
    # The daemon's own client over the IPC path: every namespace, long extraData read.
    client = WbftClient(ChainClient(str(path), timeout=5))
    try:
        assert client.node_address() == network.addresses[REFUSING]
        assert client.commit_signers(2).committers == sorted(network.addresses)
        assert len(client.chain.block(2)["proofOfAuthorityData"]) >= 200
    finally:
        client.chain.close()


def test_new_heads_over_ipc_carry_long_extradata(network: WbftNetwork) -> None:
    with IpcConnection(network.proxy_ipc_path(0)) as ipc:
        subscription = ipc.call(1, "eth_subscribe", "newHeads")["result"]
        assert subscription.startswith("0x")
        notification = ipc.receive()
        while "method" not in notification:
            notification = ipc.receive()
        assert notification["params"]["subscription"] == subscription
        head = notification["params"]["result"]
        assert len(bytes.fromhex(head["extraData"][2:])) >= 200
        assert ipc.call(2, "istanbul_nodeAddress")["result"] == network.addresses[0]
        ipc.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 3, "method": "eth_unsubscribe", "params": [subscription]}
            ).encode()
        )
        answer = ipc.receive()
        while answer.get("id") != 3:  # notifications sent before the unsubscription landed
            answer = ipc.receive()
        assert answer["result"] is True


@pytest.mark.parametrize(
    "garbage",
    [b"{garbage}", b"42 ", b'"text"', b"\xff\xfe{}", b"[" * 200_000, b"[" + b" " * MAX_BODY_BYTES],
    ids=["malformed", "number", "string", "binary", "nested", "oversized"],
)
def test_hostile_ipc_input_closes_that_connection_only(
    network: WbftNetwork, garbage: bytes
) -> None:
    path = network.proxy_ipc_path(1)
    with IpcConnection(path) as ipc:
        ipc.send(garbage)
        assert ipc.receive()["error"]["code"] == -32700
        with pytest.raises(EOFError):
            ipc.receive()
    with IpcConnection(path) as ipc:
        assert ipc.call(1, "istanbul_nodeAddress")["result"] == network.addresses[1]


def test_an_ipc_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "node.ipc"
    taken.write_text("an operator's file")
    network = WbftNetwork([NodeSpec("http://127.0.0.1:9", ipc_path=taken)])
    with pytest.raises(FileExistsError):
        network.start()
    network.stop()
    assert taken.read_text() == "an operator's file"


def test_blocks_carry_long_wbft_extradata_a_client_must_accept(network: WbftNetwork) -> None:
    load_web3()  # web3 as the daemon imports it, keeping this process's recursion limit
    from web3 import Web3
    from web3.exceptions import ExtraDataLengthError
    from web3.middleware import ExtraDataToPOAMiddleware

    raw = block(network.proxy_url(0), 2)
    assert len(bytes.fromhex(raw["extraData"][2:])) >= 200
    assert block(network.node_url(0), 2)["extraData"] == "0x"  # anvil's own header
    assert raw["hash"] == block(network.node_url(0), 2)["hash"]

    w3 = Web3(Web3.HTTPProvider(network.proxy_url(0), request_kwargs={"timeout": 5}))
    # A plain web3 refuses extraData longer than 32 bytes ...
    with pytest.raises(ExtraDataLengthError):
        w3.eth.get_block(2)
    # ... a client of a WBFT chain adds the PoA/extradata middleware, as for geth clique.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    read = w3.eth.get_block(2)
    assert read["number"] == 2
    assert len(read["proofOfAuthorityData"]) >= 200


def test_new_heads_over_websocket_carry_long_extradata(network: WbftNetwork) -> None:
    with connect(network.proxy_ws_url(0), proxy=None, open_timeout=5) as ws:
        ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
            )
        )
        assert json.loads(ws.recv(timeout=5))["result"].startswith("0x")
        notification = json.loads(ws.recv(timeout=10))
    head = notification["params"]["result"]
    assert len(bytes.fromhex(head["extraData"][2:])) >= 200


def test_hostile_inputs_never_crash_the_proxy(network: WbftNetwork) -> None:
    url = network.proxy_url(0)
    assert post(url, b"{not json")[1]["error"]["code"] == -32700
    assert post(url, b"\xff\xfe\x00")[1]["error"]["code"] == -32700
    assert post(url, b"[" * 200_000)[1]["error"]["code"] == -32700  # nested too deep
    assert post(url, b"42")[1]["error"]["code"] == -32600
    assert post(url, b"[]")[1]["error"]["code"] == -32600
    assert post(url, b"x" * (MAX_BODY_BYTES + 1))[0] == 413
    too_many = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber"} for i in range(MAX_BATCH + 1)
    ]
    assert post(url, json.dumps(too_many).encode())[1]["error"]["code"] == -32600

    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "istanbul_nodeAddress", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": []},
        "junk",
        {"jsonrpc": "2.0", "id": 4, "method": "istanbul_getValidators", "params": "latest"},
        {"jsonrpc": "2.0", "id": 5, "method": "istanbul_status", "params": [1, 2, 3]},
        {"jsonrpc": "2.0", "id": 6, "method": "istanbul_getCommitSignersFromBlock", "params": [{}]},
    ]
    status, replies = post(url, json.dumps(batch).encode())
    assert status == 200
    assert [reply.get("id") for reply in replies] == [1, 2, None, 4, 5, 6]
    assert replies[0]["result"] == network.addresses[0]
    assert int(replies[1]["result"], 16) >= 3
    assert [reply["error"]["code"] for reply in replies[2:]] == [-32600, -32602, -32602, -32602]

    with pytest.raises(RpcError) as unknown:
        call(url, "istanbul_noSuchMethod")
    assert unknown.value.code == -32601
    with pytest.raises(RpcError):
        call(url, "nosuch_method")  # forwarded: anvil's own answer
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 405
    conn.close()
    with connect(network.proxy_ws_url(0), proxy=None, open_timeout=5) as ws:
        for garbage in ("{garbage", "[" * 200_000):
            ws.send(garbage)
            assert json.loads(ws.recv(timeout=5))["error"]["code"] == -32700
        ws.send(json.dumps([{"jsonrpc": "2.0", "id": 9, "method": "istanbul_nodeAddress"}]))
        assert json.loads(ws.recv(timeout=5))[0]["result"] == network.addresses[0]
    assert call(url, "istanbul_nodeAddress") == network.addresses[0]


def test_the_chain_halts_without_quorum_and_resumes_when_it_returns(tmp_path: Path) -> None:
    with WbftNetwork.launch(["1.5.1"] * 4, tmp_path, block_time=0.1, ipc=True) as network:
        network.wait_for_height(2)
        subscribed = IpcConnection(network.proxy_ipc_path(2))
        assert subscribed.call(1, "eth_subscribe", "newHeads")["result"].startswith("0x")
        network.stop_node(2)
        # Over IPC a node that went away closes its connections, as its socket would.
        with subscribed, pytest.raises(EOFError):
            subscribed.drain()
        with IpcConnection(network.proxy_ipc_path(2)) as ipc, pytest.raises(EOFError):
            ipc.call(1, "eth_blockNumber")
        # 3 of 4 is still WBFT's quorum: the chain goes on without node 2, which falls behind.
        down = network.wait_for(lambda s: not s.nodes[2].answering)
        without_two = network.wait_for_height((down.head or 0) + 2)
        committed = network.committers(without_two.head or 0)
        assert committed == tuple(a for i, a in enumerate(network.addresses) if i != 2)

        network.stop_node(3)
        halted = network.wait_for(lambda s: s.halted and not s.nodes[3].answering)
        stalled = halted.head
        assert stalled is not None
        assert network.wait_for_ticks(5).head == stalled  # no quorum, no block
        assert int(call(network.node_url(0), "eth_blockNumber"), 16) == stalled

        network.start_node(2)  # back from its state file, behind the others
        resumed = network.wait_for(
            lambda s: s.head is not None and s.head >= stalled + 3 and s.nodes[2].committing
        )
        assert not resumed.halted
        assert network.committers(stalled + 1) == tuple(
            a for i, a in enumerate(network.addresses) if i != 3
        )
        # The returning node was caught up with the network's own timestamps and hashes.
        for number in range(1, stalled + 2):
            ours, theirs = block(network.node_url(2), number), block(network.node_url(0), number)
            assert (ours["timestamp"], ours["hash"]) == (theirs["timestamp"], theirs["hash"])


def test_a_node_without_the_fork_stops_at_f_minus_1_until_upgraded(tmp_path: Path) -> None:
    fork = 6
    old, new = anvil_binary("1.5.1"), anvil_binary("1.7.1")
    # The nodes are started here, as wemixvisor daemons would; the network only knows their URLs.
    args = ["--no-mining", "--timestamp", "1800000000"]
    anvils = [
        AnvilProcess(
            new if index < 3 else old,
            tmp_path,
            block_time=None,
            state_file=tmp_path / f"{index}.json",
            extra_args=args,
        )
        for index in range(4)
    ]
    try:
        for anvil in anvils:
            anvil.start()
        specs = [NodeSpec(anvil.url) for anvil in anvils]
        with WbftNetwork(specs, block_time=BLOCK_TIME, fork_block=fork) as network:
            status = network.wait_for_height(fork + 2)
            old_node = status.nodes[3]
            assert (old_node.client_version, old_node.has_fork) == ("anvil/v1.5.1", False)
            assert int(call(anvils[3].url, "eth_blockNumber"), 16) == fork - 1
            assert int(call(network.proxy_url(3), "eth_blockNumber"), 16) == fork - 1
            before = [network.committers(number) or () for number in range(1, fork)]
            assert any(network.addresses[3] in committers for committers in before)
            assert network.addresses[3] not in (network.committers(fork) or ())
            with pytest.raises(RpcError, match="unknown block"):
                call(network.proxy_url(3), "istanbul_getCommitSignersFromBlock", hex(fork))

            with connect(network.proxy_ws_url(3), proxy=None, open_timeout=5) as ws:
                anvils[3].stop()  # the operator upgrades node 3 ...
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=10)  # ... and its clients see it go away
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "istanbul_nodeAddress"})
            assert post(network.proxy_url(3), body.encode())[0] == 502
            anvils[3] = AnvilProcess(
                new,
                tmp_path,
                port=anvils[3].port,
                block_time=None,
                state_file=tmp_path / "3.json",
                extra_args=args,
            ).start()
            upgraded = network.wait_for(
                lambda s: s.nodes[3].has_fork and s.nodes[3].committing, timeout=30
            )
            assert upgraded.nodes[3].head == upgraded.head
            assert (upgraded.head or 0) > fork
            for number in range(fork, (upgraded.head or 0) + 1):
                assert (
                    block(anvils[3].url, number)["timestamp"]
                    == block(anvils[0].url, number)["timestamp"]
                )
    finally:
        for anvil in anvils:
            anvil.stop()
            anvil.kill()


def test_the_network_runs_as_a_process_of_its_own(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "devtools.wbft_network", "--launch", "1.5.1"]
    command += ["--launch", "1.5.1", "--dir", str(tmp_path), "--block-time", "0.25"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    ) as process:
        try:
            assert process.stdout is not None
            described = json.loads(process.stdout.readline())
            assert described["quorum"] == 2
            first = described["nodes"][0]
            assert call(first["proxy_url"], "istanbul_nodeAddress") == first["address"]
            for line in process.stdout:
                if line.startswith("block 2:"):
                    break
            else:
                pytest.fail("the network process ended before block 2")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            process.kill()
    for node in described["nodes"]:  # the process stopped the nodes it started
        with pytest.raises(OSError, match="Connection refused"):
            call(node["node_url"], "eth_blockNumber")
