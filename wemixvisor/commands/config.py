"""`wemixvisor config show | validate [FILE]`: the effective configuration, and a file check.

Both work offline, from this process's environment and flags: what the daemon would load if it
were started here with the same environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from wemixvisor.commands.common import CliContext
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
    show.set_defaults(handler=run_show)
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
    """Print the effective configuration (text or `--json`)."""
    config, sources = load_config_with_sources(ctx.env, ctx.overrides)
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


def run_validate(args: argparse.Namespace, ctx: CliContext) -> int:
    """Check FILE (or the home's config.toml) with the environment and flags: 0 valid, 1 not."""
    path: Path | None = args.file
    try:
        config = load_config(ctx.env, ctx.overrides, config_path=path)
    except ConfigError as exc:
        print(f"wemixvisor: invalid configuration: {exc}", file=sys.stderr)
        return 1
    if path is None and not config.config_path.is_file():
        print(
            f"wemixvisor: no {config.config_path}; checked the environment and defaults",
            file=sys.stderr,
        )
    print("ok")
    return 0
