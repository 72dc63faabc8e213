"""The seal of the backup at H as the saga sees it (SPEC §5 step 2, §7): a copy that was never
sealed never counts, whether the seal failed or the daemon died before it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, init_home
from wemixvisor.node.client import NodeClient
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade import steps
from wemixvisor.upgrade.journal import Journal, Step, load_journal, save_journal


def context(tmp_path: Path, anvil: Path, step: Step, backup: str | None) -> steps.StepContext:
    root = tmp_path / "home"
    home = Home(root=root, name="anvil", data_dir=root / "data")
    init_home(home, anvil)
    config = load_config(env={"DAEMON_HOME": str(root), "DAEMON_NAME": "anvil"})
    journal = Journal(
        plan=Plan(name="v2", height=100),
        step=step,
        from_target="genesis",
        to_target="upgrades/v2",
        observed_height=99,
        late=False,
        started_at=time.time(),
        backup=backup,
        new_binary_started=step in (Step.STARTING, Step.VERIFYING),
    )
    journal_path = root / "wemixvisor" / "state" / "journal.json"
    save_journal(journal_path, journal)
    bus = Bus()
    return steps.StepContext(
        journal=journal,
        home=home,
        config=config,
        bus=bus,
        journal_path=journal_path,
        node=NodeClient(bus, journal.holder, 1.0),
    )


def unsealed_backup(ctx: steps.StepContext) -> str:
    """A copy made at H whose seal never came: an incomplete upgrade backup."""
    data = ctx.home.data_dir
    (data / "chaindata").mkdir(parents=True, exist_ok=True)
    (data / "chaindata" / "000001.ldb").write_bytes(b"table")
    unsealed = backups.copy_upgrade_backup(data, ctx.config.backup.dir, "v2")
    unsealed.abandon()
    assert backups.read_manifest(unsealed.target) is None
    return unsealed.id


@pytest.mark.parametrize("step", [Step.STARTING, Step.VERIFYING, Step.ROLLING_BACK])
def test_a_resumed_upgrade_past_the_start_forgets_an_unsealed_backup(
    tmp_path: Path, anvil_bin_1_5_1: Path, step: Step
) -> None:
    ctx = context(tmp_path, anvil_bin_1_5_1, step, None)
    ctx.journal.backup = backup_id = unsealed_backup(ctx)
    steps.check_resumed_backup(ctx)
    # The new binary may have run: the copy is never restored, and the journal says so.
    assert ctx.journal.backup is None
    saved = load_journal(ctx.journal_path)
    assert saved is not None
    assert saved.backup is None
    assert (ctx.config.backup.dir / backup_id).is_dir()  # left for retention to prune


@pytest.mark.parametrize("step", [Step.STOPPING, Step.BACKUP, Step.CUSTOM_PREUPGRADE])
def test_a_resumed_upgrade_before_the_switch_keeps_it_for_its_backup_step(
    tmp_path: Path, anvil_bin_1_5_1: Path, step: Step
) -> None:
    ctx = context(tmp_path, anvil_bin_1_5_1, step, None)
    ctx.journal.backup = backup_id = unsealed_backup(ctx)
    steps.check_resumed_backup(ctx)
    assert ctx.journal.backup == backup_id


def test_a_sealed_backup_is_kept_on_resume(tmp_path: Path, anvil_bin_1_5_1: Path) -> None:
    ctx = context(tmp_path, anvil_bin_1_5_1, Step.VERIFYING, None)
    data = ctx.home.data_dir
    (data / "table").write_bytes(b"x")
    manifest = backups.copy_upgrade_backup(data, ctx.config.backup.dir, "v2").seal()
    ctx.journal.backup = manifest.id
    steps.check_resumed_backup(ctx)
    assert ctx.journal.backup == manifest.id


def test_a_failed_seal_leaves_the_upgrade_without_a_backup(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    ctx = context(tmp_path, anvil_bin_1_5_1, Step.VERIFYING, "20261202T000000Z-pre-v2")
    seal = backups.PendingSeal("20261202T000000Z-pre-v2")
    ctx.seal = seal

    def job() -> None:
        # What the BackupActor's job does: waits for the request, then reports.
        assert seal.wait_requested(threading.Event(), 10)
        seal.failed(backups.BackupError("sealing backup 20261202T000000Z-pre-v2 failed: EIO"))

    worker = threading.Thread(target=job)
    worker.start()
    steps.await_seal(ctx)
    worker.join(10)
    assert ctx.seal is None
    assert ctx.journal.backup is None
    saved = load_journal(ctx.journal_path)
    assert saved is not None
    assert saved.backup is None


def test_a_pending_seal_reports_its_outcome_once_and_never_blocks_the_request() -> None:
    seal = backups.PendingSeal("20261202T000000Z-pre-v2")
    cancel = threading.Event()
    cancel.set()
    assert not seal.wait_requested(cancel, 10)  # the daemon stops: never sealed
    with pytest.raises(backups.BackupError, match="not sealed within"):
        seal.wait(0.01)
    seal.request()
    seal.request()
    assert seal.wait_requested(threading.Event(), 10)
    seal.sealed()
    seal.wait(0)
