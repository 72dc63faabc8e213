"""NodeActor: owns the node process (SPEC §6).

The actor only decides and records; everything slow happens elsewhere: waiting for the process
(a helper thread per process), probing RPC during STARTING (a helper thread), detecting the
version (a helper thread), timers (threading.Timer). Each of those reports back with a message
tagged by the process generation, so a late report about an old process is ignored.
"""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pykka
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.bus import Bus
from wemixvisor.chain.rpc import RpcClient, RpcError
from wemixvisor.config import Config, apply_reloadable
from wemixvisor.home.layout import Home, LayoutError, read_current
from wemixvisor.home.state import node_pid_file
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.node import (
    ExitRecord,
    GetNodeStatus,
    NodeState,
    NodeStateChanged,
    NodeStatus,
    RestartNode,
    StartNode,
    StopNode,
    WatchNode,
)
from wemixvisor.node import process as proc_os
from wemixvisor.node.logfile import LogRotator
from wemixvisor.node.restart_policy import (
    ExitAction,
    RestartHistory,
    RestartPolicy,
    decide_after_exit,
)

_PROBE_INTERVAL = 0.01
_EXIT_HISTORY = 20


class _Exited(msgspec.Struct, frozen=True):
    generation: int
    status: proc_os.ExitStatus


class _StartupConfirmed(msgspec.Struct, frozen=True):
    generation: int
    by: str
    seconds: float


class _BackoffElapsed(msgspec.Struct, frozen=True):
    generation: int


class _GraceExpired(msgspec.Struct, frozen=True):
    generation: int


class _VersionDetected(msgspec.Struct, frozen=True):
    binary: str
    version: str | None


def restart_policy(config: Config) -> RestartPolicy:
    """The restart policy the configuration asks for."""
    node = config.node
    return RestartPolicy(
        restart_on_failure=node.restart_on_failure,
        max_restarts=node.max_restarts,
        window=node.restart_window,
        backoff_initial=node.backoff_initial,
        backoff_max=node.backoff_max,
    )


class NodeActor(SupervisedActor):
    """Starts, watches, restarts and stops the node; adopts one left by an earlier run."""

    role = "node"

    def __init__(
        self,
        *,
        config: Config,
        home: Home,
        bus: Bus,
        node_args: list[str],
        autostart: bool = True,
        failure_sink: FailureSink | None = None,
    ) -> None:
        super().__init__(failure_sink)
        self._config = config
        self._home = home
        self._bus = bus
        self._node_args = node_args
        self._autostart = autostart
        self._policy = restart_policy(config)
        self._state = NodeState.STOPPED
        self._process: proc_os.NodeProcess | None = None
        self._generation = 0
        self._history = RestartHistory()
        self._restarts_total = 0
        self._exits: collections.deque[ExitRecord] = collections.deque(maxlen=_EXIT_HISTORY)
        self._running_since: float | None = None
        self._stop_began: float = 0.0
        self._killed = False
        self._restart_after_stop = False
        self._stop_waiters: list[pykka.Future[NodeStatus]] = []
        self._watchers: list[pykka.ActorRef[Any]] = []
        self._versions: dict[str, str | None] = {}
        self._sampler = proc_os.TreeSampler()
        self._probe_cancel: threading.Event | None = None
        self._last_error: str | None = None
        self._rotator = LogRotator(
            home.node_log, config.log.node_log_max_size, config.log.node_log_keep
        )

    # lifecycle

    def setup(self) -> None:
        self._rotator.start()
        if self._adopt():
            return
        if self._autostart:
            self._spawn()

    def teardown(self) -> None:
        # The node outlives the actor on purpose: a restarted NodeActor, or the next daemon
        # run, adopts it. Stopping the node is an explicit StopNode.
        self._cancel_probe()
        self._rotator.stop()

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case GetNodeStatus():
                return self._status()
            case _Exited():
                self._on_exited(message)
            case _StartupConfirmed():
                self._on_startup_confirmed(message)
            case _BackoffElapsed(generation=generation):
                if generation == self._generation and self._state is NodeState.BACKOFF:
                    self._spawn()
            case _GraceExpired(generation=generation):
                self._on_grace_expired(generation)
            case _VersionDetected(binary=binary, version=version):
                self._versions[binary] = version
            case StartNode(reason=reason):
                self._start_node(reason)
            case StopNode(reason=reason, done=done):
                self._stop_node(reason, done)
            case RestartNode(reason=reason):
                self._restart_node(reason)
            case WatchNode(watcher=watcher):
                self._watchers.append(watcher)
            case ConfigChanged(config=config):
                # Reloadable: restart policy, grace, STARTSECS. The rest needs a restart and
                # stays as it was (config.reloaded lists those keys).
                self._config = apply_reloadable(self._config, config)
                self._policy = restart_policy(self._config)
            case _:
                logger.warning("node actor: unexpected message {!r}", message)
        return None

    # operator verbs

    def _start_node(self, reason: str) -> None:
        logger.info("start node requested ({}) in state {}", reason, self._state)
        if self._state in (NodeState.STARTING, NodeState.RUNNING):
            return
        if self._state is NodeState.STOPPING:
            self._restart_after_stop = True
            return
        self.timers.cancel("backoff")
        # An operator start is a fresh start: FATAL's count and the back-off streak reset.
        self._history = RestartHistory()
        self._spawn()

    def _stop_node(self, reason: str, done: pykka.Future[NodeStatus] | None) -> None:
        logger.info("stop node requested ({}) in state {}", reason, self._state)
        self._restart_after_stop = False
        if done is not None:
            self._stop_waiters.append(done)
        if self._state in (NodeState.STARTING, NodeState.RUNNING):
            self._begin_stop(reason)
        elif self._state is NodeState.STOPPING:
            return
        else:
            self.timers.cancel("backoff")
            if self._state is not NodeState.STOPPED:
                self._set_state(NodeState.STOPPED)
            self._resolve_stop_waiters()

    def _restart_node(self, reason: str) -> None:
        if self._state in (NodeState.STARTING, NodeState.RUNNING):
            self._begin_stop(reason)
            self._restart_after_stop = True
        else:
            self._start_node(reason)

    # process lifecycle

    def _spawn(self) -> None:
        try:
            current = read_current(self._home)
        except LayoutError as exc:
            # Not transient: retrying cannot fix a broken `current`; the operator must.
            self._last_error = str(exc)
            logger.error("cannot start the node: {}", exc)
            self._bus.publish(ev.NodeStartFailed(binary="", error=str(exc)))
            self._set_state(NodeState.FATAL)
            self._bus.publish(
                ev.NodeFatal(reason=str(exc), restarts_in_window=len(self._history.restarts))
            )
            return
        self._generation += 1
        generation = self._generation
        binary = str(current.binary)
        self._bus.publish(
            ev.NodeStarting(
                binary=binary,
                target=current.target,
                args=list(self._node_args),
                attempt=len(self._history.restarts) + 1,
            )
        )
        self._set_state(NodeState.STARTING)
        try:
            process = proc_os.spawn_node(
                current.binary,
                self._node_args,
                target=current.target,
                log_path=self._home.node_log,
                cwd=self._home.root,
            )
        except OSError as exc:
            self._last_error = f"cannot execute {binary}: {exc}"
            logger.error("{}", self._last_error)
            self._bus.publish(ev.NodeStartFailed(binary=binary, error=self._last_error))
            self._after_unexpected_exit(was_running=False, running_for=0.0)
            return
        self._process = process
        self._killed = False
        self._running_since = None
        logger.info("node started: pid {} {} {}", process.pid, binary, self._node_args)
        proc_os.write_pidfile(node_pid_file(self._home), process)
        proc_os.watch_exit(process, self._exit_reporter(generation), f"node-wait-{process.pid}")
        self._start_probe(generation)

    def _adopt(self) -> bool:
        pidfile = node_pid_file(self._home)
        record = proc_os.read_pidfile(pidfile)
        if record is not None and proc_os.find_adoptable(record) is None:
            logger.info("node.pid names pid {} which is gone", record.pid)
            proc_os.remove_pidfile(pidfile)
            record = None
        if record is None:
            record = self._orphan_record()
            if record is None:
                return False
        self._generation += 1
        process = proc_os.NodeProcess(
            pid=record.pid,
            binary=record.binary,
            target=record.target,
            started_at=record.started_at,
            create_time=record.create_time,
            popen=None,
        )
        self._process = process
        uptime = max(time.time() - record.started_at, 0.0)
        self._running_since = time.monotonic() - uptime
        self._set_state(NodeState.RUNNING)
        proc_os.write_pidfile(pidfile, process)
        proc_os.watch_exit(
            process, self._exit_reporter(self._generation), f"node-watch-{process.pid}"
        )
        logger.info("adopted running node pid {} ({})", record.pid, record.binary)
        self._bus.publish(ev.NodeAdopted(pid=record.pid, binary=record.binary, uptime=uptime))
        self._detect_version(record.binary)
        return True

    def _orphan_record(self) -> proc_os.PidRecord | None:
        orphan = proc_os.find_orphan_node(self._home.visor_dir)
        if orphan is None:
            return None
        try:
            cmdline = orphan.cmdline()
            create_time = orphan.create_time()
            binary = Path(cmdline[0])
            target = str(binary.parent.parent.relative_to(self._home.visor_dir))
        except (psutil.Error, IndexError, ValueError):
            return None
        logger.warning(
            "found node pid {} running {} without node.pid: adopting it", orphan.pid, binary
        )
        return proc_os.PidRecord(
            pid=orphan.pid,
            create_time=create_time,
            binary=str(binary),
            target=target,
            started_at=create_time,
            daemon_pid=0,
        )

    def _exit_reporter(self, generation: int) -> Any:
        ref = self.actor_ref

        def report(status: proc_os.ExitStatus) -> None:
            # A dead actor is fine: its restarted successor watches the node itself.
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_Exited(generation, status))

        return report

    def _on_startup_confirmed(self, message: _StartupConfirmed) -> None:
        if message.generation != self._generation or self._state is not NodeState.STARTING:
            return
        assert self._process is not None
        self._running_since = time.monotonic()
        self._last_error = None
        self._set_state(NodeState.RUNNING)
        # Running `<bin> --version` while the node starts would compete with it for the CPU.
        self._detect_version(self._process.binary)
        logger.info(
            "node running (pid {}, {} after {:.3f}s)",
            self._process.pid,
            message.by,
            message.seconds,
        )
        self._bus.publish(
            ev.NodeRunning(pid=self._process.pid, startup_seconds=message.seconds, by=message.by)
        )

    def _begin_stop(self, reason: str) -> None:
        assert self._process is not None
        grace = self._config.node.shutdown_grace
        self._cancel_probe()
        self._stop_began = time.monotonic()
        self._set_state(NodeState.STOPPING)
        self._bus.publish(ev.NodeStopping(pid=self._process.pid, reason=reason, grace=grace))
        if not proc_os.signal_group(self._process.pid, signal.SIGTERM):
            logger.info("node group {} already gone", self._process.pid)
        self.timers.schedule("grace", grace, _GraceExpired(self._generation))

    def _on_grace_expired(self, generation: int) -> None:
        if generation != self._generation or self._state is not NodeState.STOPPING:
            return
        assert self._process is not None
        logger.warning(
            "node pid {} still running after {}s grace: SIGKILL to its group",
            self._process.pid,
            self._config.node.shutdown_grace,
        )
        self._killed = True
        proc_os.signal_group(self._process.pid, signal.SIGKILL)

    def _on_exited(self, message: _Exited) -> None:
        process = self._process
        if message.generation != self._generation or process is None:
            return
        self._cancel_probe()
        self.timers.cancel("grace")
        if proc_os.kill_group_leftovers(process.pid):
            logger.warning("killed processes left in the node's group {}", process.pid)
        expected = self._state is NodeState.STOPPING
        uptime = max(time.time() - process.started_at, 0.0)
        status = message.status
        self._exits.append(
            ExitRecord(
                at=time.time(),
                pid=process.pid,
                exit_code=status.exit_code,
                signal=status.signal,
                expected=expected,
                uptime=uptime,
            )
        )
        self._process = None
        proc_os.remove_pidfile(node_pid_file(self._home))
        log = logger.info if expected else logger.warning
        log("node pid {} exited: {} (expected={})", process.pid, status.describe(), expected)
        self._bus.publish(
            ev.NodeExited(
                pid=process.pid,
                exit_code=status.exit_code,
                signal=status.signal,
                expected=expected,
                state=self._state.value,
                uptime=uptime,
            )
        )
        if expected:
            self._set_state(NodeState.STOPPED)
            self._bus.publish(
                ev.NodeStopped(
                    pid=process.pid,
                    killed=self._killed,
                    seconds=time.monotonic() - self._stop_began,
                )
            )
            self._resolve_stop_waiters()
            if self._restart_after_stop:
                self._restart_after_stop = False
                self._history = RestartHistory()
                self._spawn()
            return
        was_running = self._state is NodeState.RUNNING
        running_for = (
            time.monotonic() - self._running_since
            if was_running and self._running_since is not None
            else 0.0
        )
        if (status.exit_code is not None and status.exit_code != 0) or status.signal is not None:
            self._last_error = f"node exited unexpectedly: {status.describe()}"
        self._after_unexpected_exit(was_running=was_running, running_for=running_for)

    def _after_unexpected_exit(self, *, was_running: bool, running_for: float) -> None:
        decision = decide_after_exit(
            self._policy,
            self._history,
            now=time.monotonic(),
            was_running=was_running,
            running_for=running_for,
            jitter=random.random,
        )
        self._history = decision.history
        match decision.action:
            case ExitAction.RESTART_NOW:
                self._restarts_total += 1
                self._spawn()
            case ExitAction.BACKOFF:
                self._restarts_total += 1
                self._set_state(NodeState.BACKOFF)
                logger.warning("node restarts in {:.2f}s (back-off)", decision.delay)
                self._bus.publish(
                    ev.NodeBackoff(
                        delay=decision.delay,
                        restarts_in_window=decision.restarts_in_window,
                        max_restarts=self._policy.max_restarts,
                    )
                )
                self.timers.schedule("backoff", decision.delay, _BackoffElapsed(self._generation))
            case ExitAction.FATAL:
                reason = (
                    f"more than {self._policy.max_restarts} restarts within "
                    f"{self._policy.window:g}s"
                )
                logger.error("node FATAL: {}; `wemixvisor start` to try again", reason)
                self._set_state(NodeState.FATAL)
                self._bus.publish(
                    ev.NodeFatal(reason=reason, restarts_in_window=decision.restarts_in_window)
                )
            case ExitAction.STAY_EXITED:
                self._set_state(NodeState.EXITED)

    # helpers

    def _set_state(self, state: NodeState) -> None:
        previous = self._state
        self._state = state
        if previous is state:
            return
        pid = self._process.pid if self._process is not None else None
        for watcher in list(self._watchers):
            try:
                watcher.tell(NodeStateChanged(state=state, previous=previous, pid=pid))
            except pykka.ActorDeadError:
                self._watchers.remove(watcher)

    def _resolve_stop_waiters(self) -> None:
        status = self._status()
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.set(status)

    def _start_probe(self, generation: int) -> None:
        """Confirm the start: RPC answering, or alive for STARTSECS, whichever comes first."""
        self._cancel_probe()
        cancel = threading.Event()
        self._probe_cancel = cancel
        ref = self.actor_ref
        startsecs = self._config.node.startsecs
        address = self._config.rpc.address

        def probe() -> None:
            began = time.monotonic()
            client = RpcClient(address, timeout=0.5)
            while not cancel.is_set():
                elapsed = time.monotonic() - began
                if elapsed >= startsecs:
                    by = "startsecs"
                    break
                try:
                    client.call("eth_blockNumber")
                except RpcError:
                    cancel.wait(_PROBE_INTERVAL)
                    continue
                by = "rpc"
                break
            else:
                return
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_StartupConfirmed(generation, by, time.monotonic() - began))

        threading.Thread(target=probe, name=f"node-probe-{generation}", daemon=True).start()

    def _cancel_probe(self) -> None:
        if self._probe_cancel is not None:
            self._probe_cancel.set()
            self._probe_cancel = None

    def _detect_version(self, binary: str) -> None:
        if binary in self._versions:
            return
        ref = self.actor_ref

        def detect() -> None:
            version = proc_os.detect_version(Path(binary))
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_VersionDetected(binary, version))

        threading.Thread(target=detect, name="node-version", daemon=True).start()

    def _status(self) -> NodeStatus:
        process = self._process
        cpu, rss = self._sampler.sample(process.pid) if process is not None else (0.0, 0)
        now = time.monotonic()
        return NodeStatus(
            state=self._state,
            pid=process.pid if process is not None else None,
            uptime=max(time.time() - process.started_at, 0.0) if process is not None else None,
            restarts=self._restarts_total,
            restarts_in_window=len(self._history.in_window(now, self._policy.window)),
            exits=list(self._exits),
            binary=process.binary if process is not None else None,
            target=process.target if process is not None else None,
            version=self._versions.get(process.binary) if process is not None else None,
            adopted=process.adopted if process is not None else False,
            cpu_percent=cpu,
            rss_bytes=rss,
            last_error=self._last_error,
        )
