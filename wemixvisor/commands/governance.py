"""`wemixvisor governance proposals [--json]`: the proposals of the followed governance contracts.

Asks the running daemon (control verb `governance_proposals`); one line per proposal: contract,
kind, id, state, votes for and against, quorum, and for an upgrade proposal its plan and what
the daemon made of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from wemixvisor.commands.common import CliContext, add_timeout_argument, call, print_reply
from wemixvisor.control.protocol import GovernanceProposals, new_request_id
from wemixvisor.control.verbs import GOVERNANCE_PROPOSALS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `governance` verb with its `proposals` action."""
    parser = subparsers.add_parser(
        "governance",
        help="on-chain governance followed by the daemon",
        description="What the daemon knows of the governance contracts in [governance].",
    )
    actions = parser.add_subparsers(dest="governance_action", metavar="ACTION", required=True)
    proposals = actions.add_parser(
        "proposals",
        help="list the proposals of the followed contracts (asks the running daemon)",
        description=(
            "Every proposal of the configured governance contracts, as of the last processed "
            "block: state, votes for and against, quorum, and for an upgrade proposal the plan "
            "and whether it was registered or rejected. Exit 3 when no daemon answers."
        ),
    )
    proposals.add_argument("--json", action="store_true", help="print one JSON object")
    add_timeout_argument(proposals)
    proposals.set_defaults(handler=handle_proposals, talks_to_daemon=True)


def handle_proposals(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the proposals the daemon follows."""
    request = GovernanceProposals(id=new_request_id())
    reply = call(ctx, GOVERNANCE_PROPOSALS, request, args.timeout)
    print_reply(GOVERNANCE_PROPOSALS, reply, as_json=args.json)
    return 0


def render_proposals(result: Mapping[str, Any]) -> str:
    """A `governance_proposals` result (decoded JSON) as the table `governance proposals`
    prints."""
    return GOVERNANCE_PROPOSALS.render(GOVERNANCE_PROPOSALS.decode_reply(result))
