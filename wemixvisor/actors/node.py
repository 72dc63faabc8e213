"""NodeActor: owns the node process (SPEC §6).

The actor only decides and records. What the node goes through is the transition table of
`wemixvisor.node.lifecycle`: each command and each report becomes a trigger, and the actor
carries out the actions the table returns. Everything slow runs on workers that report back
with messages tagged by the process generation, so a late report about an old process is
ignored: waiting for the process, probing RPC during STARTING, detecting the version.

Whoever needs the node down for maintenance (an upgrade, a restore, a backup's last pass)
takes a lease on it first (AcquireNodeLease); while leased, start/stop/restart from anyone
else are refused.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pykka
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import Job, tell_if_alive
from wemixvisor.bus import Bus
from wemixvisor.config import Config, apply_reloadable
from wemixvisor.home.layout import Home, LayoutError, read_current
from wemixvisor.home.state import node_pid_file
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.node import (
    AcquireNodeLease,
    ExitRecord,
    GetNodeStatus,
    NodeLease,
    NodeState,
    NodeStateChanged,
    NodeStatus,
    ReleaseNodeLease,
    RestartNode,
    StartNode,
    StopNode,
    UnwatchNode,
    WatchNode,
)
from wemixvisor.node import process as proc_os
from wemixvisor.node.args import NodeArgsError, args_for_target
from wemixvisor.node.lease import LeaseBook
from wemixvisor.node.lifecycle import Action, Lifecycle, Trigger, transition
from wemixvisor.node.logfile import ROTATE_INTERVAL, log_rotation
from wemixvisor.node.probe import confirm_startup
from wemixvisor.node.restart_policy import (
    ExitAction,
    ExitDecision,
    RestartHistory,
    RestartPolicy,
    decide_after_exit,
)

_EXIT_HISTORY = 20
_POLICY_TRIGGERS = {
    ExitAction.RESTART_NOW: Trigger.RESTART_NOW,
    ExitAction.BACKOFF: Trigger.BACK_OFF,
    ExitAction.FATAL: Trigger.GIVE_UP,
    ExitAction.STAY_EXITED: Trigger.STAY_EXITED,
}


class _Exited(msgspec.Struct, frozen=True):
    generation: int
    status: proc_os.ExitStatus


_COMMANDS: dict[type, tuple[Trigger, str]] = {
    StartNode: (Trigger.START, "start"),
    StopNode: (Trigger.STOP, "stop"),
    RestartNode: (Trigger.RESTART, "restart"),
}


class _StartupConfirmed(msgspec.Struct, frozen=True):
    generation: int
    by: str
    seconds: float


class _TimerFired(msgspec.Struct, frozen=True):
    generation: int
    trigger: Trigger  # BACKOFF_ELAPSED or GRACE_EXPIRED


class _VersionDetected(msgspec.Struct, frozen=True):
    binary: str
    version: str | None


@dataclass(frozen=True)
class _Why:
    """What a trigger brings along for the actions it leads to."""

    reason: str = ""  # of a stop or restart; why the node is FATAL
    confirmed: _StartupConfirmed | None = None
    stopped: ev.NodeStopped | None = None  # the expected exit, to announce once STOPPED
    was_running: bool = False  # an unexpected exit: from RUNNING, after how long
    running_for: float = 0.0
    decision: ExitDecision | None = None  # the restart policy's, after an unexpected exit


_NO_WHY = _Why()


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
        held_by: str | None = None,
        failure_sink: FailureSink | None = None,
    ) -> None:
        """`held_by`: the node starts leased to that holder (an upgrade in progress, which
        decides when the node starts and on which binary); it is not started here then."""
        super().__init__(failure_sink)
        self._config = config
        self._home = home
        self._bus = bus
        # `[node] args` and the `run` arguments: what a binary runs with when its upgrade
        # directory declares none (`wemixvisor.node.args`, resolved at every spawn).
        self._configured_args = node_args
        self._running_args: list[str] = []
        self._autostart = autostart and held_by is None
        self._policy = RestartPolicy.of(config)
        self._lifecycle = Lifecycle()
        self._process: proc_os.NodeProcess | None = None
        self._generation = 0
        self._history = RestartHistory()
        self._restarts_total = 0
        self._exits: collections.deque[ExitRecord] = collections.deque(maxlen=_EXIT_HISTORY)
        self._running_since: float | None = None
        self._stop_began: float = 0.0
        self._killed = False
        self._stop_waiters: list[pykka.Future[NodeStatus]] = []
        self._watchers: list[pykka.ActorRef[Any]] = []
        self._versions: dict[str, str | None] = {}
        self._sampler = proc_os.TreeSampler()
        self._probe: Job | None = None
        self._last_error: str | None = None
        self._leases = LeaseBook()
        if held_by is not None:
            self._leases.acquire(held_by, "in progress when the node actor started")

        self._actions: dict[Action, Callable[[_Why], None]] = {
            Action.SPAWN: lambda why: self._spawn(),
            Action.TERMINATE: self._terminate,
            Action.KILL: lambda why: self._kill(),
            Action.CANCEL_BACKOFF: lambda why: self.timers.cancel("backoff"),
            Action.RESET_HISTORY: lambda why: self._reset_history(),
            Action.RESOLVE_STOP_WAITERS: lambda why: self._resolve_stop_waiters(),
            Action.ANNOUNCE_RUNNING: self._announce_running,
            Action.ANNOUNCE_STOPPED: self._announce_stopped,
            Action.APPLY_RESTART_POLICY: self._apply_restart_policy,
            Action.COUNT_RESTART: lambda why: self._count_restart(),
            Action.SCHEDULE_BACKOFF: self._schedule_backoff,
            Action.ANNOUNCE_FATAL: self._announce_fatal,
        }

    @property
    def _state(self) -> NodeState:
        return self._lifecycle.state

    # lifecycle

    def setup(self) -> None:
        log = self._config.log
        rotation = log_rotation(self._home.node_log, log.node_log_max_size, log.node_log_keep)
        self.workers.poll(
            "node-log-rotator", rotation, ROTATE_INTERVAL, first_after=ROTATE_INTERVAL
        )
        if self._adopt():
            return
        if self._autostart:
            self._spawn()

    # The node outlives the actor on purpose: a restarted NodeActor, or the next daemon run,
    # adopts it. Stopping the node is an explicit StopNode.

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case GetNodeStatus(stats=stats):
                return self._status(sample=stats)
            case _Exited():
                self._on_exited(message)
            case _StartupConfirmed(generation=generation) if generation == self._generation:
                self._fire(Trigger.CONFIRMED, _Why(confirmed=message))
            case _TimerFired(generation=generation) if generation == self._generation:
                self._fire(message.trigger)
            case _StartupConfirmed() | _TimerFired():
                pass  # about a process that is gone
            case _VersionDetected(binary=binary, version=version):
                self._versions[binary] = version
            case StartNode() | StopNode() | RestartNode():
                self._command(message)
            case AcquireNodeLease():
                return self._acquire(message)
            case ReleaseNodeLease(holder=holder):
                self._leases.release(holder)
            case WatchNode(watcher=watcher):
                self._watchers.append(watcher)
            case UnwatchNode(watcher=watcher):
                self._watchers = [w for w in self._watchers if w is not watcher]
            case ConfigChanged(config=config):
                # Reloadable: restart policy, grace, STARTSECS. The rest needs a restart and
                # stays as it was (config.reloaded lists those keys).
                self._config = apply_reloadable(self._config, config)
                self._policy = RestartPolicy.of(self._config)
            case _:
                logger.warning("node actor: unexpected message {!r}", message)
        return None

    # commands and the lease

    def _command(self, command: StartNode | StopNode | RestartNode) -> None:
        """Carry out a start, stop or restart, unless someone else holds the node."""
        trigger, verb = _COMMANDS[type(command)]
        shutdown = isinstance(command, StopNode) and command.shutdown
        if not shutdown and self._leases.refuses(command.holder, verb):
            if isinstance(command, StopNode) and command.done is not None:
                command.done.set(self._status())  # the node as it is: not stopped
            return
        logger.info("{} node requested ({}) in state {}", verb, command.reason, self._state)
        if isinstance(command, StopNode) and command.done is not None:
            self._stop_waiters.append(command.done)
        self._fire(trigger, _Why(reason=command.reason))

    def _acquire(self, request: AcquireNodeLease) -> NodeLease | None:
        done = request.done
        answer = self._leases.request(
            request.holder,
            request.reason,
            wait=request.wait,
            reply=lambda: done if done is not None else self.reply_later(),
        )
        if answer is None or done is None:
            return answer
        done.set(answer)
        return None

    # the transition table

    def _fire(self, trigger: Trigger, why: _Why = _NO_WHY) -> None:
        before = self._lifecycle
        self._lifecycle, actions = transition(before, trigger)
        if self._lifecycle.state is not before.state:
            self._notify(before.state)
        for action in actions:
            self._actions[action](why)

    def _reset_history(self) -> None:
        self._history = RestartHistory()

    def _count_restart(self) -> None:
        self._restarts_total += 1

    # process lifecycle

    def _spawn(self) -> None:
        try:
            current = read_current(self._home)
            args = args_for_target(self._home, current.target, self._configured_args)
        except (LayoutError, NodeArgsError) as exc:
            # Not transient: retrying cannot fix a broken `current`; the operator must.
            self._last_error = str(exc)
            logger.error("cannot start the node: {}", exc)
            self._bus.publish(ev.NodeStartFailed(binary="", error=str(exc)))
            self._fire(Trigger.CANNOT_START, _Why(reason=str(exc)))
            return
        self._generation += 1
        generation = self._generation
        binary = str(current.binary)
        self._bus.publish(
            ev.NodeStarting(
                binary=binary,
                target=current.target,
                args=list(args),
                attempt=len(self._history.restarts) + 1,
            )
        )
        self._fire(Trigger.SPAWNING)
        try:
            process = proc_os.spawn_node(
                current.binary,
                args,
                target=current.target,
                log_path=self._home.node_log,
                cwd=self._home.root,
            )
        except OSError as exc:
            self._last_error = f"cannot execute {binary}: {exc}"
            logger.error("{}", self._last_error)
            self._bus.publish(ev.NodeStartFailed(binary=binary, error=self._last_error))
            self._fire(Trigger.SPAWN_FAILED)
            return
        self._process = process
        self._running_args = args
        self._killed = False
        self._running_since = None
        logger.info("node started: pid {} {} {}", process.pid, binary, args)
        proc_os.write_pidfile(node_pid_file(self._home), process)
        self._watch_exit(process, generation, f"node-wait-{process.pid}")
        self._cancel_probe()
        address, startsecs = self._config.rpc.address, self._config.node.startsecs

        def probe(stopping: threading.Event) -> _StartupConfirmed | None:
            confirmed = confirm_startup(address, startsecs, stopping)
            return _StartupConfirmed(generation, *confirmed) if confirmed is not None else None

        self._probe = self.workers.run(f"node-probe-{generation}", probe)

    def _watch_exit(self, process: proc_os.NodeProcess, generation: int, name: str) -> None:
        # A dead actor is fine: its restarted successor watches the node itself.
        self.workers.run(name, lambda _stopping: _Exited(generation, proc_os.wait_exit(process)))

    def _adopt(self) -> bool:
        pidfile = node_pid_file(self._home)
        record = proc_os.adoptable_record(pidfile, self._home.visor_dir)
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
        self._running_args = proc_os.command_args(record.pid)
        uptime = max(time.time() - record.started_at, 0.0)
        self._running_since = time.monotonic() - uptime
        self._fire(Trigger.ADOPTED)
        proc_os.write_pidfile(pidfile, process)
        self._watch_exit(process, self._generation, f"node-watch-{process.pid}")
        logger.info("adopted running node pid {} ({})", record.pid, record.binary)
        self._bus.publish(ev.NodeAdopted(pid=record.pid, binary=record.binary, uptime=uptime))
        self._detect_version(record.binary)
        return True

    def _announce_running(self, why: _Why) -> None:
        message = why.confirmed
        assert self._process is not None
        assert message is not None
        self._running_since = time.monotonic()
        self._last_error = None
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

    def _terminate(self, why: _Why) -> None:
        assert self._process is not None
        grace = self._config.node.shutdown_grace
        self._cancel_probe()
        self._stop_began = time.monotonic()
        self._bus.publish(ev.NodeStopping(pid=self._process.pid, reason=why.reason, grace=grace))
        if not proc_os.signal_group(self._process.pid, signal.SIGTERM):
            logger.info("node group {} already gone", self._process.pid)
        self.timers.schedule("grace", grace, _TimerFired(self._generation, Trigger.GRACE_EXPIRED))

    def _kill(self) -> None:
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
            stopped = ev.NodeStopped(
                pid=process.pid, killed=self._killed, seconds=time.monotonic() - self._stop_began
            )
            # Published once the state is STOPPED, before a start asked meanwhile begins.
            self._fire(Trigger.EXITED, _Why(stopped=stopped))
            return
        was_running = self._state is NodeState.RUNNING
        running_for = (
            time.monotonic() - self._running_since
            if was_running and self._running_since is not None
            else 0.0
        )
        if (status.exit_code is not None and status.exit_code != 0) or status.signal is not None:
            self._last_error = f"node exited unexpectedly: {status.describe()}"
        self._fire(Trigger.EXITED, _Why(was_running=was_running, running_for=running_for))

    def _apply_restart_policy(self, why: _Why) -> None:
        decision = decide_after_exit(
            self._policy,
            self._history,
            now=time.monotonic(),
            was_running=why.was_running,
            running_for=why.running_for,
            jitter=random.random,
        )
        self._history = decision.history
        reason = ""
        if decision.action is ExitAction.FATAL:
            policy = self._policy
            reason = f"more than {policy.max_restarts} restarts within {policy.window:g}s"
            logger.error("node FATAL: {}; `wemixvisor start` to try again", reason)
        self._fire(_POLICY_TRIGGERS[decision.action], _Why(reason=reason, decision=decision))

    def _announce_stopped(self, why: _Why) -> None:
        if why.stopped is not None:
            self._bus.publish(why.stopped)

    def _schedule_backoff(self, why: _Why) -> None:
        decision = why.decision
        assert decision is not None
        logger.warning("node restarts in {:.2f}s (back-off)", decision.delay)
        self._bus.publish(
            ev.NodeBackoff(
                delay=decision.delay,
                restarts_in_window=decision.restarts_in_window,
                max_restarts=self._policy.max_restarts,
            )
        )
        self.timers.schedule(
            "backoff", decision.delay, _TimerFired(self._generation, Trigger.BACKOFF_ELAPSED)
        )

    def _announce_fatal(self, why: _Why) -> None:
        decision = why.decision
        restarts = (
            decision.restarts_in_window if decision is not None else len(self._history.restarts)
        )
        self._bus.publish(ev.NodeFatal(reason=why.reason, restarts_in_window=restarts))

    # helpers

    def _notify(self, previous: NodeState) -> None:
        state = self._state
        pid = self._process.pid if self._process is not None else None
        changed = NodeStateChanged(state=state, previous=previous, pid=pid)
        self._watchers = [w for w in self._watchers if tell_if_alive(w, changed)]

    def _resolve_stop_waiters(self) -> None:
        status = self._status()
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.set(status)

    def _cancel_probe(self) -> None:
        if self._probe is not None:
            self._probe.stop()
            self._probe = None

    def _detect_version(self, binary: str) -> None:
        if binary in self._versions:
            return
        self.workers.run(
            "node-version",
            lambda _stopping: _VersionDetected(binary, proc_os.detect_version(Path(binary))),
        )

    def _status(self, *, sample: bool = True) -> NodeStatus:
        process = self._process
        cpu, rss = 0.0, 0
        if process is not None:
            cpu, rss = (self._sampler.sample if sample else self._sampler.last)(process.pid)
        now = time.monotonic()
        lease = self._leases.current
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
            lease=f"{lease.holder}: {lease.reason}" if lease is not None else None,
            args=list(self._running_args) if process is not None else [],
        )
