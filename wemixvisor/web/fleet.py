"""The daemons one console watches: each a client of one daemon's control socket.

A daemon's id is the NAME given as `--connect NAME=ENDPOINT`, else `d-` and the first 8 hex
digits of the SHA-256 of its control endpoint: the same endpoint keeps its id across console
restarts, whatever the order of `--connect`. The first daemon is the one the unprefixed routes
address. Its events endpoint is learned by asking it (`version` reply), again after a failure.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from wemixvisor.control.client import ControlClient
from wemixvisor.control.protocol import Events, Request, Version, new_request_id
from wemixvisor.control.security import client_keys_for
from wemixvisor.control.verbs import EVENTS, VERSION
from wemixvisor.control.verbs.replies import EventsReply

__all__ = ["DaemonLink", "Fleet", "daemon_id", "parse_connect"]

_NAME_RE: Final = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")


def daemon_id(endpoint: str) -> str:
    """The stable id of the daemon at control `endpoint`."""
    return "d-" + hashlib.sha256(endpoint.encode()).hexdigest()[:8]


def parse_connect(value: str) -> tuple[str, str]:
    """`NAME=ENDPOINT` or `ENDPOINT` → (id, endpoint); ValueError for a bad name."""
    name, sep, endpoint = value.partition("=")
    if not sep or "://" in name:
        return daemon_id(value), value
    if not _NAME_RE.match(name):
        raise ValueError(f"daemon name {name!r}: use 1-32 of a-z 0-9 _ - (starting a-z or 0-9)")
    return name, endpoint


def _reachable_events(events: str, control: str) -> str:
    """A daemon bound to every interface publishes on `tcp://*:P`; connect to its control host."""
    if not events.startswith("tcp://"):
        return events
    host, _, port = events.removeprefix("tcp://").rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::") and control.startswith("tcp://"):
        control_host = control.removeprefix("tcp://").rpartition(":")[0]
        return f"tcp://{control_host}:{port}"
    return events


@dataclass
class DaemonLink:
    """One daemon: its id, control client, and events endpoint (None until learned)."""

    id: str
    control_endpoint: str
    client: ControlClient
    events_endpoint: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, request: Request) -> Any:
        """One control request (blocking): its result; ControlError / ControlUnreachable."""
        return self.client.request(request)

    def fetch_page(self, request: Events) -> EventsReply:
        """One `events` request: a page of the daemon's journal."""
        return EVENTS.decode_reply(self.call(request))

    def learn_events_endpoint(self) -> str:
        """Where the daemon publishes: what it said last, else asked now (`version`)."""
        with self._lock:
            known = self.events_endpoint
        if known is not None:
            return known
        reply = VERSION.decode_reply(self.call(Version(id=new_request_id())))
        if reply.events_endpoint is None:
            raise LookupError(f"the daemon at {self.control_endpoint} does not name its events")
        endpoint = _reachable_events(reply.events_endpoint, self.control_endpoint)
        with self._lock:
            self.events_endpoint = endpoint
        return endpoint

    def close(self) -> None:
        """Release the control client."""
        self.client.close()


class Fleet:
    """Every daemon of the console, in `--connect` order (ids unique)."""

    def __init__(self, links: list[DaemonLink]) -> None:
        if not links:
            raise ValueError("a console needs at least one daemon")
        self.links = links
        self._by_id: dict[str, DaemonLink] = {}
        for link in links:
            if link.id in self._by_id:
                raise ValueError(f"two daemons have the id {link.id!r}; name them NAME=ENDPOINT")
            self._by_id[link.id] = link

    @classmethod
    def connect(
        cls,
        targets: list[tuple[str, str]],
        keys_dir: Path,
        timeout: float,
        events_endpoints: dict[str, str] | None = None,
    ) -> Fleet:
        """Clients of the daemons `(id, control endpoint)`; `events_endpoints` by id where
        already known (this home's daemon, from its configuration)."""
        known = events_endpoints or {}
        links = [
            DaemonLink(
                id=ident,
                control_endpoint=endpoint,
                client=ControlClient(endpoint, timeout, curve=client_keys_for(endpoint, keys_dir)),
                events_endpoint=known.get(ident),
            )
            for ident, endpoint in targets
        ]
        return cls(links)

    @property
    def first(self) -> DaemonLink:
        """The daemon the unprefixed routes address."""
        return self.links[0]

    def get(self, ident: str) -> DaemonLink | None:
        """The daemon with id `ident`."""
        return self._by_id.get(ident)

    def close(self) -> None:
        """Release every client."""
        for link in self.links:
            link.close()
