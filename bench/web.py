"""The web console's HTTP API and event stream (SPEC §16, §18).

- `GET /api/v1/status` round trips: a real daemon supervising anvil (1 s blocks) behind a real
  `wemixvisor web`; 1, then 10 concurrent clients, each a process of its own with a kept-alive
  HTTP connection, back to back and each asking every 20 ms. The clock covers the HTTP request,
  the console's control request to the daemon, and the reply.
- event publish → SSE client: the daemon publishes a heartbeat every 100 ms; a client of
  `GET /api/v1/events` measures, for each event, its arrival time minus the event's `ts` (the
  daemon's clock at publishing: the same machine's clock).
- footprint: the daemon's RSS and CPU idle without the console, then with the console attached
  as an open page keeps it (its event stream open, `status` every second); the console's own
  idle RSS and CPU.

Usage: `python -m bench.web [--requests N] [--seconds S]`. Figures are reported, not asserted;
exit 1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import msgspec

from bench._harness import (
    ProcessTracker,
    Stats,
    concurrent_clients,
    log_tail,
    machine_line,
    ms,
    paced_samples,
    print_table,
    sample_idle,
    signals_raise,
)
from bench.control import wait_running
from devtools.anvil import anvil_binary, free_port
from wemixvisor.home.layout import Home, init_home

ANVIL_VERSION = "1.5.1"
TARGET_STATUS_P99 = 0.020  # HTTP status p99 at 10 clients
TARGET_SSE_P99 = 0.050  # event publish → SSE client p99


def start_daemon(tracker: ProcessTracker, workdir: Path) -> tuple[Path, int]:
    """A daemon supervising anvil; its home and pid."""
    home = workdir / "home"
    init_home(Home(root=home, name="anvil", data_dir=home / "data"), anvil_binary(ANVIL_VERSION))
    port = free_port()
    env = {
        **os.environ,
        "DAEMON_HOME": str(home),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}",
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "100ms",
    }
    process = tracker.spawn(
        [sys.executable, "-m", "wemixvisor.bootstrap", "--port", str(port), "--block-time", "1"],
        log_path=workdir / "daemon.log",
        env=env,
    )
    wait_running(f"ipc://{home}/wemixvisor/control.sock")
    return home, process.pid


def start_console(tracker: ProcessTracker, workdir: Path, home: Path) -> tuple[str, str, int]:
    """`wemixvisor web` for `home`; its base URL, token and pid."""
    port = free_port()
    env = {**os.environ, "DAEMON_HOME": str(home), "DAEMON_NAME": "anvil"}
    process = tracker.spawn(
        [sys.executable, "-m", "wemixvisor.cli", "web", "--listen", f"127.0.0.1:{port}"],
        log_path=workdir / "web.log",
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base, trust_env=False) as client:
        while True:
            try:
                if client.get("/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not serve within 30s")
            time.sleep(0.05)
    token = (home / "wemixvisor" / "web.token").read_text().strip()
    return base, token, process.pid


def _client(
    base: str, token: str, requests: int, interval: float, *, start: Any, results: Any
) -> None:
    """One client's status requests, in a process of its own."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, trust_env=False, timeout=10) as client:
            samples = paced_samples(
                lambda: client.get("/api/v1/status").raise_for_status(), requests, start, interval
            )
    except httpx.HTTPError as exc:
        results.put(repr(exc))
        return
    results.put(samples)


def round_trips(
    base: str, token: str, clients: int, requests: int, interval: float = 0.0
) -> tuple[list[float], float]:
    """Latencies of `clients` x `requests` HTTP status requests, and the wall time."""
    return concurrent_clients(_client, (base, token, requests, interval), clients)


class StreamClient:
    """An open page's worth of load: the event stream read, `status` every second; records
    each event's delay from publishing to arrival."""

    def __init__(self, base: str, token: str, poll_status: bool) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.poll_status = poll_status
        self.delays: list[float] = []
        self.stop = threading.Event()
        self.error: str | None = None
        self._threads = [threading.Thread(target=self._stream, daemon=True)]
        if poll_status:
            self._threads.append(threading.Thread(target=self._poll, daemon=True))

    def __enter__(self) -> StreamClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)

    def _stream(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base, headers=self.headers, trust_env=False) as client,
                client.stream("GET", "/api/v1/events", timeout=None) as stream,
            ):
                for line in stream.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data: "):
                        arrived = time.time()
                        event = msgspec.json.decode(line[6:])
                        self.delays.append(arrived - float(event["ts"]))
        except httpx.HTTPError as exc:
            self.error = repr(exc)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, trust_env=False) as client:
            while not self.stop.wait(1.0):
                client.get("/api/v1/status")


def run(requests: int, seconds: float) -> int:
    print(machine_line())
    with (
        signals_raise(),
        ProcessTracker() as tracker,
        tempfile.TemporaryDirectory(prefix="wv-bw-", dir="/tmp") as tmp,
    ):
        workdir = Path(tmp)
        try:
            home, daemon_pid = start_daemon(tracker, workdir)
            time.sleep(3)  # let start-up settle before sampling idle
            alone = sample_idle({"daemon": daemon_pid}, seconds)["daemon"]
            base, token, web_pid = start_console(tracker, workdir, home)
            with StreamClient(base, token, poll_status=True) as page:
                time.sleep(2)
                attached = sample_idle({"daemon": daemon_pid, "web": web_pid}, seconds)
                if page.error:
                    raise RuntimeError(f"event stream failed: {page.error}")  # noqa: TRY301
                delays = list(page.delays[5:])  # after the stream's first replies
            rows = []
            figures: dict[str, Stats] = {}
            for label, clients, interval in (
                ("status, 1 client, back to back", 1, 0.0),
                ("status, 10 clients, back to back", 10, 0.0),
                ("status, 10 clients, every 20 ms each", 10, 0.020),
            ):
                samples, wall = round_trips(base, token, clients, requests, interval)
                stats = Stats.of(samples)
                figures[label] = stats
                rows.append(
                    [
                        label,
                        str(stats.count),
                        ms(stats.median),
                        ms(stats.p90),
                        ms(stats.p99),
                        ms(stats.maximum),
                        f"{len(samples) / wall:.0f}/s",
                    ]
                )
        except Exception:
            traceback.print_exc()
            for name in ("daemon.log", "web.log"):
                print(f"{name}:\n{log_tail(workdir / name)}", file=sys.stderr)
            return 1
    print()
    print_table(["HTTP round trip", "n", "p50", "p90", "p99", "max", "throughput"], rows)
    best = figures["status, 10 clients, every 20 ms each"].p99
    print(
        f"target status p99 ≤ {ms(TARGET_STATUS_P99)} at 10 clients (every 20 ms each): "
        f"{ms(best)}, {'met' if best <= TARGET_STATUS_P99 else 'NOT met'}"
    )
    print()
    if delays:
        sse = Stats.of(delays)
        print_table(
            ["event publish → SSE client", "n", "p50", "p90", "p99", "max"],
            [
                [
                    "heartbeats every 100 ms",
                    str(sse.count),
                    ms(sse.median),
                    ms(sse.p90),
                    ms(sse.p99),
                    ms(sse.maximum),
                ]
            ],
        )
        print(
            f"target p99 ≤ {ms(TARGET_SSE_P99)}: {ms(sse.p99)}, "
            f"{'met' if sse.p99 <= TARGET_SSE_P99 else 'NOT met'}"
        )
    print()
    print_table(
        ["footprint", "RSS", "CPU"],
        [
            ["daemon, no console", f"{alone.rss_mb:.1f} MiB", f"{alone.cpu_percent:.2f} %"],
            [
                "daemon, console attached",
                f"{attached['daemon'].rss_mb:.1f} MiB",
                f"{attached['daemon'].cpu_percent:.2f} %",
            ],
            [
                "wemixvisor web (page open)",
                f"{attached['web'].rss_mb:.1f} MiB",
                f"{attached['web'].cpu_percent:.2f} %",
            ],
        ],
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests per client")
    parser.add_argument("--seconds", type=float, default=10.0, help="idle sampling window")
    args = parser.parse_args(argv)
    return run(args.requests, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
