"""Replies as text for the operator: the status screen and the tables of plans, backups and
governance proposals."""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Sequence
from datetime import datetime

import msgspec
from msgspec import UnsetType

from wemixvisor.control.verbs.replies import (
    BackupListReply,
    GovernanceProposalsReply,
    PlanRow,
    StatusReply,
    UpgradeStatus,
)
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.messages.governance import ChainInfo, Proposal
from wemixvisor.plans.queue import last_old_block
from wemixvisor.upgrade.window import WindowState

__all__ = [
    "NOT_YET_SEEN",
    "TableText",
    "duration",
    "eta_text",
    "render_backups",
    "render_plans",
    "render_proposals",
    "render_status",
    "render_upgrade_status",
    "size",
]

NOT_YET_SEEN = "in file, not yet seen by the daemon"
"""The `result` of a plan row that is only in the plan files."""

_WAITING = ("pending", "in_file")  # plan rows whose switch is still ahead
_PROPOSAL_COLUMNS = ("CONTRACT", "KIND", "ID", "STATE", "FOR", "AGAINST", "QUORUM", "PLAN")


def duration(seconds: float | None) -> str:
    """A duration the way `status` shows it: 2d3h, 4h5m, 6m7s, 8.9s."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:.1f}s"


def eta_text(blocks: int | None, seconds: float | None) -> str:
    """An ETA in blocks and in time: `in 12 blocks, ETA 12.0s`; the time is `unknown` until the
    daemon has measured the block time, the whole ETA unknown while the head is."""
    if blocks is None:
        return "ETA unknown (head unknown)"
    if blocks == 0:
        return "due now"
    when = "unknown (block time not measured yet)" if seconds is None else _eta_time(seconds)
    return f"in {blocks} block{'' if blocks == 1 else 's'}, ETA {when}"


_YEAR = 365 * 86400.0


def _eta_time(seconds: float) -> str:
    """A time ahead; one beyond a year is only said to be (a daemon's figure is not trusted
    to be sane, and no operator plans by the day a decade ahead)."""
    if math.isnan(seconds) or seconds < 0:
        return "unknown"
    return "over a year" if seconds >= _YEAR else duration(seconds)


def size(count: int) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _chain_line(chain: ChainInfo) -> str:
    validator = chain.is_validator
    role = "?" if validator is None else "validator" if validator else "not a validator"
    text = f"wbft      {chain.node_address or '-'}  {role}"
    if chain.validator_count is not None:
        text += f"  validators {chain.validator_count}"
    sealing = chain.sealing
    if sealing:
        text += f"  sealed {sealing.sealed}/{sealing.blocks} recent blocks"
    if chain.error:
        text += f"  ({chain.error})"
    return text


def _shown_args(args: Sequence[str]) -> str:
    """The node's arguments as a shell would take them, cut short on one line."""
    text = shlex.join(args)
    return text if len(text) <= 400 else text[:399] + "…"


def render_status(reply: StatusReply) -> str:
    """`wemixvisor status` as text."""
    node = reply.node
    lines = [
        f"node      {node.state.value}  pid {node.pid or '-'}  up {duration(node.uptime)}  "
        f"restarts {node.restarts} ({node.restarts_in_window} in window)"
        + ("  adopted" if node.adopted else ""),
        f"binary    {node.target or '-'}: {node.binary or '-'}  "
        f"({node.version or 'version unknown'})",
        f"cpu/rss   {node.cpu_percent:.1f} %  {size(node.rss_bytes)}",
    ]
    if node.args:
        lines.insert(2, f"args      {_shown_args(node.args)}")
    if node.last_error:
        lines.append(f"error     {node.last_error}")
    head = reply.head
    if head is None:
        lines.append("head      unknown (height actor not answering)")
    else:
        height = head.height if head.height is not None else "unknown"
        rpc = "rpc up" if head.rpc_available else f"rpc DOWN: {head.last_error or '-'}"
        stalled = "  STALLED" if head.stalled else ""
        lines.append(f"head      {height}  ({head.mode}, {rpc}){stalled}")
    plans = reply.plans
    if plans is None:
        lines.append("plans     unknown (orchestrator not answering)")
    else:
        shown = ", ".join(
            f"{p.name} at {p.height} "
            + ("(late)" if p.late else f"(switches {_switch(p.height)})")
            + (
                f" [{window_note(p.window, p.slot, p.eta_blocks, p.eta_seconds)}]"
                if p.window is not None
                else f" {eta_text(p.eta_blocks, p.eta_seconds)}"
                if not p.late
                else ""
            )
            for p in plans.pending
        )
        lines.append(f"plans     {len(plans.pending)} pending" + (f": {shown}" if shown else ""))
        running = plans.in_progress
        if running is not None:
            lines.append(f"upgrade   {running.name} at {running.height}: step {running.step}")
        last = plans.last_upgrade
        if last is not None:
            lines.append(
                f"last      {last.name} at {last.height} {last.status} "
                f"{_clock(last.finished_at)}" + (f": {last.result}" if last.result else "")
            )
        else:
            lines.append("last      no upgrade yet")
    if reply.chain is not None and reply.chain.wbft:
        lines.append(_chain_line(reply.chain))
    daemon = reply.daemon
    restarts = {role: n for role, n in daemon.actor_restarts.items() if n}
    lines.append(
        f"daemon    {daemon.version}  pid {daemon.pid}  up {duration(daemon.uptime)}"
        f"  run {str(daemon.run_id or '-')[:8]}"
        + (f"  actor restarts {restarts}" if restarts else "")
        + ("  STOPPING" if daemon.stopping else "")
    )
    lines.extend(f"warning   {problem}" for problem in reply.problems)
    return "\n".join(lines)


class TableText(str):
    """A table as plain text, which it is as a `str`, keeping its header and rows for a
    terminal that draws a real table (`commands.terminal`)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __new__(cls, text: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> TableText:
        """`text`, with the `header` and `rows` it shows."""
        table = super().__new__(cls, text)
        table.header = tuple(header)
        table.rows = tuple(tuple(row) for row in rows)
        return table


def _switch(height: int) -> str:
    """When the plan at `height` switches binaries: H is the new binary's first block."""
    return f"after block {last_old_block(height)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, free_last: bool) -> str:
    """Columns padded to their widest cell; the last one unpadded when `free_last`."""
    padded = len(header) - 1 if free_last else len(header)
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(padded)]
    lines = []
    for cells in [header, *rows]:
        parts = [cell.ljust(width) for cell, width in zip(cells[:padded], widths, strict=True)]
        lines.append("  ".join([*parts, *cells[padded:]]).rstrip())
    return TableText("\n".join(lines), header, rows)


def render_plans(rows: Sequence[PlanRow]) -> str:
    """`upgrade list`: a table of plans, or `no plans`; a plan still ahead shows the block
    after which it switches (H-1: H is the new binary's first block)."""
    if not rows:
        return "no plans"
    header = ("NAME", "HEIGHT", "SWITCHES", "ETA", "STATUS", "SOURCE", "LATE", "RESULT")
    cells = [
        (
            row.name,
            str(row.height),
            _switch(row.height) if row.status in _WAITING and not row.late else "",
            _eta_cell(row),
            row.status.replace("_", " "),
            row.source,
            "yes" if row.late else "",
            row.result or "",
        )
        for row in rows
    ]
    return _table(header, cells, free_last=True)


def _eta_cell(row: PlanRow) -> str:
    """The ETA column of `upgrade list`: blocks and time until a waiting plan may switch."""
    if row.status not in _WAITING or isinstance(row.eta_blocks, UnsetType):
        return ""
    seconds = None if isinstance(row.eta_seconds, UnsetType) else row.eta_seconds
    if row.eta_blocks is None:
        return "unknown"
    if row.eta_blocks == 0:
        return "now"
    return f"{row.eta_blocks} blocks, " + (
        "time unknown" if seconds is None else _eta_time(seconds)
    )


def window_note(
    window: int,
    slot: WindowState | None,
    eta_blocks: int | None = None,
    eta_seconds: float | None = None,
) -> str:
    """A rolling-window plan in one line: its window, its slot, what it waits for, the ETA
    (`eta_blocks`/`eta_seconds`: the plan's, else the blocks to the slot alone)."""
    text = f"window of {window} blocks"
    if slot is None:
        text += ": slot not taken yet (surveyed when the window opens)"
        if eta_blocks:
            text += f"; window opens {eta_text(eta_blocks, eta_seconds)}"
        return text
    if slot.slot_start is not None:
        who = "validator" if slot.validator else "non-validator, by address hash"
        text += (
            f"; slot {(slot.slot_index or 0) + 1}/{slot.slot_count} at blocks "
            f"{slot.slot_start}-{slot.slot_end} ({who}"
            + (", shared: window shorter than the validator set" if slot.shared else "")
            + ")"
        )
    if slot.verdict == "waiting_for_quorum":
        text += f"; waiting for quorum: {slot.active} other validators up, {slot.needed} needed"
    elif slot.verdict == "closed":
        text += f"; window closed ({slot.reason}): switches at H-1"
        if eta_blocks is not None:
            text += f", {eta_text(eta_blocks, eta_seconds)}"
    elif slot.verdict == "go":
        text += "; its turn: switching"
    else:
        blocks = eta_blocks if eta_blocks is not None else slot.eta_blocks
        if blocks:
            text += f"; slot opens {eta_text(blocks, eta_seconds)}"
    return text


def render_upgrade_status(status: UpgradeStatus) -> str:
    """`upgrade status`: the daemon, the pending plans and the journal."""
    daemon = status.daemon
    if daemon.running is None:
        lines = ["daemon: unknown (cannot read its lock)"]
    elif daemon.running:
        lines = [f"daemon: running (pid {daemon.pid if daemon.pid is not None else '?'})"]
    else:
        lines = ["daemon: not running"]
    if status.pending:
        lines.append("pending:")
        for row in status.pending:
            notes = [row.source]
            if row.late:
                notes.append("late: runs at once")
            if row.status == "in_file":
                notes.append(NOT_YET_SEEN)
            blocks = None if isinstance(row.eta_blocks, UnsetType) else row.eta_blocks
            seconds = None if isinstance(row.eta_seconds, UnsetType) else row.eta_seconds
            switch = "" if row.late else f": switches {_switch(row.height)}"
            if not row.late and not isinstance(row.window, int) and row.status == "pending":
                switch += f", {eta_text(blocks, seconds)}"
            lines.append(f"  {row.name} at height {row.height} ({', '.join(notes)}){switch}")
            if isinstance(row.window, int):
                lines.append(f"    {window_note(row.window, row.slot or None, blocks, seconds)}")
    else:
        lines.append("pending: none")
    if status.journal is not None:
        lines.append("upgrade in progress (journal):")
        lines.extend(
            f"  {key}: {msgspec.json.encode(value).decode()}"
            for key, value in status.journal.items()
        )
    elif status.journal_error is None:
        lines.append("upgrade in progress: none")
    return "\n".join(lines)


def _backup_state(backup: BackupInfo) -> str:
    if backup.kind == "pre-restore":
        return "set aside by a restore"
    if backup.complete:
        return "complete" if backup.kind != "full" else "complete (manual)"
    if backup.plan:
        return f"staged for {backup.plan}"
    return "INCOMPLETE"


def render_backups(reply: BackupListReply) -> str:
    """`backup list`: a table of backups, or `no backups`."""
    if not reply.backups:
        return "no backups"
    header = ("ID", "STATE", "SIZE", "FILES", "CREATED (UTC)")
    cells = [
        (
            backup.id,
            _backup_state(backup),
            size(backup.total_bytes),
            str(backup.file_count),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(backup.created_at)),
        )
        for backup in reply.backups
    ]
    return _table(header, cells, free_last=False)


def _proposal_plan(proposal: Proposal) -> str:
    if proposal.kind != "upgrade":
        return f"action {proposal.action}" if proposal.action else ""
    name, height, outcome = proposal.name, proposal.height, proposal.plan
    text = f"{name} at {height}" if name is not None else "(unreadable)"
    return f"{text}: {outcome}" if outcome else text


def render_proposals(reply: GovernanceProposalsReply) -> str:
    """`governance proposals`: one line per proposal and, for an upgrade, its plan's fate."""
    if not reply.proposals:
        note = reply.note if isinstance(reply.note, str) else None
        return f"no proposals ({note})" if note else "no proposals"
    cells = [
        (
            p.contract,
            p.kind,
            str(p.id),
            p.state.value,
            str(p.votes_for),
            str(p.votes_against),
            "?" if p.quorum is None else str(p.quorum),
            _proposal_plan(p),
        )
        for p in reply.proposals
    ]
    return _table(_PROPOSAL_COLUMNS, cells, free_last=True)
