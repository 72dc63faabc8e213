"""Forwarding the daemon's events to an alerting stack (SPEC §12): a webhook or a command.

An `AlertForwarder` receives events on one thread and delivers them on another, through a
bounded queue: receiving never waits for a slow receiver. When the queue is full the oldest
alert waiting is dropped (and an alert says how many were). A delivery that fails for a reason
that may pass (connection refused, timeout, 5xx, 429) is retried with exponential back-off for
as long as it takes; a refusal that will not pass (other 4xx, a command that exits non-zero) is
logged and the alert dropped. Gaps in an event stream's `seq` become an alert of their own.

Each alert is the event's JSON object plus a `text` line for chat tools
(`[host] node.exited: pid 4242 killed by signal 9 (unexpected)`).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec
from loguru import logger

from wemixvisor.events.subscriber import ReceivedEvent
from wemixvisor.home.fsutil import atomic_write_bytes, read_capped

__all__ = [
    "AlertForwarder",
    "DeliveryError",
    "ExecSink",
    "Sink",
    "WebhookSink",
    "alert_text",
]

_ENVELOPE = frozenset({"topic", "seq", "run_id", "ts", "text"})
_MAX_TEXT_VALUE = 120
_RETRYABLE_STATUS = frozenset({408, 425, 429})
_encode = msgspec.json.Encoder().encode


class Receiver(Protocol):
    """What the forwarder reads events from: a subscriber, or a follower replaying first."""

    def receive(self, timeout: float | None = None) -> ReceivedEvent | None:
        """The next event, or None after `timeout` seconds without one."""


class DeliveryError(Exception):
    """A delivery that failed; `retry` says whether trying again may succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    """Where alerts go."""

    def describe(self) -> str:
        """What the operator reads in logs, e.g. the URL."""

    def deliver(self, alert: Mapping[str, Any]) -> None:
        """Deliver one alert, or raise DeliveryError."""


class WebhookSink:
    """POSTs each alert as a JSON object to `url`."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http:// or https://, got {url[:80]!r}")
        self.url = url
        self.timeout = timeout

    def describe(self) -> str:
        """The URL."""
        return self.url

    def deliver(self, alert: Mapping[str, Any]) -> None:
        """POST `alert`; 2xx is delivered."""
        body = _encode(alert)
        req = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "wemixvisor-alert"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:  # noqa: S310
                response.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in _RETRYABLE_STATUS
            raise DeliveryError(f"{self.url} answered HTTP {exc.code}", retry=retry) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DeliveryError(f"{self.url}: {reason}", retry=True) from None


class ExecSink:
    """Runs `argv` (no shell) for each alert, with the alert's JSON on its stdin."""

    def __init__(self, argv: list[str], timeout: float = 30.0) -> None:
        if not argv:
            raise ValueError("--exec needs a command")
        self.argv = argv
        self.timeout = timeout

    def describe(self) -> str:
        """The command line."""
        return " ".join(self.argv)

    def deliver(self, alert: Mapping[str, Any]) -> None:
        """Run the command; exit status 0 is delivered."""
        try:
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise DeliveryError(f"cannot run {self.argv[0]}: {exc}", retry=False) from None
        try:
            _, stderr = process.communicate(_encode(alert) + b"\n", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # Its whole session: a shell script's children must not outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise DeliveryError(
                f"{self.argv[0]} did not finish within {self.timeout:g}s", retry=False
            ) from None
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-300:]
            raise DeliveryError(
                f"{self.argv[0]} exited with {process.returncode}" + (f": {tail}" if tail else ""),
                retry=False,
            )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else _encode(value).decode()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= _MAX_TEXT_VALUE else text[: _MAX_TEXT_VALUE - 1] + "…"


def _how_exited(payload: Mapping[str, Any]) -> str:
    if payload.get("signal") is not None:
        return f"killed by signal {payload['signal']}"
    return f"exit code {payload.get('exit_code')}"


def alert_text(payload: Mapping[str, Any], host: str) -> str:
    """One line a person reads in a chat tool."""
    topic = str(payload.get("topic", "?"))
    p = payload
    match topic:
        case "node.exited":
            expected = "expected" if p.get("expected") else "unexpected"
            summary = f"pid {p.get('pid')} {_how_exited(p)} ({expected})"
        case "node.running":
            summary = f"pid {p.get('pid')} running after {p.get('startup_seconds', 0):.2f}s"
        case "node.fatal":
            summary = f"node down for good: {_short(p.get('reason'))}; `wemixvisor start` retries"
        case "upgrade.failed":
            summary = (
                f"{p.get('name')} at height {p.get('height')} failed in {p.get('step')}: "
                f"{_short(p.get('reason'))}"
            )
        case "upgrade.completed":
            summary = (
                f"{p.get('name')} at height {p.get('height')} completed, "
                f"downtime {p.get('downtime_seconds', 0):.2f}s"
            )
        case "rpc.unavailable":
            summary = f"{p.get('address')} does not answer: {_short(p.get('error'))}"
        case "alert.missed_events":
            summary = f"missed {p.get('missed')} events of daemon run {str(p.get('run_id'))[:8]}"
        case "alert.dropped":
            summary = f"dropped {p.get('dropped')} alerts: the receiver could not keep up"
        case _:
            fields = [f"{key}={_short(value)}" for key, value in p.items() if key not in _ENVELOPE]
            summary = " ".join(fields)
    return f"[{host}] {topic}: {summary}".rstrip(": ")


class DeliveryCursor:
    """Where a forwarder stands: the `(run_id, seq)` of the last event it delivered, kept in a
    small file so that a restarted forwarder resumes from there (at-least-once: an event whose
    delivery was not yet recorded is delivered again).

    A missing, unreadable or hostile file means "no position": the forwarder follows live."""

    MAX_BYTES = 4096

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[str, int] | None:
        """The last delivered position, or None (with a warning when the file is bad)."""
        try:
            raw = read_capped(self.path, self.MAX_BYTES)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("alert cursor {} unreadable ({}); following live events", self.path, exc)
            return None
        try:
            position = msgspec.json.decode(raw, type=_Position)
        except (msgspec.DecodeError, RecursionError) as exc:
            logger.warning("alert cursor {} is not a position ({}); following live", self.path, exc)
            return None
        if not position.run_id or position.seq < 1:
            return None
        return position.run_id, position.seq

    def save(self, run_id: str, seq: int) -> None:
        """Record a delivered event; a failed write is logged (the next one may succeed)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_bytes(self.path, msgspec.json.encode(_Position(run_id, seq)), mode=0o600)
        except OSError as exc:
            logger.warning("alert cursor {} not written: {}", self.path, exc)


class _Position(msgspec.Struct):
    run_id: str
    seq: int


class AlertForwarder:
    """Forwards the events `subscriber` receives to `sink`, until `run`'s stop event is set.

    `subscriber` is anything with `receive(timeout)` (an EventSubscriber, or an EventFollower
    that replays the journal first). With a `cursor`, each delivered event's position is
    recorded there. Counters: `forwarded` (delivered), `failed` (given up), `dropped` (queue
    overflow), `missed` (events lost upstream, from seq gaps).
    """

    def __init__(
        self,
        subscriber: Receiver,
        sink: Sink,
        *,
        queue_size: int = 1000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        host: str | None = None,
        cursor: DeliveryCursor | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.cursor = cursor
        self.sink = sink
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.host = host or socket.gethostname()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._ready = threading.Condition()
        self._unreported_drops = 0
        self.forwarded = 0
        self.failed = 0
        self.dropped = 0
        self.missed = 0

    def run(self, stop: threading.Event) -> None:
        """Receive and deliver until `stop` is set (then return promptly)."""
        sender = threading.Thread(target=self._send_loop, args=(stop,), name="alert-sender")
        sender.start()
        try:
            while not stop.is_set():
                event = self.subscriber.receive(timeout=0.2)
                if event is not None:
                    self.accept(event)
        finally:
            stop.set()
            with self._ready:
                self._ready.notify_all()
            sender.join()
            if self._queue:
                logger.warning("{} alerts were not delivered before stopping", len(self._queue))

    def accept(self, event: ReceivedEvent) -> None:
        """Queue the alerts for one received event (never waits)."""
        if event.gap:
            self.missed += event.gap
            self._enqueue(
                {
                    "topic": "alert.missed_events",
                    "missed": event.gap,
                    "run_id": event.run_id,
                    "ts": time.time(),
                }
            )
        self._enqueue(dict(event.payload))

    def _enqueue(self, payload: dict[str, Any]) -> None:
        payload["text"] = alert_text(payload, self.host)
        with self._ready:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                self._unreported_drops += 1
            self._queue.append(payload)
            self._ready.notify()

    def _next(self, stop: threading.Event) -> dict[str, Any] | None:
        with self._ready:
            while not self._queue and not self._unreported_drops and not stop.is_set():
                self._ready.wait()
            if stop.is_set():
                return None
            if self._unreported_drops:
                dropped, self._unreported_drops = self._unreported_drops, 0
                alert: dict[str, Any] = {"topic": "alert.dropped", "dropped": dropped}
                alert["ts"] = time.time()
                alert["text"] = alert_text(alert, self.host)
                return alert
            return self._queue.popleft()

    def _send_loop(self, stop: threading.Event) -> None:
        while (alert := self._next(stop)) is not None:
            self._deliver(alert, stop)

    def _deliver(self, alert: dict[str, Any], stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                self.sink.deliver(alert)
            except DeliveryError as exc:
                if not exc.retry:
                    self.failed += 1
                    logger.error("alert {} not delivered: {}", alert.get("topic"), exc)
                    return
                delay = min(self.backoff_max, self.backoff_initial * 2 ** min(attempt, 30))
                attempt += 1
                logger.warning(
                    "alert {} not delivered ({}); retry #{} in {:.1f}s",
                    alert.get("topic"),
                    exc,
                    attempt,
                    delay,
                )
                stop.wait(delay)
                continue
            self.forwarded += 1
            self._record(alert)
            return
        # Stopping while retrying: the alert goes back so that the count of undelivered is right.
        with self._ready:
            self._queue.appendleft(alert)

    def _record(self, alert: Mapping[str, Any]) -> None:
        run_id, seq = alert.get("run_id"), alert.get("seq")
        if self.cursor is not None and isinstance(run_id, str) and type(seq) is int:
            self.cursor.save(run_id, seq)
