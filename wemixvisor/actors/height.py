"""HeightActor: follows the chain head through web3 (SPEC §13.1).

All network I/O runs on one thread of `chain.headwatch`: a web3 `newHeads` subscription for a
ws(s):// address or an IPC path, else `eth_blockNumber` polling over a kept-alive HTTP session.
The thread reports each new head and each failed attempt with a message tagged by its
generation; the actor keeps the state (head, RPC availability, stall), forwards every new head
to the orchestrator at once and publishes events. A node that refuses the subscription is
polled instead, and the actor says so (a warning and `fallback` in its status). Polling
tightens near the next plan's trigger height, which the orchestrator tells it (SPEC §16).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
from loguru import logger

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import tell_if_alive
from wemixvisor.bus import Bus
from wemixvisor.chain.client import ChainClient, address_kind
from wemixvisor.chain.headwatch import (
    HeadPoller,
    HeadSubscriber,
    HeadWatcher,
    StallWatch,
    poll_interval,
)
from wemixvisor.chain.pace import HeadPace
from wemixvisor.chain.wbft import WbftClient, istanbul_problem
from wemixvisor.config import Config
from wemixvisor.messages import events as ev
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.height import (
    GetHeight,
    HeadObserved,
    HeightStatus,
    NextTrigger,
    ResendNextTrigger,
    RpcAvailability,
)

_ORCHESTRATOR = "orchestrator"


class _HeadSeen(msgspec.Struct, frozen=True):
    generation: int
    height: int
    observed_at: float


class _RpcFailed(msgspec.Struct, frozen=True):
    generation: int
    error: str
    at: float


class _SubscriptionRefused(msgspec.Struct, frozen=True):
    generation: int
    error: str


class _StallCheck(msgspec.Struct, frozen=True):
    pass


class _IstanbulChecked(msgspec.Struct, frozen=True):
    problem: str | None


def rpc_mode(address: str) -> str:
    """`ws` or `ipc` (a newHeads subscription) for a ws(s):// address or an IPC path, else
    `poll` (eth_blockNumber over http(s))."""
    try:
        kind = address_kind(address)
    except ValueError:
        return "poll"  # the poller reports the bad address as a failed attempt
    return "poll" if kind == "http" else kind


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
        self._pace = HeadPace()  # the block time, for the ETAs of status and upgrade status
        self._available = False
        self._down_since: float | None = None  # set once RpcUnavailable was published
        self._last_error: str | None = None
        self._stall = StallWatch(config.rpc.stall_timeout)
        self._stall_timer_armed = False
        self._generation = 0
        self._watcher: HeadWatcher | None = None
        self._trigger: int | None = None  # where the next plan starts: poll fast near it
        self._fallback: str | None = None  # why a subscription address is polled
        self._istanbul_problem: str | None = None

    # lifecycle

    def setup(self) -> None:
        self._start_watcher()
        # A restarted actor polls tightly near the next plan too (at the daemon's start the
        # orchestrator, started after this actor, tells it anyway).
        self._bus.tell(_ORCHESTRATOR, ResendNextTrigger())

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
            case _SubscriptionRefused(generation=generation) if generation == self._generation:
                self._fall_back_to_polling(message.error)
            case _HeadSeen() | _RpcFailed() | _SubscriptionRefused():
                pass  # from a watcher that has been replaced
            case NextTrigger(height=height):
                self._trigger = height
                self._tune_polling()
            case _IstanbulChecked(problem=problem):
                self._on_istanbul_checked(problem)
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

        def on_refused(error: str) -> None:
            tell_if_alive(ref, _SubscriptionRefused(generation, error))

        rpc = self._config.rpc
        watcher: HeadWatcher
        if self._mode in ("ws", "ipc"):
            watcher = HeadSubscriber(
                self._address,
                kind=self._mode,
                timeout=rpc.timeout,
                on_head=on_head,
                on_failure=on_failure,
                on_refused=on_refused,
            )
        else:
            watcher = HeadPoller(
                self._address,
                timeout=rpc.timeout,
                interval=poll_interval(rpc.poll_interval, self._height, self._trigger),
                on_head=on_head,
                on_failure=on_failure,
            )
        self._watcher = watcher
        watcher.start()
        logger.info("following the head of {} ({})", self._address, self._mode)

    def _fall_back_to_polling(self, error: str) -> None:
        self._fallback = error
        self._mode = "poll"
        logger.warning(
            "{} refused the newHeads subscription ({}): polling eth_blockNumber every {:g}s"
            " instead",
            self._address,
            error,
            self._config.rpc.poll_interval,
        )
        self._start_watcher()

    def _tune_polling(self) -> None:
        """Poll at the configured interval far from a plan, fast near its trigger height."""
        if not isinstance(self._watcher, HeadPoller):
            return  # a subscription hears every head as it comes
        wanted = poll_interval(self._config.rpc.poll_interval, self._height, self._trigger)
        if wanted != self._watcher.interval:
            logger.info(
                "polling the head every {:g}s (head {}, next upgrade starts at {})",
                wanted,
                self._height,
                self._trigger,
            )
            self._watcher.set_interval(wanted)

    def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and not watcher.stop():
            # Stuck in a call of at most the RPC timeout; its late report goes nowhere.
            logger.debug("{} head watcher still finishing a call", self._mode)

    # reports

    def _on_head(self, height: int, observed_at: float) -> None:
        resumed = not self._available
        if resumed:
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
            self._pace.note(height, observed_at)
            # The orchestrator first: it is waiting for height H, the events can wait.
            self._bus.tell(_ORCHESTRATOR, HeadObserved(height, observed_at, self._mode))
            self._bus.publish(ev.HeightObserved(height=height, source=self._mode))
            self._stall.head_moved(observed_at)
            self._tune_polling()
        self._arm_stall_timer()
        if resumed:
            self._check_istanbul()  # after the head: the orchestrator must not wait for it

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

    # validator mode

    def _check_istanbul(self) -> None:
        """VALIDATOR_MODE: whenever RPC (re)appears (a node restarted with other flags, say),
        check that it serves `istanbul_*`; a refusal is a warning, never silence (SPEC §13.2)."""
        if not self._config.node.validator_mode:
            return
        address, timeout = self._address, min(self._config.rpc.timeout, 5.0)

        def check(_stopping: threading.Event) -> _IstanbulChecked:
            chain = ChainClient(address, timeout=timeout)
            try:
                return _IstanbulChecked(istanbul_problem(WbftClient(chain)))
            finally:
                chain.close()

        self.workers.run("istanbul-check", check)

    def _on_istanbul_checked(self, problem: str | None) -> None:
        if problem is not None:
            logger.warning("{}; every plan's preflight fails until it does", problem)
        elif self._istanbul_problem is not None:
            logger.info("the node at {} serves istanbul_* now", self._address)
        self._istanbul_problem = problem

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
        self._config = config
        self._tune_polling()
        if rpc.stall_timeout != self._stall.timeout:
            logger.info("stall timeout now {:g}s", rpc.stall_timeout)
            self._stall.set_timeout(rpc.stall_timeout, time.monotonic())
            self._cancel_stall_timer()
            self._arm_stall_timer()
        # rpc.timeout and rpc.address are not reloadable: the running watcher keeps its own.

    def _status(self) -> HeightStatus:
        return HeightStatus(
            height=self._height,
            observed_age=(time.monotonic() - self._head_at if self._head_at is not None else None),
            rpc_available=self._available,
            last_error=self._last_error,
            mode=self._mode,
            stalled=self._stall.stalled,
            poll_interval=(
                self._watcher.interval if isinstance(self._watcher, HeadPoller) else None
            ),
            fallback=self._fallback,
            block_time=self._pace.block_time(),
        )
