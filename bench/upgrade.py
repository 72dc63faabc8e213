"""Upgrade at height: detection latency, downtime, and blocks the old binary imported at or
beyond H (SPEC §16).

H is the new binary's first block (the fork block): the old binary's last block must be H-1.

(a) head observed → orchestrator aware. In-process HeightActor + OrchestratorActor following a
    real anvil over ws (newHeads), HTTP (300 ms polling, the default) and IPC (`anvil --ipc`;
    the row names how the HeightActor follows an IPC address); a block is mined every 250 ms
    with `evm_mine`. HTTP is measured far from any plan and near one (the HeightActor told that
    the next plan starts two blocks ahead, as the orchestrator tells it: tightened polling).
    The reference is an independent raw websocket subscriber in the same process: its arrival
    time of each head is "the node published it". Reported: the
    orchestrator's handling time minus the reference arrival, p50/p99.
(b) upgrade downtime without backup: from the upgrades of (c) at 1 s blocks over HTTP
    (`upgrade.completed.downtime_seconds`: stop request → first RPC answer of the new binary),
    against anvil's own SIGTERM stop + start of the other version to RPC, in the same run.
(c) blocks the old binary imported at or beyond H, judged from the chain: the real daemon runs
    `--upgrades` upgrades per setting, one after the other, each plan scheduled a few seconds
    ahead; the plans alternate anvil 1.7.1 and 1.5.1, so every upgrade changes the binary
    (1.5.1 → 1.7.1 → 1.5.1 …). A prober asks the node for `[eth_blockNumber,
    web3_clientVersion]` in one batch every 5 ms; the old binary's last block is the highest
    head the old version answered, or the new version's first head (it continues from the old
    one's state file), whichever is higher. Settings: HTTP polling at 1, 0.25 and 0.1 s blocks,
    ws and IPC at 1 and 0.25 s; everything else is the daemon's default, except that backups
    are skipped (they happen after the stop and cannot change who imports H).

Usage: `python -m bench.upgrade [--upgrades N] [--latency-seconds S] [--only http:1,ws:0.25]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.messages.height import GetHeight, NextTrigger

VERSIONS = ("1.5.1", "1.7.1")  # genesis, then the plans alternate: 1.7.1, 1.5.1, 1.7.1, …
LEAD_SECONDS = 3.0  # a plan is scheduled this far ahead of H (at least 4 blocks)
PROBE_INTERVAL = 0.005


@dataclass(frozen=True)
class Setting:
    """How the daemon follows the head, and the chain's block time."""

    follow: str  # http | ws | ipc
    block_time: float

    @property
    def label(self) -> str:
        return f"{self.follow} {self.block_time:g} s"


SETTINGS = [
    Setting("http", 1.0),
    Setting("http", 0.25),
    Setting("http", 0.1),
    Setting("ws", 1.0),
    Setting("ws", 0.25),
    Setting("ipc", 1.0),
    Setting("ipc", 0.25),
]


@dataclass(frozen=True)
class Round:
    """One upgrade as the chain and the daemon saw it."""

    height: int
    old_last: int | None  # the old binary's last block, judged from the chain
    first_head: int | None  # upgrade.completed.first_head, the daemon's view
    downtime: float
    overshoot_event: int  # upgrade.overshoot's `blocks`, 0 when none was published
    armed: bool  # upgrade.armed came before upgrade.started: at the switch only the stop was left
    switch_gap: float | None  # height.observed of H-1 → upgrade.step `stopping` (event stamps)

    @property
    def beyond(self) -> int | None:
        """Blocks at or beyond H the old binary imported (0 is the target)."""
        return None if self.old_last is None else max(self.old_last - self.height + 1, 0)


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


def measure_latency(
    follow: str, seconds: float, work: Path, *, near: bool = False
) -> tuple[Stats, str]:
    """(a) for one way of following: handling time minus the reference arrival, and the mode
    the HeightActor reports. With `near`, the HeightActor is told before each block that the
    next plan starts two blocks ahead (what the orchestrator tells it for a real plan), so a
    poller runs at its tightened interval throughout; no plan exists, nothing is upgraded."""
    anvil = anvil_binary("1.5.1")
    port = free_port()
    home_dir = work / f"latency-{follow}{'-near' if near else ''}"
    home = Home(root=home_dir, name="anvil", data_dir=home_dir / "data")
    init_home(home, anvil)
    ipc = home_dir / "anvil.ipc"
    argv = [str(anvil), "--port", str(port)] + (["--ipc", str(ipc)] if follow == "ipc" else [])
    node = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    arrivals: dict[int, float] = {}
    stop = threading.Event()
    url = f"http://127.0.0.1:{port}"
    address = {"ws": f"ws://127.0.0.1:{port}", "http": url, "ipc": str(ipc)}[follow]
    try:
        wait_for_rpc(url, timeout=20)
        config = load_config(
            env={
                "DAEMON_HOME": str(home_dir),
                "DAEMON_NAME": "anvil",
                "DAEMON_RPC_ADDRESS": address,
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
        while time.monotonic() < deadline:
            if near:
                head = int(rpc_call(url, "eth_blockNumber"), 16)
                height.tell(NextTrigger(height=head + 2))
            rpc_call(url, "evm_mine")
            time.sleep(0.25)
        time.sleep(1.0)  # let the last heads arrive everywhere
        samples = cast(
            "list[tuple[int, float, float]]", orchestrator.ask(GetHeadLatency(), timeout=5)
        )
        mode = str(cast("Any", height.ask(GetHeight(), timeout=5)).mode)
    finally:
        stop.set()
        pykka.ActorRegistry.stop_all()
        node.kill()
        node.wait()
    latencies = [
        handled - arrivals[number] for number, _observed, handled in samples if number in arrivals
    ]
    return Stats.of([max(latency, 0.0) for latency in latencies]), mode


def anvil_switch_baseline(work: Path, rounds: int) -> Stats:
    """anvil's own SIGTERM stop (writing --state) + start of the other version to RPC."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = work / "baseline-state.json"

    def argv(index: int) -> list[str]:
        binary = anvil_binary(VERSIONS[index % 2])
        return [str(binary), "--port", str(port), "--block-time", "1", "--state", str(state)]

    times = []
    node = subprocess.Popen(argv(0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rpc(url, timeout=20)
        time.sleep(2)
        for index in range(1, rounds + 1):
            began = time.monotonic()
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)
            node = subprocess.Popen(
                argv(index), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_for_rpc(url, timeout=20)
            times.append(time.monotonic() - began)
            time.sleep(0.5)
    finally:
        node.kill()
        node.wait()
    return Stats.of(times)


class ChainProbe:
    """Which binary answers at which head: `[eth_blockNumber, web3_clientVersion]` in one batch
    every PROBE_INTERVAL, on a thread of its own; failed asks (the node is switching) are
    skipped."""

    _BODY = msgspec.json.encode(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "web3_clientVersion", "params": []},
        ]
    )

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chain-probe", daemon=True)

    def __enter__(self) -> ChainProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _ask(self) -> tuple[str, int] | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        try:
            conn.request("POST", "/", self._BODY, {"Content-Type": "application/json"})
            answers = msgspec.json.decode(conn.getresponse().read())
            by_id = {answer["id"]: answer["result"] for answer in answers}
            return str(by_id[2]), int(by_id[1], 16)
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
            return None
        finally:
            conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self._ask()
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(PROBE_INTERVAL)

    def wait_for_version(self, version: str, since: int, timeout: float) -> None:
        """Until a sample taken after index `since` is answered by `version`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(v == version for v, _head in self.samples[since:]):
                return
            time.sleep(0.02)

    def old_binary_last(self, since: int, old: str, new: str) -> int | None:
        """The old binary's last block over the samples after index `since`: the highest head
        `old` answered, or `new`'s first head if higher (it starts from `old`'s state)."""
        window = self.samples[since:]
        heads = [head for version, head in window if version == old]
        first_new = next((head for version, head in window if version == new), None)
        if first_new is not None:
            heads.append(first_new)
        return max(heads) if heads else None


def _client_version(version: str) -> str:
    return f"anvil/v{version}"


def measure_setting(setting: Setting, count: int, work: Path) -> list[Round]:
    """(c) for one setting: `count` upgrades under the real daemon, judged from the chain."""
    home_dir = work / f"{setting.follow}-{setting.block_time:g}"
    home = Home(root=home_dir, name="anvil", data_dir=home_dir / "data")
    init_home(home, anvil_binary(VERSIONS[0]))
    for index in range(count):
        add_upgrade(home, f"u{index + 1}", anvil_binary(VERSIONS[(index + 1) % 2]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ipc = home_dir / "anvil.ipc"
    address = {"http": url, "ws": f"ws://127.0.0.1:{port}", "ipc": str(ipc)}[setting.follow]
    env = {
        **os.environ,
        "DAEMON_HOME": str(home_dir),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": address,
        "UNSAFE_SKIP_BACKUP": "true",
    }
    node_args = ["--port", str(port), "--block-time", f"{setting.block_time:g}"]
    node_args += ["--state", str(home_dir / "data" / "state.json")]
    if setting.follow == "ipc":
        node_args += ["--ipc", str(ipc)]
    lead = max(4, math.ceil(LEAD_SECONDS / setting.block_time))
    rounds: list[Round] = []
    with ProcessTracker() as tracker:
        argv = [sys.executable, "-m", "wemixvisor.bootstrap", *node_args]
        tracker.spawn(
            argv, log_path=work / f"daemon-{setting.follow}-{setting.block_time:g}.log", env=env
        )
        wait_for_rpc(url, timeout=30)
        subscriber = EventSubscriber(
            [f"ipc://{home_dir}/wemixvisor/events.sock"], ["upgrade.", "height.observed"]
        )
        control = ControlClient(f"ipc://{home_dir}/wemixvisor/control.sock", 5.0)
        try:
            _wait_control(control)
            with ChainProbe(port) as probe:
                for index in range(count):
                    name = f"u{index + 1}"
                    old = _client_version(VERSIONS[index % 2])
                    new = _client_version(VERSIONS[(index + 1) % 2])
                    since = len(probe.samples)
                    height = int(rpc_call(url, "eth_blockNumber"), 16) + lead
                    control.request({"type": "schedule_upgrade", "name": name, "height": height})
                    done = _wait_upgrade(subscriber, name, height, lead * setting.block_time + 90)
                    probe.wait_for_version(new, since, timeout=10)
                    wait_for_rpc(url, timeout=20)
                    if done is None:
                        print(f"  {name}: no upgrade.completed", flush=True)
                        break
                    completed, overshoot, armed, gap = done
                    result = Round(
                        height=height,
                        old_last=probe.old_binary_last(since, old, new),
                        first_head=completed.get("first_head"),
                        downtime=float(completed["downtime_seconds"]),
                        overshoot_event=overshoot,
                        armed=armed,
                        switch_gap=gap,
                    )
                    rounds.append(result)
                    print(
                        f"  {setting.label} {name} {old}→{new}: H={height} old binary's last "
                        f"block={result.old_last} beyond H={result.beyond} daemon first "
                        f"head={result.first_head} downtime={ms(result.downtime)}"
                        f"{' armed' if armed else ' NOT armed'}"
                        f" H-1 seen -> stopping {ms(gap) if gap is not None else '-'}",
                        flush=True,
                    )
        finally:
            control.close()
            subscriber.close()
    return rounds


def _wait_control(control: ControlClient, timeout: float = 30.0) -> None:
    """Until the daemon answers `status` on its control socket."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            control.request({"type": "status"})
            return
        except ControlUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _wait_upgrade(
    subscriber: EventSubscriber, name: str, height: int, timeout: float
) -> tuple[dict[str, Any], int, bool, float | None] | None:
    """`upgrade.completed` of `name`, the blocks of its `upgrade.overshoot` (0 if none),
    whether `upgrade.armed` came before its `upgrade.started`, and the seconds from the
    daemon's `height.observed` of H-1 to its `upgrade.step` `stopping` (the journal written,
    the stop next), by the events' own stamps (None when H-1 was not observed)."""
    deadline = time.monotonic() + timeout
    overshoot = 0
    armed = started = False
    seen_last_old: float | None = None
    gap: float | None = None
    while time.monotonic() < deadline:
        received = subscriber.receive(timeout=1.0)
        if received is None:
            continue
        payload = received.payload
        if received.topic == "height.observed":
            if payload["height"] == height - 1 and seen_last_old is None:
                seen_last_old = float(payload["ts"])
            continue
        if payload.get("name") != name:
            continue
        stopping = received.topic == "upgrade.step" and payload["step"] == "stopping"
        if stopping and seen_last_old is not None:
            gap = float(payload["ts"]) - seen_last_old
        if received.topic == "upgrade.overshoot":
            overshoot = int(received.payload["blocks"])
        elif received.topic == "upgrade.armed":
            armed = armed or not started
        elif received.topic == "upgrade.started":
            started = True
        elif received.topic == "upgrade.completed":
            return received.payload, overshoot, armed, gap
        elif received.topic == "upgrade.failed":
            print(f"  upgrade failed: {received.payload}", flush=True)
            return None
    return None


def _parse_only(text: str | None) -> list[Setting]:
    if not text:
        return SETTINGS
    chosen = []
    for item in text.split(","):
        follow, _, seconds = item.partition(":")
        chosen.append(Setting(follow.strip(), float(seconds)))
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the verdicts."""
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__)
    parser.add_argument("--upgrades", type=int, default=20)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--baseline-rounds", type=int, default=10)
    parser.add_argument("--only", help="settings FOLLOW:SECONDS[,…], e.g. http:1,ws:0.25")
    args = parser.parse_args(argv)
    # The actors run in this process: only their warnings belong in the bench's output.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="wv-bench-", dir="/tmp"))
    try:
        print("(a) head observed -> orchestrator aware")
        latency_rows = []
        ok_a = True
        for follow, near in (("ws", False), ("ipc", False), ("http", False), ("http", True)):
            stats, mode = measure_latency(follow, args.latency_seconds, work, near=near)
            target = 0.020 if mode != "poll" else (0.070 if near else 0.320)
            ok_a = ok_a and stats.p99 <= target
            latency_rows.append(
                [
                    f"{follow} ({mode}{', near H' if near else ''})",
                    str(stats.count),
                    ms(stats.minimum),
                    ms(stats.median),
                    ms(stats.p99),
                    ms(stats.maximum),
                    ms(target),
                ]
            )
        print_table(["follow", "n", "min", "p50", "p99", "max", "target p99"], latency_rows)

        settings = _parse_only(args.only)
        results: dict[Setting, list[Round]] = {}
        for setting in settings:
            print(f"\n(c) {args.upgrades} upgrades, {setting.label} blocks")
            results[setting] = measure_setting(setting, args.upgrades, work)
        print("\n(c) blocks the old binary imported at or beyond H, judged from the chain")
        rows = []
        ok_c = True
        for setting, rounds in results.items():
            beyond = [r.beyond for r in rounds if r.beyond is not None]
            agree = sum(r.first_head == r.old_last for r in rounds)
            reported = sum(r.overshoot_event == r.beyond for r in rounds if r.beyond is not None)
            ok_c = ok_c and len(beyond) == args.upgrades and not any(beyond)
            rows.append(
                [
                    setting.label,
                    str(len(beyond)),
                    str(min(beyond, default=-1)),
                    f"{Stats.of([float(b) for b in beyond]).median:g}" if beyond else "-",
                    str(max(beyond, default=-1)),
                    str(sum(1 for b in beyond if b)),
                    f"{agree}/{len(rounds)}",
                    f"{reported}/{len(beyond)}",
                    f"{sum(r.armed for r in rounds)}/{len(rounds)}",
                ]
            )
        headers = [
            "setting",
            "n",
            "min",
            "median",
            "max",
            "upgrades > 0",
            "first head =",
            "event =",
            "armed",
        ]
        print_table(headers, rows)

        print("\n(c) the daemon's height.observed of H-1 -> its upgrade.step `stopping`")
        gap_rows = []
        for setting, rounds in results.items():
            measured = [r.switch_gap for r in rounds if r.switch_gap is not None]
            if not measured:
                gap_rows.append([setting.label, "0", "-", "-", "-", "-"])
                continue
            gaps = Stats.of(measured)
            gap_rows.append(
                [
                    setting.label,
                    str(gaps.count),
                    ms(gaps.minimum),
                    ms(gaps.median),
                    ms(gaps.p90),
                    ms(gaps.maximum),
                ]
            )
        print_table(["setting", "n", "min", "median", "p90", "max"], gap_rows)

        print(f"\n(b) downtime without backup ({VERSIONS[0]} <-> {VERSIONS[1]})")
        baseline = anvil_switch_baseline(work, args.baseline_rounds)
        table = [
            [
                "anvil stop+start",
                str(baseline.count),
                ms(baseline.minimum),
                ms(baseline.median),
                ms(baseline.p90),
                ms(baseline.maximum),
                "1.00",
            ]
        ]
        reference = results.get(Setting("http", 1.0), [])
        ok_b = False
        if reference:
            downtimes = Stats.of([r.downtime for r in reference])
            ok_b = downtimes.median <= baseline.median + 0.100
            table.append(
                [
                    "wemixvisor upgrade downtime (http 1 s)",
                    str(downtimes.count),
                    ms(downtimes.minimum),
                    ms(downtimes.median),
                    ms(downtimes.p90),
                    ms(downtimes.maximum),
                    f"{downtimes.median / baseline.median:.2f}",
                ]
            )
        print_table(["", "n", "min", "median", "p90", "max", "ratio (median)"], table)
        print(f"\nverdict (a) latency: {'met' if ok_a else 'NOT met'}")
        print(
            f"verdict (b) downtime <= anvil stop+start + 100 ms "
            f"({ms(baseline.median + 0.1)}): {'met' if ok_b else 'NOT met'}"
        )
        print(
            f"verdict (c) 0 blocks at or beyond H in every setting: {'met' if ok_c else 'NOT met'}"
        )
        return 0 if ok_a and ok_b and ok_c else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
