"""WBFT chain facts over the node's `istanbul_*` JSON-RPC namespace (SPEC §13.2).

`WbftClient` wraps an `RpcClient` and turns each answer into a typed result, checked strictly:
an answer of the wrong shape (keys in the wrong case, a missing field, an address that is not
20 hex bytes, a list longer than any real validator set) raises `MalformedAnswer` naming the
method and the problem. A node without the namespace answers "method not found", raised as
`NotWbft`: callers switch the validator features off quietly on it.

The decisions are pure functions over those results: the BFT quorum, whether this node's
downtime would leave the chain short of it, and the summary that `status` shows. The signing
check after an upgrade (`check_signing`, started by `start_signing_check` from the saga's
post-upgrade hook) runs on a thread of its own and only ever alerts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Final, Protocol

import msgspec
from loguru import logger

from wemixvisor.chain.rpc import (
    MalformedAnswer,
    RpcClient,
    RpcError,
    RpcMethodNotFound,
    parse_quantity,
)
from wemixvisor.messages import events as ev
from wemixvisor.messages.governance import ChainInfo, SealingActivity

if TYPE_CHECKING:
    from wemixvisor.config import Config

__all__ = [
    "MAX_VALIDATORS",
    "QUORUM_WINDOW",
    "SIGNING_CHECK_BLOCKS",
    "SIGNING_CHECK_TIMEOUT",
    "BlockRange",
    "CommitSigners",
    "MalformedAnswer",
    "NotWbft",
    "QuorumRisk",
    "RoundStats",
    "SealerActivity",
    "SigningResult",
    "WbftClient",
    "WbftStatus",
    "active_validators",
    "assess_quorum",
    "bft_quorum",
    "check_signing",
    "quorum_risk",
    "read_chain_info",
    "start_signing_check",
]

MAX_VALIDATORS: Final = 1024
"""More addresses than any real validator set: a longer list in an answer is refused."""

SIGNING_CHECK_BLOCKS: Final = 20
"""After an upgrade at H, the node must appear among the committers of one of blocks
H+1 … H+SIGNING_CHECK_BLOCKS (validator mode), else `validator.not_signing`."""

SIGNING_CHECK_TIMEOUT: Final = 600.0
"""Seconds the signing check waits for those blocks: a chain that does not advance after an
upgrade may be waiting for 2/3 of its validators, and is judged on what it produced by then."""

QUORUM_WINDOW: Final = 16
"""The recent blocks whose sealers count as active validators for the quorum warning: short, so
that a validator that went down a minute ago no longer counts."""

# Block numbers and counts: msgspec bounds stop at int64, far beyond any real chain.
_MAX_NUMBER: Final = 2**63 - 1
_ADDRESS_RE: Final = r"^0x[0-9a-fA-F]{40}$"
_HASH_RE: Final = r"^0x[0-9a-fA-F]{64}$"

Address = Annotated[str, msgspec.Meta(pattern=_ADDRESS_RE)]
Hash = Annotated[str, msgspec.Meta(pattern=_HASH_RE)]
BlockNumber = Annotated[int, msgspec.Meta(ge=0, le=_MAX_NUMBER)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_NUMBER)]
Addresses = Annotated[list[Address], msgspec.Meta(max_length=MAX_VALIDATORS)]
CountByAddress = Annotated[dict[Address, Count], msgspec.Meta(max_length=MAX_VALIDATORS)]


class NotWbft(RpcMethodNotFound):
    """The node does not serve `istanbul_*`: not a WBFT chain; the features switch off."""


class CommitSigners(msgspec.Struct, frozen=True, rename="pascal"):
    """`istanbul_getCommitSignersFromBlock`: who proposed and who committed one block.

    On the wire the keys are capitalised (`Number`, `Hash`, `Author`, `Committers`); addresses
    are lower-cased after decoding.
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


class QuorumRisk(msgspec.Struct, frozen=True, kw_only=True):
    """What this node's downtime would do to the BFT quorum (see `quorum_risk`)."""

    validators: int
    quorum: int
    active: int  # validators that sealed anything in the recent window
    active_without_me: int
    at_risk: bool


class SigningResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of the post-upgrade signing check."""

    signed: bool
    block: int | None  # the first block after H that this node committed
    blocks_checked: int
    reason: str


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


def _block_param(block: int | str | None) -> int | str | None:
    if block is None or block == "latest":
        return block
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= _MAX_NUMBER:
        raise ValueError(f"block must be a number ≥ 0, 'latest' or None, got {block!r}")
    return hex(block)


class WbftClient:
    """The `istanbul_*` methods of one node; blocking, so actors use it from helper threads."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    def _call(self, method: str, params: list[Any] | None = None) -> Any:
        try:
            return self.rpc.call(method, params)
        except NotWbft:
            raise
        except RpcMethodNotFound as exc:
            raise NotWbft(f"{method}: {exc}") from None

    def node_address(self) -> str:
        """`istanbul_nodeAddress`: the address this node signs with (lower-case)."""
        address: str = _convert("istanbul_nodeAddress", self._call("istanbul_nodeAddress"), Address)
        return address.lower()

    def is_validator(self, block: int | None = None) -> bool:
        """`istanbul_isValidator(block|null)`: whether this node validates at `block` (or now)."""
        answer: bool = _convert(
            "istanbul_isValidator",
            self._call("istanbul_isValidator", [_block_param(block)]),
            bool,
        )
        return answer

    def validators(self, block: int | str | None = "latest") -> list[str]:
        """`istanbul_getValidators(block|"latest"|null)`: the validator set, sorted, lower-case.

        A list naming one validator twice is refused: it would inflate the quorum arithmetic.
        """
        method = "istanbul_getValidators"
        answer: list[str] = _convert(method, self._call(method, [_block_param(block)]), Addresses)
        lowered = sorted(address.lower() for address in answer)
        if len(set(lowered)) != len(lowered):
            raise MalformedAnswer(f"{method}: the validator list names an address twice")
        return lowered

    def commit_signers(self, block: int) -> CommitSigners:
        """`istanbul_getCommitSignersFromBlock(block)`: the block's author and committers."""
        method = "istanbul_getCommitSignersFromBlock"
        signers: CommitSigners = _convert(
            method, self._call(method, [_block_param(block)]), CommitSigners
        )
        if signers.number != block:
            raise MalformedAnswer(f"{method}: asked for block {block}, got {signers.number}")
        return CommitSigners(
            number=signers.number,
            hash=signers.hash.lower(),
            author=signers.author.lower(),
            committers=sorted({address.lower() for address in signers.committers}),
        )

    def status(self, start: int | None = None, end: int | None = None) -> WbftStatus:
        """`istanbul_status(start?, end?)`: sealing activity over blocks start…end (both or
        neither; the node's default is its last 64 blocks)."""
        method = "istanbul_status"
        if (start is None) != (end is None):
            raise ValueError("istanbul_status takes both start and end, or neither")
        params = [] if start is None else [_block_param(start), _block_param(end)]
        status: WbftStatus = _convert(method, self._call(method, params), WbftStatus)
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

    def head(self) -> int:
        """`eth_blockNumber`."""
        return parse_quantity(self.rpc.call("eth_blockNumber"), "an eth_blockNumber height")


# decisions


def bft_quorum(validators: int) -> int:
    """The BFT quorum ⌈2n/3⌉ of n validators: how many must take part to decide a block."""
    if validators < 0:
        raise ValueError(f"a validator count cannot be negative: {validators}")
    return -(-2 * validators // 3)


def active_validators(validators: list[str], status: WbftStatus) -> set[str]:
    """Validators that sealed anything in the status window (prepared, committed, or the
    previous block's seals): the ones the chain can count on right now."""
    total = status.sealer_activity.total
    return {address for address in validators if total.get(address.lower(), 0) > 0}


def quorum_risk(validators: list[str], active: set[str], me: str) -> QuorumRisk:
    """Would the chain lose its quorum while this node (`me`) is down?

    At risk when `me` is a validator and the active validators other than `me` are fewer than
    ⌈2n/3⌉: the chain then stops until this node is back. A node that is not a validator
    never puts the quorum at risk.
    """
    members = {address.lower() for address in validators}
    active_members = {address.lower() for address in active} & members
    me = me.lower()
    quorum = bft_quorum(len(members))
    without_me = len(active_members - {me})
    return QuorumRisk(
        validators=len(members),
        quorum=quorum,
        active=len(active_members),
        active_without_me=without_me,
        at_risk=me in members and without_me < quorum,
    )


def read_chain_info(client: WbftClient, *, at: float | None = None) -> ChainInfo:
    """The validator facts `status` shows; `wbft=False` (and no error) on a non-WBFT chain.

    Raises RpcError when the node does not answer or answers malformed: the caller keeps its
    last facts and says why they are old.
    """
    checked_at = time.time() if at is None else at
    try:
        address = client.node_address()
    except NotWbft:
        return ChainInfo(wbft=False, checked_at=checked_at)
    validators = client.validators("latest")
    status = client.status()
    me = address.lower()
    window = status.block_range
    sealing = SealingActivity(
        start_block=window.start_block,
        end_block=window.end_block,
        blocks=window.total_blocks,
        sealed=status.sealer_activity.total.get(me, 0),
        committed=status.sealer_activity.committed.get(me, 0),
        authored=status.author.get(me, 0),
    )
    active = active_validators(validators, status)
    return ChainInfo(
        wbft=True,
        node_address=address,
        is_validator=me in validators,
        validator_count=len(validators),
        quorum=bft_quorum(len(validators)),
        active_validators=len(active),
        sealing=sealing,
        checked_at=checked_at,
    )


def check_signing(
    client: WbftClient,
    address: str,
    after: int,
    *,
    blocks: int = SIGNING_CHECK_BLOCKS,
    timeout: float = SIGNING_CHECK_TIMEOUT,
    poll: float = 0.25,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SigningResult:
    """Wait for blocks after..after+blocks and look for `address` among their committers.

    Returns at the first block the node committed (signed), or once all `blocks` were checked
    without it, or after `timeout` seconds with what was checked by then (a stalled chain).
    Unanswered calls are retried until the timeout; a node that stopped serving `istanbul_*`
    is reported as not signing at once.
    """
    me = address.lower()
    stop = stop or threading.Event()
    deadline = clock() + timeout
    block = after + 1
    last = after + blocks
    checked = 0
    last_error = ""
    while block <= last:
        if stop.is_set():
            return SigningResult(
                signed=False, block=None, blocks_checked=checked, reason="check stopped"
            )
        try:
            head = client.head()
            while block <= min(head, last):
                if me in client.commit_signers(block).committers:
                    return SigningResult(
                        signed=True, block=block, blocks_checked=checked + 1, reason=""
                    )
                checked += 1
                block += 1
        except NotWbft:
            return SigningResult(
                signed=False,
                block=None,
                blocks_checked=checked,
                reason="the node no longer serves istanbul_* after the upgrade",
            )
        except RpcError as exc:
            last_error = str(exc)
        if block > last:
            break
        if clock() >= deadline:
            reason = f"only {checked} of {blocks} blocks after {after} within {timeout:g}s"
            if last_error:
                reason += f" (last error: {last_error})"
            return SigningResult(signed=False, block=None, blocks_checked=checked, reason=reason)
        stop.wait(poll)
    return SigningResult(
        signed=False,
        block=None,
        blocks_checked=checked,
        reason=f"not among the committers of blocks {after + 1}-{last}",
    )


def assess_quorum(client: WbftClient, window: int = QUORUM_WINDOW) -> tuple[str, QuorumRisk]:
    """This node's address and what its downtime would do to the quorum, judged by who sealed
    in the last `window` blocks. Raises RpcError (NotWbft on a non-WBFT chain)."""
    me = client.node_address()
    validators = client.validators("latest")
    head = client.head()
    status = client.status(max(head - window + 1, 0), head)
    return me, quorum_risk(validators, active_validators(validators, status), me)


class UpgradeFacts(Protocol):
    """What the signing check needs to know of a completed upgrade."""

    @property
    def name(self) -> str:
        """The plan's name."""

    @property
    def height(self) -> int:
        """The plan's height H."""

    @property
    def validator(self) -> bool | None:
        """Whether the node was a validator before the upgrade (None: unknown)."""

    @property
    def validator_address(self) -> str | None:
        """The node's address, when known."""


def start_signing_check(
    upgrade: UpgradeFacts, *, config: Config, publish: Callable[[ev.Event], None]
) -> None:
    """After a completed upgrade (the saga's post-upgrade hook): in validator mode, and when
    the node was a validator before the upgrade, check on a thread of its own that it commits
    blocks after H again; publish `validator.signing` or `validator.not_signing`.

    An alert only: nothing is rolled back, and the caller is never blocked.
    """
    if not config.node.validator_mode:
        return
    address = upgrade.validator_address
    if upgrade.validator is not True or address is None:
        if upgrade.validator is False:
            logger.info("upgrade {}: not a validator; signing not checked", upgrade.name)
        return
    height = upgrade.height
    client = WbftClient(RpcClient(config.rpc.address, timeout=min(config.rpc.timeout, 2.0)))
    poll = min(max(config.rpc.poll_interval, 0.1), 1.0)

    def run() -> None:
        result = check_signing(client, address, height, poll=poll)
        if result.signed and result.block is not None:
            logger.info("validator {} signs again: committed block {}", address, result.block)
            publish(ev.ValidatorSigning(address=address, height=height, block=result.block))
            return
        logger.error(
            "validator {} is not signing after the upgrade at {}: {}",
            address,
            height,
            result.reason,
        )
        publish(
            ev.ValidatorNotSigning(
                address=address,
                height=height,
                blocks_checked=result.blocks_checked,
                reason=result.reason,
            )
        )

    threading.Thread(target=run, name=f"signing-check-{height}", daemon=True).start()
