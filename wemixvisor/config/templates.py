"""The commented config.toml templates of `configs/` that `config init --template NAME` writes.

Kept apart from `config.edit` so that the command tree can list the names without importing
the TOML editor.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from wemixvisor.config.values import ConfigError

__all__ = ["TEMPLATES", "template_path"]

TEMPLATES: Final[Mapping[str, str]] = {
    "mainnet": "mainnet.toml",
    "testnet": "testnet.toml",
    "local": "local-anvil.toml",
}
"""`config init --template NAME`: the commented templates of `configs/`."""

_REPO_CONFIGS: Final = Path(__file__).resolve().parents[2] / "configs"
_INSTALLED_CONFIGS: Final = Path(sys.prefix) / "share" / "wemixvisor" / "configs"


def template_path(name: str) -> Path:
    """The template file of `config init --template NAME`."""
    file_name = TEMPLATES.get(name)
    if file_name is None:
        raise ConfigError(f"unknown template {name!r}: one of {', '.join(TEMPLATES)}")
    for directory in (_REPO_CONFIGS, _INSTALLED_CONFIGS):
        if (directory / file_name).is_file():
            return directory / file_name
    raise ConfigError(f"template {file_name} not found in {_REPO_CONFIGS} or {_INSTALLED_CONFIGS}")
