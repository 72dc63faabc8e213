"""Following the chain head: the helper threads that talk to the node, and the pure decisions.

Two watchers, each running on a single helper thread that reports through callbacks (the
HeightActor turns them into messages to itself):

- `HeadPoller` asks `eth_blockNumber` every poll interval through the web3 client (a kept-alive
  HTTP session; also the fallback for ws and IPC addresses that refuse subscriptions).
- `HeadSubscriber` holds one web3 `newHeads` subscription (`AsyncWeb3` on web3's websocket or
  IPC provider), asks `eth_blockNumber` right after each (re)connect so the current head is known
  at once; websocket keepalive pings notice a dead peer within seconds. A node that refuses the
  subscription itself is reported (`on_refused`) and the thread ends: the actor polls instead.

Both report a head only when it differs from the one they reported last, or when it is the first
answer after a failure (so the actor learns RPC is back); they report every failed attempt and
retry with `Backoff`.

The pure parts — reading a height (`parse_height`), the retry schedule (`Backoff`), stall
detection (`StallWatch`) and how often to poll near an upgrade (`poll_interval`) — need no
thread or socket.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from loguru import logger

from wemixvisor.chain.client import ChainClient, load_web3, rpc_failure
from wemixvisor.chain.rpc import MAX_QUANTITY, MalformedAnswer, RpcError, parse_quantity

if TYPE_CHECKING:
    from web3 import AsyncWeb3

__all__ = [
    "FAST_POLL_INTERVAL",
    "MAX_HEIGHT",
    "NEAR_TRIGGER_BLOCKS",
    "Backoff",
    "HeadPoller",
    "HeadSubscriber",
    "HeadWatcher",
    "MalformedAnswer",
    "StallWatch",
    "next_trigger_height",
    "parse_height",
    "poll_interval",
]

T = TypeVar("T")

MAX_HEIGHT: Final = MAX_QUANTITY
"""The largest height a well-formed answer can carry (16 hex digits, geth's uint64)."""

NEAR_TRIGGER_BLOCKS: Final = 5
"""Within this many blocks before the next plan's trigger height, polling tightens."""

FAST_POLL_INTERVAL: Final = 0.05
"""The poll interval near a trigger height: a 0.1 s block is seen within half its time."""

HeadCallback = Callable[[int, float], None]
"""Called with (height, time.monotonic() when the answer arrived)."""
FailureCallback = Callable[[str], None]
"""Called with a one-line description of a failed attempt."""


def parse_height(value: object) -> int:
    """The block height in an RPC answer: a `0x`-prefixed hex string of 1 to 16 digits.

    Anything else raises MalformedAnswer: an upgrade must never be triggered by a guessed height.
    """
    return parse_quantity(value, "a block height")


def next_trigger_height(plan_heights: Iterable[int]) -> int | None:
    """The first head at which an upgrade starts: H-1 of the lowest pending plan (SPEC §5)."""
    lowest = min(plan_heights, default=None)
    return None if lowest is None else max(lowest - 1, 0)


def poll_interval(base: float, head: int | None, trigger: int | None) -> float:
    """How often to poll: `base` far from any plan, `FAST_POLL_INTERVAL` (never slower than
    `base`) while the head is within NEAR_TRIGGER_BLOCKS of the next trigger height, up to it.

    An unknown head or no plan polls at `base`; past the trigger the upgrade has started.
    """
    if head is None or trigger is None:
        return base
    if trigger - NEAR_TRIGGER_BLOCKS <= head <= trigger:
        return min(base, FAST_POLL_INTERVAL)
    return base


@dataclass(frozen=True)
class Backoff:
    """Retry delays after consecutive failures: `initial`, doubling, capped at `cap`.

    Small at first because the usual cause is a node restarting (during an upgrade, say), and its
    return should be seen within tens of milliseconds; capped so that a long outage costs little.
    """

    initial: float = 0.05
    cap: float = 2.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1 for the first)."""
        exponent = min(max(failures, 1) - 1, 32)
        return float(min(self.cap, self.initial * (2**exponent)))


class StallWatch:
    """When does an unchanged head count as a stall (SPEC §3 DAEMON_STALL_TIMEOUT)?

    The clock runs only while RPC answers: it starts at a head change or at RPC coming back (a
    node that just restarted gets a full timeout to move), and stops while RPC is down. A stall is
    reported once; only a head change re-arms it. A timeout of 0 turns detection off.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.stalled = False
        self._since: float | None = None

    def head_moved(self, now: float) -> None:
        """The head changed at `now`: the clock restarts and a reported stall is over."""
        self._since = now
        self.stalled = False

    def rpc_resumed(self, now: float) -> None:
        """RPC answers again after a failure: the clock restarts from `now`."""
        self._since = now

    def rpc_lost(self) -> None:
        """RPC stopped answering: nothing counts as a stall until it answers again."""
        self._since = None

    def set_timeout(self, timeout: float, now: float) -> None:
        """Apply a new timeout from `now` on (0 = off, which also clears a reported stall).

        The clock restarts: time spent under the old setting (perhaps with detection off, or
        with polls too rare to have seen the head move) must not raise an alarm on reload.
        """
        self.timeout = timeout
        if self._since is not None:
            self._since = now
        if timeout <= 0:
            self.stalled = False

    def deadline(self) -> float | None:
        """When the head would count as stalled, or None (off, RPC down, already reported)."""
        if self.timeout <= 0 or self._since is None or self.stalled:
            return None
        return self._since + self.timeout

    def check(self, now: float) -> float | None:
        """Seconds the head has been unchanged, once, when that reaches the timeout; else None."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        assert self._since is not None
        self.stalled = True
        return now - self._since


class HeadWatcher(abc.ABC):
    """One helper thread following the head; subclasses implement `_run`.

    `on_head` and `on_failure` are called on the helper thread and must not block (the actor
    passes functions that only enqueue a message).
    """

    source = ""

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        on_head: HeadCallback,
        on_failure: FailureCallback,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._on_head = on_head
        self._on_failure = on_failure
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        # Set to cut a wait short: on stop, or when the poll interval changes.
        self._wake = threading.Event()
        self._reported: int | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"height-{self.source}", daemon=True
        )

    def start(self) -> None:
        """Start the helper thread."""
        self._thread.start()

    def stop(self, join_timeout: float = 0.5) -> bool:
        """Ask the thread to end and wait up to `join_timeout`; True when it has ended.

        A thread still inside a call (at most the RPC timeout) finishes it and exits without
        reporting anything further.
        """
        self._stop.set()
        self._wake.set()
        self._interrupt()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(join_timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        crashes = 0
        while not self._stop.is_set():
            try:
                if self._run():
                    return
            except Exception as exc:  # noqa: BLE001 - the head must stay followed whatever broke
                # Not an RPC failure but a fault here or in a library: logged in full, reported
                # like a failed attempt, and the loop starts over instead of the thread dying.
                crashes += 1
                logger.opt(exception=exc).error("{} head watcher failed", self.source)
                self._failed(f"head watcher failed: {type(exc).__name__}: {exc}")
                self._sleep(self._backoff.delay(crashes))

    @abc.abstractmethod
    def _run(self) -> bool:
        """Follow the head until stopped or an error ends this attempt (the loop retries);
        True when the watcher is done for good."""

    def _interrupt(self) -> None:  # noqa: B027  (optional hook: polling has nothing to unblock)
        """Unblock a blocking read so that `stop` takes effect at once (override)."""

    def _answered(self, height: int, observed_at: float) -> None:
        if self._stop.is_set() or height == self._reported:
            return
        self._reported = height
        self._on_head(height, observed_at)

    def _failed(self, error: str) -> None:
        if self._stop.is_set():
            return
        # The next good answer is reported even with an unchanged height: it means "RPC is back".
        self._reported = None
        self._on_failure(error)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
        self._wake.clear()


class HeadPoller(HeadWatcher):
    """`eth_blockNumber` every `interval` seconds through the web3 client."""

    source = "poll"

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        interval: float,
        on_head: HeadCallback,
        on_failure: FailureCallback,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(
            address, timeout=timeout, on_head=on_head, on_failure=on_failure, backoff=backoff
        )
        self._client = ChainClient(address, timeout=timeout)
        self._interval = interval

    @property
    def interval(self) -> float:
        """Seconds between two polls while RPC answers."""
        return self._interval

    def set_interval(self, interval: float) -> None:
        """Poll every `interval` seconds from now on (the current wait is cut short)."""
        self._interval = interval
        self._wake.set()

    def _run(self) -> bool:
        failures = 0
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    height = self._client.block_number()
                    observed_at = time.monotonic()
                except RpcError as exc:
                    failures += 1
                    self._failed(f"eth_blockNumber: {exc}")
                    self._sleep(self._backoff.delay(failures))
                    continue
                failures = 0
                self._answered(height, observed_at)
                # A fixed rate, not a fixed pause: detection lags a new head by one interval.
                self._sleep(began + self._interval - time.monotonic())
        finally:
            self._client.close()
        return True


class SubscriptionRefused(RpcError):
    """The node answered `eth_subscribe` with an error: it will not notify new heads."""


class HeadSubscriber(HeadWatcher):
    """A web3 `newHeads` subscription over ws(s) or IPC, reconnected with backoff."""

    def __init__(
        self,
        address: str,
        *,
        kind: str,
        timeout: float,
        on_head: HeadCallback,
        on_failure: FailureCallback,
        on_refused: FailureCallback,
        backoff: Backoff | None = None,
    ) -> None:
        self.source = kind
        super().__init__(
            address, timeout=timeout, on_head=on_head, on_failure=on_failure, backoff=backoff
        )
        self._kind = kind
        self._on_refused = on_refused
        self._got_head = False
        # The running session, for `stop` (another thread) to cancel a blocked read.
        self._lock = threading.Lock()
        self._session_task: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None

    def _interrupt(self) -> None:
        with self._lock:
            running = self._session_task
        if running is not None:
            loop, task = running
            # A loop that has just closed raises RuntimeError: the session is over anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def _run(self) -> bool:
        failures = 0
        while not self._stop.is_set():
            self._got_head = False
            try:
                asyncio.run(self._session())
                continue  # returns only when stopping
            except asyncio.CancelledError:
                if self._stop.is_set():
                    return True
                error = "subscription cancelled"
            except SubscriptionRefused as exc:
                if not self._stop.is_set():
                    self._on_refused(str(exc))
                return True
            except Exception as exc:  # noqa: BLE001 - web3 and websockets raise many kinds
                error = str(rpc_failure(self.address, exc))
            if self._stop.is_set():
                return True
            # A session that delivered a head was a success: the retry schedule starts over.
            failures = 1 if self._got_head else failures + 1
            self._failed(error)
            self._sleep(self._backoff.delay(failures))
        return True

    async def _session(self) -> None:
        """Connect, subscribe, read heads; return when stopping, raise on any failure."""
        providers = load_web3()

        task = asyncio.current_task()
        assert task is not None
        with self._lock:
            self._session_task = (asyncio.get_running_loop(), task)
        try:
            if self._stop.is_set():
                return
            w3 = providers.persistent_web3(self.address, self._kind, self.timeout)
            try:
                await self._within("no connection", w3.provider.connect())
                await self._follow(w3)
            finally:
                await providers.disconnect(w3.provider)
        finally:
            with self._lock:
                self._session_task = None

    async def _follow(self, w3: AsyncWeb3[Any]) -> None:
        from web3.exceptions import Web3RPCError  # noqa: PLC0415
        from web3.types import RPCEndpoint  # noqa: PLC0415

        # Subscribe first, then ask the head: no block can fall between the two.
        try:
            await self._within("no answer to eth_subscribe", w3.eth.subscribe("newHeads"))
        except Web3RPCError as exc:
            raise SubscriptionRefused(str(rpc_failure(self.address, exc))) from None
        answer = await self._within(
            "no answer to eth_blockNumber",
            w3.manager.coro_request(RPCEndpoint("eth_blockNumber"), []),
        )
        self._head(parse_height(answer), time.monotonic())
        async for message in w3.socket.process_subscriptions():
            observed_at = time.monotonic()
            header = message.get("result") if isinstance(message, dict) else None
            number = header.get("number") if isinstance(header, dict) else None
            # web3 turned the (checked) hex number into an int.
            if isinstance(number, bool) or not isinstance(number, int):
                raise MalformedAnswer("newHeads notification without a block number")
            if not 0 <= number <= MAX_HEIGHT:
                raise MalformedAnswer(f"newHeads block number out of range: {number}")
            self._head(number, observed_at)
        raise RpcError("the subscription ended: connection closed")

    async def _within(self, what: str, step: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(step, self.timeout)
        except TimeoutError:
            raise RpcError(f"{self.address}: {what} within {self.timeout:g}s") from None

    def _head(self, height: int, observed_at: float) -> None:
        self._got_head = True
        self._answered(height, observed_at)
