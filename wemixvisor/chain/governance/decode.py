"""Decoding the GovBase dialect: logs, `getProposal` answers, UPGRADE call data (SPEC §13.3).

Everything is decoded with web3's ABI codec (`eth_abi`) from the committed ABI
(`governance.abi`). A node, or whatever answers on its port, may send anything: every function
here either returns well-typed values or raises AbiError, never anything else.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec
from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError

from wemixvisor.chain.governance.abi import STATUSES, UPGRADE_ACTION, dialect
from wemixvisor.messages.governance import ProposalState
from wemixvisor.plans.queue import MAX_PLAN_BYTES

MAX_BYTES: Final = MAX_PLAN_BYTES
"""Longest string or bytes value taken from the chain (a plan's info is at most 1 MiB)."""

_MAX_DATA_HEX: Final = 2 * (4 * MAX_BYTES)
_HEX_RE: Final = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_QUANTITY_RE: Final = re.compile(r"0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,15})")
_DECODE_ERRORS: Final = (DecodingError, ValueError, OverflowError, TypeError, IndexError)


class AbiError(ValueError):
    """ABI-encoded data (a log, a call's answer) that does not decode as it must."""


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


def _decode(types: tuple[str, ...] | list[str], data: bytes, what: str) -> tuple[Any, ...]:
    try:
        return tuple(decode(list(types), data, strict=True))
    except _DECODE_ERRORS as exc:
        raise AbiError(f"{what}: {type(exc).__name__}: {exc}") from None


def call_data(function: str, *args: Any) -> str:
    """The `data` of an `eth_call` to `function(args)` of the dialect."""
    abi = dialect().function(function)
    return "0x" + (abi.selector + encode(list(abi.inputs), list(args))).hex()


def decode_result(function: str, data: bytes) -> tuple[Any, ...]:
    """The results of a call to `function`; AbiError when they do not decode."""
    return _decode(dialect().function(function).outputs, data, f"{function}() answer")


class ProposalEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded proposal event of a followed contract, named as in the ABI
    (`ProposalCreated`, `ProposalVoted`, …); fields the event does not carry are None."""

    event: str
    id: int
    block: int
    log_index: int
    account: str  # the indexed address: proposer, voter, approver, executor, canceller…
    action: str | None = None
    required: int | None = None
    call_data: bytes | None = None
    approval: bool | None = None
    approved: int | None = None
    rejected: int | None = None
    success: bool | None = None
    reason: bytes | None = None


class _Log(msgspec.Struct, frozen=True, rename="camel"):
    address: str
    topics: list[str]
    data: str
    block_number: str
    log_index: str
    removed: bool = False


def decode_log(contract: str, raw: object) -> ProposalEvent | None:
    """Decode one `eth_getLogs` entry of `contract`; None for a log that is not a proposal
    event (another event, another address, a removed log); AbiError for a malformed one."""
    try:
        log = msgspec.convert(raw, _Log, strict=True)
    except msgspec.ValidationError as exc:
        raise AbiError(f"malformed log entry: {exc}") from None
    if log.removed or log.address.lower() != contract.lower() or not log.topics:
        return None
    abi = dialect().events.get(log.topics[0].lower())
    if abi is None:
        return None
    if len(log.topics) != 1 + len(abi.indexed_types):
        raise AbiError(f"{abi.name}: {len(log.topics) - 1} indexed topics")
    topics = b"".join(_topic(t) for t in log.topics[1:])
    proposal_id, account = _decode(abi.indexed_types, topics, f"{abi.name} topics")
    values = dict(
        zip(
            abi.fields, _decode(abi.field_types, hex_bytes(log.data, "data"), abi.name), strict=True
        )
    )
    fields: dict[str, Any] = {
        "event": abi.name,
        "id": proposal_id,
        "block": quantity(log.block_number, "blockNumber"),
        "log_index": quantity(log.log_index, "logIndex"),
        "account": account.lower(),
    }
    match abi.name:
        case "ProposalCreated":
            fields.update(
                action="0x" + values["actionType"].hex(),
                required=values["requiredApprovals"],
                call_data=_bounded(values["callData"], "callData"),
            )
        case "ProposalVoted":
            fields.update(
                approval=values["approval"],
                approved=values["approved"],
                rejected=values["rejected"],
            )
        case "ProposalApproved" | "ProposalRejected":
            fields.update(approved=values["approved"], rejected=values["rejected"])
        case "ProposalExecuted":
            fields.update(success=values["success"])
        case "ProposalFailed":
            fields.update(reason=_bounded(values["reason"], "reason"))
    return ProposalEvent(**fields)


def _topic(value: str) -> bytes:
    topic = hex_bytes(value, "topic", 64)
    if len(topic) != 32:
        raise AbiError(f"a topic of {len(topic)} bytes")
    return topic


def _bounded(value: bytes, what: str) -> bytes:
    if len(value) > MAX_BYTES:
        raise AbiError(f"{what}: {len(value)} bytes is over the {MAX_BYTES} limit")
    return value


class ProposalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """`getProposal(id)`: the proposal as the contract stores it (`status` None: no such
    proposal). Open proposals past their expiry still read voting or approved."""

    action: str
    member_version: int
    voted_bitmap: int
    created_at: int
    executed_at: int
    proposer: str
    required: int
    approved: int
    rejected: int
    status: ProposalState | None
    call_data: bytes


def decode_proposal(data: bytes) -> ProposalRecord:
    """Decode `getProposal`'s answer, the 11-field struct of SPEC §13.3."""
    (record,) = decode_result("getProposal", data)
    (
        action,
        version,
        bitmap,
        created,
        executed,
        proposer,
        required,
        approved,
        rejected,
        status,
        raw,
    ) = record
    if status >= len(STATUSES):
        raise AbiError(f"getProposal: unknown status {status}")
    name = STATUSES[status]
    return ProposalRecord(
        action="0x" + action.hex(),
        member_version=version,
        voted_bitmap=bitmap,
        created_at=created,
        executed_at=executed,
        proposer=proposer.lower(),
        required=required,
        approved=approved,
        rejected=rejected,
        status=None if name is None else ProposalState(name),
        call_data=_bounded(raw, "callData"),
    )


class UpgradeAction(msgspec.Struct, frozen=True, kw_only=True):
    """An UPGRADE proposal's call data, `abi.encode(name, height, info)`."""

    name: str
    height: int
    info: str


def decode_upgrade(action: str | None, data: bytes) -> UpgradeAction:
    """The plan an UPGRADE proposal carries; AbiError for another action or bad call data."""
    if action != UPGRADE_ACTION:
        raise AbiError(f"action {action} is not UPGRADE")
    name, height, info = _decode(("string", "uint64", "string"), data, "UPGRADE call data")
    return UpgradeAction(name=name, height=height, info=info)
