"""What reads followed contracts from the node and reports batches (run by the
GovernanceActor's poller, off its mailbox).

Each poll reads each contract's proposal logs up to head - confirmations (in
LOG_RANGE steps) and `getProposal` of every proposal those logs touched. The last batch of a
poll also carries the records of every other open proposal and the confirmed block's timestamp,
against which the actor expires open proposals (GovBase expiry is lazy: it emits nothing until
someone touches the proposal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import msgspec
from loguru import logger

from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.governance.abi import dialect
from wemixvisor.chain.governance.decode import (
    AbiError,
    ProposalEvent,
    ProposalRecord,
    call_data,
    decode_log,
    decode_proposal,
    decode_result,
    hex_bytes,
    quantity,
)
from wemixvisor.chain.governance.fold import MAX_TRACKED, OPEN, ContractBatch
from wemixvisor.chain.rpc import RpcError

LOG_RANGE: Final = 2000
"""Blocks per `eth_getLogs` call: a catch-up from block 0 goes in steps of this size."""


class FollowedContract(msgspec.Struct, kw_only=True):
    """A contract as the follower sees it: where to continue, and what it said of itself."""

    address: str
    kind: str
    next_block: int
    quorum: int | None = None
    expiry: int | None = None
    open: set[int] = msgspec.field(default_factory=set)  # ids read again every poll


class _Unreadable(Exception):
    """The contract cannot tell what a proposal is; asking again would not help."""


BatchCallback = Callable[[ContractBatch], None]


class LogFollower:
    """Each poll: the logs of each contract up to head - confirmations.

    `on_batch` runs on the polling worker's thread and must only enqueue a message. A failed
    poll is reported and tried again at the next interval; progress is kept in memory only (the
    actor persists what it applied, and a new follower starts where that left off).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        contracts: list[FollowedContract],
        confirmations: int,
        on_batch: BatchCallback,
    ) -> None:
        self._client = ChainClient(address, timeout=timeout)
        self._contracts = contracts
        self._confirmations = max(confirmations, 0)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._behind_logged = False
        self._warned: set[tuple[str, str]] = set()
        self._topics = sorted(dialect().events)

    def stop(self) -> None:
        """Abandon a poll in progress at its next step (the follower is being replaced)."""
        self._stop.set()

    def poll_once(self) -> str | None:
        """One poll of every contract; why it failed (it is tried again next time), or None."""
        try:
            self.poll()
        except (RpcError, AbiError) as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - following must go on whatever broke
            logger.opt(exception=exc).error("governance log follower failed")
            return f"{type(exc).__name__}: {exc}"
        return None

    def poll(self) -> None:
        """Process every contract up to the confirmed head, in LOG_RANGE steps (raises RpcError,
        or AbiError when the node's answers are not what they must be)."""
        head = quantity(self._client.request("eth_blockNumber"), "eth_blockNumber")
        confirmed = head - self._confirmations
        timestamp: int | None = None
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
                if to_block == confirmed and timestamp is None:
                    timestamp = self._timestamp(confirmed)
                batch = self._read(
                    contract,
                    contract.next_block,
                    to_block,
                    head,
                    timestamp if to_block == confirmed else None,
                )
                if self._stop.is_set():
                    return
                self._on_batch(batch)
                contract.next_block = to_block + 1

    def _timestamp(self, block: int) -> int:
        answer = self._client.block(block)
        return quantity(answer.get("timestamp"), f"block {block} timestamp")

    def _read(
        self,
        contract: FollowedContract,
        from_block: int,
        to_block: int,
        head: int,
        timestamp: int | None,
    ) -> ContractBatch:
        answer = self._client.request(
            "eth_getLogs",
            [
                {
                    "address": contract.address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": [self._topics],
                }
            ],
        )
        if not isinstance(answer, list):
            raise RpcError("eth_getLogs: the answer is not a list")
        events: list[ProposalEvent] = []
        for raw in answer:
            try:
                event = decode_log(contract.address, raw)
            except AbiError as exc:
                logger.warning(
                    "governance: skipped a malformed log of {}: {}", contract.address, exc
                )
                continue
            if event is not None and from_block <= event.block <= to_block:
                events.append(event)
        if contract.quorum is None:
            contract.quorum = self._view(contract.address, "quorum")
        if contract.expiry is None:
            contract.expiry = self._view(contract.address, "proposalExpiry")
        touched = {event.id for event in events}
        contract.open |= {e.id for e in events if e.event == "ProposalCreated"}
        records: dict[int, ProposalRecord] = {}
        unreadable: dict[int, str] = {}
        for proposal_id in sorted(touched | (contract.open if timestamp is not None else set())):
            try:
                record = self._record(contract.address, proposal_id, to_block)
            except _Unreadable as exc:
                # Asking again would not help: a revert or garbage is not read every poll.
                contract.open.discard(proposal_id)
                if proposal_id in touched:
                    unreadable[proposal_id] = str(exc)
                continue
            records[proposal_id] = record
            if _still_open(record, contract.expiry, timestamp):
                contract.open.add(proposal_id)
            else:
                contract.open.discard(proposal_id)
        if len(contract.open) > MAX_TRACKED:
            contract.open = set(sorted(contract.open)[-MAX_TRACKED:])
        return ContractBatch(
            contract=contract.address,
            kind=contract.kind,
            from_block=from_block,
            to_block=to_block,
            head=head,
            quorum=contract.quorum,
            expiry=contract.expiry,
            timestamp=timestamp,
            events=events,
            records=records,
            unreadable=unreadable,
        )

    def _eth_call(self, address: str, data: str, block: str) -> bytes:
        answer = self._client.request("eth_call", [{"to": address, "data": data}, block])
        try:
            return hex_bytes(answer, "eth_call answer")
        except AbiError as exc:
            raise _Unreadable(str(exc)) from None

    def _record(self, address: str, proposal_id: int, block: int) -> ProposalRecord:
        """The proposal at `block`; `_Unreadable` when the contract cannot answer for it (a
        revert, a malformed answer, an unknown id), RpcError when the node did not answer."""
        call = call_data("getProposal", proposal_id)
        try:
            raw = self._eth_call(address, call, hex(block))
        except RpcError:
            # State of an older block may be pruned (a catch-up on a full node): a proposal's
            # plan data never changes, and its status is corrected by the next events.
            try:
                raw = self._eth_call(address, call, "latest")
            except RpcError as exc:
                if "revert" in str(exc).lower():
                    raise _Unreadable(f"getProposal({proposal_id}) reverted: {exc}") from None
                raise
        try:
            record = decode_proposal(raw)
        except AbiError as exc:
            raise _Unreadable(f"getProposal({proposal_id}): {exc}") from None
        if record.status is None:
            raise _Unreadable(f"getProposal({proposal_id}): no such proposal")
        return record

    def _view(self, address: str, function: str) -> int | None:
        """A contract's uint view (`quorum()`, `proposalExpiry()`); None while unreadable (no
        contract there yet, a contract without it), asked again with the next batch."""
        try:
            answer = self._eth_call(address, call_data(function), "latest")
            if not answer:
                return None
            (value,) = decode_result(function, answer)
        except (AbiError, _Unreadable, RpcError) as exc:
            if (address, function) not in self._warned:
                self._warned.add((address, function))
                logger.warning("governance: {}() of {} unreadable: {}", function, address, exc)
            return None
        return int(value)


def _still_open(record: ProposalRecord, expiry: int | None, timestamp: int | None) -> bool:
    """Whether the proposal can still change without a log saying so: open, and not yet past
    its expiry (past it, only ProposalExpired can follow, and that is a log)."""
    if record.status not in OPEN:
        return False
    return expiry is None or timestamp is None or timestamp <= record.created_at + expiry
