"""The answers of the `istanbul_*` namespace (go-wbft / go-stablenet, SPEC §13.2): their types
and the strict readers that the `istanbul` web3 module (`wemixvisor.chain.istanbul`) applies.

Every result is converted strictly (msgspec, `strict=True`) into a typed value; an answer of
the wrong shape (keys in the wrong case, a missing field, an address that is not 20 hex bytes,
a list longer than any validator set) raises `MalformedAnswer` naming the method and the
problem. Addresses come back lower-case; the validator list keeps the node's order
(validator-index order, never sorted). No web3 here: the CLI and the decisions import it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from wemixvisor.chain.rpc import MalformedAnswer

__all__ = [
    "MAX_STATUS_BLOCKS",
    "MAX_VALIDATORS",
    "BlockRange",
    "CommitSigners",
    "RoundStats",
    "SealerActivity",
    "WbftStatus",
    "block_param",
    "read_address",
    "read_commit_signers",
    "read_is_validator",
    "read_status",
    "read_validators",
]

MAX_VALIDATORS: Final = 1024
"""More addresses than any real validator set: a longer list in an answer is refused."""

MAX_STATUS_BLOCKS: Final = 1024
"""go-wbft refuses an `istanbul_status` range longer than this."""

# Block numbers and counts: msgspec bounds stop at int64, far beyond any real chain.
_MAX_NUMBER: Final = 2**63 - 1

Address = Annotated[str, msgspec.Meta(pattern=r"^0x[0-9a-fA-F]{40}$")]
Hash = Annotated[str, msgspec.Meta(pattern=r"^0x[0-9a-fA-F]{64}$")]
BlockNumber = Annotated[int, msgspec.Meta(ge=0, le=_MAX_NUMBER)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_NUMBER)]
Addresses = Annotated[list[Address], msgspec.Meta(max_length=MAX_VALIDATORS)]
CountByAddress = Annotated[dict[Address, Count], msgspec.Meta(max_length=MAX_VALIDATORS)]


class CommitSigners(msgspec.Struct, frozen=True, rename="pascal"):
    """`istanbul_getCommitSignersFromBlock`: who proposed and who committed one block.

    On the wire the keys are capitalised (`Number`, `Hash`, `Author`, `Committers`).
    """

    number: BlockNumber
    hash: Hash
    author: Address
    committers: Addresses


class SealerActivity(msgspec.Struct, frozen=True, rename="camel"):
    """Seal signatures per validator over a block range, by seal type."""

    total: CountByAddress
    prepared: CountByAddress = msgspec.field(default_factory=dict)
    committed: CountByAddress = msgspec.field(default_factory=dict)
    prev_prepared: CountByAddress = msgspec.field(default_factory=dict)
    prev_committed: CountByAddress = msgspec.field(default_factory=dict)


class BlockRange(msgspec.Struct, frozen=True, rename="camel"):
    """The blocks an `istanbul_status` answer covers."""

    start_block: BlockNumber
    end_block: BlockNumber
    total_blocks: BlockNumber


class RoundStats(msgspec.Struct, frozen=True, rename="camel"):
    """How many blocks were decided in each consensus round (round number as a string key)."""

    round_distribution: Annotated[dict[str, Count], msgspec.Meta(max_length=4096)] = msgspec.field(
        default_factory=dict
    )


class WbftStatus(msgspec.Struct, frozen=True, rename="camel"):
    """`istanbul_status`: sealing activity of each validator over a recent block range."""

    sealer_activity: SealerActivity
    author: CountByAddress
    block_range: BlockRange
    round_stats: RoundStats | None = None


def block_param(block: int | str | None) -> int | str | None:
    """A block argument as the node takes it: a hex number, `"latest"`, or null."""
    if block is None or block == "latest":
        return block
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= _MAX_NUMBER:
        raise ValueError(f"block must be a number ≥ 0, 'latest' or None, got {block!r}")
    return hex(block)


def _convert(method: str, value: Any, type_: Any) -> Any:
    try:
        return msgspec.convert(value, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise MalformedAnswer(f"{method}: unexpected answer: {exc}") from None


def _lower_keys(counts: dict[str, int]) -> dict[str, int]:
    lowered: dict[str, int] = {}
    for address, count in counts.items():
        # Two spellings of one address are one validator: their counts add up.
        key = address.lower()
        lowered[key] = lowered.get(key, 0) + count
    return lowered


def read_address(value: Any) -> str:
    """`istanbul_nodeAddress`: an address, lower-case."""
    address: str = _convert("istanbul_nodeAddress", value, Address)
    return address.lower()


def read_is_validator(value: Any) -> bool:
    """`istanbul_isValidator`: a JSON boolean."""
    answer: bool = _convert("istanbul_isValidator", value, bool)
    return answer


def read_validators(value: Any) -> list[str]:
    """`istanbul_getValidators`: distinct addresses, lower-case, in the node's order."""
    method = "istanbul_getValidators"
    answer: list[str] = _convert(method, value, Addresses)
    lowered = [address.lower() for address in answer]
    if len(set(lowered)) != len(lowered):
        # Naming one validator twice would inflate the quorum arithmetic.
        raise MalformedAnswer(f"{method}: the validator list names an address twice")
    return lowered


def read_commit_signers(value: Any) -> CommitSigners:
    """`istanbul_getCommitSignersFromBlock`: the capitalised struct, addresses lower-case."""
    signers: CommitSigners = _convert("istanbul_getCommitSignersFromBlock", value, CommitSigners)
    return CommitSigners(
        number=signers.number,
        hash=signers.hash.lower(),
        author=signers.author.lower(),
        committers=sorted({address.lower() for address in signers.committers}),
    )


def read_status(value: Any) -> WbftStatus:
    """`istanbul_status`: sealing activity, addresses lower-case, a range that is in order."""
    method = "istanbul_status"
    status: WbftStatus = _convert(method, value, WbftStatus)
    block_range = status.block_range
    if block_range.end_block < block_range.start_block:
        raise MalformedAnswer(f"{method}: blockRange ends before it starts")
    activity = status.sealer_activity
    return WbftStatus(
        sealer_activity=SealerActivity(
            total=_lower_keys(activity.total),
            prepared=_lower_keys(activity.prepared),
            committed=_lower_keys(activity.committed),
            prev_prepared=_lower_keys(activity.prev_prepared),
            prev_committed=_lower_keys(activity.prev_committed),
        ),
        author=_lower_keys(status.author),
        block_range=block_range,
        round_stats=status.round_stats,
    )
