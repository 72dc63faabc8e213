"""Upgrades whose binary is downloaded (SPEC §5 preflight, §8), with a real daemon and real anvil.

The upgrade binary is NOT pre-placed: the plan names the real anvil 1.7.1 npm tarball, served by
a loopback HTTP server thread (or as a file:// URL). The daemon fetches it as soon as the plan is
registered, long before H; a plan whose download is refused fails its preflight at once and
installs nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from devtools.anvil import anvil_tarball, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.test_download import FileServer
from tests.test_upgrade import Chain
from wemixvisor.upgrade.download.install import read_download_record

H_AHEAD = 8  # blocks (seconds) from registration to H: the download takes about one
FAR = 100_000  # a height hours away
TARBALL_PATH = "/anvil-1.7.1.tgz"


@pytest.fixture(scope="session")
def tarball() -> Path:
    """The real anvil 1.7.1 npm tarball (package/bin/anvil), integrity-checked."""
    return anvil_tarball("1.7.1")


@pytest.fixture
def root() -> Iterator[Path]:
    # Short and under /tmp: ipc socket paths must stay below 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(tarball: Path) -> Iterator[FileServer]:
    served = FileServer()
    served.files[TARBALL_PATH] = tarball.read_bytes()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def chain(root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]) -> Iterator[Chain]:
    made = Chain(root / "c", anvil_bin_1_5_1, free_port())
    try:
        yield made
    finally:
        made.stop()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_plan(chain: Chain, name: str, height: int, url: str) -> None:
    plan = {"name": name, "height": height, "info": {"binaries": {"any": url}}}
    (chain.home / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))


def upgrades(chain: Chain) -> list[str]:
    return sorted(entry.name for entry in chain.layout.upgrades_dir.iterdir())


def start(chain: Chain) -> tuple[Daemon, EventLog]:
    daemon = chain.daemon(DAEMON_ALLOW_DOWNLOAD_BINARIES="true", UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
    wait_for_rpc(chain.url, timeout=10)
    return daemon, events


def test_a_missing_binary_is_downloaded_at_registration_and_runs_at_height(
    chain: Chain, server: FileServer, tarball: Path
) -> None:
    daemon, events = start(chain)
    try:
        assert "1.5.1" in chain.client_version()
        height = chain.head() + H_AHEAD
        url = f"{server.url(TARBALL_PATH)}?checksum=sha256:{sha256_of(tarball)}"
        write_plan(chain, "v1.7.1", height, url)

        events.wait_for("plan.registered", lambda p: p["name"] == "v1.7.1")
        started = events.wait_for("download.started", timeout=10)
        assert started["url"] == url
        completed = events.wait_for("download.completed", timeout=H_AHEAD)
        assert completed["sha256"] == sha256_of(tarball)
        assert completed["bytes"] == tarball.stat().st_size
        # Prefetched while the old binary still runs, well before H.
        assert chain.head() < height - 2
        binary = chain.layout.upgrade_bin("v1.7.1")
        assert binary.is_file()
        assert upgrades(chain) == ["v1.7.1"]
        record = read_download_record(binary.parent.parent)
        assert record is not None
        assert (record.checksum, record.sha256) == ("sha256", sha256_of(tarball))

        upgrade = events.wait_for("upgrade.started", timeout=H_AHEAD + 20)
        assert upgrade["observed_height"] == height - 1
        done = events.wait_for("upgrade.completed", timeout=60)
        assert done["first_head"] == height - 1
        assert chain.client_version() == "anvil/v1.7.1"
        assert chain.current() == "upgrades/v1.7.1"
        topics = [p["topic"] for p in events.seen]
        assert "plan.preflight_failed" not in topics
        # Nothing is fetched at H: the only download happened at registration.
        assert topics.count("download.started") == 1
        assert server.requests == [TARBALL_PATH]
    finally:
        events.close()
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("checksum", "problem"),
    [
        ("sha256:" + "0" * 64, "checksum mismatch"),
        (None, "has no ?checksum="),
    ],
    ids=["wrong-checksum", "no-checksum"],
)
def test_a_refused_download_fails_preflight_hours_ahead_and_installs_nothing(
    chain: Chain, server: FileServer, checksum: str | None, problem: str
) -> None:
    daemon, events = start(chain)
    try:
        height = chain.head() + FAR
        url = server.url(TARBALL_PATH) + (f"?checksum={checksum}" if checksum else "")
        write_plan(chain, "v1.7.1", height, url)

        failed = events.wait_for("plan.preflight_failed", timeout=20)
        assert failed["name"] == "v1.7.1"
        assert failed["height"] == height
        assert any(problem in line for line in failed["problems"]), failed["problems"]
        download_failed = [p for p in events.seen if p["topic"] == "download.failed"]
        assert len(download_failed) == 1
        assert problem in download_failed[0]["error"]
        assert not download_failed[0]["will_retry"]
        assert upgrades(chain) == []
        # Without a checksum the URL is not even requested.
        assert server.requests == ([TARBALL_PATH] if checksum else [])
        # The node keeps running its binary, untouched.
        assert "1.5.1" in chain.client_version()
    finally:
        events.close()
    assert daemon.terminate() == 0


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_a_transfer_broken_once_is_retried_and_installs_the_binary(
    chain: Chain, server: FileServer, tarball: Path, fault: str
) -> None:
    server.faults[TARBALL_PATH] = [fault]
    daemon, events = start(chain)
    try:
        url = f"{server.url(TARBALL_PATH)}?checksum=sha256:{sha256_of(tarball)}"
        write_plan(chain, "v1.7.1", chain.head() + FAR, url)

        retried = events.wait_for("download.failed", timeout=20)
        assert retried["will_retry"]
        assert retried["attempt"] == 1
        events.wait_for("download.completed", timeout=20)
        assert len(server.requests) == 2
        version = subprocess.run(
            [chain.layout.upgrade_bin("v1.7.1"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        assert "1.7.1" in version.stdout
        assert upgrades(chain) == ["v1.7.1"]
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_file_url_is_downloaded_too(chain: Chain, tarball: Path) -> None:
    daemon, events = start(chain)
    try:
        url = f"{tarball.as_uri()}?checksum=sha256:{sha256_of(tarball)}"
        write_plan(chain, "v1.7.1", chain.head() + FAR, url)

        completed = events.wait_for("download.completed", timeout=20)
        assert completed["url"] == url
        assert chain.layout.upgrade_bin("v1.7.1").read_bytes()[:4] == b"\x7fELF"
        assert upgrades(chain) == ["v1.7.1"]
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_an_upgrade_due_while_its_download_still_runs_waits_for_it(
    chain: Chain, server: FileServer, tarball: Path
) -> None:
    server.faults[TARBALL_PATH] = ["hold"]
    daemon, events = start(chain)
    try:
        height = chain.head() + 2
        url = f"{server.url(TARBALL_PATH)}?checksum=sha256:{sha256_of(tarball)}"
        write_plan(chain, "v1.7.1", height, url)
        events.wait_for("download.started", timeout=10)
        # H-1 and H pass while the transfer hangs: the upgrade neither starts nor fails.
        events.wait_for("height.observed", lambda p: p["height"] > height, timeout=20)
        topics = [p["topic"] for p in events.seen]
        assert "upgrade.started" not in topics
        assert "upgrade.failed" not in topics
        server.release.set()
        events.wait_for("download.completed", timeout=20)
        started = events.wait_for("upgrade.started", timeout=20)
        assert started["observed_height"] > height
        assert started["late"] is True
        # The old binary imported blocks at or beyond H meanwhile: reported, counted from its
        # head right before the stop.
        overshoot = events.wait_for("upgrade.overshoot", timeout=10)
        assert overshoot["head"] >= started["observed_height"]
        assert overshoot["blocks"] == overshoot["head"] - height + 1 >= 2
        done = events.wait_for("upgrade.completed", timeout=60)
        assert done["first_head"] in (overshoot["head"], overshoot["head"] + 1)
        assert chain.client_version() == "anvil/v1.7.1"
    finally:
        events.close()
    assert daemon.terminate() == 0
