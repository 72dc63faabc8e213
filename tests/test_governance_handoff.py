"""What the GovernanceActor does with a proposal: the hand-off decision, without a chain."""

from __future__ import annotations

import msgspec
import pytest

from wemixvisor.actors.governance import Handoff, decide_handoff
from wemixvisor.messages.governance import Proposal, ProposalState

VOTING = Proposal(
    contract="0xabc",
    kind="upgrade",
    id=1,
    state=ProposalState.VOTING,
    votes_for=1,
    votes_against=0,
    quorum=3,
    name="v2",
    height=500,
    executed_block=None,
)


def proposal(**changes: object) -> Proposal:
    return msgspec.structs.replace(VOTING, **changes)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (proposal(), Handoff.TRACK),
        (proposal(state=ProposalState.APPROVED), Handoff.TRACK),
        (proposal(state=ProposalState.REJECTED), Handoff.IGNORE),
        (proposal(kind="govbase", state=ProposalState.EXECUTED), Handoff.IGNORE),
        (proposal(state=ProposalState.EXECUTED, executed_block=400), Handoff.HAND_OVER),
        (proposal(state=ProposalState.EXECUTED, plan="pending"), Handoff.HAND_OVER),
        (proposal(state=ProposalState.EXECUTED, plan="sent"), Handoff.HANDED),
        (proposal(state=ProposalState.EXECUTED, plan="registered"), Handoff.HANDED),
        (proposal(state=ProposalState.EXECUTED, plan="rejected: bad"), Handoff.HANDED),
    ],
)
def test_decision(case: Proposal, expected: Handoff) -> None:
    assert decide_handoff(case)[0] is expected


def test_an_executed_proposal_whose_height_passed_is_rejected_with_the_reason() -> None:
    executed = proposal(state=ProposalState.EXECUTED, executed_block=600)
    decision, reason = decide_handoff(executed, executed=True)
    assert decision is Handoff.REJECT
    assert "height 500 has passed" in reason


def test_an_unreadable_proposal_is_rejected() -> None:
    decision, reason = decide_handoff(proposal(), executed=True, unreadable="reverted")
    assert decision is Handoff.REJECT
    assert reason == "proposal 1 is unreadable: reverted"
