"""The `events` verb: a page of the on-disk event journal (SPEC §10, §11).

ZeroMQ PUB drops what was published before a subscriber joined; a late subscriber (the CLI's
`events --since`, the web console's Server-Sent Events) reads what it missed here, page by page,
then follows the live socket (`wemixvisor.events.follow`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec

from wemixvisor.control.protocol import ControlError, ErrorCode, Events
from wemixvisor.control.verbs.base import Verb
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.replies import EventsReply
from wemixvisor.events.journal import JournalReplayError, replay
from wemixvisor.home.layout import Home

__all__ = ["MAX_PAGE_BYTES", "EventsVerb", "journal_dir"]

MAX_PAGE_BYTES: Final = 4 * 1024 * 1024
"""A page stops (with `more`) once its payloads reach this size, well inside a reply frame."""

_decode_payload: Final = msgspec.json.Decoder(dict[str, Any]).decode


def journal_dir(home: Home) -> Path:
    """Where the daemon of `home` journals its events: `state/events/`."""
    return home.state_dir / "events"


class EventsVerb(Verb[ControlContext, Events, EventsReply]):
    """`events`: journaled events from a position on (a replay error is `bad_request`)."""

    request_type = Events
    reply_type = EventsReply
    summary = "Journaled events from seq `since` of run `run` (default: the newest run) on."

    def execute(self, ctx: ControlContext, request: Events) -> EventsReply:
        return read_page(journal_dir(ctx.home), request)

    def render(self, reply: EventsReply) -> str:
        lines = [msgspec.json.encode(event).decode() for event in reply.events]
        if reply.more:
            lines.append("(more in the journal)")
        return "\n".join(lines)


def _newest_run(directory: Path) -> str | None:
    for position, _line in replay(directory):
        return position.run_id
    return None


def read_page(directory: Path, request: Events) -> EventsReply:
    """One page of the journal in `directory` as `request` asks for it."""
    events: list[dict[str, Any]] = []
    size = 0
    run_id: str | None = None
    more = False
    try:
        for position, line in replay(directory, since_seq=request.since, since_run=request.run):
            if run_id is None:
                run_id = position.run_id
            if len(events) >= request.limit or (events and size + len(line) > MAX_PAGE_BYTES):
                more = True
                break
            events.append(_decode_payload(line))
            size += len(line)
    except JournalReplayError as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if run_id is None:
        run_id = request.run if request.run is not None else _newest_run(directory)
    return EventsReply(events=events, more=more, run_id=run_id)
