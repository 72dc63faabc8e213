"""The chain's pace: its block time, measured from the new heads a watcher saw.

One measurement for every reader: the metrics exporter (from `height.observed` events) and the
HeightActor (from the heads it hears, for the ETAs of `status` and `upgrade status`).
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Sequence
from itertools import pairwise
from typing import Final

__all__ = ["PACE_HEADS", "HeadPace", "block_time"]

PACE_HEADS: Final = 33
"""New heads kept for the block time: enough to ride out a stall, few enough to follow a change."""
# A step slower than this many typical blocks is a stall or a restart, not the chain's pace.
_STALL_FACTOR = 4.0
# Blocks to have seen go by before a pace is told: one step is quantised by the polling (a block
# seen 300 ms after the previous one is not a 300 ms chain); over several the error averages out.
_MIN_BLOCKS = 4


def block_time(heads: Sequence[tuple[int, float]]) -> float | None:
    """The chain's block time from (height, time seen) of successive new heads, oldest first;
    None until `_MIN_BLOCKS` blocks were seen go by.

    Elapsed time over blocks advanced, leaving out steps slower than `_STALL_FACTOR` times the
    median step (a stalled node, an upgrade's downtime): polling quantises each step, the sum
    over many steps does not, and one stall must not stretch every ETA for the next hour.
    """
    steps = [(t2 - t1, h2 - h1) for (h1, t1), (h2, t2) in pairwise(heads) if h2 > h1 and t2 >= t1]
    if not steps:
        return None
    typical = statistics.median(seconds / blocks for seconds, blocks in steps)
    kept = [(s, b) for s, b in steps if s / b <= typical * _STALL_FACTOR]
    blocks = sum(b for _, b in kept)
    if blocks < _MIN_BLOCKS:
        return None
    pace = sum(s for s, _ in kept) / blocks
    return pace if pace > 0 else None  # heads all seen at one instant: no pace yet


class HeadPace:
    """The last `PACE_HEADS` new heads and the block time they show (not thread-safe: one
    owner feeds and reads it)."""

    def __init__(self) -> None:
        self._heads: collections.deque[tuple[int, float]] = collections.deque(maxlen=PACE_HEADS)

    def note(self, height: int, seen_at: float) -> None:
        """A new head `height` seen at `seen_at` (any clock, as long as it is one clock)."""
        if self._heads and height < self._heads[-1][0]:
            self._heads.clear()  # a restored data dir or another chain: start over
        self._heads.append((height, seen_at))

    def block_time(self) -> float | None:
        """The measured block time (seconds), None until known."""
        return block_time(list(self._heads))
