"""The operator's rollback of a completed upgrade (SPEC §19), against real anvil daemons.

`wemixvisor upgrade rollback NAME [--restore]` stops the node, points `current` back at the
binary the upgrade replaced, optionally restores the upgrade's backup, and starts it: journaled
in state/rollback.json, so a daemon killed after any step finishes it at its next start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from tests.chain_daemon import start_daemon
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.support import wait_until
from tests.test_upgrade import H_AHEAD, Chain
from wemixvisor.cli import main as cli_main
from wemixvisor.control import ControlClient, ControlError
from wemixvisor.control.protocol import RollbackUpgrade, new_request_id
from wemixvisor.messages.plans import Refusal
from wemixvisor.plans.queue import Plan, PlanStatus, QueuedPlan, QueueState
from wemixvisor.upgrade.rollback import refuse_rollback

DEAD = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_chain(
    root: Path, anvil_bin: Callable[[str], Path], free_port: Callable[[], int]
) -> Iterator[Callable[[str, str], Chain]]:
    chains: list[Chain] = []

    def make(genesis: str, upgrade: str) -> Chain:
        chain = Chain(root / f"c{len(chains)}", anvil_bin(genesis), free_port())
        chain.add(f"v{upgrade}", anvil_bin(upgrade))
        chains.append(chain)
        return chain

    yield make
    for chain in chains:
        chain.stop()


def start(chain: Chain, **env: str) -> Daemon:
    return start_daemon(chain, **env)


def upgrade(chain: Chain, daemon: Daemon, events: EventLog, name: str) -> None:
    """Run plan `name` to completion a few blocks ahead."""
    events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
    wait_for_rpc(chain.url, timeout=10)
    chain.write_plan(name, chain.head() + H_AHEAD)
    events.wait_for("upgrade.completed", timeout=H_AHEAD + 60)
    assert chain.current() == f"upgrades/{name}"
    # The event comes from the saga; the queue records the upgrade right after it.
    wait_until(lambda: queued(chain, name).status is PlanStatus.COMPLETED, what="recorded")


def cli(chain: Chain, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAEMON_HOME": str(chain.home), "DAEMON_NAME": "anvil"}
    return subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rollback_request(chain: Chain, name: str, *, restore: bool = False) -> object:
    with ControlClient(f"ipc://{chain.home}/wemixvisor/control.sock", 10.0) as control:
        return control.request(RollbackUpgrade(id=new_request_id(), name=name, restore=restore))


def refused(chain: Chain, name: str, *, restore: bool = False) -> str:
    with pytest.raises(ControlError) as caught:
        rollback_request(chain, name, restore=restore)
    return caught.value.code


def queued(chain: Chain, name: str) -> QueuedPlan:
    path = chain.home / "wemixvisor" / "state" / "plans.json"
    state = msgspec.json.decode(path.read_bytes(), type=QueueState)
    return next(entry for entry in state.plans if entry.plan.name == name)


def answers(chain: Chain, version: str) -> bool:
    try:
        return rpc_call(chain.url, "web3_clientVersion") == f"anvil/v{version}"
    except Exception:
        return False


# the decision


def _entry(
    status: PlanStatus, backup: str | None = "b1", since: str | None = "genesis"
) -> QueuedPlan:
    return QueuedPlan(
        plan=Plan(name="v2", height=10), status=status, from_target=since, backup=backup
    )


@pytest.mark.parametrize(
    ("entry", "restore", "current", "busy", "code"),
    [
        (None, False, "upgrades/v2", None, "not_found"),
        (_entry(PlanStatus.PENDING), False, "genesis", None, "conflict"),
        (_entry(PlanStatus.RUNNING), False, "upgrades/v2", None, "busy"),
        (_entry(PlanStatus.COMPLETED), False, "upgrades/v2", "upgrade v3", "busy"),
        (_entry(PlanStatus.FAILED), False, "genesis", None, "conflict"),
        (_entry(PlanStatus.ROLLED_BACK), False, "genesis", None, "conflict"),
        (_entry(PlanStatus.CANCELLED), False, "genesis", None, "conflict"),
        (_entry(PlanStatus.COMPLETED, since=None), False, "upgrades/v2", None, "conflict"),
        (_entry(PlanStatus.COMPLETED), False, "upgrades/v3", None, "conflict"),
        (_entry(PlanStatus.COMPLETED), False, None, None, "conflict"),
        (_entry(PlanStatus.COMPLETED, backup=None), True, "upgrades/v2", None, "bad_request"),
        (_entry(PlanStatus.COMPLETED, backup=None), False, "upgrades/v2", None, None),
        (_entry(PlanStatus.COMPLETED), True, "upgrades/v2", None, None),
    ],
)
def test_when_a_rollback_may_start(
    entry: QueuedPlan | None, restore: bool, current: str | None, busy: str | None, code: str | None
) -> None:
    refusal = refuse_rollback(entry, "v2", restore=restore, current=current, busy=busy)
    assert (refusal.code if isinstance(refusal, Refusal) else None) == code


# scenarios


def test_rollback_after_an_upgrade_runs_the_old_binary_again(
    make_chain: Callable[[str, str], Chain],
) -> None:
    chain = make_chain("1.5.1", "1.7.1")
    daemon = start(chain, UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    try:
        upgrade(chain, daemon, events, "v1.7.1")
        assert answers(chain, "1.7.1")
        # No backup was made: --restore is refused, and nothing changes.
        assert refused(chain, "v1.7.1", restore=True) == "bad_request"
        assert chain.current() == "upgrades/v1.7.1"
        assert queued(chain, "v1.7.1").status is PlanStatus.COMPLETED

        rollback_request(chain, "v1.7.1")
        # A second one while the first runs is busy (the first is still stopping the node).
        assert refused(chain, "v1.7.1") == "busy"
        completed = events.wait_for("upgrade.rollback_completed", timeout=60)
        assert completed["target"] == "genesis"
        assert completed["restored_backup"] is None
        steps = [p["step"] for p in events.seen if p["topic"] == "upgrade.rollback_step"]
        assert steps == ["stopping", "switch", "restore", "starting"]
        assert answers(chain, "1.5.1")
        assert chain.current() == "genesis"
        entry = queued(chain, "v1.7.1")
        assert entry.status is PlanStatus.ROLLED_BACK
        assert not (chain.home / "wemixvisor" / "state" / "rollback.json").exists()
        assert refused(chain, "v1.7.1") == "conflict"  # rolled back already
    finally:
        events.close()
    assert daemon.terminate() == 0

    # A restart neither upgrades again nor rolls back again.
    again = start(chain, UNSAFE_SKIP_BACKUP="true")
    events = EventLog(again.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        events.wait_for("height.observed", timeout=10)
        assert answers(chain, "1.5.1")
        assert not any(p["topic"].startswith("upgrade.") for p in events.seen)
    finally:
        events.close()
    assert again.terminate() == 0


def test_rollback_with_restore_brings_the_data_before_the_upgrade_back(
    make_chain: Callable[[str, str], Chain],
) -> None:
    # 1.4.4 -> 1.5.1: their state files are compatible with transactions in them.
    chain = make_chain("1.4.4", "1.5.1")
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        upgrade(chain, daemon, events, "v1.5.1")
        sender = rpc_call(chain.url, "eth_accounts")[0]
        tx = rpc_call(
            chain.url, "eth_sendTransaction", [{"from": sender, "to": DEAD, "value": "0x1"}]
        )
        events.wait_for("height.observed", lambda p: p["height"] > chain.head() - 1, timeout=10)
        assert rpc_call(chain.url, "eth_getTransactionByHash", [tx]) is not None

        done = cli(chain, "upgrade", "rollback", "v1.5.1", "--restore")
        assert done.returncode == 0, done.stderr
        assert "rollback of v1.5.1 with its backup restored started" in done.stdout
        completed = events.wait_for("upgrade.rollback_completed", timeout=90)
        assert completed["restored_backup"] is not None
        assert answers(chain, "1.4.4")
        # The transaction sent after the upgrade is gone with the data the new binary wrote.
        assert rpc_call(chain.url, "eth_getTransactionByHash", [tx]) is None
        assert queued(chain, "v1.5.1").status is PlanStatus.ROLLED_BACK
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_rollback_whose_restore_fails_is_undone_and_the_upgraded_node_runs_on(
    make_chain: Callable[[str, str], Chain],
) -> None:
    chain = make_chain("1.5.1", "1.7.1")
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        upgrade(chain, daemon, events, "v1.7.1")
        backup = queued(chain, "v1.7.1").backup
        assert backup is not None
        # The copy no longer matches its manifest (a disk error, an operator's edit).
        files = sorted(
            p for p in (chain.home / "backups" / backup / "data").rglob("*") if p.is_file()
        )
        with files[0].open("ab") as handle:
            handle.write(b"damage")

        rollback_request(chain, "v1.7.1", restore=True)
        failed = events.wait_for("upgrade.rollback_failed", timeout=90)
        assert failed["step"] == "restore"
        assert failed["target"] == "upgrades/v1.7.1"
        wait_until(lambda: answers(chain, "1.7.1"), timeout=30, what="the upgraded node runs")
        assert chain.current() == "upgrades/v1.7.1"
        assert queued(chain, "v1.7.1").status is PlanStatus.COMPLETED
        assert not (chain.home / "wemixvisor" / "state" / "rollback.json").exists()
    finally:
        events.close()
    assert daemon.terminate() == 0


@pytest.mark.parametrize("step", ["stopping", "switch", "restore", "starting"])
def test_a_daemon_killed_after_a_rollback_step_finishes_the_rollback_when_restarted(
    make_chain: Callable[[str, str], Chain], step: str
) -> None:
    chain = make_chain("1.4.4", "1.5.1")
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        upgrade(chain, daemon, events, "v1.5.1")
        rollback_request(chain, "v1.5.1", restore=True)
        events.wait_for("upgrade.rollback_step", lambda p: p["step"] == step, timeout=60)
        daemon.kill()
    finally:
        events.close()
    assert (chain.home / "wemixvisor" / "state" / "rollback.json").exists()

    again = start(chain)
    journal = chain.home / "wemixvisor" / "state" / "rollback.json"
    # The resumed rollback may be over before a subscriber could join: its outcome is read
    # from the queue, the journal and the node.
    wait_until(
        lambda: queued(chain, "v1.5.1").status is PlanStatus.ROLLED_BACK and not journal.exists(),
        timeout=90,
        what="the rollback finished",
    )
    wait_until(lambda: answers(chain, "1.4.4"), timeout=30, what="the old binary answers")
    assert chain.current() == "genesis"
    assert "resuming the rollback of v1.5.1" in again.log_text()
    entry = queued(chain, "v1.5.1")
    assert entry.result is not None
    assert "restored" in entry.result
    assert again.terminate() == 0


# the operator tool without a daemon


@pytest.fixture
def idle_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An initialised home with no daemon running."""
    for key in list(os.environ):
        if key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("DAEMON_HOME", str(home))
    monkeypatch.setenv("DAEMON_NAME", "gwemix")
    binary = tmp_path / "gwemix"
    binary.write_text("#!/bin/sh\necho gwemix 1.0\n")
    binary.chmod(0o755)
    assert cli_main(["init", str(binary)]) == 0
    return home


def test_rehearse_and_rollback_need_the_daemon_and_check_their_arguments(
    idle_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb in (["rehearse", "v2"], ["rollback", "v2"], ["rollback", "v2", "--restore"]):
        assert cli_main(["upgrade", *verb, "--timeout", "0.5"]) == 3
        assert "control.sock" in capsys.readouterr().err
    for verb in (["rehearse", "../x"], ["rollback", "a" * 65], ["rollback", ""]):
        assert cli_main(["upgrade", *verb]) == 2
        assert "invalid name" in capsys.readouterr().err
    assert not (idle_home / "wemixvisor" / "state" / "rollback.json").exists()


def test_schedule_with_rehearse_writes_it_into_the_plan(idle_home: Path) -> None:
    assert cli_main(["upgrade", "schedule", "v2", "100", "--rehearse"]) == 0
    written = msgspec.json.decode((idle_home / "data" / "upgrade-info.json.batch").read_bytes())
    assert written == [{"name": "v2", "height": 100, "rehearse": True}]
