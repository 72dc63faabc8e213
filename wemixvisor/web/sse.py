"""`GET /api/v1/events`: a daemon's events as Server-Sent Events — journal replay, then live.

Each client has its own follower (`events.follow.EventFollower`: its own SUB socket, the
journal read through the daemon's `events` verb) on its own thread, feeding a bounded queue
that the response drains: a slow client fills only its own queue (its follower then waits, its
socket overflows, and the gap is read back from the journal), never anyone else's.

Frames: `id: <run_id>:<seq>` and `data: <the event's JSON>`; a comment line every `heartbeat`
seconds keeps proxies from closing an idle stream. A replay that cannot start (a `since` the
journal no longer holds) ends the stream with an `event: error` frame holding the error body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import zmq
from loguru import logger

from wemixvisor.control.client import ControlUnreachable
from wemixvisor.control.protocol import ControlError
from wemixvisor.events.follow import EventFollower
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent
from wemixvisor.web.errors import ErrorBody, ErrorReply
from wemixvisor.web.fleet import DaemonLink

__all__ = ["QUEUE_EVENTS", "event_stream", "frame"]

QUEUE_EVENTS: Final = 512
"""Events waiting for one slow client before its follower stops reading."""

_RETRY_SECONDS: Final = 1.0  # a silent daemon is asked again this often
_POLL_SECONDS: Final = 0.25  # how soon a follower notices that its client left


def frame(event: ReceivedEvent) -> bytes:
    """One SSE frame of `event`."""
    return b"id: %s:%d\ndata: %s\n\n" % (event.run_id.encode(), event.seq, event.raw)


def _error_frame(code: str, message: str) -> bytes:
    body = msgspec.json.encode(ErrorReply(ErrorBody(code=code, message=message)))
    return b"event: error\ndata: %s\n\n" % body


class _Follow(threading.Thread):
    """The follower of one client, on its own thread."""

    def __init__(
        self,
        link: DaemonLink,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        since: int | None,
        run: str | None,
        prefixes: list[str],
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[bytes | None],
    ) -> None:
        super().__init__(name=f"sse-{link.id}", daemon=True)
        self.link = link
        self.context = context
        self.since = since
        self.run_id = run
        self.prefixes = prefixes
        self.loop = loop
        self.queue = queue
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._follow()
        except Exception:  # noqa: BLE001 - one client's stream ends, the console goes on
            logger.exception("events stream of {} failed", self.link.id)
            self._put(_error_frame("internal", "the events stream failed; reconnect"))
        finally:
            self._put(None)

    def _follow(self) -> None:
        endpoint = None
        while endpoint is None and not self.stopping.is_set():
            try:
                endpoint = self.link.learn_events_endpoint()
            except (ControlError, ControlUnreachable, LookupError) as exc:
                logger.debug("events of {}: {}", self.link.id, exc)
                self.stopping.wait(_RETRY_SECONDS)
        if endpoint is None:
            return
        subscriber = EventSubscriber([endpoint], context=self.context)
        follower = EventFollower(
            self.link.fetch_page,
            subscriber,
            since=self.since,
            since_run=self.run_id,
            prefixes=self.prefixes,
        )
        try:
            while not self.stopping.is_set():
                try:
                    event = follower.receive(_POLL_SECONDS)
                except ControlUnreachable:
                    self.stopping.wait(_RETRY_SECONDS)  # replay again once the daemon is back
                    continue
                except ControlError as exc:
                    self._put(_error_frame(exc.code, exc.message))
                    return
                if event is not None and not self._put(frame(event)):
                    return
        finally:
            follower.close()

    def _put(self, item: bytes | None) -> bool:
        """Hand `item` to the response; False when the client has gone."""
        try:
            pending = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        except RuntimeError:  # the loop is closed: the console is stopping
            return False
        while True:
            try:
                pending.result(timeout=_POLL_SECONDS)
                return True
            except concurrent.futures.TimeoutError:
                if self.stopping.is_set():
                    pending.cancel()
                    return False


async def event_stream(
    link: DaemonLink,
    context: zmq.Context[zmq.Socket[bytes]],
    *,
    since: int | None,
    run: str | None,
    prefixes: list[str],
    heartbeat: float,
) -> AsyncIterator[bytes]:
    """The SSE body for one client: frames until the client leaves."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_EVENTS)
    follow = _Follow(
        link,
        context,
        since=since,
        run=run,
        prefixes=prefixes,
        loop=asyncio.get_running_loop(),
        queue=queue,
    )
    follow.start()
    try:
        yield b"retry: 2000\n: replaying then following the events of %s\n\n" % link.id.encode()
        beat_due = time.monotonic() + heartbeat
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), max(beat_due - time.monotonic(), 0))
            except TimeoutError:
                beat_due = time.monotonic() + heartbeat
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            yield item
    finally:
        follow.stopping.set()
