"""The chain client's errors and the strict reading of JSON-RPC values.

The client itself is web3 (`wemixvisor.chain.client`); these names are shared by every caller,
so that a failed call is one exception family whatever the transport: `RpcError`, with
`RpcMethodNotFound` for a namespace the node does not serve and `MalformedAnswer` for an answer
of the wrong shape.
"""

from __future__ import annotations

import re
from typing import Final

MAX_QUANTITY: Final = (1 << 64) - 1
"""The largest quantity a well-formed answer carries (16 hex digits, geth's uint64)."""

_QUANTITY_RE: Final = re.compile(r"0x[0-9a-fA-F]{1,16}", re.ASCII)
_SHOWN_CHARS: Final = 40


class RpcError(Exception):
    """The call failed: transport, timeout, malformed answer, or an error object."""


class RpcMethodNotFound(RpcError):
    """The node does not serve the method (e.g. no `istanbul_*` on a non-WBFT chain)."""


class MalformedAnswer(RpcError):
    """The node answered, but not with the shape the method promises."""


def describe_value(value: object) -> str:
    """A short, safe description of a JSON value for error messages (never a huge repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "an integer beyond 64 bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
        return repr(shown)
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return type(value).__name__


def is_quantity(value: object) -> bool:
    """Whether `value` is a JSON-RPC quantity: `0x` and 1 to 16 hex digits (a uint64)."""
    return isinstance(value, str) and _QUANTITY_RE.fullmatch(value) is not None


def parse_quantity(value: object, what: str = "a hex quantity") -> int:
    """A JSON-RPC quantity (`0x` and 1 to 16 hex digits, a uint64) as an int.

    Anything else (null, a number, decimal text, a sign, more digits, non-ASCII digits that
    `int()` would take) raises MalformedAnswer, `not <what>: <the value, cut short>`: a height
    that triggers an upgrade is never guessed.
    """
    if isinstance(value, str) and is_quantity(value):
        return int(value[2:], 16)
    raise MalformedAnswer(f"not {what}: {describe_value(value)}")
