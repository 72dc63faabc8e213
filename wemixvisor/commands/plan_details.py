"""`upgrade status NAME`: one plan's details; and the first preflight `upgrade schedule` shows.

Both read replies of the plan verbs (`list_upgrades`, `schedule_upgrade`), from the daemon or
from the files, as `commands.upgrade` got them.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from wemixvisor.commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError
from wemixvisor.control.verbs.render import NOT_YET_SEEN, eta_text
from wemixvisor.control.verbs.replies import ListUpgradesReply, PlanRow, ScheduleUpgradeReply
from wemixvisor.plans.queue import PlanError, validate_name

__all__ = ["plan_details", "print_preflight", "run_plan_status"]


def print_preflight(reply: ScheduleUpgradeReply) -> None:
    """The checks made when the plan was registered: `preflight: ok`, or each problem (on
    stderr) — a missing binary is known now, not hours later from the events."""
    problems = reply.preflight
    if problems is UNSET:
        return  # nothing was registered (unchanged), or a daemon that does not check
    if not problems:
        print("preflight: ok")
        return
    print(f"preflight: {len(problems)} problem(s) to fix before height {reply.height}")
    for problem in problems:
        print(f"wemixvisor: preflight: {problem}", file=sys.stderr)


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _journal_of(listing: ListUpgradesReply, name: str) -> dict[str, Any] | None:
    journal = listing.journal
    plan = journal.get("plan") if journal is not None else None
    if isinstance(plan, dict) and plan.get("name") == name:
        return journal
    return None


def plan_details(row: PlanRow, head: int | None, journal: dict[str, Any] | None) -> str:
    """One plan as `upgrade status NAME` prints it."""
    if head is None:
        when = f"{row.height} (head unknown)"
    elif row.height > head:
        when = f"{row.height} (head {head}: {row.height - head} blocks to go)"
    else:
        when = f"{row.height} (head {head}: passed)"
    status = NOT_YET_SEEN if row.status == "in_file" else row.status.replace("_", " ")
    if row.late:
        status += " (late: runs at once)"
    lines = [
        f"plan        {row.name}",
        f"height      {when}",
        f"status      {status}",
        f"source      {row.source}",
        f"registered  {_clock(row.registered_at)}",
        f"finished    {_clock(row.finished_at)}",
        f"result      {row.result or '-'}",
    ]
    if row.status in ("pending", "in_file") and not isinstance(row.eta_blocks, UnsetType):
        seconds = None if isinstance(row.eta_seconds, UnsetType) else row.eta_seconds
        lines.insert(2, f"switches    {eta_text(row.eta_blocks, seconds)}")
    if row.info is not UNSET:
        lines.append(f"info        {msgspec.json.encode(row.info).decode()}")
    if journal is not None:
        lines.append(f"upgrading   step {journal.get('step', '?')} (journal)")
    return "\n".join(lines)


def run_plan_status(
    name: str, listing: ListUpgradesReply, journal_error: str | None, *, as_json: bool
) -> int:
    """Print plan `name` as the queue and the plan files have it; exit 1 if there is none."""
    try:
        validate_name(name)
    except PlanError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    rows = [row for row in listing.plans if row.name == name]
    if not rows:
        raise CommandError(f"no plan named {name!r} in the queue or the plan files", EXIT_FAILURE)
    journal = _journal_of(listing, name)
    if as_json:
        document = {"plans": rows, "journal": journal, "head": listing.head}
        print(msgspec.json.encode(document).decode())
    else:
        print("\n\n".join(plan_details(row, listing.head, journal) for row in rows))
    if journal_error is not None:
        print(f"wemixvisor: {journal_error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
