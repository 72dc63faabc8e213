"""How an upgrade judges an overshoot (SPEC §5, §10): the old binary's head right before the stop,
read from a real node (the head the orchestrator saw when RPC does not answer), and once more
from the new binary's first head, which shows blocks imported while the stop was under way."""

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


def test_an_old_binary_holding_h_minus_1_is_no_overshoot(
    node: AnvilProcess, tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    mine_to(node, H - 1)
    upgrade = saga(tmp_path, anvil_bin_1_5_1, node.url, observed=H - 1)
    assert upgrade._judge_overshoot() is None
    assert upgrade.journal.late is False


def test_the_chain_right_before_the_stop_decides_not_the_head_seen_earlier(
    node: AnvilProcess, tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    # Seen at H-1, but the node imported H and H+1 before the stop.
    mine_to(node, H + 1)
    upgrade = saga(tmp_path, anvil_bin_1_5_1, node.url, observed=H - 1)
    event = upgrade._judge_overshoot()
    assert event is not None
    assert (event.name, event.height, event.head, event.blocks) == ("v2", H, H + 1, 2)
    assert upgrade.journal.late is True


def test_without_rpc_the_head_the_orchestrator_saw_decides(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    silent = f"http://127.0.0.1:{free_port()}"
    upgrade = saga(tmp_path, anvil_bin_1_5_1, silent, observed=H + 2)
    event = upgrade._judge_overshoot()
    assert event is not None
    assert (event.head, event.blocks) == (H + 2, 3)
    unknown = saga(tmp_path / "again", anvil_bin_1_5_1, silent, observed=None)
    assert unknown._judge_overshoot() is None


def test_blocks_imported_during_the_stop_are_reported_once_more_with_the_full_count(
    node: AnvilProcess, tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    mine_to(node, H)
    upgrade = saga(tmp_path, anvil_bin_1_5_1, node.url, observed=H - 1)
    first = upgrade._judge_overshoot()
    assert first is not None
    assert first.blocks == 1
    # The new binary's first head is the old binary's last block.
    assert upgrade._overshoot(H) is None  # nothing new: reported once
    later = upgrade._overshoot(H + 1)
    assert later is not None
    assert (later.head, later.blocks) == (H + 1, 2)
    assert upgrade._overshoot(None) is None
