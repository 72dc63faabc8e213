"""EventsActor: owns the events PUB socket and the event journal; every other actor tells it the
events to broadcast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.events.journal import EventJournal
from wemixvisor.events.publisher import (
    DEFAULT_SEND_HWM,
    EventListener,
    EventPublisher,
    PublisherStats,
)
from wemixvisor.messages.events import Event, PublishHeartbeat, SupervisorHeartbeat


class EventsActor(SupervisedActor):
    """Publishes the events it is told; the socket lives and dies on this actor's thread.

    Messages: an `Event` is stamped and sent; `PublishHeartbeat` becomes `supervisor.heartbeat`
    with this actor's counters. `stats()` (through a proxy) returns `(published, dropped)`.
    """

    role = "events"

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = DEFAULT_SEND_HWM,
        failure_sink: FailureSink | None = None,
        *,
        journal_dir: Path | None = None,
        listener: EventListener | None = None,
    ) -> None:
        super().__init__(failure_sink)
        # Constructed here so that a refused endpoint fails `EventsActor.start()` in the caller;
        # the socket and the journal's file are opened in `setup`, on the actor's thread.
        journal = EventJournal(journal_dir) if journal_dir is not None else None
        self._publisher = EventPublisher(endpoint, send_hwm, journal=journal, listener=listener)

    def setup(self) -> None:
        self._publisher.bind()

    def release(self) -> None:
        # Also after a failure: the endpoint must be free for the replacement actor.
        self._publisher.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Event):
            self._publisher.publish(message)
            return None
        if isinstance(message, PublishHeartbeat):
            self._publisher.publish(
                SupervisorHeartbeat(
                    uptime=message.uptime,
                    node_state=message.node_state,
                    events_published=self._publisher.published,
                    events_dropped=self._publisher.dropped,
                )
            )
            return None
        return super().on_receive(message)

    def stats(self) -> PublisherStats:
        """`(published, dropped)` of this actor's publisher."""
        return self._publisher.stats()

    @property
    def run_id(self) -> str:
        """This daemon run's id, carried by every event it publishes."""
        return self._publisher.run_id
