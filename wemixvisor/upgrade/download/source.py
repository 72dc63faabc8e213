"""Where a plan's binary comes from: its URL per platform, the checksum the URL carries, and
the limits every download is held to."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from wemixvisor.plans.platforms import ANY_PLATFORM
from wemixvisor.plans.queue import Plan

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

CHUNK: Final = 1 << 20
"""Bytes read at a time from a download or an archive member."""
_DIGEST_LENGTHS: Final = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"\A[0-9a-fA-F]+\Z")


class DownloadError(Exception):
    """The binary cannot be downloaded or installed; the message says why. Nothing was installed."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest: `algorithm` is `sha256` or `sha512`, `hexdigest` lower-case hex."""

    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def parse_checksum(text: str) -> Checksum:
    """Parse `sha256:<hex>` or `sha512:<hex>` (hex in either case); DownloadError otherwise."""
    algorithm, sep, digest = text.strip().partition(":")
    algorithm = algorithm.lower()
    if not sep or algorithm not in _DIGEST_LENGTHS:
        raise DownloadError(
            f"checksum {shorten(text)!r} is not of the form sha256:<hex> or sha512:<hex>"
        )
    expected = _DIGEST_LENGTHS[algorithm]
    if not _HEX_RE.fullmatch(digest):
        raise DownloadError(f"checksum {shorten(text)!r}: the digest is not hexadecimal")
    if len(digest) != expected:
        raise DownloadError(
            f"checksum {shorten(text)!r}: a {algorithm} digest has {expected} hex digits,"
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
        raise DownloadError(f"{shown_url(url)} has more than one checksum parameter")
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


def shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def shown_url(url: str) -> str:
    """The URL for logs, events and messages, without a password it may carry."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return shorten(url)
    if parts.password is None:
        return shorten(url, 300)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return shorten(urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}")), 300)


def check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise DownloadError(f"{shown_url(url)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise DownloadError(f"{shown_url(url)} has no host")
        return parts
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"{shown_url(url)}: file:// URLs must name a local path")
        if not urllib.parse.unquote(parts.path).startswith("/"):
            raise DownloadError(f"{shown_url(url)}: file:// URLs need an absolute path")
        return parts
    raise DownloadError(f"{shown_url(url)}: only http://, https:// and file:// URLs are downloaded")
