"""The backups of a whole plan queue under a real daemon supervising real anvil binaries
(SPEC §5, §7): one pre-staged copy for the queue, handed on and removed with the plans; the
operator's backups outlive retention; an inode-starved filesystem fails preflight hours ahead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.daemon_harness import EventLog
from tests.test_backup_upgrade import Chain, MiB, chain_factory, running
from wemixvisor.backup import store as backups
from wemixvisor.home.layout import Home, add_upgrade

__all__ = ["chain_factory"]  # the fixture, shared with test_backup_upgrade


def staging_dirs(chain: Chain) -> list[tuple[str, str | None]]:
    """(directory, plan) of every pre-staged copy in the backups directory."""
    return [(path.name, summary.plan) for path, summary in backups.staging_copies(chain.store)]


def write_batch(chain: Chain, plans: list[tuple[str, int]]) -> None:
    (chain.data / "upgrade-info.json.batch").write_bytes(
        msgspec.json.encode([{"name": name, "height": height} for name, height in plans])
    )


def test_three_queued_plans_share_one_staging_copy_handed_on_and_removed_by_cancels(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    filler = chain.fill(20, MiB)
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint, ["backup.", "plan.", "supervisor."])
    try:
        running(events, chain)
        head = chain.head()
        write_batch(chain, [("v3", head + 3000), ("v1", head + 1000), ("v2", head + 2000)])
        for _ in range(3):
            events.wait_for("plan.registered", timeout=20)

        first = events.wait_for("backup.staged", timeout=30)
        assert first["plan"] == "v1", "the copy is for the next plan due"
        assert first["total_bytes"] >= filler
        assert staging_dirs(chain) == [(first["id"], "v1")]

        # Cancelling the next plan hands the copy on: relabelled, not copied again.
        cancelled = chain.tool("upgrade", "cancel", "v1")
        assert cancelled.returncode == 0, cancelled.stderr
        second = events.wait_for("backup.staged", lambda p: p["plan"] == "v2", timeout=30)
        assert second["changed_bytes"] < filler / 10
        assert staging_dirs(chain) == [(second["id"], "v2")]
        assert not (chain.store / first["id"]).exists()

        assert chain.tool("upgrade", "cancel", "v2").returncode == 0
        third = events.wait_for("backup.staged", lambda p: p["plan"] == "v3", timeout=30)
        assert staging_dirs(chain) == [(third["id"], "v3")]

        # With no plan left, the copy is removed.
        done = chain.tool("upgrade", "cancel", "v3")
        assert done.returncode == 0, done.stderr
        pruned = events.wait_for("backup.pruned", timeout=30)
        assert pruned["removed"] == [third["id"]]
        assert staging_dirs(chain) == []
        assert list(chain.store.iterdir()) == []
        assert not [p for p in events.seen if p["topic"] == "backup.failed"]
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_retention_never_removes_the_operators_backup_after_many_upgrades(
    chain_factory: Callable[[], Chain], anvil_bin_1_7_1: Path
) -> None:
    chain = chain_factory()
    home = Home(root=chain.home, name="anvil", data_dir=chain.data)
    for name in ("u1", "u2", "u3"):
        add_upgrade(home, name, anvil_bin_1_7_1)
    chain.fill(5, MiB)
    daemon = chain.daemon(DAEMON_BACKUP_KEEP="1")
    events = EventLog(daemon.events_endpoint, ["backup.", "upgrade.", "plan.", "supervisor."])
    try:
        running(events, chain)
        made = chain.tool("backup", "create", "--label", "before-maintenance")
        assert made.returncode == 0, made.stderr
        [manual] = chain.complete_backups()
        # Two restores set the live data aside twice.
        for _ in range(2):
            restored = chain.tool("backup", "restore", manual)
            assert restored.returncode == 0, restored.stderr
        listed = chain.tool("backup", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        asides = [
            row["id"]
            for row in msgspec.json.decode(listed.stdout)["backups"]
            if row["kind"] == "pre-restore"
        ]
        assert len(asides) == 2
        running(events, chain)

        head = chain.head()
        write_batch(chain, [("u1", head + 6), ("u2", head + 12), ("u3", head + 18)])
        upgrade_ids = []
        for name in ("u1", "u2", "u3"):
            done = events.wait_for(
                "backup.completed", lambda p, n=name: p["label"] == f"pre-{n}", timeout=60
            )
            upgrade_ids.append(done["id"])
            events.wait_for("upgrade.completed", lambda p, n=name: p["name"] == n, timeout=60)

        pruned = chain.tool("backup", "prune", "--json")
        assert pruned.returncode == 0, pruned.stderr
        kept = chain.complete_backups()
        assert manual in kept, "the operator's backup is theirs"
        assert upgrade_ids[-1] in kept
        assert not set(upgrade_ids[:2]) & set(kept), "keep=1 upgrade backup"
        remaining = [p.name for p in chain.home.glob("data.pre-restore-*")]
        assert remaining == [max(asides)], "the older set-aside data dir is pruned"
        # Only `backup delete` removes the operator's backup.
        deleted = chain.tool("backup", "delete", manual)
        assert deleted.returncode == 0, deleted.stderr
        assert manual not in chain.complete_backups()
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_backup_create_of_a_running_node_says_so_and_reports_its_stop_and_totals(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    chain.fill(30, MiB)
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint, ["backup.", "supervisor."])
    try:
        running(events, chain)
        made = chain.tool("backup", "create", "--label", "live")
        assert made.returncode == 0, made.stderr
        assert "the node runs" in made.stderr
        assert "stopped for the changes only" in made.stderr
        done = events.wait_for("backup.completed", timeout=30)
        data_bytes = sum(p.stat().st_size for p in chain.data.rglob("*") if p.is_file())
        assert done["total_bytes"] == pytest.approx(data_bytes, rel=0.01)
        assert done["changed_bytes"] < 2 * done["total_bytes"]
        stopped = done["node_stopped_seconds"]
        assert 0 < stopped < 30
        assert f"{done['total_bytes'] / MiB:.1f} MiB of data" in made.stdout
        assert f"the node was stopped for {stopped:.3f}s" in made.stdout
        progress = [p for p in events.seen if p["topic"] == "backup.progress"]
        assert all(p["bytes_total"] >= 30 * MiB for p in progress)
        assert all(p["bytes_done"] <= p["bytes_total"] for p in progress)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_an_inode_starved_filesystem_fails_preflight_hours_ahead_with_both_figures(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    chain.store.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=200", "tmpfs", str(chain.store)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs with nr_inodes here: {mounted.stderr.strip()}")
    many = chain.data / "geth" / "many"
    many.mkdir(parents=True)
    for index in range(400):
        (many / f"{index:04d}.log").write_bytes(b"x")
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint, ["plan.", "upgrade.", "supervisor."])
    try:
        running(events, chain)
        height = chain.head() + 100_000  # a day ahead at 1 s blocks
        chain.write_plan("v1.7.1", height)

        failed = events.wait_for("plan.preflight_failed", timeout=30)
        [problem] = [p for p in failed["problems"] if "inodes" in p]
        assert "need" in problem
        assert "available" in problem
        need = int(problem.split("need ")[1].split(" inodes", maxsplit=1)[0])
        free = int(problem.split("), ")[1].split(" available", maxsplit=1)[0])
        assert need >= 400
        assert free < need
        assert free == os.statvfs(chain.store).f_favail
        assert chain.head() < height - 1000
        assert not [p for p in events.seen if p["topic"].startswith("upgrade.")]
    finally:
        events.close()
    assert daemon.terminate() == 0
