"""`wemixvisor backup create [--label L] | list | restore ID | prune`: backups of the node's data.

With a daemon running, every action goes through its control socket; `create` and `restore`
are accepted at once with an operation id and then followed through the daemon's backup.*
events (a progress bar on a terminal, plain lines otherwise) until they end (`--no-wait`
returns at once). Without a daemon the files are worked on directly, holding the daemon's lock
so that no daemon starts meanwhile; `create` and `restore` then refuse while a node runs
unsupervised: a copy of a running node's data is not consistent, and its data cannot be swapped
under it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import msgspec

from wemixvisor.backup import store as backups
from wemixvisor.commands.common import (
    EXIT_FAILURE,
    CliContext,
    CommandError,
    add_timeout_argument,
    open_client,
    print_result,
    request,
)
from wemixvisor.config import Config
from wemixvisor.control.client import ControlClient
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home
from wemixvisor.home.state import DaemonRunningError, daemon_lock, daemon_running, node_pid_file
from wemixvisor.node.process import find_adoptable, find_orphan_node, read_pidfile
from wemixvisor.plans.queue import PlanError

CONNECT_WAIT = 2.0
"""Seconds to let the events subscription settle before a long request is sent."""

ALIVE_CHECK = 5.0
"""Seconds without an event of the operation before the daemon is asked whether it lives (and,
for a create, whether the backup completed: a late subscriber may have missed the end)."""

_SUCCESS = ("backup.completed", "backup.restored")
_FAILURE = ("backup.failed", "backup.cancelled")
_BAR_WIDTH = 30
_MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `backup` verb with its `create`, `list`, `restore` and `prune` actions."""
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
    listing.set_defaults(handler=run_list)

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
        help="remove incomplete backups and all but DAEMON_BACKUP_KEEP complete ones",
        description=(
            "Never removes the backup an unfinished upgrade needs, nor the pre-staged copy of "
            "a pending plan."
        ),
    )
    _add_common(prune)
    prune.set_defaults(handler=run_prune)


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


def _fail(message: str) -> Exception:
    # cli imports this module (via commands/__init__), so cli is imported at call time.

    return CommandError(message, EXIT_FAILURE)


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


# --- handlers ---------------------------------------------------------------------------------


def run_create(args: argparse.Namespace, ctx: CliContext) -> int:
    """Make a backup, through the daemon when one runs, else directly."""
    config = ctx.config
    home = Home.from_config(config)
    if daemon_running(home):
        payload = {"type": "backup_create", "label": args.label}
        return _long_operation(args, ctx, payload, created=True)
    with _offline(home):
        _refuse_running_node(home, "back up")
        view = ProgressView(f"backup {args.label}")
        try:
            manifest = backups.create_backup(
                config.node.data_dir, config.backup.dir, args.label, progress=view
            )
        except (backups.BackupError, OSError) as exc:
            raise _fail(f"backup failed: {_describe(exc)}") from None
        finally:
            view.close()
        removed = _prune_offline(home, config)
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
        f"backup {manifest.id} complete: {_size(manifest.total_bytes)} in "
        f"{manifest.file_count} files ({manifest.seconds:.1f}s)"
    )
    if removed:
        print(f"pruned: {', '.join(removed)}")
    return 0


def run_list(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the backups (as the daemon sees them when one runs)."""
    config = ctx.config
    if daemon_running(Home.from_config(config)):
        with open_client(ctx, args.timeout) as client:
            rows: list[dict[str, Any]] = list(request(client, {"type": "backup_list"})["backups"])
    else:
        rows = msgspec.to_builtins(backups.list_backups(config.backup.dir))
    if args.json:
        _print_json({"backups": rows})
        return 0
    if not rows:
        print(f"no backups in {config.backup.dir}")
        return 0
    table = [("ID", "STATE", "SIZE", "FILES", "CREATED (UTC)")]
    for row in rows:
        created = time.gmtime(float(row.get("created_at") or 0))
        table.append(
            (
                str(row.get("id")),
                _state(row),
                _size(int(row.get("total_bytes") or 0)),
                str(row.get("file_count") or 0),
                time.strftime("%Y-%m-%d %H:%M:%S", created),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def run_restore(args: argparse.Namespace, ctx: CliContext) -> int:
    """Restore a backup, through the daemon when one runs, else directly (node stopped)."""
    config = ctx.config
    home = Home.from_config(config)
    if daemon_running(home):
        payload = {"type": "backup_restore", "backup_id": args.backup_id}
        return _long_operation(args, ctx, payload, created=False)
    with _offline(home):
        _refuse_running_node(home, "restore into the data dir of")
        view = ProgressView(f"restore {args.backup_id}")
        try:
            aside = backups.restore_backup(
                config.backup.dir, args.backup_id, config.node.data_dir, progress=view
            )
        except (backups.BackupError, OSError) as exc:
            raise _fail(f"restore failed: {_describe(exc)}") from None
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
    config = ctx.config
    home = Home.from_config(config)
    if daemon_running(home):
        with open_client(ctx, args.timeout) as client:
            result = request(client, {"type": "backup_prune"})
        print_result("backup_prune", result, as_json=args.json)
        return 0
    with _offline(home):
        removed = _prune_offline(home, config)
    if args.json:
        _print_json({"operation": None, "removed": removed})
    else:
        print("removed: " + (", ".join(removed) or "nothing"))
    return 0


# --- without a daemon -------------------------------------------------------------------------


@contextlib.contextmanager
def _offline(home: Home) -> Iterator[None]:
    """Hold the daemon's lock while working on the files; CommandError when a daemon has it."""
    try:
        lock = daemon_lock(home)
        lock.__enter__()
    except DaemonRunningError as exc:
        raise _fail(f"a daemon started meanwhile ({exc}); run the command again") from None
    except PlanError as exc:
        raise _fail(str(exc)) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _refuse_running_node(home: Home, what: str) -> None:
    pid: int | None = None
    record = read_pidfile(node_pid_file(home))
    if record is not None and find_adoptable(record) is not None:
        pid = record.pid
    else:
        orphan = find_orphan_node(home.visor_dir)
        pid = orphan.pid if orphan is not None else None
    if pid is not None:
        raise _fail(
            f"the node (pid {pid}) runs without a daemon: cannot {what} a running node; stop it "
            "first, or start the daemon and run this again"
        )


def _prune_offline(home: Home, config: Config) -> list[str]:
    try:
        protected = backups.protected_backups(home, config.backup.dir)
        return backups.prune_backups(config.backup.dir, config.backup.keep, protected)
    except (backups.BackupError, OSError) as exc:
        raise _fail(f"prune failed: {_describe(exc)}") from None


# --- through the daemon -----------------------------------------------------------------------


def _long_operation(
    args: argparse.Namespace, ctx: CliContext, payload: dict[str, Any], *, created: bool
) -> int:
    verb = str(payload["type"])
    if not args.wait:
        with open_client(ctx, args.timeout) as client:
            print_result(verb, request(client, payload), as_json=args.json)
        return 0
    # Subscribed before asking: events published before a subscriber joins are lost.
    subscriber = EventSubscriber([ctx.config.events.endpoint], ["backup."])
    try:
        settle = time.monotonic() + CONNECT_WAIT
        while not subscriber.connected and time.monotonic() < settle:
            subscriber.receive(timeout=0.05)
        with open_client(ctx, args.timeout) as client:
            result = request(client, payload)
            operation = str(result["operation"])
            if not args.json:
                print(f"{verb.replace('_', ' ')}: operation {operation}", file=sys.stderr)
            return _follow(
                subscriber,
                client,
                operation,
                created=operation if created else None,
                as_json=args.json,
            )
    finally:
        subscriber.close()


def _follow(
    subscriber: EventSubscriber,
    client: ControlClient,
    operation: str,
    *,
    created: str | None,
    as_json: bool,
) -> int:
    """Show the operation's events until it ends; exit 0 on success, 1 on failure."""
    view = ProgressView(operation)
    quiet_since = time.monotonic()
    try:
        while True:
            event = subscriber.receive(timeout=1.0)
            if event is None or event.payload.get("id") != operation:
                if time.monotonic() - quiet_since >= ALIVE_CHECK:
                    quiet_since = time.monotonic()
                    # Raises exit 3 when the daemon went away.
                    rows = request(client, {"type": "backup_list"})["backups"]
                    if created is not None and any(
                        row.get("id") == created and row.get("complete") for row in rows
                    ):
                        view.close()
                        print(f"backup {created} complete")
                        return 0
                continue
            quiet_since = time.monotonic()
            payload = event.payload
            if as_json:
                print(event.to_json().decode(), flush=True)
            if event.topic == "backup.progress":
                if not as_json:
                    view(int(payload.get("bytes_done") or 0), int(payload.get("bytes_total") or 0))
            elif event.topic in _SUCCESS:
                view.close()
                if not as_json:
                    print(_describe_end(event.topic, payload))
                return 0
            elif event.topic in _FAILURE:
                view.close()
                reason = payload.get("error") or payload.get("reason") or ""
                raise _fail(f"{event.topic} {operation}: {reason}")
    except KeyboardInterrupt:
        view.close()
        print(
            f"{operation} goes on in the daemon; follow it with `wemixvisor events backup.`",
            file=sys.stderr,
        )
        return 0


def _describe_end(topic: str, payload: dict[str, Any]) -> str:
    seconds = float(payload.get("seconds") or 0)
    if topic == "backup.restored":
        return (
            f"restored {payload.get('backup_id')} in {seconds:.1f}s; "
            f"the data it replaced is in {payload.get('aside')}"
        )
    return (
        f"backup {payload.get('id')} complete: {_size(int(payload.get('total_bytes') or 0))}, "
        f"{_size(int(payload.get('changed_bytes') or 0))} copied ({seconds:.1f}s)"
    )


# --- presentation -----------------------------------------------------------------------------


class ProgressView:
    """Progress of a long copy on stderr: a bar redrawn in place on a terminal, else a plain
    line at most every few seconds (logs and pipes)."""

    def __init__(self, title: str, stream: IO[str] | None = None) -> None:
        self.title = title
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self._interval = 0.1 if self.tty else 2.0
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Show `done` of `total` bytes (rate-limited)."""
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        fraction = min(done / total, 1.0) if total > 0 else 0.0
        figures = f"{fraction:4.0%} {done / _MIB:,.1f}/{total / _MIB:,.1f} MiB"
        if self.tty:
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            self.stream.write(f"\r{self.title} [{bar}] {figures}")
            self._drawn = True
        else:
            self.stream.write(f"{self.title}: {figures}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _state(row: dict[str, Any]) -> str:
    if row.get("complete"):
        return "complete"
    if row.get("plan"):
        return f"staged for {row['plan']}"
    return "INCOMPLETE"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)
