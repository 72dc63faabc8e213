"""HeightActor: follows the chain head over the node's JSON-RPC (SPEC §13.1).

All network I/O runs on one thread of `chain.headwatch`: a `newHeads` subscription for
a ws(s):// address, else `eth_blockNumber` polling. The thread reports each new head and each
failed attempt with a message tagged by its generation; the actor keeps the state (head, RPC
availability, stall), forwards every new head to the orchestrator at once and publishes events.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import tell_if_alive
from wemixvisor.bus import Bus
from wemixvisor.chain.headwatch import HeadPoller, HeadSubscriber, HeadWatcher, StallWatch
from wemixvisor.config import Config
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.height import GetHeight, HeadObserved, HeightStatus, RpcAvailability

_ORCHESTRATOR = "orchestrator"


class _HeadSeen(msgspec.Struct, frozen=True):
    generation: int
    height: int
    observed_at: float


class _RpcFailed(msgspec.Struct, frozen=True):
    generation: int
    error: str
    at: float


class _StallCheck(msgspec.Struct, frozen=True):
    pass


def rpc_mode(address: str) -> str:
    """`ws` for a ws(s):// address (newHeads subscription), else `poll` (eth_blockNumber)."""
    return "ws" if address.startswith(("ws://", "wss://")) else "poll"


class HeightActor(SupervisedActor):
    """Knows the chain head and whether RPC answers; tells the orchestrator of every new head."""

    role = "height"

    def __init__(self, config: Config, bus: Bus, failure_sink: FailureSink | None = None) -> None:
        super().__init__(failure_sink)
        self._config = config
        self._bus = bus
        # The address is fixed for the actor's life: changing it needs a daemon restart.
        self._address = config.rpc.address
        self._mode = rpc_mode(self._address)
        self._height: int | None = None
        self._head_at: float | None = None
        self._available = False
        self._down_since: float | None = None  # set once RpcUnavailable was published
        self._last_error: str | None = None
        self._stall = StallWatch(config.rpc.stall_timeout)
        self._stall_timer_armed = False
        self._generation = 0
        self._watcher: HeadWatcher | None = None

    # lifecycle

    def setup(self) -> None:
        self._start_watcher()

    def release(self) -> None:
        # Also after a failure: the actor the supervisor starts next runs its own watcher.
        self._stop_watcher()

    # messages

    def on_receive(self, message: Any) -> Any:
        match message:
            case _HeadSeen(generation=generation) if generation == self._generation:
                self._on_head(message.height, message.observed_at)
            case _RpcFailed(generation=generation) if generation == self._generation:
                self._on_failure(message.error, message.at)
            case _HeadSeen() | _RpcFailed():
                pass  # from a watcher that has been replaced
            case _StallCheck():
                self._stall_timer_armed = False
                self._check_stall()
            case GetHeight():
                return self._status()
            case ConfigChanged(config=config):
                self._apply_config(config)
            case _:
                logger.warning("height actor: unexpected message {!r}", message)
        return None

    # the head watcher

    def _start_watcher(self) -> None:
        self._stop_watcher()
        self._generation += 1
        generation = self._generation
        ref = self.actor_ref

        def on_head(height: int, observed_at: float) -> None:
            tell_if_alive(ref, _HeadSeen(generation, height, observed_at))

        def on_failure(error: str) -> None:
            tell_if_alive(ref, _RpcFailed(generation, error, time.monotonic()))

        rpc = self._config.rpc
        watcher: HeadWatcher
        if self._mode == "ws":
            watcher = HeadSubscriber(
                self._address, timeout=rpc.timeout, on_head=on_head, on_failure=on_failure
            )
        else:
            watcher = HeadPoller(
                self._address,
                timeout=rpc.timeout,
                interval=rpc.poll_interval,
                on_head=on_head,
                on_failure=on_failure,
            )
        self._watcher = watcher
        watcher.start()
        logger.info("following the head of {} ({})", self._address, self._mode)

    def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.stop():
            # Stuck in a call of at most the RPC timeout; its late report goes nowhere.
            logger.debug("{} head watcher still finishing a call", self._mode)

    # reports

    def _on_head(self, height: int, observed_at: float) -> None:
        if not self._available:
            self._available = True
            self._stall.rpc_resumed(observed_at)
            if self._down_since is not None:
                # Before the head: the orchestrator learns RPC is back, then what it says.
                down_seconds = max(observed_at - self._down_since, 0.0)
                self._down_since = None
                logger.info("RPC {} answers again after {:.3f}s", self._address, down_seconds)
                self._bus.tell(_ORCHESTRATOR, RpcAvailability(True))
                self._bus.publish(ev.RpcRecovered(address=self._address, down_seconds=down_seconds))
        if height != self._height:
            self._height = height
            self._head_at = observed_at
            # The orchestrator first: it is waiting for height H, the events can wait.
            self._bus.tell(_ORCHESTRATOR, HeadObserved(height, observed_at, self._mode))
            self._bus.publish(ev.HeightObserved(height=height, source=self._mode))
            self._stall.head_moved(observed_at)
        self._arm_stall_timer()

    def _on_failure(self, error: str, at: float) -> None:
        self._last_error = error
        self._available = False
        self._stall.rpc_lost()
        self._cancel_stall_timer()
        if self._down_since is not None:
            return  # already reported: once per outage, not once per retry
        self._down_since = at
        logger.warning("RPC {} unavailable: {}", self._address, error)
        self._bus.publish(ev.RpcUnavailable(address=self._address, error=error))
        self._bus.tell(_ORCHESTRATOR, RpcAvailability(False, error))

    # stall detection

    def _arm_stall_timer(self) -> None:
        # One timer per stall period, not one per head: when it fires early (the head moved in
        # between), the check re-arms it for the new deadline.
        if self._stall_timer_armed:
            return
        deadline = self._stall.deadline()
        if deadline is None:
            return
        self._stall_timer_armed = True
        self.timers.schedule("stall", deadline - time.monotonic(), _StallCheck())

    def _cancel_stall_timer(self) -> None:
        self._stall_timer_armed = False
        self.timers.cancel("stall")

    def _check_stall(self) -> None:
        if not self._available or self._height is None:
            return
        seconds = self._stall.check(time.monotonic())
        if seconds is None:
            self._arm_stall_timer()
            return
        logger.warning("head stalled at {} for {:.1f}s", self._height, seconds)
        self._bus.publish(ev.NodeStalled(height=self._height, seconds=seconds))

    # configuration and status

    def _apply_config(self, config: Config) -> None:
        rpc = config.rpc
        if rpc.address != self._address:
            logger.info("rpc.address change to {} applies after a restart", rpc.address)
        if isinstance(self._watcher, HeadPoller) and rpc.poll_interval != self._watcher.interval:
            logger.info("height poll interval now {:g}s", rpc.poll_interval)
            self._watcher.set_interval(rpc.poll_interval)
        if rpc.stall_timeout != self._stall.timeout:
            logger.info("stall timeout now {:g}s", rpc.stall_timeout)
            self._stall.set_timeout(rpc.stall_timeout, time.monotonic())
            self._cancel_stall_timer()
            self._arm_stall_timer()
        # rpc.timeout and rpc.address are not reloadable: the running watcher keeps its own.
        self._config = config

    def _status(self) -> HeightStatus:
        return HeightStatus(
            height=self._height,
            observed_age=(time.monotonic() - self._head_at if self._head_at is not None else None),
            rpc_available=self._available,
            last_error=self._last_error,
            mode=self._mode,
            stalled=self._stall.stalled,
        )
