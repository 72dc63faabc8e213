"""On-chain governance (SPEC §13.3): the UpgradeGovernance contract on a real anvil, the decoding
of its logs and answers, the GovernanceActor, and the daemon upgrading on an executed proposal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pykka
import pytest
import rlp
from eth_abi import encode
from eth_utils import keccak

from devtools.anvil import AnvilProcess, rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.actors.governance import GovernanceActor
from wemixvisor.bus import Bus
from wemixvisor.chain import governance as gov
from wemixvisor.commands.governance import render_proposals
from wemixvisor.config import Config, load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.messages import events as ev
from wemixvisor.messages.governance import (
    GetChainInfo,
    GetProposals,
    Proposal,
    ProposalState,
)
from wemixvisor.messages.plans import RegisterPlans
from wemixvisor.plans.queue import PlanError

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
ARTIFACT = json.loads((REPO / "contracts" / "UpgradeGovernance.json").read_text())
CONTRACT = "0x" + "12" * 20


# --- the contract on a chain -----------------------------------------------------------------


def create_address(sender: str, nonce: int) -> str:
    """Where a contract deployed by `sender` with `nonce` lands (CREATE)."""
    return "0x" + keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:].hex()


class ContractReverted(AssertionError):
    """A transaction of the test was mined but reverted."""


class UpgradeGovernance:
    """The committed artifact deployed on anvil by its first funded default account."""

    def __init__(self, url: str, *, quorum: int = 2, members: int = 3) -> None:
        self.url = url
        self.accounts: list[str] = rpc_call(url, "eth_accounts")
        self.members = self.accounts[:members]
        args = encode(["address[]", "uint256"], [self.members, quorum]).hex()
        receipt = self._transact(self.accounts[0], {"data": ARTIFACT["bytecode"] + args})
        self.address: str = receipt["contractAddress"]

    def _transact(self, sender: str, fields: dict[str, str], timeout: float = 30.0) -> Any:
        tx = rpc_call(self.url, "eth_sendTransaction", [{"from": sender, **fields}])
        deadline = time.monotonic() + timeout
        while (receipt := rpc_call(self.url, "eth_getTransactionReceipt", [tx])) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"transaction {tx} not mined within {timeout}s")
            time.sleep(0.02)
        if receipt["status"] != "0x1":
            raise ContractReverted(f"transaction {tx} reverted")
        return receipt

    def _call_data(self, function: str, types: list[str], args: list[Any]) -> str:
        return "0x" + ARTIFACT["methodIdentifiers"][function] + encode(types, args).hex()

    def send(self, member: int, function: str, types: list[str], args: list[Any]) -> Any:
        data = self._call_data(function, types, args)
        return self._transact(self.accounts[member], {"to": self.address, "data": data})

    def propose(self, name: str, height: int, info: str = "", member: int = 0) -> tuple[int, int]:
        """(proposal id, block it was created in)."""
        receipt = self.send(
            member,
            "propose(string,uint64,string)",
            ["string", "uint64", "string"],
            [name, height, info],
        )
        return int(receipt["logs"][0]["topics"][1], 16), int(receipt["blockNumber"], 16)

    def approve(self, proposal: int, member: int) -> None:
        self.send(member, "approve(uint256)", ["uint256"], [proposal])

    def disapprove(self, proposal: int, member: int) -> None:
        self.send(member, "disapprove(uint256)", ["uint256"], [proposal])

    def execute(self, proposal: int, member: int = 0) -> int:
        """The block that executed it."""
        receipt = self.send(member, "execute(uint256)", ["uint256"], [proposal])
        return int(receipt["blockNumber"], 16)

    def get_proposal(self, proposal: int) -> gov.ProposalSnapshot:
        data = self._call_data("getProposal(uint256)", ["uint256"], [proposal])
        answer = rpc_call(self.url, "eth_call", [{"to": self.address, "data": data}, "latest"])
        return gov.decode_proposal(bytes.fromhex(answer[2:]))


def head(url: str) -> int:
    return int(rpc_call(url, "eth_blockNumber"), 16)


@pytest.fixture
def chain(anvil_bin_1_5_1: Path, tmp_path: Path) -> Iterator[AnvilProcess]:
    """anvil 1.5.1 mining each transaction at once (automine): votes land in milliseconds."""
    node = AnvilProcess(anvil_bin_1_5_1, tmp_path, block_time=None)
    try:
        node.start()
        yield node
    finally:
        node.kill()


# --- the artifact and the constants ----------------------------------------------------------


def _signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"


def test_the_committed_artifact_is_built_from_the_committed_source() -> None:
    source = (REPO / "contracts" / "UpgradeGovernance.sol").read_bytes()
    assert ARTIFACT["sourceSha256"] == hashlib.sha256(source).hexdigest()
    assert ARTIFACT["compiler"]["version"] in source.decode()
    assert ARTIFACT["bytecode"].startswith("0x60")


def test_the_hand_written_topics_and_selectors_match_the_abi() -> None:
    events = {
        "0x" + keccak(text=_signature(e)).hex(): e["name"]
        for e in ARTIFACT["abi"]
        if e["type"] == "event"
    }
    assert {
        topic: f"Proposal{name.capitalize()}" for topic, name in gov.UPGRADE_TOPICS.items()
    } == (events)
    ids = ARTIFACT["methodIdentifiers"]
    assert ids["getProposal(uint256)"] == gov.GET_PROPOSAL_SELECTOR
    assert ids["quorum()"] == gov.QUORUM_SELECTOR
    govbase = [
        "ProposalCreated(uint256,address,bytes32,uint256,uint256,bytes)",
        "ProposalVoted(uint256,address,bool,uint256,uint256)",
        "ProposalApproved(uint256,address,uint256,uint256)",
        "ProposalRejected(uint256,address,uint256,uint256)",
        "ProposalExecuted(uint256,address,bool)",
        "ProposalFailed(uint256,address,bytes)",
        "ProposalExpired(uint256,address)",
        "ProposalCancelled(uint256,address)",
    ]
    assert {"0x" + keccak(text=s).hex() for s in govbase} == set(gov.GOVBASE_TOPICS)


# --- decoding --------------------------------------------------------------------------------

PROPOSAL_TYPES = ["address", "string", "uint64", "string", "uint256", "uint256", "uint8"]
PROPOSER = "0x" + "ab" * 20


def proposal_answer(**fields: Any) -> bytes:
    values = {
        "proposer": PROPOSER,
        "name": "v1.7.1",
        "height": 120,
        "info": '{"binaries": {}}',
        "approvals": 2,
        "disapprovals": 1,
        "state": 3,
    }
    values.update(fields)
    return encode(PROPOSAL_TYPES, list(values.values()))


def test_get_proposal_answers_decode() -> None:
    snapshot = gov.decode_proposal(proposal_answer())
    assert snapshot == gov.ProposalSnapshot(
        proposer=PROPOSER,
        name="v1.7.1",
        height=120,
        info='{"binaries": {}}',
        approvals=2,
        disapprovals=1,
        state=ProposalState.EXECUTED,
    )
    assert gov.get_proposal_call(1) == "0xc7f758a8" + "00" * 31 + "01"


def _with_word(data: bytes, index: int, value: int) -> bytes:
    return data[: index * 32] + value.to_bytes(32, "big") + data[(index + 1) * 32 :]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (proposal_answer()[:100], "too short"),
        (_with_word(proposal_answer(), 1, 10**6), "outside"),
        (_with_word(proposal_answer(), 1, 33), "outside"),
        (_with_word(proposal_answer(), 6, 9), "unknown proposal state"),
        (_with_word(proposal_answer(), 2, 2**64), "uint64"),
        (_with_word(proposal_answer(), 0, 2**200), "not an address"),
        (proposal_answer(name="x").replace(b"x" + b"\0" * 31, b"\xff" + b"\0" * 31), "UTF-8"),
    ],
    ids=["truncated", "offset-past-end", "misaligned", "state", "height", "address", "utf8"],
)
def test_hostile_get_proposal_answers_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(gov.AbiError, match=problem):
        gov.decode_proposal(data)


def test_a_string_longer_than_the_limit_is_refused_without_reading_it() -> None:
    data = proposal_answer()
    name_offset = int.from_bytes(data[32:64], "big")
    huge = data[:name_offset] + (2**40).to_bytes(32, "big") + data[name_offset + 32 :]
    with pytest.raises(gov.AbiError, match="limit"):
        gov.decode_proposal(huge)


def log(
    topic: str,
    *topics: int | str,
    data: bytes = b"",
    block: int = 5,
    index: int = 0,
    address: str = CONTRACT,
    removed: bool = False,
) -> dict[str, Any]:
    words = [t if isinstance(t, str) else "0x" + t.to_bytes(32, "big").hex() for t in topics]
    return {
        "address": address,
        "topics": [topic, *words],
        "data": "0x" + data.hex(),
        "blockNumber": hex(block),
        "logIndex": hex(index),
        "removed": removed,
        "transactionHash": "0x" + "00" * 32,
    }


def topic_of(table: dict[str, str], event: str) -> str:
    return next(topic for topic, name in table.items() if name == event)


def test_upgrade_contract_logs_decode() -> None:
    up = gov.UPGRADE_TOPICS
    proposer = int(PROPOSER, 16)
    created = gov.decode_log(
        "upgrade",
        CONTRACT,
        log(topic_of(up, "created"), 4, proposer, data=encode(["string", "uint64"], ["v2", 99])),
    )
    assert created == gov.ProposalEvent(
        event="created", id=4, block=5, log_index=0, proposer=PROPOSER, name="v2", height=99
    )
    voted = gov.decode_log(
        "upgrade", CONTRACT, log(topic_of(up, "voted"), 4, proposer, data=encode(["bool"], [False]))
    )
    assert voted is not None
    assert voted.approve is False
    executed = gov.decode_log(
        "upgrade",
        CONTRACT.upper().replace("0X", "0x"),
        log(topic_of(up, "executed"), 4, block=9, index=3),
    )
    assert executed is not None
    assert (executed.event, executed.block, executed.log_index) == ("executed", 9, 3)


def test_govbase_logs_carry_their_counts() -> None:
    gb = gov.GOVBASE_TOPICS
    action = keccak(text="ACTION_MINT")
    created = gov.decode_log(
        "govbase",
        CONTRACT,
        log(
            topic_of(gb, "created"),
            7,
            int(PROPOSER, 16),
            data=encode(["bytes32", "uint256", "uint256", "bytes"], [action, 1, 3, b"\x01\x02"]),
        ),
    )
    assert created is not None
    assert (created.quorum, created.action) == (3, "0x" + action.hex())
    voted = gov.decode_log(
        "govbase",
        CONTRACT,
        log(
            topic_of(gb, "voted"),
            7,
            int(PROPOSER, 16),
            data=encode(["bool", "uint256", "uint256"], [True, 2, 1]),
        ),
    )
    assert voted is not None
    assert (voted.votes_for, voted.votes_against) == (2, 1)
    failed = gov.decode_log(
        "govbase",
        CONTRACT,
        log(
            topic_of(gb, "executed"),
            7,
            int(PROPOSER, 16),
            data=encode(["bool"], [False]),
        ),
    )
    assert failed is not None
    assert failed.success is False


def test_other_logs_are_skipped_and_malformed_ones_refused() -> None:
    executed = topic_of(gov.UPGRADE_TOPICS, "executed")
    assert gov.decode_log("upgrade", CONTRACT, log("0x" + "ee" * 32, 1)) is None
    assert gov.decode_log("upgrade", CONTRACT, log(executed, 1, removed=True)) is None
    assert gov.decode_log("upgrade", CONTRACT, log(executed, 1, address="0x" + "34" * 20)) is None
    # A GovBase topic means nothing on an upgrade contract, and the reverse.
    assert gov.decode_log("upgrade", CONTRACT, log(topic_of(gov.GOVBASE_TOPICS, "voted"), 1)) is (
        None
    )
    with pytest.raises(gov.AbiError, match="proposal id"):
        gov.decode_log("upgrade", CONTRACT, log(executed))
    with pytest.raises(gov.AbiError, match="malformed log"):
        gov.decode_log("upgrade", CONTRACT, {"address": CONTRACT, "topics": "x"})
    bad_block = {**log(executed, 1), "blockNumber": "12"}
    with pytest.raises(gov.AbiError, match="blockNumber"):
        gov.decode_log("upgrade", CONTRACT, bad_block)
    with pytest.raises(gov.AbiError, match="hex"):
        gov.decode_log("upgrade", CONTRACT, {**log(executed, 1), "data": "0xabc"})


# --- folding and the plan --------------------------------------------------------------------


def event(
    kind: str, proposal: int = 1, block: int = 1, index: int = 0, **fields: Any
) -> gov.ProposalEvent:
    return gov.ProposalEvent(event=kind, id=proposal, block=block, log_index=index, **fields)


def test_folding_govbase_events_follows_the_proposal_through_its_life() -> None:
    events = [
        event("created", block=1, proposer=PROPOSER, quorum=2, action="0x01"),
        event("voted", block=2, approve=True, votes_for=1, votes_against=0),
        event("approved", block=3, votes_for=2, votes_against=0),
        event("executed", block=4, success=True),
    ]
    changed, executed = gov.fold(
        {},
        contract=CONTRACT,
        kind="govbase",
        quorum=None,
        events=events,
        snapshots={},
        to_block=4,
    )
    proposal = changed[1]
    assert (proposal.state, proposal.votes_for, proposal.quorum) == (ProposalState.EXECUTED, 2, 2)
    assert (proposal.created_block, proposal.executed_block) == (1, 4)
    assert executed == [1]
    # Out of order within a batch is put back in chain order; a later batch continues.
    again, _ = gov.fold(
        {},
        contract=CONTRACT,
        kind="govbase",
        quorum=None,
        events=list(reversed(events[:2])),
        snapshots={},
        to_block=2,
    )
    later, _ = gov.fold(
        again,
        contract=CONTRACT,
        kind="govbase",
        quorum=None,
        events=[event("rejected", block=5, votes_for=1, votes_against=2)],
        snapshots={},
        to_block=5,
    )
    assert later[1].state is ProposalState.REJECTED
    assert (later[1].votes_for, later[1].votes_against) == (1, 2)


def test_an_upgrade_snapshot_is_the_contract_s_word_on_the_proposal() -> None:
    snapshot = gov.decode_proposal(proposal_answer(state=1, approvals=2, disapprovals=0))
    changed, executed = gov.fold(
        {},
        contract=CONTRACT,
        kind="upgrade",
        quorum=2,
        events=[event("voted", block=8, approve=True)],
        snapshots={1: snapshot},
        to_block=9,
    )
    proposal = changed[1]
    assert proposal.state is ProposalState.APPROVED
    assert (proposal.votes_for, proposal.name, proposal.height) == (2, "v1.7.1", 120)
    assert proposal.updated_block == 9
    assert executed == []


def executed_proposal(**fields: Any) -> Proposal:
    values: dict[str, Any] = {
        "contract": CONTRACT,
        "kind": "upgrade",
        "id": 1,
        "state": ProposalState.EXECUTED,
        "votes_for": 2,
        "votes_against": 0,
        "quorum": 2,
        "name": "v1.7.1",
        "height": 100,
        "info": "",
        "executed_block": 50,
    }
    values.update(fields)
    return Proposal(**values)


def test_an_executed_proposal_becomes_a_governance_plan() -> None:
    plan = gov.plan_from_proposal(executed_proposal(info='{"binaries": {"any": "https://x/y"}}'))
    assert (plan.name, plan.height, plan.source) == ("v1.7.1", 100, "governance")
    assert plan.info == {"binaries": {"any": "https://x/y"}}
    assert gov.plan_from_proposal(executed_proposal(info="https://host/plan.json")).info_url


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "../evil"}, "invalid name"),
        ({"name": ""}, "invalid name"),
        ({"height": 50}, "has passed"),
        ({"height": 0}, "height must be > 0"),
        ({"height": 2**64 - 1}, "out of range"),
        ({"info": "{not json"}, "info"),
        ({"info": "[1, 2]"}, "info must hold a JSON object"),
        ({"info": '{"binaries": "x"}'}, "binaries"),
        ({"name": None}, "could not be read"),
    ],
)
def test_bad_proposal_data_never_becomes_a_plan(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        gov.plan_from_proposal(executed_proposal(**fields))


def test_an_unreadable_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "governance.json"
    state = gov.GovernanceState(
        contracts=[gov.ContractProgress(address=CONTRACT, kind="upgrade", next_block=7)],
        proposals=[executed_proposal(plan="registered")],
    )
    gov.save_state(path, state)
    assert gov.load_state(path) == state
    path.write_text("{half")
    assert gov.load_state(path) == gov.GovernanceState()
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1
    assert names[0].startswith("governance.json.unreadable-")


# --- the actor on a real chain ---------------------------------------------------------------


class Inbox:
    """Messages a stand-in actor received; waiting for one under a deadline."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def put(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def of(self, kind: type[T]) -> list[T]:
        with self._changed:
            return [item for item in self.items if isinstance(item, kind)]

    def wait_for(
        self, kind: type[T], where: Callable[[T], bool] = lambda _: True, timeout: float = 10.0
    ) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for item in self.items:
                    if isinstance(item, kind) and where(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching {kind.__name__}; got {self.items[-8:]!r}")
                self._changed.wait(left)


class StandIn(pykka.ThreadingActor):
    """Plays the orchestrator (answering RegisterPlans like the queue would) or the events
    publisher, recording what it is told."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox
        self.queued: set[str] = set()

    def on_receive(self, message: Any) -> Any:
        self.inbox.put(message)
        if isinstance(message, RegisterPlans) and message.done is not None:
            answers = []
            for plan in message.plans:
                answers.append((plan.name, "unchanged" if plan.name in self.queued else "added"))
                self.queued.add(plan.name)
            message.done.set(answers)
        return None


class World:
    """A bus with stand-ins for the orchestrator and the events publisher, and a home whose
    config.toml follows one contract."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.home = Home(root=root, name="anvil", data_dir=root / "data")
        self.bus = Bus()
        self.plans = Inbox()
        self.events = Inbox()
        self.bus.register("events", StandIn.start(self.events))
        self.actor: pykka.ActorRef[Any] | None = None

    def config(self, contract: str, confirmations: int = 0) -> Config:
        toml = self.root / "wemixvisor" / "config.toml"
        toml.parent.mkdir(parents=True, exist_ok=True)
        toml.write_text(
            "[governance]\n"
            f'contracts = [{{address = "{contract}", kind = "upgrade"}}]\n'
            f"confirmations = {confirmations}\n"
            'poll_interval = "50ms"\n'
        )
        return load_config(
            env={
                "DAEMON_HOME": str(self.root),
                "DAEMON_RPC_ADDRESS": self.url,
                "DAEMON_RPC_TIMEOUT": "2s",
            }
        )

    def start(self, contract: str, confirmations: int = 0) -> pykka.ActorRef[Any]:
        self.actor = GovernanceActor.start(
            config=self.config(contract, confirmations), home=self.home, bus=self.bus
        )
        self.bus.register("governance", self.actor)
        return self.actor

    def orchestrator(self) -> None:
        self.bus.register("orchestrator", StandIn.start(self.plans))

    def stop(self) -> None:
        if self.actor is not None:
            self.actor.stop()
            self.actor = None

    def proposals(self) -> list[Proposal]:
        assert self.actor is not None
        answer = self.actor.ask(GetProposals(), timeout=2)
        assert isinstance(answer, list)
        return answer

    def proposal_event(self, proposal: int, state: str) -> ev.GovernanceProposal:
        return self.events.wait_for(
            ev.GovernanceProposal, lambda e: e.id == proposal and e.state == state
        )


@pytest.fixture
def world(tmp_path: Path, chain: AnvilProcess) -> Iterator[World]:
    world = World(tmp_path / "home", chain.url)
    try:
        yield world
    finally:
        world.stop()
        pykka.ActorRegistry.stop_all()


def test_the_actor_turns_only_executed_valid_proposals_into_plans_once(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url)
    world.start(contract.address)
    far = head(chain.url) + 1000

    approved, _ = contract.propose("v1.7.1", far, '{"binaries": {}}')
    contract.approve(approved, 0)
    contract.approve(approved, 1)
    one_vote, _ = contract.propose("v9.9.9", far + 1)
    contract.approve(one_vote, 2)
    turned_down, _ = contract.propose("v8.8.8", far + 2)
    contract.disapprove(turned_down, 1)
    contract.disapprove(turned_down, 2)
    with pytest.raises(ContractReverted):
        contract.execute(turned_down)
    with pytest.raises(ContractReverted):
        contract.execute(one_vote)
    bad_name, _ = contract.propose("../../bin", far + 3)
    passed, created = contract.propose("v-late", 1)
    bad_info, _ = contract.propose("v-info", far + 4, "{not json")
    for proposal in (bad_name, passed, bad_info):
        contract.approve(proposal, 0)
        contract.approve(proposal, 2)

    assert world.proposal_event(turned_down, "rejected").votes_against == 2
    one = world.proposal_event(one_vote, "voting")
    world.events.wait_for(ev.GovernanceProposal, lambda e: e.id == one_vote and e.votes_for == 1)
    assert (one.quorum, one.name) == (2, "v9.9.9")
    world.proposal_event(approved, "approved")

    # The orchestrator comes up after the actor (as in the daemon): the plan waits for it.
    for proposal in (approved, bad_name, passed, bad_info):
        contract.execute(proposal)
    rejected = [
        world.events.wait_for(ev.PlanRejected, lambda e, n=n: n in e.reason)
        for n in ("invalid name", "has passed", "info is neither")
    ]
    assert {r.source for r in rejected} == {"governance"}
    assert rejected[0].name is None  # not a valid name: not repeated in the event
    world.orchestrator()
    registered = world.plans.wait_for(RegisterPlans)
    assert registered.source == "governance"
    assert [(p.name, p.height, p.source) for p in registered.plans] == [
        ("v1.7.1", far, "governance")
    ]
    world.proposal_event(approved, "executed")

    def settled() -> bool:
        by_id = {p.id: p for p in world.proposals()}
        return by_id[approved].plan == "registered"

    wait_until(settled)
    by_id = {p.id: p for p in world.proposals()}
    assert by_id[one_vote].state is ProposalState.VOTING
    assert by_id[turned_down].state is ProposalState.REJECTED
    assert by_id[passed].plan is not None
    assert by_id[passed].plan.startswith("rejected: height 1 has passed")
    assert by_id[passed].created_block == created
    assert by_id[approved].executed_block is not None

    # A restarted actor resumes where it was: nothing is handled twice, the proposals stay
    # known, and an execution after the restart is handled once.
    world.stop()
    later, _ = contract.propose("v2.0.0", far + 5)
    contract.approve(later, 1)
    contract.approve(later, 2)
    world.plans.items.clear()
    world.events.items.clear()
    world.start(contract.address)
    assert {p.id for p in world.proposals()} >= {approved, one_vote, turned_down}
    world.proposal_event(later, "approved")
    contract.execute(later, 1)
    again = world.plans.wait_for(RegisterPlans, lambda m: m.plans[0].name == "v2.0.0")
    assert again.source == "governance"
    # The resend of earlier plans (the queue may not have taken them before the restart) is
    # of the plan already registered only; v1.7.1 is not re-registered as a new plan.
    names = [m.plans[0].name for m in world.plans.of(RegisterPlans)]
    assert names.count("v2.0.0") == 1
    assert not world.events.of(ev.PlanRejected)
    assert world.actor is not None
    assert world.actor.ask(GetProposals(), timeout=2) == world.proposals()


def test_confirmations_hold_an_execution_back_until_enough_blocks_follow(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url)
    world.orchestrator()
    world.start(contract.address, confirmations=3)
    proposal, _ = contract.propose("v1.7.1", head(chain.url) + 1000)
    contract.approve(proposal, 0)
    contract.approve(proposal, 1)
    executed_at = contract.execute(proposal)
    rpc_call(chain.url, "anvil_mine", ["0x2"])
    world.proposal_event(proposal, "approved")
    time.sleep(0.3)  # several poll intervals: the execution must not be seen yet
    assert not world.plans.of(RegisterPlans)
    rpc_call(chain.url, "anvil_mine", ["0x1"])
    assert head(chain.url) == executed_at + 3
    world.plans.wait_for(RegisterPlans)
    assert len(world.plans.of(RegisterPlans)) == 1


def test_a_plan_handed_over_before_a_restart_is_handed_over_again(world: World) -> None:
    # The daemon stopped after telling the orchestrator, before its answer: the queue may not
    # have the plan, so the next run tells it again, once the orchestrator is there.
    gov.save_state(
        world.home.state_dir / "governance.json",
        gov.GovernanceState(
            contracts=[gov.ContractProgress(address=CONTRACT, kind="upgrade", next_block=1)],
            proposals=[executed_proposal(height=10**6, plan="sent")],
        ),
    )
    world.start(CONTRACT)
    world.orchestrator()
    message = world.plans.wait_for(RegisterPlans)
    assert [(p.name, p.source) for p in message.plans] == [("v1.7.1", "governance")]
    wait_until(lambda: world.proposals()[0].plan == "registered")
    assert len(world.plans.of(RegisterPlans)) == 1


def test_without_contracts_the_actor_has_nothing_and_no_follower(
    tmp_path: Path, chain: AnvilProcess
) -> None:
    world = World(tmp_path / "home", chain.url)
    config = load_config(env={"DAEMON_HOME": str(world.root), "DAEMON_RPC_ADDRESS": chain.url})
    actor = GovernanceActor.start(config=config, home=world.home, bus=world.bus)
    try:
        assert actor.ask(GetProposals(), timeout=2) == []
        assert not [t for t in threading.enumerate() if t.name == "governance-logs"]
        wait_until(lambda: actor.ask(GetChainInfo(), timeout=2).wbft is False)
    finally:
        actor.stop()
        pykka.ActorRegistry.stop_all()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --- the daemon ------------------------------------------------------------------------------


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


class GovernedHome:
    """A home whose node is anvil 1.5.1 mining every 0.5 s, following the UpgradeGovernance
    contract that the first default account will deploy (its address is known in advance)."""

    BLOCK_TIME = "0.5"

    def __init__(self, root: Path, genesis: Path, port: int, *, state: bool) -> None:
        self.home = root / "home"
        self.layout = Home(root=self.home, name="anvil", data_dir=self.home / "data")
        init_home(self.layout, genesis)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.contract = create_address("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", 0)
        (self.home / "wemixvisor" / "config.toml").write_text(
            "[governance]\n"
            f'contracts = [{{address = "{self.contract}", kind = "upgrade"}}]\n'
            'poll_interval = "200ms"\n'
        )
        self.args = ["--port", str(port), "--block-time", self.BLOCK_TIME]
        if state:
            self.args += ["--state", str(self.home / "data" / "state.json")]
        self.daemons: list[Daemon] = []

    def daemon(self, **env: str) -> Daemon:
        base = {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": self.url,
            "DAEMON_POLL_INTERVAL": "100ms",
            "DAEMON_STARTSECS": "300ms",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "UNSAFE_SKIP_BACKUP": "true",
        }
        daemon = Daemon(self.home, {**base, **env}, self.args).start()
        self.daemons.append(daemon)
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


@pytest.fixture
def governed(
    root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> Iterator[Callable[..., GovernedHome]]:
    homes: list[GovernedHome] = []

    def make(*, state: bool = False) -> GovernedHome:
        made = GovernedHome(root / f"g{len(homes)}", anvil_bin_1_5_1, free_port(), state=state)
        homes.append(made)
        return made

    yield make
    for made in homes:
        made.stop()


def test_an_executed_proposal_upgrades_the_node_at_its_height(
    governed: Callable[..., GovernedHome], anvil_bin_1_7_1: Path
) -> None:
    chain = governed()
    add_upgrade(chain.layout, "v1.7.1", anvil_bin_1_7_1)
    # Validator mode on a chain without istanbul_*: the validator features switch off quietly.
    daemon = chain.daemon(VALIDATOR_MODE="true")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        contract = UpgradeGovernance(chain.url)
        assert contract.address == chain.contract
        height = head(chain.url) + 16
        upgrade, _ = contract.propose("v1.7.1", height, '{"binaries": {}}')
        one_vote, _ = contract.propose("v9.9.9", height + 50)
        turned_down, _ = contract.propose("v8.8.8", height + 60)
        bad, _ = contract.propose("no/slashes", height + 70)
        contract.approve(upgrade, 1)
        contract.approve(upgrade, 2)
        contract.approve(one_vote, 1)
        contract.disapprove(turned_down, 1)
        contract.disapprove(turned_down, 2)
        contract.approve(bad, 0)
        contract.approve(bad, 1)
        contract.execute(bad)
        contract.execute(upgrade)

        rejected = events.wait_for("plan.rejected")
        assert rejected["source"] == "governance"
        assert "invalid name" in rejected["reason"]
        registered = events.wait_for("plan.registered")
        assert (registered["name"], registered["height"]) == ("v1.7.1", height)
        assert registered["source"] == "governance"
        completed = events.wait_for("upgrade.completed", timeout=60)
        assert completed["name"] == "v1.7.1"
        wait_for_rpc(chain.url, timeout=10)
        assert rpc_call(chain.url, "web3_clientVersion") == "anvil/v1.7.1"
        events.wait_for("supervisor.heartbeat")
        events.wait_for("supervisor.heartbeat")

        proposals = [p for p in events.seen if p["topic"] == "governance.proposal"]
        states = {(p["id"], p["state"]) for p in proposals}
        assert {(upgrade, "voting"), (upgrade, "approved"), (upgrade, "executed")} <= states
        assert (turned_down, "rejected") in states
        assert not {(one_vote, s) for s in ("approved", "executed")} & states
        assert [p["name"] for p in events.seen if p["topic"] == "plan.registered"] == ["v1.7.1"]
        assert not [p for p in events.seen if p["topic"].startswith("validator.")]
    finally:
        events.close()
    assert daemon.terminate() == 0
    noisy = [
        line
        for line in daemon.log_text().splitlines()
        if "istanbul" in line and ("WARNING" in line or "ERROR" in line)
    ]
    assert noisy == []


def test_a_daemon_restarted_between_the_vote_and_the_execution_registers_the_plan_once(
    governed: Callable[..., GovernedHome], anvil_bin_1_7_1: Path
) -> None:
    chain = governed(state=True)
    add_upgrade(chain.layout, "v1.7.1", anvil_bin_1_7_1)
    first = chain.daemon()
    events = EventLog(first.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        contract = UpgradeGovernance(chain.url)
        proposal, _ = contract.propose("v1.7.1", head(chain.url) + 10_000)
        contract.approve(proposal, 0)
        contract.approve(proposal, 2)
        events.wait_for(
            "governance.proposal", lambda p: p["id"] == proposal and p["state"] == "approved"
        )
    finally:
        events.close()
    # Killed outright: its node keeps mining and is adopted by the next daemon.
    first.kill()

    second = chain.daemon()
    events = EventLog(second.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        executed_at = contract.execute(proposal, 1)
        registered = events.wait_for("plan.registered")
        assert (registered["name"], registered["source"]) == ("v1.7.1", "governance")
        events.wait_for("height.observed", lambda p: p["height"] >= executed_at + 4)
        assert len([p for p in events.seen if p["topic"] == "plan.registered"]) == 1
        executed = [
            p for p in events.seen if p["topic"] == "governance.proposal" and p["id"] == proposal
        ]
        assert [p["state"] for p in executed] == ["executed"]
    finally:
        events.close()
    assert second.terminate() == 0

    # A third run reads on from where the second stopped: the execution is not seen again.
    third = chain.daemon()
    events = EventLog(third.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        now = head(chain.url)
        events.wait_for("height.observed", lambda p: p["height"] >= now + 4)
        assert not [p for p in events.seen if p["topic"] == "plan.registered"]
        state = msgspec.json.decode(
            (chain.home / "wemixvisor" / "state" / "governance.json").read_bytes()
        )
        assert [p["plan"] for p in state["proposals"]] == ["registered"]

        # The operator asks the daemon (control socket) for what it follows.
        listed = cli(third, "governance", "proposals", "--json")
        assert [(p["id"], p["state"], p["plan"]) for p in listed["proposals"]] == [
            (proposal, "executed", "registered")
        ]
        table = cli(third, "governance", "proposals")
        assert f"{chain.contract}  upgrade  {proposal}" in table
        assert "v1.7.1 at" in table
    finally:
        events.close()
    assert third.terminate() == 0


def cli(daemon: Daemon, *args: str) -> Any:
    """Run the operator tool against the daemon's home; JSON output decoded."""
    completed = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(completed.stdout) if "--json" in args else completed.stdout


def test_the_proposals_table_names_each_plan_and_its_fate() -> None:
    result = {
        "proposals": [
            msgspec.to_builtins(executed_proposal(plan="registered")),
            msgspec.to_builtins(
                Proposal(
                    contract=CONTRACT,
                    kind="govbase",
                    id=3,
                    state=ProposalState.VOTING,
                    votes_for=1,
                    votes_against=0,
                    quorum=2,
                    action="0x01",
                )
            ),
        ]
    }
    lines = render_proposals(result).splitlines()
    assert lines[0].split() == [
        "CONTRACT",
        "KIND",
        "ID",
        "STATE",
        "FOR",
        "AGAINST",
        "QUORUM",
        "PLAN",
    ]
    assert lines[1].split()[1:] == [
        "upgrade",
        "1",
        "executed",
        "2",
        "0",
        "2",
        "v1.7.1",
        "at",
        "100:",
        "registered",
    ]
    assert lines[2].endswith("action 0x01")
    assert render_proposals({"proposals": [], "note": "no actor"}) == "no proposals (no actor)"
