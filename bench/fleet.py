"""A validator set upgrading: all at H-1 against a rolling window (SPEC §16, §19).

Four real wemixvisor daemons, each supervising `anvil --no-mining` 1.5.1 behind the WBFT
network double (devtools.wbft: blocks mined in lockstep only while 3 of the 4 validators
answer; the fork block H withheld from 1.5.1). Every daemon gets the same plan to anvil 1.7.1,
either a plain plan (`"mode": "at"`: all four switch at H-1) or a rolling window (`"mode":
"window"`: one slot per validator, each switching while the others keep the quorum). Judged from
the chain once every node runs 1.7.1 at H+3, with anvil's own start (a fraction of a second) and
with a node that takes `--start-delay` seconds to start (the new binary is wrapped in a script
that sleeps first, as a real node replaying its journal would): the longest interval between
block timestamps, the block slots the chain missed (elapsed time / block time - blocks made),
and the validator-blocks missed (blocks a validator did not commit, summed over them). Every
node must hold the same block timestamps (a restarted node is caught up with the network's);
a round where they differ fails.

Usage: `python -m bench.fleet [--rounds N] [--block-time S] [--window W] [--start-delay S]`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from bench._harness import ProcessTracker, machine_line, print_table, signals_raise
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc
from devtools.wbft import NodeSpec, WbftNetwork
from wemixvisor.home.layout import Home, add_upgrade, init_home

VALIDATORS = 4
LEAD = 10  # blocks before the window opens (H = W + LEAD): the daemons are ready by then
AFTER = 3  # judged up to H+AFTER


class Outcome(msgspec.Struct, frozen=True):
    """One fleet upgrade as the chain saw it."""

    longest_interval: int  # seconds between consecutive block timestamps
    missed_slots: int
    validator_blocks_missed: int


def _new_binary(work: Path, delay: float) -> Path:
    """anvil 1.7.1, or a script that sleeps `delay` seconds before it runs it (`--version`
    answers at once: preflight asks it)."""
    real = anvil_binary("1.7.1")
    if delay <= 0:
        return real
    script = work / "slow-anvil"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        f'#!/bin/sh\ncase "$1" in --version|version) exec {real} "$@";; esac\n'
        f'sleep {delay:g}\nexec {real} "$@"\n'
    )
    script.chmod(0o755)
    return script


def _start_fleet(
    tracker: ProcessTracker, work: Path, mode: str, window: int, delay: float
) -> tuple[list[NodeSpec], list[int]]:
    specs: list[NodeSpec] = []
    daemons: list[int] = []
    new_binary = _new_binary(work, delay)
    for index in range(VALIDATORS):
        root = work / f"{mode}-v{index}"
        home = Home(root=root, name="anvil", data_dir=root / "data")
        init_home(home, anvil_binary("1.5.1"))
        add_upgrade(home, "fork", new_binary)
        port, proxy = free_port(), free_port()
        env = {
            **os.environ,
            "DAEMON_HOME": str(root),
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{proxy}",
            "DAEMON_STARTSECS": "300ms",
            "UNSAFE_SKIP_BACKUP": "true",
            "VALIDATOR_MODE": "true",
        }
        args = ["--no-mining", "--port", str(port), "--state", str(root / "data" / "state.json")]
        argv = [sys.executable, "-m", "wemixvisor.bootstrap", *args]
        daemon = tracker.spawn(argv, log_path=work / f"{mode}-daemon-{index}.log", env=env)
        daemons.append(daemon.pid)
        wait_for_rpc(f"http://127.0.0.1:{port}", timeout=30)
        plan: dict[str, object] = {"name": "fork", "height": window + LEAD}
        if mode == "window":
            plan |= {"mode": "window", "window": window}
        (root / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))
        _wait_registered(root)
        specs.append(NodeSpec(f"http://127.0.0.1:{port}", proxy_port=proxy))
    return specs, daemons


def _wait_registered(root: Path, timeout: float = 30.0) -> None:
    queue = root / "wemixvisor" / "state" / "plans.json"
    deadline = time.monotonic() + timeout
    while not (queue.exists() and b'"fork"' in queue.read_bytes()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon of {root} did not register the plan")
        time.sleep(0.1)


def run_round(work: Path, mode: str, block_time: float, window: int, delay: float) -> Outcome:
    """One fleet upgrade in `mode`, judged from the chain."""
    height = window + LEAD
    last = height + AFTER
    with ProcessTracker() as tracker:
        specs, daemons = _start_fleet(tracker, work, mode, window, delay)
        with WbftNetwork(specs, block_time=block_time, fork_block=height) as network:
            try:
                network.wait_for(
                    lambda s: (
                        s.head is not None
                        and s.head >= last
                        and all(node.has_fork and node.committing for node in s.nodes)
                    ),
                    timeout=height * block_time + 60,
                )
            finally:
                # The nodes the daemons started since (the new binaries) end with the bench.
                for pid in daemons:
                    tracker.remember(pid)
            committers = [set(network.committers(n) or ()) for n in range(1, last + 1)]
            addresses = network.addresses
            stamps = _timestamps(specs[0].rpc_url, last)
            for index, spec in enumerate(specs[1:], start=1):
                _check_same_chain(index, _timestamps(spec.rpc_url, last), stamps)
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    elapsed_slots = round((stamps[-1] - stamps[0]) / block_time)
    return Outcome(
        longest_interval=max(intervals),
        missed_slots=max(elapsed_slots - (len(stamps) - 1), 0),
        validator_blocks_missed=sum(
            address not in block for block in committers for address in addresses
        ),
    )


def _timestamps(url: str, last: int) -> list[int]:
    """The timestamps of blocks 1..last on the node at `url`."""
    return [
        int(rpc_call(url, "eth_getBlockByNumber", [hex(n), False])["timestamp"], 16)
        for n in range(1, last + 1)
    ]


def _check_same_chain(index: int, stamps: list[int], reference: list[int]) -> None:
    for number, (ours, theirs) in enumerate(zip(stamps, reference, strict=True), start=1):
        if ours != theirs:
            raise RuntimeError(
                f"node {index}'s block {number} is stamped {ours}, node 0's {theirs}"
            )


def _span(values: list[int]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]} / {ordered[len(ordered) // 2]} / {ordered[-1]}"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds of both modes and print the table (min / median / max)."""
    parser = argparse.ArgumentParser(prog="bench.fleet", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-time", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=36)
    parser.add_argument("--start-delay", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(machine_line())
    cases = [(mode, delay) for delay in (0.0, args.start_delay) for mode in ("at", "window")]
    results: dict[tuple[str, float], list[Outcome]] = {case: [] for case in cases}
    failed: dict[tuple[str, float], str] = {}
    with signals_raise(), tempfile.TemporaryDirectory(prefix="wv-fleet-") as scratch:
        for index in range(args.rounds):
            for (mode, delay), outcomes in results.items():
                if (mode, delay) in failed:
                    continue  # the same setting would fail the same way again
                work = Path(scratch) / f"r{index}-{mode}-{delay:g}"
                try:
                    outcome = run_round(work, mode, args.block_time, args.window, delay)
                except (TimeoutError, RuntimeError) as exc:
                    failed[mode, delay] = str(exc)
                    print(f"  round {index + 1} {mode} start+{delay:g}s: {exc}", flush=True)
                    continue
                outcomes.append(outcome)
                print(f"  round {index + 1} {mode} start+{delay:g}s: {outcome}", flush=True)
    rows = [
        (
            ("all at H-1" if mode == "at" else f"rolling window W={args.window}")
            + (f", node start +{delay:g} s" if delay else ", anvil's own start"),
            *(
                (
                    _span([o.longest_interval for o in outcomes]),
                    _span([o.missed_slots for o in outcomes]),
                    _span([o.validator_blocks_missed for o in outcomes]),
                )
                if outcomes
                else ("not measured", "-", "-")
            ),
        )
        for (mode, delay), outcomes in results.items()
    ]
    print(f"\n{VALIDATORS} validators, {args.block_time:g} s blocks, min / median / max")
    print_table(
        ("plan", "longest interval (s)", "missed block slots", "validator-blocks missed"), rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
