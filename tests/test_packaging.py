"""What an installed daemon needs besides its modules is declared as package data."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _package_data() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    data: dict[str, list[str]] = pyproject["tool"]["setuptools"]["package-data"]
    return data


def _declared(path: str, package_data: dict[str, list[str]]) -> bool:
    for package, patterns in package_data.items():
        prefix = package.replace(".", "/") + "/"
        if path.startswith(prefix):
            inside = path[len(prefix) :]
            if any(fnmatch.fnmatch(inside, pattern) for pattern in patterns):
                return True
    return False


def test_every_data_file_of_the_package_is_declared() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "wemixvisor"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    data_files = [path for path in tracked if not path.endswith(".py")]
    assert "wemixvisor/chain/governance/UpgradeGovernance.abi.json" in data_files
    package_data = _package_data()
    assert [path for path in data_files if not _declared(path, package_data)] == []


def test_a_file_outside_the_declared_patterns_is_caught() -> None:
    package_data = _package_data()
    assert not _declared("wemixvisor/chain/governance/notes.txt", package_data)
    assert not _declared("wemixvisor/web/console.js", package_data)
    assert _declared("wemixvisor/web/static/console.js", package_data)
