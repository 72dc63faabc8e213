"""FileSourceActor: turns the plan files and config.toml into messages (SPEC §3, §4).

It watches three files — `<data dir>/upgrade-info.json` (one plan),
`<data dir>/upgrade-info.json.batch` (an array of plans) and `$DAEMON_HOME/wemixvisor/config.toml`
— with `stat` on a poller thread, which wakes the actor only for a change or unsettled work, and
reads one only when it changed. The poller looks every `rpc.poll_interval`; with inotify on the
files' directories (`plans.dirwatch`), an idle daemon's poller looks when a change pokes it and
otherwise every `SAFETY_INTERVALS` intervals, and every interval again while content settles,
plans wait for delivery, a watched path is a symbolic link, or inotify fails.

A file is acted on only when complete: content that parses is acted on at once; content that
does not is rejected only after it stayed the same for `STABLE_POLLS` polls (a half-written file
settles first), and then once per content.

Plans go to the orchestrator, which owns the queue rules and publishes plan.registered or
plan.rejected itself; this actor publishes plan.rejected only for what it cannot even parse.
A valid config edit is told to every actor as `ConfigChanged`; an invalid one is reported and
the old configuration stays.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import Poller
from wemixvisor.bus import Bus
from wemixvisor.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    apply_reloadable,
    load_config,
    reload_diff,
)
from wemixvisor.logs import apply_level
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged, GetRunningConfig, PollFiles, RunningConfig
from wemixvisor.messages.plans import RegisterPlans, ResendPlans
from wemixvisor.plans.dirwatch import DirectoryEvents
from wemixvisor.plans.files import (
    FileWatch,
    PlanRejection,
    Reading,
    batch_file,
    parse_batch_file,
    plan_file,
    plan_file_rejection,
    stat_file,
)
from wemixvisor.plans.queue import MAX_PLAN_BYTES, Plan, PlanError, parse_plan

CONFIG_ROLES = ("node", "height", "orchestrator", "backup", "governance", "files")
"""Every role told `ConfigChanged` after a valid config.toml edit (a role nobody plays is fine)."""

# A 1 MiB batch can hold hundreds of thousands of bad entries: each of the first ones gets its
# own plan.rejected, the rest one summary, so that a hostile file cannot flood events and logs.
_MAX_ENTRY_REJECTIONS = 32
_LOGGED_NAMES = 10
SAFETY_INTERVALS = 10
"""With inotify watching the files' directories, the poller still looks every this many poll
intervals (3 s by default): for what inotify cannot see (another host's write on a network
filesystem)."""


class _Tick(msgspec.Struct, frozen=True):
    """The poll timer fired."""


class _ChangedFiles:
    """The files poller's call, on the poller's thread: a tick for the actor only when a
    watched file's stamp (mtime_ns, size, inode) changed since the last tick, or while the actor
    said it is not `quiet` (content waiting to settle, plans not delivered yet). An idle daemon
    then costs one `stat` per file per interval and no wakeup of the actor."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.paths = paths
        self._stamps: tuple[object, ...] | None = None
        self.quiet = threading.Event()

    def __call__(self) -> _Tick | None:
        stamps = tuple(_stamp(path) for path in self.paths)
        if self.quiet.is_set() and stamps == self._stamps:
            return None
        self._stamps = stamps
        return _Tick()


def _stamp(path: Path) -> object:
    try:
        return stat_file(path)
    except OSError as exc:
        return exc.errno  # the watch reports the error; a different one is a change


class FileSourceActor(SupervisedActor):
    """Watches upgrade-info.json, its batch file and config.toml; reports what they hold. It
    is the one owner of the running configuration (`GetRunningConfig`): `startup` is what the
    daemon started with (the base of "needs a restart"), `config` what it runs with now.

    `env` and `overrides` are the environment and `--set` flags the daemon started with: a
    config.toml edit is loaded with them, so the file keeps its place in the precedence.
    """

    role = "files"

    def __init__(
        self,
        config: Config,
        bus: Bus,
        failure_sink: FailureSink | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        on_reload: Callable[[Config], None] | None = None,
        startup: Config | None = None,
    ) -> None:
        super().__init__(failure_sink)
        self._bus = bus
        # The latest valid configuration: the base of the next reload's diff.
        self._config = config
        # The configuration the daemon started with, and what it runs with now: this actor is
        # the one owner of the running configuration; the others are told it or ask for it.
        self._startup = startup if startup is not None else config
        self._running = config
        self._overrides = dict(overrides or {})
        # Told every reloaded configuration: the daemon's own loop (heartbeat interval) is
        # not an actor and gets no ConfigChanged.
        self._on_reload = on_reload
        self._env = dict(os.environ if env is None else env)
        if "home" not in self._overrides:
            # The home is fixed for the daemon's life; the file watched is the one in it.
            self._env["DAEMON_HOME"] = str(config.home)
        self._interval = config.rpc.poll_interval
        # data_dir needs a restart to change: the paths watched are fixed at start.
        data_dir = config.node.data_dir
        self._plan_watch = FileWatch(plan_file(data_dir), MAX_PLAN_BYTES)
        self._batch_watch = FileWatch(batch_file(data_dir), MAX_PLAN_BYTES)
        # Deleting config.toml is an edit too (back to environment and defaults), but an editor
        # may remove the file for a moment while saving: absence is acted on once it lasts.
        self._config_watch = FileWatch(config.config_path, MAX_CONFIG_BYTES, act_on_absence=True)
        # Plans read but not yet delivered, per source: the orchestrator may start after this
        # actor (or be restarting); they are retried every poll until it takes them.
        self._outbox: dict[str, RegisterPlans] = {}
        self._delivered: dict[str, RegisterPlans] = {}
        self._ticker: Poller | None = None
        self._changed_files = _ChangedFiles(
            (self._plan_watch.path, self._batch_watch.path, self._config_watch.path)
        )
        self._events: DirectoryEvents | None = None

    def setup(self) -> None:
        # The first tick comes at once: it reads every file present, so a restarted daemon sees
        # its plans again (the orchestrator ignores plans it already knows). A tick is sent only
        # once the previous one was handled: a slow poll never piles ticks up in the mailbox.
        self._ticker = self.workers.poll(
            "files-poll", self._changed_files, self._interval, paced=True
        )
        # With inotify on the files' directories an idle daemon need not look every interval:
        # a change pokes the poller, which otherwise looks every SAFETY_INTERVALS intervals.
        ticker, interval = self._ticker, self._interval
        self._events = DirectoryEvents(
            self._changed_files.paths, ticker.poke, lambda: ticker.set_interval(interval)
        )
        self._events.start()

    def release(self) -> None:
        if self._events is not None:
            self._events.close()

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Tick():
                try:
                    self._poll()
                finally:
                    if self._ticker is not None:
                        self._ticker.handled()
            case PollFiles(explicit=explicit):
                self._poll(explicit=explicit)
            case ResendPlans():
                self._resend()
            case ConfigChanged(config=config):
                self._on_config_changed(config)
            case GetRunningConfig(check_file=check_file):
                return self._running_config(check_file)
            case _:
                logger.warning("files actor: unexpected message {!r}", message)
        return None

    # polling

    def _poll(self, *, explicit: bool = False) -> None:
        self._poll_plan_file()
        self._poll_batch_file()
        self._deliver()
        self._poll_config(explicit=explicit)
        self._update_quiet()

    def _update_quiet(self) -> None:
        """Tell the poller whether it may skip ticks while no watched file changes."""
        watches = (self._plan_watch, self._batch_watch, self._config_watch)
        quiet = not self._outbox and all(watch.quiet for watch in watches)
        if quiet:
            self._changed_files.quiet.set()
        else:
            self._changed_files.quiet.clear()
        if self._ticker is not None:
            # Content settling, plans undelivered, a link (its target changes unseen) or no
            # inotify: look every interval; else on a change, and every safety interval.
            evented = self._events is not None and self._events.healthy
            if (
                quiet
                and evented
                and not any(path.is_symlink() for path in self._changed_files.paths)
            ):
                interval = self._interval * SAFETY_INTERVALS
            else:
                interval = self._interval
            if interval != self._ticker.interval:
                self._ticker.set_interval(interval)

    def _poll_plan_file(self) -> None:
        reading = self._plan_watch.poll()
        if reading is None:
            return
        if reading.content is None:
            self._reject_when_stable(self._plan_watch, reading, "file")
            return
        try:
            plan = parse_plan(reading.content, "file")
        except PlanError as exc:
            if reading.stable:
                self._reject(plan_file_rejection(reading.content, exc), "file")
                self._plan_watch.settle(reading)
            return
        self._register([plan], "file")
        self._plan_watch.settle(reading)

    def _poll_batch_file(self) -> None:
        reading = self._batch_watch.poll()
        if reading is None:
            return
        if reading.content is None:
            self._reject_when_stable(self._batch_watch, reading, "batch")
            return
        try:
            plans, rejections = parse_batch_file(reading.content, "batch")
        except PlanError as exc:
            if reading.stable:
                self._reject(PlanRejection(str(exc)), "batch")
                self._batch_watch.settle(reading)
            return
        # Valid JSON is a complete file: its bad entries are rejected at once, the rest stand.
        for rejection in rejections[:_MAX_ENTRY_REJECTIONS]:
            self._reject(rejection, "batch")
        if len(rejections) > _MAX_ENTRY_REJECTIONS:
            more = len(rejections) - _MAX_ENTRY_REJECTIONS
            self._reject(PlanRejection(f"{more} more batch entries rejected"), "batch")
        if plans:
            self._register(plans, "batch")
        self._batch_watch.settle(reading)

    def _reject_when_stable(self, watch: FileWatch, reading: Reading, source: str) -> None:
        """A plan file that cannot be read (too large, not a regular file, unreadable)."""
        if reading.stable:
            self._reject(PlanRejection(reading.error or f"{watch.path} cannot be read"), source)
            watch.settle(reading)

    def _register(self, plans: list[Plan], source: str) -> None:
        names = ", ".join(f"{plan.name}@{plan.height}" for plan in plans[:_LOGGED_NAMES])
        if len(plans) > _LOGGED_NAMES:
            names += f" and {len(plans) - _LOGGED_NAMES} more"
        logger.info("plan file ({}): {}", source, names)
        # Newer content of the same file replaces plans not delivered yet.
        self._outbox[source] = RegisterPlans(plans=plans, source=source)

    def _deliver(self) -> None:
        for source, message in list(self._outbox.items()):
            if self._bus.tell("orchestrator", message):
                del self._outbox[source]
                self._delivered[source] = message

    def _resend(self) -> None:
        for source, message in self._delivered.items():
            self._outbox.setdefault(source, message)
        self._deliver()
        self._update_quiet()

    def _reject(self, rejection: PlanRejection, source: str) -> None:
        logger.warning("plan rejected ({}): {}", source, rejection.reason)
        self._bus.publish(
            ev.PlanRejected(
                reason=rejection.reason,
                source=source,
                name=rejection.name,
                height=rejection.height,
            )
        )

    # configuration

    def _poll_config(self, *, explicit: bool = False) -> None:
        reading = self._config_watch.poll()
        if reading is None:
            return
        if reading.content is None and not reading.stable and not explicit:
            # Absent (or unreadable) for the first polls: maybe an editor's save in progress.
            return
        try:
            new = load_config(self._env, self._overrides)
        except ConfigError as exc:
            if reading.stable or explicit:
                logger.warning("config.toml edit rejected, old configuration kept: {}", exc)
                self._bus.publish(ev.ConfigRejected(error=str(exc)))
                self._config_watch.settle(reading)
            return
        self._config_watch.settle(reading)
        changed, restart_required = reload_diff(self._config, new)
        if not changed:
            return
        self._config = new
        self._running = apply_reloadable(self._running, new)
        logger.info(
            "config.toml reloaded: {} changed{}",
            ", ".join(changed),
            f"; needs a restart: {', '.join(restart_required)}" if restart_required else "",
        )
        self._apply(new)
        self._bus.publish(ev.ConfigReloaded(changed=changed, restart_required=restart_required))
        for role in CONFIG_ROLES:
            self._bus.tell(role, ConfigChanged(config=new, changed=changed))

    def _running_config(self, check_file: bool) -> RunningConfig:
        error = None
        if check_file:
            try:
                load_config(self._env, self._overrides)
            except ConfigError as exc:
                error = str(exc)
        restart_required = reload_diff(self._startup, self._config)[1]
        return RunningConfig(self._running, restart_required, error)

    def _on_config_changed(self, config: Any) -> None:
        # Its own broadcast comes back here (nothing left to do); a configuration reloaded
        # elsewhere (the control server) becomes the base of the next diff.
        if isinstance(config, Config) and config is not self._config:
            self._config = config
            self._apply(config)

    def _apply(self, config: Config) -> None:
        """The reloadable keys this actor applies: its poll interval, and the daemon's log level
        (loguru's sink is process-wide; this actor is where reloads arrive first)."""
        self._interval = config.rpc.poll_interval
        if self._ticker is not None:
            self._ticker.set_interval(self._interval)
        apply_level(config.log.level)
        if self._on_reload is not None:
            self._on_reload(config)
