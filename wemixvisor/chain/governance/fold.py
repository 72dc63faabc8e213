"""Proposals as plain data: folding a batch of a contract's events and `getProposal` records into
what is known, lazy expiry, and the plan an executed UPGRADE proposal stands for (SPEC §13.3).

Pure functions over plain data: the follower thread reads the chain, the actor applies.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from wemixvisor.chain.governance.abi import UPGRADE_ACTION
from wemixvisor.chain.governance.decode import (
    AbiError,
    ProposalEvent,
    ProposalRecord,
    decode_upgrade,
)
from wemixvisor.messages.governance import Proposal, ProposalState
from wemixvisor.plans.queue import Plan, PlanError, plan_from_object

UPGRADE: Final = "upgrade"
GOVBASE: Final = "govbase"
KINDS: Final = (UPGRADE, GOVBASE)

MAX_TRACKED: Final = 1000
"""Proposals kept per contract; the oldest finished ones are dropped first."""

OPEN: Final = frozenset({ProposalState.VOTING, ProposalState.APPROVED})
"""Statuses a proposal can still leave; every other status is final."""

_EVENT_STATUS: Final = {
    "ProposalApproved": ProposalState.APPROVED,
    "ProposalRejected": ProposalState.REJECTED,
    "ProposalFailed": ProposalState.FAILED,
    "ProposalExpired": ProposalState.EXPIRED,
    "ProposalCancelled": ProposalState.CANCELLED,
}


class ContractBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Blocks from_block..to_block of one contract, read: its proposal events, the records
    (`getProposal` at to_block) of the proposals they touched, or why one could not be read.

    `quorum` and `expiry` are the contract's `quorum()` and `proposalExpiry()` when readable;
    `timestamp` is to_block's timestamp, given with the last batch of a poll, against which
    open proposals are expired.
    """

    contract: str
    kind: str
    from_block: int
    to_block: int
    head: int
    quorum: int | None
    expiry: int | None
    timestamp: int | None
    events: list[ProposalEvent]
    records: dict[int, ProposalRecord]
    unreadable: dict[int, str]


def with_status(proposal: Proposal, **changes: Any) -> Proposal:
    """`proposal` with `changes` (GovBase names: status, approved, rejected, required) applied,
    and the older names (state, votes_for, votes_against, quorum) kept equal to them."""
    changed = msgspec.structs.replace(proposal, **changes)
    status = changed.status if changed.status is not None else changed.state
    return msgspec.structs.replace(
        changed,
        status=status,
        state=status,
        votes_for=changed.approved,
        votes_against=changed.rejected,
        quorum=changed.required,
    )


def upgraded(proposal: Proposal) -> Proposal:
    """A proposal saved before the GovBase names existed, with them filled in."""
    if proposal.status is not None:
        return proposal
    return with_status(
        proposal,
        status=proposal.state,
        approved=proposal.votes_for,
        rejected=proposal.votes_against,
        required=proposal.quorum,
    )


def _new(batch: ContractBatch, proposal_id: int) -> Proposal:
    return with_status(
        Proposal(
            contract=batch.contract.lower(),
            kind=batch.kind,
            id=proposal_id,
            state=ProposalState.VOTING,
            votes_for=0,
            votes_against=0,
            quorum=batch.quorum,
        ),
        required=batch.quorum,
    )


def _plan_data(kind: str, action: str | None, call_data: bytes | None) -> dict[str, Any]:
    """name, height and info of an UPGRADE proposal of an `upgrade` contract (left unset when
    the call data does not decode: the proposal is tracked, and never becomes a plan)."""
    if kind != UPGRADE or action != UPGRADE_ACTION or call_data is None:
        return {}
    try:
        upgrade = decode_upgrade(action, call_data)
    except AbiError:
        return {}
    return {"name": upgrade.name, "height": upgrade.height, "info": upgrade.info}


def _apply_event(proposal: Proposal, event: ProposalEvent, kind: str) -> Proposal:
    changes: dict[str, Any] = {"updated_block": event.block}
    match event.event:
        case "ProposalCreated":
            changes.update(
                proposer=event.account,
                action=event.action,
                required=event.required,
                created_block=event.block,
                **_plan_data(kind, event.action, event.call_data),
            )
        case "ProposalVoted":
            changes.update(approved=event.approved, rejected=event.rejected)
        case "ProposalExecuted" if event.success:
            changes.update(status=ProposalState.EXECUTED, executed_block=event.block)
        case "ProposalExecuted":
            # success=false: still approved, and retryable until ProposalFailed.
            changes["failed_executions"] = proposal.failed_executions + 1
        case name:
            changes["status"] = _EVENT_STATUS[name]
            if event.approved is not None and event.rejected is not None:
                changes.update(approved=event.approved, rejected=event.rejected)
    return with_status(proposal, **changes)


def _apply_record(proposal: Proposal, record: ProposalRecord, kind: str) -> Proposal:
    changes: dict[str, Any] = {
        "approved": record.approved,
        "rejected": record.rejected,
        "required": record.required,
        "proposer": record.proposer,
        "action": record.action,
        "created_at": record.created_at,
        **_plan_data(kind, record.action, record.call_data),
    }
    if record.executed_at:
        changes["executed_at"] = record.executed_at
    # Final statuses are final: a record never reopens what was shown finished (a proposal
    # shown expired by time still reads voting until someone touches it).
    if record.status is not None and (proposal.status in OPEN or record.status not in OPEN):
        changes["status"] = record.status
    return with_status(proposal, **changes)


def fold(known: dict[int, Proposal], batch: ContractBatch) -> tuple[dict[int, Proposal], list[int]]:
    """Apply one batch of a contract to the proposals known so far.

    Returns the proposals that changed (new value by id; a record that says what was known
    already is no change) and the ids that became executed in
    this batch, in execution order: the candidates for a plan. Events are applied in chain
    order, then each record (the contract's own word at to_block), then lazy expiry.
    """
    changed: dict[int, Proposal] = {}

    def current(proposal_id: int) -> Proposal:
        found = changed.get(proposal_id) or known.get(proposal_id)
        return found if found is not None else _new(batch, proposal_id)

    for event in sorted(batch.events, key=lambda e: (e.block, e.log_index)):
        changed[event.id] = _apply_event(current(event.id), event, batch.kind)
    for proposal_id, record in batch.records.items():
        if record.status is not None:
            changed[proposal_id] = _apply_record(current(proposal_id), record, batch.kind)
    for proposal_id in {*known, *changed}:
        proposal = current(proposal_id)
        expires_at = expiry_of(proposal, batch.expiry)
        if expires_at != proposal.expires_at:
            proposal = changed[proposal_id] = with_status(proposal, expires_at=expires_at)
        if (
            batch.timestamp is not None
            and proposal.status in OPEN
            and expires_at is not None
            and batch.timestamp > expires_at
        ):
            changed[proposal_id] = with_status(proposal, status=ProposalState.EXPIRED)
    changed = {pid: p for pid, p in changed.items() if known.get(pid) != p}
    executed = [
        proposal_id
        for proposal_id, proposal in changed.items()
        if proposal.status is ProposalState.EXECUTED
        and (proposal_id not in known or known[proposal_id].status is not ProposalState.EXECUTED)
    ]
    executed.sort(key=lambda pid: (changed[pid].executed_block or 0, pid))
    return changed, executed


def expiry_of(proposal: Proposal, expiry: int | None) -> int | None:
    """When an open proposal expires (createdAt + proposalExpiry), when both are known."""
    if proposal.created_at is None or expiry is None:
        return proposal.expires_at
    return proposal.created_at + expiry


def is_finished(proposal: Proposal) -> bool:
    """Whether nothing can change the proposal any more."""
    return proposal.status not in OPEN


def published_view(proposal: Proposal) -> tuple[Any, ...]:
    """What `governance.proposal` reports: a change in any of these is published."""
    return (
        proposal.status,
        proposal.approved,
        proposal.rejected,
        proposal.required,
        proposal.expires_at,
        proposal.failed_executions,
        proposal.name,
        proposal.height,
    )


def plan_from_proposal(proposal: Proposal) -> Plan:
    """The plan an executed UPGRADE proposal stands for; PlanError when it must not run.

    The plan data is checked as a plan file's would be (name, height, info), and the height must
    lie after the block that executed the proposal: governance that approves an upgrade at a
    height already passed is refused, not run at once.
    """
    if proposal.kind != UPGRADE or proposal.action not in (None, UPGRADE_ACTION):
        raise PlanError(f"proposal {proposal.id} is not an upgrade proposal")
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
