"""`wemixvisor config show | validate [FILE]`: the effective configuration, and a file check.

Both work offline, from this process's environment and flags: what the daemon would load if it
were started here with the same environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from wemixvisor.commands.common import CliContext, add_timeout_argument, call, daemon_runs
from wemixvisor.config import (
    SECTIONS,
    SETTINGS,
    Config,
    ConfigError,
    config_as_dict,
    format_value,
    load_config,
    load_config_with_sources,
    setting_value,
)
from wemixvisor.control.protocol import ConfigShow, new_request_id
from wemixvisor.control.security import keys_dir_of, server_curve_for
from wemixvisor.control.verbs import CONFIG_SHOW
from wemixvisor.events.publisher import check_bind_endpoint
from wemixvisor.home.ipc import EndpointError
from wemixvisor.home.layout import Home, LayoutError

_SOURCE_KEYS = tuple(setting.key for setting in SETTINGS)

# Comments with the source start at this column when the `key = value` part is short enough.
_SOURCE_COLUMN = 44


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `config` verb with its `show` and `validate` actions."""
    parser = subparsers.add_parser(
        "config",
        help="show or validate the configuration",
        description=(
            "Configuration comes from --set flags, then the environment, then "
            "$DAEMON_HOME/wemixvisor/config.toml, then the defaults."
        ),
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the effective configuration and where each value comes from",
        description=(
            "Print the effective configuration as TOML, each key followed by its source: "
            "default, file, env VARIABLE or --set."
        ),
    )
    show.add_argument(
        "--json", action="store_true", help="print one JSON object (durations in seconds)"
    )
    add_timeout_argument(show)
    show.set_defaults(handler=run_show, talks_to_daemon=True)
    validate = actions.add_parser(
        "validate",
        help="check a config file together with the environment and flags",
        description="Print `ok` and exit 0 when valid; print the error and exit 1 otherwise.",
    )
    validate.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="the file to check (default: $DAEMON_HOME/wemixvisor/config.toml)",
    )
    validate.set_defaults(handler=run_validate)


def render_config(config: Config, sources: dict[str, str]) -> str:
    """The configuration as sectioned TOML, each line commented with its value's source.

    The text loads back as a config.toml (the home is only a comment: a file cannot set it).
    """
    file_state = "" if config.config_path.is_file() else " (absent)"
    lines = [
        f"# home = {format_value(SETTINGS[0], config.home)}  ({sources['home']})",
        f"# config file: {config.config_path}{file_state}",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for setting in SETTINGS:
            if setting.section != section:
                continue
            assignment = (
                f"{setting.name} = {format_value(setting, setting_value(config, setting.key))}"
            )
            lines.append(f"{assignment.ljust(_SOURCE_COLUMN - 1)} # {sources[setting.key]}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the effective configuration (text or `--json`); with a broken config.toml, the
    configuration the running daemon runs with."""
    try:
        config, sources = load_config_with_sources(ctx.env, ctx.overrides)
    except ConfigError:
        if not _daemon_on_home(ctx):
            raise  # nothing runs that could show a configuration: the file's error is the answer
        return _show_running(args, ctx)
    if args.json:
        document = {
            "config_file": str(config.config_path),
            "config_file_exists": config.config_path.is_file(),
            "config": config_as_dict(config),
            "sources": sources,
        }
        print(msgspec.json.encode(document).decode())
    else:
        print(render_config(config, sources))
    return 0


def _daemon_on_home(ctx: CliContext) -> bool:
    """Whether a daemon runs on the home the flags and environment name (without the file)."""
    try:
        home = Home.from_config(load_config(ctx.env, ctx.overrides, read_file=False))
    except (ConfigError, LayoutError):
        return False
    return daemon_runs(home)


def _path_hook(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def _show_running(args: argparse.Namespace, ctx: CliContext) -> int:
    """`config show` while config.toml is broken: the daemon's running configuration (the
    context has warned about the file and found the daemon through its record)."""
    reply = call(ctx, CONFIG_SHOW, ConfigShow(id=new_request_id()), args.timeout)
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return 0
    running = msgspec.convert(reply.config, Config, dec_hook=_path_hook)
    print("# the running daemon's configuration (config.toml is not valid)")
    print(render_config(running, dict.fromkeys(_SOURCE_KEYS, "running daemon")))
    return 0


def run_validate(args: argparse.Namespace, ctx: CliContext) -> int:
    """Check FILE (or the home's config.toml) with the environment and flags: 0 valid, 1 not."""
    path: Path | None = args.file
    try:
        config = load_config(ctx.env, ctx.overrides, config_path=path)
    except ConfigError as exc:
        print(f"wemixvisor: invalid configuration: {exc}", file=sys.stderr)
        return 1
    try:
        # The daemon's own startup checks of its endpoints, so that `ok` means it would start.
        server_curve_for(config.control.endpoint, keys_dir_of(config.home))
        check_bind_endpoint(config.events.endpoint)
    except EndpointError as exc:
        print(f"wemixvisor: invalid configuration: {exc}", file=sys.stderr)
        return 1
    if path is None and not config.config_path.is_file():
        print(
            f"wemixvisor: no {config.config_path}; checked the environment and defaults",
            file=sys.stderr,
        )
    print("ok")
    return 0
