"""A late or restarted subscriber loses nothing: the daemon journals every event it publishes,
across its own restarts and a kill -9, in order and without gaps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from devtools.anvil import wait_for_rpc
from tests.daemon_harness import Daemon, EventLog
from wemixvisor.events.journal import replay
from wemixvisor.home.layout import Home, init_home


def journaled(home: Path, **since: object) -> list[dict[str, object]]:
    directory = home / "wemixvisor" / "state" / "events"
    return [msgspec.json.decode(line) for _, line in replay(directory, **since)]  # type: ignore[arg-type]


def test_every_event_of_every_run_is_journaled_even_those_no_subscriber_saw(
    short_root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> None:
    home = short_root / "home"
    init_home(Home(root=home, name="anvil", data_dir=home / "data"), anvil_bin_1_5_1)
    port = free_port()
    env = {
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}",
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "200ms",
    }
    args = ["--port", str(port), "--block-time", "1"]

    first = Daemon(home, env, args).start()
    events = EventLog(first.events_endpoint)
    try:
        # The subscriber joins after the daemon started: what it missed is in the journal.
        heartbeat = events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(f"http://127.0.0.1:{port}", timeout=10)
        first_run = str(heartbeat["run_id"])
        first.kill()  # SIGKILL: the journal must still be whole up to the last line written
    finally:
        events.close()
        first.kill()

    run = journaled(home, since_run=first_run)
    assert [e["seq"] for e in run] == list(range(1, len(run) + 1))
    assert {"supervisor.started", "node.running"} <= {e["topic"] for e in run}
    assert all(e["run_id"] == first_run for e in run)

    second = Daemon(home, env, args).start()
    events = EventLog(second.events_endpoint)
    try:
        adopted = events.wait_for("supervisor.heartbeat", lambda p: p["run_id"] != first_run)
        second_run = str(adopted["run_id"])
        assert second.terminate() == 0
    finally:
        events.close()
        second.kill()

    both = journaled(home, since_run=first_run)
    assert [e["run_id"] for e in both[: len(run)]] == [first_run] * len(run)
    later = [e for e in both if e["run_id"] == second_run]
    assert [e["seq"] for e in later] == list(range(1, len(later) + 1))
    assert {"supervisor.started", "node.adopted", "supervisor.stopping"} <= {
        e["topic"] for e in later
    }
    # The default replay starts with the newest run.
    assert journaled(home)[0]["run_id"] == second_run
