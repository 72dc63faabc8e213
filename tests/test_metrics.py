"""Prometheus metrics (SPEC §14): scraped from a real daemon supervising anvil and parsed with
the Prometheus text parser; what they say matches `status`."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from devtools.anvil import free_port
from tests.control_harness import (
    anvil_args,
    control_endpoint,
    make_home,
    short_root,
    sleeper_node,
    start_daemon,
    wait_status,
)
from wemixvisor.control import ControlClient
from wemixvisor.events.metrics import _EventMetrics
from wemixvisor.events.subscriber import ReceivedEvent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def daemon_with_metrics(anvil_bin_1_5_1: Path) -> Iterator[tuple[Path, int, ControlClient]]:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port, metrics_port = free_port(), free_port()
        daemon = start_daemon(
            home,
            anvil_args(port, home),
            DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{port}",
            WEMIXVISOR_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        )
        client = ControlClient(control_endpoint(home), 5.0)
        try:
            wait_status(
                client,
                lambda s: s["node"]["state"] == "RUNNING" and s["head"]["height"] is not None,
            )
            yield home, metrics_port, client
        finally:
            client.close()
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()


def test_scraped_values_match_status(daemon_with_metrics: tuple[Path, int, ControlClient]) -> None:
    _, port, client = daemon_with_metrics
    before = client.request({"type": "status"})
    samples = scrape(port)
    after = client.request({"type": "status"})

    assert value(samples, "wemixvisor_node_up") == 1.0
    states = {
        labels[0][1]: v for (name, labels), v in samples.items() if name == "wemixvisor_node_state"
    }
    assert states == {
        s: 1.0 if s == "RUNNING" else 0.0
        for s in ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
    }
    assert value(samples, "wemixvisor_node_restarts_total") == after["node"]["restarts"] == 0
    head = value(samples, "wemixvisor_head_height")
    assert before["head"]["height"] <= head <= after["head"]["height"]
    assert value(samples, "wemixvisor_rpc_available") == 1.0
    assert value(samples, "wemixvisor_node_rss_bytes") > 1_000_000
    assert value(samples, "wemixvisor_plans_pending") == len(after["plans"]["pending"])
    assert value(samples, "wemixvisor_events_published_total") > 0
    assert value(samples, "wemixvisor_events_dropped_total") == 0
    assert value(samples, "wemixvisor_actor_restarts_total", actor="node") == 0
    assert value(samples, "wemixvisor_info", version=after["daemon"]["version"]) == 1.0


def test_a_crash_shows_in_restarts_and_exits(
    daemon_with_metrics: tuple[Path, int, ControlClient],
) -> None:
    home, port, client = daemon_with_metrics
    record = msgspec.json.decode((home / "wemixvisor/state/node.pid").read_bytes())
    os.kill(int(record["pid"]), signal.SIGKILL)
    status = wait_status(
        client,
        lambda s: s["node"]["state"] == "RUNNING" and s["node"]["pid"] != record["pid"],
    )
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if value(samples, "wemixvisor_node_exits_total", expected="false") >= 1:
            break
        assert time.monotonic() < deadline, "node.exited never counted"
        time.sleep(0.05)
    assert value(samples, "wemixvisor_node_restarts_total") == status["node"]["restarts"] == 1
    assert value(samples, "wemixvisor_node_up") == 1.0
    assert value(samples, "wemixvisor_metrics_events_missed_total") == 0


def event(topic: str, ts: float, **fields: object) -> ReceivedEvent:
    payload = {"topic": topic, "seq": 1, "run_id": "r", "ts": ts, **fields}
    return ReceivedEvent(topic, payload, b"", 1, "r", ts, 0)


def test_upgrades_and_backups_are_counted_from_their_events() -> None:
    registry = CollectorRegistry()
    metrics = _EventMetrics(registry)
    metrics.observe(event("upgrade.started", 100.0, name="v2"))
    metrics.observe(event("upgrade.completed", 104.0, name="v2", downtime_seconds=0.4))
    metrics.observe(event("upgrade.started", 200.0, name="v3"))
    metrics.observe(event("upgrade.failed", 201.0, name="v3"))
    metrics.observe(event("upgrade.rolled_back", 202.0, name="v3"))
    metrics.observe(event("backup.started", 10.0, id="b1"))
    metrics.observe(event("backup.completed", 12.0, id="b1", total_bytes=5000, seconds=1.5))
    metrics.observe(event("rpc.unavailable", 13.0, address="x", error="y"))

    def get(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        assert found is not None, name
        return found

    assert get("wemixvisor_upgrades_total", result="completed") == 1
    assert get("wemixvisor_upgrades_total", result="failed") == 1
    assert get("wemixvisor_upgrades_total", result="rolled_back") == 1
    assert get("wemixvisor_upgrade_duration_seconds_count") == 2
    assert get("wemixvisor_upgrade_duration_seconds_sum") == 5.0
    assert get("wemixvisor_upgrade_downtime_seconds_sum") == 0.4
    assert get("wemixvisor_backups_total", result="completed") == 1
    assert get("wemixvisor_backup_duration_seconds_sum") == 1.5
    assert get("wemixvisor_backup_bytes") == 5000
    assert get("wemixvisor_rpc_errors_total") == 1


def test_a_metrics_address_in_use_is_a_clear_startup_error() -> None:
    with short_root() as root, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        home = make_home(root, sleeper_node(root))
        daemon = start_daemon(home, WEMIXVISOR_METRICS_ADDRESS=address, DAEMON_STARTSECS="100ms")
        try:
            assert daemon.process is not None
            assert daemon.process.wait(timeout=30) == 1
            assert f"cannot serve metrics on {address}" in daemon.log_text()
            assert not (home / "wemixvisor" / "state" / "node.pid").exists(), "no node started"
        finally:
            daemon.kill()
