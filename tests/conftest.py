"""Shared fixtures: real anvil binaries from the local cache, a running anvil node, a short
directory for ipc sockets, and actor teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pykka
import pytest

from devtools import anvil as devtools_anvil
from devtools.anvil import AnvilProcess
from tests import control_harness

AnvilBin = Callable[[str], Path]


@pytest.fixture(scope="session")
def anvil_bin() -> AnvilBin:
    """`anvil_bin("1.7.1")` → path of that cached anvil binary (fetched from npm on first use)."""
    return devtools_anvil.anvil_binary


@pytest.fixture(scope="session")
def anvil_bin_1_4_4(anvil_bin: AnvilBin) -> Path:
    """anvil 1.4.4: the first binary of a two-step batch upgrade."""
    return anvil_bin("1.4.4")


@pytest.fixture(scope="session")
def anvil_bin_1_5_1(anvil_bin: AnvilBin) -> Path:
    """anvil 1.5.1: the genesis binary."""
    return anvil_bin("1.5.1")


@pytest.fixture(scope="session")
def anvil_bin_1_7_1(anvil_bin: AnvilBin) -> Path:
    """anvil 1.7.1: the upgrade binary."""
    return anvil_bin("1.7.1")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` → a loopback TCP port nothing listens on right now."""
    return devtools_anvil.free_port


@pytest.fixture
def anvil(anvil_bin_1_5_1: Path, tmp_path: Path) -> Iterator[AnvilProcess]:
    """A real anvil 1.5.1 node with 1 s blocks on a free port, answering RPC; log in tmp_path."""
    node = AnvilProcess(anvil_bin_1_5_1, tmp_path, block_time=1)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop(grace=5.0)
        finally:
            # Even if the graceful stop raised, the node must not outlive the test.
            node.kill()


@pytest.fixture(autouse=True)
def stop_all_actors() -> Iterator[None]:
    """No actor a test started outlives it."""
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A short directory under /tmp for ipc sockets (see `control_harness.short_root`)."""
    with control_harness.short_root() as root:
        yield root
