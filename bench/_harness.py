"""What every bench shares: statistics, tables, idle sampling, and processes that never outlive it.

Every process a bench starts goes through `ProcessTracker`: supervisors run in their own session
(so killpg reaches them and their helpers), and every descendant ever seen is remembered, because
a node may live in a session of its own (wemixvisor's does) and be reparented to init once its
supervisor is gone. Leaving the tracker — normally, by an exception, Ctrl-C or SIGTERM — stops them
all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import multiprocessing
import os
import platform
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

import psutil


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    """Summary of one series of timings, in seconds."""

    count: int
    median: float
    p90: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Summarise `samples` (at least one)."""
        return cls(
            count=len(samples),
            median=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            minimum=min(samples),
            maximum=max(samples),
        )


def ms(seconds: float) -> str:
    """Seconds rendered as milliseconds for a table cell."""
    return f"{seconds * 1000:.1f} ms"


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], out: IO[str] = sys.stdout
) -> None:
    """Print rows under headers with aligned columns (first column left, others right)."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    print(line(table[0]), file=out)
    print("  ".join("-" * width for width in widths), file=out)
    for row in table[1:]:
        print(line(row), file=out)


def machine_line() -> str:
    """Date, cores and CPU model, printed above every result so figures can be compared."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    today = dt.datetime.now(dt.UTC).date().isoformat()
    return f"{today}, {os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def tool(name: str) -> str:
    """Path of a console script: next to this interpreter (the venv) first, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH")
    return found


class ProcessTracker:
    """Starts bench processes and guarantees that none of them, nor their descendants, survives.

    Use as a context manager; `stop()` ends one tree early (graceful first, then SIGKILL).
    """

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self._roots: list[subprocess.Popen[bytes]] = []
        self._seen: dict[int, psutil.Process] = {}

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in a new session, stdout+stderr appended to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        self._roots.append(process)
        self.remember(process.pid)
        return process

    def remember(self, pid: int) -> None:
        """Track `pid` (and its current descendants) so that it is killed on exit too."""
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            self._seen.setdefault(pid, process)
            for child in process.children(recursive=True):
                self._seen.setdefault(child.pid, child)

    def stop(self, process: subprocess.Popen[bytes], grace: float | None = None) -> None:
        """SIGTERM the process group, wait up to `grace`, then SIGKILL what is left of the tree."""
        grace = self.grace if grace is None else grace
        # The group is signalled only while its leader is unreaped (alive or a zombie): until
        # then its pid cannot be reused, so killpg cannot reach a stranger's group.
        if process.returncode is None:
            self.remember(process.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not _exited_unreaped(process.pid) and time.monotonic() < deadline:
                # Children started in the meantime must not escape the final SIGKILL.
                self.remember(process.pid)
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        self._kill_seen()

    def close(self) -> None:
        """Stop every tree this tracker started, then kill any remembered process still alive."""
        for process in self._roots:
            self.stop(process)
        self._roots.clear()
        self._kill_seen()

    def _kill_seen(self) -> None:
        alive = []
        for process in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()
                    alive.append(process)
        psutil.wait_procs(alive, timeout=5)
        self._seen = {pid: process for pid, process in self._seen.items() if process.is_running()}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _exited_unreaped(pid: int) -> bool:
    """Whether child `pid` has exited, leaving it unreaped (WNOWAIT) for `Popen.wait`."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return result is not None


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so that `finally` blocks run and nothing leaks.

    Ctrl-C already raises KeyboardInterrupt.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def find_child(
    parent_pid: int, name: str, timeout: float, exclude: Iterable[int] = ()
) -> psutil.Process:
    """The direct child of `parent_pid` called `name`, not in `exclude`, once it appears."""
    excluded = set(exclude)
    deadline = time.monotonic() + timeout
    while True:
        try:
            for child in psutil.Process(parent_pid).children():
                with contextlib.suppress(psutil.Error):
                    if child.pid not in excluded and child.name() == name:
                        return child
        except psutil.NoSuchProcess:
            raise RuntimeError(
                f"process {parent_pid} exited while waiting for its {name}"
            ) from None
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {name} child of process {parent_pid} within {timeout} s")
        time.sleep(0.005)


def kill_and_wait_dead(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and return once it has exited (its sockets are closed by then).

    A pidfd names the process itself, so neither the signal nor the wait can hit a reused pid,
    and the pidfd turns readable when the process exits, even before its parent reaps it.
    """
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"process {pid} still alive {timeout} s after SIGKILL")
    finally:
        os.close(pidfd)


@dataclass(frozen=True)
class IdleSample:
    """One process's footprint over an idle window."""

    rss_mb: float  # largest RSS seen, MiB
    cpu_percent: float  # CPU time (user + system) over wall time, % of one core


def sample_idle(pids: Mapping[str, int], seconds: float) -> dict[str, IdleSample]:
    """Measure each process itself (not its children) over the same `seconds` window.

    A process that exits during the window is left out of the result.
    """
    processes = {label: psutil.Process(pid) for label, pid in pids.items()}
    start_cpu = {label: _cpu_seconds(process) for label, process in processes.items()}
    peak_rss = dict.fromkeys(processes, 0)
    start = time.monotonic()
    end = start + seconds
    while True:
        for label, process in list(processes.items()):
            try:
                peak_rss[label] = max(peak_rss[label], process.memory_info().rss)
            except psutil.NoSuchProcess:
                del processes[label]
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(1.0, end - now))
    wall = time.monotonic() - start
    results = {}
    for label, process in processes.items():
        try:
            cpu = _cpu_seconds(process) - start_cpu[label]
        except psutil.NoSuchProcess:
            continue
        results[label] = IdleSample(
            rss_mb=peak_rss[label] / (1024 * 1024), cpu_percent=100.0 * cpu / wall
        )
    return results


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def log_tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, indented, for error reports."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"    ({path}: {exc})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


WARMUP_REQUESTS = 30
"""Requests each client sends before the clients start together (connections, caches)."""


def paced_samples(
    request: Callable[[], object], requests: int, start: Any, interval: float
) -> list[float]:
    """One client's latencies: warm up, wait at the barrier `start` with the others, then
    `requests` calls — back to back when `interval` is 0, else one every `interval` seconds
    from a random phase."""
    for _ in range(WARMUP_REQUESTS):
        request()
    start.wait()
    samples: list[float] = []
    next_at = time.perf_counter() + interval * random.random()
    for _ in range(requests):
        if interval:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
        began = time.perf_counter()
        request()
        samples.append(time.perf_counter() - began)
    return samples


def concurrent_clients(
    client: Callable[..., None], args: tuple[Any, ...], clients: int
) -> tuple[list[float], float]:
    """Run `clients` processes of `client(*args, start=barrier, results=queue)` together; each
    puts its latencies (or a failure's text) on the queue. All latencies, and the wall time."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(clients + 1)
    results = context.Queue()
    workers = [
        context.Process(target=client, args=args, kwargs={"start": start, "results": results})
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=120)
        began = time.perf_counter()
        collected = [results.get(timeout=300) for _ in workers]
        wall = time.perf_counter() - began
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    failures = [result for result in collected if isinstance(result, str)]
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed, first: {failures[0]}")
    return [sample for series in collected for sample in series], wall
