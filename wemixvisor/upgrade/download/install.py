"""Installing a downloaded binary as `upgrades/<name>/bin/$DAEMON_NAME`, all or nothing.

The download goes to a temporary directory inside `upgrades/` (same filesystem, so the final
rename is atomic); the checksum is checked, the binary taken out of its archive and proved to
run on this machine, and only then is the directory renamed to `upgrades/<name>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil
from loguru import logger

from wemixvisor.home.fsutil import atomic_write_bytes, fsync_dir, read_capped
from wemixvisor.home.layout import Home, LayoutError
from wemixvisor.messages import events as ev
from wemixvisor.node.process import detect_version
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade.download.archive import extract_binary
from wemixvisor.upgrade.download.fetch import (
    ProgressThrottle,
    fetch_once,
    resolve_binary_url,
    with_retries,
)
from wemixvisor.upgrade.download.source import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_UNPACKED,
    DEFAULT_TIMEOUT,
    Checksum,
    DownloadError,
    shown_url,
    split_checksum,
)

_TEMP_RE = re.compile(r"\A\.(?P<name>.+)\.download-(?P<pid>\d+)-[^/]+\Z")


_plan_locks: dict[Path, threading.Lock] = {}
_plan_locks_guard = threading.Lock()


@contextlib.contextmanager
def _plan_lock(upgrade_dir: Path) -> Iterator[None]:
    # One download per upgrade at a time in this process: the leftover sweep below must not
    # remove the temporary directory of a download still running on another thread.
    with _plan_locks_guard:
        lock = _plan_locks.setdefault(upgrade_dir, threading.Lock())
    with lock:
        yield


def _sweep_leftovers(upgrades_dir: Path, name: str) -> None:
    """Remove temporary directories left by downloads whose process is gone.

    This process's own directories are removed only for `name`, whose lock the caller holds:
    downloads of other plans may be running on other threads.
    """
    own = os.getpid()
    with contextlib.suppress(FileNotFoundError):
        for entry in upgrades_dir.iterdir():
            match = _TEMP_RE.fullmatch(entry.name)
            if match is None:
                continue
            pid = int(match["pid"])
            if (pid == own and match["name"] == name) or (
                pid != own and not psutil.pid_exists(pid)
            ):
                logger.info("removing leftover download directory {}", entry)
                shutil.rmtree(entry, ignore_errors=True)


def _place(temp_dir: Path, final_dir: Path, daemon_name: str) -> None:
    """Move the verified `temp_dir/bin/<daemon_name>` to `final_dir` without replacing a binary."""
    final_bin = final_dir / "bin" / daemon_name
    if not os.path.lexists(final_dir):
        os.rename(temp_dir, final_dir)
        return
    if not final_dir.is_dir() or final_dir.is_symlink():
        raise DownloadError(f"{final_dir} exists and is not a directory; not installing")
    if os.path.lexists(final_bin):
        raise DownloadError(f"{final_bin} already exists; not replacing it")
    # An upgrade directory without its binary (e.g. holding only upgrade-info.json) gets it.
    if not os.path.lexists(final_dir / "bin"):
        os.rename(temp_dir / "bin", final_dir / "bin")
        fsync_dir(final_dir)
        return
    # link() fails if the name exists, so a binary that appeared meanwhile is never replaced.
    os.link(temp_dir / "bin" / daemon_name, final_bin)
    fsync_dir(final_bin.parent)


@dataclass
class _Job:
    """One call of `download_binary`: its inputs, and what it found out so far."""

    home: Home
    plan: Plan
    must_have_checksum: bool
    report: Callable[[ev.Event], None]
    progress: Callable[[int, int | None], None] | None
    attempts: int
    backoff: float
    timeout: float
    max_bytes: int
    max_unpacked: int
    max_entries: int
    platform: str | None
    url: str = ""
    attempts_made: int = 0
    size: int = 0
    sha256: str = ""
    seconds: float = 0.0


def download_binary(
    home: Home,
    plan: Plan,
    *,
    must_have_checksum: bool,
    progress: Callable[[int, int | None], None] | None = None,
    publish: Callable[[ev.Event], None] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_unpacked: int = DEFAULT_MAX_UNPACKED,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    platform: str | None = None,
) -> Path:
    """Download, verify and install the plan's binary as `upgrades/<name>/bin/<DAEMON_NAME>`.

    Returns the installed binary. `progress(bytes_done, bytes_total)` and `publish` (the
    `download.*` events) are called on this thread, progress at most once a second. Transfer
    failures are retried `attempts` times in all, waiting `backoff` seconds and doubling;
    checksum mismatches, client errors (4xx) and refused archives are not. An existing binary
    is never replaced. Raises DownloadError; then nothing has been installed and no temporary
    file is left.
    """
    job = _Job(
        home=home,
        plan=plan,
        must_have_checksum=must_have_checksum,
        report=publish or (lambda event: None),
        progress=progress,
        attempts=max(1, attempts),
        backoff=backoff,
        timeout=timeout,
        max_bytes=max_bytes,
        max_unpacked=max_unpacked,
        max_entries=max_entries,
        platform=platform,
    )
    try:
        final_bin = _fetch_and_install(job)
    except (DownloadError, OSError) as exc:
        error = exc if isinstance(exc, DownloadError) else DownloadError(f"install failed: {exc}")
        logger.error("download of the binary of {} failed: {}", plan.name, error)
        job.report(
            ev.DownloadFailed(
                name=plan.name,
                url=shown_url(job.url),
                error=str(error),
                attempt=job.attempts_made,
                will_retry=False,
            )
        )
        raise error from None
    shown = shown_url(job.url)
    logger.info(
        "installed {} for {} from {} ({} bytes in {:.1f} s, sha256 {})",
        final_bin,
        plan.name,
        shown,
        job.size,
        job.seconds,
        job.sha256,
    )
    job.report(
        ev.DownloadCompleted(
            name=plan.name, url=shown, sha256=job.sha256, bytes=job.size, seconds=job.seconds
        )
    )
    return final_bin


DOWNLOAD_RECORD = "download.json"
"""Beside an installed binary: where it came from and whether its checksum was checked."""


class DownloadRecord(msgspec.Struct, frozen=True):
    """`upgrades/<name>/download.json`: a downloaded binary's origin (the URL as shown, without
    credentials), its sha256, the algorithm of the checksum it was verified against (None: the
    plan gave none and DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM was off), size and time."""

    url: str
    sha256: str
    checksum: str | None
    bytes: int
    installed_at: float


def read_download_record(upgrade_dir: Path) -> DownloadRecord | None:
    """The record of a downloaded binary; None when it was not downloaded (or the record is
    unreadable: nothing is claimed then)."""
    try:
        return msgspec.json.decode(
            read_capped(upgrade_dir / DOWNLOAD_RECORD, 64 * 1024), type=DownloadRecord
        )
    except (OSError, ValueError, msgspec.DecodeError):
        return None


def _fetch_and_install(job: _Job) -> Path:
    """`download_binary` without the reporting of its outcome."""
    home, plan = job.home, job.plan
    try:
        final_dir = home.upgrade_dir(plan.name)
    except LayoutError as exc:
        raise DownloadError(str(exc)) from None
    job.url = resolve_binary_url(
        plan,
        home.name,
        platform=job.platform,
        attempts=job.attempts,
        backoff=job.backoff,
        timeout=job.timeout,
    )
    fetch_url, checksum = split_checksum(job.url)
    if checksum is None and job.must_have_checksum:
        raise DownloadError(
            f"{shown_url(job.url)} has no ?checksum=sha256:<hex> (or sha512:<hex>) and"
            " DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM is on; refusing to download it"
        )
    upgrades_dir = home.upgrades_dir
    if not upgrades_dir.is_dir():
        raise DownloadError(f"{upgrades_dir} does not exist: is the home initialised?")
    final_bin = final_dir / "bin" / home.name
    with _plan_lock(final_dir):
        if os.path.lexists(final_bin):
            raise DownloadError(f"{final_bin} already exists; not replacing it")
        _sweep_leftovers(upgrades_dir, plan.name)
        temp_dir = Path(
            tempfile.mkdtemp(prefix=f".{plan.name}.download-{os.getpid()}-", dir=upgrades_dir)
        )
        try:
            _download_into(job, temp_dir, fetch_url, checksum)
            _place(temp_dir, final_dir, home.name)
            record = DownloadRecord(
                url=shown_url(job.url),
                sha256=job.sha256,
                checksum=checksum.algorithm if checksum is not None else None,
                bytes=job.size,
                installed_at=time.time(),
            )
            atomic_write_bytes(final_dir / DOWNLOAD_RECORD, msgspec.json.encode(record), 0o644)
            fsync_dir(upgrades_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return final_bin


def _download_into(job: _Job, temp_dir: Path, fetch_url: str, checksum: Checksum | None) -> None:
    """Fetch, check and unpack into `temp_dir/bin/<DAEMON_NAME>`, then prove it runs."""
    plan, daemon_name = job.plan, job.home.name
    shown = shown_url(job.url)
    blob = temp_dir / "download"

    def on_progress(done: int, total: int | None) -> None:
        job.report(ev.DownloadProgress(name=plan.name, bytes_done=done, bytes_total=total))
        if job.progress is not None:
            job.progress(done, total)

    def once(attempt: int) -> int:
        job.attempts_made = attempt
        sha256 = hashlib.sha256()
        hashers: list[Any] = [sha256]
        if checksum is not None and checksum.algorithm != "sha256":
            hashers.append(hashlib.new(checksum.algorithm))
        tracker = ProgressThrottle(on_progress)
        with blob.open("wb") as sink:
            size = fetch_once(
                fetch_url,
                sink,
                max_bytes=job.max_bytes,
                timeout=job.timeout,
                progress=tracker,
                hashers=hashers,
            )
            sink.flush()
            os.fsync(sink.fileno())
        tracker.update(size, final=True)
        job.sha256 = sha256.hexdigest()
        actual = hashers[-1].hexdigest()
        if checksum is not None and actual != checksum.hexdigest:
            raise DownloadError(
                f"checksum mismatch for {shown}: expected {checksum}, got"
                f" {checksum.algorithm}:{actual}; nothing installed"
            )
        return size

    def on_failure(attempt: int, exc: DownloadError, will_retry: bool) -> None:
        logger.warning("download of {} attempt {} failed: {}", shown, attempt, exc)
        if will_retry:
            job.report(
                ev.DownloadFailed(
                    name=plan.name, url=shown, error=str(exc), attempt=attempt, will_retry=True
                )
            )

    logger.info("downloading the binary of {} from {}", plan.name, shown)
    job.report(ev.DownloadStarted(name=plan.name, url=shown))
    started = time.monotonic()
    job.size = with_retries(once, attempts=job.attempts, backoff=job.backoff, on_failure=on_failure)
    job.seconds = time.monotonic() - started
    bin_dir = temp_dir / "bin"
    bin_dir.mkdir()
    binary = bin_dir / daemon_name
    extract_binary(
        blob,
        daemon_name,
        binary,
        source=shown,
        max_unpacked=job.max_unpacked,
        max_entries=job.max_entries,
    )
    with contextlib.suppress(FileNotFoundError):
        blob.unlink()
    if detect_version(binary) is None:
        raise DownloadError(
            f"the {daemon_name} binary from {shown} does not run here (`version` and"
            " `--version` failed: wrong architecture, or not a program?); nothing installed"
        )
    fsync_dir(bin_dir)
    # mkdtemp made it 0700; upgrades/<name> is an ordinary 0755 directory like genesis/.
    temp_dir.chmod(0o755)
    fsync_dir(temp_dir)
