"""WbftNetwork: the TEST DOUBLE of a WBFT validator network, with real anvil nodes under it.

Every block time one miner thread probes every node, catches up the ones that came back behind,
and mines the next block on all nodes at the network's head in lockstep (`evm_mine` with one
explicit timestamp), but only while at least `quorum_size(N)` validators take part: without a
quorum the chain halts, as WBFT does. Each block's committers are the validators that took part.
A node whose binary lacks the fork (by its `web3_clientVersion`) is never given the fork block:
it stays at F-1, as an old binary that rejects block F would.

The nodes are either started here (`WbftNetwork.launch`) or only named by their RPC URLs
(started by someone else, e.g. one wemixvisor daemon per node): a node may disappear and come
back on the same port, with another binary, at any time.

A node that comes back behind the network (restarted from its `--state` file after missing k
blocks) is given the blocks it missed, each with the network's timestamp, then takes part again,
as a WBFT node syncs from its peers before it commits. anvil starts its block clock at its start
time (`--timestamp`, else the wall clock) even when it loads an older chain from `--state`, and
refuses a block stamped earlier; so the double first sets the returning node's clock back to its
own head block's timestamp (`evm_setTime`), which changes no block.

What a client can rely on: every node that takes part has the same heights and block
timestamps (a block's timestamp is max(parent's, wall clock), chosen once per height). Block
hashes are identical only between nodes of one anvil version started with one genesis
timestamp (`launch` does that); anvil versions differ in their default hardfork, so a 1.7.1
node's hashes differ from a 1.5.1 node's. A transaction sent to one node is mined on that node
only: the double exchanges no transactions. A node the double cannot bring along (its head is
stamped later than the network's next block, as after a restart from a fresh genesis newer than
the chain; its blocks are not the network's; it refuses a block; its binary lacks the fork) is
logged and shows why in its `NodeStatus.left_out`.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from devtools.anvil import RpcError, free_port, rpc_call
from devtools.wbft.ipc import IpcEndpoint
from devtools.wbft.launched import LaunchedNodes
from devtools.wbft.ledger import Ledger
from devtools.wbft.proxy import NodeProxy, ProxyHost
from devtools.wbft.rules import (
    catch_up_refusal,
    client_has_fork,
    parse_quantity,
    quorum_size,
    validator_address,
)

__all__ = [
    "DEFAULT_FORK_VERSIONS",
    "NetworkStatus",
    "NodeSpec",
    "NodeStatus",
    "WbftNetwork",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_FORK_VERSIONS: frozenset[str] = frozenset({"1.7.1"})
"""anvil versions that "carry" the fork block: 1.7.1 is the upgrade binary, 1.5.1 the old one."""

_MAX_CATCH_UP = 512  # blocks mined on one returning node per tick: a tick stays bounded
_MINE_TIMEOUT = 2.0
# How a node that is down, starting, or answering nonsense looks to the miner.
_RPC_FAILURES = (OSError, http.client.HTTPException, ValueError, RpcError, KeyError, TypeError)


@dataclass(frozen=True)
class NodeSpec:
    """One node of the network: its anvil's RPC URL and how its proxy behaves."""

    rpc_url: str
    address: str | None = None  # default: validator_address(index)
    validator: bool = True
    serve_istanbul: bool = True  # False: istanbul_* answers -32601, like HTTP without the api
    proxy_port: int | None = None  # default: a free port
    ipc_path: Path | None = None  # a unix socket serving every namespace, as geth's IPC does


@dataclass(frozen=True)
class NodeStatus:
    """One node as the network saw it at its last tick."""

    index: int
    address: str
    validator: bool
    answering: bool
    head: int | None
    client_version: str | None
    has_fork: bool
    committing: bool  # took part in the last block mined
    left_out: str | None = None  # why the double cannot bring this node along, else None


@dataclass(frozen=True)
class NetworkStatus:
    """The network after a tick: `halted` when the last tick found no quorum."""

    head: int | None
    halted: bool
    ticks: int
    quorum: int
    nodes: tuple[NodeStatus, ...]


@dataclass
class _Node:
    spec: NodeSpec
    address: str
    answering: bool = False
    head: int | None = None
    client_version: str | None = None
    has_fork: bool = False
    committing: bool = False
    left_out: str | None = None  # why it is not brought along; logged when it changes


class WbftNetwork:
    """N validator nodes mined in lockstep while a quorum of them answers; see the module doc.

    Use as a context manager, or `start()` and `stop()`. `proxy_url(i)` / `proxy_ws_url(i)` (and
    `proxy_ipc_path(i)`, when the node has one) are the addresses of node i's proxy.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        *,
        block_time: float = 1.0,
        fork_block: int | None = None,
        fork_versions: Collection[str] = DEFAULT_FORK_VERSIONS,
        rpc_timeout: float | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a network needs at least one node")
        if not 0 < block_time <= 3600:
            raise ValueError(f"block time must be in (0, 3600] seconds, got {block_time}")
        if fork_block is not None and fork_block < 1:
            raise ValueError(f"the fork block is ≥ 1, got {fork_block}")
        self.block_time = block_time
        self.fork_block = fork_block
        self.fork_versions = frozenset(fork_versions)
        # Generous against a loaded machine; a stopped node refuses at once, only a hung one
        # (SIGSTOP) makes a tick wait this long.
        self.rpc_timeout = rpc_timeout or max(0.5, min(2.0, block_time))
        self._nodes = [
            _Node(spec, (spec.address or validator_address(index)).lower())
            for index, spec in enumerate(nodes)
        ]
        self.ledger = Ledger([node.address for node in self._nodes if node.spec.validator])
        self.quorum = quorum_size(len(self.ledger.validators))
        self.proxies = [
            NodeProxy(
                node.spec.rpc_url,
                node.address,
                self.ledger,
                node.spec.proxy_port or free_port(),
                serve_istanbul=node.spec.serve_istanbul,
            )
            for node in self._nodes
        ]
        self.ipc_endpoints = {
            index: IpcEndpoint(self.proxies[index], node.spec.ipc_path)
            for index, node in enumerate(self._nodes)
            if node.spec.ipc_path is not None
        }
        self._head: int | None = None
        self._timestamps: dict[int, int] = {}
        self._status = NetworkStatus(None, False, 0, self.quorum, ())
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wbft-network", daemon=True)
        self._pool = ThreadPoolExecutor(len(self._nodes), thread_name_prefix="wbft-rpc")
        self._host = ProxyHost()
        self._launched: LaunchedNodes | None = None

    @classmethod
    def launch(
        cls,
        versions: Sequence[str],
        directory: Path,
        *,
        serve_istanbul: bool | Sequence[bool] = True,
        genesis_timestamp: int | None = None,
        block_time: float = 1.0,
        fork_block: int | None = None,
        fork_versions: Collection[str] = DEFAULT_FORK_VERSIONS,
        ipc: bool = False,
    ) -> WbftNetwork:
        """A network of `len(versions)` nodes, each an anvil of that version started here with
        `--no-mining`, one genesis timestamp and a `--state` file in `directory` (so a node
        restarted with `start_node` keeps its chain); with `ipc`, node i's proxy also serves
        IPC at `directory/node<i>.ipc` (`proxy_ipc_path`). The nodes run on return; the network
        mines once started: use it as a context manager so that `stop()` ends them all."""
        directory.mkdir(parents=True, exist_ok=True)
        served = (
            [serve_istanbul] * len(versions)
            if isinstance(serve_istanbul, bool)
            else list(serve_istanbul)
        )
        genesis = int(time.time()) if genesis_timestamp is None else genesis_timestamp
        launched = LaunchedNodes(versions, directory, genesis)
        specs = [
            NodeSpec(
                url,
                serve_istanbul=serve,
                ipc_path=directory / f"node{index}.ipc" if ipc else None,
            )
            for index, (url, serve) in enumerate(zip(launched.urls, served, strict=True))
        ]
        network = cls(
            specs, block_time=block_time, fork_block=fork_block, fork_versions=fork_versions
        )
        network._launched = launched
        try:
            launched.start_all()
        except BaseException:
            network.stop()
            raise
        return network

    def _launched_nodes(self) -> LaunchedNodes:
        if self._launched is None:
            raise RuntimeError("only nodes started by WbftNetwork.launch are started/stopped here")
        return self._launched

    def start_node(self, index: int, version: str | None = None) -> None:
        """(Re)start launched node `index` on its port and state file, with anvil `version`
        (default: its previous one); returns once it answers RPC."""
        self._launched_nodes().start(index, version)

    def stop_node(self, index: int) -> None:
        """Stop launched node `index` gracefully (anvil writes its state file on SIGTERM)."""
        self._launched_nodes().stop(index)

    def start(self) -> Self:
        """Serve the proxies and start mining."""
        try:
            self._host.start([*self.proxies, *self.ipc_endpoints.values()])
        except BaseException:
            self.stop()
            raise
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop mining, the proxies and every node this object started; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._host.stop()
        if self._launched is not None:
            self._launched.stop_all()

    def __enter__(self) -> Self:
        if not self._thread.is_alive() and not self._stopping.is_set():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def proxy_url(self, index: int) -> str:
        """HTTP address of node `index`'s proxy (serving `istanbul_*`)."""
        return self.proxies[index].url

    def proxy_ws_url(self, index: int) -> str:
        """WebSocket address of node `index`'s proxy."""
        return self.proxies[index].ws_url

    def proxy_ipc_path(self, index: int) -> Path:
        """IPC socket of node `index`'s proxy (serving every namespace); KeyError without one."""
        return self.ipc_endpoints[index].path

    def node_url(self, index: int) -> str:
        """Node `index`'s own anvil RPC address."""
        return self._nodes[index].spec.rpc_url

    @property
    def addresses(self) -> list[str]:
        """Every node's address, by node index."""
        return [node.address for node in self._nodes]

    def set_istanbul_served(self, index: int, served: bool) -> None:
        """Serve (True) or refuse with -32601 (False) `istanbul_*` on node `index`'s proxy."""
        self.proxies[index].serve_istanbul = served

    def committers(self, number: int) -> tuple[str, ...] | None:
        """The validators that committed block `number`, if the network mined it."""
        record = self.ledger.recorded(number)
        return None if record is None else record.committers

    def status(self) -> NetworkStatus:
        """The network as of its last tick."""
        with self._changed:
            return self._status

    def wait_for(
        self, condition: Callable[[NetworkStatus], bool], timeout: float = 30.0
    ) -> NetworkStatus:
        """Block until a tick leaves the network in a state where `condition` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self._status):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise TimeoutError(f"the WBFT network did not get there: {self._status}")
                self._changed.wait(remaining)
            return self._status

    def wait_for_height(self, height: int, timeout: float = 30.0) -> NetworkStatus:
        """Block until the network's head is at least `height`."""
        return self.wait_for(lambda s: s.head is not None and s.head >= height, timeout)

    def wait_for_ticks(self, ticks: int, timeout: float = 30.0) -> NetworkStatus:
        """Block until `ticks` more ticks have run."""
        target = self.status().ticks + ticks
        return self.wait_for(lambda s: s.ticks >= target, timeout)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                halted = self._tick()
            except Exception:  # a tick must never end the network
                logger.exception("WBFT network tick failed")
                halted = True
            self._publish(halted)
            next_tick += self.block_time
            now = time.monotonic()
            # A late tick is not made up for with a burst of blocks.
            next_tick = max(next_tick, now)
            self._stopping.wait(next_tick - now)

    def _publish(self, halted: bool) -> None:
        nodes = tuple(
            NodeStatus(
                index=index,
                address=node.address,
                validator=node.spec.validator,
                answering=node.answering,
                head=node.head,
                client_version=node.client_version,
                has_fork=node.has_fork,
                committing=node.committing,
                left_out=node.left_out,
            )
            for index, node in enumerate(self._nodes)
        )
        with self._changed:
            previous = self._status
            self._status = replace(
                previous, head=self._head, halted=halted, ticks=previous.ticks + 1, nodes=nodes
            )
            self._changed.notify_all()

    def _tick(self) -> bool:
        """One block time: probe, catch up, mine block head+1 if a quorum takes part.

        Returns whether the chain is halted (no quorum).
        """
        for node, probe in zip(self._nodes, self._pool.map(self._probe, self._nodes), strict=True):
            self._observe(node, probe)
        heads = [node.head for node in self._nodes if node.head is not None]
        if self._head is None:
            if not heads:
                return True
            self._head = max(heads)
        network_head = self._head
        behind = [
            node
            for node in self._nodes
            if node.head is not None and node.head < self._limit(node, network_head)
        ]
        list(self._pool.map(self._catch_up, behind, [network_head] * len(behind)))
        number = network_head + 1
        for node in self._nodes:
            if node.head is None:
                continue
            if node.head > network_head:
                self._leave_out(
                    node,
                    f"ahead of the network ({node.head} > {network_head}): mined by someone "
                    "else? It is not counted until the network reaches it",
                )
            elif node.head == self._limit(node, network_head) < network_head:
                self._leave_out(
                    node,
                    f"its binary ({node.client_version}) lacks the fork at block "
                    f"{self.fork_block}: it stays at block {node.head}",
                )
        ready = [
            node
            for node in self._nodes
            if node.head == network_head and self._imports(node, number)
        ]
        for node in self._nodes:
            node.committing = False
        if sum(node.spec.validator for node in ready) < self.quorum:
            return True
        timestamp = max(self._timestamp(network_head) or 0, int(time.time()))
        mined = []
        for node, refusal in zip(
            ready, self._pool.map(self._mine, ready, [timestamp] * len(ready)), strict=True
        ):
            if refusal is None:
                mined.append(node)
            else:
                self._leave_out(node, f"it refused block {number}: {refusal}")
        if not mined:
            return True
        committers = [node.address for node in mined if node.spec.validator]
        if not committers:  # every validator's evm_mine failed: the block is theirs anyway
            committers = [node.address for node in ready if node.spec.validator]
        self.ledger.seal(number, timestamp, committers)
        self._timestamps[number] = timestamp
        self._head = number
        for node in mined:
            node.head = number
            node.committing = node.spec.validator
            self._take_back(node)
        return False

    def _probe(self, node: _Node) -> tuple[int, str] | None:
        # The version is read every time: a node restarted with another binary between two
        # ticks must not keep the old binary's fork rule.
        url = node.spec.rpc_url
        try:
            head = int(rpc_call(url, "eth_blockNumber", timeout=self.rpc_timeout), 16)
            version = str(rpc_call(url, "web3_clientVersion", timeout=self.rpc_timeout))
        except _RPC_FAILURES:
            return None
        return head, version

    def _observe(self, node: _Node, probe: tuple[int, str] | None) -> None:
        if probe is None:
            if node.answering:
                logger.info("node %s stopped answering at head %s", node.address, node.head)
            node.answering, node.head, node.client_version = False, None, None
            return
        head, version = probe
        if not node.answering or version != node.client_version:
            node.answering, node.left_out = True, None  # a restarted node gets a fresh try
            node.client_version = version
            node.has_fork = client_has_fork(version, self.fork_versions)
            logger.info(
                "node %s answers: %s at head %d (fork: %s)",
                node.address,
                version,
                head,
                "yes" if node.has_fork else "no",
            )
        node.head = head

    def _imports(self, node: _Node, number: int) -> bool:
        """Whether `node`'s binary accepts block `number` (an old binary rejects the fork)."""
        return self.fork_block is None or number < self.fork_block or node.has_fork

    def _limit(self, node: _Node, network_head: int) -> int:
        if self.fork_block is None or node.has_fork:
            return network_head
        return min(network_head, self.fork_block - 1)

    def _leave_out(self, node: _Node, reason: str) -> None:
        if reason != node.left_out:
            logger.warning("node %s is left out: %s", node.address, reason)
        node.left_out = reason

    def _take_back(self, node: _Node) -> None:
        if node.left_out is not None:
            logger.info("node %s takes part again", node.address)
        node.left_out = None

    def _catch_up(self, node: _Node, network_head: int) -> None:
        """Give `node` the blocks it missed, with the network's timestamps."""
        head = node.head
        assert head is not None
        target = min(self._limit(node, network_head), head + _MAX_CATCH_UP)
        problem = self._sync(node, head, target)
        if problem is not None:
            self._leave_out(node, f"it cannot be caught up: {problem}")
        elif node.head == network_head:
            self._take_back(node)

    def _sync(self, node: _Node, head: int, target: int) -> str | None:
        """Mine blocks head+1..target on `node`; None, or why it stopped."""
        url = node.spec.rpc_url
        try:
            block = rpc_call(url, "eth_getBlockByNumber", [hex(head), False], timeout=1.0)
        except _RPC_FAILURES as exc:
            return f"reading its head block {head} failed: {exc}"
        own = parse_quantity(block.get("timestamp")) if isinstance(block, dict) else None
        if own is None:
            return f"it answers its head block {head} without a valid timestamp"
        following = self._timestamp(head + 1)
        if following is None:
            return f"no node knows the timestamp of block {head + 1}"
        record = self.ledger.recorded(head)
        refusal = catch_up_refusal(
            head, own, None if record is None else record.timestamp, following
        )
        if refusal is not None:
            return refusal
        # anvil refuses blocks stamped before the time it started at, even when it loaded an
        # older chain from --state: its clock goes back to its own head, no block changes.
        try:
            rpc_call(url, "evm_setTime", [own], timeout=_MINE_TIMEOUT)
        except _RPC_FAILURES as exc:
            return f"setting its clock to its head's timestamp {own} failed: {exc}"
        for number in range(head + 1, target + 1):
            timestamp = self._timestamp(number)
            if timestamp is None:
                return f"no node knows the timestamp of block {number}"
            try:
                rpc_call(url, "evm_mine", [timestamp], timeout=_MINE_TIMEOUT)
            except _RPC_FAILURES as exc:
                return f"mining block {number} on it failed: {exc}"
            node.head = number
        return None

    def _mine(self, node: _Node, timestamp: int) -> str | None:
        """Mine the next block on `node`; None, or why it refused."""
        try:
            rpc_call(node.spec.rpc_url, "evm_mine", [timestamp], timeout=_MINE_TIMEOUT)
        except _RPC_FAILURES as exc:
            return str(exc)
        return None

    def _timestamp(self, number: int) -> int | None:
        """Block `number`'s timestamp: as mined here, else as a node that has it says."""
        known = self._timestamps.get(number)
        if known is not None:
            return known
        for node in self._nodes:
            if node.head is None or node.head < number:
                continue
            with contextlib.suppress(*_RPC_FAILURES):
                block = rpc_call(
                    node.spec.rpc_url, "eth_getBlockByNumber", [hex(number), False], timeout=1.0
                )
                timestamp = parse_quantity(block["timestamp"])
                if timestamp is not None:
                    self._timestamps[number] = timestamp
                    return timestamp
        return None
