"""A running daemon fed hostile plan files, config edits and asked for JSON logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.anvil import wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.home.layout import Home, init_home

HOSTILE_PLANS = [
    b'{"name": "../../x", "height": 10}',
    b'{"name": "a/b", "height": 10}',
    b'{"name": "..", "height": 10}',
    b'{"name": "' + b"v" * 65 + b'", "height": 10}',
    b'{"name": "ok", "height": 0}',
    b'{"name": "ok", "height": -5}',
    b'{"name": "ok", "height": 99999999999999999999999999}',
    b'{"name": "ok", "height": "12a"}',
    b'{"name": 7, "height": 10}',
    b'{"name": "ok", "height": 10, "info": [1, 2]}',
    b'{"name": "ok", "height": 1',
    b"[1, 2, 3]",
    b"\xff\xfe garbage",
    b"",
]


@pytest.fixture
def running(
    anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> Iterator[tuple[Daemon, EventLog, Path, str]]:
    root = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    home = root / "home"
    init_home(Home(root=home, name="anvil", data_dir=home / "data"), anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon(
        home,
        {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": url,
            "DAEMON_POLL_INTERVAL": "50ms",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "300ms",
            "WEMIXVISOR_LOG_FORMAT": "json",
        },
        ["--port", str(port), "--block-time", "1"],
    ).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(url, timeout=10)
        yield daemon, events, home, url
    finally:
        events.close()
        daemon.kill()
        kill_node_processes(root)
        shutil.rmtree(root, ignore_errors=True)


def test_hostile_plan_files_are_rejected_and_the_daemon_stays_fine(
    running: tuple[Daemon, EventLog, Path, str],
) -> None:
    daemon, events, home, _url = running
    plan_file = home / "data" / "upgrade-info.json"
    for content in HOSTILE_PLANS:
        plan_file.write_bytes(content)
        rejected = events.wait_for("plan.rejected", timeout=10)
        assert rejected["source"] == "file"
        assert rejected["reason"]
    (home / "data" / "upgrade-info.json.batch").write_bytes(b"x" * (1024 * 1024 + 1))
    assert "1048576" in events.wait_for("plan.rejected", timeout=10)["reason"]
    events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
    assert not list((home / "wemixvisor" / "upgrades").iterdir())
    assert not [p for p in events.seen if p["topic"] in ("plan.registered", "upgrade.started")]
    assert daemon.process is not None and daemon.process.poll() is None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["name", "height", "info", "x"]), children, max_size=4
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_generated_plan_files_never_start_an_upgrade_or_hurt_the_daemon(
    running: tuple[Daemon, EventLog, Path, str], content: bytes
) -> None:
    daemon, events, home, _url = running
    (home / "data" / "upgrade-info.json").write_bytes(content)
    events.wait_for("supervisor.heartbeat")
    assert daemon.process is not None and daemon.process.poll() is None
    assert not [p for p in events.seen if p["topic"] == "upgrade.started"]


def test_config_edits_are_reloaded_or_rejected_live(
    running: tuple[Daemon, EventLog, Path, str],
) -> None:
    daemon, events, home, _url = running
    config = home / "wemixvisor" / "config.toml"
    config.write_text('[node]\nmax_restarts = 9\nargs = ["--silent"]\n')
    reloaded = events.wait_for("config.reloaded", timeout=10)
    assert sorted(reloaded["changed"]) == ["node.args", "node.max_restarts"]
    assert reloaded["restart_required"] == ["node.args"]
    config.write_text("[node]\nmax_restarts = 'many'\n")
    rejected = events.wait_for("config.rejected", timeout=10)
    assert "max_restarts" in rejected["error"]
    # The node keeps running with the arguments it was started with.
    events.wait_for("height.observed", timeout=10)
    assert daemon.process is not None and daemon.process.poll() is None


def test_a_reloaded_log_level_applies_at_once(
    running: tuple[Daemon, EventLog, Path, str],
) -> None:
    daemon, events, home, url = running
    (home / "wemixvisor" / "config.toml").write_text('[log]\nlevel = "ERROR"\n')
    reloaded = events.wait_for("config.reloaded", timeout=10)
    assert reloaded["changed"] == ["log.level"]
    assert reloaded["restart_required"] == []
    before = len(daemon.log_text().splitlines())
    # A crash and its restart log WARNING and INFO lines: none of them pass ERROR.
    pid = int(msgspec.json.decode((home / "wemixvisor" / "state" / "node.pid").read_bytes())["pid"])
    os.kill(pid, signal.SIGKILL)
    events.wait_for("node.running", timeout=20)
    wait_for_rpc(url, timeout=10)
    events.wait_for("supervisor.heartbeat")
    after = [json.loads(line) for line in daemon.log_text().splitlines()[before:] if line]
    assert all(r["record"]["level"]["no"] >= 40 for r in after), after


def test_json_logs_are_one_object_per_line(running: tuple[Daemon, EventLog, Path, str]) -> None:
    daemon, _events, _home, _url = running
    lines = [line for line in daemon.log_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert all("record" in record and "text" in record for record in records)


def test_a_reloaded_heartbeat_interval_applies_to_the_next_heartbeats(
    anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> None:
    # Its own daemon: the shared one sets the interval in the environment, which wins over
    # config.toml.
    root = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    home = root / "home"
    init_home(Home(root=home, name="anvil", data_dir=home / "data"), anvil_bin_1_5_1)
    (home / "wemixvisor" / "config.toml").write_text('[events]\nheartbeat_interval = "300ms"\n')
    port = free_port()
    daemon = Daemon(
        home,
        {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}",
            "DAEMON_POLL_INTERVAL": "50ms",
        },
        ["--port", str(port)],
    ).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat")
        (home / "wemixvisor" / "config.toml").write_text(
            '[events]\nheartbeat_interval = "1500ms"\n'
        )
        reloaded = events.wait_for("config.reloaded", timeout=10)
        assert reloaded["changed"] == ["events.heartbeat_interval"]
        events.wait_for("supervisor.heartbeat")  # the one already due at the old interval
        first = events.wait_for("supervisor.heartbeat")
        second = events.wait_for("supervisor.heartbeat")
        assert second["ts"] - first["ts"] > 1.2
    finally:
        events.close()
        daemon.kill()
        kill_node_processes(root)
        shutil.rmtree(root, ignore_errors=True)
