"""What the network double decided for each block: its timestamp, author, round and committers.

The miner thread writes a record once per block; the proxies read them to answer `istanbul_*`
and to build each header's extraData. A block the double never mined (the nodes had it before
the double started watching) reads as a healthy block: every validator committed it in round 0.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from devtools.wbft.rules import ZERO_ADDRESS, proposer, wbft_extra_data

__all__ = ["BlockRecord", "Ledger"]


@dataclass(frozen=True)
class BlockRecord:
    """One block as the double sealed it; `committers` in validator-index order."""

    number: int
    timestamp: int | None
    author: str
    round: int
    committers: tuple[str, ...]


class Ledger:
    """The block records, shared between the miner thread and the proxies (thread-safe)."""

    def __init__(self, validators: Sequence[str]) -> None:
        if not validators:
            raise ValueError("a WBFT network needs at least one validator")
        self.validators: tuple[str, ...] = tuple(address.lower() for address in validators)
        if len(set(self.validators)) != len(self.validators):
            raise ValueError("a validator address appears twice")
        self._records: dict[int, BlockRecord] = {}
        self._lock = threading.Lock()

    def seal(self, number: int, timestamp: int, committing: Sequence[str]) -> BlockRecord:
        """Record block `number` as committed by `committing` (at least one validator)."""
        members = set(committing)
        author, round_ = proposer(number, self.validators, members)
        record = BlockRecord(
            number=number,
            timestamp=timestamp,
            author=author,
            round=round_,
            committers=tuple(address for address in self.validators if address in members),
        )
        with self._lock:
            self._records[number] = record
        return record

    def recorded(self, number: int) -> BlockRecord | None:
        """The record of a block the double mined, else None."""
        with self._lock:
            return self._records.get(number)

    def record(self, number: int) -> BlockRecord:
        """The record of block `number`, or the healthy-block default for one not mined here."""
        with self._lock:
            found = self._records.get(number)
        if found is not None:
            return found
        if number == 0:
            return BlockRecord(0, None, ZERO_ADDRESS, 0, ())
        author, _ = proposer(number, self.validators, self.validators)
        return BlockRecord(number, None, author, 0, self.validators)

    def extra_data(self, number: int) -> str:
        """The WBFT-style extraData of block `number` (hex, several hundred bytes)."""
        record = self.record(number)
        previous = self.record(number - 1).committers if number > 0 else ()
        return wbft_extra_data(number, record.round, self.validators, record.committers, previous)
