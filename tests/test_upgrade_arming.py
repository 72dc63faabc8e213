"""An upgrade is armed a few blocks before its switch, so that at H-1 only the journal write and
the stop remain (SPEC §5, §16), and arming is no commitment: whatever changes before the switch
disarms it cleanly, with nothing left behind.

Real daemons on a real anvil 1.5.1 started without mining: the test mines each block itself
(`evm_mine`), so "the head is at H-6" is a fact, not a race. The plan upgrades to anvil 1.7.1.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import free_port, rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog
from tests.support import wait_until
from tests.test_overshoot import saga
from tests.test_upgrade import Chain, chain_factory, root
from wemixvisor.control.client import ControlClient, ControlError

__all__ = ["chain_factory", "root"]  # fixtures used here, defined with the upgrade scenarios

NAME = "v1.7.1"
AHEAD = 5  # blocks before the switch (H-1) from which a plan is armed
SKIP_BACKUP = {"UNSAFE_SKIP_BACKUP": "true"}  # the backup comes after the stop: not armed


def mine_to(chain: Chain, height: int) -> None:
    while chain.head() < height:
        rpc_call(chain.url, "evm_mine")


def control(chain: Chain, request: dict[str, Any]) -> Any:
    with ControlClient(f"ipc://{chain.home}/wemixvisor/control.sock", 10.0) as client:
        return client.request(request)


def started(chain: Chain, *, mining: bool = False) -> tuple[Daemon, EventLog]:
    daemon = chain.daemon(mining=mining, **SKIP_BACKUP)
    events = EventLog(daemon.events_endpoint)
    events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
    wait_for_rpc(chain.url, timeout=20)
    return daemon, events


def seen_at(events: EventLog, height: int) -> None:
    """Until the daemon saw the head at `height`."""
    events.wait_for("height.observed", lambda p: p["height"] == height, timeout=20)


def scheduled(chain: Chain, events: EventLog, ahead: int = 12) -> int:
    """Schedule the plan `ahead` blocks on; its height H."""
    height = chain.head() + ahead
    chain.write_plan(NAME, height)
    events.wait_for("plan.registered", lambda p: p["height"] == height)
    return height


def armed_at(chain: Chain, events: EventLog, height: int) -> dict[str, Any]:
    """Mine up to the first head of the arming zone; the `upgrade.armed` that follows."""
    mine_to(chain, height - 1 - AHEAD)
    return events.wait_for("upgrade.armed", lambda p: p["height"] == height, timeout=20)


def upgraded_at_h_minus_1(chain: Chain, events: EventLog, height: int) -> None:
    mine_to(chain, height - 1)
    start = events.wait_for("upgrade.started", timeout=20)
    assert start["observed_height"] == height - 1
    completed = events.wait_for("upgrade.completed", timeout=60)
    assert completed["first_head"] == height - 1
    assert chain.client_version() == "anvil/v1.7.1"
    assert "upgrade.overshoot" not in [p["topic"] for p in events.seen]


def journal_file(chain: Chain) -> Path:
    return chain.home / "wemixvisor" / "state" / "journal.json"


def queued_status(chain: Chain) -> str:
    queue = msgspec.json.decode((chain.home / "wemixvisor" / "state" / "plans.json").read_bytes())
    return str(next(e["status"] for e in queue["plans"] if e["plan"]["name"] == NAME))


def topics(events: EventLog) -> list[str]:
    return [p["topic"] for p in events.seen]


@pytest.fixture
def chain(chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path) -> Chain:
    made = chain_factory()
    made.add(NAME, anvil_bin_1_7_1)
    return made


def test_armed_five_blocks_ahead_the_switch_at_h_minus_1_is_only_the_journal_and_the_stop(
    chain: Chain,
) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        mine_to(chain, height - 2 - AHEAD)
        seen_at(events, height - 2 - AHEAD)
        events.wait_for("supervisor.heartbeat")
        assert "upgrade.armed" not in topics(events)  # not yet: 6 blocks before the switch

        armed = armed_at(chain, events, height)
        assert (armed["name"], armed["head"]) == (NAME, height - 1 - AHEAD)
        assert (armed["switch_at"], armed["lease"]) == (height - 1, True)
        # Armed is not started: no journal, the plan pending, the node running on its binary
        # and held by the upgrade, so an operator's restart or backup is refused as busy.
        assert not journal_file(chain).exists()
        assert queued_status(chain) == "pending"
        status = control(chain, {"type": "status"})
        assert status["node"]["state"] == "RUNNING"
        assert status["node"]["lease"].startswith(f"upgrade {NAME}")
        with pytest.raises(ControlError) as busy:
            control(chain, {"type": "backup_create"})
        assert busy.value.code == "busy"
        assert f"upgrade {NAME}" in busy.value.message
        control(chain, {"type": "restart"})
        events.wait_for("supervisor.heartbeat")
        assert control(chain, {"type": "status"})["node"]["pid"] == status["node"]["pid"]
        assert chain.client_version() == "anvil/v1.5.1"

        upgraded_at_h_minus_1(chain, events, height)
        order = [t for t in topics(events) if t in ("upgrade.armed", "upgrade.started")]
        assert order == ["upgrade.armed", "upgrade.started"]
        assert "upgrade.disarmed" not in topics(events)
        steps = [p["step"] for p in events.seen if p["topic"] == "upgrade.step"]
        assert steps[0] == "stopping"
    finally:
        events.close()
    assert daemon.terminate() == 0
    log = daemon.log_text()
    assert f"upgrade {NAME} armed at head {height - 1 - AHEAD}" in log
    assert "node restart refused: busy" in log


def test_a_plan_cancelled_while_armed_is_disarmed_and_the_node_left_as_it_was(
    chain: Chain,
) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        armed_at(chain, events, height)
        control(chain, {"type": "cancel_upgrade", "name": NAME})
        disarmed = events.wait_for("upgrade.disarmed", timeout=20)
        assert disarmed["name"] == NAME
        assert "cancelled" in disarmed["reason"]
        assert control(chain, {"type": "status"})["node"]["lease"] is None
        mine_to(chain, height + 1)
        seen_at(events, height + 1)
        events.wait_for("supervisor.heartbeat")
        assert not {"upgrade.started", "upgrade.step", "upgrade.failed"} & set(topics(events))
        assert chain.client_version() == "anvil/v1.5.1"
        assert chain.current() == "genesis"
        assert not journal_file(chain).exists()
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_plan_replaced_while_armed_is_armed_again_for_its_new_height(chain: Chain) -> None:
    daemon, events = started(chain)
    try:
        first = scheduled(chain, events)
        armed_at(chain, events, first)
        later = first + 10
        chain.write_plan(NAME, later)
        events.wait_for("plan.registered", lambda p: p["height"] == later and p["updated"])
        disarmed = events.wait_for("upgrade.disarmed", timeout=20)
        assert "replaced" in disarmed["reason"]
        # The first height passes with no switch: the plan is now `later`.
        mine_to(chain, first + 1)
        seen_at(events, first + 1)
        assert "upgrade.started" not in topics(events)
        armed = armed_at(chain, events, later)
        assert armed["switch_at"] == later - 1
        upgraded_at_h_minus_1(chain, events, later)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_the_head_going_back_disarms_and_the_upgrade_still_switches_at_h_minus_1(
    chain: Chain,
) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        mine_to(chain, height - 10)
        snapshot = rpc_call(chain.url, "evm_snapshot")
        mine_to(chain, height - 3)
        armed = events.wait_for("upgrade.armed", timeout=20)
        # A reorg (or an operator's debug_setHead): the chain is back at H-10.
        assert rpc_call(chain.url, "evm_revert", [snapshot]) is True
        disarmed = events.wait_for("upgrade.disarmed", timeout=20)
        assert "blocks before the switch" in disarmed["reason"]
        assert control(chain, {"type": "status"})["node"]["lease"] is None
        again = armed_at(chain, events, height)
        assert again["head"] == height - 1 - AHEAD
        assert armed["switch_at"] == again["switch_at"] == height - 1
        upgraded_at_h_minus_1(chain, events, height)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_configuration_reloaded_while_armed_arms_again_on_the_new_one(chain: Chain) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        armed_at(chain, events, height)
        (chain.home / "wemixvisor" / "config.toml").write_text("[node]\nmax_restarts = 9\n")
        events.wait_for("config.reloaded", timeout=20)
        disarmed = events.wait_for("upgrade.disarmed", timeout=20)
        assert "configuration" in disarmed["reason"]
        events.wait_for("upgrade.armed", timeout=20)  # at once: the head is still in the zone
        upgraded_at_h_minus_1(chain, events, height)
        assert topics(events).count("upgrade.armed") == 2
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_node_that_crashes_while_armed_still_upgrades_at_h_minus_1(chain: Chain) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        armed_at(chain, events, height)
        record = msgspec.json.decode((chain.home / "wemixvisor/state/node.pid").read_bytes())
        os.kill(int(record["pid"]), signal.SIGKILL)
        events.wait_for("node.exited", timeout=20)
        events.wait_for("node.running", timeout=30)
        wait_for_rpc(chain.url, timeout=20)
        # Restarted without its state (anvil writes it on SIGTERM): the chain starts again
        # below the arming zone, which disarms; whatever the head, the switch is at H-1.
        upgraded_at_h_minus_1(chain, events, height)
        assert "upgrade.failed" not in topics(events)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_daemon_killed_while_armed_leaves_nothing_and_the_next_one_switches_at_h_minus_1(
    chain: Chain,
) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        armed_at(chain, events, height)
        node_record = (chain.home / "wemixvisor/state/node.pid").read_bytes()
        daemon.kill()
    finally:
        events.close()
    # Nothing half-done: no journal, the plan pending, the node running on its binary.
    assert not journal_file(chain).exists()
    assert queued_status(chain) == "pending"
    assert chain.client_version() == "anvil/v1.5.1"
    assert chain.head() == height - 1 - AHEAD

    again, events = started(chain)
    try:
        # The same node, adopted: it ran on through the daemon's death.
        pid = msgspec.json.decode(node_record)["pid"]
        assert control(chain, {"type": "status"})["node"]["pid"] == pid
        # Armed again at its first head (maybe before this subscriber joined: the lease says).
        wait_until(
            lambda: control(chain, {"type": "status"})["node"]["lease"] is not None,
            what="the node leased to the upgrade again",
        )
        upgraded_at_h_minus_1(chain, events, height)
    finally:
        events.close()
    assert again.terminate() == 0
    assert f"upgrade {NAME} armed at head {height - 1 - AHEAD}" in again.log_text()


def test_a_preflight_problem_found_while_armed_is_a_preflight_failure_and_the_plan_stays(
    chain: Chain,
) -> None:
    binary = chain.home / "wemixvisor" / "upgrades" / NAME / "bin" / "anvil"
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        binary.chmod(0o644)  # broken after the plan was registered
        mine_to(chain, height - 1 - AHEAD)
        failed = events.wait_for("plan.preflight_failed", timeout=20)
        assert (failed["name"], failed["height"]) == (NAME, height)
        assert any("new binary" in problem for problem in failed["problems"])
        assert not {"upgrade.armed", "upgrade.disarmed", "upgrade.failed"} & set(topics(events))
        assert queued_status(chain) == "pending"
        assert control(chain, {"type": "status"})["node"]["lease"] is None
        binary.chmod(0o755)  # fixed before H-1: the switch checks again and goes
        upgraded_at_h_minus_1(chain, events, height)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_go_and_disarm_are_decided_once_and_a_resumed_saga_is_never_armed(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    silent = f"http://127.0.0.1:{free_port()}"
    gone = saga(tmp_path / "gone", anvil_bin_1_5_1, silent, observed=None)
    assert gone.armed
    assert gone.disarm("the plan is cancelled")
    assert not gone.armed
    assert not gone.go(observed_height=4, late=False)  # too late: it is being disarmed
    assert gone.journal.observed_height is None

    going = saga(tmp_path / "going", anvil_bin_1_5_1, silent, observed=None)
    assert going.go(observed_height=4, late=False)
    assert going.journal.observed_height == 4
    assert not going.armed
    assert not going.disarm("the plan is cancelled")  # the stop is under way

    # Resumed from its journal: past the decision; a go (the head at its switch again) keeps
    # the journal of the run that started it.
    resumed = saga(tmp_path / "resumed", anvil_bin_1_5_1, silent, observed=4)
    resumed.journal.started_at = 1234.5
    resumed.resuming()
    assert not resumed.armed
    assert resumed.go(observed_height=9, late=True)
    assert (resumed.journal.observed_height, resumed.journal.late) == (4, False)
    assert resumed.journal.started_at == 1234.5
    assert not resumed.disarm("the configuration was reloaded")


def left_running(chain: Chain) -> None:
    """The queue as a daemon killed between saving it and writing the journal leaves it."""
    path = chain.home / "wemixvisor" / "state" / "plans.json"
    queue = msgspec.json.decode(path.read_bytes())
    for entry in queue["plans"]:
        if entry["plan"]["name"] == NAME:
            entry["status"], entry["finished_at"], entry["result"] = "running", None, None
    path.write_bytes(msgspec.json.encode(queue))


def test_a_plan_left_running_without_a_journal_before_its_switch_runs_again(
    chain: Chain,
) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        armed_at(chain, events, height)
        daemon.kill()
    finally:
        events.close()
    left_running(chain)
    assert not journal_file(chain).exists()

    again, events = started(chain)
    try:
        assert queued_status(chain) == "pending"
        upgraded_at_h_minus_1(chain, events, height)
    finally:
        events.close()
    assert again.terminate() == 0
    assert f"plan {NAME} was left running without its journal" in again.log_text()


def test_a_plan_left_running_after_its_switch_is_completed_not_run_again(chain: Chain) -> None:
    daemon, events = started(chain)
    try:
        height = scheduled(chain, events)
        upgraded_at_h_minus_1(chain, events, height)
    finally:
        events.close()
    assert daemon.terminate() == 0
    left_running(chain)
    assert chain.current() == f"upgrades/{NAME}"

    again, events = started(chain)
    try:
        assert queued_status(chain) == "completed"
        head = chain.head()
        mine_to(chain, head + 2)
        seen_at(events, head + 2)
        events.wait_for("supervisor.heartbeat")
        assert not {"upgrade.armed", "upgrade.started"} & set(topics(events))
        assert chain.client_version() == "anvil/v1.7.1"
    finally:
        events.close()
    assert again.terminate() == 0
