"""Configuration changes applied live (SPEC §3 hot reload)."""

from __future__ import annotations

from typing import Any

import msgspec


class ConfigChanged(msgspec.Struct, frozen=True):
    """A validated new configuration; each actor applies the reloadable keys it uses.

    `config` is a wemixvisor.config.Config; `changed` the dotted keys that differ.
    """

    config: Any
    changed: list[str]


class PollFiles(msgspec.Struct, frozen=True):
    """To the files actor: look at the watched files (plan files, config.toml) now, e.g. for a
    control `config_reload`; an `ask` returns None once the poll is done. Polls also happen on
    their own every poll interval."""
