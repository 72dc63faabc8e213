"""Preflight work per plan is bounded (SPEC §5, §16): each binary's version is asked once per
file, and the quick check before the stop at H reuses the last early check's space verdict."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.node.process import detect_version
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade import preflight
from wemixvisor.upgrade.preflight import check_plan


def counting_binary(path: Path, runs: Path) -> Path:
    """A node binary that answers `version` and counts how often it ran."""
    path.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'Version: 1.0.1-stable'\n")
    path.chmod(0o755)
    return path


def run_count(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_a_binary_runs_once_however_many_plans_and_checks_name_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    binary = counting_binary(tmp_path / "gstable", runs)
    for name in ("a", "b", "c"):
        os.link(binary, tmp_path / name)
    for _ in range(3):
        for path in (binary, tmp_path / "a", tmp_path / "b", tmp_path / "c"):
            assert detect_version(path) == "Version: 1.0.1-stable"
    assert run_count(runs) == 1
    # A rewritten binary is asked again.
    binary.write_text(binary.read_text().replace("1.0.1", "1.0.2"))
    assert detect_version(binary) == "Version: 1.0.2-stable"
    assert run_count(runs) == 2
    # A failure is not remembered: the next check asks again.
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    assert detect_version(broken) is None
    broken.write_text("#!/bin/sh\necho fixed\n")
    assert detect_version(broken) == "fixed"


def test_the_quick_check_at_height_reuses_the_space_verdict_of_the_last_early_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "home"
    home = Home(root=root, name="gstable", data_dir=root / "data")
    runs = tmp_path / "runs"
    init_home(home, counting_binary(tmp_path / "genesis", runs))
    add_upgrade(home, "v2", counting_binary(tmp_path / "new", runs))
    (home.data_dir / "chain").mkdir(parents=True)
    (home.data_dir / "chain" / "000001.ldb").write_bytes(b"x" * 1000)
    config = load_config(env={"DAEMON_HOME": str(root), "DAEMON_NAME": "gstable"})
    plan = Plan(name="v2", height=100)

    assert check_plan(home, config, plan) == []
    assert run_count(runs) == 1

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the quick check measured the data dir")

    monkeypatch.setattr(preflight, "upgrade_space_problem", no_scan)
    assert check_plan(home, config, plan, quick=True) == []
    assert run_count(runs) == 1, "nor ran the binary"
    # What the quick check does look at, it looks at now: the binary.
    home.upgrade_bin("v2").unlink()
    [problem] = check_plan(home, config, plan, quick=True)
    assert "new binary" in problem
