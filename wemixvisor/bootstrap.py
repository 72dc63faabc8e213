"""The daemon: wiring, start order, signals, shutdown.

`python -m wemixvisor.bootstrap [node args...]` is `wemixvisor run [node args...]`.

Start order: events publisher (so every later actor can report) → node → … → control server
(last: it serves requests only once every actor it asks is there). Stop order is the reverse,
after the node itself was stopped gracefully; the control server keeps answering `status`
during that stop but refuses verbs that change anything.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import pykka
from loguru import logger

from wemixvisor import __version__
from wemixvisor.actors.backup import BackupActor
from wemixvisor.actors.control import ControlActor
from wemixvisor.actors.events import EventsActor
from wemixvisor.actors.files import FileSourceActor
from wemixvisor.actors.governance import GovernanceActor
from wemixvisor.actors.height import HeightActor
from wemixvisor.actors.node import NodeActor
from wemixvisor.actors.orchestrator import OrchestratorActor
from wemixvisor.actors.supervision import Supervisor
from wemixvisor.bus import Bus
from wemixvisor.config import Config, ConfigError, apply_reloadable, load_config
from wemixvisor.control.security import ServerCurve, keys_dir_of, server_curve_for
from wemixvisor.control.server import check_bindable
from wemixvisor.control.verbs import ControlContext
from wemixvisor.events.metrics import MetricsExporter
from wemixvisor.home import state
from wemixvisor.home.ipc import EndpointError
from wemixvisor.home.layout import Home
from wemixvisor.logs import setup_logging
from wemixvisor.messages import events as ev
from wemixvisor.messages.events import PublishHeartbeat
from wemixvisor.messages.node import GetNodeStatus, NodeStatus, StopNode
from wemixvisor.node.process import become_subreaper
from wemixvisor.upgrade.journal import JournalError, load_journal
from wemixvisor.upgrade.rollback import load_rollback

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class DaemonError(Exception):
    """The daemon cannot start; the message tells the operator why."""


@contextlib.contextmanager
def daemon_lock(home: Home) -> Iterator[None]:
    """One daemon per home: the home's lock held for the daemon's life (released by the kernel
    if it dies), so a second daemon can never start a second node on the same data dir."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(state.daemon_lock(home, record_pid=True))
        except state.DaemonRunningError as exc:
            holder = exc.pid if exc.pid is not None else "?"
            raise DaemonError(
                f"another wemixvisor (pid {holder}) is running on {home.root}"
            ) from None
        yield


class Daemon:
    """The running daemon: the supervisor of the actors plus the main loop."""

    def __init__(
        self,
        config: Config,
        node_args: list[str],
        environ: dict[str, str] | None = None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.environ = dict(os.environ if environ is None else environ)
        self.overrides = dict(overrides or {})
        self.home = Home.from_config(config)
        self.node_args = node_args
        self.bus = Bus()
        self.started = time.monotonic()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.supervisor = Supervisor(self.bus, on_restart=self._report_restart)
        self.supervisor.add("events", self._start_events)
        self.supervisor.add("node", self._start_node)
        self.supervisor.add("height", self._start_height)
        self.supervisor.add("governance", self._start_governance)
        self.supervisor.add("files", self._start_files)
        self.supervisor.add("backup", self._start_backup)
        self.supervisor.add("orchestrator", self._start_orchestrator)
        self.control = ControlContext(
            bus=self.bus,
            config=config,
            home=self.home,
            started=self.started,
            actor_restarts=self.supervisor.restarts,
        )
        self._control_curve: ServerCurve | None = None
        # Added last: started after every actor it asks, stopped first.
        self.supervisor.add("control", self._start_control)
        self.metrics: MetricsExporter | None = None

    def _start_events(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return EventsActor.start(
            endpoint=self.config.events.endpoint,
            send_hwm=self.config.events.send_hwm,
            failure_sink=supervisor.failure_sink,
            journal_dir=state.events_dir(self.home),
            listener=self.metrics.observe_published if self.metrics is not None else None,
        )

    def _start_node(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        # An upgrade in progress holds the node (a restarted node actor too): its resumed saga
        # decides when the node starts, on which binary. A running node is adopted either way.
        try:
            journal = load_journal(state.journal_file(self.home))
        except JournalError:
            journal = None  # the orchestrator sets it aside and starts the node
        held_by = journal.holder if journal is not None else None
        with contextlib.suppress(JournalError):
            # An operator's rollback in progress holds the node the same way.
            rollback = load_rollback(state.rollback_file(self.home))
            held_by = rollback.holder if rollback is not None and held_by is None else held_by
        return NodeActor.start(
            config=self.config,
            home=self.home,
            bus=self.bus,
            node_args=self.node_args,
            held_by=held_by,
            failure_sink=supervisor.failure_sink,
        )

    def _start_height(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return HeightActor.start(
            config=self.config, bus=self.bus, failure_sink=supervisor.failure_sink
        )

    def _start_governance(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return GovernanceActor.start(
            config=self.config, home=self.home, bus=self.bus, failure_sink=supervisor.failure_sink
        )

    def _start_files(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return FileSourceActor.start(
            config=self.config,
            startup=self.control.config,
            bus=self.bus,
            env=self.environ,
            overrides=self.overrides,
            on_reload=self._on_reload,
            failure_sink=supervisor.failure_sink,
        )

    def _on_reload(self, config: Config) -> None:
        # Called on the files actor's thread; the main loop reads `self.config` afresh.
        self.config = apply_reloadable(self.config, config)

    def _start_backup(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return BackupActor.start(
            config=self.config, home=self.home, bus=self.bus, failure_sink=supervisor.failure_sink
        )

    def _start_orchestrator(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return OrchestratorActor.start(
            config=self.config, home=self.home, bus=self.bus, failure_sink=supervisor.failure_sink
        )

    def _start_control(self, supervisor: Supervisor) -> pykka.ActorRef[Any]:
        return ControlActor.start(
            context=self.control,
            endpoint=self.config.control.endpoint,
            curve=self._control_curve,
            failure_sink=supervisor.failure_sink,
        )

    def _start_metrics(self) -> None:
        address = self.config.metrics.address
        if not address:
            return
        exporter = MetricsExporter(address, self.bus, actor_restarts=self.supervisor.restarts)
        try:
            exporter.start()
        except OSError as exc:
            raise DaemonError(f"cannot serve metrics on {address}: {exc}") from exc
        self.metrics = exporter

    def _report_restart(self, role: str, error: str) -> None:
        self.bus.publish(ev.ActorRestarted(actor=role, error=error))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # SimpleQueue.put is reentrant: safe from a signal handler.
        self._signals.put(signum)

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP is logged and otherwise ignored."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def run(self) -> int:
        """Start everything, serve until a stop signal, stop everything; the exit code."""
        if not self.home.visor_dir.is_dir():
            raise DaemonError(
                f"{self.home.visor_dir} does not exist: run `wemixvisor init <binary>` first"
            )
        # Refused before anything starts: a non-loopback tcp control endpoint without CURVE.
        self._control_curve = server_curve_for(
            self.config.control.endpoint, keys_dir_of(self.home.root)
        )
        mismatch = rpc_port_mismatch(self.config.rpc.address, self.node_args)
        if mismatch is not None:
            logger.warning("{}", mismatch)
        with daemon_lock(self.home):
            # Once the home is ours (a second daemon is told so first): a tcp port another
            # program holds is refused now, not retried in the background with a node running.
            check_bindable(self.config.control.endpoint, "control")
            check_bindable(self.config.events.endpoint, "events")
            self.install_signals()
            if not become_subreaper():
                logger.warning("cannot become child subreaper: orphans of the node go to PID 1")
            try:
                # Before the node starts: a metrics address in use must not leave a node behind.
                self._start_metrics()
                self.supervisor.start_all()
            except Exception:
                if self.metrics is not None:
                    self.metrics.stop()
                self.supervisor.stop_all()
                raise
            self._record()
            self.bus.publish(
                ev.SupervisorStarted(version=__version__, pid=os.getpid(), home=str(self.home.root))
            )
            logger.info("wemixvisor {} running on {}", __version__, self.home.root)
            try:
                reason = self._serve()
                self._shutdown(reason)
            finally:
                state.clear_daemon_record(self.home, os.getpid())
        return EXIT_OK

    def _record(self) -> None:
        """`state/daemon.json`: where the operator tool finds this daemon even when config.toml
        is broken (the endpoints are fixed for the daemon's life)."""
        record = state.DaemonRecord(
            pid=os.getpid(),
            control_endpoint=self.config.control.endpoint,
            events_endpoint=self.config.events.endpoint,
            version=__version__,
            home=str(self.home.root),
            started_at=time.time(),
        )
        try:
            state.write_daemon_record(self.home, record)
        except OSError as exc:
            logger.warning("cannot write {}: {}", state.daemon_record_file(self.home), exc)

    def _serve(self) -> str:
        next_heartbeat = time.monotonic() + self.config.events.heartbeat_interval
        while True:
            restart_due = self.supervisor.handle_failures()
            wait = max(0.0, min(next_heartbeat - time.monotonic(), restart_due, 1.0))
            try:
                signum = self._signals.get(timeout=wait)
            except queue.Empty:
                signum = None
            if signum is not None:
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP ignored: config.toml changes are picked up on their own")
                    continue
                return signal.Signals(signum).name
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.config.events.heartbeat_interval
                self._heartbeat()

    def _heartbeat(self) -> None:
        try:
            status: NodeStatus = self.bus.ask("node", GetNodeStatus(stats=False), timeout=2.0)
            node_state = status.state.value
        except (pykka.Timeout, pykka.ActorDeadError):
            node_state = "UNKNOWN"
        self.bus.tell(
            "events",
            PublishHeartbeat(uptime=time.monotonic() - self.started, node_state=node_state),
        )

    def _shutdown(self, reason: str) -> None:
        logger.info("stopping ({}): node first, then the actors", reason)
        self.control.stopping.set()
        self.bus.publish(ev.SupervisorStopping(reason=reason))
        done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
        if self.bus.tell("node", StopNode(reason=f"daemon {reason}", done=done, shutdown=True)):
            # The actor escalates to SIGKILL after the grace; allow for that and the reaping.
            try:
                done.get(timeout=self.config.node.shutdown_grace + 10.0)
            except pykka.Timeout:
                logger.error("node did not stop in time; leaving it to be adopted next run")
        if self.metrics is not None:
            self.metrics.stop()
        self.supervisor.stop_all()
        logger.info("stopped")


_PORT_FLAGS = ("port", "http.port", "ws.port")


def _node_ports(node_args: Sequence[str]) -> list[int]:
    """The ports named by `--port`, `--http.port` and `--ws.port` (one or two leading dashes,
    `--flag N` or `--flag=N`, as geth-family nodes and anvil accept them)."""
    ports: list[int] = []
    for index, arg in enumerate(node_args):
        name, sep, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in _PORT_FLAGS:
            continue
        if not sep:
            value = node_args[index + 1] if index + 1 < len(node_args) else ""
        if value.isascii() and value.isdigit():
            ports.append(int(value))
    return ports


def rpc_port_mismatch(rpc_address: str, node_args: Sequence[str]) -> str | None:
    """A warning when DAEMON_RPC_ADDRESS's port is none of the ports the node's arguments name
    (the daemon would follow another node, or none); None when they agree, when the arguments
    name no port, or when the address is an IPC path."""
    parts = urlsplit(rpc_address)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return None
    try:
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    except ValueError:
        return None
    ports = _node_ports(node_args)
    if not ports or port in ports:
        return None
    named = ", ".join(str(p) for p in ports)
    return (
        f"DAEMON_RPC_ADDRESS {rpc_address} uses port {port}, but the node's arguments name "
        f"port {named}: the daemon may follow another node's chain, or none"
    )


def run_daemon(
    config: Config,
    node_args: Sequence[str],
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; the process exit code.

    `environ` and `overrides` are what `config` was loaded from: config.toml hot reloads
    load it again from the same sources.
    """
    setup_logging(config.log.level, config.log.format)
    args = list(config.node.args) + list(node_args)
    try:
        return Daemon(config, args, environ=environ, overrides=overrides).run()
    except (DaemonError, EndpointError) as exc:
        logger.error("{}", exc)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m wemixvisor.bootstrap [node args...]`: configuration from env + config.toml."""
    node_args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(env=dict(os.environ))
    except ConfigError as exc:
        print(f"wemixvisor: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_daemon(config, node_args, environ=dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
