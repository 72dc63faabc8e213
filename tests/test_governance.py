"""On-chain governance (SPEC §13.3): the GovBase dialect as UpgradeGovernance speaks it on a real
anvil, its decoding (cross-checked with eth_abi as an independent reference), the folding of
proposals, hostile logs and nodes, the GovernanceActor, and the daemon upgrading on an executed
proposal.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import itertools
import json
import os
import random
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
from eth_abi import decode, encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools import build_contracts
from devtools.anvil import AnvilProcess, RpcError, rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.support import Inbox, wait_until
from wemixvisor.actors.governance import GovernanceActor
from wemixvisor.bus import Bus
from wemixvisor.chain import governance as gov
from wemixvisor.commands.governance import render_proposals
from wemixvisor.config import Config, load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.messages import events as ev
from wemixvisor.messages.governance import GetChainInfo, GetProposals, Proposal, ProposalState
from wemixvisor.messages.plans import RegisterPlans
from wemixvisor.plans.queue import PlanError

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
ARTIFACT = json.loads((REPO / "contracts" / "UpgradeGovernance.json").read_text())
CONTRACT = "0x" + "12" * 20
PROPOSER = "0x" + "ab" * 20
EXPIRY = 3600
UPGRADE = keccak(text="UPGRADE")

# SPEC §13.3, written out here: the dialect the contract and the decoder must both speak.
EVENTS = {
    "ProposalCreated": "ProposalCreated(uint256,address,bytes32,uint256,uint256,bytes)",
    "ProposalVoted": "ProposalVoted(uint256,address,bool,uint256,uint256)",
    "ProposalApproved": "ProposalApproved(uint256,address,uint256,uint256)",
    "ProposalRejected": "ProposalRejected(uint256,address,uint256,uint256)",
    "ProposalExecuted": "ProposalExecuted(uint256,address,bool)",
    "ProposalFailed": "ProposalFailed(uint256,address,bytes)",
    "ProposalExpired": "ProposalExpired(uint256,address)",
    "ProposalCancelled": "ProposalCancelled(uint256,address)",
}
PROPOSAL_STRUCT = (
    "(bytes32,uint256,uint256,uint256,uint256,address,uint32,uint32,uint32,uint8,bytes)"
)
STATUS = {
    "none": 0,
    "voting": 1,
    "approved": 2,
    "executed": 3,
    "cancelled": 4,
    "expired": 5,
    "failed": 6,
    "rejected": 7,
}


def topic(event: str) -> str:
    return "0x" + keccak(text=EVENTS[event]).hex()


def selector(signature: str) -> str:
    return keccak(text=signature)[:4].hex()


def create_address(sender: str, nonce: int) -> str:
    """Where a contract deployed by `sender` with `nonce` lands (CREATE)."""
    return "0x" + keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:].hex()


class ContractReverted(AssertionError):
    """A transaction of the test reverted."""


def transact(url: str, sender: str, fields: dict[str, str], timeout: float = 30.0) -> Any:
    try:
        tx = rpc_call(url, "eth_sendTransaction", [{"from": sender, **fields}])
    except RpcError as exc:
        if "revert" in str(exc).lower():
            raise ContractReverted(str(exc)) from None
        raise
    deadline = time.monotonic() + timeout
    while (receipt := rpc_call(url, "eth_getTransactionReceipt", [tx])) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"transaction {tx} not mined within {timeout}s")
        time.sleep(0.02)
    if receipt["status"] != "0x1":
        raise ContractReverted(f"transaction {tx} reverted")
    return receipt


class UpgradeGovernance:
    """The committed artifact deployed on anvil by its first funded default account; calls are
    encoded here with eth_abi and selectors computed from the signatures, independently of the
    daemon's decoder."""

    def __init__(self, url: str, *, quorum: int = 2, members: int = 3, expiry: int = EXPIRY):
        self.url = url
        self.accounts: list[str] = rpc_call(url, "eth_accounts")
        self.members = self.accounts[:members]
        args = encode(["address[]", "uint32", "uint256"], [self.members, quorum, expiry]).hex()
        receipt = transact(url, self.accounts[0], {"data": ARTIFACT["bytecode"] + args})
        self.address: str = receipt["contractAddress"]

    def send(self, member: int, signature: str, args: list[Any]) -> Any:
        types = signature[signature.index("(") + 1 : -1].split(",") if "()" not in signature else []
        data = "0x" + selector(signature) + encode(types, args).hex()
        return transact(self.url, self.accounts[member], {"to": self.address, "data": data})

    def propose(self, name: str, height: int, info: str = "", member: int = 0) -> tuple[int, Any]:
        """(proposal id, receipt)."""
        receipt = self.send(member, "proposeUpgrade(string,uint64,string)", [name, height, info])
        return int(receipt["logs"][0]["topics"][1], 16), receipt

    def approve(self, proposal: int, member: int) -> Any:
        return self.send(member, "approveProposal(uint256)", [proposal])

    def disapprove(self, proposal: int, member: int) -> Any:
        return self.send(member, "disapproveProposal(uint256)", [proposal])

    def cancel(self, proposal: int, member: int) -> Any:
        return self.send(member, "cancelProposal(uint256)", [proposal])

    def execute(self, proposal: int, member: int = 0) -> Any:
        return self.send(member, "executeProposal(uint256)", [proposal])

    def call(self, signature: str, args: list[Any], result: list[str]) -> Any:
        types = signature[signature.index("(") + 1 : -1].split(",") if "()" not in signature else []
        data = "0x" + selector(signature) + encode(types, args).hex()
        answer = rpc_call(self.url, "eth_call", [{"to": self.address, "data": data}, "latest"])
        return decode(result, bytes.fromhex(answer[2:]))

    def get_proposal(self, proposal: int) -> tuple[Any, ...]:
        (record,) = self.call("getProposal(uint256)", [proposal], [PROPOSAL_STRUCT])
        return tuple(record)


def events_of(receipt: Any) -> list[str]:
    names = {topic(name): name for name in EVENTS}
    return [names.get(entry["topics"][0], "?") for entry in receipt["logs"]]


def head(url: str) -> int:
    return int(rpc_call(url, "eth_blockNumber"), 16)


def pass_expiry(url: str) -> None:
    rpc_call(url, "evm_increaseTime", [EXPIRY + 1])
    rpc_call(url, "evm_mine")


@pytest.fixture
def chain(anvil_bin_1_5_1: Path, tmp_path: Path) -> Iterator[AnvilProcess]:
    """anvil 1.5.1 mining each transaction at once (automine): votes land in milliseconds."""
    node = AnvilProcess(anvil_bin_1_5_1, tmp_path, block_time=None)
    try:
        node.start()
        yield node
    finally:
        node.kill()


def test_the_committed_artifact_is_built_from_the_committed_source() -> None:
    source = (REPO / "contracts" / "UpgradeGovernance.sol").read_bytes()
    assert ARTIFACT["sourceSha256"] == hashlib.sha256(source).hexdigest()
    assert ARTIFACT["compiler"]["version"] in source.decode()
    assert ARTIFACT["bytecode"].startswith("0x60")


def test_the_packaged_abi_is_the_committed_artifacts_abi() -> None:
    # The installed daemon reads the ABI from the package, never from the repository.
    packaged = Path(gov.__file__).resolve().parent / "UpgradeGovernance.abi.json"
    assert json.loads(packaged.read_text()) == ARTIFACT["abi"]
    assert build_contracts.render_abi(ARTIFACT) == packaged.read_text()


def test_the_abi_speaks_the_govbase_dialect_exactly() -> None:
    dialect = gov.dialect()
    assert {e.topic: e.name for e in dialect.events.values()} == {
        topic(name): name for name in EVENTS
    }
    for event in dialect.events.values():
        assert event.indexed_types == ("uint256", "address")
    ids = ARTIFACT["methodIdentifiers"]
    for signature in (
        "proposeUpgrade(string,uint64,string)",
        "approveProposal(uint256)",
        "disapproveProposal(uint256)",
        "cancelProposal(uint256)",
        "executeProposal(uint256)",
        "expireProposal(uint256)",
        "getProposal(uint256)",
        "quorum()",
        "proposalExpiry()",
    ):
        assert ids[signature] == selector(signature)
        assert dialect.function(signature[: signature.index("(")]).selector.hex() == ids[signature]
    assert dialect.function("getProposal").outputs == (PROPOSAL_STRUCT,)
    assert dialect.function("quorum").outputs == ("uint32",)
    constructor = next(e for e in ARTIFACT["abi"] if e["type"] == "constructor")
    assert [i["type"] for i in constructor["inputs"]] == ["address[]", "uint32", "uint256"]
    status = next(
        i
        for e in ARTIFACT["abi"]
        if e.get("name") == "getProposal"
        for i in e["outputs"][0]["components"]
        if i["name"] == "status"
    )
    assert status["internalType"] == "enum UpgradeGovernance.ProposalStatus"
    assert "0x" + UPGRADE.hex() == gov.UPGRADE_ACTION
    assert (
        gov.call_data("getProposal", 7)
        == "0x" + selector("getProposal(uint256)") + encode(["uint256"], [7]).hex()
    )


def record(**fields: Any) -> bytes:
    """A getProposal answer, encoded with eth_abi."""
    values = {
        "action": UPGRADE,
        "version": 1,
        "bitmap": 0b11,
        "created": 1_700_000_000,
        "executed": 1_700_000_100,
        "proposer": PROPOSER,
        "required": 2,
        "approved": 2,
        "rejected": 0,
        "status": STATUS["executed"],
        "call_data": encode(["string", "uint64", "string"], ["v1.7.1", 120, "{}"]),
    }
    values.update(fields)
    return encode([PROPOSAL_STRUCT], [tuple(values.values())])


def test_get_proposal_answers_decode_into_the_eleven_fields() -> None:
    decoded = gov.decode_proposal(record())
    assert decoded == gov.ProposalRecord(
        action="0x" + UPGRADE.hex(),
        member_version=1,
        voted_bitmap=3,
        created_at=1_700_000_000,
        executed_at=1_700_000_100,
        proposer=PROPOSER,
        required=2,
        approved=2,
        rejected=0,
        status=ProposalState.EXECUTED,
        call_data=encode(["string", "uint64", "string"], ["v1.7.1", 120, "{}"]),
    )
    assert gov.decode_upgrade(decoded.action, decoded.call_data) == gov.UpgradeAction(
        name="v1.7.1", height=120, info="{}"
    )
    assert gov.decode_proposal(record(status=0)).status is None


def _with_word(data: bytes, index: int, value: int) -> bytes:
    return data[: index * 32] + value.to_bytes(32, "big") + data[(index + 1) * 32 :]


@pytest.mark.parametrize(
    "data",
    [
        record()[:100],
        _with_word(record(), 0, 10**6),  # the struct's offset points past the end
        _with_word(record(), 10, 9),  # status 9 is not a status
        _with_word(record(), 6, 2**200),  # not an address
        _with_word(record(), 7, 2**40),  # required does not fit uint32
        _with_word(record(), 12, 2**40),  # callData longer than the answer
        b"",
    ],
    ids=["truncated", "offset", "status", "address", "uint32", "length", "empty"],
)
def test_hostile_get_proposal_answers_are_refused(data: bytes) -> None:
    with pytest.raises(gov.AbiError):
        gov.decode_proposal(data)


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("0x" + "00" * 32, encode(["string", "uint64", "string"], ["v1", 1, ""])),
        ("0x" + UPGRADE.hex(), b"\x01\x02"),
        ("0x" + UPGRADE.hex(), encode(["string", "uint256", "string"], ["v1", 2**70, ""])),
        ("0x" + UPGRADE.hex(), encode(["bytes", "uint64", "string"], [b"\xff\xfe", 1, ""])),
    ],
    ids=["another-action", "garbage", "height-over-uint64", "not-utf8"],
)
def test_call_data_that_is_not_an_upgrade_is_refused(action: str, data: bytes) -> None:
    with pytest.raises(gov.AbiError):
        gov.decode_upgrade(action, data)


def log(
    event: str,
    proposal: int,
    account: str = PROPOSER,
    *,
    types: list[str] | None = None,
    values: list[Any] | None = None,
    block: int = 5,
    index: int = 0,
    address: str = CONTRACT,
) -> dict[str, Any]:
    """An eth_getLogs entry of a dialect event, encoded with eth_abi."""
    data = encode(types or [], values or [])
    return {
        "address": address,
        "topics": [
            topic(event),
            "0x" + proposal.to_bytes(32, "big").hex(),
            "0x" + bytes.fromhex(account[2:]).rjust(32, b"\0").hex(),
        ],
        "data": "0x" + data.hex(),
        "blockNumber": hex(block),
        "logIndex": hex(index),
        "removed": False,
        "transactionHash": "0x" + "00" * 32,
    }


def created_log(proposal: int, name: str = "v2", height: int = 99, **kw: Any) -> dict[str, Any]:
    call = encode(["string", "uint64", "string"], [name, height, ""])
    return log(
        "ProposalCreated",
        proposal,
        types=["bytes32", "uint256", "uint256", "bytes"],
        values=[UPGRADE, 1, 2, call],
        **kw,
    )


def test_dialect_logs_decode() -> None:
    created = gov.decode_log(CONTRACT, created_log(4))
    assert created == gov.ProposalEvent(
        event="ProposalCreated",
        id=4,
        block=5,
        log_index=0,
        account=PROPOSER,
        action="0x" + UPGRADE.hex(),
        required=2,
        call_data=encode(["string", "uint64", "string"], ["v2", 99, ""]),
    )
    voted = gov.decode_log(
        CONTRACT,
        log("ProposalVoted", 4, types=["bool", "uint256", "uint256"], values=[False, 1, 1]),
    )
    assert voted is not None
    assert (voted.approval, voted.approved, voted.rejected) == (False, 1, 1)
    executed = gov.decode_log(
        CONTRACT.upper().replace("0X", "0x"),
        log("ProposalExecuted", 4, types=["bool"], values=[False], block=9, index=3),
    )
    assert executed is not None
    assert (executed.event, executed.success, executed.block, executed.log_index) == (
        "ProposalExecuted",
        False,
        9,
        3,
    )
    failed = gov.decode_log(CONTRACT, log("ProposalFailed", 4, types=["bytes"], values=[b"why"]))
    assert failed is not None
    assert failed.reason == b"why"
    cancelled = gov.decode_log(CONTRACT, log("ProposalCancelled", 4))
    assert cancelled is not None
    assert cancelled.event == "ProposalCancelled"


def _edit(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**entry, **changes}


GOOD = log("ProposalVoted", 4, types=["bool", "uint256", "uint256"], values=[True, 1, 0])


@pytest.mark.parametrize(
    "entry",
    [
        _edit(GOOD, topics=GOOD["topics"][:2]),  # the voter topic is missing
        _edit(GOOD, topics=[*GOOD["topics"], GOOD["topics"][1]]),  # one topic too many
        _edit(GOOD, topics=[GOOD["topics"][0], "0x01", GOOD["topics"][2]]),  # a short topic
        _edit(GOOD, topics=[*GOOD["topics"][:2], "0x" + "ff" * 32]),  # not an address
        _edit(GOOD, data=GOOD["data"][:-2]),  # truncated data
        _edit(GOOD, data=GOOD["data"][:66]),  # two words missing
        _edit(GOOD, data="0x" + "00" * 31 + "02" + GOOD["data"][66:]),  # bool 2
        _edit(GOOD, data="not hex"),
        _edit(GOOD, blockNumber="5"),
        _edit(GOOD, topics="0x01"),
        _edit(created_log(4), data="0x" + "00" * 96 + "00" * 31 + "80" + "ff" * 32),
        {"address": CONTRACT},
        "a string",
        None,
    ],
    ids=[
        "missing-topic",
        "extra-topic",
        "short-topic",
        "address-topic",
        "truncated",
        "short-data",
        "bool",
        "hex",
        "block",
        "topics-type",
        "bytes-length",
        "partial",
        "string",
        "null",
    ],
)
def test_malformed_logs_are_refused(entry: Any) -> None:
    with pytest.raises(gov.AbiError):
        gov.decode_log(CONTRACT, entry)


def test_other_logs_are_skipped() -> None:
    assert gov.decode_log(CONTRACT, _edit(GOOD, address="0x" + "34" * 20)) is None
    assert gov.decode_log(CONTRACT, _edit(GOOD, removed=True)) is None
    assert gov.decode_log(CONTRACT, _edit(GOOD, topics=["0x" + "00" * 32])) is None
    assert gov.decode_log(CONTRACT, _edit(GOOD, topics=[])) is None


@settings(max_examples=200, deadline=None)
@given(
    event=st.sampled_from(sorted(EVENTS)),
    words=st.lists(st.binary(min_size=32, max_size=32), max_size=3),
    data=st.binary(max_size=400),
)
def test_any_bytes_decode_or_are_refused_never_anything_else(
    event: str, words: list[bytes], data: bytes
) -> None:
    entry = _edit(
        GOOD,
        topics=[topic(event), *("0x" + w.hex() for w in words)],
        data="0x" + data.hex(),
    )
    with contextlib.suppress(gov.AbiError):
        gov.decode_log(CONTRACT, entry)
    with contextlib.suppress(gov.AbiError):
        gov.decode_proposal(data)


def event(name: str, proposal: int, block: int, index: int = 0, **fields: Any) -> gov.ProposalEvent:
    return gov.ProposalEvent(
        event=name, id=proposal, block=block, log_index=index, account=PROPOSER, **fields
    )


def batch(
    *events: gov.ProposalEvent,
    records: dict[int, gov.ProposalRecord] | None = None,
    to_block: int = 100,
    timestamp: int | None = None,
    kind: str = "upgrade",
) -> gov.ContractBatch:
    return gov.ContractBatch(
        contract=CONTRACT,
        kind=kind,
        from_block=0,
        to_block=to_block,
        head=to_block,
        quorum=2,
        expiry=EXPIRY,
        timestamp=timestamp,
        events=list(events),
        records=records or {},
        unreadable={},
    )


def apply(known: dict[int, Proposal], b: gov.ContractBatch) -> list[int]:
    changed, executed = gov.fold(known, b)
    known.update(changed)
    return executed


UPGRADE_CALL = encode(["string", "uint64", "string"], ["v1.7.1", 500, "{}"])
CREATED = {"action": "0x" + UPGRADE.hex(), "required": 2, "call_data": UPGRADE_CALL}


def test_an_execution_that_fails_stays_approved_and_a_successful_retry_becomes_a_plan() -> None:
    known: dict[int, Proposal] = {}
    assert apply(known, batch(event("ProposalCreated", 1, 10, **CREATED))) == []
    apply(known, batch(event("ProposalVoted", 1, 10, 1, approval=True, approved=1, rejected=0)))
    assert known[1].status is ProposalState.VOTING
    assert (known[1].name, known[1].height, known[1].approved, known[1].required) == (
        "v1.7.1",
        500,
        1,
        2,
    )
    executed = apply(
        known,
        batch(
            event("ProposalVoted", 1, 11, 0, approval=True, approved=2, rejected=0),
            event("ProposalApproved", 1, 11, 1, approved=2, rejected=0),
            event("ProposalExecuted", 1, 11, 2, success=False),
        ),
    )
    assert executed == []
    assert (known[1].status, known[1].failed_executions) == (ProposalState.APPROVED, 1)
    assert (known[1].state, known[1].votes_for, known[1].quorum) == (ProposalState.APPROVED, 2, 2)
    assert not gov.is_finished(known[1])
    assert apply(known, batch(event("ProposalExecuted", 1, 12, success=True))) == [1]
    assert (known[1].status, known[1].executed_block) == (ProposalState.EXECUTED, 12)
    assert gov.plan_from_proposal(known[1]).name == "v1.7.1"
    # Seen again (a batch re-read after a restart): not a new execution.
    assert apply(known, batch(event("ProposalExecuted", 1, 12, success=True))) == []


def test_failed_cancelled_rejected_and_expired_proposals_are_final_and_never_executed() -> None:
    known: dict[int, Proposal] = {}
    for proposal in (1, 2, 3, 4):
        apply(known, batch(event("ProposalCreated", proposal, 10, **CREATED)))
    executed = apply(
        known,
        batch(
            event("ProposalExecuted", 1, 11, 0, success=False),
            event("ProposalFailed", 1, 11, 1, reason=b"height has passed"),
            event("ProposalCancelled", 2, 11, 2),
            event("ProposalRejected", 3, 11, 3, approved=1, rejected=2),
            event("ProposalExpired", 4, 11, 4),
        ),
    )
    assert executed == []
    assert [known[p].status for p in (1, 2, 3, 4)] == [
        ProposalState.FAILED,
        ProposalState.CANCELLED,
        ProposalState.REJECTED,
        ProposalState.EXPIRED,
    ]
    assert all(gov.is_finished(known[p]) for p in (1, 2, 3, 4))
    # A record read later never reopens a final proposal.
    voting = gov.decode_proposal(record(status=STATUS["voting"], executed=0))
    apply(known, batch(records={2: voting}))
    assert known[2].status is ProposalState.CANCELLED


def test_an_open_proposal_is_shown_expired_once_a_block_is_past_its_expiry() -> None:
    known: dict[int, Proposal] = {}
    voting = gov.decode_proposal(record(status=STATUS["voting"], executed=0, created=1000))
    apply(known, batch(event("ProposalCreated", 1, 10, **CREATED), records={1: voting}))
    assert known[1].expires_at == 1000 + EXPIRY
    apply(known, batch(timestamp=1000 + EXPIRY))  # not past it yet
    assert known[1].status is ProposalState.VOTING
    apply(known, batch(timestamp=1001 + EXPIRY))
    assert known[1].status is ProposalState.EXPIRED
    # The contract still says voting (lazy expiry): that does not reopen it.
    apply(known, batch(records={1: voting}))
    assert known[1].status is ProposalState.EXPIRED


def test_a_record_that_says_what_is_known_changes_nothing() -> None:
    known: dict[int, Proposal] = {}
    voting = gov.decode_proposal(record(status=STATUS["voting"], executed=0, created=1000))
    apply(known, batch(event("ProposalCreated", 1, 10, **CREATED), records={1: voting}))
    assert gov.fold(known, batch(records={1: voting}, timestamp=1001)) == ({}, [])


def test_a_govbase_proposal_is_tracked_and_never_a_plan() -> None:
    known: dict[int, Proposal] = {}
    apply(
        known,
        batch(
            event("ProposalCreated", 1, 10, action="0x" + "01" * 32, required=3, call_data=b"x"),
            kind="govbase",
        ),
    )
    assert apply(known, batch(event("ProposalExecuted", 1, 11, success=True), kind="govbase"))
    assert known[1].status is ProposalState.EXECUTED
    with pytest.raises(PlanError, match="not an upgrade proposal"):
        gov.plan_from_proposal(known[1])


def executed_proposal(**fields: Any) -> Proposal:
    values: dict[str, Any] = {
        "contract": CONTRACT,
        "kind": "upgrade",
        "id": 1,
        "state": ProposalState.EXECUTED,
        "status": ProposalState.EXECUTED,
        "votes_for": 2,
        "votes_against": 0,
        "approved": 2,
        "quorum": 2,
        "required": 2,
        "name": "v1.7.1",
        "height": 100,
        "info": '{"binaries": {}}',
        "action": "0x" + UPGRADE.hex(),
        "executed_block": 50,
    }
    values.update(fields)
    return Proposal(**values)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "../../bin"}, "invalid name"),
        ({"height": 50}, "has passed"),
        ({"info": "{not json"}, "info is neither"),
        ({"name": None}, "could not be read"),
        ({"action": "0x" + "00" * 32}, "not an upgrade proposal"),
    ],
)
def test_bad_proposal_data_never_becomes_a_plan(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        gov.plan_from_proposal(executed_proposal(**fields))


def test_an_unreadable_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "governance.json"
    path.write_text("{half")
    assert gov.load_state(path) == gov.GovernanceState()
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1
    assert names[0].startswith("governance.json.unreadable-")


def test_a_state_file_of_the_earlier_shape_gets_the_govbase_names(tmp_path: Path) -> None:
    path = tmp_path / "governance.json"
    old = {
        "contract": CONTRACT,
        "kind": "upgrade",
        "id": 3,
        "state": "approved",
        "votes_for": 2,
        "votes_against": 1,
        "quorum": 2,
    }
    path.write_text(json.dumps({"version": 1, "contracts": [], "proposals": [old]}))
    (loaded,) = gov.load_state(path).proposals
    assert (loaded.status, loaded.approved, loaded.rejected, loaded.required) == (
        ProposalState.APPROVED,
        2,
        1,
        2,
    )


class GarbageNode:
    """A fake JSON-RPC node answering every call with something a real node never sends:
    wrong types, malformed logs, broken hex, error objects, non-JSON, HTTP errors. The head
    grows with every eth_blockNumber so that each poll has blocks to read."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.block = 0
        self.calls = 0
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                status, body = node.answer(request["method"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str) -> tuple[int, bytes]:
        self.calls += 1
        if method == "eth_blockNumber":
            self.block += 3
            result: Any = hex(self.block)
        else:
            result = self.rng.choice(self.garbage(method))
        if isinstance(result, tuple):
            return result
        return 200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode()

    def garbage(self, method: str) -> list[Any]:
        noise = [
            None,
            5,
            "0xzz",
            [],
            {"a": 1},
            (200, b"not json"),
            (500, b"{}"),
            (200, b'{"jsonrpc": "2.0", "id": 1, "error": {"code": 3, "message": "reverted"}}'),
        ]
        if method == "eth_getLogs":
            bad = _edit(GOOD, address=CONTRACT, data="0x1")
            return [
                *noise,
                [1, "x", None, {"address": CONTRACT}],
                [bad, _edit(GOOD, topics=GOOD["topics"][:2])],
                [_edit(GOOD, blockNumber=hex(self.block))],
                [created_log(2, block=self.block), {"topics": 5}],
            ]
        if method == "eth_call":
            return [*noise, "0x", "0x" + "00" * 31, "0x" + record(status=9).hex()]
        if method == "eth_getBlockByNumber":
            return [*noise, {"timestamp": "12"}, {"timestamp": hex(10**6)}]
        return noise

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_follower_fed_garbage_by_its_node_reports_it_and_keeps_following() -> None:
    node = GarbageNode(seed=7)
    batches: list[gov.ContractBatch] = []
    failures: list[str] = []
    follower = gov.LogFollower(
        node.url,
        timeout=2.0,
        contracts=[gov.FollowedContract(address=CONTRACT, kind="upgrade", next_block=0)],
        confirmations=0,
        on_batch=batches.append,
    )
    deadline = time.monotonic() + 30
    try:
        while len(failures) < 30 or len(batches) < 5:
            assert time.monotonic() < deadline, "the follower never got through the garbage"
            error = follower.poll_once()
            if error is not None:
                failures.append(error)
    finally:
        node.close()
    assert all(isinstance(f, str) and f for f in failures)
    for b in batches:
        assert b.from_block <= b.to_block
        assert all(isinstance(e, gov.ProposalEvent) for e in b.events)
        assert all(r.status is not None for r in b.records.values())
    # Blocks are read in order, none twice.
    ends = [(b.from_block, b.to_block) for b in batches]
    assert all(a[1] < c[0] for a, c in itertools.pairwise(ends))


def test_the_follower_reads_open_proposals_again_every_poll_until_they_close(
    chain: AnvilProcess,
) -> None:
    contract = UpgradeGovernance(chain.url)
    proposal, _ = contract.propose("v1.7.1", head(chain.url) + 1000)
    batches: list[gov.ContractBatch] = []
    follower = gov.LogFollower(
        chain.url,
        timeout=2.0,
        contracts=[gov.FollowedContract(address=contract.address, kind="upgrade", next_block=0)],
        confirmations=0,
        on_batch=batches.append,
    )

    def wait_for_batch(where: Callable[[gov.ContractBatch], bool]) -> gov.ContractBatch:
        deadline = time.monotonic() + 10
        while not any(where(b) for b in batches):
            assert time.monotonic() < deadline, "no such batch"
            assert follower.poll_once() is None
        return next(b for b in batches if where(b))

    first = wait_for_batch(lambda b: proposal in b.records)
    assert (first.quorum, first.expiry) == (2, EXPIRY)
    # A block without any of its logs: the open proposal is read again.
    rpc_call(chain.url, "evm_mine")
    quiet = wait_for_batch(lambda b: b.from_block > first.to_block)
    assert quiet.events == []
    assert quiet.records[proposal].status is ProposalState.VOTING
    assert quiet.timestamp is not None
    contract.approve(proposal, 1)
    executed = wait_for_batch(lambda b: b.from_block > quiet.to_block and b.events != [])
    assert executed.records[proposal].status is ProposalState.EXECUTED
    rpc_call(chain.url, "evm_mine")
    closed = wait_for_batch(lambda b: b.from_block > executed.to_block)
    assert proposal not in closed.records  # executed: final, not read again


# Runtime code of a "contract" that emits whatever log it is sent (LOG3: three topics from the
# first 96 bytes of the call data, the rest as data) and reverts every shorter call, such as
# getProposal(), quorum() and proposalExpiry().
FORGER = "0x36606011601e573660006000376040516020516000516060360360 60a3005b60006000fd".replace(
    " ", ""
)


def forge(url: str, address: str, topics: list[str], data: bytes) -> None:
    words = b"".join(bytes.fromhex(t[2:]) for t in topics)
    sender = rpc_call(url, "eth_accounts")[0]
    transact(url, sender, {"to": address, "data": "0x" + (words + data).hex()})


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

    def config(self, contract: str, confirmations: int, kind: str) -> Config:
        toml = self.root / "wemixvisor" / "config.toml"
        toml.parent.mkdir(parents=True, exist_ok=True)
        toml.write_text(
            "[governance]\n"
            f'contracts = [{{address = "{contract}", kind = "{kind}"}}]\n'
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

    def start(
        self, contract: str, confirmations: int = 0, kind: str = "upgrade"
    ) -> pykka.ActorRef[Any]:
        self.actor = GovernanceActor.start(
            config=self.config(contract, confirmations, kind), home=self.home, bus=self.bus
        )
        self.bus.register("governance", self.actor)
        return self.actor

    def orchestrator(self) -> None:
        self.bus.register("orchestrator", StandIn.start(self.plans))

    def stop(self) -> None:
        if self.actor is not None:
            self.actor.stop()
            self.actor = None

    def proposals(self) -> dict[int, Proposal]:
        assert self.actor is not None
        answer = self.actor.ask(GetProposals(), timeout=2)
        assert isinstance(answer, list)
        return {p.id: p for p in answer}

    def shown(self, proposal: int, status: str, **fields: Any) -> ev.GovernanceProposal:
        """The first governance.proposal of `proposal` with `status` (and `fields`)."""
        return self.events.wait_for(
            ev.GovernanceProposal,
            lambda e: (
                e.id == proposal
                and e.status == status
                and all(getattr(e, k) == v for k, v in fields.items())
            ),
        )


@pytest.fixture
def world(tmp_path: Path, chain: AnvilProcess) -> Iterator[World]:
    world = World(tmp_path / "home", chain.url)
    try:
        yield world
    finally:
        world.stop()
        pykka.ActorRegistry.stop_all()


def test_every_proposal_is_followed_and_only_an_executed_upgrade_becomes_a_plan(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url, quorum=2, members=3)
    world.orchestrator()
    world.start(contract.address)
    far = head(chain.url) + 1000

    # Proposing is the proposer's approval; the second approval executes it at once.
    upgrade, receipt = contract.propose("v1.7.1", far, '{"binaries": {}}')
    assert events_of(receipt) == ["ProposalCreated", "ProposalVoted"]
    created_at = contract.get_proposal(upgrade)[3]
    voting = world.shown(upgrade, "voting", approved=1)
    assert (voting.rejected, voting.required, voting.expires_at) == (0, 2, created_at + EXPIRY)
    assert (voting.state, voting.votes_for, voting.quorum, voting.name) == (
        "voting",
        1,
        2,
        "v1.7.1",
    )
    receipt = contract.approve(upgrade, 1)
    assert events_of(receipt) == ["ProposalVoted", "ProposalApproved", "ProposalExecuted"]
    registered = world.plans.wait_for(RegisterPlans)
    assert registered.source == "governance"
    assert [(p.name, p.height, p.source) for p in registered.plans] == [
        ("v1.7.1", far, "governance")
    ]
    world.shown(upgrade, "executed", approved=2)
    assert contract.get_proposal(upgrade)[9] == STATUS["executed"]

    short, _ = contract.propose("v9.9.9", far + 1, member=2)
    cancelled, _ = contract.propose("v7.7.7", far + 2, member=1)
    with pytest.raises(ContractReverted):
        contract.cancel(cancelled, 0)  # only its proposer may
    contract.cancel(cancelled, 1)
    turned_down, _ = contract.propose("v8.8.8", far + 3)
    contract.disapprove(turned_down, 1)
    contract.disapprove(turned_down, 2)
    with pytest.raises(ContractReverted):
        contract.execute(turned_down)

    # An execution that fails (a height already passed) leaves it approved and retryable;
    # the third failed attempt is final.
    passed, _ = contract.propose("v-late", 1)
    receipt = contract.approve(passed, 2)
    assert events_of(receipt)[-1] == "ProposalExecuted"
    first = world.shown(passed, "approved", failed_executions=1)
    assert first.approved == 2
    assert contract.get_proposal(passed)[9] == STATUS["approved"]
    contract.execute(passed, 1)
    world.shown(passed, "approved", failed_executions=2)
    receipt = contract.execute(passed, 0)
    assert events_of(receipt) == ["ProposalExecuted", "ProposalFailed"]
    world.shown(passed, "failed", failed_executions=3)
    with pytest.raises(ContractReverted):
        contract.execute(passed, 0)

    world.shown(short, "voting", approved=1)
    world.shown(cancelled, "cancelled")
    world.shown(turned_down, "rejected", approved=1, rejected=2)

    # Expiry is lazy: the contract still says voting, the follower shows it expired.
    pass_expiry(chain.url)
    world.shown(short, "expired")
    assert contract.get_proposal(short)[9] == STATUS["voting"]
    receipt = contract.approve(short, 0)  # touching it records the expiry, without a vote
    assert events_of(receipt) == ["ProposalExpired"]
    assert contract.get_proposal(short)[9] == STATUS["expired"]

    by_id = world.proposals()
    assert {p: by_id[p].status for p in (upgrade, short, cancelled, turned_down, passed)} == {
        upgrade: ProposalState.EXECUTED,
        short: ProposalState.EXPIRED,
        cancelled: ProposalState.CANCELLED,
        turned_down: ProposalState.REJECTED,
        passed: ProposalState.FAILED,
    }
    assert all(by_id[p].state == by_id[p].status for p in by_id)
    assert [p.plans[0].name for p in world.plans.of(RegisterPlans)] == ["v1.7.1"]
    assert not world.events.of(ev.PlanRejected)
    assert by_id[upgrade].executed_block is not None
    wait_until(lambda: world.proposals()[upgrade].plan == "registered")

    # A restarted actor resumes where it was: nothing is handled twice, the proposals stay
    # known, and an execution while it was stopped is handled once.
    world.stop()
    later, _ = contract.propose("v2.0.0", far + 5, member=1)
    contract.approve(later, 2)
    world.plans.items.clear()
    world.events.items.clear()
    world.start(contract.address)
    again = world.plans.wait_for(RegisterPlans, lambda m: m.plans[0].name == "v2.0.0")
    assert again.source == "governance"
    assert {upgrade, short, cancelled, turned_down, passed, later} <= set(world.proposals())
    assert [m.plans[0].name for m in world.plans.of(RegisterPlans)] == ["v2.0.0"]


def test_invalid_plan_data_of_an_executed_upgrade_is_rejected_not_run(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url, quorum=1)
    world.start(contract.address)
    far = head(chain.url) + 1000
    # With a quorum of 1 the proposal is executed as it is proposed.
    bad_name, receipt = contract.propose("../../bin", far)
    assert events_of(receipt)[-1] == "ProposalExecuted"
    bad_info, _ = contract.propose("v-info", far + 1, "{not json")
    rejected = [
        world.events.wait_for(ev.PlanRejected, lambda e, n=n: n in e.reason)
        for n in ("invalid name", "info is neither")
    ]
    assert {r.source for r in rejected} == {"governance"}
    assert rejected[0].name is None  # not a valid name: not repeated in the event
    # The orchestrator comes up after the actor (as in the daemon): nothing is handed to it.
    world.orchestrator()
    good, _ = contract.propose("v1.7.1", far + 2)
    world.plans.wait_for(RegisterPlans)
    assert [m.plans[0].name for m in world.plans.of(RegisterPlans)] == ["v1.7.1"]
    by_id = world.proposals()
    assert by_id[bad_name].plan is not None
    assert by_id[bad_name].plan.startswith("rejected: ")
    assert by_id[bad_info].status is ProposalState.EXECUTED
    assert good in by_id


def test_a_govbase_contract_is_tracked_and_never_becomes_plans(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url, quorum=2)
    world.orchestrator()
    world.start(contract.address, kind="govbase")
    executed, _ = contract.propose("v1.7.1", head(chain.url) + 1000)
    contract.approve(executed, 1)
    world.shown(executed, "executed")
    after, _ = contract.propose("v1.8.0", head(chain.url) + 1000)
    shown = world.shown(after, "voting", approved=1)
    assert (shown.kind, shown.name) == ("govbase", None)
    assert not world.plans.of(RegisterPlans)
    assert world.proposals()[executed].action == "0x" + UPGRADE.hex()


def test_confirmations_hold_an_execution_back_until_enough_blocks_follow(
    world: World, chain: AnvilProcess
) -> None:
    contract = UpgradeGovernance(chain.url)
    world.orchestrator()
    world.start(contract.address, confirmations=3)
    proposal, _ = contract.propose("v1.7.1", head(chain.url) + 1000)
    executed_at = int(contract.approve(proposal, 1)["blockNumber"], 16)
    rpc_call(chain.url, "anvil_mine", ["0x2"])
    world.shown(proposal, "voting")
    time.sleep(0.3)  # several poll intervals: the execution must not be seen yet
    assert not world.plans.of(RegisterPlans)
    rpc_call(chain.url, "anvil_mine", ["0x1"])
    assert head(chain.url) == executed_at + 3
    world.plans.wait_for(RegisterPlans)
    assert len(world.plans.of(RegisterPlans)) == 1


def test_hostile_logs_and_a_reverting_contract_never_crash_the_actor(
    world: World, chain: AnvilProcess
) -> None:
    forger = "0x" + "66" * 20
    rpc_call(chain.url, "anvil_setCode", [forger, FORGER])
    world.orchestrator()
    world.start(forger)
    proposer = "0x" + bytes.fromhex(PROPOSER[2:]).rjust(32, b"\0").hex()
    one = "0x" + (1).to_bytes(32, "big").hex()
    two = "0x" + (2).to_bytes(32, "big").hex()
    unknown = "0x" + "00" * 32
    forge(chain.url, forger, [topic("ProposalVoted"), one, proposer], b"\x01" * 7)  # truncated
    forge(chain.url, forger, [topic("ProposalCreated"), one, "0x" + "ff" * 32], b"")
    forge(chain.url, forger, [unknown, one, proposer], b"anything")
    forge(chain.url, forger, [topic("ProposalExecuted"), one, proposer], b"\x00" * 31 + b"\x07")
    # Well-formed logs of a contract whose getProposal reverts: tracked, never a plan.
    created = created_log(2, name="v1.7.1", height=head(chain.url) + 1000)
    forge(chain.url, forger, created["topics"], bytes.fromhex(created["data"][2:]))
    forge(chain.url, forger, [topic("ProposalExecuted"), two, proposer], encode(["bool"], [True]))
    rejection = world.events.wait_for(ev.PlanRejected)
    assert "unreadable" in rejection.reason
    world.shown(2, "executed")
    by_id = world.proposals()
    assert list(by_id) == [2]
    assert by_id[2].plan is not None
    assert by_id[2].plan.startswith("rejected: ")
    assert not world.plans.of(RegisterPlans)
    # Still following: a later log is seen.
    forge(chain.url, forger, [topic("ProposalCancelled"), "0x" + "00" * 31 + "03", proposer], b"")
    world.shown(3, "cancelled")


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
    wait_until(lambda: world.proposals()[1].plan == "registered")
    assert len(world.plans.of(RegisterPlans)) == 1


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


def test_an_approved_proposal_upgrades_the_node_at_its_height(
    governed: Callable[..., GovernedHome], anvil_bin_1_7_1: Path
) -> None:
    chain = governed()
    add_upgrade(chain.layout, "v1.7.1", anvil_bin_1_7_1)
    # A chain without istanbul_* and no validator mode: the validator features stay off quietly
    # (with VALIDATOR_MODE=true it is an error: tests/test_validator.py).
    daemon = chain.daemon()
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
        contract.disapprove(turned_down, 1)
        contract.disapprove(turned_down, 2)
        contract.approve(bad, 1)
        contract.approve(upgrade, 2)

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
        states = {(p["id"], p["status"]) for p in proposals}
        assert {(upgrade, "voting"), (upgrade, "executed")} <= states
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


def test_a_daemon_restarted_while_a_proposal_is_voting_registers_its_plan_once(
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
        events.wait_for(
            "governance.proposal", lambda p: p["id"] == proposal and p["status"] == "voting"
        )
    finally:
        events.close()
    # Killed outright: its node keeps mining and is adopted by the next daemon.
    first.kill()

    second = chain.daemon()
    events = EventLog(second.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        executed_at = int(contract.approve(proposal, 2)["blockNumber"], 16)
        registered = events.wait_for("plan.registered")
        assert (registered["name"], registered["source"]) == ("v1.7.1", "governance")
        events.wait_for("height.observed", lambda p: p["height"] >= executed_at + 4)
        assert len([p for p in events.seen if p["topic"] == "plan.registered"]) == 1
        executed = [
            p for p in events.seen if p["topic"] == "governance.proposal" and p["id"] == proposal
        ]
        assert [p["status"] for p in executed] == ["executed"]
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
        assert [
            (p["id"], p["state"], p["status"], p["approved"], p["required"], p["plan"])
            for p in listed["proposals"]
        ] == [(proposal, "executed", "executed", 2, 2, "registered")]
        assert listed["proposals"][0]["expires_at"] > 0
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
