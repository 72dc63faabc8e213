"""Rehearsal of a plan's new binary, hours before H (SPEC §19).

The new binary runs on a scratch copy of the plan's pre-staged backup, on a free port, without
peers (`[upgrade] rehearsal_args`, per chain), until it answers RPC on the copied chain (past
genesis when the copy's chain was: the head the daemon saw as the copy began is recorded with
it): a binary that cannot open this node's data, or ignores it, is caught before H, not at H.
The live data dir and the backup are only read. The scratch copy lives in
`<backups>/.rehearsal-<run>-<plan>/` (a reflink or a plain copy, never hard links, so nothing
the rehearsal writes reaches the backup); it and the process are always removed afterwards,
and a daemon's next start removes what a killed daemon left (`remove_leftovers`).

`rehearse` blocks: it runs as an orchestrator job. The decisions (`fill_args`, `endpoint_kind`,
`answered_enough`) are pure.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
from loguru import logger

from wemixvisor.backup import store as backups
from wemixvisor.backup.index import find_plan_backup
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.config import Config
from wemixvisor.home.layout import Home
from wemixvisor.messages import events as ev
from wemixvisor.messages.plans import Refusal
from wemixvisor.node.process import spawn_node
from wemixvisor.plans.queue import PlanStatus, QueuedPlan, RehearsalRecord

__all__ = [
    "LOG_TAIL_LINES",
    "SCRATCH_PREFIX",
    "RehearsalOutcome",
    "answered_enough",
    "endpoint_kind",
    "fill_args",
    "refuse_rehearsal",
    "rehearse",
    "remove_leftovers",
]

SCRATCH_PREFIX = ".rehearsal-"
"""Scratch directories in the backups dir start with this (never a backup id: those start with
a date)."""

LOG_TAIL_LINES = 20
"""Lines of the rehearsal's own log carried by a failed `upgrade.rehearsed`."""

POLL_INTERVAL = 0.1
"""Seconds between two RPC attempts while the rehearsed binary starts."""

_RUN = secrets.token_hex(4)  # scratch dirs of this daemon process carry it; others are left-overs
_RECORD = "rehearsal.json"
_LOG = "rehearsal.log"
_MAX_IPC_PATH = 100  # sun_path holds 108 bytes; keep a margin
_TAIL_BYTES = 64 * 1024
_LINE_CHARS = 500
_PLACEHOLDER_RE = re.compile(r"\{(datadir|port|ipc)\}")


def fill_args(template: Sequence[str], *, datadir: Path, port: int, ipc: Path) -> list[str]:
    """`[upgrade] rehearsal_args` with `{datadir}`, `{port}` and `{ipc}` filled in."""
    values = {"datadir": str(datadir), "port": str(port), "ipc": str(ipc)}
    return [_PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], arg) for arg in template]


def endpoint_kind(template: Sequence[str]) -> str | None:
    """Where the rehearsed binary is asked: `port` (HTTP on the free port) when the arguments
    name `{port}`, else `ipc` when they name `{ipc}`; None when they name neither."""
    named = {name for arg in template for name in _PLACEHOLDER_RE.findall(arg)}
    if "port" in named:
        return "port"
    if "ipc" in named:
        return "ipc"
    return None


def answered_enough(head: int | None, expected: int | None) -> bool:
    """Whether an answer shows the copied chain rather than a new one: past genesis when the
    chain had blocks as it was copied (`expected`, the head recorded with the copy), any
    answer when it had none or nothing was recorded.

    Not "at the recorded head": the copy is taken while the node runs, and a node reopening
    such a copy may rewind to its last persisted state (geth's database, anvil's
    `--state-interval`), so only a binary that ignores the copied data and starts a chain of
    its own is told apart with certainty."""
    if head is None:
        return False
    return expected is None or expected == 0 or head > 0


@dataclass
class RehearsalOutcome:
    """How a rehearsal went. `needs_staging`: there is no pre-staged copy to rehearse on yet."""

    ok: bool
    seconds: float = 0.0
    head: int | None = None
    reason: str = ""
    log_tail: list[str] = field(default_factory=list)
    start_seconds: float | None = None  # from the binary's start to its good answer
    needs_staging: bool = False

    def event(self, name: str) -> ev.UpgradeRehearsed:
        """`upgrade.rehearsed` for plan `name`."""
        return ev.UpgradeRehearsed(
            name=name,
            ok=self.ok,
            seconds=self.seconds,
            head=self.head,
            reason=self.reason,
            log_tail=self.log_tail,
        )

    def record(self, at: float) -> RehearsalRecord:
        """What the plan queue keeps of it (the plan's readiness)."""
        return RehearsalRecord(
            ok=self.ok, at=at, seconds=self.seconds, head=self.head, reason=self.reason
        )


def refuse_rehearsal(
    entry: QueuedPlan | None, name: str, *, config: Config, busy: str | None, installed: bool
) -> Refusal | None:
    """Why a rehearsal of plan `name` is refused now (None: it may start). `busy` names what
    runs (an upgrade, a rollback, another rehearsal); `installed`: its binary is in place."""
    if entry is None:
        return Refusal("not_found", f"no plan named {name!r}")
    if entry.status is not PlanStatus.PENDING:
        return Refusal("conflict", f"plan {name!r} is {entry.status.value}, not pending")
    if busy is not None:
        return Refusal("busy", f"{busy} is running; try again afterwards")
    if endpoint_kind(config.upgrade.rehearsal_args) is None:
        return Refusal(
            "bad_request",
            "[upgrade] rehearsal_args must name {port} or {ipc} (see the configs/ templates)",
        )
    if config.backup.skip:
        return Refusal(
            "bad_request", "a rehearsal runs on the pre-staged backup, and backups are skipped"
        )
    if not installed:
        return Refusal("conflict", f"the binary of {name!r} is not installed yet")
    return None


class _Record(msgspec.Struct, frozen=True):
    """`rehearsal.json` in the scratch dir: the process to kill if the daemon dies."""

    pid: int
    create_time: float
    ipc: str


class _StagedHead(msgspec.Struct):
    """The head recorded with a pre-staged copy, when its manifest carries one."""

    head: int | None = None


def _expected_head(staged: Path) -> int | None:
    try:
        raw = (staged / backups.MANIFEST).read_bytes()
        head = msgspec.json.decode(raw, type=_StagedHead).head
    except (OSError, msgspec.DecodeError):
        return None
    return head if head is not None and head >= 0 else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ipc_path(scratch: Path) -> Path:
    path = scratch / "node.ipc"
    if len(os.fsencode(path)) <= _MAX_IPC_PATH:
        return path
    return Path(tempfile.gettempdir()) / f"wemixvisor-rehearsal-{_RUN}-{secrets.token_hex(4)}.ipc"


def _log_tail(log: Path) -> list[str]:
    try:
        with log.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - _TAIL_BYTES, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rstrip()[:_LINE_CHARS] for line in text.splitlines() if line.strip()]
    return lines[-LOG_TAIL_LINES:]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _remove(scratch: Path, ipc: Path | None) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    if ipc is not None and not ipc.is_relative_to(scratch):
        with contextlib.suppress(OSError):
            ipc.unlink()


def remove_leftovers(backups_dir: Path) -> list[str]:
    """Kill the processes and remove the scratch dirs of rehearsals that an earlier daemon
    left (it was killed mid-rehearsal); the names removed. This process's own are kept."""
    try:
        children = list(os.scandir(backups_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed: list[str] = []
    for child in children:
        if not child.name.startswith(SCRATCH_PREFIX) or child.name.startswith(
            f"{SCRATCH_PREFIX}{_RUN}-"
        ):
            continue
        scratch = Path(child.path)
        ipc: Path | None = None
        try:
            record = msgspec.json.decode((scratch / _RECORD).read_bytes(), type=_Record)
        except (OSError, msgspec.DecodeError):
            record = None
        if record is not None:
            ipc = Path(record.ipc)
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(record.pid)
                # A recycled pid is somebody else's: only the recorded process is killed.
                if abs(proc.create_time() - record.create_time) < 0.05:
                    _kill_group(record.pid)
        if child.is_dir(follow_symlinks=False):
            _remove(scratch, ipc)
        else:
            with contextlib.suppress(OSError):
                scratch.unlink()
        removed.append(child.name)
    return removed


def rehearse(
    home: Home,
    config: Config,
    plan_name: str,
    *,
    stopping: threading.Event,
    on_started: Callable[[int, int | None], None] = lambda port, expected: None,
) -> RehearsalOutcome:
    """Run plan `plan_name`'s binary on a scratch copy of its pre-staged backup until it answers
    RPC at the copied head, or fails, or `[upgrade] rehearsal_timeout` passes, or `stopping` is
    set; then remove the process and the copy, whatever happened. Never raises.

    `on_started(port, expected head)` is called once the binary runs.
    """
    began = time.monotonic()
    backups_dir = config.backup.dir
    found = find_plan_backup(backups_dir, plan_name, complete=False)
    if found is None:
        return RehearsalOutcome(False, reason="no pre-staged backup yet", needs_staging=True)
    staged = found[0]
    binary = home.upgrade_bin(plan_name)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return RehearsalOutcome(False, reason=f"{binary} is not an executable file")
    scratch = backups_dir / f"{SCRATCH_PREFIX}{_RUN}-{plan_name}"
    ipc: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    outcome: RehearsalOutcome | None = None
    try:
        _remove(scratch, None)
        scratch.mkdir(mode=0o700)
        ipc = _ipc_path(scratch)
        try:
            backups.stage(
                staged / backups.DATA,
                scratch / backups.DATA,
                live=True,  # the staging copy may be refreshed meanwhile
                space_dir=backups_dir,
                cancel=stopping,
            )
            rehearsed = scratch / "bin" / binary.name
            rehearsed.parent.mkdir(mode=0o700)
            # A copy outside the home: nothing takes it for the node (a daemon restarted
            # meanwhile adopts binaries of the home that run without node.pid).
            shutil.copyfile(binary, rehearsed)
            rehearsed.chmod(0o700)
        except backups.BackupCancelled:
            outcome = RehearsalOutcome(False, reason="the daemon is stopping")
            return outcome
        except (backups.BackupError, OSError) as exc:
            outcome = RehearsalOutcome(False, reason=f"cannot copy the pre-staged backup: {exc}")
            return outcome
        process, outcome = _run(
            config,
            binary=rehearsed,
            scratch=scratch,
            ipc=ipc,
            staged=staged,
            stopping=stopping,
            on_started=on_started,
        )
        return outcome
    except Exception as exc:  # noqa: BLE001 - a rehearsal ends reported, and cleaned up
        logger.exception("rehearsal of {} failed unexpectedly", plan_name)
        outcome = RehearsalOutcome(False, reason=f"internal error: {exc!r}")
        return outcome
    finally:
        if process is not None:
            _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        tail = _log_tail(scratch / _LOG)
        _remove(scratch, ipc)
        if outcome is not None:
            # The log dies with the scratch dir: a failure keeps its tail.
            if not outcome.ok:
                outcome.log_tail = tail
            outcome.seconds = time.monotonic() - began


def _run(
    config: Config,
    *,
    binary: Path,
    scratch: Path,
    ipc: Path,
    staged: Path,
    stopping: threading.Event,
    on_started: Callable[[int, int | None], None],
) -> tuple[subprocess.Popen[bytes] | None, RehearsalOutcome]:
    template = config.upgrade.rehearsal_args
    kind = endpoint_kind(template)
    if kind is None:
        return None, RehearsalOutcome(
            False, reason="[upgrade] rehearsal_args names neither {port} nor {ipc}"
        )
    port = _free_port()
    args = fill_args(template, datadir=scratch / backups.DATA, port=port, ipc=ipc)
    expected = _expected_head(staged)
    try:
        # The node's own way of starting: own session, output straight into the log file.
        spawned = spawn_node(binary, args, target="rehearsal", log_path=scratch / _LOG, cwd=scratch)
    except OSError as exc:
        return None, RehearsalOutcome(False, reason=f"cannot start {binary.name}: {exc}")
    process = spawned.popen
    assert process is not None
    started = time.monotonic()
    with contextlib.suppress(OSError):
        record = _Record(spawned.pid, spawned.create_time, str(ipc))
        (scratch / _RECORD).write_bytes(msgspec.json.encode(record))
    on_started(port, expected)
    address = f"http://127.0.0.1:{port}" if kind == "port" else str(ipc)
    client = ChainClient(address, timeout=1.0)
    try:
        return process, _wait_answer(
            client, process, config, expected=expected, started=started, stopping=stopping
        )
    finally:
        client.close()


def _wait_answer(
    client: ChainClient,
    process: subprocess.Popen[bytes],
    config: Config,
    *,
    expected: int | None,
    started: float,
    stopping: threading.Event,
) -> RehearsalOutcome:
    """Until the rehearsed binary answers on the copied chain, exits, or its time is up."""
    timeout = config.upgrade.rehearsal_timeout
    head: int | None = None
    while True:
        code = process.poll()
        if code is not None:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            return RehearsalOutcome(False, head=head, reason=f"the binary exited ({how})")
        with contextlib.suppress(RpcError):
            head = client.block_number()
        if answered_enough(head, expected):
            return RehearsalOutcome(True, head=head, start_seconds=time.monotonic() - started)
        if stopping.is_set():
            return RehearsalOutcome(False, head=head, reason="the daemon is stopping")
        if time.monotonic() - started >= timeout:
            if head is None:
                reason = f"RPC did not answer within {timeout:g}s"
            else:
                reason = (
                    f"it answers at block {head}: a new chain, not the copied one (at block "
                    f"{expected} as it was copied) after {timeout:g}s"
                )
            return RehearsalOutcome(False, head=head, reason=reason)
        stopping.wait(POLL_INTERVAL)
