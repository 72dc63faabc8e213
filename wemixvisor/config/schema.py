"""The configuration's shape (SPEC §3): one struct per config.toml section, one field per key.

Each key is written once, here: its field's name and type, and a `Setting` row (environment
variable, kind, default, help, reloadability, limits) as the field's `Annotated` metadata.
`SETTINGS` and `SECTIONS` are derived from these structs, so parsing, environment lookup,
`config show` and the reload diff all follow from the field; adding a key is adding a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Final, get_args

import msgspec

from wemixvisor.config.settings import Setting
from wemixvisor.config.values import (
    check_custom_preupgrade,
    check_endpoint,
    check_metrics_address,
    check_name,
    check_rehearsal_arg,
    check_rpc_address,
)

LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
CONTRACT_KINDS: Final = ("upgrade", "govbase")

_MIB = 1 << 20

# fmt: off
# One key per field: its Setting packed a few arguments a line, as a table reads.


class GovernanceContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A governance contract to follow: `upgrade` (UpgradeGovernance) or `govbase` (tracked)."""

    address: str
    kind: str


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[node]`: which binary runs, with what arguments, and the restart policy."""

    name: Annotated[
        str, Setting("DAEMON_NAME", "str", "gwemix", "binary file name", check=check_name)
    ]
    data_dir: Annotated[
        Path, Setting("DAEMON_DATA_DIR", "path", "{home}/data", "node data dir, backed up")
    ]
    args: Annotated[
        list[str], Setting(None, "list", [], "arguments passed to the node (file only)")
    ]
    shutdown_grace: Annotated[
        float,
        Setting(
            "DAEMON_SHUTDOWN_GRACE", "duration", 30.0,
            "SIGTERM, wait this long, then SIGKILL the node's process group", reloadable=True,
            nonzero=True,
        ),
    ]
    restart_on_failure: Annotated[
        bool,
        Setting(
            "DAEMON_RESTART_ON_FAILURE", "bool", True,
            "restart the node when it exits unexpectedly", reloadable=True,
        ),
    ]
    max_restarts: Annotated[
        int,
        Setting(
            "DAEMON_MAX_RESTARTS", "int", 5, "restarts allowed within restart_window before FATAL",
            reloadable=True, minimum=0, maximum=1_000_000,
        ),
    ]
    restart_window: Annotated[
        float,
        Setting(
            "DAEMON_RESTART_WINDOW", "duration", 600.0, "window in which max_restarts is counted",
            reloadable=True, nonzero=True,
        ),
    ]
    startsecs: Annotated[
        float,
        Setting(
            "DAEMON_STARTSECS", "duration", 1.0,
            "a start counts as good after this long alive (or RPC up, if sooner)", reloadable=True,
        ),
    ]
    backoff_initial: Annotated[
        float,
        Setting(
            "DAEMON_BACKOFF_INITIAL", "duration", 0.5,
            "first delay before restarting a node that keeps failing", reloadable=True,
            nonzero=True,
        ),
    ]
    backoff_max: Annotated[
        float,
        Setting(
            "DAEMON_BACKOFF_MAX", "duration", 60.0, "longest delay between restarts",
            reloadable=True, nonzero=True,
        ),
    ]
    validator_mode: Annotated[
        bool,
        Setting(
            "VALIDATOR_MODE", "bool", False,
            "check after an upgrade that the node signs blocks again",
        ),
    ]


class UpgradeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[upgrade]`: how an upgrade at height H is carried out."""

    restart_after_upgrade: Annotated[
        bool,
        Setting(
            "DAEMON_RESTART_AFTER_UPGRADE", "bool", True, "start the new binary after switching"
        ),
    ]
    restart_delay: Annotated[
        float,
        Setting(
            "DAEMON_RESTART_DELAY", "duration", 0.0,
            "pause after the node stopped, before the backup", reloadable=True,
        ),
    ]
    allow_download_binaries: Annotated[
        bool,
        Setting(
            "DAEMON_ALLOW_DOWNLOAD_BINARIES", "bool", False,
            "download a missing upgrade binary from the plan's info.binaries",
        ),
    ]
    download_must_have_checksum: Annotated[
        bool,
        Setting(
            "DAEMON_DOWNLOAD_MUST_HAVE_CHECKSUM", "bool", True,
            "refuse a download URL without ?checksum=",
        ),
    ]
    app_preupgrade: Annotated[
        bool,
        Setting(
            "DAEMON_APP_PREUPGRADE", "bool", False, "call `<new bin> pre-upgrade` after switching",
        ),
    ]
    preupgrade_max_retries: Annotated[
        int,
        Setting(
            "DAEMON_PREUPGRADE_MAX_RETRIES", "int", 0, "retries of `<bin> pre-upgrade` on exit 31",
            minimum=0, maximum=100,
        ),
    ]
    custom_preupgrade: Annotated[
        str,
        Setting(
            "COSMOVISOR_CUSTOM_PREUPGRADE", "str", "",
            "script under $DAEMON_HOME/wemixvisor/ run before switching",
            check=check_custom_preupgrade,
        ),
    ]
    hook_timeout: Annotated[
        float,
        Setting(
            "DAEMON_HOOK_TIMEOUT", "duration", 300.0, "time limit of each pre-upgrade hook",
            reloadable=True, nonzero=True,
        ),
    ]
    verify_timeout: Annotated[
        float,
        Setting(
            "DAEMON_VERIFY_TIMEOUT", "duration", 60.0,
            "after an upgrade, how long the new binary has to run and answer RPC before rollback",
            reloadable=True, nonzero=True,
        ),
    ]
    network_wait: Annotated[
        float,
        Setting(
            "DAEMON_NETWORK_WAIT", "duration", 30.0,
            "after an upgrade, head not advancing this long while RPC answers → "
            "upgrade.waiting_for_network (never a rollback)", reloadable=True, nonzero=True,
        ),
    ]
    window_margin: Annotated[
        int,
        Setting(
            None, "int", 2,
            "rolling-window plans switch no later than block H-window_margin (file only)",
            reloadable=True, minimum=1, maximum=1000,
        ),
    ]
    rehearsal_args: Annotated[
        list[str],
        Setting(
            None, "list", [],
            "the new binary's arguments in a rehearsal, with {datadir}, {port} and {ipc} "
            "(file only)", reloadable=True, check=check_rehearsal_arg,
        ),
    ]
    rehearsal_timeout: Annotated[
        float,
        Setting(
            "DAEMON_REHEARSAL_TIMEOUT", "duration", 120.0,
            "how long a rehearsal's binary has to answer RPC at the copied head", reloadable=True,
            nonzero=True,
        ),
    ]


class BackupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[backup]`: where backups go and how many are kept."""

    dir: Annotated[
        Path, Setting("DAEMON_DATA_BACKUP_DIR", "path", "{home}/backups", "backup directory")
    ]
    skip: Annotated[bool, Setting("UNSAFE_SKIP_BACKUP", "bool", False, "upgrade without a backup")]
    keep: Annotated[
        int,
        Setting(
            "DAEMON_BACKUP_KEEP", "int", 3, "complete upgrade backups kept by pruning",
            reloadable=True, minimum=1, maximum=10_000,
        ),
    ]
    prestage_horizon: Annotated[
        int,
        Setting(
            "DAEMON_BACKUP_PRESTAGE_HORIZON", "int", 0,
            "pre-stage the next plan's backup only within this many blocks of its height"
            " (0: as soon as it is next)", reloadable=True, minimum=0, maximum=100_000_000,
        ),
    ]


class RpcConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[rpc]`: how the node's head is followed."""

    address: Annotated[
        str,
        Setting(
            "DAEMON_RPC_ADDRESS", "str", "http://127.0.0.1:8545",
            "node JSON-RPC: http(s)://, ws(s):// or an absolute IPC path", check=check_rpc_address,
        ),
    ]
    poll_interval: Annotated[
        float,
        Setting(
            "DAEMON_POLL_INTERVAL", "duration", 0.3, "file and height polling interval",
            reloadable=True, nonzero=True,
        ),
    ]
    timeout: Annotated[
        float,
        Setting(
            "DAEMON_RPC_TIMEOUT", "duration", 5.0, "time limit of one RPC call (at most 5s)",
            nonzero=True, maximum=5,
        ),
    ]
    stall_timeout: Annotated[
        float,
        Setting(
            "DAEMON_STALL_TIMEOUT", "duration", 0.0,
            "head not advancing this long while RPC answers -> node.stalled (0 = off)",
            reloadable=True,
        ),
    ]


class ControlConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[control]`: the control socket the operator tool talks to."""

    endpoint: Annotated[
        str,
        Setting(
            "WEMIXVISOR_CONTROL_ENDPOINT", "str", "ipc://{home}/wemixvisor/control.sock",
            "control socket: ipc:///path or tcp://host:port", check=check_endpoint,
        ),
    ]


class EventsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[events]`: the event PUB socket."""

    endpoint: Annotated[
        str,
        Setting(
            "WEMIXVISOR_EVENTS_ENDPOINT", "str", "ipc://{home}/wemixvisor/events.sock",
            "event PUB socket: ipc:///path or tcp://host:port", check=check_endpoint,
        ),
    ]
    heartbeat_interval: Annotated[
        float,
        Setting(
            "WEMIXVISOR_HEARTBEAT_INTERVAL", "duration", 10.0,
            "interval of supervisor.heartbeat events", reloadable=True, nonzero=True,
        ),
    ]
    send_hwm: Annotated[
        int,
        Setting(
            None, "int", 10_000, "events queued per subscriber before new ones are dropped",
            minimum=1, maximum=10_000_000,
        ),
    ]


class GovernanceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[governance]`: on-chain governance contracts followed (SPEC §13.3)."""

    contracts: Annotated[
        list[GovernanceContract],
        Setting(
            None, "contracts", [],
            'governance contracts followed: [{address = "0x...", kind = "upgrade"|"govbase"}]',
            reloadable=True,
        ),
    ]
    confirmations: Annotated[
        int,
        Setting(
            None, "int", 0, "blocks after an event before it counts", reloadable=True, minimum=0,
            maximum=10_000,
        ),
    ]
    poll_interval: Annotated[
        float,
        Setting(
            None, "duration", 1.0, "governance contract polling interval", reloadable=True,
            nonzero=True,
        ),
    ]


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[metrics]`: the optional Prometheus endpoint."""

    address: Annotated[
        str,
        Setting(
            "WEMIXVISOR_METRICS_ADDRESS", "str", "",
            "host:port of the Prometheus /metrics endpoint (empty = off)",
            check=check_metrics_address,
        ),
    ]


class LogConfig(msgspec.Struct, frozen=True, kw_only=True):
    """`[log]`: the daemon's own log and the node log's rotation."""

    format: Annotated[
        str,
        Setting(
            "WEMIXVISOR_LOG_FORMAT", "enum", "text", "daemon log format: text or json",
            choices=("text", "json"),
        ),
    ]
    level: Annotated[
        str,
        Setting(
            "WEMIXVISOR_LOG_LEVEL", "enum", "INFO", "daemon log level", reloadable=True,
            choices=LOG_LEVELS,
        ),
    ]
    node_log_max_size: Annotated[
        int,
        Setting(
            None, "size", 100 * _MIB, "rotate logs/node.log past this size", minimum=1024,
            maximum=1 << 40,
        ),
    ]
    node_log_keep: Annotated[
        int, Setting(None, "int", 5, "rotated node logs kept", minimum=0, maximum=1000)
    ]

# fmt: on


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The effective configuration of one home; every path in it is absolute."""

    home: Annotated[Path, Setting("DAEMON_HOME", "path", "~/.wemixd", "home directory (absolute)")]
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


def _rows(struct: type[msgspec.Struct], section: str) -> list[Setting]:
    """The `Setting` of each annotated field of `struct`, with its dotted key filled in."""
    rows: list[Setting] = []
    for field in msgspec.structs.fields(struct):
        row = next((m for m in get_args(field.type)[1:] if isinstance(m, Setting)), None)
        if row is not None:
            key = f"{section}.{field.name}" if section else field.name
            rows.append(replace(row, key=key))
    return rows


SECTION_TYPES: Final[Mapping[str, type[msgspec.Struct]]] = {
    field.name: field.type
    for field in msgspec.structs.fields(Config)
    if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct)
}
"""Each config.toml section and its struct, in the order `config show` prints them."""

SECTIONS: Final = tuple(SECTION_TYPES)

SETTINGS: Final[tuple[Setting, ...]] = tuple(
    _rows(Config, "")
    + [row for section, struct in SECTION_TYPES.items() for row in _rows(struct, section)]
)
"""Every key, `home` first, then section by section in field order."""

SETTING_BY_KEY: Final[Mapping[str, Setting]] = {setting.key: setting for setting in SETTINGS}
