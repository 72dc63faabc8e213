"""state/governance.json: how far each contract's logs were processed, and its proposals."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import msgspec
from loguru import logger

from wemixvisor.chain.governance.fold import upgraded
from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.messages.governance import Proposal


class ContractProgress(msgspec.Struct, kw_only=True):
    """How far one contract's logs have been processed, and what it said of itself."""

    address: str
    kind: str
    next_block: int = 0  # the first block not processed yet
    quorum: int | None = None
    expiry: int | None = None  # proposalExpiry(), seconds


class GovernanceState(msgspec.Struct, kw_only=True):
    """state/governance.json."""

    version: int = 1
    contracts: list[ContractProgress] = msgspec.field(default_factory=list)
    proposals: list[Proposal] = msgspec.field(default_factory=list)


def load_state(path: Path) -> GovernanceState:
    """The saved state; an empty one when there is none. An unreadable file is moved aside
    (and logged): following then starts again from block 0, which only re-reads the logs."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return GovernanceState()
    try:
        state = msgspec.json.decode(raw, type=GovernanceState)
    except (msgspec.DecodeError, RecursionError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.replace(aside)
        logger.error("{} is unreadable ({}); moved to {}", path, exc, aside)
        return GovernanceState()
    state.proposals = [upgraded(p) for p in state.proposals]
    return state


def save_state(path: Path, state: GovernanceState) -> None:
    """Durable write (temp + fsync + rename)."""
    atomic_write_bytes(path, msgspec.json.encode(state), mode=0o600)
