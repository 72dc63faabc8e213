"""`wemixvisor backup create [--label L] | list | restore ID | prune | delete ID`: backups of the
node's data.

With a daemon running, every action is its control verb, sent through the control socket;
`create` and `restore` are accepted at once with an operation id and then followed through the
daemon's backup.* events (`backup_follow`; `--no-wait` returns at once). Without a daemon,
`list`, `prune` and `delete` run the same verbs on the files (`OfflineContext`), and `create` and
`restore` copy here with a progress bar, holding the daemon's lock so that no daemon starts
meanwhile; they refuse while a node runs unsupervised: a copy of a running node's data is not
consistent, and its data cannot be swapped under it.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import msgspec

from wemixvisor.backup import store as backups
from wemixvisor.commands.backup_follow import ProgressView, follow_operation
from wemixvisor.commands.common import (
    EXIT_FAILURE,
    CliContext,
    CommandError,
    add_timeout_argument,
    call,
    command_error,
    daemon_runs,
    print_reply,
    run_offline,
)
from wemixvisor.control.protocol import (
    BackupCreate,
    BackupDelete,
    BackupList,
    BackupPrune,
    BackupRestore,
    ControlError,
    new_request_id,
)
from wemixvisor.control.verbs import (
    BACKUP_CREATE,
    BACKUP_DELETE,
    BACKUP_LIST,
    BACKUP_PRUNE,
    BACKUP_RESTORE,
)
from wemixvisor.control.verbs.offline import OfflineContext, describe
from wemixvisor.control.verbs.render import size
from wemixvisor.home.layout import Home
from wemixvisor.home.state import node_pid_file
from wemixvisor.node.process import find_adoptable, find_orphan_node, read_pidfile

_DAEMON_STARTED = "a daemon started meanwhile; run the command again"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `backup` verb with its `create`, `list`, `restore`, `prune` and `delete`
    actions."""
    parser = subparsers.add_parser(
        "backup",
        help="create, list, restore or prune backups of the node's data dir",
        description=(
            "Backups live in DAEMON_DATA_BACKUP_DIR as <UTC stamp>-<label>/ with a manifest. "
            "With a daemon running the actions go through it; without one they work on the "
            "files directly."
        ),
    )
    actions = parser.add_subparsers(dest="backup_action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="back up the data dir now",
        description=(
            "Copy the data dir into a new backup. A daemon stops its node only for the last "
            "pass (what changed while the bulk was copied); without a daemon the node must be "
            "stopped."
        ),
    )
    create.add_argument(
        "--label", default="manual", type=_label, help="label of the backup (default: manual)"
    )
    _add_common(create, wait=True)
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", help="the backups, complete or not")
    _add_common(listing)
    listing.set_defaults(handler=run_list, talks_to_daemon=True)

    restore = actions.add_parser(
        "restore",
        help="put a backup back in place of the data dir",
        description=(
            "Stop the node, move the live data aside (<data>.pre-restore-<stamp>), copy the "
            "backup back, check it against its manifest and start the node again."
        ),
    )
    restore.add_argument("backup_id", metavar="ID", help="a backup id as `backup list` shows it")
    _add_common(restore, wait=True)
    restore.set_defaults(handler=run_restore)

    prune = actions.add_parser(
        "prune",
        help="remove incomplete backups and all but DAEMON_BACKUP_KEEP upgrade backups",
        description=(
            "Keeps the DAEMON_BACKUP_KEEP newest complete upgrade backups and as many data dirs "
            "set aside by restores. Never removes a backup made with `backup create` (delete "
            "those with `backup delete`), the backup an unfinished upgrade needs, nor the "
            "pre-staged copy of a pending plan."
        ),
    )
    _add_common(prune)
    prune.set_defaults(handler=run_prune)

    delete = actions.add_parser(
        "delete",
        help="remove one backup, whatever its kind",
        description=(
            "Remove a backup (or a data dir a restore set aside) as `backup list` shows it; "
            "refused while an unfinished upgrade needs it."
        ),
    )
    delete.add_argument("backup_id", metavar="ID", help="a backup id as `backup list` shows it")
    _add_common(delete)
    delete.set_defaults(handler=run_delete)


def _add_common(parser: argparse.ArgumentParser, *, wait: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    if wait:
        parser.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="follow the daemon's operation until it ends (default; --no-wait returns once "
            "it is accepted)",
        )
    add_timeout_argument(parser)


def _label(text: str) -> str:
    try:
        backups.backup_id(text, 0.0)
    except backups.BackupError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _print_json(value: object) -> None:
    print(msgspec.json.encode(value).decode())


def run_create(args: argparse.Namespace, ctx: CliContext) -> int:
    """Make a backup, through the daemon when one runs, else here."""
    config = ctx.config
    request = BackupCreate(id=new_request_id(), label=args.label)
    if daemon_runs(Home.from_config(config)):
        if args.wait:
            return follow_operation(ctx, request, timeout=args.timeout, as_json=args.json)
        reply = call(ctx, BACKUP_CREATE, request, args.timeout)
        print_reply(BACKUP_CREATE, reply, as_json=args.json)
        return 0
    with _offline(ctx, "back up") as offline:
        view = ProgressView(f"backup {args.label}")
        try:
            manifest = backups.create_backup(
                config.node.data_dir, config.backup.dir, args.label, progress=view
            )
        except (backups.BackupError, OSError) as exc:
            raise CommandError(f"backup failed: {describe(exc)}", EXIT_FAILURE) from None
        finally:
            view.close()
        removed = offline.prune_backups().removed or []
    if args.json:
        _print_json(
            {
                "id": manifest.id,
                "total_bytes": manifest.total_bytes,
                "file_count": manifest.file_count,
                "seconds": manifest.seconds,
                "pruned": removed,
            }
        )
        return 0
    print(
        f"backup {manifest.id} complete: {size(manifest.total_bytes)} in "
        f"{manifest.file_count} files ({manifest.seconds:.1f}s)"
    )
    if removed:
        print(f"pruned: {', '.join(removed)}")
    return 0


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the backups (as the daemon sees them when one runs)."""
    request = BackupList(id=new_request_id())
    if daemon_runs(Home.from_config(ctx.config)):
        reply = call(ctx, BACKUP_LIST, request, args.timeout)
    else:
        reply, _ = run_offline(ctx, BACKUP_LIST, request)
    if not reply.backups and not args.json:
        print(f"no backups in {ctx.config.backup.dir}")
        return 0
    print_reply(BACKUP_LIST, reply, as_json=args.json)
    return 0


def run_restore(args: argparse.Namespace, ctx: CliContext) -> int:
    """Restore a backup, through the daemon when one runs, else here (node stopped)."""
    config = ctx.config
    request = BackupRestore(id=new_request_id(), backup_id=args.backup_id)
    if daemon_runs(Home.from_config(config)):
        if args.wait:
            return follow_operation(ctx, request, timeout=args.timeout, as_json=args.json)
        reply = call(ctx, BACKUP_RESTORE, request, args.timeout)
        print_reply(BACKUP_RESTORE, reply, as_json=args.json)
        return 0
    with _offline(ctx, "restore into the data dir of"):
        view = ProgressView(f"restore {args.backup_id}")
        try:
            aside = backups.restore_backup(
                config.backup.dir, args.backup_id, config.node.data_dir, progress=view
            )
        except (backups.BackupError, OSError) as exc:
            raise CommandError(f"restore failed: {describe(exc)}", EXIT_FAILURE) from None
        finally:
            view.close()
    if args.json:
        _print_json({"backup_id": args.backup_id, "aside": str(aside)})
    else:
        print(
            f"restored {args.backup_id} into {config.node.data_dir}; "
            f"the data it replaced is in {aside}"
        )
    return 0


def run_prune(args: argparse.Namespace, ctx: CliContext) -> int:
    """Remove what retention does not keep."""
    request = BackupPrune(id=new_request_id())
    if daemon_runs(Home.from_config(ctx.config)):
        reply = call(ctx, BACKUP_PRUNE, request, args.timeout)
    else:
        reply, _ = run_offline(ctx, BACKUP_PRUNE, request, locked=_DAEMON_STARTED)
    print_reply(BACKUP_PRUNE, reply, as_json=args.json)
    return 0


def run_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    """Remove one backup, through the daemon when one runs, else here."""
    request = BackupDelete(id=new_request_id(), backup_id=args.backup_id)
    if daemon_runs(Home.from_config(ctx.config)):
        reply = call(ctx, BACKUP_DELETE, request, args.timeout)
    else:
        reply, _ = run_offline(ctx, BACKUP_DELETE, request, locked=_DAEMON_STARTED)
    print_reply(BACKUP_DELETE, reply, as_json=args.json)
    return 0


@contextlib.contextmanager
def _offline(ctx: CliContext, what: str) -> Iterator[OfflineContext]:
    """The home's files, under the daemon's lock, with no node running unsupervised."""
    try:
        with OfflineContext(ctx.config) as offline:
            offline.require_lock(_DAEMON_STARTED)
            _refuse_running_node(offline.home, what)
            yield offline
    except ControlError as exc:
        raise command_error(exc) from None


def _refuse_running_node(home: Home, what: str) -> None:
    pid: int | None = None
    record = read_pidfile(node_pid_file(home))
    if record is not None and find_adoptable(record) is not None:
        pid = record.pid
    else:
        orphan = find_orphan_node(home.visor_dir)
        pid = orphan.pid if orphan is not None else None
    if pid is not None:
        raise CommandError(
            f"the node (pid {pid}) runs without a daemon: cannot {what} a running node; stop it "
            "first, or start the daemon and run this again",
            EXIT_FAILURE,
        )
