"""Prometheus metrics (SPEC §14): scraped from a real daemon supervising anvil and parsed with
the Prometheus text parser; what they say matches `status`."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from tests.control_harness import make_home, short_root, sleeper_node, start_daemon, wait_status
from tests.metrics_harness import (
    MetricsDaemon,
    Samples,
    metrics_daemon,
    scrape,
    scrape_until,
    value,
)
from wemixvisor.control import ControlClient
from wemixvisor.events.metrics import plan_eta
from wemixvisor.events.metrics_feed import EventMetrics, block_time
from wemixvisor.events.subscriber import ReceivedEvent
from wemixvisor.home.layout import Home, add_upgrade


@pytest.fixture(scope="module")
def daemon_with_metrics(anvil_bin_1_5_1: Path) -> Iterator[tuple[Path, int, ControlClient]]:
    with metrics_daemon(anvil_bin_1_5_1) as running:
        yield running.home, running.port, running.client


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
    metrics = EventMetrics(registry)
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
    assert get("wemixvisor_rpc_errors_total") == 1


def test_event_only_facts_follow_their_latest_event() -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    # Another daemon version may publish upgrade.overshoot: counted by its topic alone.
    metrics.observe(event("upgrade.overshoot", 1.0, name="v2", height=100, imported=101))
    metrics.observe(event("plan.preflight_failed", 2.0, name="v2", height=100, problems=["x"]))
    metrics.observe(event("validator.signing", 3.0, address="0xa1", height=100, block=101))
    assert registry.get_sample_value("wemixvisor_upgrade_overshoots_total") == 1
    assert registry.get_sample_value("wemixvisor_plan_preflight_failures_total") == 1
    assert registry.get_sample_value("wemixvisor_validator_signing", {"address": "0xa1"}) == 1
    metrics.observe(event("validator.not_signing", 4.0, address="0xa1", height=200))
    assert registry.get_sample_value("wemixvisor_validator_signing", {"address": "0xa1"}) == 0

    risk = {"address": "0xa1", "validators": 4, "quorum": 3, "active": 3, "active_without_me": 2}
    metrics.observe(event("validator.quorum_at_risk", 5.0, plan="v3", height=300, **risk))
    metrics.observe(event("validator.quorum_at_risk", 6.0, plan="v4", height=400, **risk))
    assert set(metrics.quorum_risks({"v3", "v4"})) == {"v3", "v4"}
    assert set(metrics.quorum_risks({"v4"})) == {"v4"}, "v3 left the queue: forgotten"
    assert set(metrics.quorum_risks({"v3", "v4"})) == {"v4"}


@pytest.mark.parametrize(
    "payload",
    [
        {"plan": "v3"},
        {"plan": 7, "height": 1, "quorum": 3, "active_without_me": 2},
        {"plan": "v3", "height": "300", "quorum": 3, "active_without_me": 2},
        {"plan": "v3", "height": True, "quorum": 3, "active_without_me": 2},
        {"plan": "v3", "height": 300, "quorum": None, "active_without_me": 2},
    ],
)
def test_a_malformed_quorum_warning_is_ignored(payload: dict[str, object]) -> None:
    metrics = EventMetrics(CollectorRegistry())
    metrics.observe(event("validator.quorum_at_risk", 1.0, **payload))
    assert metrics.quorum_risks({"v3"}) == {}


@pytest.mark.parametrize(
    "payload",
    [{}, {"address": 5}, {"address": ""}, {"address": "0x" + "a" * 200}],
)
def test_a_signing_event_without_a_usable_address_is_ignored(payload: dict[str, object]) -> None:
    registry = CollectorRegistry()
    EventMetrics(registry).observe(event("validator.signing", 1.0, **payload))
    assert not [s for m in registry.collect() for s in m.samples if "validator" in s.name]


@pytest.mark.parametrize(
    ("heads", "expected"),
    [
        ([], None),
        ([(10, 100.0)], None),
        ([(10, 100.0), (10, 101.0)], None),  # no new block yet
        ([(10, 100.0), (11, 101.0), (12, 102.0), (13, 103.0), (14, 104.0)], 1.0),
        # a pace needs a few blocks: one step is as quantised as the polling
        ([(10, 100.0), (11, 100.3), (12, 101.3), (13, 102.3)], None),
        # polling quantises steps to 0.9 / 1.2 s; the sum does not
        ([(1, 0.0), (2, 0.9), (3, 2.1), (4, 3.0), (5, 3.9), (6, 5.1), (7, 6.0)], 1.0),
        ([(1, 0.0), (3, 0.5), (5, 1.0)], 0.25),  # heads skipped between polls
        # a 60 s stall (an upgrade's downtime) does not stretch the pace
        ([(1, 0.0), (2, 1.0), (3, 2.0), (4, 62.0), (5, 63.0), (6, 64.0)], 1.0),
        # a step back is not a step
        ([(5, 10.0), (4, 11.0), (6, 12.0), (7, 12.5), (8, 13.0)], 0.5),
        # nor is a clock going back
        ([(1, 5.0), (2, 4.0), (3, 6.0), (4, 8.0), (5, 10.0), (6, 12.0)], 2.0),
        ([(1, 5.0), (2, 5.0), (3, 5.0)], None),  # a burst seen at one instant
    ],
)
def test_block_time_is_elapsed_time_over_blocks_without_stalls(
    heads: list[tuple[int, float]], expected: float | None
) -> None:
    assert block_time(heads) == pytest.approx(expected)


def test_the_pace_starts_over_when_the_head_goes_back() -> None:
    metrics = EventMetrics(CollectorRegistry())
    heads = [(100, 0.0), (101, 2.0), (102, 4.0), (103, 6.0), (104, 8.0)]
    heads += [(5, 9.0), (6, 9.5), (7, 10.0), (8, 10.5), (9, 11.0)]
    for height, ts in heads:
        metrics.observe(event("height.observed", ts, height=height, source="poll"))
    assert metrics.block_time() == pytest.approx(0.5)
    metrics.observe(event("height.observed", 12.0, height="10", source="poll"))  # ignored
    assert metrics.block_time() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("height", "head", "pace", "expected"),
    [(110, 100, 1.0, 10.0), (110, 100, 0.25, 2.5), (100, 100, 1.0, 0.0), (90, 100, 1.0, 0.0)],
)
def test_plan_eta(height: int, head: int, pace: float, expected: float) -> None:
    assert plan_eta(height, head, pace) == expected


@pytest.fixture(scope="module")
def daemon_with_plans(anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path) -> Iterator[MetricsDaemon]:
    def stage(home: Path) -> None:
        add_upgrade(
            Home(root=home, name="anvil", data_dir=home / "data"), "staged", anvil_bin_1_7_1
        )

    with metrics_daemon(anvil_bin_1_5_1, stage) as running:
        yield running


def test_pending_plans_show_readiness_and_time_to_their_height(
    daemon_with_plans: MetricsDaemon,
) -> None:
    _, port, client, events = daemon_with_plans
    head = client.request({"type": "status"})["head"]["height"]
    heights = {"staged": head + 600, "missing": head + 700}
    for name, height in heights.items():
        client.request({"type": "schedule_upgrade", "name": name, "height": height})
    events.wait_for("plan.preflight_failed", lambda p: p["name"] == "missing")

    def settled(samples: Samples) -> bool:
        # "staged" reads 0 until its preflight (which runs the binary) has passed.
        return (
            samples.get(("wemixvisor_plan_ready", (("plan", "staged"),))) == 1
            and samples.get(("wemixvisor_plan_preflight_failures_total", ()), 0) >= 1
            and ("wemixvisor_block_time_seconds", ()) in samples
        )

    samples = scrape_until(port, settled)
    assert value(samples, "wemixvisor_plans_pending") == 2
    assert value(samples, "wemixvisor_plan_ready", plan="staged") == 1
    assert value(samples, "wemixvisor_plan_ready", plan="missing") == 0
    assert value(samples, "wemixvisor_plan_preflight_failures_total") >= 1
    pace = value(samples, "wemixvisor_block_time_seconds")
    assert 0.5 < pace < 3.0, "anvil mines a block a second"
    seen_head = value(samples, "wemixvisor_head_height")
    for name, height in heights.items():
        assert value(samples, "wemixvisor_plan_height", plan=name) == height
        assert value(samples, "wemixvisor_plan_eta_seconds", plan=name) == pytest.approx(
            (height - seen_head) * pace
        )
    assert not [k for k in samples if k[0] == "wemixvisor_validator_quorum_at_risk"]

    client.request({"type": "cancel_upgrade", "name": "missing"})
    samples = scrape_until(port, lambda s: s.get(("wemixvisor_plans_pending", ())) == 1)
    assert ("wemixvisor_plan_ready", (("plan", "missing"),)) not in samples


def test_the_latest_complete_backup_shows_its_size_and_time(
    daemon_with_plans: MetricsDaemon,
) -> None:
    _, port, client, events = daemon_with_plans
    listed = scrape_until(port, lambda s: ("wemixvisor_backups_complete", ()) in s)
    assert value(listed, "wemixvisor_backups_complete") == 0
    assert ("wemixvisor_backup_bytes", ()) not in listed, "no backup yet"
    client.request({"type": "backup_create", "label": "metrics"})
    done = events.wait_for("backup.completed", lambda p: p["label"] == "metrics", timeout=60)
    # The listing and the exporter's own event feed each catch up in their own time.
    counted = ("wemixvisor_backups_total", (("result", "completed"),))
    samples = scrape_until(
        port,
        lambda s: s.get(("wemixvisor_backups_complete", ())) == 1 and s.get(counted) == 1,
    )
    assert value(samples, "wemixvisor_backup_bytes") == done["total_bytes"]
    assert value(samples, "wemixvisor_backup_last_timestamp_seconds") > 0
    assert value(samples, "wemixvisor_backups_total", result="completed") == 1


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
