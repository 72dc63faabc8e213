"""How an upgrade judges an overshoot (SPEC §5, §10): from the head the orchestrator saw at the
switch (nothing is asked of the node between the switch and the stop), and once more from the
new binary's first head, which shows blocks imported while the stop was under way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.anvil import AnvilProcess, free_port, rpc_call
from wemixvisor.bus import Bus
from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, init_home
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade.journal import Journal, Step
from wemixvisor.upgrade.saga import UpgradeSaga

H = 5


@pytest.fixture
def node(anvil_bin_1_5_1: Path, tmp_path: Path) -> Iterator[AnvilProcess]:
    """anvil 1.5.1 without mining: blocks only when the test mines them."""
    process = AnvilProcess(anvil_bin_1_5_1, tmp_path, block_time=None)
    try:
        yield process.start()
    finally:
        process.kill()


def saga(tmp_path: Path, genesis: Path, address: str, observed: int | None) -> UpgradeSaga:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    init_home(home, genesis)
    config = load_config(
        env={"DAEMON_HOME": str(home.root), "DAEMON_NAME": "anvil", "DAEMON_RPC_ADDRESS": address}
    )
    journal = Journal(
        plan=Plan(name="v2", height=H),
        step=Step.STOPPING,
        from_target="genesis",
        to_target="upgrades/v2",
        observed_height=observed,
        late=False,
        started_at=0.0,
    )
    return UpgradeSaga(
        journal=journal,
        home=home,
        config=config,
        bus=Bus(),
        journal_path=tmp_path / "journal.json",
    )


def mine_to(node: AnvilProcess, height: int) -> None:
    while int(rpc_call(node.url, "eth_blockNumber"), 16) < height:
        rpc_call(node.url, "evm_mine")


def test_an_old_binary_seen_at_h_minus_1_is_no_overshoot(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    upgrade = saga(tmp_path, anvil_bin_1_5_1, f"http://127.0.0.1:{free_port()}", observed=H - 1)
    assert upgrade._overshoot(H - 1) is None
    assert upgrade.journal.late is False


def test_the_head_seen_at_the_switch_decides_with_no_call_to_the_node(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    # Seen at H+2 (RPC was down at H-1): judged from that head, nothing asked of the node
    # between the switch and the stop (the address answers nothing).
    silent = f"http://127.0.0.1:{free_port()}"
    upgrade = saga(tmp_path, anvil_bin_1_5_1, silent, observed=H + 2)
    event = upgrade._overshoot(upgrade.journal.observed_height)
    assert event is not None
    assert (event.name, event.height, event.head, event.blocks) == ("v2", H, H + 2, 3)
    assert upgrade.journal.late is True
    unknown = saga(tmp_path / "again", anvil_bin_1_5_1, silent, observed=None)
    assert unknown._overshoot(None) is None


def test_blocks_imported_during_the_stop_are_reported_once_more_with_the_full_count(
    node: AnvilProcess, tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    mine_to(node, H)
    upgrade = saga(tmp_path, anvil_bin_1_5_1, node.url, observed=H)
    first = upgrade._overshoot(H)
    assert first is not None
    assert first.blocks == 1
    # The new binary's first head is the old binary's last block (the chain's head here).
    last = int(rpc_call(node.url, "eth_blockNumber"), 16)
    assert upgrade._overshoot(last) is None  # nothing new: reported once
    mine_to(node, H + 1)
    later = upgrade._overshoot(int(rpc_call(node.url, "eth_blockNumber"), 16))
    assert later is not None
    assert (later.head, later.blocks) == (H + 1, 2)
    assert upgrade._overshoot(None) is None
