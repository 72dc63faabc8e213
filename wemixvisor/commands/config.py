"""`wemixvisor config show | validate [FILE] | set KEY VALUE | unset KEY | init --template NAME`.

`show` and `validate` work offline, from this process's environment and flags: what the daemon
would load if it were started here with the same environment. `set`, `unset` and `init` edit
$DAEMON_HOME/wemixvisor/config.toml (`config.edit`): checked first by the daemon's own loader,
then replaced atomically; a running daemon applies the reloadable keys when it sees the change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from wemixvisor.commands.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliContext,
    CommandError,
    add_timeout_argument,
    call,
    daemon_runs,
)
from wemixvisor.commands.completion import complete_config_keys
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
from wemixvisor.config.load import config_file
from wemixvisor.config.templates import TEMPLATES
from wemixvisor.control.protocol import ConfigShow, new_request_id
from wemixvisor.control.security import keys_dir_of, server_curve_for
from wemixvisor.control.verbs import CONFIG_SHOW
from wemixvisor.events.publisher import check_bind_endpoint
from wemixvisor.home.ipc import EndpointError
from wemixvisor.home.layout import Home, LayoutError

if TYPE_CHECKING:
    from wemixvisor.config.edit import ConfigEdit

_SOURCE_KEYS = tuple(setting.key for setting in SETTINGS)

# Comments with the source start at this column when the `key = value` part is short enough.
_SOURCE_COLUMN = 44


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `config` verb with its `show` and `validate` actions."""
    parser = subparsers.add_parser(
        "config",
        help="show, validate or edit the configuration",
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
    _register_edits(actions)


def _register_edits(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`set`, `unset` and `init`: the verbs that write config.toml."""
    checked = (
        "The new file is checked by the daemon's own loader before it replaces config.toml "
        "(atomically); an invalid value exits 2 and leaves the file untouched. Comments and "
        "layout are kept. A running daemon applies reloadable keys live (config.reloaded)."
    )
    setting = actions.add_parser(
        "set",
        help="set one key in config.toml",
        description=f"Set KEY (section.key, as `config show` lists them) to VALUE. {checked}",
    )
    complete_config_keys(
        setting.add_argument("key", metavar="KEY", help="section.key, e.g. node.max_restarts")
    )
    setting.add_argument(
        "value",
        metavar="VALUE",
        help="the value as the environment takes it (30s, true, 3); arrays as TOML: '[\"-a\"]'",
    )
    setting.set_defaults(handler=run_set)
    unsetting = actions.add_parser(
        "unset",
        help="remove one key from config.toml (back to the environment or the default)",
        description=f"Remove KEY from config.toml. {checked}",
    )
    complete_config_keys(
        unsetting.add_argument("key", metavar="KEY", help="section.key, e.g. node.max_restarts")
    )
    unsetting.set_defaults(handler=run_unset)
    init = actions.add_parser(
        "init",
        help="write a commented config.toml from a template",
        description="Write $DAEMON_HOME/wemixvisor/config.toml from one of the templates in "
        "configs/ (every key commented); an existing file is kept unless --force.",
    )
    init.add_argument("--template", required=True, choices=tuple(TEMPLATES), help="which one")
    init.add_argument("--force", action="store_true", help="replace an existing config.toml")
    init.set_defaults(handler=run_init)


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
    raise NotImplementedError(kind)  # msgspec's dec_hook protocol: "not a type I convert"


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


def _edit_failed(exc: ConfigError) -> CommandError:
    return CommandError(f"config.toml not changed: {exc}", EXIT_USAGE)


def _report(edit: ConfigEdit, ctx: CliContext, done: str) -> None:
    setting = edit.setting
    applies = (
        "a running daemon applies it live"
        if setting.reloadable
        else "takes effect when the daemon restarts"
    )
    print(f"{done} in {edit.path}; {applies}" if edit.changed else f"{done}: no change")
    if setting.env is not None and ctx.env.get(setting.env):
        print(
            f"wemixvisor: {setting.env} is set in this environment and overrides the file",
            file=sys.stderr,
        )


def _edit(ctx: CliContext, done: str, change: Callable[[Path], ConfigEdit]) -> int:
    """Carry out one edit of config.toml and say what it did: 0, or 2 when refused."""
    try:
        edit = change(config_file(ctx.env, ctx.overrides))
    except ConfigError as exc:
        raise _edit_failed(exc) from None
    _report(edit, ctx, f"{edit.setting.key} {done}")
    return 0


def run_set(args: argparse.Namespace, ctx: CliContext) -> int:
    """Set one key in config.toml: 0 done, 2 invalid (file untouched)."""
    from wemixvisor.config.edit import set_key  # noqa: PLC0415  (tomlkit: only when editing)

    return _edit(ctx, "set", lambda path: set_key(path, args.key, args.value, ctx.env))


def run_unset(args: argparse.Namespace, ctx: CliContext) -> int:
    """Remove one key from config.toml: 0 done (or not there), 2 invalid."""
    from wemixvisor.config.edit import unset_key  # noqa: PLC0415

    return _edit(ctx, "unset", lambda path: unset_key(path, args.key, ctx.env))


def run_init(args: argparse.Namespace, ctx: CliContext) -> int:
    """Write config.toml from a template; 1 when one exists and --force is not given."""
    from wemixvisor.config.edit import init_config  # noqa: PLC0415

    path = config_file(ctx.env, ctx.overrides)
    try:
        template = init_config(path, args.template, ctx.env, force=args.force)
    except FileExistsError:
        raise CommandError(f"{path} exists; use --force to replace it", EXIT_FAILURE) from None
    except ConfigError as exc:
        raise _edit_failed(exc) from None
    print(f"wrote {path} from {template}")
    return 0
