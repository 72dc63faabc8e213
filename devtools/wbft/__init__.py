"""A TEST DOUBLE of a WBFT validator network, with real anvil nodes under it (SPEC §17).

anvil has no `istanbul_*` namespace and no fork rules. `WbftNetwork` mines N anvil nodes
(`--no-mining`) in lockstep only while a quorum of validators answers, withholds a fork block
from nodes whose binary predates it, and puts a JSON-RPC proxy in front of each node that serves
`istanbul_*` with go-stablenet's shapes and long WBFT extraData. A node that comes back behind
the network is given the blocks it missed with the network's timestamps, as a WBFT node syncs
from its peers; one it cannot bring along is reported (`NodeStatus.left_out`). It is not a
consensus engine: no signatures are checked, no messages exchanged; it only reproduces what a
client of one node can observe.
"""

from devtools.wbft.ipc import IpcEndpoint
from devtools.wbft.istanbul import MAX_STATUS_BLOCKS
from devtools.wbft.ledger import BlockRecord, Ledger
from devtools.wbft.network import (
    DEFAULT_FORK_VERSIONS,
    NetworkStatus,
    NodeSpec,
    NodeStatus,
    WbftNetwork,
)
from devtools.wbft.proxy import MAX_BATCH, MAX_BODY_BYTES, NodeProxy
from devtools.wbft.rules import client_has_fork, quorum_size, validator_address, wbft_extra_data

__all__ = [
    "DEFAULT_FORK_VERSIONS",
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "MAX_STATUS_BLOCKS",
    "BlockRecord",
    "IpcEndpoint",
    "Ledger",
    "NetworkStatus",
    "NodeProxy",
    "NodeSpec",
    "NodeStatus",
    "WbftNetwork",
    "client_has_fork",
    "quorum_size",
    "validator_address",
    "wbft_extra_data",
]
