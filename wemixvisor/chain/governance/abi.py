"""The GovBase dialect as the committed `UpgradeGovernance` ABI describes it (SPEC §13.3).

Both kinds of followed contract, the project's `UpgradeGovernance` and the GovBase system
contracts, share these events and `getProposal`, so one ABI serves both. The ABI is read from
`UpgradeGovernance.abi.json` beside this module (package data, so an installed daemon has it),
written with the committed artifact `contracts/UpgradeGovernance.json` by
`python -m devtools.build_contracts`; topics and selectors are derived from it with web3's
ABI machinery (`eth_utils`), never written out by hand.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Final, cast

import msgspec
from eth_typing import ABIEvent, ABIFunction
from eth_utils.abi import (
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
    get_abi_input_types,
    get_abi_output_types,
)
from eth_utils.crypto import keccak

ABI_FILE: Final = Path(__file__).resolve().with_name("UpgradeGovernance.abi.json")
"""The contract's ABI, shipped in the package (the full artifact lives in `contracts/`)."""

UPGRADE_ACTION: Final = "0x" + keccak(text="UPGRADE").hex()
"""`actionType` of an UpgradeGovernance upgrade proposal."""

STATUSES: Final = (
    None,
    "voting",
    "approved",
    "executed",
    "cancelled",
    "expired",
    "failed",
    "rejected",
)
"""GovBase's proposal status enum, in declaration order (`None` is an unknown proposal)."""


class EventAbi(msgspec.Struct, frozen=True, kw_only=True):
    """One event: its name, topic 0, and the types of its indexed and data fields."""

    name: str
    topic: str
    indexed: tuple[str, ...]
    indexed_types: tuple[str, ...]
    fields: tuple[str, ...]
    field_types: tuple[str, ...]


class FunctionAbi(msgspec.Struct, frozen=True, kw_only=True):
    """One function: its selector and the types of its arguments and results."""

    name: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class Dialect(msgspec.Struct, frozen=True, kw_only=True):
    """The dialect's events by topic 0, and its functions by name."""

    events: dict[str, EventAbi]
    functions: dict[str, FunctionAbi]

    def function(self, name: str) -> FunctionAbi:
        """The function `name` (KeyError when the ABI has none)."""
        return self.functions[name]


def _event(entry: dict[str, Any]) -> EventAbi:
    inputs = entry["inputs"]
    indexed = [i for i in inputs if i.get("indexed")]
    fields = [i for i in inputs if not i.get("indexed")]
    return EventAbi(
        name=entry["name"],
        topic="0x" + event_abi_to_log_topic(cast(ABIEvent, entry)).hex(),
        indexed=tuple(i["name"] for i in indexed),
        indexed_types=tuple(i["type"] for i in indexed),
        fields=tuple(i["name"] for i in fields),
        field_types=tuple(i["type"] for i in fields),
    )


def _function(entry: dict[str, Any]) -> FunctionAbi:
    function = cast(ABIFunction, entry)
    return FunctionAbi(
        name=entry["name"],
        selector=function_abi_to_4byte_selector(function),
        inputs=tuple(get_abi_input_types(function)),
        outputs=tuple(get_abi_output_types(function)),
    )


def dialect_of(abi: list[dict[str, Any]]) -> Dialect:
    """The dialect an ABI (a list of JSON entries) describes: its `Proposal*` events and its
    functions."""
    events = [
        _event(e) for e in abi if e.get("type") == "event" and e["name"].startswith("Proposal")
    ]
    functions = [_function(e) for e in abi if e.get("type") == "function"]
    return Dialect(
        events={e.topic: e for e in events},
        functions={f.name: f for f in functions},
    )


@functools.cache
def dialect() -> Dialect:
    """The dialect of the packaged ABI (read once)."""
    return dialect_of(json.loads(ABI_FILE.read_text()))
