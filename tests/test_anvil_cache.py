"""The anvil cache: real binaries from npm, verified, repaired when damaged, fetched once."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools import anvil as devtools_anvil
from devtools.anvil import AnvilProcess, IntegrityError, anvil_binary, rpc_call

REPO = Path(__file__).resolve().parent.parent
# The smallest supported tarball keeps the fetch-heavy tests quick.
SMALL = "1.4.4"


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache root, so these tests never disturb the shared cache other runs use."""
    root = tmp_path / "cache"
    monkeypatch.setenv("WEMIXVISOR_CACHE", str(root))
    return root


def leftovers(cache: Path) -> list[Path]:
    """Temporary fetch directories still lying around in the cache."""
    return sorted((cache / "anvil").glob(".fetch-*"))


def reported_version(binary: Path) -> str:
    completed = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    return completed.stdout


@pytest.mark.parametrize("version", devtools_anvil.SUPPORTED_VERSIONS)
def test_each_supported_version_runs_and_reports_its_version(version: str) -> None:
    binary = anvil_binary(version)

    assert binary == devtools_anvil.cache_root() / "anvil" / version / "anvil"
    # 1.5.1 prints "anvil Version: 1.5.1-v1.5.1", 1.7.1 just "anvil Version: 1.7.1".
    assert re.search(
        rf"^anvil Version: {re.escape(version)}(?![\d.])", reported_version(binary), re.M
    )


def test_the_anvil_fixture_is_a_running_node_with_one_second_blocks(anvil: AnvilProcess) -> None:
    assert str(rpc_call(anvil.url, "web3_clientVersion")).startswith("anvil/v1.5.1")
    assert "--block-time" in anvil.args


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: path.write_bytes(b""), id="truncated to zero bytes"),
        pytest.param(
            lambda path: path.write_bytes(path.read_bytes()[:-1] + b"\0"), id="last byte changed"
        ),
        pytest.param(lambda path: path.unlink(), id="deleted"),
    ],
)
def test_a_damaged_cached_binary_is_fetched_again(
    empty_cache: Path, damage: Callable[[Path], object]
) -> None:
    binary = anvil_binary(SMALL)
    damage(binary)

    again = anvil_binary(SMALL)

    assert again == binary
    assert "anvil Version: 1.4.4" in reported_version(again)
    assert leftovers(empty_cache) == []


def test_a_tarball_that_does_not_match_the_recorded_hash_is_refused(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sha512-" + base64.b64encode(hashlib.sha512(b"another tarball").digest()).decode()
    monkeypatch.setitem(devtools_anvil._INTEGRITY, SMALL, wrong)

    with pytest.raises(IntegrityError, match="does not match"):
        anvil_binary(SMALL)

    assert not (empty_cache / "anvil" / SMALL / "anvil").exists()
    assert not (empty_cache / "anvil" / SMALL / "anvil.sha256").exists()
    assert leftovers(empty_cache) == []


def test_an_unknown_version_is_refused_without_asking_npm(empty_cache: Path) -> None:
    with pytest.raises(ValueError, match="unknown anvil version"):
        anvil_binary("9.9.9")
    assert not empty_cache.exists()


def test_missing_npm_is_a_clear_error(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(empty_cache))

    with pytest.raises(RuntimeError, match="npm not found"):
        anvil_binary(SMALL)
    assert leftovers(empty_cache) == []


def test_a_failing_npm_reports_its_own_error(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(devtools_anvil._INTEGRITY, "0.0.0-never-published", "sha512-AA==")
    # Offline, npm answers from its local cache only: the failure needs no registry round trip.
    monkeypatch.setenv("npm_config_offline", "true")

    with pytest.raises(
        RuntimeError, match=r"(?s)npm pack .*failed \(exit \d+\): .*npm error"
    ) as caught:
        anvil_binary("0.0.0-never-published")
    assert not isinstance(caught.value, IntegrityError)
    assert leftovers(empty_cache) == []


def test_two_threads_on_an_empty_cache_share_one_fetch(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetches: list[str] = []
    real_pack = devtools_anvil._npm_pack

    def counting_pack(version: str, destination: Path) -> Path:
        fetches.append(version)
        return real_pack(version, destination)

    monkeypatch.setattr(devtools_anvil, "_npm_pack", counting_pack)
    start = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def first_use() -> None:
        start.wait()
        try:
            results.append(anvil_binary(SMALL))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert errors == []
    assert len(results) == 2
    assert results[0] == results[1]
    assert fetches == [SMALL]


def test_two_processes_on_an_empty_cache_share_one_fetch(empty_cache: Path) -> None:
    env = {**os.environ, "WEMIXVISOR_CACHE": str(empty_cache)}
    command = [sys.executable, "-m", "devtools.anvil", SMALL]
    processes = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert [process.returncode for process in processes] == [0, 0]
    expected = f"{SMALL} {empty_cache / 'anvil' / SMALL / 'anvil'}\n"
    assert [stdout for stdout, _ in outputs] == [expected, expected]
    assert sum(stderr.count(f"fetching anvil {SMALL}") for _, stderr in outputs) == 1
