"""Hot reload (SPEC §3): which keys a new config.toml changes, and which of them apply live."""

from __future__ import annotations

import msgspec

from wemixvisor.config.schema import SETTING_BY_KEY, SETTINGS, Config


def setting_value(config: Config, key: str) -> object:
    """The value of dotted `key` in `config` (KeyError for a key not in `SETTINGS`)."""
    setting = SETTING_BY_KEY[key]
    if not setting.section:
        return config.home
    return getattr(getattr(config, setting.section), setting.name)


def reload_diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Keys whose value differs, and among them those that only a daemon restart applies."""
    changed = [s.key for s in SETTINGS if setting_value(old, s.key) != setting_value(new, s.key)]
    return changed, [key for key in changed if not SETTING_BY_KEY[key].reloadable]


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
