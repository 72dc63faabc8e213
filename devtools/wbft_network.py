"""The WBFT network TEST DOUBLE as a process of its own (for the demo); see `devtools.wbft`.

    python -m devtools.wbft_network --launch 1.5.1 --launch 1.5.1 --launch 1.5.1 --dir DIR
    python -m devtools.wbft_network --node http://127.0.0.1:8545 --proxy-port 9545 ...

`--launch VERSION` (repeated) starts one anvil per validator here; `--node URL` (repeated) only
names nodes started by someone else (e.g. each by its own wemixvisor daemon running `anvil
--no-mining --port P --state FILE`). Once serving it prints one JSON line on stdout naming each
node's proxy, then one line per block or change of state (`block N: ...`), and one line each
time the network leaves a node out or takes it back (`node I left out: why`, `node I takes part
again`), until SIGTERM/SIGINT or `--duration`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from devtools.wbft import (
    DEFAULT_FORK_VERSIONS,
    NetworkStatus,
    NodeSpec,
    WbftNetwork,
    quorum_size,
)

__all__ = ["WbftNetwork", "main", "quorum_size"]


def _indices(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part.strip()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.wbft_network", description=__doc__.split("\n\n")[0]
    )
    nodes = parser.add_mutually_exclusive_group(required=True)
    nodes.add_argument("--launch", action="append", metavar="VERSION", help="anvil version")
    nodes.add_argument("--node", action="append", metavar="URL", help="a node's RPC URL")
    parser.add_argument("--dir", type=Path, help="logs and state files of launched nodes")
    parser.add_argument("--proxy-port", action="append", type=int, default=[], metavar="PORT")
    parser.add_argument("--block-time", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--fork-block", type=int, metavar="F")
    parser.add_argument(
        "--fork-versions",
        default=",".join(sorted(DEFAULT_FORK_VERSIONS)),
        help="comma-separated X.Y.Z versions whose binaries carry the fork",
    )
    parser.add_argument(
        "--no-istanbul",
        type=_indices,
        default=set(),
        metavar="I,J",
        help="node indices whose proxy refuses istanbul_* (-32601)",
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS")
    return parser


def _build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> WbftNetwork:
    count = len(args.launch or args.node)
    if args.proxy_port and len(args.proxy_port) != count:
        parser.error(f"give one --proxy-port per node ({count}) or none")
    fork_versions = {v.strip() for v in args.fork_versions.split(",") if v.strip()}
    if args.launch:
        if args.dir is None:
            parser.error("--launch needs --dir")
        if args.proxy_port:
            parser.error("--proxy-port is for --node; launched nodes' proxies take free ports")
        served = [index not in args.no_istanbul for index in range(count)]
        return WbftNetwork.launch(
            args.launch,
            args.dir,
            serve_istanbul=served,
            fork_versions=fork_versions,
            block_time=args.block_time,
            fork_block=args.fork_block,
        )
    ports: list[int | None] = list(args.proxy_port) or [None] * count
    specs = [
        NodeSpec(url, serve_istanbul=index not in args.no_istanbul, proxy_port=port)
        for index, (url, port) in enumerate(zip(args.node, ports, strict=True))
    ]
    return WbftNetwork(
        specs,
        block_time=args.block_time,
        fork_block=args.fork_block,
        fork_versions=fork_versions,
    )


def _describe(network: WbftNetwork) -> str:
    return json.dumps(
        {
            "quorum": network.quorum,
            "block_time": network.block_time,
            "fork_block": network.fork_block,
            "nodes": [
                {
                    "index": index,
                    "address": network.addresses[index],
                    "node_url": network.node_url(index),
                    "proxy_url": network.proxy_url(index),
                    "proxy_ws_url": network.proxy_ws_url(index),
                }
                for index in range(len(network.proxies))
            ],
        }
    )


def _report(status: NetworkStatus, previous: NetworkStatus | None) -> list[str]:
    """The lines that tell what changed since `previous`: the chain, then each node the
    network left out or took back."""
    lines = []
    if previous is None or (status.head, status.halted) != (previous.head, previous.halted):
        committing = sum(node.committing for node in status.nodes)
        answering = sum(node.answering for node in status.nodes)
        state = "HALTED (no quorum)" if status.halted else f"{committing} committed"
        lines.append(f"block {status.head}: {state}; {answering}/{len(status.nodes)} nodes answer")
    before = {node.index: node.left_out for node in previous.nodes} if previous else {}
    for node in status.nodes:
        if node.left_out == before.get(node.index):
            continue
        if node.left_out is None:
            lines.append(f"node {node.index} takes part again")
        else:
            lines.append(f"node {node.index} left out: {node.left_out}")
    return lines


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """Run the network until SIGTERM/SIGINT (or `--duration`); the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        network = _build(args, parser)
    except (ValueError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    deadline = None if args.duration is None else time.monotonic() + args.duration
    with network:
        print(_describe(network), file=out, flush=True)
        previous: NetworkStatus | None = None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                status = network.wait_for_ticks(1, timeout=max(5.0, 3 * network.block_time))
            except TimeoutError:
                continue
            for line in _report(status, previous):
                print(line, file=out, flush=True)
            previous = status
    return 0


if __name__ == "__main__":
    sys.exit(main())
