"""A waiting plan's ETA in blocks and in time, in `status`, `upgrade status`, `upgrade list` and
the HTTP API: blocks times the block time the daemon measured, "unknown" until it has measured one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import free_port
from tests.control_harness import control_endpoint, make_home, short_root, wait_status
from tests.daemon_harness import Daemon
from tests.web_harness import WebConsole, daemon_env, wait_http
from wemixvisor.chain.pace import PACE_HEADS, HeadPace
from wemixvisor.control import ControlClient
from wemixvisor.control.verbs import VERBS
from wemixvisor.control.verbs.eta import Eta, switch_eta
from wemixvisor.control.verbs.render import (
    eta_text,
    render_plans,
    render_status,
    render_upgrade_status,
    window_note,
)
from wemixvisor.control.verbs.replies import DaemonState, PlanRow, StatusReply, UpgradeStatus
from wemixvisor.upgrade.window import WindowState

SLOT = WindowState(
    verdict="before_slot", slot_start=84, slot_end=87, slot_index=1, slot_count=4, validator=True
)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        # A plain plan switches once the head holds H-1.
        ({"height": 100, "head": 89, "block_time": 2.0}, Eta(10, 20.0)),
        ({"height": 100, "head": 89, "block_time": None}, Eta(10, None)),
        ({"height": 100, "head": None, "block_time": 2.0}, Eta(None, None)),
        ({"height": 100, "head": 150, "block_time": 2.0}, Eta(0, 0.0)),
        ({"height": 100, "head": 89, "block_time": 2.0, "late": True}, Eta(0, 0.0)),
        # A measured pace of zero or less is no pace at all.
        ({"height": 100, "head": 89, "block_time": 0.0}, Eta(10, None)),
        ({"height": 100, "head": 89, "block_time": -1.0}, Eta(10, None)),
        # A window plan: to its slot once known, to the window's opening before, to H-1 once
        # the window closed.
        ({"height": 100, "head": 70, "block_time": 0.5, "window": 20, "slot": SLOT}, Eta(14, 7.0)),
        ({"height": 100, "head": 70, "block_time": 0.5, "window": 20}, Eta(10, 5.0)),
        ({"height": 10, "head": 0, "block_time": 1.0, "window": 50}, Eta(1, 1.0)),
        (
            {
                "height": 100,
                "head": 70,
                "block_time": 1.0,
                "window": 20,
                "slot": WindowState(verdict="closed", reason="x"),
            },
            Eta(29, 29.0),
        ),
        (
            {
                "height": 100,
                "head": 70,
                "block_time": 1.0,
                "window": 20,
                "slot": WindowState(verdict="surveying"),
            },
            Eta(10, 10.0),
        ),
    ],
)
def test_the_eta_counts_blocks_to_the_switch_and_times_them_by_the_block_time(
    arguments: dict[str, Any], expected: Eta
) -> None:
    assert switch_eta(**arguments) == expected


def test_the_pace_is_unknown_until_a_few_blocks_went_by_and_follows_a_new_chain() -> None:
    pace = HeadPace()
    for height in range(1, 4):
        pace.note(height, height * 2.0)
    assert pace.block_time() is None  # two steps: too few to trust a polled pace
    for height in range(4, 8):
        pace.note(height, height * 2.0)
    assert pace.block_time() == pytest.approx(2.0)
    # A stall of a minute is not the chain's pace.
    pace.note(8, 7 * 2.0 + 60.0)
    assert pace.block_time() == pytest.approx(2.0)
    # A head going backwards (a restored data dir, another chain) starts the measure over.
    pace.note(3, 100.0)
    assert pace.block_time() is None


@pytest.mark.parametrize(
    "heads",
    [
        [(n, 5.0) for n in range(1, 20)],  # every head seen at one instant
        [(1, 10.0), (5, 9.0), (9, 8.0)],  # a clock running backwards
        [(1, 0.0)] * 50,  # the same head again and again
        [(n, float(n)) for n in range(10**9, 10**9 + 10 * PACE_HEADS)],  # far more than kept
    ],
)
def test_hostile_heads_give_no_pace_or_a_sane_one(heads: list[tuple[int, float]]) -> None:
    pace = HeadPace()
    for height, seen in heads:
        pace.note(height, seen)
    measured = pace.block_time()
    assert measured is None or measured == pytest.approx(1.0)


def test_eta_text_shows_the_blocks_and_the_time_or_says_what_is_unknown() -> None:
    assert eta_text(12, 12.0) == "in 12 blocks, ETA 12.0s"
    assert eta_text(1, 2.0) == "in 1 block, ETA 2.0s"
    assert eta_text(600, 3600.0 * 2 + 60) == "in 600 blocks, ETA 2h1m"
    assert eta_text(12, None) == "in 12 blocks, ETA unknown (block time not measured yet)"
    assert eta_text(None, None) == "ETA unknown (head unknown)"
    assert eta_text(0, 0.0) == "due now"
    # An absurd figure from a daemon stays one short line.
    assert eta_text(10**30, 1e300) == f"in {10**30} blocks, ETA over a year"
    assert eta_text(5, float("nan")) == "in 5 blocks, ETA unknown"
    assert eta_text(5, -3.0) == "in 5 blocks, ETA unknown"


def test_a_window_note_names_the_slot_and_its_eta() -> None:
    assert window_note(20, SLOT, 14, 7.0).endswith("; slot opens in 14 blocks, ETA 7.0s")
    assert window_note(20, SLOT, 14, None).endswith(
        "; slot opens in 14 blocks, ETA unknown (block time not measured yet)"
    )
    closed = WindowState(verdict="closed", reason="no safe moment")
    assert window_note(20, closed, 29, 29.0).endswith(
        "window closed (no safe moment): switches at H-1, in 29 blocks, ETA 29.0s"
    )
    assert window_note(20, None, 10, 5.0).endswith("; window opens in 10 blocks, ETA 5.0s")
    go = msgspec.structs.replace(SLOT, verdict="go")
    assert window_note(20, go, 0, 0.0).endswith("; its turn: switching")


def _row(**fields: Any) -> PlanRow:
    base: dict[str, Any] = {
        "name": "v2",
        "height": 100,
        "status": "pending",
        "source": "control",
        "late": False,
        "result": None,
        "registered_at": None,
        "finished_at": None,
    }
    return PlanRow(**(base | fields))


def test_upgrade_list_and_upgrade_status_show_the_eta_or_unknown() -> None:
    known = _row(eta_blocks=10, eta_seconds=20.0)
    unknown = _row(name="v3", height=200, eta_blocks=110, eta_seconds=None)
    older = _row(name="v4", height=300)  # a daemon that sends no ETA
    table = render_plans([known, unknown, older]).splitlines()
    assert table[0].split()[3] == "ETA"
    assert "10 blocks, 20.0s" in table[1]
    assert "110 blocks, time unknown" in table[2]
    assert table[3].split()[:6] == ["v4", "300", "after", "block", "299", "pending"]
    status = UpgradeStatus(
        daemon=DaemonState(running=True, pid=1),
        pending=[known, unknown],
        journal=None,
        journal_error=None,
        problems=[],
    )
    shown = render_upgrade_status(status)
    assert "v2 at height 100 (control): switches after block 99, in 10 blocks, ETA 20.0s" in shown
    assert "in 110 blocks, ETA unknown (block time not measured yet)" in shown


def _status(pending: list[dict[str, Any]]) -> StatusReply:
    return msgspec.convert(
        {
            "node": {
                "state": "RUNNING",
                "pid": 5,
                "uptime": 1.0,
                "restarts": 0,
                "restarts_in_window": 0,
                "exits": [],
                "binary": "/b",
                "target": "genesis",
                "version": "anvil",
                "adopted": False,
                "cpu_percent": 0.0,
                "rss_bytes": 0,
                "last_error": None,
            },
            "head": {
                "height": 89,
                "observed_age": 0.1,
                "rpc_available": True,
                "last_error": None,
                "mode": "poll",
                "stalled": False,
            },
            "plans": {"pending": pending, "in_progress": None, "last_upgrade": None},
            "chain": None,
            "daemon": {
                "version": "0",
                "pid": 1,
                "uptime": 1.0,
                "run_id": None,
                "home": "/h",
                "stopping": False,
                "actor_restarts": {},
            },
            "problems": [],
        },
        StatusReply,
    )


def test_status_shows_each_pending_plan_with_its_eta() -> None:
    plain = {"name": "v2", "height": 100, "late": False, "source": "control"}
    shown = render_status(_status([plain | {"eta_blocks": 10, "eta_seconds": 20.0}]))
    assert "v2 at 100 (switches after block 99) in 10 blocks, ETA 20.0s" in shown
    shown = render_status(_status([plain | {"eta_blocks": 10}]))
    assert "in 10 blocks, ETA unknown (block time not measured yet)" in shown
    # A daemon that sends no ETA yet: the blocks are not guessed.
    assert "ETA unknown (head unknown)" in render_status(_status([plain]))


@pytest.fixture(scope="module")
def resting_chain(anvil_bin_1_5_1: Path) -> Iterator[tuple[Path, WebConsole]]:
    """A daemon on an anvil that mines no block (its head stays 0), and its web console."""
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        args = ["--port", str(port), "--no-mining"]
        daemon = Daemon(home, daemon_env(home, port), args).start()
        try:
            with ControlClient(control_endpoint(home), timeout=2.0) as client:
                wait_status(
                    client,
                    lambda s: s["node"]["state"] == "RUNNING" and s["head"]["height"] == 0,
                    timeout=60,
                )
            with WebConsole(home) as console:
                console.wait_ready()
                yield home, console
        finally:
            daemon.kill()


def _cli(home: Path, *args: str) -> str:
    env = {**os.environ, "DAEMON_HOME": str(home), "DAEMON_NAME": "anvil", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout


def test_a_chain_whose_block_time_is_unknown_shows_the_blocks_and_an_unknown_time(
    resting_chain: tuple[Path, WebConsole],
) -> None:
    home, console = resting_chain
    scheduled = console.client.post("/api/v1/upgrades", json={"name": "later", "height": 500})
    assert scheduled.status_code == 200, scheduled.text
    try:
        listing = console.get("/api/v1/upgrades").json()
        assert listing["block_time"] is None
        (row,) = listing["plans"]
        assert (row["eta_blocks"], row["eta_seconds"]) == (499, None)
        pending = console.get("/api/v1/upgrades/status").json()
        assert (pending["head"], pending["block_time"]) == (0, None)
        status = console.get("/api/v1/status").json()
        assert status["head"]["block_time"] is None
        (plan,) = status["plans"]["pending"]
        assert (plan["eta_blocks"], plan["eta_seconds"]) == (499, None)
        shown = _cli(home, "status")
        assert "in 499 blocks, ETA unknown (block time not measured yet)" in shown, shown
        assert "499 blocks, time unknown" in _cli(home, "upgrade", "list")
    finally:
        assert console.client.delete("/api/v1/upgrades/later").status_code == 200


def test_a_chain_with_blocks_shows_the_eta_in_time(anvil_bin_1_5_1: Path) -> None:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        args = ["--port", str(port), "--block-time", "0.5"]
        daemon = Daemon(home, daemon_env(home, port), args).start()
        try:
            with WebConsole(home) as console:
                console.wait_ready()
                head = wait_http(console, "/api/v1/status", 200).json()["head"]["height"] or 0
                scheduled = console.client.post(
                    "/api/v1/upgrades", json={"name": "timed", "height": head + 5000}
                )
                assert scheduled.status_code == 200, scheduled.text
                with ControlClient(control_endpoint(home), timeout=2.0) as client:
                    status = wait_status(
                        client, lambda s: s["head"]["block_time"] is not None, timeout=60
                    )
                pace = status["head"]["block_time"]
                assert 0.25 <= pace <= 1.5, pace  # anvil mines every 0.5 s; a loaded machine
                (plan,) = status["plans"]["pending"]
                assert plan["eta_seconds"] == pytest.approx(plan["eta_blocks"] * pace)
                listing = console.get("/api/v1/upgrades").json()
                (row,) = listing["plans"]
                assert row["eta_seconds"] == pytest.approx(
                    row["eta_blocks"] * listing["block_time"]
                )
                shown = _cli(home, "upgrade", "status")
                assert "timed at height" in shown and ", ETA " in shown, shown
                assert "unknown" not in shown.split("timed at height")[1].splitlines()[0]
        finally:
            daemon.kill()


@pytest.mark.parametrize(
    "fields",
    [
        {"eta_blocks": "12"},
        {"eta_blocks": 1.5},
        {"eta_seconds": "soon"},
        {"eta_seconds": [1.0]},
    ],
)
def test_a_daemon_reply_with_a_broken_eta_is_refused_with_a_clear_error(
    fields: dict[str, Any],
) -> None:
    row = {
        "name": "v2",
        "height": 100,
        "status": "pending",
        "source": "control",
        "late": False,
        "result": None,
        "registered_at": None,
        "finished_at": None,
    }
    result = {
        "daemon": {"running": True, "pid": 7},
        "plans": [row | fields],
        "journal": None,
        "head": 90,
        "problems": [],
    }
    with pytest.raises(ValueError, match=r"malformed list_upgrades result: .*\$\.plans\[0\]\.eta_"):
        VERBS["list_upgrades"].decode_reply(result)
