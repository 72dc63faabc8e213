"""Fetching a URL (http, https, file) with retries, a size cap, progress and a checksum; and
fetching a plan's info document when its binaries are given by URL."""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import msgspec
from loguru import logger

from wemixvisor import __version__
from wemixvisor.plans.platforms import current_platform
from wemixvisor.plans.queue import MAX_PLAN_BYTES, Plan
from wemixvisor.upgrade.download.source import (
    CHUNK,
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF,
    DEFAULT_TIMEOUT,
    DownloadError,
    check_url,
    pick_binary_url,
    shown_url,
    split_checksum,
)

ATTEMPT_DEADLINE: Final = 3600.0
"""A single attempt that trickles on longer than this is abandoned (and retried)."""
PROGRESS_INTERVAL: Final = 1.0


class _TransientError(DownloadError):
    """A failure another attempt may not repeat (network, 5xx, truncated body)."""


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
            raise DownloadError(f"refused redirect from {old}:// to {shown_url(newurl)}")
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


class ProgressThrottle:
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
    progress: ProgressThrottle,
    deadline: float,
    hashers: list[Any],
) -> int:
    done = 0
    while chunk := source.read(CHUNK):
        done += len(chunk)
        if done > max_bytes:
            raise DownloadError(f"{shown_url(url)} is larger than the {max_bytes}-byte limit")
        for hasher in hashers:
            hasher.update(chunk)
        sink.write(chunk)
        progress.update(done)
        if time.monotonic() > deadline:
            raise _TransientError(
                f"{shown_url(url)}: transfer took longer than {ATTEMPT_DEADLINE:.0f} s"
            )
    return done


def fetch_once(
    url: str,
    sink: IO[bytes],
    *,
    max_bytes: int,
    timeout: float,
    progress: ProgressThrottle,
    hashers: list[Any],
) -> int:
    """Copy the resource at `url` into `sink`; returns its size. Raises DownloadError."""
    parts = check_url(url)
    copy = functools.partial(
        _copy_stream,
        sink=sink,
        url=url,
        max_bytes=max_bytes,
        progress=progress,
        deadline=time.monotonic() + ATTEMPT_DEADLINE,
        hashers=hashers,
    )
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
                return copy(source)
        except FileNotFoundError:
            raise DownloadError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise DownloadError(f"{path} is not a regular file") from None
        except PermissionError:
            raise DownloadError(f"{path} is not readable") from None
        except OSError as exc:
            raise _TransientError(f"cannot read {path}: {exc.strerror or exc}") from exc
    request = urllib.request.Request(  # noqa: S310 -- scheme checked by check_url
        url, headers={"User-Agent": f"wemixvisor/{__version__}", "Accept-Encoding": "identity"}
    )
    shown = shown_url(url)
    try:
        with _opener().open(request, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if length is not None and length > max_bytes:
                raise DownloadError(f"{shown} is {length} bytes, over the {max_bytes}-byte limit")
            progress.total = length
            done = copy(response)
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


def with_retries(
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


def _fetch_info(url: str, *, attempts: int, backoff: float, timeout: float) -> dict[str, Any]:
    fetch_url, checksum = split_checksum(url)
    buffer = io.BytesIO()

    def once(attempt: int) -> int:
        del attempt
        buffer.seek(0)
        buffer.truncate()
        hashers = [hashlib.new(checksum.algorithm)] if checksum is not None else []
        size = fetch_once(
            fetch_url,
            buffer,
            max_bytes=MAX_PLAN_BYTES,
            timeout=timeout,
            progress=ProgressThrottle(None),
            hashers=hashers,
        )
        if checksum is not None and hashers[0].hexdigest() != checksum.hexdigest:
            raise DownloadError(
                f"plan info {shown_url(url)}: {checksum.algorithm} {hashers[0].hexdigest()}"
                f" does not match the expected {checksum.hexdigest}"
            )
        return size

    def failed(attempt: int, exc: DownloadError, will_retry: bool) -> None:
        logger.warning("fetching plan info (attempt {}): {}", attempt, exc)

    with_retries(once, attempts=attempts, backoff=backoff, on_failure=failed)
    try:
        info = msgspec.json.decode(buffer.getvalue())
    except (msgspec.DecodeError, RecursionError):
        raise DownloadError(f"plan info at {shown_url(url)} is not valid JSON") from None
    if not isinstance(info, dict):
        raise DownloadError(f"plan info at {shown_url(url)} is not a JSON object")
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
    check_url(url)
    return url
