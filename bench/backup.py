"""Backup work at the upgrade height after pre-staging, and full backups, vs `cp -a` (SPEC §16).

A synthetic data dir shaped like a chain database (many 2-64 MiB files, as LevelDB/Pebble tables
and freezer segments are, plus many small ones) is built in a temporary directory; the backups
go to the same filesystem. Each round:

1. pre-stages the plan's backup (what the daemon does while the node still runs),
2. changes about 2 % of the data the way a node does between then and H (some files rewritten,
   a new one added, one deleted),
3. times the work at H (`finish_upgrade_backup`: only the delta is copied, then the complete
   manifest is written) and `cp -a` of the whole dir,
4. times a full backup (`create_backup`) and `cp -a` again.

Pending writes are flushed (`sync`) before every timed step, so that no step pays for the
writeback of another. wemixvisor's backups end durable (fsync/syncfs before the manifest);
`cp -a` does not, so `cp -a` followed by `sync` is shown as well. The verdict compares the
work at H with plain `cp -a`, the stricter baseline.

Usage: `python -m bench.backup [--size-gib 1] [--rounds 3] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make `bench` and `wemixvisor` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Stats, machine_line, print_table, signals_raise
from wemixvisor.backup import store as backups

GIB = 1024**3
MIB = 1024**2
TARGET_RATIO = 0.10  # work at H ≤ 10 % of a full copy
CHANGED_SHARE = 0.02
PLAN = "bench"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line: size, rounds, where the temporary data goes, seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="data dir size (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="parent of the temporary directory (default: $TMPDIR); data and backups share it",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data layout")
    args = parser.parse_args(argv)
    if not 0 < args.size_gib <= 64:
        parser.error("--size-gib must be above 0 and at most 64")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


class DataDir:
    """The synthetic chain database and the changes a node makes to it."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.pool = os.urandom(64 * MIB + 1024)
        self.serial = 0

    def _write(self, path: Path, size: int, mtime: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        start = self.rng.randrange(0, 1024)
        with path.open("wb") as handle:
            left = size
            while left:
                chunk = min(left, 64 * MIB)
                handle.write(memoryview(self.pool)[start : start + chunk])
                left -= chunk
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def _name(self, folder: str, suffix: str) -> Path:
        self.serial += 1
        return self.root / folder / f"{self.serial:06d}{suffix}"

    def build(self, total: int) -> tuple[int, int]:
        """About `total` bytes: 90 % in 2-64 MiB tables, 10 % in 4-256 KiB files; (files, bytes)."""
        hour_ago = time.time() - 3600  # written long before the pre-staging
        written = files = 0
        while written < total * 0.9:
            size = min(self.rng.randint(2 * MIB, 64 * MIB), max(int(total * 0.9) - written, MIB))
            self._write(self._name("geth/chaindata", ".ldb"), size, hour_ago)
            written += size
            files += 1
        while written < total:
            size = self.rng.randint(4 * 1024, 256 * 1024)
            self._write(self._name("geth/chaindata/small", ".log"), size, hour_ago)
            written += size
            files += 1
        self._write(self.root / "geth" / "nodekey", 64, hour_ago)
        return files, written

    def change(self, share: float) -> int:
        """What a node does before H: rewrite files, add a table, delete one; bytes changed."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        budget = int(backups.tree_bytes(self.root) * share)
        added = max(budget // 2, 1)
        self._write(self._name("geth/chaindata", ".ldb"), added)
        changed = added
        candidates = [p for p in files if p.stat().st_size <= budget - changed]
        self.rng.shuffle(candidates)
        for path in candidates:
            size = path.stat().st_size
            if changed + size > budget:
                continue
            self._write(path, size)
            changed += size
        victim = self.rng.choice([p for p in files if p.exists()])
        victim.unlink()
        return changed


def timed(step: Callable[[], object]) -> float:
    """Seconds `step` takes, after flushing every pending write."""
    os.sync()
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def cp_a(source: Path, dest: Path, *, then_sync: bool) -> float:
    """Seconds of `cp -a source dest` (and `sync -f` of the filesystem when asked); removes it."""

    def copy() -> None:
        subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
        if then_sync:
            subprocess.run(["sync", "-f", str(dest)], check=True)

    try:
        return timed(copy)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def version_of(package: str) -> str:
    """Installed version of `package`, or '?'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def run(args: argparse.Namespace, base: Path) -> int:
    """Build the data, run the rounds, print the tables; 1 when the target is missed."""
    data = DataDir(base / "data", random.Random(args.seed))
    files, size = data.build(int(args.size_gib * GIB))
    print(
        f"backup bench: {size / GIB:.2f} GiB in {files} files, {CHANGED_SHARE:.0%} changed after "
        f"pre-staging, {args.rounds} rounds, wemixvisor {version_of('wemixvisor')}; "
        f"{machine_line()}",
        flush=True,
    )
    samples: dict[str, list[float]] = {
        "cp": [],
        "cp_sync": [],
        "prestage": [],
        "at_h": [],
        "full": [],
    }
    changed_at_h: list[int] = []
    for round_no in range(args.rounds):
        store = base / f"backups-{round_no}"
        samples["prestage"].append(
            timed(functools.partial(backups.prestage_upgrade_backup, data.root, store, PLAN))
        )
        data.change(CHANGED_SHARE)
        finished: list[backups.Manifest] = []

        def finish(store: Path = store, finished: list[backups.Manifest] = finished) -> None:
            finished.append(backups.finish_upgrade_backup(data.root, store, PLAN))

        samples["at_h"].append(timed(finish))
        manifest = finished[0]
        problems = backups.verify_against(store / manifest.id / "data", backups.scan(data.root))
        if problems:
            print(f"round {round_no}: the backup differs from the data: {problems[:3]}")
            return 1
        changed_at_h.append(manifest.changed_bytes)
        samples["cp"].append(cp_a(data.root, base / "cp-copy", then_sync=False))
        samples["cp_sync"].append(cp_a(data.root, base / "cp-copy", then_sync=True))
        shutil.rmtree(store)
        full_store = base / f"full-{round_no}"
        samples["full"].append(
            timed(functools.partial(backups.create_backup, data.root, full_store, "bench"))
        )
        shutil.rmtree(full_store)
        samples["cp"].append(cp_a(data.root, base / "cp-copy", then_sync=False))
        print(
            f"  round {round_no + 1}: at H {samples['at_h'][-1]:.3f} s "
            f"({manifest.changed_bytes / MIB:.1f} MiB copied), full {samples['full'][-1]:.3f} s, "
            f"cp -a {samples['cp'][-1]:.3f} s",
            flush=True,
        )

    stats = {key: Stats.of(values) for key, values in samples.items()}
    baseline = stats["cp"].median
    rows = [
        ("cp -a (whole dir)", "cp"),
        ("cp -a + sync -f", "cp_sync"),
        ("full backup (create_backup)", "full"),
        ("pre-stage, node running", "prestage"),
        ("work at H (finish, delta only)", "at_h"),
    ]
    print()
    print_table(
        ["operation", "n", "median", "min", "max", "MiB/s", "vs cp -a"],
        [
            (
                label,
                str(stats[key].count),
                f"{stats[key].median:.3f} s",
                f"{stats[key].minimum:.3f} s",
                f"{stats[key].maximum:.3f} s",
                f"{size / MIB / stats[key].median:,.0f}" if key != "at_h" else "-",
                f"{stats[key].median / baseline:.1%}",
            )
            for label, key in rows
        ],
    )
    ratio = stats["at_h"].median / baseline
    changed = sorted(changed_at_h)[len(changed_at_h) // 2]
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(
        f"\ntarget work at H ≤ {TARGET_RATIO:.0%} of cp -a with {CHANGED_SHARE:.0%} changed: "
        f"{ratio:.1%} ({stats['at_h'].median:.3f} s vs {baseline:.3f} s; "
        f"{changed / MIB:.1f} MiB copied at H), {verdict}"
    )
    print(
        f"full backup throughput: {size / MIB / stats['full'].median:,.0f} MiB/s "
        f"vs cp -a {size / MIB / baseline:,.0f} MiB/s "
        f"({stats['full'].median / baseline:.2f}x the time of cp -a, "
        f"{stats['full'].median / stats['cp_sync'].median:.2f}x cp -a + sync)"
    )
    return 0 if ratio <= TARGET_RATIO else 1


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
