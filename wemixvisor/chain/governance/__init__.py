"""Following governance contracts that speak the GovBase dialect (SPEC §13.3).

One decoder and one follower serve both kinds of configured contract: `upgrade` (the project's
`UpgradeGovernance`, whose executed UPGRADE proposals become plans with source `governance`)
and `govbase` (the WBFT system contracts, only tracked). Modules: `abi` (the committed ABI),
`decode` (logs, `getProposal`, UPGRADE call data), `fold` (pure proposal state), `store`
(state/governance.json) and `follower` (the helper thread that reads the node).
"""

from wemixvisor.chain.governance.abi import UPGRADE_ACTION, dialect
from wemixvisor.chain.governance.decode import (
    AbiError,
    ProposalEvent,
    ProposalRecord,
    UpgradeAction,
    call_data,
    decode_log,
    decode_proposal,
    decode_upgrade,
)
from wemixvisor.chain.governance.fold import (
    GOVBASE,
    MAX_TRACKED,
    UPGRADE,
    ContractBatch,
    fold,
    is_finished,
    plan_from_proposal,
    prune,
    published_view,
)
from wemixvisor.chain.governance.follower import LOG_RANGE, FollowedContract, LogFollower
from wemixvisor.chain.governance.store import (
    ContractProgress,
    GovernanceState,
    load_state,
    save_state,
)

__all__ = [
    "GOVBASE",
    "LOG_RANGE",
    "MAX_TRACKED",
    "UPGRADE",
    "UPGRADE_ACTION",
    "AbiError",
    "ContractBatch",
    "ContractProgress",
    "FollowedContract",
    "GovernanceState",
    "LogFollower",
    "ProposalEvent",
    "ProposalRecord",
    "UpgradeAction",
    "call_data",
    "decode_log",
    "decode_proposal",
    "decode_upgrade",
    "dialect",
    "fold",
    "is_finished",
    "load_state",
    "plan_from_proposal",
    "prune",
    "published_view",
    "save_state",
]
