"""`wemixvisor upgrade schedule | list | status | cancel`: plans as the operator handles them.

While a daemon runs on the home, they go through its control socket: `schedule` registers the
plan in its queue (the passed-height rule is the daemon's, against the head it follows), `list`
and `status` show its queue, and `cancel` cancels the plan and takes it out of the plan files.
A running daemon that does not answer is exit 3 for `cancel` (it owns its queue); `schedule`,
`list` and `status` then fall back to the files, with a warning.

With no daemon they work from the files: `schedule` merges the plan into
`<data dir>/upgrade-info.json.batch`, which the daemon reads when it starts; `list` and
`status` read the daemon's queue (`state/plans.json`), its journal and the plan files; `cancel`
edits the queue and the plan files under the daemon's lock.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from wemixvisor.chain.rpc import MalformedAnswer, RpcClient, RpcError, parse_quantity
from wemixvisor.commands.common import (
    DEFAULT_TIMEOUT,
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliContext,
    CommandError,
    open_client,
)
from wemixvisor.config import Config
from wemixvisor.control.client import ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.control.verbs import VERBS
from wemixvisor.home.layout import Home
from wemixvisor.home.state import (
    DaemonRunningError,
    daemon_lock,
    daemon_pid,
    daemon_running,
    read_journal,
    read_queue,
    write_queue,
)
from wemixvisor.plans.files import (
    batch_file,
    file_plans,
    locked_plan_files,
    plan_file,
    read_batch_objects,
    read_capped,
    remove_from_plan_files,
    write_batch_objects,
)
from wemixvisor.plans.platforms import current_platform
from wemixvisor.plans.queue import (
    MAX_PLAN_BYTES,
    Plan,
    PlanError,
    PlanStatus,
    QueuedPlan,
    QueueState,
    cancel,
    get,
    pending,
    plan_from_object,
    plan_to_object,
    validate_height,
    validate_name,
)

HEAD_TIMEOUT = 2.0
"""How long `schedule` waits for the node's head before scheduling without the check."""

NOT_YET_SEEN = "in file, not yet seen by the daemon"

_CHECKSUM_RE = re.compile(r"\A(?:sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})\Z")
_URL_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f]")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `upgrade` verb with its `schedule`, `list`, `status` and `cancel` actions."""
    parser = subparsers.add_parser(
        "upgrade",
        help="schedule, list or cancel upgrade plans",
        description=(
            "Plans are written into $DAEMON_DATA_DIR/upgrade-info.json.batch, which the daemon "
            "reads live and at every start; its queue lives in $DAEMON_HOME/wemixvisor/state."
        ),
    )
    actions = parser.add_subparsers(dest="upgrade_action", metavar="ACTION", required=True)

    schedule = actions.add_parser(
        "schedule",
        help="schedule an upgrade at a block height",
        description=(
            "Write the plan NAME at HEIGHT into the batch file. A height the chain has already "
            "passed is refused unless --now (then the daemon upgrades at once)."
        ),
    )
    schedule.add_argument("name", help="upgrade name: 1-64 characters of A-Z a-z 0-9 . _ -")
    schedule.add_argument("height", help="block height at which the upgrade starts (> 0)")
    schedule.add_argument(
        "--binary",
        metavar="URL",
        help="http(s) URL of this platform's binary or archive (written as info.binaries)",
    )
    schedule.add_argument(
        "--checksum",
        metavar="sha256:HEX",
        help="checksum of --binary: sha256:<hex> or sha512:<hex>",
    )
    schedule.add_argument("--info", metavar="JSON", help="the plan's info, a JSON object")
    schedule.add_argument(
        "--now", action="store_true", help="accept a height that has passed: upgrade at once"
    )
    schedule.set_defaults(handler=run_schedule)

    listing = actions.add_parser(
        "list",
        help="the plan queue, and plans in the files the daemon has not seen yet",
        description="Works without a running daemon: it reads the daemon's state files.",
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=run_list)

    status = actions.add_parser(
        "status",
        help="pending plans and the upgrade in progress",
        description="Works without a running daemon: it reads the daemon's state files.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=run_status)

    cancelling = actions.add_parser(
        "cancel",
        help="cancel a pending plan",
        description=(
            "Mark the plan cancelled in the queue and remove it from the plan files so that it "
            "does not come back on the next start. Goes through the daemon when one runs."
        ),
    )
    cancelling.add_argument("name", help="the plan's name")
    cancelling.set_defaults(handler=run_cancel)


def _fail(message: str, *, usage: bool = False) -> Exception:
    """The CommandError to raise: exit 2 for a bad argument, 1 for a refusal or failure."""
    # cli imports this module (via commands/__init__), so cli is imported at call time.

    return CommandError(message, EXIT_USAGE if usage else EXIT_FAILURE)


# --- building a plan from arguments -------------------------------------------------------------


def _binary_url(url: str, checksum: str | None, must_have_checksum: bool) -> str:
    # ASCII only: a URL is percent-encoded, and undecodable argv bytes cannot go into JSON.
    if len(url) > 8192 or not url.isascii() or _URL_FORBIDDEN_RE.search(url):
        raise _fail(
            "--binary must be an ASCII URL without spaces or control characters", usage=True
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(f"--binary {url!r} is not an http(s):// URL", usage=True)
    has_checksum = any(param.startswith("checksum=") for param in parts.query.split("&") if param)
    if checksum is not None:
        if not _CHECKSUM_RE.fullmatch(checksum):
            raise _fail(
                f"--checksum {checksum[:80]!r} is not sha256:<64 hex digits> or "
                "sha512:<128 hex digits>",
                usage=True,
            )
        if has_checksum:
            raise _fail("--binary already carries ?checksum=; drop --checksum", usage=True)
        url = f"{url}{'&' if parts.query else '?'}checksum={checksum.lower()}"
    elif not has_checksum and must_have_checksum:
        raise _fail(
            "--binary has no checksum and the daemon refuses such downloads "
            "(DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM); add --checksum sha256:<hex>",
            usage=True,
        )
    return url


def build_info(
    info_text: str | None, binary: str | None, checksum: str | None, must_have_checksum: bool
) -> dict[str, Any] | None:
    """The plan's `info` from `--info`, `--binary` and `--checksum` (None when none is given)."""
    info: dict[str, Any] | None = None
    if info_text is not None:
        try:
            encoded = info_text.encode()
        except UnicodeEncodeError:
            # argv bytes that are not UTF-8 arrive as lone surrogates.
            raise _fail("--info is not valid UTF-8", usage=True) from None
        if len(encoded) > MAX_PLAN_BYTES:
            raise _fail(
                f"--info is {len(encoded)} bytes, over the {MAX_PLAN_BYTES}-byte limit", usage=True
            )
        try:
            decoded = msgspec.json.decode(encoded)
        except msgspec.DecodeError as exc:
            raise _fail(f"--info is not valid JSON: {exc}", usage=True) from None
        except RecursionError:
            raise _fail("--info is not valid JSON: nested too deeply", usage=True) from None
        if not isinstance(decoded, dict):
            kind = "an array" if isinstance(decoded, list) else type(decoded).__name__
            raise _fail(f"--info must be a JSON object, got {kind}", usage=True)
        info = decoded
    if checksum is not None and binary is None:
        raise _fail("--checksum needs --binary", usage=True)
    if binary is not None:
        url = _binary_url(binary, checksum, must_have_checksum)
        info = dict(info or {})
        binaries = info.get("binaries")
        if binaries is None:
            binaries = {}
        elif not isinstance(binaries, dict):
            raise _fail("--info binaries must be an object of platform -> URL", usage=True)
        info["binaries"] = {**binaries, current_platform(): url}
    return info


def plan_from_arguments(name: str, height: str, info: dict[str, Any] | None) -> Plan:
    """The plan the operator asked for, validated like any plan file entry (SPEC §4)."""
    try:
        validate_name(name)
        validate_height(height)
        plan_object: dict[str, Any] = {"name": name, "height": height}
        if info is not None:
            plan_object["info"] = info
        return plan_from_object(plan_object, "batch")
    except PlanError as exc:
        raise _fail(str(exc), usage=True) from None


# --- scheduling ---------------------------------------------------------------------------------


def chain_head(config: Config) -> tuple[int | None, str | None]:
    """The node's head height, or None and why it is unknown (the node may well be down)."""
    try:
        result = RpcClient(config.rpc.address, timeout=HEAD_TIMEOUT).call("eth_blockNumber")
    except (RpcError, ValueError) as exc:
        return None, str(exc)
    try:
        return parse_quantity(result, "a block height"), None
    except MalformedAnswer as exc:
        return None, f"unexpected eth_blockNumber answer: {exc}"


def _file_plan(obj: object) -> Plan | None:
    try:
        return plan_from_object(obj, "batch")
    except PlanError:
        return None


def _check_queue(queue: QueueState, plan: Plan) -> None:
    existing = get(queue, plan.name)
    if existing is not None:
        status = existing.status
        if status is PlanStatus.COMPLETED:
            raise _fail(
                f"plan {plan.name!r} already completed; a completed plan never runs again "
                "(choose a new name)"
            )
        if status is PlanStatus.RUNNING:
            raise _fail(f"plan {plan.name!r} is being carried out now")
        if status is PlanStatus.FAILED:
            raise _fail(
                f"plan {plan.name!r} failed ({existing.result or 'no reason recorded'}); the "
                "daemon does not re-run a failed plan from the plan files (choose a new name)"
            )
    for entry in pending(queue):
        if entry.plan.height == plan.height and entry.plan.name != plan.name:
            raise _fail(
                f"conflict: plan {entry.plan.name!r} is already scheduled at height {plan.height}"
            )


def _check_files(home: Home, queue: QueueState, plan: Plan, entries: list[dict[str, Any]]) -> None:
    others: list[Plan] = [p for p in map(_file_plan, entries) if p is not None]
    try:
        single = read_capped(plan_file(home.data_dir))
    except (FileNotFoundError, PlanError, OSError):
        pass
    else:
        try:
            decoded = msgspec.json.decode(single)
        except (msgspec.DecodeError, RecursionError):
            decoded = None
        single_plan = _file_plan(decoded)
        if single_plan is not None:
            others.append(single_plan)
    for other in others:
        if other.name == plan.name or other.height != plan.height:
            continue
        queued = get(queue, other.name)
        # A plan the daemon already finished or cancelled no longer holds its height.
        if queued is not None and queued.status is not PlanStatus.PENDING:
            continue
        raise _fail(
            f"conflict: plan {other.name!r} is already in the plan files at height {plan.height}"
        )


def check_schedule(config: Config, plan: Plan, *, now: bool) -> tuple[QueueState, int | None]:
    """Refuse what the daemon would refuse, before anything is written: the queue, the height
    against the chain's head, and conflicts with the plan files. Returns the queue and head."""
    home = Home.from_config(config)
    queue = _read_queue_or_fail(home)
    _check_queue(queue, plan)
    try:
        _check_files(home, queue, plan, read_batch_objects(home.data_dir))
    except PlanError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot read {batch_file(home.data_dir)}: {exc.strerror or exc}") from None
    head, why_unknown = chain_head(config)
    if head is not None and plan.height <= head and not now:
        raise _fail(f"height {plan.height} has passed (head is {head}); use --now")
    if head is None:
        print(
            f"wemixvisor: head unknown ({why_unknown}); height {plan.height} not checked "
            "against the chain",
            file=sys.stderr,
        )
    return queue, head


def write_schedule(config: Config, plan: Plan, queue: QueueState) -> Path:
    """Merge `plan` into the batch file (same name replaced, others kept); the file written."""
    home = Home.from_config(config)
    try:
        with locked_plan_files(home.data_dir):
            entries = read_batch_objects(home.data_dir)
            _check_files(home, queue, plan, entries)
            merged: list[dict[str, Any]] = []
            replaced = False
            for entry in entries:
                if entry.get("name") == plan.name:
                    if not replaced:
                        merged.append(plan_to_object(plan))
                        replaced = True
                    continue
                merged.append(entry)
            if not replaced:
                merged.append(plan_to_object(plan))
            write_batch_objects(home.data_dir, merged)
    except PlanError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {batch_file(home.data_dir)}: {exc.strerror or exc}") from None
    return batch_file(home.data_dir)


def describe_pickup(home: Home) -> str:
    """How the written plan reaches the daemon, for the operator."""
    try:
        running = daemon_running(home)
    except OSError:
        return "the daemon reads it live or when it starts"
    if running:
        pid = daemon_pid(home)
        return f"the running daemon (pid {pid if pid is not None else '?'}) picks it up"
    return "the daemon reads it when it starts"


# --- through the running daemon ---------------------------------------------------------------


def _daemon_runs(home: Home) -> bool:
    try:
        return daemon_running(home)
    except OSError:
        return False


def ask_daemon(ctx: CliContext, payload: dict[str, Any]) -> Any:
    """The running daemon's result for `payload`; an error reply is exit 1 (CommandError).

    ControlUnreachable passes through: each verb decides what a silent daemon means.
    """
    with open_client(ctx, DEFAULT_TIMEOUT) as client:
        try:
            return client.request(payload)
        except ControlError as exc:
            # The daemon speaks the protocol; the operator typed a flag.
            message = exc.message.replace("send it with now=true", "use --now")
            raise _fail(f"{exc.code}: {message}") from None


def _fall_back(exc: ControlUnreachable, home: Home) -> None:
    pid = daemon_pid(home)
    print(
        f"wemixvisor: daemon (pid {pid if pid is not None else '?'}) runs but {exc}; "
        "using the plan files",
        file=sys.stderr,
    )


def _schedule_through_daemon(ctx: CliContext, plan: Plan, *, now: bool) -> bool:
    """Register the plan with the running daemon; False when it does not answer."""
    payload: dict[str, Any] = {
        "type": "schedule_upgrade",
        "name": plan.name,
        "height": plan.height,
        "now": now,
    }
    if plan.info is not None:
        payload["info"] = plan.info
    try:
        result = ask_daemon(ctx, payload)
    except ControlUnreachable as exc:
        _fall_back(exc, Home.from_config(ctx.config))
        return False
    if result.get("head") is None:
        print(
            f"wemixvisor: the daemon does not know the head yet; height {plan.height} not "
            "checked against the chain",
            file=sys.stderr,
        )
    print(VERBS["schedule_upgrade"].render(result) + " in the daemon's queue")
    return True


def run_schedule(args: argparse.Namespace, ctx: CliContext) -> int:
    """Validate the plan, refuse a passed height without --now; register it with the running
    daemon, or merge it into the batch file."""
    config = ctx.config
    # Name and height first: they are the likeliest typo, and the info may be long.
    plan_from_arguments(args.name, args.height, None)
    info = build_info(
        args.info, args.binary, args.checksum, config.upgrade.download_must_have_checksum
    )
    plan = plan_from_arguments(args.name, args.height, info)
    home = Home.from_config(config)
    if _daemon_runs(home) and _schedule_through_daemon(ctx, plan, now=args.now):
        return 0
    queue, head = check_schedule(config, plan, now=args.now)
    path = write_schedule(config, plan, queue)
    late = head is not None and plan.height <= head
    when = f"at once (height passed, head is {head})" if late else f"at height {plan.height}"
    print(f"scheduled upgrade {plan.name!r} {when} in {path}; {describe_pickup(home)}")
    return 0


# --- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """One line of `upgrade list`: a queued plan, or one only present in the plan files."""

    plan: Plan
    status: str
    late: bool = False
    result: str | None = None
    registered_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def queued(cls, entry: QueuedPlan) -> PlanRow:
        """A row for a plan in the daemon's queue."""
        return cls(
            plan=entry.plan,
            status=entry.status.value,
            late=entry.late,
            result=entry.result,
            registered_at=entry.registered_at or None,
            finished_at=entry.finished_at,
        )

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        row = plan_to_object(self.plan)
        row.update(
            status=self.status,
            source=self.plan.source,
            late=self.late,
            result=self.result,
            registered_at=self.registered_at,
            finished_at=self.finished_at,
        )
        return row


def _rows(home: Home, queue: QueueState, *, pending_only: bool) -> tuple[list[PlanRow], list[str]]:
    entries = pending(queue) if pending_only else queue.plans
    rows = [PlanRow.queued(entry) for entry in entries]
    in_files, problems = file_plans(home.data_dir)
    seen: set[str] = set()
    for plan in in_files:
        if get(queue, plan.name) is None and plan.name not in seen:
            seen.add(plan.name)
            rows.append(PlanRow(plan=plan, status="in_file", result=NOT_YET_SEEN))
    return rows, problems


def _read_queue_or_fail(home: Home) -> QueueState:
    try:
        return read_queue(home)
    except PlanError as exc:
        raise _fail(f"cannot read the plan queue: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot read the plan queue: {exc.strerror or exc}") from None


def _daemon_state(home: Home) -> dict[str, Any]:
    try:
        running: bool | None = daemon_running(home)
    except OSError:
        running = None
    return {"running": running, "pid": daemon_pid(home) if running else None}


def _table(rows: list[PlanRow]) -> str:
    header = ("NAME", "HEIGHT", "STATUS", "SOURCE", "LATE", "RESULT")
    lines = [
        (
            row.plan.name,
            str(row.plan.height),
            row.status.replace("_", " "),
            row.plan.source,
            "yes" if row.late else "",
            row.result or "",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        (
            "  ".join(cell.ljust(width) for cell, width in zip(cells[:-1], widths, strict=True))
            + "  "
            + cells[-1]
        ).rstrip()
        for cells in [header, *lines]
    )


def _row_of(obj: dict[str, Any]) -> PlanRow:
    """A `list_upgrades` row back as a PlanRow."""
    plan_object = {key: obj[key] for key in ("name", "height", "info") if key in obj}
    plan = plan_from_object(plan_object, str(obj.get("source") or "control"))
    return PlanRow(
        plan=plan,
        status=str(obj["status"]),
        late=bool(obj.get("late")),
        result=obj.get("result"),
        registered_at=obj.get("registered_at"),
        finished_at=obj.get("finished_at"),
    )


def _daemon_listing(ctx: CliContext, home: Home) -> dict[str, Any] | None:
    """The running daemon's `list_upgrades`; None when no daemon runs or it does not answer."""
    if not _daemon_runs(home):
        return None
    try:
        result: dict[str, Any] = ask_daemon(ctx, {"type": "list_upgrades"})
    except ControlUnreachable as exc:
        _fall_back(exc, home)
        return None
    return result


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the queue and the plans waiting in the files."""
    home = Home.from_config(ctx.config)
    listing = _daemon_listing(ctx, home)
    if listing is not None:
        rows = [_row_of(obj) for obj in listing["plans"]]
        problems: list[str] = listing["problems"]
        daemon = listing["daemon"]
    else:
        queue = _read_queue_or_fail(home)
        rows, problems = _rows(home, queue, pending_only=False)
        daemon = _daemon_state(home)
    rows.sort(key=lambda row: row.plan.height)
    if args.json:
        document = {
            "daemon": daemon,
            "plans": [row.as_json() for row in rows],
            "problems": problems,
        }
        print(msgspec.json.encode(document).decode())
    else:
        print(_table(rows) if rows else "no plans")
        for problem in problems:
            print(f"wemixvisor: warning: {problem}", file=sys.stderr)
    return 0


def run_status(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the pending plans and the journal of the upgrade in progress."""
    home = Home.from_config(ctx.config)
    listing = _daemon_listing(ctx, home)
    journal_error: str | None = None
    if listing is not None:
        rows = [_row_of(obj) for obj in listing["plans"] if obj["status"] in ("pending", "in_file")]
        problems: list[str] = listing["problems"]
        journal: dict[str, Any] | None = listing["journal"]
        daemon = listing["daemon"]
    else:
        queue = _read_queue_or_fail(home)
        rows, problems = _rows(home, queue, pending_only=True)
        try:
            journal = read_journal(home)
        except PlanError as exc:
            journal, journal_error = None, str(exc)
        except OSError as exc:
            journal, journal_error = None, f"cannot read the journal: {exc.strerror or exc}"
        daemon = _daemon_state(home)
    rows.sort(key=lambda row: row.plan.height)
    if args.json:
        document = {
            "daemon": daemon,
            "pending": [row.as_json() for row in rows],
            "journal": journal,
            "journal_error": journal_error,
            "problems": problems,
        }
        print(msgspec.json.encode(document).decode())
    else:
        if daemon["running"] is None:
            print("daemon: unknown (cannot read its lock)")
        elif daemon["running"]:
            print(f"daemon: running (pid {daemon['pid'] if daemon['pid'] is not None else '?'})")
        else:
            print("daemon: not running")
        if rows:
            print("pending:")
            for row in rows:
                notes = [row.plan.source]
                if row.late:
                    notes.append("late: runs at once")
                if row.status == "in_file":
                    notes.append(NOT_YET_SEEN)
                print(f"  {row.plan.name} at height {row.plan.height} ({', '.join(notes)})")
        else:
            print("pending: none")
        if journal is not None:
            print("upgrade in progress (journal):")
            for key, value in journal.items():
                print(f"  {key}: {msgspec.json.encode(value).decode()}")
        elif journal_error is None:
            print("upgrade in progress: none")
        for problem in problems:
            print(f"wemixvisor: warning: {problem}", file=sys.stderr)
    if journal_error is not None:
        print(f"wemixvisor: {journal_error}", file=sys.stderr)
        return 1
    return 0


# --- cancelling ---------------------------------------------------------------------------------


def run_cancel(args: argparse.Namespace, ctx: CliContext) -> int:
    """Cancel a pending plan: through the running daemon, or with the daemon stopped in the
    queue and the plan files, under its lock."""

    name: str = args.name
    try:
        validate_name(name)
    except PlanError as exc:
        raise _fail(str(exc), usage=True) from None
    home = Home.from_config(ctx.config)
    if _daemon_runs(home):
        try:
            result = ask_daemon(ctx, {"type": "cancel_upgrade", "name": name})
        except ControlUnreachable as exc:
            pid = daemon_pid(home)
            raise CommandError(
                f"daemon is running (pid {pid if pid is not None else '?'}) and owns the plan "
                f"queue, but its control socket does not answer: {exc}",
                EXIT_UNREACHABLE,
            ) from None
        print(VERBS["cancel_upgrade"].render(result))
        return 0
    try:
        with daemon_lock(home):
            return _cancel_locked(home, name)
    except DaemonRunningError as exc:
        raise _fail(
            f"{exc}; the daemon owns the plan queue: stop it or use the control socket"
        ) from None
    except PlanError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot cancel {name!r}: {exc.strerror or exc}") from None


def _cancel_locked(home: Home, name: str) -> int:
    queue = read_queue(home)
    entry = get(queue, name)
    if entry is not None and entry.status not in (PlanStatus.PENDING, PlanStatus.CANCELLED):
        raise _fail(f"plan {name!r} is {entry.status.value}, not pending; nothing cancelled")
    # The files first: a plan cancelled in the queue but left in a file would be registered
    # again at the next start, and from a file a passed height runs at once.
    with locked_plan_files(home.data_dir):
        removed = remove_from_plan_files(home.data_dir, name)
    for path in removed:
        print(f"removed plan {name!r} from {path}")
    if entry is None:
        if not removed:
            raise _fail(f"no plan named {name!r} in the queue or the plan files")
        print(f"cancelled plan {name!r} (the daemon had not seen it yet)")
        return 0
    if entry.status is PlanStatus.CANCELLED:
        print(f"plan {name!r} was already cancelled")
        return 0
    cancel(queue, name, at=time.time(), reason="cancelled by the operator")
    write_queue(home, queue)
    print(f"cancelled plan {name!r} at height {entry.plan.height}")
    return 0
