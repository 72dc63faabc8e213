"""Upgrade at height: detection latency, downtime, and blocks imported past H (SPEC §16).

One run measures:

(a) head observed → orchestrator aware. In-process HeightActor + OrchestratorActor following a
    real anvil, in ws mode (newHeads subscription) and in 300 ms polling mode; blocks are mined
    every 250 ms with `evm_mine`. The reference is an independent raw websocket subscriber in
    the same process: its arrival time of each head is "the node published it". Reported: the
    orchestrator's handling time minus the reference arrival, p50/p99.
(b) upgrade downtime without backup: the real daemon upgrades anvil 1.5.1 to copies of itself
    at successive heights (`upgrade.completed.downtime_seconds`: stop request → first RPC answer
    of the new binary), against anvil's own SIGTERM-stop + start-to-RPC measured in the same run.
(c) blocks the old binary imported beyond H, over all those upgrades at 1 s blocks: the new
    binary's first head (`upgrade.completed.first_head`) minus H, which must be 0.

Usage: `python -m bench.upgrade [--upgrades N] [--latency-seconds S]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import pykka
from loguru import logger

from bench._harness import ProcessTracker, Stats, machine_line, ms, print_table
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc
from wemixvisor.actors.height import HeightActor
from wemixvisor.actors.orchestrator import GetHeadLatency, OrchestratorActor
from wemixvisor.bus import Bus
from wemixvisor.config import load_config
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home, add_upgrade, init_home


def _reference_heads(url: str, arrivals: dict[int, float], stop: threading.Event) -> None:
    """A plain newHeads subscriber: when each head left the node, as seen in this process."""
    from websockets.exceptions import ConnectionClosed  # noqa: PLC0415
    from websockets.sync.client import connect  # noqa: PLC0415

    with contextlib.suppress(ConnectionClosed), connect(url, open_timeout=5) as ws:
        ws.send('{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}')
        ws.recv(timeout=5)
        while not stop.is_set():
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            now = time.monotonic()
            message = msgspec.json.decode(raw)
            number = message.get("params", {}).get("result", {}).get("number")
            if isinstance(number, str):
                arrivals.setdefault(int(number, 16), now)


def measure_latency(mode: str, seconds: float, work: Path) -> Stats:
    """(a) for one mode: orchestrator handling time minus the reference arrival."""
    anvil = anvil_binary("1.5.1")
    port = free_port()
    home_dir = work / f"latency-{mode}"
    home = Home(root=home_dir, name="anvil", data_dir=home_dir / "data")
    init_home(home, anvil)
    node = subprocess.Popen(
        [str(anvil), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    arrivals: dict[int, float] = {}
    stop = threading.Event()
    try:
        wait_for_rpc(f"http://127.0.0.1:{port}", timeout=20)
        address = f"ws://127.0.0.1:{port}" if mode == "ws" else f"http://127.0.0.1:{port}"
        config = load_config(
            env={
                "DAEMON_HOME": str(home_dir),
                "DAEMON_NAME": "anvil",
                "DAEMON_RPC_ADDRESS": address,
                "DAEMON_POLL_INTERVAL": "300ms",
            }
        )
        reference = threading.Thread(
            target=_reference_heads, args=(f"ws://127.0.0.1:{port}", arrivals, stop), daemon=True
        )
        reference.start()
        bus = Bus()
        orchestrator = OrchestratorActor.start(config=config, home=home, bus=bus)
        bus.register("orchestrator", orchestrator)
        height = HeightActor.start(config=config, bus=bus)
        bus.register("height", height)
        deadline = time.monotonic() + seconds
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            rpc_call(url, "evm_mine")
            time.sleep(0.25)
        time.sleep(1.0)  # let the last heads arrive everywhere
        samples: list[tuple[int, float, float]] = orchestrator.ask(GetHeadLatency(), timeout=5)
    finally:
        stop.set()
        pykka.ActorRegistry.stop_all()
        node.kill()
        node.wait()
    latencies = [
        handled - arrivals[number] for number, _observed, handled in samples if number in arrivals
    ]
    return Stats.of([max(latency, 0.0) for latency in latencies])


def anvil_restart_baseline(work: Path, rounds: int) -> Stats:
    """anvil's own SIGTERM stop (writing --state) + start to first RPC answer."""
    anvil = anvil_binary("1.5.1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = work / "baseline-state.json"
    argv = [str(anvil), "--port", str(port), "--block-time", "1", "--state", str(state)]
    times = []
    node = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rpc(url, timeout=20)
        time.sleep(2)
        for _ in range(rounds):
            began = time.monotonic()
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)
            node = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_rpc(url, timeout=20)
            times.append(time.monotonic() - began)
            time.sleep(0.5)
    finally:
        node.kill()
        node.wait()
    return Stats.of(times)


def measure_upgrades(work: Path, count: int) -> list[dict[str, Any]]:
    """(b) and (c): `count` upgrades at successive heights under the real daemon."""
    anvil = anvil_binary("1.5.1")
    home_dir = work / "upgrades"
    home = Home(root=home_dir, name="anvil", data_dir=home_dir / "data")
    init_home(home, anvil)
    for index in range(count):
        add_upgrade(home, f"u{index + 1}", anvil)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DAEMON_HOME": str(home_dir),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"ws://127.0.0.1:{port}",
        "UNSAFE_SKIP_BACKUP": "true",
        "DAEMON_STARTSECS": "200ms",
    }
    argv = [
        sys.executable,
        "-m",
        "wemixvisor.bootstrap",
        "--port",
        str(port),
        "--block-time",
        "1",
        "--state",
        str(home_dir / "data" / "state.json"),
    ]
    completed: list[dict[str, Any]] = []
    with ProcessTracker() as tracker:
        tracker.spawn(argv, log_path=work / "daemon.log", env=env)
        wait_for_rpc(url, timeout=30)
        first = int(rpc_call(url, "eth_blockNumber"), 16) + 4
        plans = [{"name": f"u{i + 1}", "height": first + 3 * i} for i in range(count)]
        (home_dir / "data" / "upgrade-info.json.batch").write_bytes(msgspec.json.encode(plans))
        subscriber = EventSubscriber([f"ipc://{home_dir}/wemixvisor/events.sock"], ["upgrade."])
        try:
            deadline = time.monotonic() + 30 + 6 * count
            while len(completed) < count and time.monotonic() < deadline:
                received = subscriber.receive(timeout=1.0)
                if received is None:
                    continue
                if received.topic == "upgrade.completed":
                    completed.append(received.payload)
                    print(
                        f"  {received.payload['name']}: H={received.payload['height']} "
                        f"first head={received.payload['first_head']} "
                        f"downtime={ms(received.payload['downtime_seconds'])}",
                        flush=True,
                    )
                elif received.topic == "upgrade.failed":
                    print(f"  upgrade failed: {received.payload}", flush=True)
        finally:
            subscriber.close()
    return completed


def main(argv: list[str] | None = None) -> int:
    """Run all three measurements and print the verdicts."""
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__)
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--baseline-rounds", type=int, default=10)
    args = parser.parse_args(argv)
    # The actors run in this process: only their warnings belong in the bench's output.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="wv-bench-", dir="/tmp"))
    try:
        print("(a) head observed -> orchestrator aware")
        ws = measure_latency("ws", args.latency_seconds, work)
        poll = measure_latency("poll", args.latency_seconds, work)
        print_table(
            ["mode", "n", "p50", "p99", "target p99"],
            [
                ["ws newHeads", str(ws.count), ms(ws.median), ms(ws.p99), "20.0 ms"],
                ["poll 300 ms", str(poll.count), ms(poll.median), ms(poll.p99), "320.0 ms"],
            ],
        )
        print(f"\n(b)+(c) {args.upgrades} upgrades at 1 s blocks, no backup")
        baseline = anvil_restart_baseline(work, args.baseline_rounds)
        results = measure_upgrades(work, args.upgrades)
        downtimes = Stats.of([r["downtime_seconds"] for r in results]) if results else None
        beyond = [r["first_head"] - r["height"] for r in results if r["first_head"] is not None]
        rows = [
            ["anvil stop+start", str(baseline.count), ms(baseline.median), ms(baseline.p90), "1.00"]
        ]
        if downtimes is not None:
            rows.append(
                [
                    "wemixvisor upgrade downtime",
                    str(downtimes.count),
                    ms(downtimes.median),
                    ms(downtimes.p90),
                    f"{downtimes.median / baseline.median:.2f}",
                ]
            )
        print_table(["", "n", "median", "p90", "ratio"], rows)
        ok_a = ws.p99 <= 0.020 and poll.p99 <= 0.320
        ok_b = downtimes is not None and downtimes.median <= baseline.median + 0.100
        ok_c = len(results) == args.upgrades and all(b == 0 for b in beyond)
        print(
            f"\nblocks imported beyond H by the old binary: {sum(max(b, 0) for b in beyond)} "
            f"over {len(beyond)} upgrades (per upgrade: {beyond})"
        )
        print(f"verdict (a) latency: {'met' if ok_a else 'NOT met'}")
        print(
            f"verdict (b) downtime <= anvil stop+start + 100 ms "
            f"({ms(baseline.median + 0.1)}): {'met' if ok_b else 'NOT met'}"
        )
        print(f"verdict (c) 0 blocks beyond H: {'met' if ok_c else 'NOT met'}")
        return 0 if ok_a and ok_b and ok_c else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
