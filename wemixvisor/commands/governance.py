"""`wemixvisor governance proposals [--json]`: the proposals of the followed governance contracts.

Asks the running daemon (control verb `governance_proposals`); one line per proposal: contract,
kind, id, state, votes for and against, quorum, and for an upgrade proposal its plan and what
the daemon made of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from wemixvisor.commands.common import CliContext, add_timeout_argument, call, print_result

_COLUMNS = ("CONTRACT", "KIND", "ID", "STATE", "FOR", "AGAINST", "QUORUM", "PLAN")


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
    proposals.set_defaults(handler=handle_proposals)


def handle_proposals(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the proposals the daemon follows."""
    result = call(ctx, {"type": "governance_proposals"}, args.timeout)
    if args.json:
        print_result("governance_proposals", result, as_json=True)
    else:
        print(render_proposals(result))
    return 0


def render_proposals(result: Mapping[str, Any]) -> str:
    """The `governance_proposals` result as a table for people."""
    proposals = result.get("proposals") or []
    if not proposals:
        note = result.get("note")
        return f"no proposals ({note})" if note else "no proposals"
    rows = [_COLUMNS, *(_row(p) for p in proposals)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _row(proposal: Mapping[str, Any]) -> tuple[str, ...]:
    quorum = proposal.get("quorum")
    return (
        str(proposal.get("contract", "?")),
        str(proposal.get("kind", "?")),
        str(proposal.get("id", "?")),
        str(proposal.get("state", "?")),
        str(proposal.get("votes_for", "?")),
        str(proposal.get("votes_against", "?")),
        "?" if quorum is None else str(quorum),
        _plan(proposal),
    )


def _plan(proposal: Mapping[str, Any]) -> str:
    if proposal.get("kind") != "upgrade":
        action = proposal.get("action")
        return f"action {action}" if action else ""
    name, height, outcome = proposal.get("name"), proposal.get("height"), proposal.get("plan")
    text = f"{name} at {height}" if name is not None else "(unreadable)"
    return f"{text}: {outcome}" if outcome else text
