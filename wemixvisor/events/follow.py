"""Replay from the journal, then follow the live PUB socket with no gap and no repeat (SPEC §10).

The live socket is subscribed FIRST and read only after the replay: what is published while the
journal is being read waits in the socket. Every event is identified by `(run_id, seq)`; one
already delivered is dropped, and when the live stream jumps (a seq skipped because a slow
reader overflowed the socket, the moment before the subscription took, a daemon restart) the
missing events are read from the journal before the live one is delivered. Events the journal
does not hold either are reported as the `gap` of the next event.

The journal is read through the daemon's `events` control verb, page by page: `fetch_page` sends
one `Events` request and returns its reply (ControlError / ControlUnreachable when it cannot).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from loguru import logger

from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError, Events, new_request_id
from wemixvisor.control.verbs import EVENTS
from wemixvisor.control.verbs.replies import EventsReply
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent

__all__ = ["PAGE_SIZE", "EventFollower", "FetchPage", "journal_pages"]

PAGE_SIZE: Final = 1000
"""Events asked for per `events` request."""

FetchPage = Callable[[Events], EventsReply]
"""Sends one `events` request to the daemon and returns its reply."""

_encode: Final = msgspec.json.Encoder().encode


def journal_pages(client: ControlClient) -> FetchPage:
    """`fetch_page` over a control client of the daemon."""

    def fetch_page(request: Events) -> EventsReply:
        return EVENTS.decode_reply(client.request(request))

    return fetch_page


class EventFollower:
    """Events of one daemon, replayed from `since` (seq, inclusive) of run `since_run`, then live.

    Without `since` and `since_run` nothing is replayed: the follower starts with the live
    stream (and still fills gaps in it from the journal). `prefixes` filter the topics returned
    (all when empty); every topic counts for gap detection, as `seq` counts every topic.
    Use from one thread; close when done.
    """

    def __init__(
        self,
        fetch_page: FetchPage,
        subscriber: EventSubscriber,
        *,
        since: int | None = None,
        since_run: str | None = None,
        prefixes: Iterable[str] = (),
    ) -> None:
        self._fetch_page = fetch_page
        self.subscriber = subscriber
        self.prefixes = tuple(prefix for prefix in prefixes if prefix)
        self._ready: collections.deque[ReceivedEvent] = collections.deque()
        self._last: dict[str, int] = {}  # run_id -> last seq delivered (or skipped by prefix)
        self._run: str | None = None  # the run of the last event delivered
        self._replaying = since is not None or since_run is not None
        self._cursor: tuple[str | None, int | None] = (since_run, since)
        self.replayed = 0
        self.filled = 0
        self.missed = 0

    def receive(self, timeout: float | None = None) -> ReceivedEvent | None:
        """The next event (replayed or live), or None when `timeout` seconds pass without one.

        ControlError / ControlUnreachable when the initial replay cannot be read (a `since` the
        journal no longer holds, no daemon answering)."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            while self._ready:
                event = self._ready.popleft()
                if self._wanted(event.topic):
                    return event
            if self._replaying:
                self._replay_page()
                continue
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            live = self.subscriber.receive(left)
            if live is None:
                return None
            self._take_live(live)
            if deadline is not None and time.monotonic() >= deadline and not self._ready:
                return None

    def close(self) -> None:
        """Close the live socket."""
        self.subscriber.close()

    def _wanted(self, topic: str) -> bool:
        return not self.prefixes or topic.startswith(self.prefixes)

    def _replay_page(self) -> None:
        run, since = self._cursor
        reply = self._fetch_page(Events(id=new_request_id(), since=since, run=run, limit=PAGE_SIZE))
        last, _reached = self._queue_journaled(reply.events, until=None)
        if last is not None:
            self._cursor = (last[0], last[1] + 1)
        elif reply.run_id is not None and self._run is None:
            # Nothing journaled from there yet: live events from that point on are expected,
            # and what they skip is read from the journal.
            self._run = reply.run_id
            self._last.setdefault(reply.run_id, (since or 1) - 1)
        self._replaying = reply.more and last is not None

    def _take_live(self, live: ReceivedEvent) -> None:
        if self._seen(live.run_id, live.seq):
            return
        gap = 0
        if self._run is not None:
            last = self._last.get(self._run, 0)
            if live.run_id != self._run or live.seq > last + 1:
                self._fill(until=(live.run_id, live.seq))
            if live.run_id == self._run:
                gap = max(live.seq - self._last.get(live.run_id, 0) - 1, 0)
            elif live.run_id not in self._last and live.seq > 1:
                # A new run whose first events the journal did not give.
                gap = live.seq - 1
        self.missed += gap
        self._deliver(_with_gap(live, gap))

    def _fill(self, until: tuple[str, int]) -> None:
        """Queue what the journal holds between the last event delivered and `until`."""
        assert self._run is not None
        run: str | None = self._run
        since: int | None = self._last.get(self._run, 0) + 1
        while True:
            try:
                reply = self._fetch_page(
                    Events(id=new_request_id(), since=since, run=run, limit=PAGE_SIZE)
                )
            except (ControlError, ControlUnreachable) as exc:
                logger.info("events: cannot fill a gap from the journal: {}", exc)
                return
            last, reached = self._queue_journaled(reply.events, until=until)
            if reached or last is None or not reply.more:
                return
            run, since = last[0], last[1] + 1

    def _queue_journaled(
        self, events: list[dict[str, Any]], until: tuple[str, int] | None
    ) -> tuple[tuple[str, int] | None, bool]:
        """Queue the journaled `events` not yet delivered, up to (not including) `until`; the
        position of the last one read, and whether `until` was reached."""
        last: tuple[str, int] | None = None
        for payload in events:
            event = _from_journal(payload)
            if event is None:
                continue
            position = (event.run_id, event.seq)
            if until is not None and position == until:
                return last, True
            last = position
            if self._seen(event.run_id, event.seq):
                continue
            if until is None:
                self.replayed += 1
            else:
                self.filled += 1
            self._deliver(event)
        return last, False

    def _seen(self, run_id: str, seq: int) -> bool:
        return seq <= self._last.get(run_id, 0)

    def _deliver(self, event: ReceivedEvent) -> None:
        self._last[event.run_id] = event.seq
        self._run = event.run_id
        self._ready.append(event)


def _with_gap(event: ReceivedEvent, gap: int) -> ReceivedEvent:
    if event.gap == gap:
        return event
    return ReceivedEvent(
        topic=event.topic,
        payload=event.payload,
        raw=event.raw,
        seq=event.seq,
        run_id=event.run_id,
        ts=event.ts,
        gap=gap,
    )


def _from_journal(payload: dict[str, Any]) -> ReceivedEvent | None:
    seq, run_id, ts, topic = (payload.get(k) for k in ("seq", "run_id", "ts", "topic"))
    if type(seq) is not int or seq < 1 or not isinstance(run_id, str) or not run_id:
        return None
    if not isinstance(topic, str) or not isinstance(ts, int | float) or isinstance(ts, bool):
        return None
    return ReceivedEvent(
        topic=topic,
        payload=payload,
        raw=_encode(payload),
        seq=seq,
        run_id=run_id,
        ts=float(ts),
        gap=0,
    )
