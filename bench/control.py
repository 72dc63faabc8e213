"""Control socket round trips and event publishing under a slow subscriber (SPEC §16).

- `status` round trip: a real daemon supervising anvil (1 s blocks); 1, then 10 concurrent
  clients, each a process of its own (as operator tools are) sending `--requests` status
  requests back to back through `ControlClient` (a fresh REQ socket per request, as the operator
  tool does). The clock covers the whole request: socket, connect, send, the daemon asking its
  actors, reply, close.
- event publishing: the daemon's own `EventPublisher` on an ipc socket with one subscriber that
  handles one event per `--slow-ms`; the publisher sends as fast as it can for `--seconds`.
  Reported: events/s, the slowest single `publish` call (it must never wait for the
  subscriber), and what the slow subscriber got and lost (it sees losses as gaps in `seq` once
  it has read what was queued for it).

Usage: `python -m bench.control [--requests N] [--seconds S] [--slow-ms MS]`. Figures are
reported, not asserted; exit 1 only when something could not be measured.
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
    # Run as a file: make `bench` and `devtools` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    ProcessTracker,
    Stats,
    concurrent_clients,
    log_tail,
    machine_line,
    ms,
    paced_samples,
    print_table,
    signals_raise,
)
from devtools.anvil import anvil_binary, free_port
from wemixvisor.control import ControlClient, ControlError, ControlUnreachable
from wemixvisor.events.publisher import EventPublisher
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home, init_home
from wemixvisor.messages.events import ConfigRejected

ANVIL_VERSION = "1.5.1"
TARGET_P99 = 0.010  # status round trip p99 at 10 concurrent clients


def start_daemon(tracker: ProcessTracker, workdir: Path) -> tuple[str, Path]:
    """A daemon supervising anvil in `workdir`; its control endpoint and log."""
    home = workdir / "home"
    init_home(Home(root=home, name="anvil", data_dir=home / "data"), anvil_binary(ANVIL_VERSION))
    port = free_port()
    env = {
        **os.environ,
        "DAEMON_HOME": str(home),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}",
    }
    log = workdir / "daemon.log"
    tracker.spawn(
        [sys.executable, "-m", "wemixvisor.bootstrap", "--port", str(port), "--block-time", "1"],
        log_path=log,
        env=env,
    )
    return f"ipc://{home}/wemixvisor/control.sock", log


def wait_running(endpoint: str, timeout: float = 60.0) -> None:
    """Until `status` says the node is RUNNING and the head is known."""
    deadline = time.monotonic() + timeout
    with ControlClient(endpoint, 2.0) as client:
        while time.monotonic() < deadline:
            try:
                status = client.request({"type": "status"})
            except (ControlUnreachable, ControlError):
                time.sleep(0.1)
                continue
            if status["node"]["state"] == "RUNNING" and status["head"]["height"] is not None:
                return
            time.sleep(0.1)
    raise RuntimeError(f"the daemon at {endpoint} did not report a running node in {timeout}s")


def _client(endpoint: str, requests: int, interval: float, *, start: Any, results: Any) -> None:
    """One operator tool's worth of status requests, in a process of its own."""
    try:
        with ControlClient(endpoint, 5.0) as client:
            samples = paced_samples(
                lambda: client.request({"type": "status"}), requests, start, interval
            )
    except (ControlError, ControlUnreachable) as exc:
        results.put(repr(exc))
        return
    results.put(samples)


def round_trips(
    endpoint: str, clients: int, requests: int, interval: float = 0.0
) -> tuple[list[float], float]:
    """Latencies of `clients` x `requests` status round trips, and the wall time."""
    return concurrent_clients(_client, (endpoint, requests, interval), clients)


class PublishResult:
    """What one publishing run measured."""

    def __init__(self) -> None:
        self.published = 0
        self.dropped = 0
        self.seconds = 0.0
        self.slowest_publish = 0.0
        self.publish_p99 = 0.0
        self.received = 0
        self.missed = 0


def publish_flood(workdir: Path, seconds: float, slow: float) -> PublishResult:
    """The daemon's publisher sending flat out to one subscriber that is slow on purpose."""
    endpoint = f"ipc://{workdir}/events.sock"
    publisher = EventPublisher(endpoint)
    publisher.bind()
    result = PublishResult()
    stop = threading.Event()
    flooding = threading.Event()
    connected = threading.Event()
    drained = threading.Event()

    def slow_subscriber() -> None:
        with EventSubscriber([endpoint]) as subscriber:
            while not stop.is_set():
                event = subscriber.receive(timeout=0.5)
                if event is None:
                    if connected.is_set() and not flooding.is_set():
                        drained.set()
                    continue
                connected.set()
                if event.payload.get("error") == "flood":
                    result.received += 1
                if flooding.is_set():
                    time.sleep(slow)
                elif event.payload.get("error") == "end":
                    break
            result.missed = subscriber.missed

    reader = threading.Thread(target=slow_subscriber, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while not connected.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("the subscriber never connected")
            publisher.publish(ConfigRejected(error="probe"))
            time.sleep(0.01)
        drained.wait(10)
        drained.clear()
        event = ConfigRejected(error="flood")
        before = publisher.published
        timings: list[float] = []
        flooding.set()
        began = time.perf_counter()
        end = began + seconds
        while (now := time.perf_counter()) < end:
            publisher.publish(event)
            timings.append(time.perf_counter() - now)
        result.seconds = time.perf_counter() - began
        result.published = publisher.published - before
        result.dropped = publisher.dropped
        # The subscriber reads at full speed what was queued for it; one more event then shows
        # it everything it lost as a gap.
        flooding.clear()
        drained.wait(60)
        publisher.publish(ConfigRejected(error="end"))
        stats = Stats.of(timings)
        result.slowest_publish = stats.maximum
        result.publish_p99 = stats.p99
    finally:
        stop.set()
        reader.join(10)
        publisher.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="status requests per client")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the event flood")
    parser.add_argument(
        "--slow-ms", type=float, default=1.0, help="the slow subscriber's time per event"
    )
    args = parser.parse_args(argv)
    print(machine_line())
    with (
        signals_raise(),
        ProcessTracker() as tracker,
        tempfile.TemporaryDirectory(prefix="wv-bench-", dir="/tmp") as tmp,
    ):
        workdir = Path(tmp)
        endpoint, log = start_daemon(tracker, workdir)
        try:
            wait_running(endpoint)
            rows = []
            p99_at_10 = None
            # Back to back, 10 Python clients saturate 2 cores (the figure is then the machine's
            # scheduling); polling every 20 ms each is 10 busy monitoring tools at once.
            for clients, interval, label in (
                (1, 0.0, "status, 1 client, back to back"),
                (10, 0.0, "status, 10 clients, back to back"),
                (10, 0.020, "status, 10 clients, every 20 ms each"),
            ):
                samples, wall = round_trips(endpoint, clients, args.requests, interval)
                stats = Stats.of(samples)
                if interval:
                    p99_at_10 = stats.p99
                rows.append(
                    [
                        label,
                        str(stats.count),
                        ms(stats.median),
                        ms(stats.p90),
                        ms(stats.p99),
                        ms(stats.maximum),
                        f"{stats.count / wall:.0f}/s",
                    ]
                )
        except Exception:
            traceback.print_exc()
            print(log_tail(log), file=sys.stderr)
            return 1
        print()
        print_table(["control round trip", "n", "p50", "p90", "p99", "max", "throughput"], rows)
        assert p99_at_10 is not None
        verdict = "met" if p99_at_10 <= TARGET_P99 else "NOT met"
        print(
            f"target status p99 ≤ {ms(TARGET_P99)} at 10 clients (every 20 ms each): "
            f"{ms(p99_at_10)}, {verdict}"
        )

        flood = publish_flood(workdir, args.seconds, args.slow_ms / 1000)
        print()
        print_table(
            ["event publishing", "events/s", "publish p99", "slowest", "slow sub got", "lost"],
            [
                [
                    f"1 subscriber at {args.slow_ms:g} ms/event",
                    f"{flood.published / flood.seconds:,.0f}",
                    f"{flood.publish_p99 * 1e6:.1f} µs",
                    f"{flood.slowest_publish * 1e3:.2f} ms",
                    f"{flood.received:,}",
                    f"{flood.missed:,}",
                ]
            ],
        )
        print(
            f"{flood.published:,} published; the publisher refused {flood.dropped} sends: the slow"
            " subscriber's queue (SNDHWM) overflowed instead, and it saw the loss as gaps in seq"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
