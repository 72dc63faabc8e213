"""Node crash → node answering RPC again, and the supervisor's idle footprint (SPEC §16).

One run measures, with the same anvil binary and arguments:

- anvil's own start: spawn → first `eth_blockNumber` answer, on a port just freed by a SIGKILL,
  one such round before every crash round so that both see the same machine load;
- for supervisord, circus and wemixvisor: SIGKILL the node → first answer from the new node.
  Every round starts a fresh supervisor on its own port and directory, so that each kill is the
  first crash of a node that had been RUNNING (the case that must restart at once; repeated
  crashes may rightly back off). Kills land at a random phase of the supervisor's own polling
  timer, otherwise every round would hit the same point of it;
- idle: each daemon's own RSS and CPU (not the node's) over a window, all three side by side,
  opened once each daemon's start-up is over (wemixvisor: `status` shows it following the head
  and its first chain facts read) and a warm-up passed; wemixvisor follows the head through
  web3 (its HTTP provider), so its RSS includes web3.

Usage: `python -m bench.crash_restart [--rounds N] [--idle-seconds S]` (or `python
bench/crash_restart.py ...`). Exit status 1 when a row could not be measured.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make `bench` and `devtools` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    IdleSample,
    ProcessTracker,
    Stats,
    find_child,
    kill_and_wait_dead,
    log_tail,
    machine_line,
    ms,
    print_table,
    sample_idle,
    signals_raise,
    tool,
)
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc

REPO = Path(__file__).resolve().parent.parent
ANVIL_VERSION = "1.5.1"
NODE_NAME = "anvil"
TARGET_OVERHEAD = 0.050  # crash → RPC may exceed anvil's own start by this much
TARGET_RSS_MB = 100.0  # idle with web3 loaded (SPEC §16: under the seeds' 100 MB)
TARGET_CPU_RATIO = 3.0  # idle CPU at most this many times supervisord's, in the same run
RPC_TIMEOUT = 60.0  # generous: circus alone may need its whole check_delay to notice


def node_args(port: int) -> list[str]:
    """The node's command line arguments, identical for every row."""
    return ["--port", str(port), "--block-time", "1"]


@dataclass(frozen=True)
class Supervisor:
    """How to run one supervisor of the node in a fresh directory."""

    label: str
    # Period of the supervisor's own polling loop: kills are spread uniformly over it.
    timer_period: float
    launch: Callable[[ProcessTracker, Path, int, Path], subprocess.Popen[bytes]]
    # Waits until the supervisor's own start-up is over (not only the node's), if it has one.
    started: Callable[[Path], None] | None = None


def launch_supervisord(
    tracker: ProcessTracker, workdir: Path, port: int, anvil: Path
) -> subprocess.Popen[bytes]:
    """supervisord in the foreground; the node restarts at once and without a retry limit."""
    conf = workdir / "supervisord.conf"
    conf.write_text(
        f"""[supervisord]
nodaemon=true
logfile={workdir}/supervisord.log
pidfile={workdir}/supervisord.pid
childlogdir={workdir}

[program:anvil]
command={anvil} {" ".join(node_args(port))}
startsecs=0
autorestart=true
startretries=1000
stopwaitsecs=5
redirect_stderr=true
stdout_logfile={workdir}/anvil.log
"""
    )
    return tracker.spawn(
        [tool("supervisord"), "-n", "-c", str(conf)], log_path=workdir / "daemon.log"
    )


def circus_launcher(
    check_delay: float | None,
) -> Callable[[ProcessTracker, Path, int, Path], subprocess.Popen[bytes]]:
    """circusd with one respawning watcher; `check_delay` None keeps circus's default (5 s)."""

    def launch(
        tracker: ProcessTracker, workdir: Path, port: int, anvil: Path
    ) -> subprocess.Popen[bytes]:
        delay = "" if check_delay is None else f"check_delay = {check_delay:g}\n"
        conf = workdir / "circus.ini"
        conf.write_text(
            f"""[circus]
endpoint = ipc://{workdir}/circus-control.sock
pubsub_endpoint = ipc://{workdir}/circus-pubsub.sock
statsd = false
{delay}
[watcher:anvil]
cmd = {anvil}
args = {" ".join(node_args(port))}
numprocesses = 1
respawn = true
warmup_delay = 0
graceful_timeout = 5
stdout_stream.class = FileStream
stdout_stream.filename = {workdir}/anvil.log
stderr_stream.class = FileStream
stderr_stream.filename = {workdir}/anvil.log
"""
        )
        return tracker.spawn(
            [tool("circusd"), "--log-output", str(workdir / "circusd.log"), str(conf)],
            log_path=workdir / "daemon.log",
        )

    return launch


def launch_wemixvisor(
    tracker: ProcessTracker, workdir: Path, port: int, anvil: Path
) -> subprocess.Popen[bytes]:
    """`wemixvisor init` then the daemon, with defaults apart from where the node is."""
    home = workdir / "home"
    env = {
        **os.environ,
        "DAEMON_HOME": str(home),
        "DAEMON_NAME": NODE_NAME,
        "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    init = subprocess.run(
        [tool("wemixvisor"), "--home", str(home), "init", str(anvil)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(
            f"wemixvisor init exited {init.returncode}: {(init.stderr or init.stdout).strip()}"
        )
    return tracker.spawn(
        [sys.executable, "-m", "wemixvisor.bootstrap", *node_args(port)],
        log_path=workdir / "daemon.log",
        env=env,
        cwd=REPO,
    )


def wemixvisor_started(workdir: Path) -> None:
    """Until `status` shows the daemon following the head and its first chain facts read: web3
    is loaded and every actor has done its start-up work (the idle window must not see it)."""
    deadline = time.monotonic() + RPC_TIMEOUT
    env = {
        **os.environ,
        "DAEMON_HOME": str(workdir / "home"),
        "DAEMON_NAME": NODE_NAME,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    while True:
        answer = subprocess.run(
            [tool("wemixvisor"), "status", "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        try:
            status = json.loads(answer.stdout)
            if status["head"]["height"] is not None and status["chain"]["checked_at"]:
                return
        except (ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"wemixvisor never followed the head: {answer.stdout[-300:]!r}")
        time.sleep(0.2)


def measure_anvil_start(tracker: ProcessTracker, workdir: Path, anvil: Path, port: int) -> float:
    """Spawn → RPC of anvil itself, on a port freed by SIGKILL as after a crash."""
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    process = tracker.spawn([str(anvil), *node_args(port)], log_path=workdir / "anvil.log")
    wait_for_rpc(url, RPC_TIMEOUT)
    elapsed = time.perf_counter() - start
    kill_and_wait_dead(process.pid)
    process.wait()
    return elapsed


def measure_crash(
    tracker: ProcessTracker,
    *,
    supervisor: Supervisor,
    workdir: Path,
    anvil: Path,
    settle: float,
    rng: random.Random,
) -> float:
    """One round: fresh supervisor, node RUNNING, SIGKILL it, time until the new node answers."""
    workdir.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = supervisor.launch(tracker, workdir, port, anvil)
    try:
        node = find_child(daemon.pid, NODE_NAME, timeout=RPC_TIMEOUT)
        tracker.remember(node.pid)
        wait_for_rpc(url, RPC_TIMEOUT)
        time.sleep(settle + rng.uniform(0.0, supervisor.timer_period))
        if not node.is_running():
            raise RuntimeError(f"node {node.pid} exited before it was killed")
        start = time.perf_counter()
        # Only once the old node is gone can an answer come from nothing but its successor.
        kill_and_wait_dead(node.pid)
        wait_for_rpc(url, RPC_TIMEOUT)
        elapsed = time.perf_counter() - start
        successor = find_child(daemon.pid, NODE_NAME, timeout=5.0, exclude={node.pid})
        tracker.remember(successor.pid)
        return elapsed
    finally:
        tracker.stop(daemon)


def run_idle(
    tracker: ProcessTracker,
    *,
    supervisors: Sequence[Supervisor],
    base: Path,
    anvil: Path,
    seconds: float,
    warmup: float,
) -> dict[str, IdleSample | str]:
    """All daemons side by side, each supervising its own node; sample their own RSS and CPU."""
    results: dict[str, IdleSample | str] = {}
    daemons: dict[str, int] = {}
    urls: dict[str, str] = {}
    workdirs = {s.label: base / f"idle-{index}" for index, s in enumerate(supervisors)}
    for supervisor in supervisors:
        label, workdir = supervisor.label, workdirs[supervisor.label]
        workdir.mkdir(parents=True)
        port = free_port()
        try:
            daemon = supervisor.launch(tracker, workdir, port, anvil)
            tracker.remember(find_child(daemon.pid, NODE_NAME, timeout=RPC_TIMEOUT).pid)
            wait_for_rpc(f"http://127.0.0.1:{port}", RPC_TIMEOUT)
            if supervisor.started is not None:
                supervisor.started(workdir)
        except Exception as exc:
            results[label] = report_failure(label, "idle", exc, workdir)
            continue
        daemons[label] = daemon.pid
        urls[label] = f"http://127.0.0.1:{port}"
    # Let start-up work (imports, first RPC polls, first blocks) finish before the window opens.
    time.sleep(warmup)
    first_heads: dict[str, int] = {}
    for label, url in list(urls.items()):
        try:
            first_heads[label] = head(url)
        except Exception as exc:
            results[label] = report_failure(label, "idle", exc, workdirs[label])
            del urls[label], daemons[label]
    samples = sample_idle(daemons, seconds)

    def checked(label: str) -> IdleSample:
        # A figure only counts if the daemon lived through the window and its node kept working.
        if label not in samples:
            raise RuntimeError("the daemon exited during the idle window")
        advanced = head(urls[label]) - first_heads[label]
        if advanced < max(1, int(seconds) - 2):
            raise RuntimeError(f"the chain advanced only {advanced} blocks in {seconds:g} s")
        return samples[label]

    for label in urls:
        try:
            results[label] = checked(label)
        except Exception as exc:
            results[label] = report_failure(label, "idle", exc, workdirs[label])
    return {supervisor.label: results[supervisor.label] for supervisor in supervisors}


def head(url: str) -> int:
    """The node's current block number."""
    return int(rpc_call(url, "eth_blockNumber"), 16)


def report_failure(label: str, phase: str, exc: BaseException, workdir: Path) -> str:
    """Print why a row failed (with the daemon's log) and return the table cell for it."""
    print(f"\n{label} ({phase}) failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if not isinstance(exc, RuntimeError | TimeoutError | OSError):
        traceback.print_exception(exc, file=sys.stderr)
    for name in ("daemon.log", "anvil.log", "home/logs/node.log"):
        if (workdir / name).exists():
            print(f"  {name}:\n{log_tail(workdir / name)}", file=sys.stderr)
    return "failed, see above"


def version_of(distribution: str) -> str:
    """Installed version of a Python distribution, for the table."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the bench."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.crash_restart", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=10, help="crashes per supervisor (10)")
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="idle sampling window (60)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.2,
        help="seconds the node answers RPC before it is killed; past STARTSECS, so RUNNING (1.2)",
    )
    parser.add_argument(
        "--circus-check-delay",
        type=float,
        default=None,
        help="override circus's check_delay (default: circus's own, 5 s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill-phase jitter")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.idle_seconds <= 0 or args.settle < 0:
        parser.error("--rounds must be ≥ 1, --idle-seconds > 0 and --settle ≥ 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole comparison and print the tables; 1 if any row could not be measured."""
    args = parse_args(argv)
    anvil = anvil_binary(ANVIL_VERSION)
    check_delay = (
        "5 s default" if args.circus_check_delay is None else f"{args.circus_check_delay:g} s"
    )
    supervisors = [
        Supervisor(f"supervisord {version_of('supervisor')}", 1.0, launch_supervisord),
        Supervisor(
            f"circus {version_of('circus')} (check_delay {check_delay})",
            args.circus_check_delay or 5.0,
            circus_launcher(args.circus_check_delay),
        ),
        # Event driven, so no timer is expected; the 1 s spread costs little.
        Supervisor(
            f"wemixvisor {version_of('wemixvisor')}", 1.0, launch_wemixvisor, wemixvisor_started
        ),
    ]
    rng = random.Random(args.seed)
    crash: dict[str, list[float] | str] = {}
    with (
        signals_raise(),
        ProcessTracker() as tracker,
        tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp,
    ):
        base = Path(tmp)
        print(
            f"crash → RPC again: anvil {ANVIL_VERSION} {' '.join(node_args(0)[2:])}, "
            f"{args.rounds} rounds each; {machine_line()}",
            flush=True,
        )
        start_port = free_port()
        measure_anvil_start(tracker, base / "anvil", anvil, start_port)  # warm-up, not counted
        # One baseline round before every crash round: both see the same machine load.
        start_samples: list[float] = []
        for index, supervisor in enumerate(supervisors):
            samples: list[float] = []
            workdir = base / f"crash-{index}"
            try:
                for round_no in range(args.rounds):
                    start_samples.append(
                        measure_anvil_start(tracker, base / "anvil", anvil, start_port)
                    )
                    workdir = base / f"crash-{index}-{round_no}"
                    samples.append(
                        measure_crash(
                            tracker,
                            supervisor=supervisor,
                            workdir=workdir,
                            anvil=anvil,
                            settle=args.settle,
                            rng=rng,
                        )
                    )
                crash[supervisor.label] = samples
            except Exception as exc:
                crash[supervisor.label] = report_failure(supervisor.label, "crash", exc, workdir)
            print(f"  {supervisor.label}: done", file=sys.stderr, flush=True)
        while len(start_samples) < args.rounds:
            start_samples.append(measure_anvil_start(tracker, base / "anvil", anvil, start_port))
        idle = run_idle(
            tracker,
            supervisors=supervisors,
            base=base,
            anvil=anvil,
            seconds=args.idle_seconds,
            warmup=3.0,
        )

    baseline = Stats.of(start_samples)
    print()
    print_crash_table(baseline, crash)
    wemix_label = supervisors[-1].label
    print()
    print(crash_verdict(baseline, crash[wemix_label]))
    print()
    print(
        f"idle over {args.idle_seconds:g} s, each supervising anvil with 1 s blocks "
        "(the daemon process only, not the node)"
    )
    print_idle_table(idle)
    print()
    print(idle_verdict(idle[wemix_label], idle[supervisors[0].label]))
    failed = [row for row in [*crash.values(), *idle.values()] if isinstance(row, str)]
    return 1 if failed else 0


def print_crash_table(baseline: Stats, crash: dict[str, list[float] | str]) -> None:
    """Medians, p90 and ratios against anvil's own start time."""
    rows = [
        [
            "anvil own start (spawn → RPC)",
            str(baseline.count),
            ms(baseline.median),
            ms(baseline.p90),
            ms(baseline.maximum),
            "1.00",
            "-",
        ]
    ]
    for label, result in crash.items():
        if isinstance(result, str):
            rows.append([label, "0", result, "", "", "", ""])
            continue
        stats = Stats.of(result)
        rows.append(
            [
                label,
                str(stats.count),
                ms(stats.median),
                ms(stats.p90),
                ms(stats.maximum),
                f"{stats.median / baseline.median:.2f}",
                f"{(stats.median - baseline.median) * 1000:+.1f} ms",
            ]
        )
    print_table(["crash → RPC answering", "n", "median", "p90", "max", "ratio", "over start"], rows)


def crash_verdict(baseline: Stats, result: list[float] | str) -> str:
    """The §16 target, on medians: wemixvisor ≤ anvil's own start + 50 ms."""
    limit = baseline.median + TARGET_OVERHEAD
    if isinstance(result, str):
        return f"target crash → RPC ≤ {ms(limit)} (anvil start + 50 ms): not measured ({result})"
    median = Stats.of(result).median
    outcome = "met" if median <= limit else "NOT met"
    return f"target crash → RPC ≤ {ms(limit)} (anvil start + 50 ms): {ms(median)}, {outcome}"


def print_idle_table(idle: dict[str, IdleSample | str]) -> None:
    """Peak RSS and CPU share of each daemon."""
    rows = []
    for label, result in idle.items():
        if isinstance(result, str):
            rows.append([label, result, ""])
        else:
            rows.append([label, f"{result.rss_mb:.1f} MB", f"{result.cpu_percent:.2f} %"])
    print_table(["daemon idle", "RSS (peak)", "CPU of one core"], rows)


def idle_verdict(result: IdleSample | str, peer: IdleSample | str) -> str:
    """The §16 idle target, with web3: RSS < 100 MB and CPU ≤ 3x supervisord's (`peer`)."""
    target = f"target idle RSS < {TARGET_RSS_MB:g} MB, CPU ≤ {TARGET_CPU_RATIO:g}x supervisord's"
    if isinstance(result, str) or isinstance(peer, str):
        return f"{target}: not measured ({result if isinstance(result, str) else peer})"
    # A peer idling at 0.00 % makes any ratio infinite: compare against at least 0.1 % of a core.
    ratio = result.cpu_percent / max(peer.cpu_percent, 0.1)
    met = result.rss_mb < TARGET_RSS_MB and ratio <= TARGET_CPU_RATIO
    figures = f"{result.rss_mb:.1f} MB, CPU {ratio:.1f}x ({result.cpu_percent:.2f} %)"
    return f"{target}: {figures}, {'met' if met else 'NOT met'}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Every process was already stopped on the way out; a traceback would add nothing.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
