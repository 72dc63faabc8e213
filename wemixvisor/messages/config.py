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
