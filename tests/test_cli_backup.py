"""`wemixvisor backup create | list | restore | prune` with no daemon running: the operator tool
works on the files itself, under the daemon's lock (SPEC §7, §12)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from wemixvisor.backup import store as backups
from wemixvisor.cli import main
from wemixvisor.node.process import NodeProcess, write_pidfile

OLD = 1_600_000_000


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: Callable[[], int]) -> Path:
    """An initialised home whose data dir holds some chain-like files; no daemon."""
    for key in list(os.environ):
        if key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            monkeypatch.delenv(key)
    root = tmp_path / "home"
    monkeypatch.setenv("DAEMON_HOME", str(root))
    monkeypatch.setenv("DAEMON_NAME", "gwemix")
    monkeypatch.setenv("DAEMON_RPC_ADDRESS", f"http://127.0.0.1:{free_port()}")
    binary = tmp_path / "gwemix"
    binary.write_text("#!/bin/sh\necho gwemix 1.0\n")
    binary.chmod(0o755)
    assert main(["init", str(binary)]) == 0
    chaindata = root / "data" / "geth" / "chaindata"
    chaindata.mkdir(parents=True)
    for index in range(3):
        (chaindata / f"00000{index}.ldb").write_bytes(os.urandom(50_000))
    (root / "data" / "geth" / "LOCK").write_bytes(b"")
    return root


def backup_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "backups").iterdir())


def test_create_list_restore_and_prune_without_a_daemon(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = home / "data"
    assert main(["backup", "create", "--label", "before-fork"]) == 0
    out = capsys.readouterr().out
    [first] = backup_ids(home)
    assert first.endswith("-before-fork")
    assert f"backup {first} complete" in out

    assert main(["backup", "list"]) == 0
    listing = capsys.readouterr().out
    assert first in listing
    assert "complete" in listing
    assert main(["backup", "list", "--json"]) == 0
    [row] = msgspec.json.decode(capsys.readouterr().out)["backups"]
    assert row["id"] == first
    assert row["complete"] is True
    assert row["total_bytes"] == 150_000

    # The node writes on; then the operator goes back to the backup.
    (data / "geth" / "chaindata" / "000003.ldb").write_bytes(b"later")
    (data / "geth" / "chaindata" / "000000.ldb").unlink()
    assert main(["backup", "restore", first]) == 0
    out = capsys.readouterr().out
    assert "the data it replaced is in" in out
    assert sorted(p.name for p in (data / "geth" / "chaindata").iterdir()) == [
        "000000.ldb",
        "000001.ldb",
        "000002.ldb",
    ]
    [aside] = [p for p in home.iterdir() if p.name.startswith("data.pre-restore-")]
    assert (aside / "geth" / "chaindata" / "000003.ldb").read_bytes() == b"later"

    # The operator's backups are theirs: retention keeps them whatever DAEMON_BACKUP_KEEP says.
    monkeypatch.setenv("DAEMON_BACKUP_KEEP", "1")
    assert main(["backup", "create"]) == 0
    assert "pruned" not in capsys.readouterr().out
    [second] = [ident for ident in backup_ids(home) if ident != first]
    assert second.endswith("-manual")
    assert main(["backup", "prune"]) == 0
    assert capsys.readouterr().out.strip() == "removed: nothing"
    assert backup_ids(home) == sorted([first, second])
    # The data dir the restore set aside is listed, and `backup delete` removes any of them.
    assert main(["backup", "list"]) == 0
    listing = capsys.readouterr().out
    assert aside.name in listing
    assert "set aside by a restore" in listing
    assert main(["backup", "delete", first]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {first} ({home / 'backups' / first})"
    assert backup_ids(home) == [second]
    assert main(["backup", "delete", first]) == 1
    assert f"no backup {first}" in capsys.readouterr().err
    assert main(["backup", "delete", aside.name]) == 0
    assert not aside.exists()
    assert backup_ids(home) == [second]


def test_backup_delete_refuses_hostile_ids_and_touches_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "create", "--label", "keep-me"]) == 0
    capsys.readouterr()
    before = sorted(str(p) for p in home.parent.rglob("*"))
    for hostile in ["../data", "/etc", "..", "a\x00b", "x" * 10_000, "../home/data"]:
        assert main(["backup", "delete", hostile]) == 1
        err = capsys.readouterr().err
        assert "invalid backup id" in err
        assert len(err) < 400
    assert main(["backup", "delete", "20260101T000000Z-unknown"]) == 1
    assert "no backup" in capsys.readouterr().err
    assert main(["backup", "delete", "data"]) == 1
    assert "no backup" in capsys.readouterr().err
    assert sorted(str(p) for p in home.parent.rglob("*")) == before


def test_bad_ids_and_labels_are_refused_with_clear_errors(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in (home / "data").rglob("*"))
    for wanted in ["../data", "/etc", "20260101T000000Z-unknown"]:
        assert main(["backup", "restore", wanted]) == 1
        err = capsys.readouterr().err
        assert "restore failed" in err
        assert "backup" in err
    assert sorted(p.name for p in (home / "data").rglob("*")) == before
    with pytest.raises(SystemExit) as usage:
        main(["backup", "create", "--label", "../x"])
    assert usage.value.code == 2
    assert "invalid backup label" in capsys.readouterr().err


def test_without_a_daemon_a_running_node_is_neither_copied_nor_replaced(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        process = psutil.Process(sleeper.pid)
        write_pidfile(
            home / "wemixvisor" / "state" / "node.pid",
            NodeProcess(
                pid=sleeper.pid,
                binary=str(home / "wemixvisor" / "genesis" / "bin" / "gwemix"),
                target="genesis",
                started_at=process.create_time(),
                create_time=process.create_time(),
                popen=None,
            ),
        )
        assert main(["backup", "create"]) == 1
        assert f"the node (pid {sleeper.pid}) runs without a daemon" in capsys.readouterr().err
        assert not (home / "backups").exists() or backup_ids(home) == []
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def daemon_lock_held(home: Path) -> Iterator[None]:
    """What a running daemon does to its home: an exclusive flock on state/daemon.lock."""
    fd = os.open(home / "wemixvisor/state/daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_with_a_daemon_running_the_tool_asks_it_and_says_so_when_it_does_not_answer(
    home: Path, daemon_lock_held: None, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    assert main(["backup", "list", "--timeout", "1"]) == 3
    assert main(["backup", "create", "--timeout", "1"]) == 3
    err = capsys.readouterr().err
    assert "control.sock" in err
    assert time.monotonic() - began < 15
    assert not (home / "backups").exists()


def test_a_backup_killed_mid_copy_is_never_complete_and_prune_removes_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chaindata = home / "data" / "geth" / "chaindata"
    block = os.urandom(1024 * 1024)
    for index in range(200):
        (chaindata / f"big{index:04d}.ldb").write_bytes(block)
    store = home / "backups"
    tool = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", "backup", "create", "--label", "doomed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        copied: list[Path] = []
        while not copied:
            assert time.monotonic() < deadline, "the copy never started"
            assert tool.poll() is None, "the backup ended before it could be interrupted"
            copied = list(store.glob("*/data/geth/chaindata/*.ldb")) if store.exists() else []
            time.sleep(0.002)
        tool.send_signal(signal.SIGKILL)
        tool.wait(timeout=10)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    [doomed] = backup_ids(home)
    assert backups.read_manifest(store / doomed) is None
    assert main(["backup", "list", "--json"]) == 0
    [row] = msgspec.json.decode(capsys.readouterr().out)["backups"]
    assert row["complete"] is False
    with pytest.raises(backups.BackupError, match="not a complete backup"):
        backups.restore_backup(store, doomed, home / "data")

    assert main(["backup", "prune"]) == 0
    assert capsys.readouterr().out.strip() == f"removed: {doomed}"
    assert backup_ids(home) == []
