"""What one configuration key is: the `Setting` row attached to its field in `config.schema`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["duration", "bool", "int", "size", "str", "enum", "path", "list", "contracts"]


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it is read from, what it holds, and whether it reloads.

    Written once, as the `Annotated` metadata of the key's field in its section's struct
    (`config.schema`); the field gives the key its name and Python type, and `SETTINGS` is
    derived from the structs with `key` filled in.
    """

    env: str | None
    """Environment variable, or None when the key is set only in the file or with `--set`."""
    kind: Kind
    default: object
    """The default value; a string holding `{home}` is derived from the final DAEMON_HOME."""
    help: str
    reloadable: bool = False
    """Applied live on a config.toml edit; otherwise a change needs a daemon restart."""
    minimum: float | None = None
    maximum: float | None = None
    nonzero: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[str], str] | None = None
    """Extra validation of a string value; raises `config.values.Invalid`, returns the value."""
    key: str = ""
    """Dotted `section.name` (the TOML path), or `home`; set when the table is derived."""

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
