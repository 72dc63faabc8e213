"""Taking the node binary out of a downloaded archive, without ever extracting a tree.

Every member is validated (paths, types, links, sizes, count) and then the binary's bytes alone
are streamed into a file this module names. Links inside the archive that stay inside its tree
are tolerated (they are never created on disk); links that leave it, device and fifo entries,
absolute or `..` paths and oversized archives are refused.
"""

from __future__ import annotations

import lzma
import os
import stat
import tarfile
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from wemixvisor.upgrade.download.source import (
    CHUNK,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_UNPACKED,
    DownloadError,
    shorten,
)

_MAX_LINK_TARGET = 4096
_ARCHIVE_SUFFIXES: Final = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")


def safe_member_path(name: str) -> PurePosixPath:
    """An archive member name as a relative path inside the archive's tree; DownloadError if not.

    `.` and empty components are dropped (`./bin//x` is `bin/x`; `./` alone is the root, `.`).
    Absolute paths, `..` anywhere, backslashes and NUL characters are refused.
    """
    shown = shorten(name)
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
    shown = f"{shorten(str(member))} -> {shorten(target)}"
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
        while chunk := source.read(CHUNK):
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
