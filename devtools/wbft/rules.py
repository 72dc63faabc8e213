"""The WBFT rules the network double plays by, as pure functions over plain data.

Nothing here does I/O: the quorum, the fork rule, who proposes a block in which round, the
validator addresses, and the long WBFT-style `extraData` the proxies put into block headers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence

__all__ = [
    "ZERO_ADDRESS",
    "catch_up_refusal",
    "client_has_fork",
    "parse_block_number",
    "parse_quantity",
    "proposer",
    "quorum_size",
    "validator_address",
    "wbft_extra_data",
]

ZERO_ADDRESS = "0x" + "00" * 20

_VERSION_RE = re.compile(r"/v?(\d+\.\d+\.\d+)")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]{1,16}")
_MAX_BLOCK = 2**63 - 1


def quorum_size(validators: int) -> int:
    """WBFT's QuorumSize: ceil(N - (N-1)/3) of N validators (1→1, 3→3, 4→3, 6→5, 7→5).

    In integers: N - (N-1)/3 rounded up is N - floor((N-1)/3).
    """
    if validators < 1:
        raise ValueError(f"a validator set has at least one member, got {validators}")
    return validators - (validators - 1) // 3


def client_has_fork(client_version: str, fork_versions: Collection[str]) -> bool:
    """Whether a node reporting `client_version` (`anvil/v1.7.1`, `Geth/v1.0.1-stable/...`) runs
    a binary that carries the fork: its `X.Y.Z` is one of `fork_versions`."""
    match = _VERSION_RE.search(client_version)
    return match is not None and match.group(1) in fork_versions


def catch_up_refusal(
    head: int, own_timestamp: int, network_timestamp: int | None, next_timestamp: int
) -> str | None:
    """Why a node at block `head`, stamped `own_timestamp`, cannot be given the network's block
    head+1 (stamped `next_timestamp`), else None. `network_timestamp` is the network's own
    stamp of block `head`, when the network mined it.

    A node whose block differs from the network's is on another chain; a block may not be
    stamped before its parent (a node restarted from a fresh genesis newer than the chain).
    """
    if network_timestamp is not None and network_timestamp != own_timestamp:
        return (
            f"its block {head} is stamped {own_timestamp}, the network's {network_timestamp}: "
            "it is on another chain"
        )
    if next_timestamp < own_timestamp:
        return (
            f"its head block {head} is stamped {own_timestamp}, later than the network's block "
            f"{head + 1} ({next_timestamp}): a fresh genesis newer than the chain?"
        )
    return None


def validator_address(index: int) -> str:
    """A stable, distinct validator address for node `index` (lower-case hex).

    Derived from a hash, so the validator-index order is not the sorted order, as on a real
    chain where a client must not assume `istanbul_getValidators` is sorted.
    """
    if index < 0:
        raise ValueError(f"a validator index is ≥ 0, got {index}")
    return "0x" + hashlib.sha256(f"validator-{index}".encode()).hexdigest()[:40]


def proposer(
    height: int, validators: Sequence[str], committing: Collection[str]
) -> tuple[str, int]:
    """(author, round) of block `height`: the proposer of round 0 is validator `height mod N`;
    while the proposer of a round is not among the committing validators the round changes and
    the next validator in index order proposes."""
    count = len(validators)
    for round_ in range(count):
        candidate = validators[(height + round_) % count]
        if candidate in committing:
            return candidate, round_
    raise ValueError(f"no committing validator can propose block {height}")


def parse_quantity(value: object) -> int | None:
    """A JSON-RPC hex quantity (`0x1a`, at most 2**63-1) as a node answers one, else None."""
    if isinstance(value, str) and _HEX_RE.fullmatch(value):
        number = int(value, 16)
        return number if number <= _MAX_BLOCK else None
    return None


def parse_block_number(value: object, head: int) -> int | None:
    """A block parameter as go-ethereum's rpc.BlockNumber accepts it: a hex quantity, a JSON
    integer, "latest"/"pending"/"safe"/"finalized" (the head here), "earliest" (0) or null
    (the head). None for anything else."""
    if value is None or value in ("latest", "pending", "safe", "finalized"):
        return head
    if value == "earliest":
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _MAX_BLOCK else None
    return parse_quantity(value)


def _rlp(item: bytes | int | list[object]) -> bytes:
    if isinstance(item, int):
        item = item.to_bytes((item.bit_length() + 7) // 8, "big") if item else b""
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _rlp_length(len(item), 0x80) + item
    payload = b"".join(_rlp(element) for element in item)  # type: ignore[arg-type]
    return _rlp_length(len(payload), 0xC0) + payload


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(encoded)]) + encoded


def _seal(
    height: int, kind: str, validators: Sequence[str], sealers: Collection[str]
) -> list[object]:
    bitmap = sum(1 << index for index, address in enumerate(validators) if address in sealers)
    signature = b"".join(
        hashlib.sha256(f"{kind}-{height}-{part}".encode()).digest() for part in range(3)
    )
    return [bitmap, signature]  # an aggregated BLS signature is 96 bytes


def wbft_extra_data(
    height: int,
    round_: int,
    validators: Sequence[str],
    committers: Collection[str],
    previous_committers: Collection[str],
) -> str:
    """A WBFT-style `extraData` (hex) of block `height`: RLP of vanity, randao reveal, the
    previous block's seals, the round and this block's seals — several hundred bytes, as on a
    real WBFT chain, so that a client must cope with extraData longer than 32 bytes."""
    vanity = b"wbft network double".ljust(32, b"\0")
    randao = b"".join(hashlib.sha256(f"randao-{height}-{i}".encode()).digest() for i in range(3))
    extra = [
        vanity,
        randao,
        0,  # the previous block's round
        _seal(height - 1, "prev-prepared", validators, previous_committers),
        _seal(height - 1, "prev-committed", validators, previous_committers),
        round_,
        _seal(height, "prepared", validators, committers),
        _seal(height, "committed", validators, committers),
        b"",
    ]
    return "0x" + _rlp(extra).hex()
