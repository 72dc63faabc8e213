"""Coming from cosmovisor (SPEC §2, §12): `wemixvisor init --from-cosmovisor DIR` builds the
layout from a cosmovisor home — binaries hard-linked or copied, upgrades with their plans,
`current`, the pending or applied plan — and a hostile home is refused with nothing half-made;
then a real daemon runs the node `current` named, without re-running the applied upgrade."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import free_port
from tests.control_harness import BASE_ENV, cli_env, control_endpoint, short_root, wait_status
from tests.daemon_harness import Daemon, EventLog
from wemixvisor.cli import main
from wemixvisor.control import ControlClient

Cli = Callable[..., tuple[int, str, str]]


def script(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho anvil {version}\n")
    path.chmod(0o755)
    return path


def cosmovisor_home(root: Path) -> Path:
    """A cosmovisor home as cosmovisor leaves it after applying upgrade v2 (v3 to come)."""
    tree = root / "cosmovisor"
    script(tree / "genesis/bin/anvil", "1.0")
    script(tree / "upgrades/v2/bin/anvil", "2.0")
    (tree / "upgrades/v2/upgrade-info.json").write_text('{"name": "v2", "height": 20}')
    (tree / "upgrades/v3").mkdir(parents=True)
    (tree / "upgrades/v3/upgrade-info.json").write_text('{"name": "v3", "height": 30}')
    (tree / "current").symlink_to(tree / "upgrades/v2")  # absolute, as cosmovisor makes it
    (root / "data").mkdir()
    (root / "data/upgrade-info.json").write_text('{"name": "v2", "height": 20}')
    return root


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str, home: Path) -> tuple[int, str, str]:
        for key in list(os.environ):
            if key.startswith(("DAEMON_", "WEMIXVISOR_")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("DAEMON_HOME", str(home))
        monkeypatch.setenv("DAEMON_NAME", "anvil")
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def shm_root() -> Iterator[Path]:
    """A directory on another file system than /tmp (hard links cannot cross to it)."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev:
        pytest.skip("no second file system at /dev/shm")
    root = Path(tempfile.mkdtemp(prefix="wv-", dir="/dev/shm"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_cosmovisor_home_becomes_a_wemixvisor_home_in_place(tmp_path: Path, cli: Cli) -> None:
    home = cosmovisor_home(tmp_path / "home")
    code, out, err = cli("init", "--from-cosmovisor", str(home), home=home)
    assert code == 0, err
    visor = home / "wemixvisor"
    tree = home / "cosmovisor"
    lines = out.splitlines()
    assert f"linked {tree}/genesis/bin/anvil as {visor}/genesis/bin/anvil" in lines
    assert f"linked {tree}/upgrades/v2/bin/anvil as {visor}/upgrades/v2/bin/anvil" in lines
    assert any(line.startswith("upgrade v3 has no bin/anvil: add it with") for line in lines)
    assert f"{visor}/current -> upgrades/v2 (was {tree}/upgrades/v2)" in lines
    assert any("recorded plan v2 at 20 as completed" in line for line in lines)
    assert any(line.startswith("environment: DAEMON_HOME=") for line in lines)

    assert os.readlink(visor / "current") == "upgrades/v2"
    linked = visor / "upgrades/v2/bin/anvil"
    assert linked.stat().st_ino == (tree / "upgrades/v2/bin/anvil").stat().st_ino
    assert (visor / "upgrades/v3/upgrade-info.json").read_text() == '{"name": "v3", "height": 30}'
    assert (visor / "state").stat().st_mode & 0o777 == 0o700
    assert not [p for p in home.iterdir() if p.name.startswith(".wemixvisor")]

    code, out, _ = cli("upgrade", "list", "--json", home=home)
    assert code == 0
    rows = {row["name"]: row for row in msgspec.json.decode(out)["plans"]}
    assert rows["v2"]["status"] == "completed"

    # Twice is refused: the layout is never merged into.
    code, _, err = cli("init", "--from-cosmovisor", str(home), home=home)
    assert code == 1
    assert "already exists" in err


def test_binaries_on_another_file_system_are_copied_and_a_pending_plan_carried_over(
    tmp_path: Path, shm_root: Path, cli: Cli
) -> None:
    source = cosmovisor_home(shm_root)
    (source / "data/upgrade-info.json").write_text('{"name": "v3", "height": 30}')
    home = tmp_path / "home"
    code, out, err = cli("init", "--from-cosmovisor", str(source), home=home)
    assert code == 0, err
    assert f"copied {source}/cosmovisor/genesis/bin/anvil to {home}/wemixvisor/genesis" in out
    genesis = home / "wemixvisor/genesis/bin/anvil"
    assert genesis.read_text() == "#!/bin/sh\necho anvil 1.0\n"
    assert os.access(genesis, os.X_OK)
    assert (home / "data/upgrade-info.json").read_text() == '{"name": "v3", "height": 30}'
    assert f"copied the pending plan {source}/data/upgrade-info.json" in out
    assert not (home / "wemixvisor/state/plans.json").exists()


def _dangling_genesis(tree: Path) -> None:
    (tree / "genesis/bin/anvil").unlink()
    (tree / "genesis/bin/anvil").symlink_to(tree / "genesis/bin/gone")


def _genesis_leaves_the_tree(tree: Path) -> None:
    (tree / "genesis/bin/anvil").unlink()
    (tree / "genesis/bin/anvil").symlink_to("/bin/sh")


def _upgrade_dir_leaves_the_tree(tree: Path) -> None:
    outside = tree.parent.parent / "outside"
    script(outside / "bin/anvil", "9")
    (tree / "upgrades/evil").symlink_to(outside)


def _relative_escape_in_current(tree: Path) -> None:
    (tree / "current").unlink()
    (tree / "current").symlink_to("../../..")


def _current_outside(tree: Path) -> None:
    (tree / "current").unlink()
    (tree / "current").symlink_to("/usr")


def _current_is_a_directory(tree: Path) -> None:
    (tree / "current").unlink()
    (tree / "current").mkdir()


def _current_to_an_upgrade_without_binary(tree: Path) -> None:
    (tree / "current").unlink()
    (tree / "current").symlink_to(tree / "upgrades/v3")


def _upgrades_is_a_file(tree: Path) -> None:
    shutil.rmtree(tree / "upgrades")
    (tree / "upgrades").write_text("not a directory")
    (tree / "current").unlink()


def _bin_is_a_file(tree: Path) -> None:
    shutil.rmtree(tree / "genesis/bin")
    (tree / "genesis/bin").write_text("not a directory")


def _bad_upgrade_name(tree: Path) -> None:
    script(tree / "upgrades/v 4/bin/anvil", "4")


def _dot_dot_name(tree: Path) -> None:
    script(tree / "upgrades/..x/bin/anvil", "4")
    script(tree / "upgrades/a\nb/bin/anvil", "4")


def _huge_plan_copy(tree: Path) -> None:
    (tree / "upgrades/v2/upgrade-info.json").write_bytes(b" " * (1024 * 1024 + 1))


def _garbage_pending_plan(tree: Path) -> None:
    (tree.parent / "data/upgrade-info.json").write_bytes(b'{"name": "../x", "height": 1}')


def _fifo_plan(tree: Path) -> None:
    (tree / "upgrades/v3/upgrade-info.json").unlink()
    os.mkfifo(tree / "upgrades/v3/upgrade-info.json")


def _no_cosmovisor_dir(tree: Path) -> None:
    shutil.rmtree(tree)


def _cosmovisor_is_a_file(tree: Path) -> None:
    shutil.rmtree(tree)
    tree.write_text("x")


def _genesis_not_executable(tree: Path) -> None:
    (tree / "genesis/bin/anvil").chmod(0o644)


HOSTILE = [
    (_dangling_genesis, "broken link"),
    (_genesis_leaves_the_tree, "outside"),
    (_upgrade_dir_leaves_the_tree, "outside"),
    (_relative_escape_in_current, "outside"),
    (_current_outside, "outside"),
    (_current_is_a_directory, "is not a symlink"),
    (_current_to_an_upgrade_without_binary, "not genesis or an upgrade with a bin/anvil"),
    (_upgrades_is_a_file, "is not a directory"),
    (_bin_is_a_file, "is not a directory"),
    (_bad_upgrade_name, "invalid upgrade name"),
    (_dot_dot_name, "invalid upgrade name"),
    (_huge_plan_copy, "limit"),
    (_garbage_pending_plan, "plan file"),
    (_fifo_plan, "not a regular file"),
    (_no_cosmovisor_dir, "does not exist"),
    (_cosmovisor_is_a_file, "is not a directory"),
    (_genesis_not_executable, "not executable"),
]


@pytest.mark.parametrize(
    ("spoil", "message"), HOSTILE, ids=[spoil.__name__.strip("_") for spoil, _ in HOSTILE]
)
def test_a_hostile_cosmovisor_home_is_refused_with_nothing_half_made(
    tmp_path: Path, cli: Cli, spoil: Callable[[Path], None], message: str
) -> None:
    home = cosmovisor_home(tmp_path / "home")
    spoil(home / "cosmovisor")
    code, out, err = cli("init", "--from-cosmovisor", str(home), home=home)
    assert code == 1
    assert message in err
    assert out == ""
    assert not os.path.lexists(home / "wemixvisor")
    assert not [p for p in home.iterdir() if p.name.startswith(".wemixvisor")]


def test_init_needs_a_binary_or_a_cosmovisor_home(tmp_path: Path, cli: Cli) -> None:
    assert cli("init", home=tmp_path / "home")[0] == 2
    assert cli("init", "x", "--from-cosmovisor", str(tmp_path), home=tmp_path / "home")[0] == 2


def test_the_daemon_runs_the_upgrade_cosmovisor_applied_and_does_not_apply_it_again(
    anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path, cli: Cli
) -> None:
    with short_root() as root:
        home = root / "home"
        tree = home / "cosmovisor"
        for where, binary in (("genesis", anvil_bin_1_5_1), ("upgrades/v2", anvil_bin_1_7_1)):
            (tree / where / "bin").mkdir(parents=True)
            shutil.copy2(binary, tree / where / "bin/anvil")
        (tree / "current").symlink_to(tree / "upgrades/v2")
        (home / "data").mkdir()
        (home / "data/upgrade-info.json").write_text('{"name": "v2", "height": 3}')
        code, _, err = cli("init", "--from-cosmovisor", str(home), home=home)
        assert code == 0, err

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**cli_env(home), **BASE_ENV, "DAEMON_RPC_ADDRESS": url}
        daemon = Daemon(home, env, ["--port", str(port), "--block-time", "1"]).start()
        events = EventLog(daemon.events_endpoint)
        try:
            with ControlClient(control_endpoint(home), 5.0) as client:
                status = wait_status(
                    client,
                    lambda s: s["node"]["state"] == "RUNNING" and (s["head"]["height"] or 0) > 3,
                )
            assert status["node"]["target"] == "upgrades/v2"
            cmdline = psutil.Process(status["node"]["pid"]).cmdline()
            assert cmdline[0] == str(home / "wemixvisor/upgrades/v2/bin/anvil")
            plans = status["plans"]
            assert plans["in_progress"] is None
            assert plans["last_upgrade"]["name"] == "v2"
            assert plans["last_upgrade"]["result"] == "applied by cosmovisor"
            events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
            assert not [p for p in events.seen if p["topic"].startswith("upgrade.")]
        finally:
            events.close()
            daemon.kill()
