"""The configuration written out: as JSON-ready builtins, and each value as a TOML literal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from wemixvisor.config.schema import Config, GovernanceContract
from wemixvisor.config.settings import Setting
from wemixvisor.config.values import format_duration, format_size


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
