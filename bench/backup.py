"""Backup work at the upgrade height after pre-staging, and the upgrade's downtime (SPEC §16).

Three data dirs shaped like chain databases, built in a temporary directory (the backups go to
the same filesystem): 200 MiB in 13 files, 1 GiB in 80 files, and 73 MiB in 20,000 small files.
For each shape:

1. work at H, in process, `--rounds` times: pre-stage the plan's backup with its change
   tracker (what the daemon does while the node runs), change 2 % of the data the way a node
   does (new tables, small files rewritten, one deleted), then time the work at H — what runs
   while the node is stopped: `copy_upgrade_backup` (the tracker's last events, one lstat per
   changed path, the copy of the delta; nothing flushed) — and, separately, the seal that runs
   after the node started again (the manifest from memory, one syncfs, the rename), and `cp -a`
   of the whole dir in the same round; the backup is checked equal to the data dir. Target:
   work at H ≤ 10 % of `cp -a`.
2. upgrade downtime under the real daemon supervising anvil 1.5.1 (1 s blocks, `--state` in
   the data dir), `--upgrades` times with backups and as many with UNSAFE_SKIP_BACKUP=true:
   each plan is registered far enough ahead for its pre-staging; once the last refresh of the
   staging copy before H is done (`backup.staged`), 2 % of the data is changed, so that the
   backup at H copies that delta (the runs without backups make no such change).
   `upgrade.completed.downtime_seconds` is the stop request → the new binary's first RPC
   answer; the backup's seal runs after that answer. Target: with backup ≤ 2x without.

Pending writes are flushed (`sync`) before every timed in-process step but the seal, whose own
syncfs flushes what the work at H left in the page cache. wemixvisor's backups end
durable (one syncfs before the manifest's rename, in the seal); `cp -a` ends with nothing
flushed.

Usage: `python -m bench.backup [--shape 200m|1g|20k] [--rounds 3] [--upgrades 3] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file: make `bench` and `wemixvisor` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from bench._harness import ProcessTracker, Stats, log_tail, machine_line, print_table, signals_raise
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc
from wemixvisor.backup import store as backups
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home, init_home

GIB = 1024**3
MIB = 1024**2
TARGET_AT_H = 0.10  # work at H ≤ 10 % of a full copy
TARGET_DOWNTIME = 2.0  # downtime with backup ≤ 2x without
CHANGED_SHARE = 0.02
PLAN = "bench"
OLD = time.time() - 3600  # written long before the pre-staging


@dataclass(frozen=True)
class Shape:
    """A data dir: total bytes in that many files."""

    key: str
    label: str
    total: int
    files: int


SHAPES = {
    "200m": Shape("200m", "200 MiB / 13 files", 200 * MIB, 13),
    "1g": Shape("1g", "1 GiB / 80 files", GIB, 80),
    "20k": Shape("20k", "73 MiB / 20,000 files", 73 * MIB, 20_000),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line: shapes, rounds, upgrades, where the temporary data goes, seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds (default 3)")
    parser.add_argument(
        "--upgrades", type=int, default=3, help="daemon upgrades per mode (default 3; 0: none)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary dir")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data layout")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.upgrades < 0:
        parser.error("--rounds must be at least 1, --upgrades at least 0")
    return args


class DataDir:
    """A synthetic chain database and the changes a node makes to it."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.pool = os.urandom(64 * MIB + 4096)
        self.serial = 0

    def write(self, path: Path, size: int, mtime: float | None = None) -> None:
        """`size` bytes of random-looking data at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        start = self.rng.randrange(0, 4096)
        with path.open("wb") as handle:
            left = size
            while left:
                chunk = min(left, 64 * MIB)
                handle.write(memoryview(self.pool)[start : start + chunk])
                left -= chunk
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def _name(self, suffix: str) -> Path:
        self.serial += 1
        folder = f"geth/chaindata/{self.serial // 500:03d}"
        return self.root / folder / f"{self.serial:06d}{suffix}"

    def build(self, shape: Shape) -> None:
        """`shape.files` files of `shape.total` bytes in all, sizes varying ±50 %."""
        weights = [self.rng.uniform(0.5, 1.5) for _ in range(shape.files)]
        scale = shape.total / sum(weights)
        for weight in weights:
            self.write(self._name(".ldb"), max(int(weight * scale), 1), OLD)

    def change(self, share: float) -> int:
        """What a node does: a new table, small files rewritten, one deleted; bytes written."""
        files = [p for p in self.root.rglob("*") if p.is_file() and p.name != "state.json"]
        budget = int(sum(p.stat().st_size for p in files) * share)
        changed = budget // 2
        self.write(self._name(".ldb"), changed)
        candidates = [p for p in files if p.stat().st_size <= budget - changed]
        self.rng.shuffle(candidates)
        for path in candidates:
            size = path.stat().st_size
            if changed + size <= budget:
                self.write(path, size)
                changed += size
        self.rng.choice(files).unlink()
        return changed


def timed(step: Callable[[], object], *, flush_first: bool = True) -> float:
    """Seconds `step` takes, after flushing every pending write (unless told not to)."""
    if flush_first:
        os.sync()
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def cp_a(source: Path, dest: Path) -> float:
    """Seconds of `cp -a source dest`; the copy is removed afterwards."""
    try:
        return timed(lambda: subprocess.run(["cp", "-a", str(source), str(dest)], check=True))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def work_at_h(shape: Shape, base: Path, rounds: int, seed: int) -> dict[str, list[float]]:
    """Part 1 for one shape: timings of the work at H, the seal and `cp -a`, per round."""
    data = DataDir(base / "data", random.Random(seed))
    data.build(shape)
    samples: dict[str, list[float]] = {"cp": [], "at_h": [], "seal": [], "prestage": []}
    for round_no in range(rounds):
        store = base / f"backups-{round_no}"
        tracker = backups.ChangeTracker(data.root)
        staged: list[tuple[Path, backups.StageResult]] = []
        samples["prestage"].append(
            timed(
                lambda s=store, t=tracker, out=staged: out.append(  # type: ignore[misc]
                    backups.prestage_upgrade_backup(data.root, s, PLAN, tracker=t)
                )
            )
        )
        watch = backups.StagingWatch.of(tracker, PLAN, *staged[0])
        data.change(CHANGED_SHARE)
        copied: list[backups.UnsealedBackup] = []
        samples["at_h"].append(
            timed(
                lambda s=store, w=watch, out=copied: out.append(  # type: ignore[misc]
                    backups.copy_upgrade_backup(data.root, s, PLAN, watch=w)
                )
            )
        )
        unsealed = copied[0]
        if not unsealed.tracked:
            raise SystemExit("the backup at H fell back to a full scan (see the log)")
        sealed: list[backups.Manifest] = []
        samples["seal"].append(
            # Not flushed first: the seal's one syncfs flushes the copy made at H.
            timed(
                lambda u=unsealed, out=sealed: out.append(u.seal()),  # type: ignore[misc]
                flush_first=False,
            )
        )
        manifest = sealed[0]
        problems = backups.verify_against(store / manifest.id / "data", backups.scan(data.root))
        if problems:
            raise SystemExit(f"the backup differs from the data dir: {problems[:3]}")
        samples["cp"].append(cp_a(data.root, base / "cp-copy"))
        shutil.rmtree(store)
        print(
            f"  {shape.label} round {round_no + 1}: at H {samples['at_h'][-1] * 1000:.1f} ms "
            f"({manifest.changed_bytes / MIB:.1f} MiB copied), seal "
            f"{samples['seal'][-1] * 1000:.1f} ms, cp -a {samples['cp'][-1]:.3f} s",
            flush=True,
        )
    shutil.rmtree(data.root)
    return samples


def _wait(subscriber: EventSubscriber, topic: str, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        received = subscriber.receive(timeout=0.5)
        if received is None:
            continue
        if received.topic == "upgrade.failed":
            raise RuntimeError(f"upgrade failed: {received.payload}")
        if received.topic == topic:
            return received.payload
    raise TimeoutError(f"no {topic} in time")


def _change_before(url: str, height: int, data: DataDir) -> None:
    """Change 2 % of the data as the node would, while H is still ahead."""
    head = int(rpc_call(url, "eth_blockNumber"), 16)
    if head >= height - 2:
        raise RuntimeError(f"pre-staging ended at {head}, too close to H {height}")
    data.change(CHANGED_SHARE)


def downtimes(shape: Shape, base: Path, upgrades: int, *, skip: bool, seed: int) -> list[float]:
    """Part 2 for one shape and mode: the daemon's downtime of `upgrades` upgrades."""
    anvil = anvil_binary("1.5.1")
    root = base / ("skip" if skip else "backup")
    home = Home(root=root, name="anvil", data_dir=root / "data")
    init_home(home, anvil)
    data = DataDir(home.data_dir, random.Random(seed))
    data.build(shape)
    for index in range(upgrades):
        binary = home.upgrade_bin(f"u{index + 1}")
        binary.parent.mkdir(parents=True)
        os.link(anvil, binary)  # the same binary each time: only the switch is measured
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DAEMON_HOME": str(root),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"ws://127.0.0.1:{port}",
        "DAEMON_DATA_BACKUP_DIR": str(base / "backups"),
        "UNSAFE_SKIP_BACKUP": "true" if skip else "false",
        "DAEMON_STARTSECS": "200ms",
        "WEMIXVISOR_LOG_LEVEL": "WARNING",
    }
    state = str(home.data_dir / "state.json")
    argv = [sys.executable, "-m", "wemixvisor.bootstrap", "--port", str(port), "--block-time", "1"]
    argv += ["--state", state]
    log = base / f"daemon-{'skip' if skip else 'backup'}.log"
    seconds: list[float] = []
    with ProcessTracker() as tracker:
        tracker.spawn(argv, log_path=log, env=env)
        subscriber = EventSubscriber(
            [f"ipc://{root}/wemixvisor/events.sock"], ["upgrade.", "backup."]
        )
        try:
            wait_for_rpc(url, timeout=60)
            for index in range(upgrades):
                lead = 12 if skip else 20 + int(shape.total / (40 * MIB)) + shape.files // 1000
                height = int(rpc_call(url, "eth_blockNumber"), 16) + lead
                plan = {"name": f"u{index + 1}", "height": height}
                (home.data_dir / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))
                deadline = time.monotonic() + lead + 120
                if not skip:
                    # The full copy, then its refresh shortly before H; then the node "writes".
                    _wait(subscriber, "backup.staged", deadline)
                    _wait(subscriber, "backup.staged", deadline)
                    _change_before(url, height, data)
                backup = {} if skip else _wait(subscriber, "backup.completed", deadline)
                done = _wait(subscriber, "upgrade.completed", deadline)
                seconds.append(float(done["downtime_seconds"]))
                at_h = (
                    f", backup copy while stopped {backup['node_stopped_seconds'] * 1000:.1f} ms"
                    f" (seal began {backup['seconds'] * 1000:.1f} ms after the copy began)"
                    if backup
                    else ""
                )
                print(
                    f"  {shape.label} {'no backup' if skip else 'with backup'} "
                    f"{plan['name']}: downtime {seconds[-1] * 1000:.1f} ms{at_h}",
                    flush=True,
                )
                wait_for_rpc(url, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{exc}\n{log_tail(log)}") from None
        finally:
            subscriber.close()
    if not skip:
        scans = log.read_text(errors="replace").count("scanning the whole data dir")
        print(
            f"  {shape.label}: {upgrades - scans} of {upgrades} backups at H from tracked changes"
        )
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(base / "backups", ignore_errors=True)
    return seconds


def row(label: str, samples: list[float], baseline: float) -> tuple[str, ...]:
    stats = Stats.of(samples)
    return (
        label,
        str(stats.count),
        f"{stats.median * 1000:,.1f} ms",
        f"{stats.minimum * 1000:,.1f} ms",
        f"{stats.maximum * 1000:,.1f} ms",
        f"{stats.median / baseline:.1%}",
    )


def run(args: argparse.Namespace, base: Path) -> int:
    """Every chosen shape: both parts, their tables and verdicts; 1 when a target is missed."""
    shapes = list(SHAPES.values()) if args.shape == "all" else [SHAPES[args.shape]]
    print(
        f"backup bench: {', '.join(s.label for s in shapes)}; {CHANGED_SHARE:.0%} changed after "
        f"pre-staging; {args.rounds} rounds, {args.upgrades} upgrades per mode; {machine_line()}",
        flush=True,
    )
    missed = False
    for shape in shapes:
        work = base / shape.key
        samples = work_at_h(shape, work, args.rounds, args.seed)
        cp_median = Stats.of(samples["cp"]).median
        header = ["", "n", "median", "min", "max", "vs cp -a"]
        rows = [
            row("cp -a (whole dir)", samples["cp"], cp_median),
            row("pre-stage (node running)", samples["prestage"], cp_median),
            row("work at H (node stopped)", samples["at_h"], cp_median),
            row("seal (node running again)", samples["seal"], cp_median),
        ]
        ratio = Stats.of(samples["at_h"]).median / cp_median
        verdicts = [
            f"work at H {ratio:.1%} of cp -a (target ≤ {TARGET_AT_H:.0%}): "
            f"{'met' if ratio <= TARGET_AT_H else 'MISSED'}"
        ]
        missed |= ratio > TARGET_AT_H
        if args.upgrades:
            plain = downtimes(shape, work, args.upgrades, skip=True, seed=args.seed)
            backed = downtimes(shape, work, args.upgrades, skip=False, seed=args.seed)
            plain_median = Stats.of(plain).median
            rows.append(("", "", "", "", "", "vs no backup"))
            rows.append(row("downtime, no backup", plain, plain_median))
            rows.append(row("downtime, with backup", backed, plain_median))
            factor = Stats.of(backed).median / plain_median
            verdicts.append(
                f"downtime with backup {factor:.2f}x without (target ≤ {TARGET_DOWNTIME:g}x): "
                f"{'met' if factor <= TARGET_DOWNTIME else 'MISSED'}"
            )
            missed |= factor > TARGET_DOWNTIME
        print(f"\n{shape.label}")
        print_table(header, rows)
        for verdict in verdicts:
            print(verdict)
        print(flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if missed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench in a temporary directory that is removed however it ends."""
    args = parse_args(argv)
    with signals_raise():
        base = Path(tempfile.mkdtemp(prefix="wv-bench-backup-", dir=args.dir))
        try:
            return run(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
