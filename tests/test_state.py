"""The daemon-owned state files: the home's lock, the plan queue and the journal."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from wemixvisor.home import state
from wemixvisor.home.layout import Home
from wemixvisor.plans.queue import Plan, PlanError, QueuedPlan, QueueState


class _Progress(msgspec.Struct):
    plan: str
    step: str


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    layout = Home(root=root, name="gwemix", data_dir=root / "data")
    layout.visor_dir.mkdir(parents=True)
    return layout


def test_a_second_holder_of_the_home_lock_is_refused_with_the_first_ones_pid(home: Home) -> None:
    assert not state.daemon_running(home)
    with state.daemon_lock(home, record_pid=True):
        assert state.daemon_running(home)
        assert state.daemon_pid(home) == os.getpid()
        with pytest.raises(state.DaemonRunningError) as refused, state.daemon_lock(home):
            pass
        assert refused.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(refused.value)
    assert not state.daemon_running(home)
    # The operator tool's lock leaves the last daemon's pid where it was.
    with state.daemon_lock(home):
        assert state.daemon_pid(home) == os.getpid()


def test_the_lock_of_an_uninitialised_home_says_to_run_init(tmp_path: Path) -> None:
    bare = Home(root=tmp_path / "nothing", name="gwemix", data_dir=tmp_path / "data")
    with pytest.raises(PlanError, match="wemixvisor init"), state.daemon_lock(bare):
        pass


def test_the_plan_queue_survives_a_write_and_a_read(home: Home) -> None:
    assert state.read_queue(home) == QueueState()
    queue = QueueState(plans=[QueuedPlan(plan=Plan(name="v2", height=200))])
    state.write_queue(home, queue)
    assert state.read_queue(home) == queue
    assert state.queue_file(home).stat().st_mode & 0o777 == 0o600


def test_an_unreadable_queue_is_a_plan_error_and_can_be_moved_aside(home: Home) -> None:
    home.state_dir.mkdir()
    state.queue_file(home).write_text("{not json")
    with pytest.raises(PlanError, match=r"plans\.json"):
        state.read_queue(home)
    aside = state.move_aside(state.queue_file(home))
    assert aside.name.startswith("plans.json.unreadable-")
    assert state.read_queue(home) == QueueState()


def test_a_journal_is_saved_loaded_and_cleared(home: Home) -> None:
    path = state.journal_file(home)
    assert state.load_journal(path, _Progress) is None
    assert not state.upgrade_in_progress(home)
    state.save_journal(path, _Progress(plan="v2", step="backup"))
    assert state.upgrade_in_progress(home)
    assert state.load_journal(path, _Progress) == _Progress(plan="v2", step="backup")
    assert state.read_journal(home) == {"plan": "v2", "step": "backup"}
    state.clear_journal(path)
    state.clear_journal(path)
    assert not state.upgrade_in_progress(home)


def test_a_journal_that_does_not_decode_is_a_journal_error(home: Home) -> None:
    home.state_dir.mkdir()
    state.journal_file(home).write_bytes(b"{half")
    with pytest.raises(state.JournalError, match="unreadable"):
        state.load_journal(state.journal_file(home), _Progress)
    with pytest.raises(PlanError, match="not valid JSON"):
        state.read_journal(home)
