"""Backups on real files (SPEC §7): pre-staged mirrors, space checks, hostile input, retention."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from wemixvisor.backup import store as backups
from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.home.layout import Home
from wemixvisor.home.state import write_queue
from wemixvisor.plans.queue import Plan, PlanStatus, QueuedPlan, QueueState

OLD = 1_600_000_000  # a past mtime: files that old are not "racy" while staging


def tree(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every entry under `root` by relative path: kind, content (or link target), mode."""
    found: dict[str, tuple[str, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                found[rel] = ("symlink", os.readlink(path), 0)
            elif path.is_dir():
                found[rel] = ("dir", "", info.st_mode & 0o7777)
            else:
                found[rel] = ("file", path.read_bytes(), info.st_mode & 0o7777)
    return found


def age(root: Path) -> None:
    """Make every file and dir under `root` look written long ago."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(Path(dirpath) / name, (OLD, OLD), follow_symlinks=False)


def write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir shaped like a node's: nested dirs, empty files, links, a read-only file."""
    root = tmp_path / "data"
    write(root / "geth" / "chaindata" / "000001.ldb", os.urandom(300_000))
    write(root / "geth" / "chaindata" / "000002.ldb", os.urandom(200_000))
    write(root / "geth" / "chaindata" / "CURRENT", b"MANIFEST-000004\n")
    write(root / "geth" / "chaindata" / "LOCK", b"")
    write(root / "geth" / "nodekey", b"k" * 64)
    (root / "geth" / "nodekey").chmod(0o400)
    write(root / "keystore" / "UTC--key", b'{"crypto": {}}')
    write(root / "doomed" / "inner" / "file", b"gone soon")
    write(root / "becomes-dir", b"a file first")
    (root / "empty-dir").mkdir()
    os.symlink("geth/chaindata", root / "chain-link")
    os.symlink("/nonexistent/ancient", root / "ancient")
    age(root)
    return root


def test_a_prestaged_backup_finished_after_changes_equals_the_stopped_dir_byte_for_byte(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    staged, first = backups.prestage_upgrade_backup(data, store, "v2.0")
    assert first.changed_bytes == first.total_bytes
    assert backups.read_manifest(staged) is None, "a staged copy is never complete"

    # What a node does between the pre-staging and H.
    ldb = data / "geth" / "chaindata" / "000001.ldb"
    original = ldb.read_bytes()
    write(ldb, bytes(b ^ 0xFF for b in original), mtime=OLD + 5)  # same size, new content
    (data / "geth" / "chaindata" / "000002.ldb").unlink()
    write(data / "geth" / "chaindata" / "000003.ldb", b"n" * 1234, mtime=OLD + 5)
    write(data / "geth" / "chaindata" / "empty.log", b"", mtime=OLD + 5)
    shutil.rmtree(data / "doomed")
    (data / "becomes-dir").unlink()
    write(data / "becomes-dir" / "now-inside", b"x", mtime=OLD + 5)
    (data / "chain-link").unlink()
    os.symlink("keystore", data / "chain-link")

    manifest = backups.finish_upgrade_backup(data, store, "v2.0")

    assert manifest.complete
    assert manifest.plan == "v2.0"
    assert manifest.label == "pre-v2.0"
    target = store / manifest.id
    assert tree(target / "data") == tree(data)
    # Only the changed and new files were copied.
    assert manifest.changed_bytes == len(original) + 1234 + 1
    assert manifest.total_bytes == sum(
        p.stat().st_size for p in data.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert [info.id for info in backups.list_backups(store)] == [manifest.id]
    assert backups.load_manifest(target).entries == backups.scan(data)


def test_a_file_rewritten_within_one_timestamp_tick_while_staging_is_copied_again(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    hot = data / "geth" / "chaindata" / "CURRENT"
    write(hot, b"MANIFEST-000004\n")  # written just now: the node is busy with it
    stamp = hot.stat().st_mtime_ns
    backups.prestage_upgrade_backup(data, store, "v2.0")
    # Rewritten in place within the same filesystem tick: same size, same mtime.
    hot.write_bytes(b"MANIFEST-000009\n")
    os.utime(hot, ns=(stamp, stamp))

    manifest = backups.finish_upgrade_backup(data, store, "v2.0")

    assert (store / manifest.id / "data" / "geth" / "chaindata" / "CURRENT").read_bytes() == (
        b"MANIFEST-000009\n"
    )
    assert tree(store / manifest.id / "data") == tree(data)


def test_a_second_prestage_copies_only_what_changed_and_a_full_copy_happens_without_one(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    first_dir, _ = backups.prestage_upgrade_backup(data, store, "v2.0")
    write(data / "geth" / "chaindata" / "000004.ldb", b"4" * 5000, mtime=OLD + 9)
    second_dir, refresh = backups.prestage_upgrade_backup(data, store, "v2.0")
    assert second_dir == first_dir
    assert refresh.changed_bytes == 5000

    # Another plan has nothing staged: its backup at H is a full copy.
    other = backups.finish_upgrade_backup(data, store, "v3.0")
    assert other.changed_bytes == other.total_bytes
    assert tree(store / other.id / "data") == tree(data)


def test_a_backup_that_cannot_fit_fails_before_writing_with_both_figures(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    size = backups.tree_bytes(data)
    with pytest.raises(backups.BackupError) as failure:
        backups.create_backup(data, store, "manual", available=1000)
    message = str(failure.value)
    assert f"need {int(size * 1.1)} bytes" in message
    assert "1000 available" in message
    assert not store.exists() or list(store.iterdir()) == []

    # The preflight figure subtracts what is pre-staged for the plan.
    backups.prestage_upgrade_backup(data, store, "v2.0")
    write(data / "grown", b"g" * 10_000, mtime=OLD + 1)
    assert backups.upgrade_space_problem(data, store, "v2.0", available=11_000) is None
    problem = backups.upgrade_space_problem(data, store, "v2.0", available=10_000)
    assert problem is not None
    assert "need 11000 bytes" in problem
    assert "10000 available" in problem
    assert "already pre-staged" in problem


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_real_small_filesystem_refuses_the_backup_with_its_own_figures(
    small_tmpfs: Path, tmp_path: Path
) -> None:
    data = tmp_path / "big-data"
    write(data / "blob", b"\1" * (6 * 1024 * 1024))
    store = small_tmpfs / "backups"
    with pytest.raises(backups.BackupError) as failure:
        backups.create_backup(data, store, "manual")
    message = str(failure.value)
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    assert f"need {int(6 * 1024 * 1024 * 1.1)} bytes" in message
    assert f"{free} available" in message
    assert not store.exists() or list(store.iterdir()) == []


def test_backup_ids_that_are_not_plain_names_or_unknown_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "backups"
    store.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", store / "20260101T000000Z-planted")
    for wanted in [
        "../data",
        "20260101T000000Z-../../etc",
        "/etc",
        "..",
        "",
        "20260101T000000Z-a/b",
        "20260101T000000Z-unknown",
        "20260101T000000Z-planted",
    ]:
        with pytest.raises(backups.BackupNotFound):
            backups.backup_dir(store, wanted)


def _complete_backup(data: Path, store: Path) -> Path:
    manifest = backups.create_backup(data, store, "manual")
    return store / manifest.id


def _rewrite_manifest(backup: Path, change: dict[str, object]) -> None:
    raw = msgspec.json.decode((backup / "manifest.json").read_bytes())
    raw.update(change)
    atomic_write_bytes(backup / "manifest.json", msgspec.json.encode(raw))


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "outside-relative",
        "outside-absolute",
        "through-a-symlink",
        "oversized",
        "incomplete",
        "other-id",
        "file-swapped-for-link",
        "file-shrunk",
    ],
)
def test_a_damaged_or_hostile_backup_is_refused_and_nothing_is_restored(
    data: Path, tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "backups"
    backup = _complete_backup(data, store)
    manifest_path = backup / "manifest.json"
    entry = {"path": "x", "kind": "file", "size": 0, "mtime_ns": 0, "mode": 420}
    match damage:
        case "garbage":
            manifest_path.write_bytes(b"\x00\xffnot json at all")
        case "truncated":
            manifest_path.write_bytes(manifest_path.read_bytes()[:-40])
        case "outside-relative":
            _rewrite_manifest(backup, {"entries": [{**entry, "path": "../../escape"}]})
        case "outside-absolute":
            _rewrite_manifest(backup, {"entries": [{**entry, "path": "/etc/passwd"}]})
        case "through-a-symlink":
            link = {"path": "etc", "kind": "symlink", "target": "/etc"}
            _rewrite_manifest(backup, {"entries": [link, {**entry, "path": "etc/passwd"}]})
        case "oversized":
            with manifest_path.open("r+b") as handle:
                handle.truncate(backups.MAX_MANIFEST_BYTES + 1)
        case "incomplete":
            _rewrite_manifest(backup, {"complete": False})
        case "other-id":
            _rewrite_manifest(backup, {"id": "20200101T000000Z-other"})
        case "file-swapped-for-link":
            victim = backup / "data" / "keystore" / "UTC--key"
            victim.unlink()
            os.symlink("/etc/passwd", victim)
        case "file-shrunk":
            victim = backup / "data" / "geth" / "chaindata" / "000001.ldb"
            victim.write_bytes(b"short")
    before = tree(data)

    with pytest.raises(backups.BackupError) as failure:
        backups.restore_backup(store, backup.name, data)

    assert str(failure.value)
    assert tree(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "data"]
    listed = {info.id: info for info in backups.list_backups(store)}
    if damage in ("garbage", "truncated", "oversized", "incomplete", "other-id"):
        assert not listed[backup.name].complete


def test_a_restore_moves_the_live_data_aside_and_puts_the_backup_back(
    data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    backup = _complete_backup(data, store)
    expected = tree(data)
    write(data / "written-after", b"later")
    (data / "keystore" / "UTC--key").unlink()
    # What a restore killed earlier may have left beside the data dir.
    write(tmp_path / ".data.restoring" / "half-copied", b"?")

    aside = backups.restore_backup(store, backup.name, data)

    assert tree(data) == expected
    assert (aside / "written-after").read_bytes() == b"later"
    assert aside.name.startswith("data.pre-restore-")
    assert not (tmp_path / ".data.restoring").exists()
    [leftover] = tmp_path.glob("data.pre-restore-*-leftover")
    assert (leftover / "half-copied").read_bytes() == b"?"


def _fake_backup(store: Path, ident: str, *, complete: bool, plan: str | None = None) -> None:
    target = store / ident
    (target / "data").mkdir(parents=True)
    manifest = backups.Manifest(
        id=ident,
        label=ident[17:],
        created_at=time.mktime(time.strptime(ident[:16], "%Y%m%dT%H%M%SZ")),
        source="/data",
        entries=[],
        total_bytes=0,
        file_count=0,
        complete=complete,
        kind="upgrade" if plan else "full",
        plan=plan,
    )
    (target / "manifest.json").write_bytes(msgspec.json.encode(manifest))


def test_pruning_keeps_the_newest_upgrade_backups_and_what_an_upgrade_still_needs(
    tmp_path: Path,
) -> None:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    home.state_dir.mkdir(parents=True)
    home.data_dir.mkdir()
    store = tmp_path / "backups"
    for day in range(1, 6):
        _fake_backup(store, f"2026010{day}T000000Z-pre-v0.{day}", complete=True, plan=f"v0.{day}")
    _fake_backup(store, "20260101T000000Z-before-maintenance", complete=True)
    _fake_backup(store, "20260106T000000Z-killed", complete=False)
    (store / "20260106T000001Z-no-manifest" / "data").mkdir(parents=True)
    _fake_backup(store, "20260107T000000Z-pre-v2", complete=False, plan="v2")
    _fake_backup(store, "20260107T000000Z-pre-v3", complete=False, plan="v3")
    (store / "not-a-backup").mkdir()
    for day in range(1, 4):  # data dirs moved aside by three restores
        write(tmp_path / "home" / f"data.pre-restore-2026010{day}T120000Z" / "f", b"old")
    # An unfinished upgrade names the oldest backup; plan v2 is still pending, v3 was cancelled.
    journal = {"plan": {"name": "v1", "height": 10}, "step": "rolling_back"}
    journal["backup"] = "20260101T000000Z-pre-v0.1"
    atomic_write_bytes(home.state_dir / "journal.json", msgspec.json.encode(journal))
    write_queue(
        home,
        QueueState(
            plans=[
                QueuedPlan(plan=Plan(name="v2", height=100), status=PlanStatus.PENDING),
                QueuedPlan(plan=Plan(name="v3", height=200), status=PlanStatus.CANCELLED),
            ]
        ),
    )
    listed = {info.id: info for info in backups.list_backups(store, home.data_dir)}
    aside = listed["data.pre-restore-20260101T120000Z"]
    assert (aside.kind, aside.total_bytes, aside.file_count) == ("pre-restore", 3, 1)

    protected = backups.protected_backups(home, store)
    removed = backups.prune_backups(store, 2, protected, data_dir=home.data_dir)

    assert removed == [
        "20260102T000000Z-pre-v0.2",
        "20260103T000000Z-pre-v0.3",
        "20260106T000000Z-killed",
        "20260106T000001Z-no-manifest",
        "20260107T000000Z-pre-v3",
        "data.pre-restore-20260101T120000Z",
    ]
    assert sorted(p.name for p in store.iterdir()) == [
        "20260101T000000Z-before-maintenance",
        "20260101T000000Z-pre-v0.1",
        "20260104T000000Z-pre-v0.4",
        "20260105T000000Z-pre-v0.5",
        "20260107T000000Z-pre-v2",
        "not-a-backup",
    ]
    assert sorted(p.name for p in home.root.glob("data.pre-restore-*")) == [
        "data.pre-restore-20260102T120000Z",
        "data.pre-restore-20260103T120000Z",
    ]
    # Once the upgrade is over, its backup is one more old one; the operator's stays.
    (home.state_dir / "journal.json").unlink()
    removed = backups.prune_backups(store, 2, backups.protected_backups(home, store))
    assert removed == ["20260101T000000Z-pre-v0.1"]
    assert (store / "20260101T000000Z-before-maintenance").is_dir()


def test_an_unreadable_journal_stops_pruning(tmp_path: Path) -> None:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    home.state_dir.mkdir(parents=True)
    (home.state_dir / "journal.json").write_bytes(b"{half")
    with pytest.raises(backups.BackupError, match="not pruning"):
        backups.protected_backups(home, tmp_path / "backups")
