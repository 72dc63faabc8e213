"""Messages of the GovernanceActor (SPEC §13.2, §13.3): proposals followed, and chain facts."""

from __future__ import annotations

import enum

import msgspec


class ProposalState(enum.StrEnum):
    """Where a proposal is in its life: the GovBase statuses (SPEC §13.3) but None."""

    VOTING = "voting"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXECUTED = "executed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"  # its execution failed MAX_RETRY_COUNT times: final


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """One proposal of a followed contract, as of the last processed block.

    `name`, `height` and `info` are an UPGRADE proposal's plan data; `action` is the proposal's
    action type. `plan` says what the daemon did with an executed upgrade proposal:
    `registered`, `rejected: <reason>`, or `pending` while the orchestrator has not taken it.

    `status`, `approved`, `rejected` and `required` are the GovBase names of `state`,
    `votes_for`, `votes_against` and `quorum` (both are kept, equal, for older readers).
    `expires_at` is createdAt + the contract's proposalExpiry (unix seconds): an open proposal
    is shown `expired` once a processed block is past it, although the contract only records
    that when someone touches the proposal. `failed_executions` counts executions that
    reported success=false (the proposal stays approved and may be retried).
    """

    contract: str
    kind: str  # "upgrade" or "govbase"
    id: int
    state: ProposalState
    votes_for: int
    votes_against: int
    quorum: int | None
    proposer: str | None = None
    name: str | None = None
    height: int | None = None
    info: str | None = None
    action: str | None = None
    created_block: int | None = None
    updated_block: int | None = None
    executed_block: int | None = None
    plan: str | None = None
    status: ProposalState | None = None
    approved: int = 0
    rejected: int = 0
    required: int | None = None
    created_at: int | None = None
    executed_at: int | None = None
    expires_at: int | None = None
    failed_executions: int = 0


class GetProposals(msgspec.Struct, frozen=True):
    """Ask: answered with `list[Proposal]`, every followed contract, by contract then id."""


class SealingActivity(msgspec.Struct, frozen=True, kw_only=True):
    """This node's share of sealing over the node's recent window (`istanbul_status`)."""

    start_block: int
    end_block: int
    blocks: int
    sealed: int  # seal signatures of any type
    committed: int  # committed seals
    authored: int  # blocks proposed


class ChainInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Validator facts for `status` (SPEC §13.2).

    `wbft` is None until the node was asked, False on a chain without `istanbul_*` (every other
    field stays None: the features are off), True with the facts otherwise. `error` says why
    the facts (possibly of an earlier check, see `checked_at`) could not be refreshed.
    """

    wbft: bool | None = None
    node_address: str | None = None
    is_validator: bool | None = None
    validator_count: int | None = None
    quorum: int | None = None
    active_validators: int | None = None
    sealing: SealingActivity | None = None
    checked_at: float | None = None  # unix time of the facts
    error: str | None = None


class GetChainInfo(msgspec.Struct, frozen=True):
    """Ask: answered at once with the latest `ChainInfo` (refreshed by a poller)."""
