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
    their own every poll interval. `explicit`: the operator asked, so config.toml is taken as
    it is now (a missing file too), without waiting for it to settle."""

    explicit: bool = False


class GetRunningConfig(msgspec.Struct, frozen=True):
    """To the files actor, the one owner of the running configuration: what the daemon runs
    with. With `check_file`, config.toml is loaded now to tell whether it is valid (its error
    is reported, nothing is applied)."""

    check_file: bool = False


class RunningConfig(msgspec.Struct, frozen=True):
    """The answer to GetRunningConfig: the startup configuration with the reloadable keys of
    the latest valid config.toml applied (`config`, a Config); the keys that differ in that
    file but only apply after a restart; and why config.toml cannot be loaded now (checked
    only when asked)."""

    config: Any
    restart_required: list[str]
    file_error: str | None = None
