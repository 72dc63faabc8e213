"""Configuration (SPEC §3): flags > environment > `config.toml` > defaults, one row per key.

- `schema`: the section structs; each field carries its key's `Setting` row (env name, kind,
  default, reloadability, help), from which `SETTINGS` and `SECTIONS` are derived.
- `settings`: the `Setting` row type.
- `values`: parsing and formatting single values (durations, sizes, endpoints...).
- `load`: building a `Config` from the environment, `--set` flags and config.toml.
- `reload`: what a config.toml edit changes, and which of it applies live.
- `show`: the configuration written out (JSON builtins, TOML literals).
"""

from wemixvisor.config.load import MAX_CONFIG_BYTES, load_config, load_config_with_sources
from wemixvisor.config.reload import apply_reloadable, reload_diff, setting_value
from wemixvisor.config.schema import (
    CONTRACT_KINDS,
    LOG_LEVELS,
    SECTIONS,
    SETTINGS,
    BackupConfig,
    Config,
    ControlConfig,
    EventsConfig,
    GovernanceConfig,
    GovernanceContract,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    RpcConfig,
    UpgradeConfig,
)
from wemixvisor.config.settings import Setting
from wemixvisor.config.show import config_as_dict, format_value
from wemixvisor.config.values import (
    ConfigError,
    format_duration,
    format_size,
    parse_bool,
    parse_duration,
    parse_size,
)

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
    "apply_reloadable",
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
