"""When a waiting plan switches binaries, in blocks and in time (pure).

A plain plan switches once the head reaches H-1 (H is the new binary's first block). A window
plan (SPEC §19) may switch from its slot's first block on: the ETA counts to that block once the
slot is known, to the window's opening before, and to H-1 once the window has closed. Time is
blocks times the block time the daemon measured; unknown until it has measured one.
"""

from __future__ import annotations

import msgspec

from wemixvisor.plans.queue import last_old_block
from wemixvisor.upgrade.window import WindowState, WindowVerdict

__all__ = ["Eta", "switch_eta"]


class Eta(msgspec.Struct, frozen=True):
    """Blocks until the switch (None: the head is unknown) and seconds (None: not known)."""

    blocks: int | None
    seconds: float | None


def switch_eta(
    height: int,
    head: int | None,
    block_time: float | None,
    *,
    late: bool = False,
    window: int | None = None,
    slot: WindowState | None = None,
) -> Eta:
    """The ETA of the switch of a plan at `height` with the chain at `head`.

    `window` and `slot` are a window plan's length and its state (None: a plain plan, or a
    window whose slot is not surveyed yet). A late plan is due now.
    """
    if late:
        return Eta(0, 0.0)
    if head is None:
        return Eta(None, None)
    target = last_old_block(height)
    if window is not None and (slot is None or slot.verdict != WindowVerdict.CLOSED):
        if slot is not None and slot.slot_start is not None:
            target = slot.slot_start
        else:
            target = max(height - window, 1)
    blocks = max(target - head, 0)
    if block_time is None or block_time <= 0:
        return Eta(blocks, None)
    return Eta(blocks, blocks * block_time)
