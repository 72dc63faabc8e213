"""Change tracking between the pre-staging and H, on real files with real inotify (SPEC §7).

Each scenario pre-stages a data dir with a tracker, changes it the way a node (or an
operator) does, and checks that the tracked delta is the one a full scan finds, that the backup
equals the stopped data dir, and that every case where the record cannot be trusted falls back
to the full scan, saying why.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.backup.copy import plan_delta, rescan_changed

OLD = 1_600_000_000
PLAN = "v2"


def write(path: Path, data: bytes, *, old: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if old:
        os.utime(path, (OLD, OLD))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A node's data dir written long ago: nested tables, a lock, a key, a link."""
    root = tmp_path / "data"
    for index in range(30):
        write(root / "geth" / "chaindata" / f"{index:06d}.ldb", os.urandom(4096 + index))
    write(root / "geth" / "chaindata" / "CURRENT", b"MANIFEST-000004\n")
    write(root / "geth" / "chaindata" / "LOCK", b"")
    write(root / "geth" / "ancient" / "bodies.cdat", os.urandom(50_000))
    write(root / "keystore" / "UTC--key", b'{"crypto": {}}')
    os.symlink("geth/chaindata", root / "chain-link")
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.utime(Path(dirpath) / name, (OLD, OLD))
    return root


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


class Staged:
    """A data dir pre-staged with a change tracker, as the BackupActor does it."""

    def __init__(self, data: Path, store: Path, tracker: backups.ChangeTracker) -> None:
        self.data = data
        self.store = store
        self.tracker = tracker
        target, result = backups.prestage_upgrade_backup(data, store, PLAN, tracker=tracker)
        self.watch = backups.StagingWatch.of(tracker, PLAN, target, result)

    def finish(self) -> tuple[backups.UnsealedBackup, backups.Manifest]:
        unsealed = backups.copy_upgrade_backup(self.data, self.store, PLAN, watch=self.watch)
        # Copied, not sealed: nothing says complete yet.
        assert backups.read_manifest(unsealed.target) is None
        manifest = unsealed.seal()
        assert backups.read_manifest(unsealed.target) == manifest
        return unsealed, manifest


@pytest.fixture
def stage(data: Path, tmp_path: Path) -> Iterator[Callable[..., Staged]]:
    made: list[Staged] = []

    def make(**limits: int) -> Staged:
        staged = Staged(data, tmp_path / "backups", backups.ChangeTracker(data, **limits))
        made.append(staged)
        return staged

    yield make
    for staged in made:
        staged.tracker.close()


def assert_equals_data(data: Path, unsealed: backups.UnsealedBackup, manifest: backups.Manifest):
    expected = {entry.path: entry for entry in backups.scan(data)}
    assert {entry.path: entry for entry in manifest.entries} == expected
    assert backups.verify_against(unsealed.target / "data", list(expected.values())) == []
    for path, entry in expected.items():
        if entry.kind == "file":
            copy = unsealed.target / "data" / path
            assert copy.read_bytes() == (data / path).read_bytes(), path
    assert backups.load_manifest(unsealed.target).complete


def node_writes(data: Path) -> None:
    """Creates, writes, truncates, deletes, renames across dirs, a nested dir filled at once,
    chmod, a new link: what a node and an operator do between the pre-staging and H."""
    chaindata = data / "geth" / "chaindata"
    write(chaindata / "000100.ldb", os.urandom(9000), old=False)
    with (chaindata / "000001.ldb").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"rewritten")
    os.truncate(chaindata / "000002.ldb", 10)
    (chaindata / "000003.ldb").unlink()
    os.rename(chaindata / "000004.ldb", data / "geth" / "ancient" / "moved.ldb")
    tmp = chaindata / "CURRENT.tmp"
    write(tmp, b"MANIFEST-000009\n", old=False)
    os.replace(tmp, chaindata / "CURRENT")
    nested = data / "geth" / "snapshots" / "a" / "b" / "c"
    nested.mkdir(parents=True)
    for index in range(50):
        write(nested / f"part-{index}", os.urandom(100), old=False)
        write(nested.parent / f"side-{index}", b"x", old=False)
    (data / "keystore" / "UTC--key").chmod(0o400)
    os.symlink("../keystore", data / "geth" / "keys")


def test_the_tracked_delta_is_the_one_a_full_scan_finds(
    stage: Callable[..., Staged], data: Path
) -> None:
    staged = stage()
    record = list(staged.watch.record.values())
    node_writes(data)

    dirty = staged.tracker.finish()
    assert isinstance(dirty, set), dirty
    changes = rescan_changed(data, staged.watch.record, dirty | set(staged.watch.racy))
    assert not isinstance(changes, str)
    scanned = backups.scan(data)
    assert changes.entries == {entry.path: entry for entry in scanned}

    full = plan_delta(scanned, record, inode=True)
    tracked = plan_delta(changes.want, changes.have, inode=True)
    paths = lambda entries: sorted(entry.path for entry in entries)  # noqa: E731
    assert paths(tracked.copy) == paths(full.copy)
    assert paths(tracked.remove) == paths(full.remove)
    assert paths(tracked.make_dirs) == paths(full.make_dirs)
    assert paths(tracked.links) == paths(full.links)
    assert tracked.fresh == full.fresh
    # Only what changed is looked at: not the untouched tables.
    looked_at = {entry.path for entry in changes.want}
    assert not {f"geth/chaindata/{index:06d}.ldb" for index in range(5, 30)} & looked_at


def test_the_backup_at_height_copies_the_tracked_changes_and_equals_the_stopped_dir(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    node_writes(data)
    unsealed, manifest = staged.finish()
    assert unsealed.tracked
    assert_equals_data(data, unsealed, manifest)
    # The new table, the rewritten ones and the new small files; not the untouched tables.
    assert unsealed.changed_bytes < 4096 * 30
    assert not [line for line in logged if "scanning the whole data dir" in line]


def test_nothing_changed_copies_nothing(stage: Callable[..., Staged], data: Path) -> None:
    unsealed, manifest = stage().finish()
    assert unsealed.tracked
    assert unsealed.changed_bytes == 0
    assert_equals_data(data, unsealed, manifest)


def test_a_file_written_during_the_staging_copy_is_copied_again(
    stage: Callable[..., Staged], data: Path
) -> None:
    # Written just now: copied "racily" by the live mirror, whatever the tracker saw after.
    write(data / "geth" / "chaindata" / "LOG", b"fresh", old=False)
    staged = stage()
    assert "geth/chaindata/LOG" in staged.watch.racy
    unsealed, manifest = staged.finish()
    assert unsealed.tracked
    assert_equals_data(data, unsealed, manifest)


def test_hostile_names_are_tracked_like_any_other(stage: Callable[..., Staged], data: Path) -> None:
    staged = stage()
    odd = data / "geth" / "odd"
    write(odd / "new\nline", b"1", old=False)
    write(odd / ("l" * 255), b"2", old=False)
    deep = odd / "/".join(["d" * 200] * 10)
    write(deep / "leaf", b"3", old=False)
    write(odd / "tab\tand space ", b"4", old=False)
    unsealed, manifest = staged.finish()
    assert unsealed.tracked
    assert_equals_data(data, unsealed, manifest)


def test_a_name_that_is_not_utf8_fails_the_backup_as_the_full_scan_does(
    stage: Callable[..., Staged], data: Path, tmp_path: Path
) -> None:
    staged = stage()
    os.close(os.open(os.fsencode(data) + b"/geth/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o600))
    with pytest.raises(backups.BackupError, match="not UTF-8"):
        staged.finish()
    with pytest.raises(backups.BackupError, match="not UTF-8"):
        backups.finish_upgrade_backup(data, tmp_path / "other", PLAN)


def fallback(staged: Staged, data: Path, logged: list[str], reason: str) -> None:
    """The backup at H scanned the whole dir, said why, and still equals the data dir."""
    unsealed, manifest = staged.finish()
    assert not unsealed.tracked
    assert_equals_data(data, unsealed, manifest)
    [line] = [line for line in logged if "scanning the whole data dir" in line]
    assert reason in line, line


def test_a_removed_directory_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    shutil.rmtree(data / "geth" / "ancient")
    fallback(staged, data, logged, "went away")


def test_a_moved_directory_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    os.rename(data / "geth" / "ancient", data / "ancient-moved")
    fallback(staged, data, logged, "removed or moved")


def test_too_many_changed_paths_fall_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage(max_paths=20)
    for index in range(30):
        write(data / "geth" / f"many-{index}", b"x", old=False)
    fallback(staged, data, logged, "more than 20 paths changed")


def test_the_watch_limit_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    # Five directories exist; a sixth appears after the pre-staging.
    staged = stage(max_watches=5)
    assert staged.tracker.untrusted is None
    write(data / "geth" / "new" / "file", b"x", old=False)
    fallback(staged, data, logged, "directories to watch")


def test_a_data_dir_beyond_the_watch_limit_is_never_tracked(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage(max_watches=2)
    assert staged.tracker.untrusted == "more than 2 directories to watch"
    write(data / "geth" / "chaindata" / "000200.ldb", b"late", old=False)
    fallback(staged, data, logged, "more than 2 directories to watch")


def test_a_queue_overflow_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    # Holding the tracker's lock keeps its thread from reading: the kernel's queue fills up.
    with staged.tracker._lock:
        burst = data / "geth" / "chaindata"
        for index in range(limit + 100):
            os.close(os.open(burst / f"burst-{index}", os.O_CREAT | os.O_WRONLY, 0o600))
    fallback(staged, data, logged, "queue overflowed")


def test_a_dead_tracker_thread_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    fileno = staged.tracker.fileno()
    assert fileno is not None
    thread = next(t for t in threading.enumerate() if t.name.startswith("change-tracker"))
    # The inotify descriptor turns into /dev/null under the thread: once an event wakes it,
    # its next read fails.
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, fileno)
    finally:
        os.close(null)
    write(data / "geth" / "wake", b"x", old=False)
    thread.join(10)
    assert not thread.is_alive()
    write(data / "geth" / "unseen", b"x", old=False)
    fallback(staged, data, logged, "thread died")


def test_no_tracker_since_a_restart_falls_back_to_the_full_scan(
    data: Path, tmp_path: Path, logged: list[str]
) -> None:
    store = tmp_path / "backups"
    backups.prestage_upgrade_backup(data, store, PLAN)
    write(data / "geth" / "after-restart", b"x", old=False)
    unsealed = backups.copy_upgrade_backup(data, store, PLAN, watch=None)
    assert not unsealed.tracked
    assert_equals_data(data, unsealed, unsealed.seal())
    [line] = [line for line in logged if "scanning the whole data dir" in line]
    assert "daemon restarted" in line


def test_a_watch_of_another_staging_copy_is_not_trusted(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    staged = stage()
    staged.watch.target = "20200101T000000Z-pre-other"
    fallback(staged, data, logged, "not the one whose changes were tracked")


def test_a_changed_file_with_another_hard_link_falls_back_to_the_full_scan(
    stage: Callable[..., Staged], data: Path, logged: list[str]
) -> None:
    os.link(data / "geth" / "chaindata" / "000005.ldb", data / "keystore" / "alias")
    staged = stage()
    # Written through one name: the other changes too, unseen.
    with (data / "keystore" / "alias").open("r+b") as handle:
        handle.write(b"through the alias")
    fallback(staged, data, logged, "hard links")


def test_without_inotify_the_tracker_says_so(data: Path) -> None:
    # A process out of file descriptors cannot create an inotify instance.
    script = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from wemixvisor.backup.tracking import ChangeTracker\n"
        "tracker = ChangeTracker(Path(sys.argv[1]))\n"
        "used = len(os.listdir('/proc/self/fd'))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (used, used))\n"
        "tracker.start()\n"
        "print(tracker.untrusted)\n"
        "print(tracker.finish())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    reason, finished = done.stdout.splitlines()
    assert reason.startswith("inotify is unavailable")
    assert finished == reason
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 64  # this process was not touched


def test_the_tracker_thread_ends_with_finish_and_close(data: Path) -> None:
    def trackers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("change-tracker")]

    before = len(trackers())
    first = backups.ChangeTracker(data)
    first.start()
    assert len(trackers()) == before + 1
    first.close()
    first.close()
    assert len(trackers()) == before
    second = backups.ChangeTracker(data)
    second.start()
    assert isinstance(second.finish(), set)
    assert len(trackers()) == before
    # Tracking is over; the instance is released by close (its cost is the kernel's).
    assert second.fileno() is not None
    assert second.finish() == "tracking ended"
    second.close()
    assert second.fileno() is None


def test_a_missing_data_dir_is_never_tracked(tmp_path: Path) -> None:
    tracker = backups.ChangeTracker(tmp_path / "nowhere")
    tracker.start()
    assert tracker.untrusted is not None
    assert "does not exist" in tracker.untrusted
    assert tracker.finish() == tracker.untrusted
    tracker.close()


def test_progress_never_counts_below_zero_when_a_file_outgrew_the_staged_tree(
    stage: Callable[..., Staged], data: Path
) -> None:
    # The one changed file is now larger than the whole tree the staging record measured.
    staged = stage()
    write(data / "geth" / "ancient" / "bodies.cdat", os.urandom(400_000), old=False)
    reports: list[tuple[int, int]] = []
    unsealed = backups.copy_upgrade_backup(
        data,
        staged.store,
        PLAN,
        watch=staged.watch,
        progress=lambda done, total: reports.append((done, total)),
    )
    manifest = unsealed.seal()
    assert unsealed.tracked
    assert reports
    assert all(0 <= done <= total for done, total in reports), reports
    assert_equals_data(data, unsealed, manifest)
