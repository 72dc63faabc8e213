"""Rolling-window upgrades of a validator set (SPEC §19).

A geth-family hard fork is compiled into the new binary, which keeps the old rules until block
H: a plan with mode "window" may switch anywhere in `[H-W, H-margin]`. Each validator takes the
slot of its index in `istanbul_getValidators` (N validators, N slots that never overlap), a node
that is not a validator the slot of a SHA-256 of its address, so that no coordinator is needed.
Before it stops, a validator checks that the other validators still reach the quorum without
it (`quorum_verdict`); if not, it waits, block by block, until the window closes, and then
upgrades at H-1 like a plain plan.

The slot and the verdicts are pure functions; `survey` is the one blocking read of the chain
(a few local `istanbul_*` calls), run by the orchestrator as a job.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Final

import msgspec

from wemixvisor.chain.istanbul_answers import MAX_STATUS_BLOCKS
from wemixvisor.chain.wbft import WbftClient, active_validators, bft_quorum
from wemixvisor.plans.queue import Plan, last_old_block

__all__ = [
    "MIN_ACTIVITY_BLOCKS",
    "Slot",
    "Survey",
    "WindowState",
    "WindowVerdict",
    "activity_blocks",
    "assign_slot",
    "judge",
    "last_window_block",
    "survey",
    "window_bounds",
]

MIN_ACTIVITY_BLOCKS: Final = 4
"""The shortest recent window whose sealers count as active (few validators: 2N is tiny)."""


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    """This node's turn in a plan's window: it may stop from block `start` on; `end` is the
    last block of its own turn (the next node's turn follows)."""

    start: int
    end: int
    index: int  # the slot's number, 0-based
    count: int  # slots in the window
    validator: bool  # taken by validator index (else from a hash of the address)
    shared: bool  # the window has fewer blocks than validators: slots are shared


def window_bounds(height: int, window: int, margin: int) -> tuple[int, int]:
    """The blocks `[H-W, H-margin]` at whose head a window plan may switch (`first` may be
    greater than `last` when W < margin: an empty window)."""
    return max(height - window, 1), height - margin


def assign_slot(
    height: int, window: int, margin: int, validators: list[str], me: str
) -> Slot | None:
    """This node's slot in the window of a plan at `height`, or None when the window is empty.

    N validators get N slots of ⌊len/N⌋ blocks in validator-index order; a window of fewer
    blocks than validators gives each validator one block, several sharing one (`shared`). A
    node that is not a validator takes slot SHA-256(address) mod N (mod 1 without validators).
    """
    first, last = window_bounds(height, window, margin)
    length = last - first + 1
    if length <= 0:
        return None
    members = [address.lower() for address in validators]
    me = me.lower()
    count = max(len(members), 1)
    if me in members:
        index, validator = members.index(me), True
    else:
        digest = hashlib.sha256(me.encode()).digest()
        index, validator = int.from_bytes(digest, "big") % count, False
    if length >= count:
        size = length // count
        start = first + index * size
        return Slot(
            start=start,
            end=start + size - 1,
            index=index,
            count=count,
            validator=validator,
            shared=False,
        )
    start = first + index * length // count
    return Slot(start=start, end=start, index=index, count=count, validator=validator, shared=True)


def activity_blocks(validators: int) -> int:
    """How many recent blocks' sealers count as active: 2N, at least MIN_ACTIVITY_BLOCKS and at
    most what `istanbul_status` serves in one call."""
    return min(max(2 * validators, MIN_ACTIVITY_BLOCKS), MAX_STATUS_BLOCKS)


class Survey(msgspec.Struct, frozen=True, kw_only=True):
    """What the chain says at one head, for a window plan: this node's slot and whether the
    other validators reach the quorum without it."""

    head: int
    address: str
    slot: Slot | None
    validators: int
    quorum: int
    active_others: int  # other validators up now (sealed recently AND committed the head)


def survey(client: WbftClient, plan: Plan, margin: int) -> Survey:
    """Read the slot and the quorum facts from the node (blocking; raises RpcError, NotWbft
    on a chain without `istanbul_*`).

    A validator counts as up when it sealed in the last `activity_blocks(N)` blocks (SPEC
    §13.2) and committed the head block: one that sealed a moment ago but is restarting in its
    own slot right now must not be counted on.
    """
    address = client.node_address().lower()
    validators = [member.lower() for member in client.validators("latest")]
    head = client.head()
    status = client.status(max(head - activity_blocks(len(validators)) + 1, 0), head)
    recent = active_validators(validators, status)
    if head > 0:
        recent &= {member.lower() for member in client.commit_signers(head).committers}
    window = plan.window or 0
    return Survey(
        head=head,
        address=address,
        slot=assign_slot(plan.height, window, margin, validators, address),
        validators=len(validators),
        quorum=bft_quorum(len(validators)),
        active_others=len(recent - {address}),
    )


class WindowState(msgspec.Struct, frozen=True, kw_only=True):
    """Where a window plan stands, for `status` and `upgrade status`."""

    verdict: str  # a WindowVerdict, or "surveying" before the first answer
    head: int | None = None
    slot_start: int | None = None
    slot_end: int | None = None
    slot_index: int | None = None
    slot_count: int | None = None
    shared: bool = False  # the window is shorter than the validator count
    validator: bool | None = None
    active: int | None = None  # other validators up at the last survey
    needed: int | None = None  # the quorum they must reach
    reason: str = ""  # why the window closed
    eta_blocks: int | None = None  # blocks until the slot opens (0: open now)


class WindowVerdict(enum.StrEnum):
    """What a window plan does at one head."""

    BEFORE_SLOT = "before_slot"  # not its turn yet
    GO = "go"  # stop and switch now
    WAIT_FOR_QUORUM = "waiting_for_quorum"  # its turn, but the others are short of the quorum
    CLOSED = "closed"  # no slot left: upgrade at H-1 like a plain plan


def last_window_block(height: int, margin: int) -> int:
    """The last head at which a window plan may switch: H-margin, and never H-1 itself (the
    moment of a plain plan, which a closed window falls back to)."""
    return min(height - margin, last_old_block(height) - 1)


def judge(
    *,
    head: int,
    height: int,
    margin: int,
    slot: Slot | None,
    validator: bool,
    active_others: int,
    quorum: int,
) -> WindowVerdict:
    """The decision at `head` (pure). A node may go from its slot's start to the window's last
    block (H-margin), a validator only while the others reach `quorum` without it; past that,
    or with no slot at all, the window is closed."""
    if slot is None or head > last_window_block(height, margin):
        return WindowVerdict.CLOSED
    if head < slot.start:
        return WindowVerdict.BEFORE_SLOT
    if validator and active_others < quorum:
        return WindowVerdict.WAIT_FOR_QUORUM
    return WindowVerdict.GO
