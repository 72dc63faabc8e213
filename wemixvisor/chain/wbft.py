"""WBFT chain facts over the node's `istanbul_*` namespace (SPEC §13.2).

`WbftClient` calls the `istanbul` web3 module (`wemixvisor.chain.istanbul` names each method,
`istanbul_answers` checks each answer) through the daemon's `ChainClient`. A node without the
namespace answers "method not found", raised as `NotWbft`: without VALIDATOR_MODE callers
switch the validator features off quietly on it; with it, `istanbul_problem` turns it into the
preflight failure and warning that name the two fixes.

The decisions are pure functions over those results: the BFT quorum (`bft_quorum`, WBFT's
QuorumSize), whether this node's downtime would leave the chain short of it, and the summary
that `status` shows. The signing check after an upgrade (`check_signing`, started by
`start_signing_check` from the saga's post-upgrade hook) runs on a thread of its own and only
ever alerts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import msgspec
from loguru import logger

from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.istanbul_answers import (
    MAX_STATUS_BLOCKS,
    MAX_VALIDATORS,
    BlockRange,
    CommitSigners,
    RoundStats,
    SealerActivity,
    WbftStatus,
    block_param,
)
from wemixvisor.chain.rpc import MalformedAnswer, RpcError, RpcMethodNotFound
from wemixvisor.messages import events as ev
from wemixvisor.messages.governance import ChainInfo, SealingActivity

if TYPE_CHECKING:
    from wemixvisor.chain.istanbul import Istanbul
    from wemixvisor.config import Config

__all__ = [
    "MAX_STATUS_BLOCKS",
    "MAX_VALIDATORS",
    "QUORUM_WINDOW",
    "SIGNING_CHECK_BLOCKS",
    "SIGNING_CHECK_TIMEOUT",
    "STATUS_WINDOW",
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
    "istanbul_problem",
    "quorum_risk",
    "read_chain_info",
    "start_signing_check",
]

T = TypeVar("T")

SIGNING_CHECK_BLOCKS: Final = 20
"""After an upgrade at H, the node must appear among the committers of one of blocks
H+1 … H+SIGNING_CHECK_BLOCKS (validator mode), else `validator.not_signing`."""

SIGNING_CHECK_TIMEOUT: Final = 600.0
"""Seconds the signing check waits for those blocks: a chain that does not advance after an
upgrade may be waiting for 2/3 of its validators, and is judged on what it produced by then."""

QUORUM_WINDOW: Final = 16
"""The recent blocks whose sealers count as active validators for the quorum warning: short, so
that a validator that went down a minute ago no longer counts."""

STATUS_WINDOW: Final = 64
"""The blocks whose sealing `status` shows (go-wbft's own default range)."""


class NotWbft(RpcMethodNotFound):
    """The node does not serve `istanbul_*`: not a WBFT chain, or the namespace is not enabled
    on this transport (geth serves it over HTTP/WS only when `--http.api`/`--ws.api` name it)."""


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


class WbftClient:
    """The `istanbul_*` methods of one node; blocking, so actors use it from helper threads."""

    def __init__(self, chain: ChainClient) -> None:
        self.chain = chain

    def _call(self, method: str, use: Callable[[Istanbul], T]) -> T:
        try:
            return self.chain.istanbul(use)
        except NotWbft:
            raise
        except RpcMethodNotFound as exc:
            raise NotWbft(f"{method}: {exc}") from None

    def node_address(self) -> str:
        """`istanbul_nodeAddress`: the address this node signs with (lower-case)."""
        return self._call("istanbul_nodeAddress", lambda ist: ist.node_address())

    def is_validator(self, block: int | None = None) -> bool:
        """Whether this node validates at `block` (or now).

        `istanbul_isValidator` swallows errors: its `false` can mean "could not tell", so a
        `false` is confirmed against `istanbul_getValidators` before it is believed.
        """
        param = block_param(block)
        if self._call("istanbul_isValidator", lambda ist: ist.is_validator(param)):
            return True
        return self.node_address() in self.validators("latest" if block is None else block)

    def validators(self, block: int | str | None = "latest") -> list[str]:
        """`istanbul_getValidators(block|"latest"|null)`: the validator set in validator-index
        order (as the node gives it, never sorted: slots are taken from it), lower-case."""
        param = block_param(block)
        return self._call("istanbul_getValidators", lambda ist: ist.get_validators(param))

    def commit_signers(self, block: int) -> CommitSigners:
        """`istanbul_getCommitSignersFromBlock(block)`: the block's author and committers."""
        method = "istanbul_getCommitSignersFromBlock"
        param = block_param(block)
        assert param is not None
        signers = self._call(method, lambda ist: ist.get_commit_signers_from_block(param))
        if signers.number != block:
            raise MalformedAnswer(f"{method}: asked for block {block}, got {signers.number}")
        return signers

    def status(self, start: int, end: int) -> WbftStatus:
        """`istanbul_status(start, end)`: sealing activity over blocks start…end. Always both
        bounds (the node's default range fails before the WBFT fork), at most
        MAX_STATUS_BLOCKS blocks (go-wbft refuses more)."""
        if not 0 <= start <= end or end - start + 1 > MAX_STATUS_BLOCKS:
            raise ValueError(
                f"istanbul_status takes 0 ≤ start ≤ end and at most {MAX_STATUS_BLOCKS} blocks,"
                f" got {start}..{end}"
            )
        first, last = block_param(start), block_param(end)
        assert first is not None
        assert last is not None
        return self._call("istanbul_status", lambda ist: ist.status(first, last))

    def recent_status(self, blocks: int) -> WbftStatus:
        """`istanbul_status` over the last `blocks` blocks up to the head."""
        head = self.head()
        return self.status(max(head - blocks + 1, 0), head)

    def head(self) -> int:
        """`eth_blockNumber`."""
        return self.chain.block_number()


# decisions


def bft_quorum(validators: int) -> int:
    """WBFT's quorum of n validators, ⌈n - (n-1)/3⌉: how many must take part to decide a
    block. Not ⌈2n/3⌉: 3 validators need all 3, 4 need 3, 6 need 5, 7 need 5."""
    if validators < 0:
        raise ValueError(f"a validator count cannot be negative: {validators}")
    if validators == 0:
        return 0
    # n - (n-1)/3 rounded up is n minus (n-1)/3 rounded down: exact in integers.
    return validators - (validators - 1) // 3


def active_validators(validators: list[str], status: WbftStatus) -> set[str]:
    """Validators that sealed anything in the status window (prepared, committed, or the
    previous block's seals): the ones the chain can count on right now."""
    total = status.sealer_activity.total
    return {address for address in validators if total.get(address.lower(), 0) > 0}


def quorum_risk(validators: list[str], active: set[str], me: str) -> QuorumRisk:
    """Would the chain lose its quorum while this node (`me`) is down?

    At risk when `me` is a validator and the active validators other than `me` are fewer than
    the quorum (`bft_quorum`): the chain then stops until this node is back. A node that is
    not a validator never puts the quorum at risk.
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
    status = client.recent_status(STATUS_WINDOW)
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
    status = client.recent_status(window)
    return me, quorum_risk(validators, active_validators(validators, status), me)


def istanbul_problem(client: WbftClient) -> str | None:
    """In VALIDATOR_MODE: why the validator checks cannot run, or None when `istanbul_*`
    answers (or the node does not answer at all: the other checks report that).

    "Method not found" is then an error, never silence (SPEC §13.2): geth serves `istanbul`
    over HTTP and WS only when `--http.api`/`--ws.api` name it; its IPC file serves everything.
    """
    try:
        client.node_address()
    except NotWbft as exc:
        return (
            f"VALIDATOR_MODE=true but the node at {client.chain.address} does not serve the"
            f" istanbul namespace ({exc}): add istanbul to the node's --http.api / --ws.api, or"
            " point DAEMON_RPC_ADDRESS at the node's IPC file (e.g. <datadir>/gstable.ipc),"
            " which serves every namespace"
        )
    except RpcError:
        return None
    return None


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
    client = WbftClient(ChainClient(config.rpc.address, timeout=min(config.rpc.timeout, 2.0)))
    poll = min(max(config.rpc.poll_interval, 0.1), 1.0)

    def run() -> None:
        try:
            result = check_signing(client, address, height, poll=poll)
        finally:
            client.chain.close()
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
