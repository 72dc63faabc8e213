"""Loading the configuration (SPEC §3): flags > environment > `config.toml` > defaults.

Every key's value is converted and checked against its `Setting` row; every invalid input
becomes a `ConfigError` whose message says where the value came from (the environment variable,
`--set key`, or the key path and file) and what the value was.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from wemixvisor.config.schema import (
    CONTRACT_KINDS,
    SECTION_TYPES,
    SECTIONS,
    SETTING_BY_KEY,
    SETTINGS,
    Config,
    GovernanceContract,
)
from wemixvisor.config.settings import Setting
from wemixvisor.config.values import (
    ADDRESS_RE,
    MAX_DURATION,
    ConfigError,
    Invalid,
    UnknownKey,
    format_duration,
    format_size,
    read_bool,
    read_duration,
    read_int,
    read_size,
    show_value,
)

MAX_CONFIG_BYTES: Final = 1 << 20
"""A config.toml larger than this is refused unread."""


def _check_range(setting: Setting, number: float) -> None:
    def shown(limit: float) -> str:
        if setting.kind == "duration":
            return format_duration(limit)
        if setting.kind == "size":
            return format_size(int(limit))
        return str(int(limit))

    if setting.nonzero and number == 0:
        raise Invalid("must be greater than 0")
    if setting.minimum is not None and number < setting.minimum:
        raise Invalid(f"must be at least {shown(setting.minimum)}")
    if setting.maximum is not None and number > setting.maximum:
        raise Invalid(f"must be at most {shown(setting.maximum)}")


def _from_text(setting: Setting, text: str) -> object:
    """A setting's value from a string (environment variable, `--set`, or a derived default)."""
    value: object
    if setting.kind == "duration":
        value = read_duration(text)
        _check_range(setting, value)
    elif setting.kind == "bool":
        value = read_bool(text)
    elif setting.kind == "int":
        value = read_int(text)
        _check_range(setting, value)
    elif setting.kind == "size":
        value = read_size(text)
        _check_range(setting, value)
    elif setting.kind == "enum":
        folded = text.strip().casefold()
        for choice in setting.choices:
            if choice.casefold() == folded:
                return choice
        raise Invalid(f"must be one of {', '.join(setting.choices)}")
    elif setting.kind == "path":
        if "\0" in text or not text.startswith("/"):
            raise Invalid("must be an absolute path")
        value = Path(text)
    elif setting.kind == "str":
        value = setting.check(text) if setting.check is not None else text
    else:
        raise Invalid(f"{setting.key} can only be set in config.toml")
    return value


# bool before int: a TOML boolean is a Python int too.
_TOML_TYPES: Final = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _toml_type(value: object) -> str:
    """The TOML type of a decoded value, as an error message names it."""
    return next((name for kind, name in _TOML_TYPES if isinstance(value, kind)), "a date/time")


def _expect(expected: str, value: object) -> Invalid:
    return Invalid(f"expected {expected}, got {_toml_type(value)}")


def _from_toml(setting: Setting, value: object) -> object:
    """A setting's value from its decoded TOML value, which must have the right TOML type."""
    kind = setting.kind
    if kind == "duration":
        if isinstance(value, str):
            return _from_text(setting, value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0 or value > MAX_DURATION:
                raise Invalid("a duration in seconds must be between 0 and a year")
            _check_range(setting, value)
            return float(value)
        raise _expect("a duration like '30s'", value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _expect("true or false", value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect("an integer", value)
        _check_range(setting, value)
        return value
    if kind == "size":
        if isinstance(value, str):
            return _from_text(setting, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect("a size like '100MiB' or a number of bytes", value)
        if value < 0:
            raise Invalid("a size cannot be negative")
        _check_range(setting, value)
        return value
    if kind in ("str", "enum", "path"):
        if not isinstance(value, str):
            raise _expect("a string", value)
        return _from_text(setting, value)
    if kind == "list":
        if not isinstance(value, list):
            raise _expect("an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(
                    f"expected a string, got {_toml_type(item)}", where=f"[{index}]", value=item
                )
            if setting.check is not None:
                try:
                    setting.check(item)
                except Invalid as exc:
                    raise Invalid(exc.reason, where=f"[{index}]", value=item) from None
        return list(value)
    return _contracts(value)


def _contracts(value: object) -> list[GovernanceContract]:
    if not isinstance(value, list):
        raise _expect("an array of {address, kind} tables", value)
    contracts: list[GovernanceContract] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise Invalid(f"expected a table, got {_toml_type(item)}", where=where, value=item)
        for field in item:
            if field not in ("address", "kind"):
                raise UnknownKey("use address and kind", where=f"{where}.{_key_text(field)}")
        for field in ("address", "kind"):
            if field not in item:
                raise Invalid(f"missing {field}", where=where, value=item)
        address, kind = item["address"], item["kind"]
        if not isinstance(address, str) or not ADDRESS_RE.fullmatch(address):
            raise Invalid("expected 0x and 40 hex digits", where=f"{where}.address", value=address)
        if kind not in CONTRACT_KINDS:
            raise Invalid(
                f"expected one of {', '.join(CONTRACT_KINDS)}", where=f"{where}.kind", value=kind
            )
        if address.lower() in seen:
            raise Invalid("contract listed twice", where=f"{where}.address", value=address)
        seen.add(address.lower())
        contracts.append(GovernanceContract(address=address, kind=kind))
    return contracts


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_DOTTED_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


def _key_text(name: str) -> str:
    """A TOML key as written, quoted when it is not a bare key (spaces, dots, control chars)."""
    return name if _PLAIN_KEY_RE.fullmatch(name) else show_value(name)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def read_config_text(path: Path) -> str:
    """The text of the config file at `path`: a regular file of at most MAX_CONFIG_BYTES of
    UTF-8; ConfigError naming the file for anything else."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    # A FIFO or device would block or never end; only regular files are read.
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config file {path} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {format_size(MAX_CONFIG_BYTES)}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {format_size(MAX_CONFIG_BYTES)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    """The decoded TOML document at `path`; ConfigError naming the file for anything unreadable."""
    text = read_config_text(path)
    try:
        document: dict[str, Any] = msgspec.toml.decode(text)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: nested too deeply") from None
    return document


def _file_values(path: Path) -> dict[str, object]:
    """Each key set in the file at `path`, converted and checked; errors name the key path."""
    values: dict[str, object] = {}
    for section, table in _read_toml(path).items():
        if section == "home":
            raise ConfigError(
                f"unknown key home in {path} (the home is DAEMON_HOME or --home, not a file key)"
            )
        if section not in SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(f"unknown key {_key_text(section)} in {path}")
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"unknown section [{_key_text(section)}] in {path}{hint}")
        if not isinstance(table, dict):
            raise ConfigError(
                f"{section} in {path}: expected a table [{section}], got {_toml_type(table)}"
            )
        names = [s.key for s in SETTINGS if s.section == section]
        for name, raw in table.items():
            key = f"{section}.{_key_text(name)}"
            setting = SETTING_BY_KEY.get(f"{section}.{name}")
            if setting is None:
                hint = _did_you_mean(f"{section}.{name}", names)
                raise ConfigError(f"unknown key {key} in {path}{hint}")
            try:
                values[setting.key] = _from_toml(setting, raw)
            except UnknownKey as exc:
                raise ConfigError(
                    f"unknown key {key}{exc.where} in {path} ({exc.reason})"
                ) from None
            except Invalid as exc:
                shown = exc.value if exc.where else raw
                raise ConfigError(
                    f"{key}{exc.where}={show_value(shown)} in {path}: {exc.reason}"
                ) from None
    return values


def _resolve_home(env: Mapping[str, str], overrides: Mapping[str, str]) -> tuple[Path, str]:
    if "home" in overrides:
        text, origin, source = overrides["home"], "--set home", "--set"
    elif env.get("DAEMON_HOME"):
        text, origin, source = env["DAEMON_HOME"], "DAEMON_HOME", "env DAEMON_HOME"
    else:
        try:
            user_home = env.get("HOME") or str(Path.home())
        except RuntimeError:
            raise ConfigError("DAEMON_HOME is not set and the user's home is unknown") from None
        text, origin, source = (
            f"{user_home.rstrip('/')}/.wemixd",
            "DAEMON_HOME (default)",
            "default",
        )
    try:
        home = _from_text(SETTING_BY_KEY["home"], text)
    except Invalid as exc:
        raise ConfigError(f"{origin}={show_value(text)}: {exc.reason}") from None
    assert isinstance(home, Path)
    return home, source


def config_file(env: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> Path:
    """`$DAEMON_HOME/wemixvisor/config.toml`, found without reading it (to edit a broken one)."""
    return _resolve_home(env, overrides or {})[0] / "wemixvisor" / "config.toml"


def _check_consistency(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    def described(key: str) -> str:
        value = values[key]
        shown = format_duration(value) if isinstance(value, float) else str(value)
        return f"{key}={shown} ({sources[key]})"

    initial, longest = values["node.backoff_initial"], values["node.backoff_max"]
    assert isinstance(initial, float)
    assert isinstance(longest, float)
    if longest < initial:
        raise ConfigError(
            f"{described('node.backoff_max')} must be at least {described('node.backoff_initial')}"
        )
    data_dir, backup_dir = values["node.data_dir"], values["backup.dir"]
    assert isinstance(data_dir, Path)
    assert isinstance(backup_dir, Path)
    # A backup directory inside the data (or the reverse) would copy backups into backups.
    if backup_dir.is_relative_to(data_dir) or data_dir.is_relative_to(backup_dir):
        raise ConfigError(
            f"{described('backup.dir')} and {described('node.data_dir')} must not contain "
            "each other"
        )
    stall, poll = values["rpc.stall_timeout"], values["rpc.poll_interval"]
    assert isinstance(stall, float)
    assert isinstance(poll, float)
    # Polling sees a new head at most one interval late: a shorter stall timeout would report
    # stalls of a chain that is moving.
    if 0 < stall < 2 * poll:
        raise ConfigError(
            f"{described('rpc.stall_timeout')} must be 0 (off) or at least twice "
            f"{described('rpc.poll_interval')}"
        )
    if values["control.endpoint"] == values["events.endpoint"]:
        raise ConfigError(
            f"{described('control.endpoint')} and {described('events.endpoint')} must differ"
        )


def _env_text(env: Mapping[str, str], setting: Setting) -> str:
    """The setting's environment value; an empty variable counts as unset, as in cosmovisor."""
    return env.get(setting.env, "") if setting.env is not None else ""


def load_config_with_sources(
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    *,
    read_file: bool = True,
) -> tuple[Config, dict[str, str]]:
    """`load_config`, plus where each key's value came from.

    The sources map every dotted key (and `home`) to `default`, `file`, `env VARIABLE` or `--set`.
    Without `read_file`, config.toml is left out (flags, environment and defaults only).
    """
    overrides = dict(overrides or {})
    for key in overrides:
        setting = SETTING_BY_KEY.get(key)
        if setting is None:
            hint = _did_you_mean(key, list(SETTING_BY_KEY))
            shown = key if _DOTTED_KEY_RE.fullmatch(key) else show_value(key)
            raise ConfigError(f"--set {shown}: unknown key{hint}")
        if not setting.text_settable:
            raise ConfigError(f"--set {key}: can only be set in config.toml")

    home, home_source = _resolve_home(env, overrides)
    values: dict[str, object] = {"home": home}
    sources: dict[str, str] = {"home": home_source}
    if not read_file:
        from_file: dict[str, object] = {}
    elif config_path is not None:
        from_file = _file_values(config_path)
    else:
        default_path = home / "wemixvisor" / "config.toml"
        # An absent file is normal; a dangling symlink or unreadable one is still reported.
        exists = default_path.exists() or default_path.is_symlink()
        from_file = _file_values(default_path) if exists else {}

    for setting in SETTINGS:
        if not setting.in_file:
            continue
        key = setting.key
        if key in from_file and key not in overrides and not _env_text(env, setting):
            values[key], sources[key] = from_file[key], "file"
            continue
        raw: object
        if key in overrides:
            origin, raw, sources[key] = f"--set {key}", overrides[key], "--set"
        elif text := _env_text(env, setting):
            origin, raw, sources[key] = str(setting.env), text, f"env {setting.env}"
        else:
            origin, raw, sources[key] = f"default of {key}", setting.default, "default"
            if isinstance(raw, str):
                raw = raw.format(home=home)
        try:
            values[key] = _from_text(setting, raw) if isinstance(raw, str) else copy.copy(raw)
        except Invalid as exc:
            raise ConfigError(f"{origin}={show_value(raw)}: {exc.reason}") from None

    _check_consistency(values, sources)
    return _build(values), sources


def _build(values: Mapping[str, object]) -> Config:
    sections: dict[str, Any] = {}
    for section, struct in SECTION_TYPES.items():
        fields = {s.name: values[s.key] for s in SETTINGS if s.section == section}
        sections[section] = struct(**fields)
    return Config(home=values["home"], **sections)  # type: ignore[arg-type]


def load_config(
    env: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    *,
    read_file: bool = True,
) -> Config:
    """The effective configuration: `overrides` > `env` > config file > defaults.

    `env` is usually `os.environ`; `overrides` are `--set section.key=value` flags, parsed like
    environment strings; `config_path` defaults to `$DAEMON_HOME/wemixvisor/config.toml` when it
    exists (an explicit path must exist). Raises ConfigError naming the origin and bad value.
    """
    return load_config_with_sources(env, overrides, config_path, read_file=read_file)[0]
