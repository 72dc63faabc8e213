"""Following governance contracts by their logs (SPEC §13.3): decoding, folding, the follower.

Two kinds of contract are followed:

- `upgrade`: the project's `UpgradeGovernance` (contracts/UpgradeGovernance.sol). Its events say
  *which* proposals changed; `getProposal(id)` at the last processed block says what they are
  now (state, votes, and the plan data: name, height, info). An executed proposal becomes a plan.
- `govbase`: the WBFT GovBase (v2) system contracts, only tracked: their events carry the vote
  counts and states themselves, so no contract call is needed.

ABI decoding is done by hand here rather than with `eth_abi`: the types involved are a handful
(uint, address, bool, bytes32, string, bytes), and importing `eth_abi` brings in most of the web3
stack, about 40 MB of RSS against the daemon's 80 MB idle budget (SPEC §16). The event topics and
selectors below are keccak-256 hashes of the signatures, written out for the same reason; the
tests recompute them from the committed ABI.

The pure parts (`decode_log`, `decode_proposal`, `fold`, `plan_from_proposal`) take plain data;
`LogFollower` is the helper thread that calls the node and reports batches through callbacks.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import msgspec
from loguru import logger

from wemixvisor.chain.rpc import RpcClient, RpcError
from wemixvisor.home.fsutil import atomic_write_bytes
from wemixvisor.messages.governance import Proposal, ProposalState
from wemixvisor.plans.queue import MAX_PLAN_BYTES, Plan, PlanError, plan_from_object

__all__ = [
    "GET_PROPOSAL_SELECTOR",
    "GOVBASE",
    "GOVBASE_TOPICS",
    "LOG_RANGE",
    "MAX_STRING_BYTES",
    "MAX_TRACKED",
    "QUORUM_SELECTOR",
    "TOPICS",
    "UPGRADE",
    "UPGRADE_TOPICS",
    "AbiError",
    "ContractBatch",
    "ContractProgress",
    "FollowedContract",
    "GovernanceState",
    "LogFollower",
    "ProposalEvent",
    "ProposalSnapshot",
    "decode_log",
    "decode_proposal",
    "decode_uint",
    "fold",
    "get_proposal_call",
    "hex_bytes",
    "is_finished",
    "load_state",
    "plan_from_proposal",
    "prune",
    "published_view",
    "quantity",
    "save_state",
]

UPGRADE: Final = "upgrade"
GOVBASE: Final = "govbase"

LOG_RANGE: Final = 2000
"""Blocks per `eth_getLogs` call: a catch-up from block 0 goes in steps of this size."""

MAX_TRACKED: Final = 1000
"""Proposals kept per contract; the oldest finished ones are dropped first."""

MAX_STRING_BYTES: Final = MAX_PLAN_BYTES
"""Longest string or bytes value decoded from the chain (a plan's info is at most 1 MiB)."""

_WORD = 32
_MAX_DATA_HEX = 2 * (4 * MAX_STRING_BYTES)
_HEX_RE: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_QUANTITY_RE: Final = re.compile(r"0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,15})")

# keccak-256 of the event signatures (topic 0); see the module docstring.
UPGRADE_TOPICS: Final = {
    # ProposalCreated(uint256 indexed id, address indexed proposer, string name, uint64 height)
    "0x553be4d74bc63ce955614b229c8eaa4ad7f7f1f38840da15f3604b2fca49c6a8": "created",
    # ProposalVoted(uint256 indexed id, address indexed voter, bool approve)
    "0x0def80f9a3b4c7a4251442658ccf516bf33ea4acaf31638fc6da8ebdb0f64c72": "voted",
    # ProposalApproved(uint256 indexed id)
    "0x28ec9e38ba73636ceb2f6c1574136f83bd46284a3c74734b711bf45e12f8d929": "approved",
    # ProposalRejected(uint256 indexed id)
    "0xd92fba445edb3153b571e6df782d7a66fd0ce668519273670820ee3a86da0ef4": "rejected",
    # ProposalExecuted(uint256 indexed id)
    "0x712ae1383f79ac853f8d882153778e0260ef8f03b504e2866e0593e04d2b291f": "executed",
}
GOVBASE_TOPICS: Final = {
    # ProposalCreated(uint256 indexed proposalId, address indexed proposer, bytes32 actionType,
    #                 uint256 memberVersion, uint256 requiredApprovals, bytes callData)
    "0x830652010a654c24b39890c16f53e6f6179becc61702ecd9a8c88461c2ff941a": "created",
    # ProposalVoted(uint256 indexed proposalId, address indexed voter, bool approval,
    #               uint256 approved, uint256 rejected)
    "0x82b8cb75fd367be519fd5f57abcb2dbb773381c00082e94059c4713c4dfdfc05": "voted",
    # ProposalApproved(uint256 indexed proposalId, address indexed approver, uint256 approved,
    #                  uint256 rejected)
    "0x5064fb9bf50f615c47cc24c49119ba31d2c1a83ad6aed3b226cd42005524b7f4": "approved",
    # ProposalRejected(uint256 indexed proposalId, address indexed rejector, uint256 approved,
    #                  uint256 rejected)
    "0x6fa60fd92b2557298bb7b39e7b538b3f00ebf09b9f056bdeac7f0e5d57e8fcbb": "rejected",
    # ProposalExecuted(uint256 indexed proposalId, address indexed executor, bool success)
    "0x4fce71a6eb6a89b3e4c71722f870a263627cbfddc3a603c307803d89ad39e7cb": "executed",
    # ProposalFailed(uint256 indexed proposalId, address indexed executor, bytes reason)
    "0x68d5d5ea31f430b04112f5edc367c01af04da56d10cd663fbfbc4fbe5f509c20": "failed",
    # ProposalExpired(uint256 indexed proposalId, address indexed executor)
    "0xa07726147f0c03d4479e98c14466ffc4f275943ad74baa7e6bd84b99b02c80dc": "expired",
    # ProposalCancelled(uint256 indexed proposalId, address indexed canceller)
    "0x74c34a008ce735d9fcf0bd03a9b238d212ad4c441c020661f4ffbb6442645b85": "cancelled",
}
TOPICS: Final = {UPGRADE: UPGRADE_TOPICS, GOVBASE: GOVBASE_TOPICS}

GET_PROPOSAL_SELECTOR: Final = "c7f758a8"  # getProposal(uint256)
QUORUM_SELECTOR: Final = "1703a018"  # quorum()

# UpgradeGovernance.State, in enum order.
_UPGRADE_STATES: Final = (
    ProposalState.VOTING,
    ProposalState.APPROVED,
    ProposalState.REJECTED,
    ProposalState.EXECUTED,
)
_EVENT_STATES: Final = {
    "approved": ProposalState.APPROVED,
    "rejected": ProposalState.REJECTED,
    "executed": ProposalState.EXECUTED,
    "failed": ProposalState.FAILED,
    "expired": ProposalState.EXPIRED,
    "cancelled": ProposalState.CANCELLED,
}
_FINISHED: Final = frozenset(
    {
        ProposalState.REJECTED,
        ProposalState.EXECUTED,
        ProposalState.FAILED,
        ProposalState.EXPIRED,
        ProposalState.CANCELLED,
    }
)


class AbiError(ValueError):
    """ABI-encoded data (a log, a call's answer) that does not decode as it must."""


class _Unreadable(Exception):
    """The contract cannot tell what a proposal is; asking again would not help."""


# --- ABI decoding ----------------------------------------------------------------------------


def hex_bytes(value: object, what: str, limit: int = _MAX_DATA_HEX) -> bytes:
    """`0x`-prefixed hex of whole bytes, at most `limit` hex digits; AbiError otherwise."""
    if not isinstance(value, str) or len(value) > limit + 2 or not _HEX_RE.fullmatch(value):
        raise AbiError(f"{what} is not 0x-prefixed hex bytes")
    return bytes.fromhex(value[2:])


def quantity(value: object, what: str) -> int:
    """A JSON-RPC quantity (`0x1a`) as an int; AbiError otherwise."""
    if not isinstance(value, str) or not _QUANTITY_RE.fullmatch(value):
        raise AbiError(f"{what} is not a hex quantity")
    return int(value, 16)


class _Words:
    """Head/tail ABI data: 32-byte words addressed by index, dynamic values by offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def word(self, index: int) -> bytes:
        start = index * _WORD
        if start + _WORD > len(self.data):
            raise AbiError(f"data too short for word {index} ({len(self.data)} bytes)")
        return self.data[start : start + _WORD]

    def uint(self, index: int, bits: int = 256) -> int:
        value = int.from_bytes(self.word(index), "big")
        if value >> bits:
            raise AbiError(f"word {index} does not fit uint{bits}")
        return value

    def address(self, index: int) -> str:
        word = self.word(index)
        if any(word[:12]):
            raise AbiError(f"word {index} is not an address")
        return "0x" + word[12:].hex()

    def boolean(self, index: int) -> bool:
        value = self.uint(index)
        if value > 1:
            raise AbiError(f"word {index} is not a bool")
        return value == 1

    def bytes32(self, index: int) -> str:
        return "0x" + self.word(index).hex()

    def dynamic(self, index: int) -> bytes:
        offset = self.uint(index)
        if offset % _WORD or offset + _WORD > len(self.data):
            raise AbiError(f"word {index}: offset {offset} is outside the data")
        length = int.from_bytes(self.data[offset : offset + _WORD], "big")
        if length > MAX_STRING_BYTES:
            raise AbiError(f"word {index}: {length} bytes is over the {MAX_STRING_BYTES} limit")
        start = offset + _WORD
        if start + length > len(self.data):
            raise AbiError(f"word {index}: {length} bytes run past the data")
        return self.data[start : start + length]

    def string(self, index: int) -> str:
        try:
            return self.dynamic(index).decode("utf-8")
        except UnicodeDecodeError:
            raise AbiError(f"word {index} is not a UTF-8 string") from None


def decode_uint(data: bytes) -> int:
    """A call's single uint256 answer (e.g. `quorum()`)."""
    if len(data) != _WORD:
        raise AbiError(f"expected one word, got {len(data)} bytes")
    return _Words(data).uint(0)


def get_proposal_call(proposal_id: int) -> str:
    """The `data` of an `eth_call` to `getProposal(proposal_id)`."""
    return "0x" + GET_PROPOSAL_SELECTOR + proposal_id.to_bytes(_WORD, "big").hex()


class ProposalSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """`UpgradeGovernance.getProposal(id)`: the proposal as the contract holds it."""

    proposer: str
    name: str
    height: int
    info: str
    approvals: int
    disapprovals: int
    state: ProposalState


def decode_proposal(data: bytes) -> ProposalSnapshot:
    """Decode `getProposal`'s answer: (address, string, uint64, string, uint256, uint256, uint8)."""
    words = _Words(data)
    state = words.uint(6, bits=8)
    if state >= len(_UPGRADE_STATES):
        raise AbiError(f"unknown proposal state {state}")
    return ProposalSnapshot(
        proposer=words.address(0),
        name=words.string(1),
        height=words.uint(2, bits=64),
        info=words.string(3),
        approvals=words.uint(4),
        disapprovals=words.uint(5),
        state=_UPGRADE_STATES[state],
    )


# --- logs ------------------------------------------------------------------------------------


class _Log(msgspec.Struct, frozen=True, rename="camel"):
    address: str
    topics: list[str]
    data: str
    block_number: str
    log_index: str
    removed: bool = False


class ProposalEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded proposal event of a followed contract."""

    event: str  # created, voted, approved, rejected, executed, failed, expired, cancelled
    id: int
    block: int
    log_index: int
    proposer: str | None = None
    name: str | None = None
    height: int | None = None
    approve: bool | None = None
    votes_for: int | None = None  # GovBase events carry the running counts
    votes_against: int | None = None
    quorum: int | None = None
    action: str | None = None
    success: bool | None = None


def decode_log(kind: str, contract: str, raw: object) -> ProposalEvent | None:
    """Decode one `eth_getLogs` entry of `contract`; None for a log that is not a proposal
    event (another event, a removed log); AbiError for a malformed one."""
    try:
        log = msgspec.convert(raw, _Log, strict=True)
    except msgspec.ValidationError as exc:
        raise AbiError(f"malformed log entry: {exc}") from None
    if log.removed or log.address.lower() != contract.lower() or not log.topics:
        return None
    event = TOPICS[kind].get(log.topics[0].lower())
    if event is None:
        return None
    if len(log.topics) < 2:
        raise AbiError(f"{event} log without the indexed proposal id")
    topic_words = _Words(b"".join(hex_bytes(t, "topic", 64) for t in log.topics[1:3]))
    data = _Words(hex_bytes(log.data, "log data"))
    fields: dict[str, Any] = {
        "event": event,
        "id": topic_words.uint(0),
        "block": quantity(log.block_number, "blockNumber"),
        "log_index": quantity(log.log_index, "logIndex"),
    }
    if kind == UPGRADE:
        if event == "created":
            fields.update(proposer=topic_words.address(1), name=data.string(0))
            fields["height"] = data.uint(1, bits=64)
        elif event == "voted":
            fields.update(approve=data.boolean(0))
    elif event == "created":
        fields.update(
            proposer=topic_words.address(1), action=data.bytes32(0), quorum=data.uint(2, bits=32)
        )
    elif event == "voted":
        fields.update(approve=data.boolean(0), votes_for=data.uint(1), votes_against=data.uint(2))
    elif event in ("approved", "rejected"):
        fields.update(votes_for=data.uint(0), votes_against=data.uint(1))
    elif event == "executed":
        fields.update(success=data.boolean(0))
    return ProposalEvent(**fields)


# --- folding events into proposals -----------------------------------------------------------


def fold(
    known: dict[int, Proposal],
    *,
    contract: str,
    kind: str,
    quorum: int | None,
    events: Iterable[ProposalEvent],
    snapshots: dict[int, ProposalSnapshot],
    to_block: int,
) -> tuple[dict[int, Proposal], list[int]]:
    """Apply one batch of a contract's events (and, for `upgrade`, the proposals' snapshots at
    `to_block`) to the proposals known so far.

    Returns the proposals that changed (new value by id) and the ids executed in this batch
    (in block order), which are the candidates for a plan. Events are applied in chain order;
    a snapshot, when there is one, is the contract's own word on state, votes and plan data.
    """
    changed: dict[int, Proposal] = {}
    executed: list[int] = []
    for event in sorted(events, key=lambda e: (e.block, e.log_index)):
        current = changed.get(event.id) or known.get(event.id)
        proposal = _apply(current, event, contract=contract, kind=kind, quorum=quorum)
        changed[event.id] = proposal
        if event.event == "executed" and event.id not in executed:
            executed.append(event.id)
    for proposal_id, snapshot in snapshots.items():
        current = changed.get(proposal_id) or known.get(proposal_id)
        if current is None:
            current = Proposal(
                contract=contract,
                kind=kind,
                id=proposal_id,
                state=snapshot.state,
                votes_for=0,
                votes_against=0,
                quorum=quorum,
            )
        changed[proposal_id] = msgspec.structs.replace(
            current,
            state=snapshot.state,
            votes_for=snapshot.approvals,
            votes_against=snapshot.disapprovals,
            proposer=snapshot.proposer,
            name=snapshot.name,
            height=snapshot.height,
            info=snapshot.info,
            updated_block=to_block,
        )
    return changed, executed


def _apply(
    current: Proposal | None, event: ProposalEvent, *, contract: str, kind: str, quorum: int | None
) -> Proposal:
    if current is None:
        current = Proposal(
            contract=contract,
            kind=kind,
            id=event.id,
            state=ProposalState.VOTING,
            votes_for=0,
            votes_against=0,
            quorum=quorum,
        )
    updates: dict[str, Any] = {"updated_block": event.block}
    match event.event:
        case "created":
            updates.update(
                proposer=event.proposer,
                name=event.name if event.name is not None else current.name,
                height=event.height if event.height is not None else current.height,
                action=event.action,
                created_block=event.block,
            )
            if event.quorum is not None:
                updates["quorum"] = event.quorum
        case "voted":
            if event.votes_for is not None and event.votes_against is not None:
                updates.update(votes_for=event.votes_for, votes_against=event.votes_against)
            elif event.approve:
                updates["votes_for"] = current.votes_for + 1
            else:
                updates["votes_against"] = current.votes_against + 1
        case "executed":
            updates["state"] = (
                ProposalState.FAILED if event.success is False else ProposalState.EXECUTED
            )
            updates["executed_block"] = event.block
        case name:
            updates["state"] = _EVENT_STATES[name]
            if event.votes_for is not None and event.votes_against is not None:
                updates.update(votes_for=event.votes_for, votes_against=event.votes_against)
    return msgspec.structs.replace(current, **updates)


def is_finished(proposal: Proposal) -> bool:
    """Whether nothing can change the proposal any more."""
    return proposal.state in _FINISHED


def published_view(proposal: Proposal) -> tuple[Any, ...]:
    """What `governance.proposal` reports: a change in any of these is published."""
    return (
        proposal.state,
        proposal.votes_for,
        proposal.votes_against,
        proposal.quorum,
        proposal.name,
        proposal.height,
    )


def plan_from_proposal(proposal: Proposal) -> Plan:
    """The plan an executed `upgrade` proposal stands for; PlanError when it must not run.

    The plan data is checked as a plan file's would be (name, height, info), and the height must
    lie after the block that executed the proposal: governance that approves an upgrade at a
    height already passed is refused, not run at once.
    """
    if proposal.name is None or proposal.height is None:
        raise PlanError(f"proposal {proposal.id} could not be read from the contract")
    plan = plan_from_object(
        {"name": proposal.name, "height": proposal.height, "info": proposal.info},
        source="governance",
    )
    executed = proposal.executed_block
    if executed is not None and plan.height <= executed:
        raise PlanError(
            f"height {plan.height} has passed: proposal {proposal.id} was executed at block "
            f"{executed}"
        )
    return plan


# --- persistence -----------------------------------------------------------------------------


class ContractProgress(msgspec.Struct, kw_only=True):
    """How far one contract's logs have been processed."""

    address: str
    kind: str
    next_block: int = 0  # the first block not processed yet
    quorum: int | None = None


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
        return msgspec.json.decode(raw, type=GovernanceState)
    except (msgspec.DecodeError, RecursionError) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        with contextlib.suppress(OSError):
            path.replace(aside)
        logger.error("{} is unreadable ({}); moved to {}", path, exc, aside)
        return GovernanceState()


def save_state(path: Path, state: GovernanceState) -> None:
    """Durable write (temp + fsync + rename)."""
    atomic_write_bytes(path, msgspec.json.encode(state), mode=0o600)


def prune(proposals: dict[int, Proposal]) -> dict[int, Proposal]:
    """At most MAX_TRACKED proposals: the oldest finished ones go first."""
    if len(proposals) <= MAX_TRACKED:
        return proposals
    excess = len(proposals) - MAX_TRACKED
    drop = [pid for pid in sorted(proposals) if is_finished(proposals[pid])][:excess]
    if len(drop) < excess:
        unfinished = [pid for pid in sorted(proposals) if pid not in drop]
        drop += unfinished[: excess - len(drop)]
    kept = dict(proposals)
    for pid in drop:
        del kept[pid]
    return kept


# --- the follower thread ---------------------------------------------------------------------


class FollowedContract(msgspec.Struct, kw_only=True):
    """A contract as the follower sees it: where to continue."""

    address: str
    kind: str
    next_block: int
    quorum: int | None = None


class ContractBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Blocks from_block..to_block of one contract, processed: its proposal events, and for an
    `upgrade` contract the touched proposals' snapshots (or why one could not be read)."""

    contract: str
    kind: str
    from_block: int
    to_block: int
    head: int
    quorum: int | None
    events: list[ProposalEvent]
    snapshots: dict[int, ProposalSnapshot]
    unreadable: dict[int, str]


BatchCallback = Callable[[ContractBatch], None]
FailureCallback = Callable[[str], None]


class LogFollower:
    """One helper thread: every `interval`, the logs of each contract up to head - confirmations.

    Callbacks run on the helper thread and must only enqueue a message. A failed call is
    reported and retried at the next interval; progress is kept in memory only (the actor
    persists what it applied, and a new follower starts where that left off).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        contracts: list[FollowedContract],
        confirmations: int,
        interval: float,
        on_batch: BatchCallback,
        on_failure: FailureCallback,
    ) -> None:
        self._client = RpcClient(address, timeout=timeout)
        self._contracts = contracts
        self._confirmations = max(confirmations, 0)
        self._interval = interval
        self._on_batch = on_batch
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._behind_logged = False
        self._quorum_warned: set[str] = set()
        self._thread = threading.Thread(target=self._main, name="governance-logs", daemon=True)

    @property
    def interval(self) -> float:
        """Seconds between two polls."""
        return self._interval

    def set_interval(self, interval: float) -> None:
        """Poll every `interval` seconds from now on."""
        self._interval = interval
        self._wake.set()

    def start(self) -> None:
        """Start the helper thread."""
        self._thread.start()

    def stop(self, join_timeout: float = 0.5) -> bool:
        """Ask the thread to end; True once it has (a call in flight ends within the timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(join_timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.poll()
            except RpcError as exc:
                self._failed(str(exc))
            except Exception as exc:  # noqa: BLE001 - following must go on whatever broke
                logger.opt(exception=exc).error("governance log follower failed")
                self._failed(f"{type(exc).__name__}: {exc}")
            self._wake.wait(max(began + self._interval - time.monotonic(), 0.0))
            self._wake.clear()

    def _failed(self, error: str) -> None:
        if not self._stop.is_set():
            self._on_failure(error)

    def poll(self) -> None:
        """Process every contract up to the confirmed head, in LOG_RANGE steps (raises RpcError)."""
        head = quantity(self._client.call("eth_blockNumber"), "eth_blockNumber")
        confirmed = head - self._confirmations
        for contract in self._contracts:
            if contract.next_block > confirmed + 1 and not self._behind_logged:
                # The chain was reset or replaced (a test chain, a resync): nothing to read
                # until it is past where this contract was followed to.
                self._behind_logged = True
                logger.info(
                    "governance: head {} is behind block {} already processed for {}; waiting",
                    head,
                    contract.next_block - 1,
                    contract.address,
                )
            while contract.next_block <= confirmed and not self._stop.is_set():
                to_block = min(confirmed, contract.next_block + LOG_RANGE - 1)
                batch = self._read(contract, contract.next_block, to_block, head)
                if self._stop.is_set():
                    return
                self._on_batch(batch)
                contract.next_block = to_block + 1

    def _read(
        self, contract: FollowedContract, from_block: int, to_block: int, head: int
    ) -> ContractBatch:
        answer = self._client.call(
            "eth_getLogs",
            [
                {
                    "address": contract.address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": [sorted(TOPICS[contract.kind])],
                }
            ],
        )
        if not isinstance(answer, list):
            raise RpcError("eth_getLogs: the answer is not a list")
        events: list[ProposalEvent] = []
        for raw in answer:
            try:
                event = decode_log(contract.kind, contract.address, raw)
            except AbiError as exc:
                logger.warning(
                    "governance: skipped a malformed log of {}: {}", contract.address, exc
                )
                continue
            if event is not None and from_block <= event.block <= to_block:
                events.append(event)
        snapshots: dict[int, ProposalSnapshot] = {}
        unreadable: dict[int, str] = {}
        if contract.kind == UPGRADE:
            if contract.quorum is None:
                contract.quorum = self._quorum(contract.address)
            for proposal_id in sorted({event.id for event in events}):
                try:
                    snapshots[proposal_id] = self._snapshot(contract.address, proposal_id, to_block)
                except _Unreadable as exc:
                    unreadable[proposal_id] = str(exc)
        return ContractBatch(
            contract=contract.address,
            kind=contract.kind,
            from_block=from_block,
            to_block=to_block,
            head=head,
            quorum=contract.quorum,
            events=events,
            snapshots=snapshots,
            unreadable=unreadable,
        )

    def _eth_call(self, address: str, data: str, block: str) -> bytes:
        answer = self._client.call("eth_call", [{"to": address, "data": data}, block])
        try:
            return hex_bytes(answer, "eth_call answer")
        except AbiError as exc:
            raise _Unreadable(str(exc)) from None

    def _snapshot(self, address: str, proposal_id: int, block: int) -> ProposalSnapshot:
        """The proposal at `block`; `_Unreadable` when the contract cannot answer for it (a
        revert, a malformed answer), RpcError when the node did not answer (retried later)."""
        call = get_proposal_call(proposal_id)
        try:
            raw = self._eth_call(address, call, hex(block))
        except RpcError:
            # State of an older block may be pruned (a catch-up on a full node): a proposal's
            # plan data never changes, and its state is corrected by the next events.
            try:
                raw = self._eth_call(address, call, "latest")
            except RpcError as exc:
                if "revert" in str(exc).lower():
                    raise _Unreadable(f"getProposal({proposal_id}) reverted: {exc}") from None
                raise
        try:
            return decode_proposal(raw)
        except AbiError as exc:
            raise _Unreadable(f"getProposal({proposal_id}): {exc}") from None

    def _quorum(self, address: str) -> int | None:
        try:
            answer = self._eth_call(address, "0x" + QUORUM_SELECTOR, "latest")
            if not answer:
                return None  # no contract there (yet): asked again with the next batch
            return decode_uint(answer)
        except (AbiError, _Unreadable, RpcError) as exc:
            if address not in self._quorum_warned:
                self._quorum_warned.add(address)
                logger.warning("governance: quorum() of {} unreadable: {}", address, exc)
            return None
