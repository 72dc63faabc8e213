"""Configuration (SPEC §3): flags > environment > `config.toml` > defaults, from one table.

`SETTINGS` holds one row per key: its dotted name, environment variable, kind, default,
reloadability and help. Parsing, environment lookup, `config show` and the reload diff are all
driven by that table, so adding a key means adding a row (and a field to its section's struct).

Every invalid input becomes a `ConfigError` whose message says where the value came from (the
environment variable, `--set key`, or the key path and file) and what the value was.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "CONTRACT_KINDS",
    "LOG_LEVELS",
    "MAX_CONFIG_BYTES",
    "SECTIONS",
    "SETTINGS",
    "BackupConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "EventsConfig",
    "GovernanceConfig",
    "GovernanceContract",
    "LogConfig",
    "MetricsConfig",
    "NodeConfig",
    "RpcConfig",
    "Setting",
    "UpgradeConfig",
    "config_as_dict",
    "format_duration",
    "format_size",
    "format_value",
    "load_config",
    "load_config_with_sources",
    "parse_bool",
    "parse_duration",
    "parse_size",
    "reload_diff",
    "setting_value",
]

MAX_CONFIG_BYTES: Final = 1 << 20
"""A config.toml larger than this is refused unread."""

_MAX_DURATION: Final = 365 * 24 * 3600
_MAX_SIZE: Final = (1 << 63) - 1
# Numbers are parsed from at most this many characters: bounds the work done on hostile input
# (and stays far below Python's int-from-string digit limit).
_MAX_NUMBER_TEXT: Final = 64
_SHOWN_VALUE_CHARS: Final = 80

SECTIONS: Final = (
    "node",
    "upgrade",
    "backup",
    "rpc",
    "control",
    "events",
    "governance",
    "metrics",
    "log",
)

LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
CONTRACT_KINDS: Final = ("upgrade", "govbase")


class ConfigError(Exception):
    """An invalid configuration value or file; the message names its origin and the value."""


class _Invalid(ValueError):
    """A value failed a check; the caller prefixes where the value came from."""

    def __init__(self, reason: str, *, where: str = "", value: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # Set when the bad part is nested inside the value (a field of a governance contract).
        self.where = where
        self.value = value


class _UnknownKey(_Invalid):
    """A table inside a value (a governance contract) has a key that does not exist."""


def _show(value: object) -> str:
    """`repr` of a bad value, cut short so a hostile megabyte never floods a log line."""
    if isinstance(value, Path):
        value = str(value)
    text = repr(value)
    if len(text) > _SHOWN_VALUE_CHARS:
        text = text[: _SHOWN_VALUE_CHARS - 3] + "..."
    return text


# --- value parsers -------------------------------------------------------------------------

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


def _duration(text: str) -> float:
    value = text.strip()
    if not value:
        raise _Invalid(f"empty duration ({_DURATION_HINT})")
    if len(value) > _MAX_NUMBER_TEXT:
        raise _Invalid(f"not a duration ({_DURATION_HINT})")
    if value.startswith("-"):
        raise _Invalid("a duration cannot be negative")
    if value == "0":
        return 0.0
    if _NUMBER_RE.fullmatch(value):
        raise _Invalid(f"duration without a unit ({_DURATION_HINT})")
    if not _DURATION_RE.fullmatch(value):
        raise _Invalid(f"not a duration ({_DURATION_HINT})")
    total = sum(
        (
            Fraction(number) * _DURATION_UNITS[unit]
            for number, unit in _DURATION_PART_RE.findall(value)
        ),
        Fraction(0),
    )
    if total > _MAX_DURATION:
        raise _Invalid("duration longer than a year")
    return float(total)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise _Invalid("not a boolean (use true, false, 1 or 0)")


def _int(text: str) -> int:
    value = text.strip()
    if len(value) > _MAX_NUMBER_TEXT or not _INT_RE.fullmatch(value):
        raise _Invalid("not an integer")
    return int(value)


def _size(text: str) -> int:
    value = text.strip()
    match = _SIZE_RE.fullmatch(value) if len(value) <= _MAX_NUMBER_TEXT else None
    if value.startswith("-"):
        raise _Invalid("a size cannot be negative")
    if match is None:
        raise _Invalid("not a size (use e.g. 100MiB, 1GB, 512KiB or a number of bytes)")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise _Invalid(f"unknown size unit {unit!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = int(Fraction(number) * factor)
    if size > _MAX_SIZE:
        raise _Invalid("size too large")
    return size


def parse_duration(text: str) -> float:
    """Seconds from `300ms`, `30s`, `10m`, `1h`, `1m30s` or `0`; ConfigError otherwise.

    Negative, empty, unit-less (other than `0`) and longer-than-a-year durations are refused.
    """
    try:
        return _duration(text)
    except _Invalid as exc:
        raise ConfigError(f"{_show(text)}: {exc.reason}") from None


def parse_bool(text: str) -> bool:
    """`true`/`false`/`1`/`0`, case-insensitive; ConfigError otherwise."""
    try:
        return _bool(text)
    except _Invalid as exc:
        raise ConfigError(f"{_show(text)}: {exc.reason}") from None


def parse_size(text: str) -> int:
    """Bytes from `100MiB`, `1GB`, `512KiB` or a plain number of bytes; ConfigError otherwise."""
    try:
        return _size(text)
    except _Invalid as exc:
        raise ConfigError(f"{_show(text)}: {exc.reason}") from None


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


# --- checks of string settings ---------------------------------------------------------------

_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_name(text: str) -> str:
    if (
        not text
        or text in (".", "..")
        or "/" in text
        or _CONTROL_CHARS_RE.search(text)
        or len(text.encode()) > 255
    ):
        raise _Invalid("must be a plain file name (no '/', not '.' or '..')")
    return text


def _check_custom_preupgrade(text: str) -> str:
    if text == "":
        return text
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or "\0" in text or text.endswith("/"):
        raise _Invalid("must name a file under $DAEMON_HOME/wemixvisor/ (relative, no '..')")
    return text


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise _Invalid("expected host:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise _Invalid("expected host:port (an IPv6 host goes in brackets: [::1]:9100)")
    if not host or any(ch.isspace() or ch in "/\0" for ch in host):
        raise _Invalid("expected host:port with a host name or address")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise _Invalid("expected host:port with a numeric port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _Invalid("port out of range 1-65535")
    return host, port


def _check_rpc_address(text: str) -> str:
    if text.startswith("/"):
        if "\0" in text:
            raise _Invalid("IPC path contains a NUL byte")
        return text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise _Invalid("not a valid URL") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise _Invalid("must be http(s)://host:port, ws(s)://host:port or an absolute IPC path")
    return text


def _check_endpoint(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "ipc":
        if not rest.startswith("/") or "\0" in rest:
            raise _Invalid("an ipc endpoint needs an absolute path: ipc:///path/to/file.sock")
        return text
    if sep and scheme == "tcp":
        _host_port(rest)
        return text
    raise _Invalid("must be ipc:///absolute/path or tcp://host:port")


def _check_metrics_address(text: str) -> str:
    if text:
        _host_port(text)
    return text


# --- the table -------------------------------------------------------------------------------

Kind = Literal["duration", "bool", "int", "size", "str", "enum", "path", "list", "contracts"]


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it is read from, what it holds, and whether it reloads."""

    key: str
    """Dotted `section.name` (the TOML path), or `home`."""
    env: str | None
    """Environment variable, or None when the key is set only in the file or with `--set`."""
    kind: Kind
    default: object
    """The default value; a string holding `{home}` is derived from the final DAEMON_HOME."""
    reloadable: bool
    """Applied live on a config.toml edit; otherwise a change needs a daemon restart."""
    help: str
    minimum: float | None = None
    maximum: float | None = None
    nonzero: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[str], str] | None = None
    """Extra validation of a string value; raises `_Invalid`, returns the value."""

    @property
    def section(self) -> str:
        """The TOML table (`node` for `node.max_restarts`); empty for `home`."""
        return self.key.partition(".")[0] if "." in self.key else ""

    @property
    def name(self) -> str:
        """The key inside its table (`max_restarts`)."""
        return self.key.rpartition(".")[2]

    @property
    def in_file(self) -> bool:
        """Whether config.toml may set it: the home is where the file is, so it cannot."""
        return self.key != "home"

    @property
    def text_settable(self) -> bool:
        """Whether a string (environment, `--set`) can express it; arrays are file-only."""
        return self.kind not in ("list", "contracts")


_MIB = 1 << 20

SETTINGS: tuple[Setting, ...] = (
    Setting("home", "DAEMON_HOME", "path", "~/.wemixd", False, "home directory (absolute)"),
    # [node]
    Setting(
        "node.name", "DAEMON_NAME", "str", "gwemix", False,
        "binary file name", check=_check_name,
    ),
    Setting(
        "node.data_dir", "DAEMON_DATA_DIR", "path", "{home}/data", False,
        "node data dir, backed up",
    ),
    Setting("node.args", None, "list", [], False, "arguments passed to the node (file only)"),
    Setting(
        "node.shutdown_grace", "DAEMON_SHUTDOWN_GRACE", "duration", 30.0, True,
        "SIGTERM, wait this long, then SIGKILL the node's process group", nonzero=True,
    ),
    Setting(
        "node.restart_on_failure", "DAEMON_RESTART_ON_FAILURE", "bool", True, True,
        "restart the node when it exits unexpectedly",
    ),
    Setting(
        "node.max_restarts", "DAEMON_MAX_RESTARTS", "int", 5, True,
        "restarts allowed within restart_window before FATAL", minimum=0, maximum=1_000_000,
    ),
    Setting(
        "node.restart_window", "DAEMON_RESTART_WINDOW", "duration", 600.0, True,
        "window in which max_restarts is counted", nonzero=True,
    ),
    Setting(
        "node.startsecs", "DAEMON_STARTSECS", "duration", 1.0, True,
        "a start counts as good after this long alive (or RPC up, if sooner)",
    ),
    Setting(
        "node.backoff_initial", "DAEMON_BACKOFF_INITIAL", "duration", 0.5, True,
        "first delay before restarting a node that keeps failing", nonzero=True,
    ),
    Setting(
        "node.backoff_max", "DAEMON_BACKOFF_MAX", "duration", 60.0, True,
        "longest delay between restarts", nonzero=True,
    ),
    Setting(
        "node.validator_mode", "VALIDATOR_MODE", "bool", False, False,
        "check after an upgrade that the node signs blocks again",
    ),
    # [upgrade]
    Setting(
        "upgrade.restart_after_upgrade", "DAEMON_RESTART_AFTER_UPGRADE", "bool", True, False,
        "start the new binary after switching",
    ),
    Setting(
        "upgrade.restart_delay", "DAEMON_RESTART_DELAY", "duration", 0.0, True,
        "pause after the node stopped, before the backup",
    ),
    Setting(
        "upgrade.allow_download_binaries", "DAEMON_ALLOW_DOWNLOAD_BINARIES", "bool", False, False,
        "download a missing upgrade binary from the plan's info.binaries",
    ),
    Setting(
        "upgrade.download_must_have_checksum", "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM", "bool", True,
        False, "refuse a download URL without ?checksum=",
    ),
    Setting(
        "upgrade.app_preupgrade", "DAEMON_APP_PREUPGRADE", "bool", False, False,
        "call `<new bin> pre-upgrade` after switching",
    ),
    Setting(
        "upgrade.preupgrade_max_retries", "DAEMON_PREUPGRADE_MAX_RETRIES", "int", 0, False,
        "retries of `<bin> pre-upgrade` on exit 31", minimum=0, maximum=100,
    ),
    Setting(
        "upgrade.custom_preupgrade", "COSMOVISOR_CUSTOM_PREUPGRADE", "str", "", False,
        "script under $DAEMON_HOME/wemixvisor/ run before switching",
        check=_check_custom_preupgrade,
    ),
    Setting(
        "upgrade.hook_timeout", "DAEMON_HOOK_TIMEOUT", "duration", 300.0, True,
        "time limit of each pre-upgrade hook", nonzero=True,
    ),
    Setting(
        "upgrade.verify_timeout", "DAEMON_VERIFY_TIMEOUT", "duration", 60.0, True,
        "after an upgrade, how long the new binary has to run and answer RPC before rollback",
        nonzero=True,
    ),
    Setting(
        "upgrade.network_wait", "DAEMON_NETWORK_WAIT", "duration", 30.0, True,
        "after an upgrade, head not advancing this long while RPC answers → "
        "upgrade.waiting_for_network (never a rollback)",
        nonzero=True,
    ),
    # [backup]
    Setting(
        "backup.dir", "DAEMON_DATA_BACKUP_DIR", "path", "{home}/backups", False,
        "backup directory",
    ),
    Setting("backup.skip", "UNSAFE_SKIP_BACKUP", "bool", False, False, "upgrade without a backup"),
    Setting(
        "backup.keep", "DAEMON_BACKUP_KEEP", "int", 3, True,
        "complete backups kept by pruning", minimum=1, maximum=10_000,
    ),
    # [rpc]
    Setting(
        "rpc.address", "DAEMON_RPC_ADDRESS", "str", "http://127.0.0.1:8545", False,
        "node JSON-RPC: http(s)://, ws(s):// or an absolute IPC path", check=_check_rpc_address,
    ),
    Setting(
        "rpc.poll_interval", "DAEMON_POLL_INTERVAL", "duration", 0.3, True,
        "file and height polling interval", nonzero=True,
    ),
    Setting(
        "rpc.timeout", "DAEMON_RPC_TIMEOUT", "duration", 5.0, False,
        "time limit of one RPC call (at most 5s)", nonzero=True, maximum=5,
    ),
    Setting(
        "rpc.stall_timeout", "DAEMON_STALL_TIMEOUT", "duration", 0.0, True,
        "head not advancing this long while RPC answers -> node.stalled (0 = off)",
    ),
    # [control], [events]
    Setting(
        "control.endpoint", "WEMIXVISOR_CONTROL_ENDPOINT", "str",
        "ipc://{home}/wemixvisor/control.sock", False,
        "control socket: ipc:///path or tcp://host:port", check=_check_endpoint,
    ),
    Setting(
        "events.endpoint", "WEMIXVISOR_EVENTS_ENDPOINT", "str",
        "ipc://{home}/wemixvisor/events.sock", False,
        "event PUB socket: ipc:///path or tcp://host:port", check=_check_endpoint,
    ),
    Setting(
        "events.heartbeat_interval", "WEMIXVISOR_HEARTBEAT_INTERVAL", "duration", 10.0, True,
        "interval of supervisor.heartbeat events", nonzero=True,
    ),
    Setting(
        "events.send_hwm", None, "int", 10_000, False,
        "events queued per subscriber before new ones are dropped", minimum=1, maximum=10_000_000,
    ),
    # [governance]
    Setting(
        "governance.contracts", None, "contracts", [], True,
        "governance contracts followed: [{address = \"0x...\", kind = \"upgrade\"|\"govbase\"}]",
    ),
    Setting(
        "governance.confirmations", None, "int", 0, True,
        "blocks after an event before it counts", minimum=0, maximum=10_000,
    ),
    Setting(
        "governance.poll_interval", None, "duration", 1.0, True,
        "governance contract polling interval", nonzero=True,
    ),
    # [metrics]
    Setting(
        "metrics.address", "WEMIXVISOR_METRICS_ADDRESS", "str", "", False,
        "host:port of the Prometheus /metrics endpoint (empty = off)", check=_check_metrics_address,
    ),
    # [log]
    Setting(
        "log.format", "WEMIXVISOR_LOG_FORMAT", "enum", "text", False,
        "daemon log format: text or json", choices=("text", "json"),
    ),
    Setting(
        "log.level", "WEMIXVISOR_LOG_LEVEL", "enum", "INFO", True,
        "daemon log level", choices=LOG_LEVELS,
    ),
    Setting(
        "log.node_log_max_size", None, "size", 100 * _MIB, False,
        "rotate logs/node.log past this size", minimum=1024, maximum=1 << 40,
    ),
    Setting(
        "log.node_log_keep", None, "int", 5, False,
        "rotated node logs kept", minimum=0, maximum=1000,
    ),
)  # fmt: skip

_BY_KEY: Final[Mapping[str, Setting]] = {setting.key: setting for setting in SETTINGS}


def _default(key: str) -> Any:
    """The table's default for a struct field, so each default is written once."""
    return _BY_KEY[key].default


# --- the typed configuration -----------------------------------------------------------------


class GovernanceContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A governance contract to follow: `upgrade` (UpgradeGovernance) or `govbase` (tracked)."""

    address: str
    kind: str


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[node]`: which binary runs, with what arguments, and the restart policy."""

    name: str = _default("node.name")
    data_dir: Path
    args: list[str] = _default("node.args")
    shutdown_grace: float = _default("node.shutdown_grace")
    restart_on_failure: bool = _default("node.restart_on_failure")
    max_restarts: int = _default("node.max_restarts")
    restart_window: float = _default("node.restart_window")
    startsecs: float = _default("node.startsecs")
    backoff_initial: float = _default("node.backoff_initial")
    backoff_max: float = _default("node.backoff_max")
    validator_mode: bool = _default("node.validator_mode")


class UpgradeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[upgrade]`: how an upgrade at height H is carried out."""

    restart_after_upgrade: bool = _default("upgrade.restart_after_upgrade")
    restart_delay: float = _default("upgrade.restart_delay")
    allow_download_binaries: bool = _default("upgrade.allow_download_binaries")
    download_must_have_checksum: bool = _default("upgrade.download_must_have_checksum")
    app_preupgrade: bool = _default("upgrade.app_preupgrade")
    preupgrade_max_retries: int = _default("upgrade.preupgrade_max_retries")
    custom_preupgrade: str = _default("upgrade.custom_preupgrade")
    hook_timeout: float = _default("upgrade.hook_timeout")
    verify_timeout: float = _default("upgrade.verify_timeout")
    network_wait: float = _default("upgrade.network_wait")


class BackupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[backup]`: where backups go and how many are kept."""

    dir: Path
    skip: bool = _default("backup.skip")
    keep: int = _default("backup.keep")


class RpcConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[rpc]`: how the node's head is followed."""

    address: str = _default("rpc.address")
    poll_interval: float = _default("rpc.poll_interval")
    timeout: float = _default("rpc.timeout")
    stall_timeout: float = _default("rpc.stall_timeout")


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[control]`: the control socket the operator tool talks to."""

    endpoint: str


class EventsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[events]`: the event PUB socket."""

    endpoint: str
    heartbeat_interval: float = _default("events.heartbeat_interval")
    send_hwm: int = _default("events.send_hwm")


class GovernanceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[governance]`: on-chain governance contracts followed (SPEC §13.3)."""

    contracts: list[GovernanceContract] = _default("governance.contracts")
    confirmations: int = _default("governance.confirmations")
    poll_interval: float = _default("governance.poll_interval")


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[metrics]`: the optional Prometheus endpoint."""

    address: str = _default("metrics.address")


class LogConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[log]`: the daemon's own log and the node log's rotation."""

    format: str = _default("log.format")
    level: str = _default("log.level")
    node_log_max_size: int = _default("log.node_log_max_size")
    node_log_keep: int = _default("log.node_log_keep")


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The effective configuration of one home; every path in it is absolute."""

    home: Path
    node: NodeConfig
    upgrade: UpgradeConfig
    backup: BackupConfig
    rpc: RpcConfig
    control: ControlConfig
    events: EventsConfig
    governance: GovernanceConfig
    metrics: MetricsConfig
    log: LogConfig

    @property
    def config_path(self) -> Path:
        """`$DAEMON_HOME/wemixvisor/config.toml` (which may not exist)."""
        return self.home / "wemixvisor" / "config.toml"


_SECTION_TYPES: Final[Mapping[str, type[msgspec.Struct]]] = {
    "node": NodeConfig,
    "upgrade": UpgradeConfig,
    "backup": BackupConfig,
    "rpc": RpcConfig,
    "control": ControlConfig,
    "events": EventsConfig,
    "governance": GovernanceConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


# --- converting one value --------------------------------------------------------------------


def _check_range(setting: Setting, number: float) -> None:
    def shown(limit: float) -> str:
        if setting.kind == "duration":
            return format_duration(limit)
        if setting.kind == "size":
            return format_size(int(limit))
        return str(int(limit))

    if setting.nonzero and number == 0:
        raise _Invalid("must be greater than 0")
    if setting.minimum is not None and number < setting.minimum:
        raise _Invalid(f"must be at least {shown(setting.minimum)}")
    if setting.maximum is not None and number > setting.maximum:
        raise _Invalid(f"must be at most {shown(setting.maximum)}")


def _from_text(setting: Setting, text: str) -> object:
    """A setting's value from a string (environment variable, `--set`, or a derived default)."""
    value: object
    if setting.kind == "duration":
        value = _duration(text)
        _check_range(setting, value)
    elif setting.kind == "bool":
        value = _bool(text)
    elif setting.kind == "int":
        value = _int(text)
        _check_range(setting, value)
    elif setting.kind == "size":
        value = _size(text)
        _check_range(setting, value)
    elif setting.kind == "enum":
        folded = text.strip().casefold()
        for choice in setting.choices:
            if choice.casefold() == folded:
                return choice
        raise _Invalid(f"must be one of {', '.join(setting.choices)}")
    elif setting.kind == "path":
        if "\0" in text or not text.startswith("/"):
            raise _Invalid("must be an absolute path")
        value = Path(text)
    elif setting.kind == "str":
        value = setting.check(text) if setting.check is not None else text
    else:
        raise _Invalid(f"{setting.key} can only be set in config.toml")
    return value


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _expect(expected: str, value: object) -> _Invalid:
    return _Invalid(f"expected {expected}, got {_toml_type(value)}")


def _from_toml(setting: Setting, value: object) -> object:
    """A setting's value from its decoded TOML value, which must have the right TOML type."""
    kind = setting.kind
    if kind == "duration":
        if isinstance(value, str):
            return _from_text(setting, value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0 or value > _MAX_DURATION:
                raise _Invalid("a duration in seconds must be between 0 and a year")
            _check_range(setting, value)
            return float(value)
        raise _expect("a duration like '30s'", value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _expect("true or false", value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect("an integer", value)
        _check_range(setting, value)
        return value
    if kind == "size":
        if isinstance(value, str):
            return _from_text(setting, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect("a size like '100MiB' or a number of bytes", value)
        if value < 0:
            raise _Invalid("a size cannot be negative")
        _check_range(setting, value)
        return value
    if kind in ("str", "enum", "path"):
        if not isinstance(value, str):
            raise _expect("a string", value)
        return _from_text(setting, value)
    if kind == "list":
        if not isinstance(value, list):
            raise _expect("an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise _Invalid(
                    f"expected a string, got {_toml_type(item)}", where=f"[{index}]", value=item
                )
        return list(value)
    return _contracts(value)


def _contracts(value: object) -> list[GovernanceContract]:
    if not isinstance(value, list):
        raise _expect("an array of {address, kind} tables", value)
    contracts: list[GovernanceContract] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise _Invalid(f"expected a table, got {_toml_type(item)}", where=where, value=item)
        for field in item:
            if field not in ("address", "kind"):
                raise _UnknownKey("use address and kind", where=f"{where}.{_key_text(field)}")
        for field in ("address", "kind"):
            if field not in item:
                raise _Invalid(f"missing {field}", where=where, value=item)
        address, kind = item["address"], item["kind"]
        if not isinstance(address, str) or not _ADDRESS_RE.fullmatch(address):
            raise _Invalid("expected 0x and 40 hex digits", where=f"{where}.address", value=address)
        if kind not in CONTRACT_KINDS:
            raise _Invalid(
                f"expected one of {', '.join(CONTRACT_KINDS)}", where=f"{where}.kind", value=kind
            )
        if address.lower() in seen:
            raise _Invalid("contract listed twice", where=f"{where}.address", value=address)
        seen.add(address.lower())
        contracts.append(GovernanceContract(address=address, kind=kind))
    return contracts


# --- reading the file ------------------------------------------------------------------------

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_DOTTED_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


def _key_text(name: str) -> str:
    """A TOML key as written, quoted when it is not a bare key (spaces, dots, control chars)."""
    return name if _PLAIN_KEY_RE.fullmatch(name) else _show(name)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_toml(path: Path) -> dict[str, Any]:
    """The decoded TOML document at `path`; ConfigError naming the file for anything unreadable."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    # A FIFO or device would block or never end; only regular files are read.
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config file {path} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {format_size(MAX_CONFIG_BYTES)}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {format_size(MAX_CONFIG_BYTES)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    try:
        document: dict[str, Any] = msgspec.toml.decode(text)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: nested too deeply") from None
    return document


def _file_values(path: Path) -> dict[str, object]:
    """Each key set in the file at `path`, converted and checked; errors name the key path."""
    values: dict[str, object] = {}
    for section, table in _read_toml(path).items():
        if section == "home":
            raise ConfigError(
                f"unknown key home in {path} (the home is DAEMON_HOME or --home, not a file key)"
            )
        if section not in SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(f"unknown key {_key_text(section)} in {path}")
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"unknown section [{_key_text(section)}] in {path}{hint}")
        if not isinstance(table, dict):
            raise ConfigError(
                f"{section} in {path}: expected a table [{section}], got {_toml_type(table)}"
            )
        names = [s.key for s in SETTINGS if s.section == section]
        for name, raw in table.items():
            key = f"{section}.{_key_text(name)}"
            setting = _BY_KEY.get(f"{section}.{name}")
            if setting is None:
                hint = _did_you_mean(f"{section}.{name}", names)
                raise ConfigError(f"unknown key {key} in {path}{hint}")
            try:
                values[setting.key] = _from_toml(setting, raw)
            except _UnknownKey as exc:
                raise ConfigError(
                    f"unknown key {key}{exc.where} in {path} ({exc.reason})"
                ) from None
            except _Invalid as exc:
                shown = exc.value if exc.where else raw
                raise ConfigError(
                    f"{key}{exc.where}={_show(shown)} in {path}: {exc.reason}"
                ) from None
    return values


# --- loading ---------------------------------------------------------------------------------


def _resolve_home(env: Mapping[str, str], overrides: Mapping[str, str]) -> tuple[Path, str]:
    if "home" in overrides:
        text, origin, source = overrides["home"], "--set home", "--set"
    elif env.get("DAEMON_HOME"):
        text, origin, source = env["DAEMON_HOME"], "DAEMON_HOME", "env DAEMON_HOME"
    else:
        try:
            user_home = env.get("HOME") or str(Path.home())
        except RuntimeError:
            raise ConfigError("DAEMON_HOME is not set and the user's home is unknown") from None
        text, origin, source = (
            f"{user_home.rstrip('/')}/.wemixd",
            "DAEMON_HOME (default)",
            "default",
        )
    try:
        home = _from_text(_BY_KEY["home"], text)
    except _Invalid as exc:
        raise ConfigError(f"{origin}={_show(text)}: {exc.reason}") from None
    assert isinstance(home, Path)
    return home, source


def _check_consistency(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    def described(key: str) -> str:
        value = values[key]
        shown = format_duration(value) if isinstance(value, float) else str(value)
        return f"{key}={shown} ({sources[key]})"

    initial, longest = values["node.backoff_initial"], values["node.backoff_max"]
    assert isinstance(initial, float)
    assert isinstance(longest, float)
    if longest < initial:
        raise ConfigError(
            f"{described('node.backoff_max')} must be at least {described('node.backoff_initial')}"
        )
    data_dir, backup_dir = values["node.data_dir"], values["backup.dir"]
    assert isinstance(data_dir, Path)
    assert isinstance(backup_dir, Path)
    # A backup directory inside the data (or the reverse) would copy backups into backups.
    if backup_dir.is_relative_to(data_dir) or data_dir.is_relative_to(backup_dir):
        raise ConfigError(
            f"{described('backup.dir')} and {described('node.data_dir')} must not contain "
            "each other"
        )
    stall, poll = values["rpc.stall_timeout"], values["rpc.poll_interval"]
    assert isinstance(stall, float)
    assert isinstance(poll, float)
    # Polling sees a new head at most one interval late: a shorter stall timeout would report
    # stalls of a chain that is moving.
    if 0 < stall < 2 * poll:
        raise ConfigError(
            f"{described('rpc.stall_timeout')} must be 0 (off) or at least twice "
            f"{described('rpc.poll_interval')}"
        )
    if values["control.endpoint"] == values["events.endpoint"]:
        raise ConfigError(
            f"{described('control.endpoint')} and {described('events.endpoint')} must differ"
        )


def _env_text(env: Mapping[str, str], setting: Setting) -> str:
    """The setting's environment value; an empty variable counts as unset, as in cosmovisor."""
    return env.get(setting.env, "") if setting.env is not None else ""


def load_config_with_sources(
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> tuple[Config, dict[str, str]]:
    """`load_config`, plus where each key's value came from.

    The sources map every dotted key (and `home`) to `default`, `file`, `env VARIABLE` or `--set`.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        setting = _BY_KEY.get(key)
        if setting is None:
            hint = _did_you_mean(key, list(_BY_KEY))
            shown = key if _DOTTED_KEY_RE.fullmatch(key) else _show(key)
            raise ConfigError(f"--set {shown}: unknown key{hint}")
        if not setting.text_settable:
            raise ConfigError(f"--set {key}: can only be set in config.toml")

    home, home_source = _resolve_home(env, overrides)
    values: dict[str, object] = {"home": home}
    sources: dict[str, str] = {"home": home_source}
    if config_path is not None:
        from_file = _file_values(config_path)
    else:
        default_path = home / "wemixvisor" / "config.toml"
        # An absent file is normal; a dangling symlink or unreadable one is still reported.
        exists = default_path.exists() or default_path.is_symlink()
        from_file = _file_values(default_path) if exists else {}

    for setting in SETTINGS:
        if not setting.in_file:
            continue
        key = setting.key
        if key in from_file and key not in overrides and not _env_text(env, setting):
            values[key], sources[key] = from_file[key], "file"
            continue
        raw: object
        if key in overrides:
            origin, raw, sources[key] = f"--set {key}", overrides[key], "--set"
        elif text := _env_text(env, setting):
            origin, raw, sources[key] = str(setting.env), text, f"env {setting.env}"
        else:
            origin, raw, sources[key] = f"default of {key}", setting.default, "default"
            if isinstance(raw, str):
                raw = raw.format(home=home)
        try:
            values[key] = _from_text(setting, raw) if isinstance(raw, str) else copy.copy(raw)
        except _Invalid as exc:
            raise ConfigError(f"{origin}={_show(raw)}: {exc.reason}") from None

    _check_consistency(values, sources)
    return _build(values), sources


def _build(values: Mapping[str, object]) -> Config:
    sections: dict[str, Any] = {}
    for section, struct in _SECTION_TYPES.items():
        fields = {s.name: values[s.key] for s in SETTINGS if s.section == section}
        sections[section] = struct(**fields)
    return Config(home=values["home"], **sections)  # type: ignore[arg-type]


def load_config(
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Config:
    """The effective configuration: `overrides` > `env` > config file > defaults.

    `env` is usually `os.environ`; `overrides` are `--set section.key=value` flags, parsed like
    environment strings; `config_path` defaults to `$DAEMON_HOME/wemixvisor/config.toml` when it
    exists (an explicit path must exist). Raises ConfigError naming the origin and bad value.
    """
    return load_config_with_sources(env, overrides, config_path)[0]


# --- reading a loaded configuration ----------------------------------------------------------


def setting_value(config: Config, key: str) -> object:
    """The value of dotted `key` in `config` (KeyError for a key not in `SETTINGS`)."""
    setting = _BY_KEY[key]
    if not setting.section:
        return config.home
    return getattr(getattr(config, setting.section), setting.name)


def reload_diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Keys whose value differs, and among them those that only a daemon restart applies."""
    changed = [s.key for s in SETTINGS if setting_value(old, s.key) != setting_value(new, s.key)]
    return changed, [key for key in changed if not _BY_KEY[key].reloadable]


def apply_reloadable(current: Config, new: Config) -> Config:
    """`current` with the reloadable keys taken from `new`; the others keep running values
    until a restart (config.reloaded lists them)."""
    sections: dict[str, dict[str, object]] = {}
    for setting in SETTINGS:
        if setting.reloadable and setting.section:
            value = setting_value(new, setting.key)
            if value != setting_value(current, setting.key):
                sections.setdefault(setting.section, {})[setting.name] = value
    updates = {
        section: msgspec.structs.replace(getattr(current, section), **fields)
        for section, fields in sections.items()
    }
    return msgspec.structs.replace(current, **updates) if updates else current


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def config_as_dict(config: Config) -> dict[str, Any]:
    """The configuration as JSON-ready builtins: `{"home": ..., "node": {...}, ...}`.

    Durations are float seconds, sizes integer bytes, paths strings.
    """
    result: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_plain)
    return result


def format_value(setting: Setting, value: object) -> str:
    """`value` as a TOML literal in the syntax config.toml uses (`"30s"`, `"100MiB"`, `true`)."""
    if setting.kind == "duration" and isinstance(value, float):
        return msgspec.json.encode(format_duration(value)).decode()
    if setting.kind == "size" and isinstance(value, int):
        return msgspec.json.encode(format_size(value)).decode()
    if isinstance(value, list) and setting.kind == "contracts":
        tables = [
            f"{{address = {_toml_string(c.address)}, kind = {_toml_string(c.kind)}}}"
            for c in value
            if isinstance(c, GovernanceContract)
        ]
        return f"[{', '.join(tables)}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return f"[{', '.join(_toml_string(str(item)) for item in value)}]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return msgspec.json.encode(text).decode()
