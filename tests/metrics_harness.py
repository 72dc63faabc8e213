"""Shared by the metrics and monitoring scenarios: a real daemon on anvil with /metrics on, and
scrapes parsed with the Prometheus text parser."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from devtools.anvil import free_port
from tests.control_harness import (
    anvil_args,
    control_endpoint,
    make_home,
    short_root,
    start_daemon,
    wait_status,
)
from tests.daemon_harness import EventLog
from wemixvisor.control import ControlClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MetricsDaemon(NamedTuple):
    home: Path
    port: int  # of /metrics
    client: ControlClient
    events: EventLog


@contextmanager
def metrics_daemon(
    binary: Path, prepare: Callable[[Path], None] = lambda home: None
) -> Iterator[MetricsDaemon]:
    """A daemon supervising anvil (`binary` as genesis) with metrics on a free port, once its
    node runs and its head is known; `prepare` gets the home before the daemon starts."""
    with short_root() as root:
        home = make_home(root, binary)
        prepare(home)
        port, metrics_port = free_port(), free_port()
        daemon = start_daemon(
            home,
            anvil_args(port, home),
            DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{port}",
            WEMIXVISOR_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        )
        events = EventLog(daemon.events_endpoint)
        client = ControlClient(control_endpoint(home), 5.0)
        try:
            wait_status(
                client,
                lambda s: s["node"]["state"] == "RUNNING" and s["head"]["height"] is not None,
            )
            yield MetricsDaemon(home, metrics_port, client, events)
        finally:
            events.close()
            client.close()
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()


def scrape_text(port: int) -> str:
    """The exposition text of /metrics on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def scrape(port: int) -> Samples:
    """Every sample of one scrape, by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError when the scrape lacks it."""
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_until(port: int, ready: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """The first scrape for which `ready` holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, f"never ready; last scrape: {samples}"
        time.sleep(0.1)
