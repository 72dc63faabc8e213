"""A daemon starting with 1,000 queued plans, against the same daemon with none (SPEC §16).

Each round starts the real daemon supervising anvil 1.5.1 (1 s blocks) on a home whose data dir
holds `--data-mib` MiB in 40 files and whose queue (state/plans.json) holds 0 or `--plans`
pending plans, heights far ahead; every plan has its binary installed (hard links of one anvil:
one binary file, as the version cache counts binaries). Measured from the spawn:

- **control ready**: the first `status` answered on the control socket;
- **listed**: the first `list_upgrades` answer holding every queued plan;
- **CPU**: the daemon process's CPU time (its own, plus children it reaped, e.g. `<bin>
  --version`; not the node) per second over the `--seconds` after `listed`, and the first second
  from which it averages under 1 % of a core to the end of the window;
- **RSS** of the daemon at the end, and **pre-staged bytes** on disk (the incomplete upgrade
  backups in the backups directory) against the data dir's bytes.

Targets: ready ≤ 1.5x the 0-plan time, CPU under 1 % within 5 s, pre-staged bytes ≤ 1x the
data.
Usage: `python -m bench.queue [--plans 1000] [--rounds 3] [--seconds 20]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._harness import ProcessTracker, Stats, log_tail, machine_line, print_table, signals_raise
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc
from wemixvisor.backup import store as backups
from wemixvisor.control import ControlClient, ControlError, ControlUnreachable
from wemixvisor.control.protocol import ListUpgrades, Status, new_request_id
from wemixvisor.home.layout import Home, init_home
from wemixvisor.home.state import write_queue
from wemixvisor.plans.queue import Plan, QueuedPlan, QueueState

MIB = 1024**2
TARGET_READY = 1.5
TARGET_SETTLE = 5.0
IDLE_CPU = 1.0  # % of one core


@dataclass(frozen=True)
class Round:
    """What one daemon start measured."""

    ready: float
    listed: float
    cpu: list[float]  # % of one core, per second after `listed`
    rss_mb: float
    staged_bytes: int
    data_bytes: int

    @property
    def settled(self) -> float:
        """Seconds after `listed` from which the CPU averages under IDLE_CPU to the end of the
        window (the kernel counts CPU time in 10 ms ticks: 1 % of a one-second sample)."""
        for index in range(len(self.cpu)):
            rest = self.cpu[index:]
            if sum(rest) / len(rest) < IDLE_CPU:
                return float(index)
        return float(len(self.cpu))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=1000, help="queued plans (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="starts per queue size")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window (default 20)")
    parser.add_argument("--data-mib", type=int, default=64, help="data dir size (default 64)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary dir")
    args = parser.parse_args(argv)
    if args.plans < 1 or args.rounds < 1 or args.seconds < 5:
        parser.error("--plans and --rounds must be at least 1, --seconds at least 5")
    return args


def make_home(root: Path, plans: int, data_mib: int) -> Home:
    """A home with a data dir and `plans` pending plans far ahead, binaries installed."""
    anvil = anvil_binary("1.5.1")
    home = Home(root=root, name="anvil", data_dir=root / "data")
    init_home(home, anvil)
    chaindata = home.data_dir / "geth" / "chaindata"
    chaindata.mkdir(parents=True)
    block = os.urandom(data_mib * MIB // 40)
    for index in range(40):
        (chaindata / f"{index:06d}.ldb").write_bytes(block)
    queued = []
    for index in range(plans):
        name = f"p{index:04d}"
        binary = home.upgrade_bin(name)
        binary.parent.mkdir(parents=True)
        os.link(anvil, binary)
        plan = Plan(name=name, height=1_000_000 + 10 * index, source="control")
        queued.append(QueuedPlan(plan=plan, registered_at=time.time()))
    write_queue(home, QueueState(plans=queued))
    return home


def cpu_seconds(process: psutil.Process) -> float:
    """The process's CPU time, with what its reaped children used."""
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def staged_bytes(store: Path) -> int:
    """Bytes of data in the pre-staged (incomplete upgrade) copies on disk (their manifests
    not counted)."""
    total = 0
    for path, _summary in backups.staging_copies(store):
        total += sum(p.stat().st_size for p in (path / "data").rglob("*") if p.is_file())
    return total


def one_round(work: Path, plans: int, args: argparse.Namespace) -> Round:
    """Start the daemon on a fresh home and measure it."""
    root = work / f"home-{plans}"
    shutil.rmtree(root, ignore_errors=True)
    home = make_home(root, plans, args.data_mib)
    store = work / f"backups-{plans}"
    shutil.rmtree(store, ignore_errors=True)
    port = free_port()
    env = {
        **os.environ,
        "DAEMON_HOME": str(root),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"ws://127.0.0.1:{port}",
        "DAEMON_DATA_BACKUP_DIR": str(store),
        "WEMIXVISOR_LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "wemixvisor.bootstrap", "--port", str(port), "--block-time", "1"]
    endpoint = f"ipc://{root}/wemixvisor/control.sock"
    log = work / f"daemon-{plans}.log"
    with ProcessTracker() as tracker:
        began = time.monotonic()
        daemon = tracker.spawn(argv, log_path=log, env=env)
        process = psutil.Process(daemon.pid)
        with ControlClient(endpoint, 0.5) as client:
            ready = _first_answer(client, lambda: client.request(Status(id=new_request_id())))
            ready -= began

            def listing() -> object:
                result = client.request(ListUpgrades(id=new_request_id()))
                queued = [row for row in result["plans"] if row["status"] == "pending"]
                if len(queued) < plans:
                    raise ControlUnreachable(endpoint, f"{len(queued)} of {plans} plans listed")
                return result

            listed = _first_answer(client, listing) - began
        wait_for_rpc(f"http://127.0.0.1:{port}", timeout=30)
        rpc_call(f"http://127.0.0.1:{port}", "eth_blockNumber")
        cpu: list[float] = []
        last = cpu_seconds(process)
        for _ in range(int(args.seconds)):
            time.sleep(1.0)
            now = cpu_seconds(process)
            cpu.append(100.0 * (now - last))
            last = now
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited\n{log_tail(log)}")
        rss = process.memory_info().rss / MIB
    data = sum(p.stat().st_size for p in home.data_dir.rglob("*") if p.is_file())
    result = Round(ready, listed, cpu, rss, staged_bytes(store), data)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    return result


def _first_answer(client: ControlClient, ask: object, limit: float = 120.0) -> float:
    """Monotonic time of the first successful `ask()`; retried until `limit` seconds pass."""
    assert callable(ask)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            ask()
        except (ControlUnreachable, ControlError):
            time.sleep(0.02)
            continue
        return time.monotonic()
    raise SystemExit(f"no answer from {client.endpoint} within {limit:g}s")


def _spread(stats: Stats, scale: float = 1.0, digits: int = 0) -> str:
    """`median (min-max)`, scaled."""
    values = [value * scale for value in (stats.median, stats.minimum, stats.maximum)]
    return f"{values[0]:.{digits}f} ({values[1]:.{digits}f}-{values[2]:.{digits}f})"


def run(args: argparse.Namespace, work: Path) -> int:
    """Alternate 0-plan and N-plan starts; print the table and the verdicts."""
    print(
        f"queue bench: 0 vs {args.plans} queued plans, {args.rounds} starts each, "
        f"{args.data_mib} MiB data dir, CPU over {args.seconds:g} s; {machine_line()}",
        flush=True,
    )
    rounds: dict[int, list[Round]] = {0: [], args.plans: []}
    for round_no in range(args.rounds):
        for plans, measured_so_far in rounds.items():
            measured = one_round(work, plans, args)
            measured_so_far.append(measured)
            print(
                f"  round {round_no + 1}, {plans} plans: ready {measured.ready * 1000:.0f} ms, "
                f"listed {measured.listed * 1000:.0f} ms, "
                f"CPU % per s {[round(c) for c in measured.cpu[:6]]}…, "
                f"staged {measured.staged_bytes / MIB:.1f} MiB",
                flush=True,
            )
    base = Stats.of([r.ready for r in rounds[0]]).median
    rows = []
    for plans, measured in rounds.items():
        ready = Stats.of([r.ready for r in measured])
        listed = Stats.of([r.listed for r in measured])
        settled = Stats.of([r.settled for r in measured])
        cpu = Stats.of([sum(r.cpu) / len(r.cpu) for r in measured])
        rows.append(
            (
                f"{plans} plans",
                str(ready.count),
                _spread(ready, 1000),
                f"{ready.median / base:.2f}",
                _spread(listed, 1000),
                _spread(cpu, 1, 2),
                _spread(settled),
                f"{max(r.rss_mb for r in measured):.0f}",
                f"{max(r.staged_bytes / r.data_bytes for r in measured):.2f}",
            )
        )
    print()
    print_table(
        [
            "queue",
            "n",
            "ready ms",
            "vs 0",
            "listed ms",
            "CPU % (window)",
            "s to <1 %",
            "RSS MB",
            "staged/data",
        ],
        rows,
    )
    many = rounds[args.plans]
    ready_ratio = Stats.of([r.ready for r in many]).median / base
    settle = max(r.settled for r in many)
    staged = max(r.staged_bytes / r.data_bytes for r in many)
    verdicts = [
        (f"control ready {ready_ratio:.2f}x the 0-plan time", ready_ratio <= TARGET_READY, "1.5x"),
        (f"CPU under 1 % after {settle:.0f} s at worst", settle <= TARGET_SETTLE, "5 s"),
        (f"pre-staged bytes {staged:.2f}x the data dir", staged <= 1.0, "1x"),
    ]
    for text, met, target in verdicts:
        print(f"{text} (target ≤ {target}): {'met' if met else 'MISSED'}")
    return 0 if all(met for _, met, _ in verdicts) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench in a temporary directory removed however it ends."""
    args = parse_args(argv)
    with signals_raise():
        work = Path(tempfile.mkdtemp(prefix="wv-bench-queue-", dir=args.dir or "/tmp"))
        try:
            return run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
