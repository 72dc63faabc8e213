"""The `istanbul_*` namespace of go-wbft / go-stablenet as a web3 module (SPEC §13.2).

`Istanbul` is attached to the client's web3 instance (`w3.istanbul`, see
`wemixvisor.chain.providers`). It is the one place that names each method, its parameters and
the reader that checks the shape of its answer (`wemixvisor.chain.istanbul_answers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from web3.method import Method, default_root_munger
from web3.module import Module
from web3.types import RPCEndpoint

from wemixvisor.chain.istanbul_answers import (
    CommitSigners,
    WbftStatus,
    read_address,
    read_commit_signers,
    read_is_validator,
    read_status,
    read_validators,
)

__all__ = ["Istanbul"]


def _shape(read: Callable[[Any], Any]) -> Callable[..., Callable[[Any], Any]]:
    # web3 asks for the formatter with (method, module) and applies it to the raw result.
    def formatters(_method: str, _module: Module) -> Callable[[Any], Any]:
        return read

    return formatters


class Istanbul(Module):
    """`w3.istanbul`: the WBFT methods this daemon uses, each with its checked result type."""

    is_async = False

    node_address: Method[Callable[[], str]] = Method(
        RPCEndpoint("istanbul_nodeAddress"), result_formatters=_shape(read_address)
    )
    is_validator: Method[Callable[[int | str | None], bool]] = Method(
        RPCEndpoint("istanbul_isValidator"),
        mungers=[default_root_munger],
        result_formatters=_shape(read_is_validator),
    )
    get_validators: Method[Callable[[int | str | None], list[str]]] = Method(
        RPCEndpoint("istanbul_getValidators"),
        mungers=[default_root_munger],
        result_formatters=_shape(read_validators),
    )
    get_commit_signers_from_block: Method[Callable[[int | str], CommitSigners]] = Method(
        RPCEndpoint("istanbul_getCommitSignersFromBlock"),
        mungers=[default_root_munger],
        result_formatters=_shape(read_commit_signers),
    )
    status: Method[Callable[[int | str, int | str], WbftStatus]] = Method(
        RPCEndpoint("istanbul_status"),
        mungers=[default_root_munger],
        result_formatters=_shape(read_status),
    )
