"""The events PUB socket (SPEC §10): stamps each event's envelope and sends it without blocking.

Wire format: multipart `[topic, payload]`, the topic UTF-8 `<domain>.<event>`, the payload the
msgspec-JSON object of the event including `topic`, `seq`, `run_id` and `ts`.

Every stamped event is also appended to the on-disk event journal (when one is given), so a late
or restarted subscriber can replay what the socket dropped before it joined, and handed to an
in-process listener (the metrics exporter) without going through the socket.

Binding follows SPEC §11: an ipc socket file is made 0600 inside a directory we create 0700, and
a tcp endpoint must be a loopback address (events carry no authentication yet).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import msgspec
import zmq
from loguru import logger

from wemixvisor.events.journal import EventJournal
from wemixvisor.home.ipc import EndpointError, is_loopback_host, prepare_socket_file
from wemixvisor.messages.events import Event

DEFAULT_SEND_HWM = 10_000

EventListener = Callable[[Event, bytes], None]
"""Told every stamped event and its encoded payload, on the publisher's thread: must be quick."""

# sun_path is 108 bytes on Linux, including the terminating NUL.
_UNIX_PATH_MAX = 107


class PublisherStats(NamedTuple):
    """Counters of one publisher: events handed to ZeroMQ, and events it refused."""

    published: int
    dropped: int


def check_bind_endpoint(endpoint: str) -> None:
    """Raise `EndpointError` unless `endpoint` is one the daemon may bind for events.

    Accepted: `ipc:///absolute/path` (or a relative path, or `ipc://@name` in Linux's abstract
    namespace) and `tcp://HOST:PORT` where HOST is loopback (127.0.0.0/8, ::1, localhost) and PORT
    a number or `*`.
    """
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise EndpointError(f"events endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")
    if scheme == "ipc":
        if "\0" in address:
            raise EndpointError(f"events endpoint {endpoint!r}: path contains a NUL byte")
        if len(os.fsencode(address)) > _UNIX_PATH_MAX:
            raise EndpointError(
                f"events endpoint {endpoint!r}: path longer than {_UNIX_PATH_MAX} bytes, "
                "the limit of a unix socket path"
            )
        return
    if scheme == "tcp":
        host, _port = _tcp_host_port(endpoint, address)
        if not is_loopback_host(host):
            raise EndpointError(
                f"refusing to bind events endpoint {endpoint}: {host} is not a loopback address "
                "and the events socket has no authentication; use ipc:// or tcp://127.0.0.1:PORT"
            )
        return
    raise EndpointError(f"events endpoint {endpoint!r}: transport {scheme!r} is not supported")


def _tcp_host_port(endpoint: str, address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = address.rpartition(":")
    if not host or not (port == "*" or (port.isascii() and port.isdigit())):
        raise EndpointError(f"events endpoint {endpoint!r}: expected tcp://HOST:PORT")
    return host, port


class EventPublisher:
    """One ZeroMQ PUB socket that broadcasts events; use it from a single thread.

    `publish` never blocks and never raises: a send ZeroMQ refuses is counted in `dropped`.
    A PUB socket drops silently for a subscriber whose queue (SNDHWM) is full, so such losses
    are not counted here; that subscriber sees them as a gap in `seq`.
    """

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = DEFAULT_SEND_HWM,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        *,
        journal: EventJournal | None = None,
        listener: EventListener | None = None,
    ) -> None:
        check_bind_endpoint(endpoint)
        if send_hwm < 1:
            raise ValueError(f"send_hwm must be at least 1, got {send_hwm}")
        self.endpoint = endpoint
        self.send_hwm = send_hwm
        self.run_id = uuid.uuid4().hex
        self.published = 0
        self.dropped = 0
        self._seq = 0
        self._shared_context = context
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._socket_file: Path | None = None
        self._socket_file_id: tuple[int, int] | None = None
        self._encoder = msgspec.json.Encoder()
        self._dropping = False
        self._journal = journal
        self._listener = listener

    @property
    def bound_endpoint(self) -> str | None:
        """The endpoint actually bound (resolves `tcp://127.0.0.1:*`); None before `bind`."""
        if self._socket is None:
            return None
        last = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(last, bytes)
        return last.decode()

    def stats(self) -> PublisherStats:
        """The `published` and `dropped` counters."""
        return PublisherStats(self.published, self.dropped)

    def bind(self) -> None:
        """Create the socket and bind it; raises `EndpointError` if the endpoint is unusable.

        The event journal is opened first: an unusable journal directory is logged, and the
        events are still published."""
        if self._socket is not None:
            raise RuntimeError(f"events publisher already bound to {self.endpoint}")
        if self._journal is not None:
            try:
                self._journal.open()
            except OSError as exc:
                logger.error("event journal {} unusable: {}", self._journal.directory, exc)
                self._journal = None
        socket_file = self._prepare_ipc_file()
        self._context = zmq.Context() if self._shared_context is None else self._shared_context
        sock = self._context.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        # Undelivered events are worth nothing once the daemon stops; never delay its exit.
        sock.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._release_context()
            raise EndpointError(f"cannot bind events endpoint {self.endpoint}: {exc}") from exc
        self._socket = sock
        if socket_file is not None:
            # Between bind and chmod the file has the umask's mode; the 0700 directory keeps
            # other users out during that moment.
            os.chmod(socket_file, 0o600)
            st = os.lstat(socket_file)
            self._socket_file = socket_file
            self._socket_file_id = (st.st_dev, st.st_ino)
        logger.info("publishing events on {} (run {})", self.bound_endpoint, self.run_id[:8])

    def publish(self, event: Event) -> Event:
        """Stamp `event` with the next `seq`, this run's `run_id` and `ts`, send it; return it.

        The seq is taken even when the send is dropped: seq numbers identify events the daemon
        published, so a dropped one shows as a gap to subscribers instead of vanishing unseen.
        """
        self._seq += 1
        stamped = msgspec.structs.replace(event, seq=self._seq, run_id=self.run_id, ts=time.time())
        try:
            payload = self._encoder.encode(stamped)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            # A producer put a value of the wrong type in a field: lose the event, not the daemon.
            self._count_drop(stamped, f"cannot encode: {exc}")
            return stamped
        if self._journal is not None:
            self._journal.append(payload)
        if self._listener is not None:
            try:
                self._listener(stamped, payload)
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the event
                logger.exception("event listener failed on {} seq {}", stamped.topic, stamped.seq)
        if self._socket is None:
            self._count_drop(stamped, "socket not bound")
            return stamped
        try:
            self._socket.send_multipart([stamped.topic.encode(), payload], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # zmq.Again included
            self._count_drop(stamped, str(exc))
            return stamped
        self.published += 1
        self._dropping = False
        return stamped

    def close(self) -> None:
        """Close the socket (pending events are discarded) and remove the ipc socket file."""
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close(linger=0)
        if self._journal is not None:
            self._journal.close()
        self._release_context()
        self._remove_socket_file()

    def _count_drop(self, event: Event, reason: str) -> None:
        self.dropped += 1
        # One line when drops start, not one per event: a stuck socket would flood the log.
        if not self._dropping:
            logger.warning("dropping events ({}), first: {} seq {}", reason, event.topic, event.seq)
            self._dropping = True

    def _release_context(self) -> None:
        context, self._context = self._context, None
        # Terminating our own context waits until the listener is really closed, so the endpoint
        # can be bound again at once; a shared context belongs to its creator.
        if context is not None and context is not self._shared_context:
            context.term()

    def _prepare_ipc_file(self) -> Path | None:
        """Make the socket's directory private and clear a stale socket file; the file path."""
        return prepare_socket_file(self.endpoint, "events")

    def _remove_socket_file(self) -> None:
        path, file_id = self._socket_file, self._socket_file_id
        self._socket_file = self._socket_file_id = None
        if path is None:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        # Only our own file: a successor may already have bound a new socket at this path.
        if (st.st_dev, st.st_ino) == file_id:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
