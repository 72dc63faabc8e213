"""The WBFT client (SPEC §13.2): exact answer shapes, hostile answers, and the quorum decisions.

Answers come from a scripted web3 provider (a test double: no sockets) under the real web3
client and its `istanbul` module; the end-to-end behaviour against a node is in
tests/test_validator.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from tests.wbft_proxy import address
from wemixvisor.chain.client import ChainClient, load_web3
from wemixvisor.chain.rpc import RpcError

# web3 as the daemon imports it: without the recursion limit it would raise in this process.
load_web3()
from web3 import Web3  # noqa: E402
from web3.providers.base import BaseProvider  # noqa: E402
from web3.types import RPCEndpoint, RPCResponse  # noqa: E402

from wemixvisor.chain.istanbul import Istanbul  # noqa: E402
from wemixvisor.chain.wbft import (  # noqa: E402
    MAX_VALIDATORS,
    MalformedAnswer,
    NotWbft,
    WbftClient,
    active_validators,
    assess_quorum,
    bft_quorum,
    check_signing,
    quorum_risk,
    read_chain_info,
)

ME = address(1)
OTHERS = [address(2), address(3), address(4)]
VALIDATORS = [ME, *OTHERS]
HASH = "0x" + "ab" * 32


class ScriptedProvider(BaseProvider):
    """Test double of a node: answers each method from a table (a value, an exception to
    raise, or a callable of the params); an unknown method is -32601, as geth answers it."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__()
        self.answers = answers
        self.calls: list[tuple[str, list[Any]]] = []

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        self.calls.append((method, list(params or [])))
        if method not in self.answers:
            return {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "not found"}}
        answer = self.answers[method]
        if isinstance(answer, BaseException):
            raise answer
        result = answer(params or []) if callable(answer) else answer
        return {"jsonrpc": "2.0", "id": 1, "result": result}


def wbft_on(provider: ScriptedProvider) -> WbftClient:
    w3 = Web3(provider, middleware=[], external_modules={"istanbul": Istanbul})
    return WbftClient(ChainClient("scripted", w3=w3))


def client(**answers: Any) -> WbftClient:
    return wbft_on(ScriptedProvider(answers))


def signers(number: int = 7, committers: list[str] | None = None) -> dict[str, Any]:
    return {
        "Number": number,
        "Hash": HASH,
        "Author": ME.upper().replace("0X", "0x"),
        "Committers": committers if committers is not None else VALIDATORS,
    }


def status(total: dict[str, int], start: int = 0, end: int = 63) -> dict[str, Any]:
    return {
        "sealerActivity": {
            "total": total,
            "prepared": total,
            "committed": total,
            "prevPrepared": {},
            "prevCommitted": {},
        },
        "author": {ME: 16},
        "blockRange": {"startBlock": start, "endBlock": end, "totalBlocks": end - start + 1},
        "roundStats": {"roundDistribution": {"0": end - start + 1}},
    }


# shapes


def test_commit_signers_keep_the_capitalised_keys_and_come_back_lower_case() -> None:
    result = client(istanbul_getCommitSignersFromBlock=signers()).commit_signers(7)
    assert result.number == 7
    assert result.hash == HASH
    assert result.author == ME
    assert result.committers == sorted(VALIDATORS)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({k.lower(): v for k, v in signers().items()}, "`Number`"),
        ({k: v for k, v in signers().items() if k != "Committers"}, "`Committers`"),
        (signers(committers=["0x1234"]), "Committers"),
        (signers(committers=["not an address at all, just words"]), "Committers"),
        ({**signers(), "Author": "0x" + "zz" * 20}, "Author"),
        ({**signers(), "Hash": "0x12"}, "Hash"),
        ({**signers(), "Number": -1}, "Number"),
        ({**signers(), "Number": "0x7"}, "Number"),
        (signers(committers=[address(i) for i in range(MAX_VALIDATORS + 1)]), "length"),
        (["0x" + "11" * 20], "object"),
        (None, "object"),
    ],
    ids=[
        "lower-case-keys",
        "missing-committers",
        "short-address",
        "words",
        "non-hex-author",
        "short-hash",
        "negative-number",
        "hex-number",
        "huge-list",
        "a-list",
        "null",
    ],
)
def test_a_malformed_commit_signers_answer_is_refused_with_the_reason(
    answer: Any, problem: str
) -> None:
    with pytest.raises(MalformedAnswer, match="istanbul_getCommitSignersFromBlock") as caught:
        client(istanbul_getCommitSignersFromBlock=answer).commit_signers(7)
    assert problem in str(caught.value)


def test_commit_signers_of_another_block_than_asked_are_refused() -> None:
    with pytest.raises(MalformedAnswer, match="asked for block 8, got 7"):
        client(istanbul_getCommitSignersFromBlock=signers(7)).commit_signers(8)


def test_validators_keep_the_index_order_lower_case_and_a_duplicate_is_refused() -> None:
    shuffled = [OTHERS[2].upper().replace("0X", "0x"), ME, OTHERS[0], OTHERS[1]]
    assert client(istanbul_getValidators=shuffled).validators() == [
        OTHERS[2],
        ME,
        OTHERS[0],
        OTHERS[1],
    ]
    twice = [ME, ME.upper().replace("0X", "0x")]
    with pytest.raises(MalformedAnswer, match="twice"):
        client(istanbul_getValidators=twice).validators()
    with pytest.raises(MalformedAnswer, match="length"):
        client(istanbul_getValidators=[address(i) for i in range(MAX_VALIDATORS + 1)]).validators()


def test_block_parameters_go_out_as_geth_expects_them() -> None:
    rpc = ScriptedProvider(
        {
            "istanbul_getValidators": VALIDATORS,
            "istanbul_isValidator": True,
            "istanbul_status": status({ME: 1}, 10, 20),
        }
    )
    wbft = wbft_on(rpc)
    wbft.validators("latest")
    wbft.validators(None)
    wbft.validators(255)
    wbft.is_validator()
    wbft.status(10, 20)
    wbft.status(0, 1023)
    assert rpc.calls == [
        ("istanbul_getValidators", ["latest"]),
        ("istanbul_getValidators", [None]),
        ("istanbul_getValidators", ["0xff"]),
        ("istanbul_isValidator", [None]),
        ("istanbul_status", ["0xa", "0x14"]),
        ("istanbul_status", ["0x0", "0x3ff"]),
    ]
    # istanbul_status always gets both bounds, at most 1024 blocks apart, in order.
    for start, end in ((0, 1024), (20, 10), (-1, 5)):
        with pytest.raises(ValueError, match="1024 blocks"):
            wbft.status(start, end)
    assert len(rpc.calls) == 6
    with pytest.raises(ValueError, match="block"):
        wbft.validators(-1)


def test_is_validator_false_is_confirmed_with_the_validator_set() -> None:
    # go-wbft's isValidator swallows errors: its false may mean "could not tell".
    swallowed = ScriptedProvider(
        {
            "istanbul_isValidator": False,
            "istanbul_nodeAddress": ME,
            "istanbul_getValidators": [OTHERS[0], ME],
        }
    )
    assert wbft_on(swallowed).is_validator(5) is True
    assert ("istanbul_getValidators", ["0x5"]) in swallowed.calls
    outsider = client(
        istanbul_isValidator=False, istanbul_nodeAddress=ME, istanbul_getValidators=OTHERS
    )
    assert outsider.is_validator() is False
    # The set cannot be read: unknown, not "no".
    with pytest.raises(RpcError):
        client(istanbul_isValidator=False, istanbul_nodeAddress=ME).is_validator()


def test_is_validator_must_be_a_boolean() -> None:
    with pytest.raises(MalformedAnswer, match="istanbul_isValidator"):
        client(istanbul_isValidator="true").is_validator()
    with pytest.raises(MalformedAnswer, match="istanbul_isValidator"):
        client(istanbul_isValidator=1).is_validator()


def test_node_address_must_be_an_address() -> None:
    assert client(istanbul_nodeAddress=ME.upper().replace("0X", "0x")).node_address() == ME
    for bad in ("0x123", 42, {"address": ME}, ME + "00"):
        with pytest.raises(MalformedAnswer, match="istanbul_nodeAddress"):
            client(istanbul_nodeAddress=bad).node_address()


def test_status_is_decoded_and_hostile_status_answers_are_refused() -> None:
    answer = status({ME: 10, OTHERS[0].upper().replace("0X", "0x"): 4})
    result = client(istanbul_status=answer).status(0, 63)
    assert result.sealer_activity.total == {ME: 10, OTHERS[0]: 4}
    assert result.block_range.total_blocks == 64
    assert result.round_stats is not None
    assert result.round_stats.round_distribution == {"0": 64}
    # An older node without roundStats is fine.
    legacy = {k: v for k, v in answer.items() if k != "roundStats"}
    assert client(istanbul_status=legacy).status(0, 63).round_stats is None

    bad_answers = [
        {**answer, "sealerActivity": {"Total": {ME: 1}}},
        {**answer, "author": {"me": 1}},
        {**answer, "author": {ME: -3}},
        {**answer, "author": {ME: "3"}},
        {**answer, "blockRange": {"startBlock": 9, "endBlock": 3, "totalBlocks": 1}},
        {k: v for k, v in answer.items() if k != "blockRange"},
        {**answer, "author": {address(i): 1 for i in range(MAX_VALIDATORS + 1)}},
    ]
    for bad in bad_answers:
        with pytest.raises(MalformedAnswer, match="istanbul_status"):
            client(istanbul_status=bad).status(0, 63)


def test_method_not_found_means_not_wbft_and_other_failures_stay_rpc_errors() -> None:
    empty = client()
    for call in (
        empty.node_address,
        empty.is_validator,
        empty.validators,
        lambda: empty.commit_signers(1),
        lambda: empty.status(1, 2),
    ):
        with pytest.raises(NotWbft):
            call()
    down = client(istanbul_nodeAddress=RpcError("connection refused"))
    with pytest.raises(RpcError) as caught:
        down.node_address()
    assert not isinstance(caught.value, NotWbft)


# decisions


@pytest.mark.parametrize(
    ("n", "quorum"),
    [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (8, 6), (9, 7), (10, 7)],
)
def test_the_quorum_is_wbfts_quorum_size_not_two_thirds(n: int, quorum: int) -> None:
    # ceil(n - (n-1)/3): three validators need all three, four need three.
    assert bft_quorum(n) == quorum
    assert bft_quorum(n) == math.ceil(n - (n - 1) / 3)


def test_no_validators_need_no_quorum() -> None:
    assert bft_quorum(0) == 0


def test_a_negative_validator_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        bft_quorum(-1)


def test_my_downtime_breaks_quorum_only_when_the_rest_fall_below_it() -> None:
    # Four validators, quorum three: with everyone active, three remain without me.
    fine = quorum_risk(VALIDATORS, set(VALIDATORS), ME)
    assert (fine.validators, fine.quorum, fine.active, fine.active_without_me) == (4, 3, 4, 3)
    assert not fine.at_risk
    # One other validator is already down: two remain, below three.
    risky = quorum_risk(VALIDATORS, {ME, OTHERS[0], OTHERS[1]}, ME)
    assert risky.at_risk
    assert risky.active_without_me == 2
    # A node that is not a validator never matters to the quorum.
    outsider = quorum_risk(VALIDATORS, {OTHERS[0]}, address(99))
    assert not outsider.at_risk
    # Addresses compare case-insensitively; activity of non-validators does not count.
    shouting = quorum_risk(
        [v.upper().replace("0X", "0x") for v in VALIDATORS], {*VALIDATORS, address(50)}, ME
    )
    assert shouting.active == 4
    assert not shouting.at_risk


def test_active_validators_are_those_that_sealed_in_the_window() -> None:
    answer = client(istanbul_status=status({ME: 3, OTHERS[0]: 0, OTHERS[1]: 1})).status(0, 63)
    assert active_validators(VALIDATORS, answer) == {ME, OTHERS[1]}


def test_assess_quorum_reads_the_recent_window() -> None:
    rpc = ScriptedProvider(
        {
            "istanbul_nodeAddress": ME,
            "istanbul_getValidators": VALIDATORS,
            "eth_blockNumber": "0x64",
            "istanbul_status": status({ME: 5, OTHERS[0]: 5}, 85, 100),
        }
    )
    me, risk = assess_quorum(wbft_on(rpc), window=16)
    assert me == ME
    assert risk.at_risk
    assert ("istanbul_status", ["0x55", "0x64"]) in rpc.calls


def test_chain_info_on_wbft_and_on_a_chain_without_istanbul() -> None:
    wbft = client(
        istanbul_nodeAddress=ME,
        istanbul_getValidators=VALIDATORS,
        istanbul_status=status({ME: 12, OTHERS[0]: 7}),
        eth_blockNumber="0x3f",
    )
    info = read_chain_info(wbft, at=1000.0)
    assert info.wbft is True
    assert info.node_address == ME
    assert info.is_validator is True
    assert info.validator_count == 4
    assert info.quorum == 3
    assert info.active_validators == 2
    assert info.sealing is not None
    assert (info.sealing.sealed, info.sealing.committed, info.sealing.authored) == (12, 12, 16)
    assert info.sealing.blocks == 64

    plain = read_chain_info(client(), at=1000.0)
    assert plain.wbft is False
    assert plain.node_address is None
    assert plain.error is None


# the signing check


class Chain:
    """A scripted chain for check_signing: a head that grows on each eth_blockNumber call and
    the committers of each block."""

    def __init__(self, committers: dict[int, list[str]], head: int, step: int = 1) -> None:
        self.committers = committers
        self.heads = itertools.count(head, step)

    def rpc(self) -> WbftClient:
        def head(_params: list[Any]) -> str:
            return hex(next(self.heads))

        def signers_of(params: list[Any]) -> dict[str, Any]:
            block = int(params[0], 16)
            return signers(block, self.committers.get(block, []))

        return client(eth_blockNumber=head, istanbul_getCommitSignersFromBlock=signers_of)


def test_signing_is_found_at_the_first_block_after_h_it_committed() -> None:
    chain = Chain({101: OTHERS, 102: OTHERS, 103: VALIDATORS}, head=100)
    result = check_signing(chain.rpc(), ME, 100, blocks=20, poll=0)
    assert result.signed
    assert result.block == 103
    assert result.blocks_checked == 3


def test_not_signing_after_all_blocks_were_checked() -> None:
    chain = Chain(dict.fromkeys(range(101, 200), OTHERS), head=100, step=5)
    result = check_signing(chain.rpc(), ME, 100, blocks=20, poll=0)
    assert not result.signed
    assert result.blocks_checked == 20
    assert "101-120" in result.reason


def test_a_stalled_chain_is_judged_on_the_blocks_it_produced_by_the_timeout() -> None:
    chain = Chain({101: OTHERS}, head=101, step=0)
    ticks = itertools.count(0.0, 1.0)
    result = check_signing(
        chain.rpc(), ME, 100, blocks=20, timeout=10, poll=0, clock=lambda: next(ticks)
    )
    assert not result.signed
    assert result.blocks_checked == 1
    assert "only 1 of 20" in result.reason


def test_a_node_that_lost_istanbul_after_the_upgrade_is_not_signing() -> None:
    result = check_signing(client(eth_blockNumber="0x70"), ME, 100, blocks=20, poll=0)
    assert not result.signed
    assert "istanbul" in result.reason
