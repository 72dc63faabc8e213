"""The configuration verbs: `config_show`, `config_reload` (daemon only: without a daemon
`wemixvisor config show` loads the configuration itself)."""

from __future__ import annotations

from wemixvisor.config import Config, config_as_dict, reload_diff
from wemixvisor.control.protocol import ConfigReload, ConfigShow, ControlError, ErrorCode
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.replies import ConfigReloadReply, ConfigShowReply
from wemixvisor.messages.config import PollFiles

__all__ = ["ConfigReloadVerb", "ConfigShowVerb"]


class ConfigShowVerb(Verb[ControlContext, ConfigShow, ConfigShowReply]):
    """`config_show`: the configuration the daemon runs with."""

    request_type = ConfigShow
    reply_type = ConfigShowReply
    summary = "The configuration the daemon runs with."

    def execute(self, ctx: ControlContext, request: ConfigShow) -> ConfigShowReply:
        running = ctx.running_config(check_file=True)
        config: Config = running.config
        return ConfigShowReply(
            config=config_as_dict(config),
            config_file=str(config.config_path),
            config_file_exists=config.config_path.is_file(),
            restart_required=running.restart_required,
            file_error=running.file_error,
        )


class ConfigReloadVerb(Verb[ControlContext, ConfigReload, ConfigReloadReply]):
    """`config_reload`: read config.toml now; reloadable keys apply, others need a restart."""

    request_type = ConfigReload
    reply_type = ConfigReloadReply
    summary = "Read config.toml now and apply its reloadable keys."
    changes_state = True

    def execute(self, ctx: ControlContext, request: ConfigReload) -> ConfigReloadReply:
        # The files actor owns the running configuration: it applies the edit (and publishes
        # config.reloaded or config.rejected).
        previous = ctx.running_config().config
        ctx.ask("files", PollFiles(explicit=True))
        running = ctx.running_config(check_file=True)
        if running.file_error is not None:
            raise ControlError(
                ErrorCode.BAD_REQUEST,
                f"config.toml rejected, the running configuration stays: {running.file_error}",
            )
        config: Config = running.config
        return ConfigReloadReply(
            changed=reload_diff(previous, config)[0],
            restart_required=running.restart_required,
            config_file=str(config.config_path),
        )

    def render(self, reply: ConfigReloadReply) -> str:
        if reply.changed:
            text = f"reloaded: {', '.join(reply.changed)} changed"
        else:
            # The daemon watches the file: a saved edit is usually applied before this asks.
            text = f"reloaded: {reply.config_file} is in effect (nothing left to change)"
        if reply.restart_required:
            text += f"; a restart is needed for: {', '.join(reply.restart_required)}"
        return text
