"""One kept-alive HTTP/1.1 connection to the node: the transport under web3's HTTP provider.

The head is asked every poll interval for the daemon's whole life, so what one call costs is
what the idle daemon costs. A call is one `sendall` of the request and the reading of one
answer with h11 (a small, well-kept HTTP/1.1 state machine, the one under uvicorn and httpx):
its status line and headers, then a body framed by Content-Length, chunked, or ended by the
close of the connection. Measured on an idle daemon (bench/README.md, crash_restart), a poll
through `requests` cost two to three times the CPU of one through `http.client`, whose header
parsing goes through the email package; h11 parses an answer in tens of microseconds.

Every answer is bounded: headers to `MAX_HEADER_BYTES`, the body to the caller's cap, the whole
call to its timeout (a peer trickling bytes cannot hold a caller). Any failure closes the
connection, so that a late answer is never read as the next call's; the next call connects
again, as it does when the node closed an idle connection (a restart, say).
"""

from __future__ import annotations

import base64
import select
import socket
import ssl
import time
import urllib.parse
import weakref
from typing import Final

import h11

from wemixvisor.chain.rpc import RpcError

__all__ = ["MAX_HEADER_BYTES", "KeptAliveConnection", "Prepared"]

MAX_HEADER_BYTES: Final = 64 * 1024
"""The longest status line and headers read; a node sends a few hundred bytes."""

_READ_CHUNK: Final = 65536


class KeptAliveConnection:
    """POSTs to one http(s) endpoint over one connection, kept open between calls. Not
    thread-safe: the client serialises its calls."""

    def __init__(
        self, endpoint_uri: str, timeout: float, headers: dict[str, str], max_body: int
    ) -> None:
        parts = urllib.parse.urlsplit(endpoint_uri)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise RpcError(f"not an http(s) address with a host and port: {endpoint_uri!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._tls else 80)
        self._timeout = timeout
        self._max_body = max_body
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host += f":{parts.port}"
        fields = {"Host": host, "Accept-Encoding": "identity", **headers}
        if parts.username is not None:
            # http(s)://user:password@host: basic authentication, as requests read it.
            credentials = f"{urllib.parse.unquote(parts.username)}:"
            credentials += urllib.parse.unquote(parts.password or "")
            fields["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        lines = [f"{name}: {value}" for name, value in fields.items()]
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in path) or any(
            c in line for line in lines for c in "\0\r\n"
        ):
            raise RpcError(f"the address cannot be sent in an HTTP request: {endpoint_uri!r}")
        self._target = path.encode("latin-1", "strict")
        self._fields = [
            (name.encode("latin-1", "strict"), value.encode("latin-1", "strict"))
            for name, value in fields.items()
        ]
        # In a list that outlives this object: a client dropped without `close` has its socket
        # closed when it is collected.
        self._slot: list[socket.socket | None] = [None]
        weakref.finalize(self, _close_slot, self._slot)

    def prepare(self, body: bytes) -> Prepared:
        """The request for `body`, made once: send it with `post_prepared` as often as needed."""
        request = h11.Request(
            method=b"POST",
            target=self._target,
            headers=[*self._fields, (b"Content-Length", b"%d" % len(body))],
        )
        return Prepared(request, h11.Data(data=body))

    def post(self, body: bytes) -> bytes:
        """POST `body`; the answer's body (status 200, within the cap and the timeout)."""
        return self.post_prepared(self.prepare(body))

    def post_prepared(self, prepared: Prepared) -> bytes:
        """Send a request made by `prepare`; the answer's body."""
        deadline = time.monotonic() + self._timeout
        sock = self._slot[0]
        if sock is None or _dropped(sock):
            sock = self._connect(deadline)
        try:
            http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            request = http.send(prepared.request) + http.send(prepared.body)
            request += http.send(h11.EndOfMessage())
            sock.settimeout(self._remaining(deadline))
            sock.sendall(request)
            body = _read_answer(http, sock, deadline, self._timeout, self._max_body)
        except h11.ProtocolError as exc:
            self.close()
            raise RpcError(f"malformed HTTP answer: {exc}") from None
        except BaseException:
            self.close()
            raise
        # Reused only when both sides may go on and nothing arrived that nobody asked for.
        leftover, closed = http.trailing_data
        if http.their_state is not h11.DONE or http.our_state is not h11.DONE or leftover or closed:
            self.close()
        return body

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        _close_slot(self._slot)

    def _connect(self, deadline: float) -> socket.socket:
        self.close()
        sock = socket.create_connection((self._host, self._port), self._remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls:
                sock = _tls_context().wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        self._slot[0] = sock
        return sock

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RpcError(f"timed out: no complete answer within {self._timeout:g}s")
        return remaining


def _close_slot(slot: list[socket.socket | None]) -> None:
    sock, slot[0] = slot[0], None
    if sock is not None:
        sock.close()


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection can no longer carry a call: readable while idle
    means the node closed it (or sent something nobody asked for)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _tls  # noqa: PLW0603 - one context for the process, made on first use
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class Prepared:
    """A request made once by `prepare`: its head and its body, as h11 events."""

    __slots__ = ("body", "request")

    def __init__(self, request: h11.Request, body: h11.Data) -> None:
        self.request = request
        self.body = body


def _read_answer(
    http: h11.Connection, sock: socket.socket, deadline: float, timeout: float, max_body: int
) -> bytes:
    """The body of a 200 answer, read through `http` (which knows the request was sent)."""
    body = bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(f"timed out: no complete answer within {timeout:g}s")
            sock.settimeout(remaining)
            http.receive_data(sock.recv(_READ_CHUNK))
        elif isinstance(event, h11.Response):
            if event.status_code != 200:
                raise RpcError(f"HTTP {event.status_code}")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise RpcError(f"answer over {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise RpcError("connection closed before a full answer")
        # InformationalResponse (1xx): the final answer follows.
