"""The `istanbul_*` answers of one node, with go-stablenet's shapes (SPEC §13.2).

Pure functions over the ledger and one node's view (its address and its own head: a node held
back at the fork block answers from its own, shorter chain). Errors are raised as IstanbulError
with the JSON-RPC code a go-ethereum node would use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devtools.wbft.ledger import Ledger
from devtools.wbft.rules import parse_block_number

__all__ = [
    "DEFAULT_STATUS_BLOCKS",
    "MAX_STATUS_BLOCKS",
    "METHODS",
    "IstanbulError",
    "NodeView",
    "answer",
    "not_available",
]

MAX_STATUS_BLOCKS = 1024
"""go-wbft refuses an `istanbul_status` range longer than this."""

DEFAULT_STATUS_BLOCKS = 64
"""`istanbul_status()` without bounds covers the node's last this many blocks."""

METHODS = (
    "istanbul_nodeAddress",
    "istanbul_isValidator",
    "istanbul_getValidators",
    "istanbul_getCommitSignersFromBlock",
    "istanbul_status",
)

_INVALID_PARAMS = -32602
_SERVER_ERROR = -32000


class IstanbulError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NodeView:
    """One node as its own `istanbul_*` API sees it."""

    address: str
    head: int
    block_hash: str | None = None  # of the block asked for by getCommitSignersFromBlock


def not_available(method: str) -> IstanbulError:
    """What geth answers over HTTP/WS for a namespace not named in `--http.api`/`--ws.api`."""
    return IstanbulError(-32601, f"the method {method} does not exist/is not available")


def _params(params: Any, at_most: int) -> list[Any]:
    if params is None:
        return []
    if not isinstance(params, list):
        raise IstanbulError(_INVALID_PARAMS, "non-array args")
    if len(params) > at_most:
        raise IstanbulError(_INVALID_PARAMS, f"too many arguments, want at most {at_most}")
    return params


def _block(value: Any, head: int) -> int:
    number = parse_block_number(value, head)
    if number is None:
        raise IstanbulError(_INVALID_PARAMS, f"invalid argument 0: bad block number {value!r:.40}")
    return number


def commit_signers_block(params: Any, head: int) -> int:
    """The block `istanbul_getCommitSignersFromBlock(params)` asks for (to fetch its hash)."""
    args = _params(params, 1)
    return _block(args[0] if args else None, head)


def answer(method: str, params: Any, node: NodeView, ledger: Ledger) -> Any:
    """The result of `method(params)` on `node`; raises IstanbulError."""
    validators = list(ledger.validators)
    if method == "istanbul_nodeAddress":
        _params(params, 0)
        return node.address
    if method == "istanbul_isValidator":
        args = _params(params, 1)
        number = _block(args[0] if args else None, node.head)
        # go-wbft swallows the lookup error: an unknown block reads as "not a validator".
        return number <= node.head and node.address in validators
    if method == "istanbul_getValidators":
        args = _params(params, 1)
        if _block(args[0] if args else None, node.head) > node.head:
            raise IstanbulError(_SERVER_ERROR, "unknown block")
        return validators
    if method == "istanbul_getCommitSignersFromBlock":
        number = commit_signers_block(params, node.head)
        if number > node.head or node.block_hash is None:
            raise IstanbulError(_SERVER_ERROR, "unknown block")
        record = ledger.record(number)
        return {
            "Number": number,
            "Hash": node.block_hash,
            "Author": record.author,
            "Committers": list(record.committers),
        }
    if method == "istanbul_status":
        return _status(_params(params, 2), node.head, ledger, validators)
    raise not_available(method)


def _status(args: list[Any], head: int, ledger: Ledger, validators: Sequence[str]) -> Any:
    if len(args) == 1 or (len(args) == 2 and (args[0] is None) != (args[1] is None)):
        missing = "end" if len(args) == 1 or args[1] is None else "start"
        raise IstanbulError(_SERVER_ERROR, f"pass the {missing} block number")
    if args and args[0] is not None:
        start, end = _block(args[0], head), _block(args[1], head)
        if start > end:
            raise IstanbulError(
                _SERVER_ERROR, "start block number should be less than end block number"
            )
        if end - start + 1 > MAX_STATUS_BLOCKS:
            raise IstanbulError(
                _SERVER_ERROR, f"block range too large: at most {MAX_STATUS_BLOCKS} blocks"
            )
        if end > head:
            raise IstanbulError(
                _SERVER_ERROR,
                "end block number should be less than or equal to current block height",
            )
    else:
        end = head
        start = max(head - DEFAULT_STATUS_BLOCKS + 1, 1) if head > 0 else 0
    counts = {kind: dict.fromkeys(validators, 0) for kind in ("prepared", "committed", "prev")}
    authors = dict.fromkeys(validators, 0)
    rounds: dict[str, int] = {}
    for number in range(start, end + 1):
        record = ledger.record(number)
        for address in record.committers:
            counts["prepared"][address] += 1
            counts["committed"][address] += 1
        if number > 0:
            # Block n carries the seals of block n-1 as its "prev" seals.
            for address in ledger.record(number - 1).committers:
                counts["prev"][address] += 1
        if number > 0:
            authors[record.author] = authors.get(record.author, 0) + 1
            rounds[str(record.round)] = rounds.get(str(record.round), 0) + 1
    # `total` counts every seal a validator put on the range: prepared and committed seals of
    # each block, and the previous block's two seals that each block carries.
    total = {
        address: 2 * counts["prepared"][address] + 2 * counts["prev"][address]
        for address in validators
    }
    return {
        "sealerActivity": {
            "total": total,
            "prepared": counts["prepared"],
            "committed": counts["committed"],
            "prevPrepared": dict(counts["prev"]),
            "prevCommitted": dict(counts["prev"]),
        },
        "author": authors,
        "blockRange": {"startBlock": start, "endBlock": end, "totalBlocks": end - start + 1},
        "roundStats": {"roundDistribution": rounds, "totalRounds": sum(rounds.values())},
    }
