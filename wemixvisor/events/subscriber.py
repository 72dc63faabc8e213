"""Client side of the events socket: one SUB socket tailing one or many daemons.

Used by `wemixvisor events` and by alerting. It trusts nothing it receives: malformed messages
are counted and skipped, frames are capped in size, and a lost connection is re-dialled.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec
import zmq
from loguru import logger
from zmq.utils.monitor import recv_monitor_message

# Events are small; a frame beyond this is refused by ZeroMQ before it is allocated.
MAX_FRAME_BYTES = 1024 * 1024

# run_ids remembered for gap detection; a tail of a few daemons restarting for weeks stays small.
_MAX_RUNS = 1024

_decode_payload = msgspec.json.Decoder(dict[str, Any]).decode
_encode_json = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One well-formed event.

    `gap` is how many events of the same daemon run were lost since the previous one returned
    (0 when none, and for the first event seen of a run: a restarted daemon is not a gap).
    Events of topics not subscribed to are not lost; they do not count.
    """

    topic: str
    payload: dict[str, Any]
    raw: bytes
    seq: int
    run_id: str
    ts: float
    gap: int

    def to_json(self) -> bytes:
        """The payload as one line of compact JSON."""
        return _encode_json(self.payload)


@dataclass(slots=True)
class _Run:
    """What is known of one daemon run: its last seq, and missed events not yet reported."""

    last_seq: int
    unreported: int = 0


class _Malformed(Exception):
    """A message that is not an event; the text says what is wrong with it."""


class EventSubscriber:
    """A SUB socket connected to `endpoints`, receiving topics that start with any of `prefixes`.

    No prefixes (or an empty one) means every topic. Use from one thread; close when done (or
    use as a context manager). Counters: `received` (events returned), `missed` (sum of gaps),
    `malformed`, `disconnects`.

    Topics are filtered here, not by ZeroMQ: `seq` counts every topic of a daemon run, so only a
    subscriber that sees every event can tell a lost one from one it did not ask for.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        prefixes: Iterable[str] = (),
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoints: tuple[str, ...] = (
            (endpoints,) if isinstance(endpoints, str) else tuple(dict.fromkeys(endpoints))
        )
        if not self.endpoints:
            raise ValueError("at least one events endpoint is needed")
        self.prefixes: tuple[str, ...] = tuple(dict.fromkeys(prefixes)) or ("",)
        self._match_all = "" in self.prefixes
        self.received = 0
        self.missed = 0
        self.malformed = 0
        self.disconnects = 0
        self._runs: dict[str, _Run] = {}
        self._connected: set[str] = set()
        self._ever_connected: set[str] = set()
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        # ZeroMQ drops a peer that announces a bigger frame before allocating it.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        # The monitor tells which endpoints are connected, and when a connection is lost for
        # good: ZeroMQ does not re-dial after a protocol error such as an oversized frame.
        self._monitor: zmq.Socket[bytes] = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            for endpoint in self.endpoints:
                self._connect(endpoint)
        except ValueError:
            self.close()
            raise

    @property
    def connected(self) -> frozenset[str]:
        """Endpoints with a live connection to a publisher right now."""
        return frozenset(self._connected)

    @property
    def ever_connected(self) -> frozenset[str]:
        """Endpoints where a publisher answered at least once."""
        return frozenset(self._ever_connected)

    def receive(self, timeout: float | None = None) -> ReceivedEvent | None:
        """The next well-formed event, or None when `timeout` seconds pass without one.

        `timeout=None` waits for ever. Malformed messages arriving meanwhile are skipped and do
        not extend the wait.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if deadline is None:
                wait_ms: int | None = None
            else:
                remaining = deadline - time.monotonic()
                wait_ms = max(0, math.ceil(remaining * 1000))
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._drain_monitor()
            if self._socket in ready:
                event = self._receive_one()
                if event is not None:
                    return event
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        """Close the sockets; the subscriber is unusable afterwards."""
        if self._socket.closed:
            return
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self, endpoint: str) -> None:
        if endpoint.startswith("tcp://["):
            self._socket.setsockopt(zmq.IPV6, 1)
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ValueError(f"cannot connect to events endpoint {endpoint}: {exc}") from exc

    def _receive_one(self) -> ReceivedEvent | None:
        try:
            frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        try:
            return self._accept(frames)
        except _Malformed as exc:
            self.malformed += 1
            logger.warning("skipped a malformed events message: {}", exc)
            return None

    def _accept(self, frames: list[bytes]) -> ReceivedEvent | None:
        if len(frames) != 2:
            raise _Malformed(f"{len(frames)} frames, expected 2 (topic, payload)")
        topic_bytes, raw = frames
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            raise _Malformed(f"topic is not UTF-8: {topic_bytes[:64]!r}") from None
        try:
            payload = _decode_payload(raw)
        except msgspec.DecodeError as exc:
            raise _Malformed(f"{topic}: payload is not a JSON object: {exc}") from None
        seq = payload.get("seq")
        run_id = payload.get("run_id")
        ts = payload.get("ts")
        if type(seq) is not int or seq < 1:
            raise _Malformed(f"{topic}: seq must be an integer >= 1, got {seq!r}")
        if not isinstance(run_id, str) or not run_id:
            raise _Malformed(f"{topic}: run_id must be a non-empty string, got {run_id!r}")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise _Malformed(f"{topic}: ts must be a number, got {ts!r}")
        if payload.get("topic") != topic:
            raise _Malformed(f"{topic}: payload topic is {payload.get('topic')!r}")
        run = self._track(run_id, seq)
        if not (self._match_all or topic.startswith(self.prefixes)):
            return None
        gap, run.unreported = run.unreported, 0
        self.received += 1
        return ReceivedEvent(
            topic=topic, payload=payload, raw=raw, seq=seq, run_id=run_id, ts=float(ts), gap=gap
        )

    def _track(self, run_id: str, seq: int) -> _Run:
        """Note `seq` of `run_id`; a jump adds the events skipped to the run's unreported gap."""
        run = self._runs.pop(run_id, None)
        if run is None:
            # First event seen of this run (we joined late, or the daemon restarted): no gap.
            run = _Run(last_seq=seq)
        elif seq > run.last_seq:
            missed = seq - run.last_seq - 1
            run.unreported += missed
            self.missed += missed
            run.last_seq = seq
        # Re-inserted last: the dict stays ordered by recent use, so the oldest run is evicted.
        self._runs[run_id] = run
        if len(self._runs) > _MAX_RUNS:
            del self._runs[next(iter(self._runs))]
        return run

    def _drain_monitor(self) -> None:
        while True:
            try:
                message = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            endpoint = message["endpoint"].decode(errors="replace")
            if endpoint not in self.endpoints:
                continue
            if message["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected.add(endpoint)
                self._ever_connected.add(endpoint)
            elif message["event"] == zmq.EVENT_DISCONNECTED:
                self._connected.discard(endpoint)
                self.disconnects += 1
                logger.info(
                    "events connection to {} lost (publisher stopped, or sent a frame over the "
                    "size limit); reconnecting",
                    endpoint,
                )
                self._redial(endpoint)

    def _redial(self, endpoint: str) -> None:
        # After a normal disconnect ZeroMQ re-dials by itself, after a protocol error it gives
        # up; dropping the endpoint and connecting again covers both without a duplicate link.
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disconnect(endpoint)
        self._connect(endpoint)
