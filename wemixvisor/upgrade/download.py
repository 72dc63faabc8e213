"""Binary downloads for upgrade plans (SPEC §8): choose, fetch, verify, unpack, install.

A plan's `info.binaries` maps `<os>/<arch>` (or `any`) to an URL carrying its checksum
(`?checksum=sha256:<hex>` or `sha512:<hex>`). `download_binary` fetches it into a temporary
directory inside `upgrades/` (same filesystem, so the final rename is atomic), checks the
checksum, takes the node binary out of the archive, proves it runs on this machine, and only
then renames the directory to `upgrades/<name>`. Any failure leaves `upgrades/<name>` untouched.

Archives are never extracted as a tree: every member is validated (paths, types, links, sizes,
count) and then the binary's bytes alone are streamed into a file this module names. Links inside
the archive that stay inside its tree are tolerated (they are never created on disk); links that
leave it, device and fifo entries, absolute or `..` paths and oversized archives are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

import msgspec
import psutil
from loguru import logger

from wemixvisor import __version__
from wemixvisor.home.fsutil import fsync_dir
from wemixvisor.home.layout import Home, LayoutError
from wemixvisor.messages import events as ev
from wemixvisor.node.process import detect_version
from wemixvisor.plans.platforms import ANY_PLATFORM, current_platform
from wemixvisor.plans.queue import MAX_PLAN_BYTES, Plan

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_UNPACKED",
    "DEFAULT_TIMEOUT",
    "Checksum",
    "DownloadError",
    "download_binary",
    "extract_binary",
    "parse_checksum",
    "pick_binary_url",
    "plan_has_binaries",
    "resolve_binary_url",
    "safe_member_path",
    "split_checksum",
]

DEFAULT_MAX_BYTES: Final = 2 << 30
"""Largest download accepted (the archive or bare binary as fetched)."""
DEFAULT_MAX_UNPACKED: Final = 4 << 30
"""Largest total of the regular files an archive declares, and of the bytes actually unpacked."""
DEFAULT_MAX_ENTRIES: Final = 10_000
DEFAULT_TIMEOUT: Final = 30.0
"""Seconds allowed for connecting and for each read."""
DEFAULT_ATTEMPTS: Final = 3
DEFAULT_BACKOFF: Final = 1.0
"""Seconds before the second attempt; doubled before each later one."""
ATTEMPT_DEADLINE: Final = 3600.0
"""A single attempt that trickles on longer than this is abandoned (and retried)."""
PROGRESS_INTERVAL: Final = 1.0

_CHUNK = 1 << 20
_MAX_LINK_TARGET = 4096
_DIGEST_LENGTHS: Final = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")
_ARCHIVE_SUFFIXES: Final = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
_TEMP_RE = re.compile(r"\A\.(?P<name>.+)\.download-(?P<pid>\d+)-[^/]+\Z")


class DownloadError(Exception):
    """The binary cannot be downloaded or installed; the message says why. Nothing was installed."""


class _TransientError(DownloadError):
    """A failure another attempt may not repeat (network, 5xx, truncated body)."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest: `algorithm` is `sha256` or `sha512`, `hexdigest` lower-case hex."""

    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


# pure helpers


def parse_checksum(text: str) -> Checksum:
    """Parse `sha256:<hex>` or `sha512:<hex>` (hex in either case); DownloadError otherwise."""
    algorithm, sep, digest = text.strip().partition(":")
    algorithm = algorithm.lower()
    if not sep or algorithm not in _DIGEST_LENGTHS:
        raise DownloadError(
            f"checksum {_shorten(text)!r} is not of the form sha256:<hex> or sha512:<hex>"
        )
    expected = _DIGEST_LENGTHS[algorithm]
    if not _HEX_RE.fullmatch(digest):
        raise DownloadError(f"checksum {_shorten(text)!r}: the digest is not hexadecimal")
    if len(digest) != expected:
        raise DownloadError(
            f"checksum {_shorten(text)!r}: a {algorithm} digest has {expected} hex digits,"
            f" not {len(digest)}"
        )
    return Checksum(algorithm, digest.lower())


def split_checksum(url: str) -> tuple[str, Checksum | None]:
    """The URL to fetch and the checksum its `?checksum=` parameter names (None if absent).

    When `checksum` is the only query parameter it is dropped from the URL fetched; otherwise
    the URL is fetched as given (servers ignore parameters they do not know).
    """
    parts = urllib.parse.urlsplit(url)
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in params if key == "checksum"]
    if not values:
        return url, None
    if len(values) > 1:
        raise DownloadError(f"{_shown_url(url)} has more than one checksum parameter")
    checksum = parse_checksum(values[0])
    if len(params) == 1:
        url = urllib.parse.urlunsplit(parts._replace(query=""))
    return url, checksum


def pick_binary_url(info: Mapping[str, Any], platform: str) -> str:
    """`info.binaries[platform]`, else `info.binaries["any"]`; DownloadError when neither."""
    binaries = info.get("binaries")
    if not isinstance(binaries, Mapping) or not binaries:
        raise DownloadError("the plan's info has no binaries")
    for key in (platform, ANY_PLATFORM):
        url = binaries.get(key)
        if url is None:
            continue
        if not isinstance(url, str) or not url.strip():
            raise DownloadError(f"info.binaries[{key!r}] is not an URL string")
        return url.strip()
    keys = ", ".join(sorted(str(key) for key in binaries)[:10])
    raise DownloadError(
        f"info.binaries has no entry for {platform} or {ANY_PLATFORM} (has: {keys})"
    )


def plan_has_binaries(plan: Plan) -> bool:
    """Whether the plan says where to download binaries from (inline `binaries` or an info URL)."""
    if plan.info_url is not None:
        return True
    return plan.info is not None and bool(plan.info.get("binaries"))


def safe_member_path(name: str) -> PurePosixPath:
    """An archive member name as a relative path inside the archive's tree; DownloadError if not.

    `.` and empty components are dropped (`./bin//x` is `bin/x`; `./` alone is the root, `.`).
    Absolute paths, `..` anywhere, backslashes and NUL characters are refused.
    """
    shown = _shorten(name)
    if not name:
        raise DownloadError("archive member with an empty name")
    if "\0" in name:
        raise DownloadError(f"archive member {shown!r} has a NUL character in its name")
    if "\\" in name:
        raise DownloadError(f"archive member {shown!r} has a backslash in its name")
    if name.startswith("/"):
        raise DownloadError(f"archive member {shown!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"archive member {shown!r} has a '..' component")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _check_link(member: PurePosixPath, target: str, *, hard: bool) -> None:
    """Refuse a link whose target leaves the archive's tree."""
    shown = f"{_shorten(str(member))} -> {_shorten(target)}"
    if not target or "\0" in target:
        raise DownloadError(f"archive link {shown!r} has an empty or invalid target")
    if target.startswith("/"):
        raise DownloadError(f"archive link {shown!r} points at an absolute path")
    if hard:
        # A hard link names another member by its path in the archive.
        try:
            safe_member_path(target)
        except DownloadError:
            raise DownloadError(f"archive hard link {shown!r} points outside the archive") from None
        return
    depth: list[str] = list(member.parent.parts) if member.parent != PurePosixPath(".") else []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not depth:
                raise DownloadError(f"archive symlink {shown!r} points outside the archive")
            depth.pop()
        else:
            depth.append(part)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _shown_url(url: str) -> str:
    """The URL for logs, events and messages, without a password it may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return _shorten(url)
    if parts.password is None:
        return _shorten(url, 300)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return _shorten(urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}")), 300)


def _check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise DownloadError(f"{_shown_url(url)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise DownloadError(f"{_shown_url(url)} has no host")
        return parts
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"{_shown_url(url)}: file:// URLs must name a local path")
        if not urllib.parse.unquote(parts.path).startswith("/"):
            raise DownloadError(f"{_shown_url(url)}: file:// URLs need an absolute path")
        return parts
    raise DownloadError(
        f"{_shown_url(url)}: only http://, https:// and file:// URLs are downloaded"
    )


# fetching


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https down to plain http."""

    def redirect_request(  # noqa: PLR0917 -- urllib's signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise DownloadError(f"refused redirect from {old}:// to {_shown_url(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # Built by hand: urllib's default opener also speaks ftp://, data: and file://.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _NoDowngradeRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _Progress:
    """Calls `report(done, total)` at most every `interval` seconds, and once at the end."""

    def __init__(
        self, report: Callable[[int, int | None], None] | None, interval: float = PROGRESS_INTERVAL
    ) -> None:
        self._report = report
        self._interval = interval
        self._last: float | None = None
        self._last_done = -1
        self.total: int | None = None

    def update(self, done: int, *, final: bool = False) -> None:
        if self._report is None or done == self._last_done:
            return
        now = time.monotonic()
        if final or self._last is None or now - self._last >= self._interval:
            self._last = now
            self._last_done = done
            self._report(done, self.total)


def _copy_stream(
    source: IO[bytes],
    sink: IO[bytes],
    *,
    url: str,
    max_bytes: int,
    progress: _Progress,
    deadline: float,
    hashers: list[Any],
) -> int:
    done = 0
    while chunk := source.read(_CHUNK):
        done += len(chunk)
        if done > max_bytes:
            raise DownloadError(f"{_shown_url(url)} is larger than the {max_bytes}-byte limit")
        for hasher in hashers:
            hasher.update(chunk)
        sink.write(chunk)
        progress.update(done)
        if time.monotonic() > deadline:
            raise _TransientError(
                f"{_shown_url(url)}: transfer took longer than {ATTEMPT_DEADLINE:.0f} s"
            )
    return done


def _fetch_once(
    url: str,
    sink: IO[bytes],
    *,
    max_bytes: int,
    timeout: float,
    progress: _Progress,
    hashers: list[Any],
) -> int:
    """Copy the resource at `url` into `sink`; returns its size. Raises DownloadError."""
    parts = _check_url(url)
    deadline = time.monotonic() + ATTEMPT_DEADLINE
    if parts.scheme.lower() == "file":
        path = Path(urllib.parse.unquote(parts.path))
        try:
            with path.open("rb") as source:
                st = os.fstat(source.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise DownloadError(f"{path} is not a regular file")
                if st.st_size > max_bytes:
                    raise DownloadError(
                        f"{path} is {st.st_size} bytes, over the {max_bytes}-byte limit"
                    )
                progress.total = st.st_size
                return _copy_stream(
                    source,
                    sink,
                    url=url,
                    max_bytes=max_bytes,
                    progress=progress,
                    deadline=deadline,
                    hashers=hashers,
                )
        except FileNotFoundError:
            raise DownloadError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise DownloadError(f"{path} is not a regular file") from None
        except PermissionError:
            raise DownloadError(f"{path} is not readable") from None
        except OSError as exc:
            raise _TransientError(f"cannot read {path}: {exc.strerror or exc}") from exc
    request = urllib.request.Request(  # noqa: S310 -- scheme checked by _check_url
        url, headers={"User-Agent": f"wemixvisor/{__version__}", "Accept-Encoding": "identity"}
    )
    shown = _shown_url(url)
    try:
        with _opener().open(request, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if length is not None and length > max_bytes:
                raise DownloadError(f"{shown} is {length} bytes, over the {max_bytes}-byte limit")
            progress.total = length
            done = _copy_stream(
                response,
                sink,
                url=url,
                max_bytes=max_bytes,
                progress=progress,
                deadline=deadline,
                hashers=hashers,
            )
    except urllib.error.HTTPError as exc:
        message = f"{shown}: HTTP {exc.code} {exc.reason}"
        exc.close()
        # Server errors, "timeout" and "too many requests" may go away; client errors and
        # redirects urllib refused to follow will not.
        if exc.code >= 500 or exc.code in (408, 429):
            raise _TransientError(message) from None
        raise DownloadError(message) from None
    except urllib.error.URLError as exc:
        raise _TransientError(f"{shown}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"{shown}: {exc!r}") from None
    # http.client does not notice a connection closed before Content-Length bytes arrived.
    if length is not None and done != length:
        raise _TransientError(f"{shown}: body truncated at {done} of {length} bytes")
    return done


def _with_retries(
    what: Callable[[int], int],
    *,
    attempts: int,
    backoff: float,
    on_failure: Callable[[int, DownloadError, bool], None],
) -> int:
    """Run `what(attempt)` until it succeeds or fails for good; returns its result."""
    attempt = 1
    while True:
        try:
            return what(attempt)
        except _TransientError as exc:
            will_retry = attempt < attempts
            on_failure(attempt, exc, will_retry)
            if not will_retry:
                raise DownloadError(f"{exc} (gave up after {attempt} attempts)") from None
            time.sleep(backoff * 2 ** (attempt - 1))
            attempt += 1


# plan info


def _fetch_info(url: str, *, attempts: int, backoff: float, timeout: float) -> dict[str, Any]:
    fetch_url, checksum = split_checksum(url)
    buffer = io.BytesIO()

    def once(attempt: int) -> int:
        del attempt
        buffer.seek(0)
        buffer.truncate()
        hashers = [hashlib.new(checksum.algorithm)] if checksum is not None else []
        size = _fetch_once(
            fetch_url,
            buffer,
            max_bytes=MAX_PLAN_BYTES,
            timeout=timeout,
            progress=_Progress(None),
            hashers=hashers,
        )
        if checksum is not None and hashers[0].hexdigest() != checksum.hexdigest:
            raise DownloadError(
                f"plan info {_shown_url(url)}: {checksum.algorithm} {hashers[0].hexdigest()}"
                f" does not match the expected {checksum.hexdigest}"
            )
        return size

    def failed(attempt: int, exc: DownloadError, will_retry: bool) -> None:
        logger.warning("fetching plan info (attempt {}): {}", attempt, exc)

    _with_retries(once, attempts=attempts, backoff=backoff, on_failure=failed)
    try:
        info = msgspec.json.decode(buffer.getvalue())
    except (msgspec.DecodeError, RecursionError):
        raise DownloadError(f"plan info at {_shown_url(url)} is not valid JSON") from None
    if not isinstance(info, dict):
        raise DownloadError(f"plan info at {_shown_url(url)} is not a JSON object")
    return info


def resolve_binary_url(
    plan: Plan,
    daemon_name: str,
    *,
    platform: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """The URL of the plan's binary for this platform (`platform` overrides the machine's).

    Plan info given as an URL is fetched first (1 MiB cap, same timeouts and retries as a
    binary). The URL's scheme is checked; its checksum is not required here.
    """
    key = platform or current_platform()
    if plan.info_url is not None:
        info = _fetch_info(plan.info_url, attempts=attempts, backoff=backoff, timeout=timeout)
    elif plan.info is not None:
        info = plan.info
    else:
        raise DownloadError(f"plan {plan.name} has no info, so no URL to download {daemon_name}")
    try:
        url = pick_binary_url(info, key)
    except DownloadError as exc:
        raise DownloadError(
            f"plan {plan.name}: no {daemon_name} binary to download: {exc}"
        ) from None
    _check_url(url)
    return url


# archives


def _sniff(path: Path) -> str:
    """`zip`, `tar` (possibly compressed) or `file`, from the first bytes."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return "tar"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return "file"


@dataclass
class _Candidates:
    """Running totals of an archive's members, and the members named like the binary."""

    daemon_name: str
    source: str
    max_entries: int
    max_unpacked: int
    found: dict[PurePosixPath, list[Any]] = field(default_factory=dict)
    non_regular: dict[PurePosixPath, str] = field(default_factory=dict)
    entries: int = 0
    unpacked: int = 0

    def count(self, size: int = 0) -> None:
        """One more member, holding `size` bytes once unpacked."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise DownloadError(f"{self.source}: more than {self.max_entries} entries")
        self.unpacked += max(size, 0)
        if self.unpacked > self.max_unpacked:
            raise DownloadError(
                f"{self.source}: unpacks to more than the {self.max_unpacked}-byte limit"
            )

    def add(self, path: PurePosixPath, member: Any, *, regular: bool, kind: str) -> None:
        if path.name != self.daemon_name:
            return
        if regular:
            self.found.setdefault(path, []).append(member)
        else:
            self.non_regular[path] = kind

    def choose(self) -> Any:
        """The binary's member: `bin/<name>`, else `<name>`, else the one file so named."""
        name, source = self.daemon_name, self.source
        for preferred in (PurePosixPath("bin", name), PurePosixPath(name)):
            if preferred in self.non_regular:
                raise DownloadError(
                    f"{source}: {preferred} is a {self.non_regular[preferred]}, not a regular file"
                )
            members = self.found.get(preferred)
            if members is not None:
                if len(members) > 1:
                    raise DownloadError(f"{source}: {preferred} appears {len(members)} times")
                return members[0]
        if not self.found:
            raise DownloadError(
                f"{source}: no regular file named {name!r} ({self.entries} entries looked at)"
            )
        if len(self.found) > 1 or len(next(iter(self.found.values()))) > 1:
            paths = ", ".join(sorted(str(path) for path in self.found)[:5])
            raise DownloadError(
                f"{source}: more than one file named {name!r} ({paths}); which one is the node"
                " binary is ambiguous"
            )
        return next(iter(self.found.values()))[0]


def _stream_member(source: IO[bytes], dest: Path, *, declared: int, limit: int, what: str) -> None:
    """Write the member's bytes to `dest`, counting them: declared sizes may lie."""
    written = 0
    with dest.open("xb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit or written > declared:
                raise DownloadError(f"{what} unpacks to more bytes than it declares or allows")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if written != declared:
        raise DownloadError(f"{what} is truncated ({written} of {declared} bytes)")


def _extract_from_tar(
    archive_path: Path, daemon_name: str, dest: Path, *, source: str, limit: int, entries: int
) -> None:
    try:
        archive = tarfile.open(archive_path, mode="r:*")  # noqa: SIM115 -- closed below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DownloadError(f"{source} is not a readable tar archive: {exc}") from None
    with archive:
        candidates = _Candidates(daemon_name, source, entries, limit)
        try:
            for member in archive:
                candidates.count(member.size if member.isreg() else 0)
                path = safe_member_path(member.name)
                if member.isreg():
                    candidates.add(path, member, regular=True, kind="file")
                elif member.isdir():
                    continue
                elif member.issym() or member.islnk():
                    _check_link(path, member.linkname, hard=member.islnk())
                    candidates.add(path, member, regular=False, kind="link")
                elif member.ischr() or member.isblk():
                    raise DownloadError(f"{source}: {path} is a device file")
                elif member.isfifo():
                    raise DownloadError(f"{source}: {path} is a fifo")
                else:
                    raise DownloadError(f"{source}: {path} is of unsupported type {member.type!r}")
            chosen: tarfile.TarInfo = candidates.choose()
            reader = archive.extractfile(chosen)
            if reader is None:
                raise DownloadError(f"{source}: {chosen.name} cannot be read")
            with reader:
                _stream_member(
                    reader, dest, declared=chosen.size, limit=limit, what=f"{source}: {chosen.name}"
                )
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise DownloadError(f"{source} is a damaged tar archive: {exc}") from None


def _zip_kind(info: zipfile.ZipInfo) -> int:
    # Unix permissions and file type live in the high 16 bits when made on a Unix system.
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def _extract_from_zip(
    archive_path: Path, daemon_name: str, dest: Path, *, source: str, limit: int, entries: int
) -> None:
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"{source} is not a readable zip archive: {exc}") from None
    with archive:
        candidates = _Candidates(daemon_name, source, entries, limit)
        try:
            for info in archive.infolist():
                kind = _zip_kind(info)
                candidates.count(info.file_size if kind in (0, stat.S_IFREG) else 0)
                path = safe_member_path(info.filename)
                if info.is_dir() or kind == stat.S_IFDIR:
                    continue
                if kind == stat.S_IFLNK:
                    if info.file_size > _MAX_LINK_TARGET:
                        raise DownloadError(f"{source}: symlink {path} has an oversized target")
                    target = archive.read(info).decode("utf-8", errors="replace")
                    _check_link(path, target, hard=False)
                    candidates.add(path, info, regular=False, kind="link")
                    continue
                if kind not in (0, stat.S_IFREG):
                    raise DownloadError(f"{source}: {path} is a device, fifo or socket entry")
                if info.flag_bits & 0x1:
                    raise DownloadError(f"{source}: {path} is encrypted")
                candidates.add(path, info, regular=True, kind="file")
            chosen: zipfile.ZipInfo = candidates.choose()
            with archive.open(chosen) as reader:
                _stream_member(
                    reader,
                    dest,
                    declared=chosen.file_size,
                    limit=limit,
                    what=f"{source}: {chosen.filename}",
                )
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError) as exc:
            raise DownloadError(f"{source} is a damaged zip archive: {exc}") from None


def extract_binary(
    downloaded: Path,
    daemon_name: str,
    dest: Path,
    *,
    source: str,
    max_unpacked: int = DEFAULT_MAX_UNPACKED,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> None:
    """Put the node binary held by `downloaded` at `dest` (which must not exist), mode 0755.

    `downloaded` is a `.tar(.gz|.bz2|.xz)`/`.tgz`/`.zip` archive or the bare binary, told apart
    by content (`source`, the URL or file name, only serves to refuse a file named like an
    archive that is none). In an archive the binary is `bin/<daemon_name>`, else
    `<daemon_name>`, else the one regular file of that name anywhere. Every member is checked
    first; only the binary is written. DownloadError says what was refused.
    """
    kind = _sniff(downloaded)
    if kind == "file":
        path = urllib.parse.urlsplit(source).path.lower()
        if path.endswith(_ARCHIVE_SUFFIXES):
            raise DownloadError(f"{source} is named like an archive but is not one")
        os.replace(downloaded, dest)
    elif kind == "zip":
        _extract_from_zip(
            downloaded, daemon_name, dest, source=source, limit=max_unpacked, entries=max_entries
        )
    else:
        _extract_from_tar(
            downloaded, daemon_name, dest, source=source, limit=max_unpacked, entries=max_entries
        )
    # Node binaries are public programs; 0755 lets a node run as another user.
    dest.chmod(0o755)


# install

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
                url=_shown_url(job.url),
                error=str(error),
                attempt=job.attempts_made,
                will_retry=False,
            )
        )
        raise error from None
    shown = _shown_url(job.url)
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
            f"{_shown_url(job.url)} has no ?checksum=sha256:<hex> (or sha512:<hex>) and"
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
            fsync_dir(upgrades_dir)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return final_bin


def _download_into(job: _Job, temp_dir: Path, fetch_url: str, checksum: Checksum | None) -> None:
    """Fetch, check and unpack into `temp_dir/bin/<DAEMON_NAME>`, then prove it runs."""
    plan, daemon_name = job.plan, job.home.name
    shown = _shown_url(job.url)
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
        tracker = _Progress(on_progress)
        with blob.open("wb") as sink:
            size = _fetch_once(
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
    job.size = _with_retries(
        once, attempts=job.attempts, backoff=job.backoff, on_failure=on_failure
    )
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
