"""Editing config.toml for the operator (`config set | unset | init`), keeping its comments.

The file is edited with tomlkit, which keeps the operator's comments, order and layout. A new
text is written to a temporary file beside config.toml and checked there by the loader the
daemon uses (`load_config`) BEFORE it replaces the file (fsync, rename, fsync of the directory):
an invalid value leaves config.toml untouched, and a running daemon, which reloads the file
when it changes (SPEC §3), never sees a half-written or invalid edit. Keys are the rows of
`config.schema` (`SETTING_BY_KEY`): there is no second list of them here.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Item, Table

from wemixvisor.config.load import load_config, read_config_text
from wemixvisor.config.schema import SETTING_BY_KEY, Config
from wemixvisor.config.settings import Setting
from wemixvisor.config.templates import template_path
from wemixvisor.config.values import ConfigError, Invalid, read_bool, read_int, show_value
from wemixvisor.home.fsutil import fsync_dir, removed_on_failure

__all__ = ["ConfigEdit", "init_config", "set_key", "unset_key", "write_checked"]


@dataclass(frozen=True)
class ConfigEdit:
    """What an edit did: the file, the key's row, and whether the file's value changed."""

    path: Path
    setting: Setting
    changed: bool


def file_setting(key: str) -> Setting:
    """The row of a key config.toml may hold; ConfigError (with a close match) otherwise."""
    setting = SETTING_BY_KEY.get(key)
    if setting is None:
        close = difflib.get_close_matches(key, list(SETTING_BY_KEY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        shown = key if key.isascii() and key.isprintable() and len(key) <= 80 else show_value(key)
        raise ConfigError(f"unknown key {shown}{hint}")
    if not setting.in_file:
        raise ConfigError("home is DAEMON_HOME or --home, not a config.toml key")
    return setting


def toml_value(setting: Setting, text: str) -> object:
    """The TOML value to store for `text` given on the command line.

    Booleans and integers become TOML booleans and integers; arrays (`node.args`, the
    governance contracts) are written as TOML, e.g. `["--port", "8545"]`; everything else is
    kept as the string the operator typed (`"30s"`, `"100MiB"`), which the loader reads.
    """
    try:
        if setting.kind == "bool":
            return read_bool(text)
        if setting.kind == "int":
            return read_int(text)
    except Invalid as exc:
        raise ConfigError(f"{setting.key}={show_value(text)}: {exc.reason}") from None
    if setting.kind in ("list", "contracts"):
        try:
            value: object = tomlkit.parse(f"value = {text}\n")["value"]
        except (tomlkit.exceptions.TOMLKitError, RecursionError):
            raise ConfigError(
                f'{setting.key}={show_value(text)}: expected a TOML array, e.g. ["--port", "8545"]'
            ) from None
        return value
    return text


def _read_document(path: Path) -> tomlkit.TOMLDocument:
    """The file as an editable document; an absent file is an empty one."""
    if not os.path.lexists(path):
        return tomlkit.document()
    text = read_config_text(path)
    try:
        return tomlkit.parse(text)
    except (tomlkit.exceptions.TOMLKitError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it first") from None


def _table(
    document: tomlkit.TOMLDocument, path: Path, section: str, *, create: bool
) -> Table | None:
    table = document.get(section)
    if table is None and create:
        table = tomlkit.table()
        document.add(section, table)
    if table is not None and not isinstance(table, Table):
        raise ConfigError(f"{section} in {path} is not a table [{section}]; fix it first")
    return table


def write_checked(path: Path, text: str, env: Mapping[str, str]) -> Config:
    """Replace `path` with `text` once the daemon's loader accepts it; untouched otherwise.

    The text goes to a temporary file in the same directory, is fsynced and loaded from there
    (with `env`, as `config validate` does), then renamed over `path` and the directory
    fsynced. The file keeps its permissions; a symlinked config.toml keeps its link.
    """
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temp = Path(temp_name)
    with removed_on_failure(temp):
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        try:
            config = load_config(env, config_path=temp)
        except ConfigError as exc:
            # Name the file the operator knows, not the temporary one.
            raise ConfigError(str(exc).replace(str(temp), str(path))) from None
        os.replace(temp, target)
    fsync_dir(target.parent)
    return config


@contextlib.contextmanager
def _edit_lock(path: Path) -> Iterator[None]:
    """One edit of config.toml at a time: an flock on its directory (no lock file to leave
    behind), so two operators' edits never lose one another's key."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_key(path: Path, key: str, text: str, env: Mapping[str, str]) -> ConfigEdit:
    """Set `key` to `text` in the config.toml at `path` (created when absent)."""
    setting = file_setting(key)
    value = toml_value(setting, text)
    with _edit_lock(path):
        document = _read_document(path)
        table = _table(document, path, setting.section, create=True)
        assert table is not None
        before = table.get(setting.name)
        changed = not isinstance(before, Item) or before.unwrap() != value
        table[setting.name] = value
        write_checked(path, tomlkit.dumps(document), env)
    return ConfigEdit(path, setting, changed)


def unset_key(path: Path, key: str, env: Mapping[str, str]) -> ConfigEdit:
    """Remove `key` from the config.toml at `path`: back to the environment or the default."""
    setting = file_setting(key)
    with _edit_lock(path):
        document = _read_document(path)
        table = _table(document, path, setting.section, create=False)
        if table is None or setting.name not in table:
            return ConfigEdit(path, setting, changed=False)
        del table[setting.name]
        write_checked(path, tomlkit.dumps(document), env)
    return ConfigEdit(path, setting, changed=True)


def init_config(path: Path, name: str, env: Mapping[str, str], *, force: bool) -> Path:
    """Write the commented template `name` as the config.toml at `path`; the template used."""
    template = template_path(name)
    with _edit_lock(path):
        if (path.exists() or path.is_symlink()) and not force:
            raise FileExistsError(path)
        write_checked(path, template.read_text(encoding="utf-8"), env)
    return template
