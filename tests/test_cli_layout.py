"""`wemixvisor init` and `wemixvisor add-upgrade` as an operator runs them (SPEC §12)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wemixvisor.cli import main

MakeBinary = Callable[..., Path]


@pytest.fixture
def home_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAEMON_HOME in tmp_path; every other DAEMON_* / WEMIXVISOR_* variable unset."""
    for key in list(os.environ):
        if key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            monkeypatch.delenv(key)
    root = tmp_path / "home"
    monkeypatch.setenv("DAEMON_HOME", str(root))
    monkeypatch.setenv("DAEMON_NAME", "gwemix")
    return root


@pytest.fixture
def make_binary(tmp_path: Path) -> MakeBinary:
    source_dir = tmp_path / "src"
    source_dir.mkdir()

    def make(version: str = "1.0.0", *, executable: bool = True) -> Path:
        path = source_dir / f"gwemix-{version}"
        path.write_text(f"#!/bin/sh\necho gwemix {version}\n")
        path.chmod(0o755 if executable else 0o644)
        return path

    return make


def test_init_creates_the_home_and_says_what_it_did(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = make_binary()

    assert main(["init", str(binary)]) == 0

    out = capsys.readouterr().out
    genesis_bin = home_root / "wemixvisor/genesis/bin/gwemix"
    assert genesis_bin.read_bytes() == binary.read_bytes()
    assert os.readlink(home_root / "wemixvisor/current") == "genesis"
    assert (home_root / "data").is_dir()
    assert f"installed genesis binary {genesis_bin}" in out
    assert "current -> genesis" in out


def test_init_twice_is_a_quiet_success(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = make_binary()
    assert main(["init", str(binary)]) == 0
    capsys.readouterr()

    assert main(["init", str(binary)]) == 0

    out = capsys.readouterr().out
    assert "already installed" in out
    assert "created" not in out


def test_init_with_another_binary_needs_force(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(make_binary("1.0.0"))]) == 0
    other = make_binary("2.0.0")

    assert main(["init", str(other)]) == 1
    assert "--force" in capsys.readouterr().err

    assert main(["init", str(other), "--force"]) == 0
    assert (home_root / "wemixvisor/genesis/bin/gwemix").read_bytes() == other.read_bytes()


def test_init_with_a_missing_binary_fails_with_the_path(
    home_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "gwemix"

    assert main(["init", str(missing)]) == 1

    err = capsys.readouterr().err
    assert str(missing) in err
    assert "does not exist" in err
    assert "Traceback" not in err
    assert not home_root.exists()


def test_init_follows_daemon_name_and_data_dir(
    home_root: Path,
    make_binary: MakeBinary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "chain-data"
    monkeypatch.setenv("DAEMON_NAME", "anvil")
    monkeypatch.setenv("DAEMON_DATA_DIR", str(data_dir))

    assert main(["init", str(make_binary())]) == 0

    assert (home_root / "wemixvisor/genesis/bin/anvil").is_file()
    assert data_dir.is_dir()


def test_home_flag_overrides_the_environment(
    home_root: Path, make_binary: MakeBinary, tmp_path: Path
) -> None:
    other_home = tmp_path / "other-home"

    assert main(["--home", str(other_home), "init", str(make_binary())]) == 0

    assert (other_home / "wemixvisor/genesis/bin/gwemix").is_file()
    assert not home_root.exists()


def test_add_upgrade_installs_the_binary(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(make_binary("1.0.0"))]) == 0
    upgrade = make_binary("1.2.0")

    assert main(["add-upgrade", "v1.2.0", str(upgrade)]) == 0

    installed = home_root / "wemixvisor/upgrades/v1.2.0/bin/gwemix"
    assert installed.read_bytes() == upgrade.read_bytes()
    assert str(installed) in capsys.readouterr().out
    assert os.readlink(home_root / "wemixvisor/current") == "genesis"


def test_add_upgrade_twice_needs_force(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(make_binary("1.0.0"))]) == 0
    assert main(["add-upgrade", "v2", str(make_binary("2.0.0"))]) == 0
    fixed = make_binary("2.0.1")

    assert main(["add-upgrade", "v2", str(fixed)]) == 1
    assert "--force" in capsys.readouterr().err

    assert main(["add-upgrade", "v2", str(fixed), "--force"]) == 0
    installed = home_root / "wemixvisor/upgrades/v2/bin/gwemix"
    assert installed.read_bytes() == fixed.read_bytes()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "x" * 65])
def test_add_upgrade_refuses_a_hostile_name(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["init", str(make_binary())]) == 0
    before = sorted(home_root.parent.rglob("*"))

    assert main(["add-upgrade", name, str(make_binary("6.6.6"))]) == 1

    assert "invalid upgrade name" in capsys.readouterr().err
    after = [p for p in sorted(home_root.parent.rglob("*")) if "gwemix-6.6.6" not in p.name]
    assert after == before


def test_add_upgrade_before_init_says_to_run_init(
    home_root: Path, make_binary: MakeBinary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add-upgrade", "v2", str(make_binary())]) == 1
    assert "wemixvisor init" in capsys.readouterr().err
    assert not home_root.exists()
