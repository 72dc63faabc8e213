"""The node process as the operating system sees it: spawn, watch, signal, measure, adopt.

No policy lives here; the NodeActor decides, these functions do.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
from loguru import logger

from wemixvisor.home.fsutil import atomic_write_bytes

# psutil's create_time is rounded to clock ticks; two readings of one process agree within this.
_CREATE_TIME_TOLERANCE = 0.05
_PR_SET_CHILD_SUBREAPER = 36


@dataclass
class NodeProcess:
    """One spawned (or adopted) node process; its process group id equals its pid."""

    pid: int
    binary: str
    target: str
    started_at: float  # unix time
    create_time: float  # psutil's, to recognise this very process later
    popen: subprocess.Popen[bytes] | None  # None when adopted from an earlier daemon run

    @property
    def adopted(self) -> bool:
        """True when another daemon run started it: no exit code will be known."""
        return self.popen is None


class PidRecord(msgspec.Struct, frozen=True):
    """Contents of state/node.pid."""

    pid: int
    create_time: float
    binary: str
    target: str
    started_at: float
    daemon_pid: int


class ExitStatus(msgspec.Struct, frozen=True):
    """How a process ended: an exit code, a signal, or unknown (adopted processes)."""

    exit_code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int | None) -> ExitStatus:
        """Popen's convention: negative return code = killed by that signal."""
        if returncode is None:
            return cls(None, None)
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    def describe(self) -> str:
        """`exit code 1`, `signal 9 (SIGKILL)` or `unknown`, for logs."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = "?"
            return f"signal {self.signal} ({name})"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "unknown status"


def spawn_node(
    binary: Path,
    args: Sequence[str],
    *,
    target: str,
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> NodeProcess:
    """Start the node in its own session (so its own process group) with output to `log_path`.

    The log file is opened O_APPEND and handed to the child directly: nothing pipes through the
    daemon, so the node survives a daemon crash, and copy-truncate rotation stays correct.
    Raises OSError when the binary cannot be executed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        popen = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = 0.0  # already gone; the exit watcher reports it
    return NodeProcess(
        pid=popen.pid,
        binary=str(binary),
        target=target,
        started_at=time.time(),
        create_time=create_time,
        popen=popen,
    )


def wait_exit(process: NodeProcess) -> ExitStatus:
    """Block until `process` ends (run it on a worker thread).

    Our own child is reaped with waitpid (instant, gives the status). An adopted process is
    not our child: a pidfd becomes readable when it exits (instant too, status unknown).
    """
    if process.popen is not None:
        return ExitStatus.from_returncode(process.popen.wait())
    try:
        fd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return ExitStatus(None, None)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(1000):
            pass
    finally:
        os.close(fd)
    return ExitStatus(None, None)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to every process of the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER).

    Children the node leaves behind are then re-parented to the daemon rather than to PID 1,
    which in containers often never reaps them; `kill_group_leftovers` reaps them here.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group `pgid`."""
    try:
        os.killpg(pgid, 0)  # O(1) answer for the common case: nothing left at all
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members: list[int] = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def reap_group_zombies(pgid: int) -> None:
    """Collect exit statuses of our zombie children in group `pgid` (orphans of the node).

    Only the node's group is touched, so no other subprocess of the daemon loses its status.
    """
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE and os.getpgid(child.pid) == pgid:
                os.waitpid(child.pid, os.WNOHANG)
        except (OSError, psutil.Error):
            continue


def kill_group_leftovers(pgid: int, timeout: float = 2.0) -> bool:
    """SIGKILL what is left of the node's group after its leader ended, and reap it.

    Returns True when something had been left. The leader's exit leaves its children running;
    an operator expects none of them to outlive the node.
    """
    if not group_members(pgid):
        reap_group_zombies(pgid)
        return False
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap_group_zombies(pgid)
        if not group_members(pgid):
            break
        time.sleep(0.005)
    return True


def write_pidfile(path: Path, process: NodeProcess) -> None:
    """Record the node for adoption by a later daemon run (atomic write)."""
    record = PidRecord(
        pid=process.pid,
        create_time=process.create_time,
        binary=process.binary,
        target=process.target,
        started_at=process.started_at,
        daemon_pid=os.getpid(),
    )
    atomic_write_bytes(path, msgspec.json.encode(record), mode=0o600)


def read_pidfile(path: Path) -> PidRecord | None:
    """The recorded node, or None when there is no (readable, well-formed) record."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) > 64 * 1024:
        return None
    try:
        return msgspec.json.decode(raw, type=PidRecord)
    except msgspec.DecodeError:
        return None


def remove_pidfile(path: Path) -> None:
    """Forget the recorded node."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def command_args(pid: int) -> list[str]:
    """The arguments (without the program) process `pid` runs with; empty when unreadable."""
    try:
        return psutil.Process(pid).cmdline()[1:]
    except psutil.Error:
        return []


def find_adoptable(record: PidRecord) -> psutil.Process | None:
    """The still-running process the record describes, or None.

    The pid must be alive, not a zombie, and have the recorded start time: a recycled pid
    belongs to somebody else and must never be adopted or signalled.
    """
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - record.create_time) > _CREATE_TIME_TOLERANCE:
            return None
    except psutil.Error:
        return None
    return proc


def find_orphan_node(visor_dir: Path) -> psutil.Process | None:
    """A node running a binary from the home's `genesis/` or `upgrades/` without a node.pid.

    A daemon killed between spawning the node and recording it leaves such a node behind;
    adopting it is what keeps a second node off the same data dir. Short-lived runs of the
    same binaries (`version`, `pre-upgrade`) are not nodes.
    """
    prefix = str(visor_dir) + os.sep
    oldest: psutil.Process | None = None
    for proc in psutil.process_iter(["cmdline", "status", "create_time"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if (
                not cmdline
                or not cmdline[0].startswith(prefix)
                or proc.info["status"] == psutil.STATUS_ZOMBIE
                or cmdline[1:2] in (["version"], ["--version"], ["pre-upgrade"])
                or proc.pid == os.getpid()
            ):
                continue
        except psutil.Error:
            continue
        if oldest is None or proc.info["create_time"] < oldest.info["create_time"]:
            oldest = proc
    return oldest


def orphan_record(visor_dir: Path) -> PidRecord | None:
    """A node.pid record for a node running without one (`find_orphan_node`), to adopt it."""
    orphan = find_orphan_node(visor_dir)
    if orphan is None:
        return None
    try:
        cmdline = orphan.cmdline()
        create_time = orphan.create_time()
        binary = Path(cmdline[0])
        target = str(binary.parent.parent.relative_to(visor_dir))
    except (psutil.Error, IndexError, ValueError):
        return None
    return PidRecord(
        pid=orphan.pid,
        create_time=create_time,
        binary=str(binary),
        target=target,
        started_at=create_time,
        daemon_pid=0,
    )


def adoptable_record(pidfile: Path, visor_dir: Path) -> PidRecord | None:
    """The node a daemon should adopt instead of starting one: the one node.pid names if it
    still runs (a stale node.pid is removed), else one running without a node.pid."""
    record = read_pidfile(pidfile)
    if record is not None and find_adoptable(record) is None:
        logger.info("node.pid names pid {} which is gone", record.pid)
        remove_pidfile(pidfile)
        record = None
    if record is not None:
        return record
    record = orphan_record(visor_dir)
    if record is not None:
        logger.warning(
            "found node pid {} running {} without node.pid: adopting it", record.pid, record.binary
        )
    return record


class TreeSampler:
    """CPU% and RSS of a process and all its descendants, sampled on demand.

    psutil computes cpu_percent against the previous call on the same Process object, so the
    objects are kept between samples; the first sample of a process reads 0 %.
    """

    def __init__(self, max_age: float = 1.0) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._max_age = max_age
        self._last: tuple[int, float, tuple[float, int]] | None = None

    def sample(self, pid: int) -> tuple[float, int]:
        """(cpu percent of one core, summed RSS bytes); (0, 0) when the process is gone.

        Walking the process tree costs milliseconds: a sample younger than `max_age` is
        reused, so that many `status` requests do not each pay for it.
        """
        now = time.monotonic()
        if self._last is not None and self._last[0] == pid and now - self._last[1] < self._max_age:
            return self._last[2]
        result = self._sample(pid)
        self._last = (pid, now, result)
        return result

    def last(self, pid: int) -> tuple[float, int]:
        """The last sample of `pid`, however old, without walking the tree; (0, 0) if none."""
        if self._last is not None and self._last[0] == pid:
            return self._last[2]
        return 0.0, 0

    def _sample(self, pid: int) -> tuple[float, int]:
        try:
            root = self._procs.get(pid) or psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            self._procs.clear()
            return 0.0, 0
        cpu = 0.0
        rss = 0
        alive: dict[int, psutil.Process] = {}
        for proc in tree:
            known = self._procs.get(proc.pid, proc)
            try:
                cpu += known.cpu_percent(None)
                rss += known.memory_info().rss
            except psutil.Error:
                continue
            alive[proc.pid] = known
        self._procs = alive
        return cpu, rss


_versions: dict[tuple[int, int, int, int, int], str] = {}
_versions_guard = threading.Lock()


def detect_version(binary: Path, timeout: float = 5.0) -> str | None:
    """The node's version line: `<bin> version`, else `<bin> --version`; None if neither works.

    geth-family nodes answer `version`; anvil only knows `--version`. Cached by the file's
    identity (device, inode, size, mtime, mode): each binary runs once, however many plans
    name it and however often they are checked; a replaced or re-written binary runs again.
    A failure is not cached (it may have been a timeout on a busy machine).
    """
    try:
        info = os.stat(binary)
    except OSError:
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode)
    with _versions_guard:
        if key in _versions:
            return _versions[key]
    version = _run_version(binary, timeout)
    if version is not None:
        with _versions_guard:
            _versions[key] = version
    return version


def _run_version(binary: Path, timeout: float) -> str | None:
    for argv in ([str(binary), "version"], [str(binary), "--version"]):
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode != 0:
            continue
        lines = [line.strip() for line in done.stdout.decode(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            # geth prints a banner line first and "Version: x.y.z" below it
            tagged = [line for line in lines if "version" in line.lower()]
            return (tagged or lines)[0][:200]
    return None
