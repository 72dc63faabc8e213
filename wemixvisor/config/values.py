"""Single configuration values: parsing durations, sizes, booleans and integers from text,
writing them back, and the checks of string values with a syntax of their own (file names,
RPC addresses, socket endpoints).

The readers raise `Invalid` with the reason only; the loader prefixes where the value came from
(the environment variable, `--set key`, or the key path and file) and turns it into a
`ConfigError`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import urlsplit

MAX_DURATION: Final = 365 * 24 * 3600
_MAX_SIZE: Final = (1 << 63) - 1
# Numbers are parsed from at most this many characters: bounds the work done on hostile input
# (and stays far below Python's int-from-string digit limit).
_MAX_NUMBER_TEXT: Final = 64
_SHOWN_VALUE_CHARS: Final = 80


class ConfigError(Exception):
    """An invalid configuration value or file; the message names its origin and the value."""


class Invalid(ValueError):
    """A value failed a check; the caller prefixes where the value came from."""

    def __init__(self, reason: str, *, where: str = "", value: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Set when the bad part is nested inside the value (a field of a governance contract).
        self.where = where
        self.value = value


class UnknownKey(Invalid):
    """A table inside a value (a governance contract) has a key that does not exist."""


def show_value(value: object) -> str:
    """`repr` of a bad value, cut short so a hostile megabyte never floods a log line."""
    if isinstance(value, Path):
        value = str(value)
    text = repr(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


_DURATION_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+", re.ASCII)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS: Final = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_DURATION_HINT: Final = "use e.g. 300ms, 30s, 10m, 1h or 1m30s"
_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)", re.ASCII)
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def read_duration(text: str) -> float:
    """Seconds from a duration text; Invalid with the reason otherwise (see `parse_duration`)."""
    value = text.strip()
    if not value:
        raise Invalid(f"empty duration ({_DURATION_HINT})")
    if len(value) > _MAX_NUMBER_TEXT:
        raise Invalid(f"not a duration ({_DURATION_HINT})")
    if value.startswith("-"):
        raise Invalid("a duration cannot be negative")
    if value == "0":
        return 0.0
    if _NUMBER_RE.fullmatch(value):
        raise Invalid(f"duration without a unit ({_DURATION_HINT})")
    if not _DURATION_RE.fullmatch(value):
        raise Invalid(f"not a duration ({_DURATION_HINT})")
    total = sum(
        (
            Fraction(number) * _DURATION_UNITS[unit]
            for number, unit in _DURATION_PART_RE.findall(value)
        ),
        Fraction(0),
    )
    if total > MAX_DURATION:
        raise Invalid("duration longer than a year")
    return float(total)


def read_bool(text: str) -> bool:
    """`true`/`false`/`1`/`0`, case-insensitive; Invalid otherwise."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise Invalid("not a boolean (use true, false, 1 or 0)")


def read_int(text: str) -> int:
    """A decimal integer of at most 64 characters; Invalid otherwise."""
    value = text.strip()
    if len(value) > _MAX_NUMBER_TEXT or not _INT_RE.fullmatch(value):
        raise Invalid("not an integer")
    return int(value)


def read_size(text: str) -> int:
    """Bytes from a size text; Invalid with the reason otherwise (see `parse_size`)."""
    value = text.strip()
    match = _SIZE_RE.fullmatch(value) if len(value) <= _MAX_NUMBER_TEXT else None
    if value.startswith("-"):
        raise Invalid("a size cannot be negative")
    if match is None:
        raise Invalid("not a size (use e.g. 100MiB, 1GB, 512KiB or a number of bytes)")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise Invalid(f"unknown size unit {unit!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = int(Fraction(number) * factor)
    if size > _MAX_SIZE:
        raise Invalid("size too large")
    return size


def parse_duration(text: str) -> float:
    """Seconds from `300ms`, `30s`, `10m`, `1h`, `1m30s` or `0`; ConfigError otherwise.

    Negative, empty, unit-less (other than `0`) and longer-than-a-year durations are refused.
    """
    try:
        return read_duration(text)
    except Invalid as exc:
        raise ConfigError(f"{show_value(text)}: {exc.reason}") from None


def parse_bool(text: str) -> bool:
    """`true`/`false`/`1`/`0`, case-insensitive; ConfigError otherwise."""
    try:
        return read_bool(text)
    except Invalid as exc:
        raise ConfigError(f"{show_value(text)}: {exc.reason}") from None


def parse_size(text: str) -> int:
    """Bytes from `100MiB`, `1GB`, `512KiB` or a plain number of bytes; ConfigError otherwise."""
    try:
        return read_size(text)
    except Invalid as exc:
        raise ConfigError(f"{show_value(text)}: {exc.reason}") from None


def format_duration(seconds: float) -> str:
    """A duration in the syntax `parse_duration` reads back: `0s`, `300ms`, `1m30s`, `1h`."""
    millis = round(seconds * 1000)
    if not math.isclose(seconds * 1000, millis, abs_tol=1e-6):
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if millis == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """A size in the syntax `parse_size` reads back, in the largest binary unit that divides it."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_name(text: str) -> str:
    """`text` if it is a plain file name (DAEMON_NAME); Invalid otherwise."""
    if (
        not text
        or text in (".", "..")
        or "/" in text
        or _CONTROL_CHARS_RE.search(text)
        or len(text.encode()) > 255
    ):
        raise Invalid("must be a plain file name (no '/', not '.' or '..')")
    return text


def check_custom_preupgrade(text: str) -> str:
    """`text` if empty or a file under `$DAEMON_HOME/wemixvisor/`; Invalid otherwise."""
    if text == "":
        return text
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or "\0" in text or text.endswith("/"):
        raise Invalid("must name a file under $DAEMON_HOME/wemixvisor/ (relative, no '..')")
    return text


REHEARSAL_PLACEHOLDERS = ("datadir", "port", "ipc")
"""What `[upgrade] rehearsal_args` may name in braces: the scratch data dir, a free port, an IPC
path."""
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")


def check_rehearsal_arg(text: str) -> str:
    """`text` if every `{...}` in it is a known placeholder; Invalid otherwise."""
    if _CONTROL_CHARS_RE.search(text):
        raise Invalid("contains a control character")
    for name in _PLACEHOLDER_RE.findall(text):
        if name not in REHEARSAL_PLACEHOLDERS:
            known = ", ".join("{" + known + "}" for known in REHEARSAL_PLACEHOLDERS)
            raise Invalid(f"unknown placeholder {{{name[:40]}}}; known: {known}")
    return text


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise Invalid("expected host:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise Invalid("expected host:port (an IPv6 host goes in brackets: [::1]:9100)")
    if not host or any(ch.isspace() or ch in "/\0" for ch in host):
        raise Invalid("expected host:port with a host name or address")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise Invalid("expected host:port with a numeric port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise Invalid("port out of range 1-65535")
    return host, port


def check_rpc_address(text: str) -> str:
    """`text` if it is an http(s)/ws(s) URL or an absolute IPC path; Invalid otherwise."""
    if text.startswith("/"):
        if "\0" in text:
            raise Invalid("IPC path contains a NUL byte")
        return text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise Invalid("not a valid URL") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise Invalid("must be http(s)://host:port, ws(s)://host:port or an absolute IPC path")
    return text


def check_endpoint(text: str) -> str:
    """`text` if it is `ipc:///absolute/path` or `tcp://host:port`; Invalid otherwise."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "ipc":
        if not rest.startswith("/") or "\0" in rest:
            raise Invalid("an ipc endpoint needs an absolute path: ipc:///path/to/file.sock")
        return text
    if sep and scheme == "tcp":
        _host_port(rest)
        return text
    raise Invalid("must be ipc:///absolute/path or tcp://host:port")


def check_metrics_address(text: str) -> str:
    """`text` if it is empty (off) or `host:port`; Invalid otherwise."""
    if text:
        _host_port(text)
    return text
