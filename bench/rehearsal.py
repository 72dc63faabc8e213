"""Rehearsal of an upgrade's binary (SPEC §19) vs. a plain start of the same binary.

A chain of `--blocks` blocks is made with anvil 1.5.1 (mined at once, its state written on
SIGTERM) into a data dir, and pre-staged as a plan's backup exactly as the daemon does. Then,
`--rounds` times each, alternating:

- **plain start**: anvil 1.7.1 on a copy of that state file, spawn → first `eth_blockNumber`
  answer at the chain's head (the copy is made before the clock starts);
- **rehearsal**: `wemixvisor.upgrade.rehearsal.rehearse`, the daemon's own job: the scratch copy
  of the pre-staged backup, the binary's copy, the start on a free port until it answers at the
  copied head, and the removal of the process and the copy. Its start-to-answer part is shown
  too.

The ratio is rehearsal / plain start: what a rehearsal costs beyond starting the binary.

Usage: `python -m bench.rehearsal [--rounds 5] [--blocks 5000] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make `bench` and `wemixvisor` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Stats, machine_line, ms, print_table, signals_raise
from devtools.anvil import AnvilProcess, anvil_binary, rpc_call
from wemixvisor import __version__
from wemixvisor.backup import store as backups
from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.upgrade import rehearsal

PLAN = "v1.7.1"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line: rounds, chain length, where the temporary home goes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (default 5)")
    parser.add_argument("--blocks", type=int, default=5_000, help="chain length (default 5000)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary home")
    return parser.parse_args(argv)


def make_chain(data_dir: Path, blocks: int, log_dir: Path) -> int:
    """Mine `blocks` blocks with anvil 1.5.1 into `data_dir/state.json`; the head."""
    node = AnvilProcess(
        anvil_binary("1.5.1"), log_dir, block_time=None, state_file=data_dir / "state.json"
    ).start()
    try:
        for start in range(0, blocks, 500):
            rpc_call(node.url, "anvil_mine", [hex(min(500, blocks - start))], timeout=300.0)
        head = int(rpc_call(node.url, "eth_blockNumber"), 16)
    finally:
        node.stop(grace=60.0)
    return head


def plain_start(state: Path, scratch: Path, log_dir: Path, head: int) -> float:
    """Seconds from spawning anvil 1.7.1 on a copy of `state` to its answer at `head`."""
    copy = scratch / "state.json"
    shutil.copyfile(state, copy)
    node = AnvilProcess(anvil_binary("1.7.1"), log_dir, block_time=None, state_file=copy)
    began = time.monotonic()
    node.start(wait=False)
    try:
        while True:
            try:
                answered = int(rpc_call(node.url, "eth_blockNumber", timeout=1.0), 16)
            except Exception:  # not answering yet
                answered = -1
            if answered >= head:
                return time.monotonic() - began
            if node.returncode is not None:
                raise RuntimeError(f"anvil 1.7.1 exited:\n{node.log_tail()}")
            time.sleep(0.002)
    finally:
        node.kill()
        copy.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; exit 1 when a rehearsal fails."""
    args = parse_args(argv)
    with signals_raise(), tempfile.TemporaryDirectory(prefix="wv-rh-", dir=args.dir) as tmp:
        root = Path(tmp)
        home = Home(root=root / "home", name="anvil", data_dir=root / "home" / "data")
        init_home(home, anvil_binary("1.5.1"))
        add_upgrade(home, PLAN, anvil_binary("1.7.1"))
        (home.visor_dir / "config.toml").write_text(
            '[upgrade]\nrehearsal_args = ["--state", "{datadir}/state.json", "--port", "{port}"]\n'
            'rehearsal_timeout = "120s"\n'
        )
        config = load_config({"DAEMON_HOME": str(home.root), "DAEMON_NAME": "anvil"})
        head = make_chain(home.data_dir, args.blocks, root)
        staged, _ = backups.prestage_upgrade_backup(home.data_dir, config.backup.dir, PLAN)
        state_bytes = (staged / backups.DATA / "state.json").stat().st_size
        scratch = root / "plain"
        scratch.mkdir()
        plain: list[float] = []
        rehearsals: list[float] = []
        starts: list[float] = []
        for _ in range(args.rounds):
            plain.append(plain_start(home.data_dir / "state.json", scratch, root, head))
            outcome = rehearsal.rehearse(home, config, PLAN, stopping=threading.Event())
            if not outcome.ok or outcome.start_seconds is None:
                print(f"rehearsal failed: {outcome.reason}\n" + "\n".join(outcome.log_tail))
                return 1
            rehearsals.append(outcome.seconds)
            starts.append(outcome.start_seconds)
    print(machine_line())
    print(
        f"wemixvisor {__version__}; chain of {head} blocks, state file {state_bytes / 2**20:.1f} "
        f"MiB; {args.rounds} rounds each"
    )
    base = Stats.of(plain).median
    rows = []
    for label, samples in (
        ("anvil 1.7.1 plain start (spawn → head)", plain),
        ("rehearsal (copy, start, answer, clean up)", rehearsals),
        ("  of which start → answer at the head", starts),
    ):
        stats = Stats.of(samples)
        rows.append(
            [
                label,
                ms(stats.minimum),
                ms(stats.median),
                ms(stats.maximum),
                f"{stats.median / base:.2f}",
            ]
        )
    print_table(["", "min", "median", "max", "ratio"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
