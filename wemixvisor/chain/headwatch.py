"""Following the chain head: the helper threads that talk to the node, and the pure decisions.

Two watchers, one per RPC mode, each running on a single helper thread that reports through
callbacks (the HeightActor turns them into messages to itself):

- `HeadPoller` calls `eth_blockNumber` every poll interval over http(s) or IPC (`RpcClient`).
- `HeadSubscriber` holds one websocket with a `newHeads` subscription, asks `eth_blockNumber`
  right after each (re)connect so the current head is known at once, and pings the peer so a
  dead one is noticed within seconds.

Both report a head only when it differs from the one they reported last, or when it is the first
answer after a failure (so the actor learns RPC is back); they report every failed attempt and
retry with `Backoff`.

The pure parts — reading a height out of an answer (`parse_height`, `decode_ws_message`), the
retry schedule (`Backoff`) and stall detection (`StallWatch`) — need no thread or socket.

web3 is deliberately not used here: importing it costs about 40 MB of RSS, half the daemon's idle
budget (SPEC §16), for two JSON-RPC methods that msgspec and websockets handle directly.
"""

from __future__ import annotations

import abc
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
from loguru import logger

from wemixvisor.chain.rpc import (
    MAX_QUANTITY,
    MalformedAnswer,
    RpcClient,
    RpcError,
    describe_value,
    parse_quantity,
)

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

__all__ = [
    "MAX_HEIGHT",
    "Backoff",
    "HeadPoller",
    "HeadSubscriber",
    "HeadWatcher",
    "MalformedAnswer",
    "StallWatch",
    "WsMessage",
    "decode_ws_message",
    "parse_height",
]

MAX_HEIGHT: Final = MAX_QUANTITY
"""The largest height a well-formed answer can carry (16 hex digits, geth's uint64)."""

# A newHeads notification is a block header of about 1 KB: anything near this size is hostile.
_WS_MAX_MESSAGE: Final = 1 << 20
# Keepalive: a peer that stops answering pings is declared dead after interval + timeout.
_WS_PING_INTERVAL: Final = 2.0
_WS_CLOSE_TIMEOUT: Final = 1.0
_SUBSCRIBE_ID: Final = 1
_BLOCK_NUMBER_ID: Final = 2
_MAX_SUBSCRIPTION_ID_CHARS: Final = 200
_SUBSCRIBE_REQUEST: Final = msgspec.json.encode(
    {"jsonrpc": "2.0", "id": _SUBSCRIBE_ID, "method": "eth_subscribe", "params": ["newHeads"]}
).decode()
_BLOCK_NUMBER_REQUEST: Final = msgspec.json.encode(
    {"jsonrpc": "2.0", "id": _BLOCK_NUMBER_ID, "method": "eth_blockNumber", "params": []}
).decode()

HeadCallback = Callable[[int, float], None]
"""Called with (height, time.monotonic() when the answer arrived)."""
FailureCallback = Callable[[str], None]
"""Called with a one-line description of a failed attempt."""


def parse_height(value: object) -> int:
    """The block height in an RPC answer: a `0x`-prefixed hex string of 1 to 16 digits.

    Anything else raises MalformedAnswer: an upgrade must never be triggered by a guessed height.
    """
    return parse_quantity(value, "a block height")


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


class _Header(msgspec.Struct):
    # Only the number is read; msgspec skips the other header fields without building them.
    number: Any = None


class _Params(msgspec.Struct):
    subscription: Any = None
    result: _Header | None = None


class WsMessage(msgspec.Struct):
    """One message on the subscription socket: an answer (`id`) or a notification (`method`)."""

    id: Any = None
    result: Any = None
    error: Any = None
    method: str | None = None
    params: _Params | None = None


_ws_decoder: Final = msgspec.json.Decoder(WsMessage)


def decode_ws_message(raw: str | bytes) -> WsMessage:
    """Decode one websocket message; MalformedAnswer for anything that is not JSON-RPC."""
    try:
        return _ws_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise MalformedAnswer(f"malformed message on the subscription: {exc}") from None


def _call_name(request_id: object) -> str:
    # Compared, never hashed: a hostile id may be a list or an object.
    if request_id == _SUBSCRIBE_ID:
        return "eth_subscribe"
    if request_id == _BLOCK_NUMBER_ID:
        return "eth_blockNumber"
    return "subscription"


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        code, message = describe_value(error.get("code")), describe_value(error.get("message"))
        return f"JSON-RPC error {code}: {message}"
    return f"JSON-RPC error {describe_value(error)}"


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
        # Guards what `_interrupt` reads from the thread that calls `stop`.
        self._lock = threading.Lock()
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
                self._run()
            except Exception as exc:  # noqa: BLE001 - the head must stay followed whatever broke
                # Not an RPC failure but a fault here or in a library: logged in full, reported
                # like a failed attempt, and the loop starts over instead of the thread dying.
                crashes += 1
                logger.opt(exception=exc).error("{} head watcher failed", self.source)
                self._failed(f"head watcher failed: {type(exc).__name__}: {exc}")
                self._sleep(self._backoff.delay(crashes))

    @abc.abstractmethod
    def _run(self) -> None:
        """Follow the head until stopped or an error ends this attempt (the loop retries)."""

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
    """`eth_blockNumber` every `interval` seconds over http(s) or IPC."""

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
        self._client = RpcClient(address, timeout=timeout)
        self._interval = interval

    @property
    def interval(self) -> float:
        """Seconds between two polls while RPC answers."""
        return self._interval

    def set_interval(self, interval: float) -> None:
        """Poll every `interval` seconds from now on (the current wait is cut short)."""
        self._interval = interval
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                answer = self._client.call("eth_blockNumber")
                observed_at = time.monotonic()
                height = parse_height(answer)
            except RpcError as exc:
                failures += 1
                self._failed(f"eth_blockNumber: {exc}")
                self._sleep(self._backoff.delay(failures))
                continue
            failures = 0
            self._answered(height, observed_at)
            # A fixed rate, not a fixed pause: detection lags a new head by at most one interval.
            self._sleep(began + self._interval - time.monotonic())


class HeadSubscriber(HeadWatcher):
    """A `newHeads` subscription over one websocket, reconnected with backoff when it fails."""

    source = "ws"

    # The open websocket, read by `stop` from another thread to cut a blocked read short.
    _ws: ClientConnection | None = None
    _got_head = False

    def _interrupt(self) -> None:
        with self._lock:
            ws = self._ws
        if ws is not None:
            # Shutting the socket down wakes a blocked recv at once, without the close handshake
            # that a dead peer would make us wait for.
            with contextlib.suppress(OSError):
                ws.socket.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        # Imported here: websockets costs ~4 MB of RSS that a polling daemon need not pay.
        from websockets.exceptions import ConnectionClosed, WebSocketException  # noqa: PLC0415

        failures = 0
        while not self._stop.is_set():
            self._got_head = False
            try:
                self._session()
                continue  # returns only when stopping
            except MalformedAnswer as exc:
                error = str(exc)
            except RpcError as exc:
                error = str(exc)
            except ConnectionClosed as exc:
                error = f"connection lost: {exc}"
            except (OSError, WebSocketException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if self._stop.is_set():
                return
            # A session that delivered a head was a success: the retry schedule starts over.
            failures = 1 if self._got_head else failures + 1
            self._failed(error)
            self._sleep(self._backoff.delay(failures))

    def _session(self) -> None:
        """Connect, subscribe, read heads; return when stopping, raise on any failure."""
        from websockets.sync.client import connect  # noqa: PLC0415

        with connect(
            self.address,
            open_timeout=self.timeout,
            ping_interval=_WS_PING_INTERVAL,
            ping_timeout=self.timeout,
            close_timeout=_WS_CLOSE_TIMEOUT,
            max_size=_WS_MAX_MESSAGE,
            compression=None,
            proxy=None,
        ) as ws:
            with self._lock:
                self._ws = ws
            try:
                if self._stop.is_set():
                    return
                self._follow(ws)
            finally:
                with self._lock:
                    self._ws = None

    def _follow(self, ws: ClientConnection) -> None:
        # Subscribe first, then ask the head: no block can fall between the two.
        ws.send(_SUBSCRIBE_REQUEST)
        ws.send(_BLOCK_NUMBER_REQUEST)
        subscription: str | None = None
        awaiting = {_SUBSCRIBE_ID, _BLOCK_NUMBER_ID}
        answer_deadline = time.monotonic() + self.timeout
        while True:
            if awaiting:
                remaining = answer_deadline - time.monotonic()
                try:
                    raw = ws.recv(timeout=max(remaining, 0.0))
                except TimeoutError:
                    calls = " and ".join(_call_name(request) for request in sorted(awaiting))
                    raise RpcError(f"no answer to {calls} within {self.timeout:g}s") from None
            else:
                # Silence is fine here (no blocks); a dead peer fails the keepalive pings.
                raw = ws.recv()
            observed_at = time.monotonic()
            message = decode_ws_message(raw)
            if message.error is not None:
                raise RpcError(f"{_call_name(message.id)}: {_error_text(message.error)}")
            if message.method == "eth_subscription":
                params = message.params
                if params is None:
                    raise MalformedAnswer("newHeads notification without params")
                if subscription is None or params.subscription != subscription:
                    continue  # not ours (yet): geth answers eth_subscribe before notifying
                if params.result is None:
                    raise MalformedAnswer("newHeads notification without a header")
                self._head(parse_height(params.result.number), observed_at)
            elif message.id == _SUBSCRIBE_ID and _SUBSCRIBE_ID in awaiting:
                subscription = self._subscription_id(message.result)
                awaiting.discard(_SUBSCRIBE_ID)
            elif message.id == _BLOCK_NUMBER_ID and _BLOCK_NUMBER_ID in awaiting:
                awaiting.discard(_BLOCK_NUMBER_ID)
                self._head(parse_height(message.result), observed_at)
            else:
                raise MalformedAnswer(
                    f"unexpected message on the subscription (id {describe_value(message.id)}, "
                    f"method {describe_value(message.method)})"
                )

    def _head(self, height: int, observed_at: float) -> None:
        self._got_head = True
        self._answered(height, observed_at)

    @staticmethod
    def _subscription_id(result: object) -> str:
        if isinstance(result, str) and 0 < len(result) <= _MAX_SUBSCRIPTION_ID_CHARS:
            return result
        raise MalformedAnswer(
            f"eth_subscribe answered {describe_value(result)}, not a subscription id"
        )
