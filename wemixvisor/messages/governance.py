"""Messages of the GovernanceActor (SPEC §13.2, §13.3): proposals followed, and chain facts."""

from __future__ import annotations

import enum

import msgspec


class ProposalState(enum.StrEnum):
    """Where a proposal is in its life (UpgradeGovernance uses the first four)."""

    VOTING = "voting"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXECUTED = "executed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"  # GovBase: executed, but its action reverted


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    """One proposal of a followed contract, as of the last processed block.

    `name`, `height` and `info` are an `upgrade` contract's plan data; `action` is a GovBase
    proposal's action type. `plan` says what the daemon did with an executed upgrade proposal:
    `registered`, `rejected: <reason>`, or `pending` while the orchestrator has not taken it.
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
