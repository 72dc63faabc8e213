"""`wemixvisor upgrade schedule | list | status | cancel | rehearse | rollback`: plans as the
operator handles them.

Each action is a control verb (`control.verbs.upgrades`). While a daemon runs on the home it is
sent through the control socket: `schedule` registers the plan in its queue, `list` and `status`
show its queue, `cancel` cancels the plan and takes it out of the plan files. A running daemon
that does not answer is exit 3 for `cancel` (it owns its queue); `schedule`, `list` and `status`
then fall back to the files, with a warning.

With no daemon the same verbs run on the home's files (`OfflineContext`, under the daemon's
lock): `schedule` is checked by the queue's rules and merged into
`<data dir>/upgrade-info.json.batch`, which the daemon reads when it starts; `list` and `status`
read the queue (`state/plans.json`), the journal and the plan files; `cancel` edits the queue
and the plan files.

`rehearse` and `rollback` need the running daemon (they run the node's binaries): each answers
at once with an operation id, and its outcome arrives as events (`upgrade.rehearsed`,
`upgrade.rollback_completed|failed`).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Any

import msgspec

from wemixvisor.commands.backup_follow import follow_download, subscribe
from wemixvisor.commands.common import (
    EXIT_FAILURE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliContext,
    CommandError,
    add_timeout_argument,
    ask_daemon,
    call,
    daemon_runs,
    print_text,
    run_offline,
    warn_fall_back,
)
from wemixvisor.commands.plan_details import print_preflight, run_plan_status
from wemixvisor.control.client import ControlUnreachable
from wemixvisor.control.protocol import (
    CancelUpgrade,
    ListUpgrades,
    RehearseUpgrade,
    RollbackUpgrade,
    ScheduleUpgrade,
    new_request_id,
)
from wemixvisor.control.verbs import (
    CANCEL_UPGRADE,
    LIST_UPGRADES,
    REHEARSE_UPGRADE,
    ROLLBACK_UPGRADE,
    SCHEDULE_UPGRADE,
    DaemonState,
    upgrade_status,
)
from wemixvisor.control.verbs.render import render_upgrade_status
from wemixvisor.control.verbs.replies import ListUpgradesReply
from wemixvisor.home.layout import Home
from wemixvisor.home.state import daemon_pid
from wemixvisor.plans.files import batch_file
from wemixvisor.plans.platforms import current_platform
from wemixvisor.plans.queue import (
    MAX_PLAN_BYTES,
    Plan,
    PlanError,
    plan_from_object,
    validate_height,
    validate_name,
)
from wemixvisor.upgrade.download import DownloadError
from wemixvisor.upgrade.download.source import check_url

_QUEUE_OWNER = "the daemon owns the plan queue: stop it or use the control socket"
_CHECKSUM_RE = re.compile(r"\A(?:sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})\Z")
_URL_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f]")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `upgrade` verb with its `schedule`, `list`, `status` and `cancel` actions."""
    parser = subparsers.add_parser(
        "upgrade",
        help="schedule, list or cancel upgrade plans",
        description=(
            "With a daemon running, each action goes through its control socket. Without one, "
            "plans are written into $DAEMON_DATA_DIR/upgrade-info.json.batch, which the daemon "
            "reads at every start; its queue lives in $DAEMON_HOME/wemixvisor/state."
        ),
    )
    actions = parser.add_subparsers(dest="upgrade_action", metavar="ACTION", required=True)

    schedule = actions.add_parser(
        "schedule",
        help="schedule an upgrade at a block height",
        description=(
            "Register the plan NAME at HEIGHT with the running daemon, or (no daemon) write it "
            "into the batch file. A height already due (head >= HEIGHT-1) is refused unless --now "
            "(then the daemon upgrades at once)."
        ),
    )
    schedule.add_argument("name", help="upgrade name: 1-64 characters of A-Z a-z 0-9 . _ -")
    schedule.add_argument(
        "height",
        help="H, the new binary's first block (the fork block): the switch comes once the old "
        "binary holds H-1 (> 0)",
    )
    schedule.add_argument(
        "--binary",
        metavar="URL",
        help=(
            "http(s):// or file:/// URL of this platform's binary or archive (written as "
            "info.binaries)"
        ),
    )
    schedule.add_argument(
        "--checksum",
        metavar="sha256:HEX",
        help="checksum of --binary: sha256:<hex> or sha512:<hex>",
    )
    schedule.add_argument("--info", metavar="JSON", help="the plan's info, a JSON object")
    schedule.add_argument(
        "--now", action="store_true", help="accept a height already due: upgrade at once"
    )
    schedule.add_argument(
        "--follow",
        action="store_true",
        help="show the running daemon's download of the binary until it is installed",
    )
    schedule.add_argument(
        "--rehearse",
        action="store_true",
        help="rehearse the new binary on a copy of the data hours ahead; never upgrade without "
        "a passing rehearsal",
    )
    schedule.add_argument(
        "--window",
        metavar="W",
        type=int,
        help="a rolling window of W blocks: switch in this node's slot in [HEIGHT-W, "
        "HEIGHT-margin] while the other validators keep the quorum (mode window)",
    )
    schedule.set_defaults(handler=run_schedule)

    listing = actions.add_parser(
        "list",
        help="the plan queue, and plans in the files the daemon has not seen yet",
        description="Works without a running daemon: it reads the daemon's state files.",
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(handler=run_list, talks_to_daemon=True)

    status = actions.add_parser(
        "status",
        help="pending plans and the upgrade in progress, or one plan's details",
        description="Works without a running daemon: it reads the daemon's state files.",
    )
    status.add_argument("name", nargs="?", help="show this plan's details")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=run_status, talks_to_daemon=True)

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

    rehearsing = actions.add_parser(
        "rehearse",
        help="run a pending plan's binary on a scratch copy of its pre-staged backup",
        description=(
            "Start the plan's new binary on a scratch copy of its pre-staged backup, on a free "
            "port without peers ([upgrade] rehearsal_args), until it answers RPC at the copied "
            "head; the outcome is the upgrade.rehearsed event. Needs the running daemon."
        ),
    )
    rehearsing.add_argument("name", help="the plan's name")
    add_timeout_argument(rehearsing)
    rehearsing.set_defaults(handler=run_rehearse)

    rolling_back = actions.add_parser(
        "rollback",
        help="roll a completed upgrade back to the binary before it",
        description=(
            "Stop the node, point `current` back at the binary the upgrade replaced (with "
            "--restore, put the upgrade's backup back in place of the data) and start it; "
            "journaled, resumed after a daemon crash. Needs the running daemon."
        ),
    )
    rolling_back.add_argument("name", help="the completed upgrade's name")
    rolling_back.add_argument(
        "--restore",
        action="store_true",
        help="also restore the backup made at the upgrade (what the new binary wrote is lost)",
    )
    add_timeout_argument(rolling_back)
    rolling_back.set_defaults(handler=run_rollback)


def _usage(message: str) -> CommandError:
    """The error for a bad argument: exit 2."""
    return CommandError(message, EXIT_USAGE)


def _binary_url(url: str, checksum: str | None, must_have_checksum: bool) -> str:
    # ASCII only: a URL is percent-encoded, and undecodable argv bytes cannot go into JSON.
    if len(url) > 8192 or not url.isascii() or _URL_FORBIDDEN_RE.search(url):
        raise _usage("--binary must be an ASCII URL without spaces or control characters")
    try:
        parts = check_url(url)  # the downloader's own check: http(s):// or file:///path
    except DownloadError as exc:
        raise _usage(f"--binary: {exc}") from None
    has_checksum = any(param.startswith("checksum=") for param in parts.query.split("&") if param)
    if checksum is not None:
        if not _CHECKSUM_RE.fullmatch(checksum):
            raise _usage(
                f"--checksum {checksum[:80]!r} is not sha256:<64 hex digits> or "
                "sha512:<128 hex digits>",
            )
        if has_checksum:
            raise _usage("--binary already carries ?checksum=; drop --checksum")
        url = f"{url}{'&' if parts.query else '?'}checksum={checksum.lower()}"
    elif not has_checksum and must_have_checksum:
        raise _usage(
            "--binary has no checksum and the daemon refuses such downloads "
            "(DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM); add --checksum sha256:<hex>",
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
            raise _usage("--info is not valid UTF-8") from None
        if len(encoded) > MAX_PLAN_BYTES:
            raise _usage(f"--info is {len(encoded)} bytes, over the {MAX_PLAN_BYTES}-byte limit")
        try:
            decoded = msgspec.json.decode(encoded)
        except msgspec.DecodeError as exc:
            raise _usage(f"--info is not valid JSON: {exc}") from None
        except RecursionError:
            raise _usage("--info is not valid JSON: nested too deeply") from None
        if not isinstance(decoded, dict):
            kind = "an array" if isinstance(decoded, list) else type(decoded).__name__
            raise _usage(f"--info must be a JSON object, got {kind}")
        info = decoded
    if checksum is not None and binary is None:
        raise _usage("--checksum needs --binary")
    if binary is not None:
        url = _binary_url(binary, checksum, must_have_checksum)
        info = dict(info or {})
        binaries = info.get("binaries")
        if binaries is None:
            binaries = {}
        elif not isinstance(binaries, dict):
            raise _usage("--info binaries must be an object of platform -> URL")
        info["binaries"] = {**binaries, current_platform(): url}
    return info


def plan_from_arguments(
    name: str,
    height: str,
    info: dict[str, Any] | None,
    *,
    rehearse: bool = False,
    window: int | None = None,
) -> Plan:
    """The plan the operator asked for, validated like any plan file entry (SPEC §4)."""
    try:
        validate_name(name)
        validate_height(height)
        plan_object: dict[str, Any] = {"name": name, "height": height}
        if info is not None:
            plan_object["info"] = info
        if rehearse:
            plan_object["rehearse"] = True
        if window is not None:
            plan_object["mode"], plan_object["window"] = "window", window
        return plan_from_object(plan_object, "batch")
    except PlanError as exc:
        raise _usage(str(exc)) from None


def schedule_request(plan: Plan, *, now: bool) -> ScheduleUpgrade:
    """The `schedule_upgrade` request for `plan`."""
    return ScheduleUpgrade(
        id=new_request_id(),
        name=plan.name,
        height=plan.height,
        info=plan.info,
        now=now,
        rehearse=plan.rehearse,
        mode=None if plan.mode == "at" else plan.mode,
        window=plan.window,
    )


def check_schedule(ctx: CliContext, request: ScheduleUpgrade) -> None:
    """With no daemon running, refuse now what scheduling `request` would refuse (nothing is
    written); with a daemon, it decides when asked."""
    if not daemon_runs(Home.from_config(ctx.config)):
        run_offline(ctx, SCHEDULE_UPGRADE, request, dry_run=True)


def schedule(ctx: CliContext, request: ScheduleUpgrade) -> None:
    """Register the plan with the running daemon, or merge it into the batch file; print what
    was done."""
    home = Home.from_config(ctx.config)
    if daemon_runs(home):
        try:
            reply = ask_daemon(ctx, SCHEDULE_UPGRADE, request)
        except ControlUnreachable as exc:
            warn_fall_back(exc, home)
        else:
            if reply.head is None:
                print(
                    f"wemixvisor: the daemon does not know the head yet; height {reply.height} "
                    "not checked against the chain",
                    file=sys.stderr,
                )
            print(SCHEDULE_UPGRADE.render(reply) + " in the daemon's queue")
            print_preflight(reply)
            return
    reply, offline = run_offline(ctx, SCHEDULE_UPGRADE, request)
    print(
        f"{SCHEDULE_UPGRADE.render(reply)} in {batch_file(home.data_dir)}; "
        f"{_pickup(offline.daemon_state())}"
    )
    print_preflight(reply)


def _pickup(daemon: DaemonState) -> str:
    """How a plan written into the files reaches the daemon, for the operator."""
    if daemon.running is None:
        return "the daemon reads it live or when it starts"
    if daemon.running:
        pid = daemon.pid if daemon.pid is not None else "?"
        return f"the running daemon (pid {pid}) picks it up"
    return "the daemon reads it when it starts"


def run_schedule(args: argparse.Namespace, ctx: CliContext) -> int:
    """Validate the plan, then schedule it through the daemon or in the files."""
    # Name and height first: they are the likeliest typo, and the info may be long.
    plan_from_arguments(args.name, args.height, None)
    must_have_checksum = ctx.config.upgrade.download_must_have_checksum
    info = build_info(args.info, args.binary, args.checksum, must_have_checksum)
    plan = plan_from_arguments(
        args.name, args.height, info, rehearse=args.rehearse, window=args.window
    )
    request = schedule_request(plan, now=args.now)
    home = Home.from_config(ctx.config)
    if not args.follow or not daemon_runs(home):
        schedule(ctx, request)
        return 0
    binary = home.upgrade_bin(plan.name)
    subscriber = subscribe(ctx, ["download.", "plan.preflight_failed"])
    try:
        schedule(ctx, request)
        if os.path.lexists(binary):
            print(f"{binary} is installed: nothing to download")
            return 0
        alive = functools.partial(daemon_runs, home)
        return follow_download(subscriber, plan.name, binary, daemon_alive=alive)
    finally:
        subscriber.close()


def _listing(ctx: CliContext) -> tuple[ListUpgradesReply, str | None]:
    """`list_upgrades` from the running daemon, or from the files; and why the journal could not
    be read (offline)."""
    home = Home.from_config(ctx.config)
    request = ListUpgrades(id=new_request_id())
    if daemon_runs(home):
        try:
            return ask_daemon(ctx, LIST_UPGRADES, request), None
        except ControlUnreachable as exc:
            warn_fall_back(exc, home)
    reply, offline = run_offline(ctx, LIST_UPGRADES, request)
    return reply, offline.journal_error


def _warn(problems: list[str]) -> None:
    for problem in problems:
        print(f"wemixvisor: warning: {problem}", file=sys.stderr)


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the queue and the plans waiting in the files."""
    reply, _ = _listing(ctx)
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        print_text(LIST_UPGRADES.render(reply))
        _warn(reply.problems)
    return 0


def run_status(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the pending plans and the journal of the upgrade in progress (or one plan)."""
    if args.name is not None:
        return run_plan_status(args.name, *_listing(ctx), as_json=args.json)
    status = upgrade_status(*_listing(ctx))
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(render_upgrade_status(status))
        _warn(status.problems)
    if status.journal_error is not None:
        print(f"wemixvisor: {status.journal_error}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def run_cancel(args: argparse.Namespace, ctx: CliContext) -> int:
    """Cancel a pending plan: through the running daemon, or with the daemon stopped in the
    queue and the plan files, under its lock."""
    try:
        name = validate_name(args.name)
    except PlanError as exc:
        raise _usage(str(exc)) from None
    request = CancelUpgrade(id=new_request_id(), name=name)
    home = Home.from_config(ctx.config)
    if daemon_runs(home):
        try:
            reply = ask_daemon(ctx, CANCEL_UPGRADE, request)
        except ControlUnreachable as exc:
            pid = daemon_pid(home)
            raise CommandError(
                f"daemon is running (pid {pid if pid is not None else '?'}) and owns the plan "
                f"queue, but its control socket does not answer: {exc}",
                EXIT_UNREACHABLE,
            ) from None
    else:
        reply, _ = run_offline(ctx, CANCEL_UPGRADE, request, locked=_QUEUE_OWNER)
    print(CANCEL_UPGRADE.render(reply))
    return 0


def _plan_name(text: str) -> str:
    try:
        return validate_name(text)
    except PlanError as exc:
        raise _usage(str(exc)) from None


def run_rehearse(args: argparse.Namespace, ctx: CliContext) -> int:
    """Have the daemon rehearse a pending plan; print the operation."""
    request = RehearseUpgrade(id=new_request_id(), name=_plan_name(args.name))
    print(REHEARSE_UPGRADE.render(call(ctx, REHEARSE_UPGRADE, request, args.timeout)))
    return 0


def run_rollback(args: argparse.Namespace, ctx: CliContext) -> int:
    """Have the daemon roll a completed upgrade back; print the operation."""
    request = RollbackUpgrade(id=new_request_id(), name=_plan_name(args.name), restore=args.restore)
    print(ROLLBACK_UPGRADE.render(call(ctx, ROLLBACK_UPGRADE, request, args.timeout)))
    return 0
