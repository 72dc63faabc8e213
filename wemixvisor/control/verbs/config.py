"""The configuration verbs: `config_show`, `config_reload` (daemon only: without a daemon
`wemixvisor config show` loads the configuration itself)."""

from __future__ import annotations

from wemixvisor.config import config_as_dict, reload_diff
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
        _, running, restart_required, error = ctx.running_config()
        return ConfigShowReply(
            config=config_as_dict(running),
            config_file=str(running.config_path),
            config_file_exists=running.config_path.is_file(),
            restart_required=restart_required,
            file_error=error,
        )


class ConfigReloadVerb(Verb[ControlContext, ConfigReload, ConfigReloadReply]):
    """`config_reload`: read config.toml now; reloadable keys apply, others need a restart."""

    request_type = ConfigReload
    reply_type = ConfigReloadReply
    summary = "Read config.toml now and apply its reloadable keys."
    changes_state = True

    def execute(self, ctx: ControlContext, request: ConfigReload) -> ConfigReloadReply:
        # The files actor applies the edit (and publishes config.reloaded or config.rejected).
        ctx.ask("files", PollFiles())
        previous, running, restart_required, error = ctx.running_config()
        if error is not None:
            raise ControlError(
                ErrorCode.BAD_REQUEST,
                f"config.toml rejected, the running configuration stays: {error}",
            )
        return ConfigReloadReply(
            changed=reload_diff(previous, running)[0],
            restart_required=restart_required,
            config_file=str(running.config_path),
        )

    def render(self, reply: ConfigReloadReply) -> str:
        changed = ", ".join(reply.changed) or "nothing"
        text = f"reloaded: {changed} changed"
        if reply.restart_required:
            text += f"; a restart is needed for: {', '.join(reply.restart_required)}"
        return text
