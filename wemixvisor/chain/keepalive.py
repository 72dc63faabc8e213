"""One kept-alive HTTP/1.1 connection to the node: the transport under web3's HTTP provider.

The head is asked every poll interval for the daemon's whole life, so what one call costs is
what the idle daemon costs. A call is one `sendall` of a request built once and the parsing
of one answer by httptools (the C HTTP parser, llhttp, that uvicorn uses): its status line and
headers, then a body framed by Content-Length, chunked, or ended by the close of the
connection. Measured in the idle daemon's rhythm (one call every 300 ms, caches cold), a poll
through `requests` cost two to three times the CPU of one through `http.client` (its header
parsing goes through the email package), h11's pure-Python parsing about twice this.

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

import httptools

from wemixvisor.chain.rpc import RpcError

__all__ = ["MAX_HEADER_BYTES", "KeptAliveConnection", "receive_before"]

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
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)
        self._head = head.encode("latin-1", "strict")
        # In a list that outlives this object: a client dropped without `close` has its socket
        # closed when it is collected.
        self._slot: list[socket.socket | None] = [None]
        weakref.finalize(self, _close_slot, self._slot)

    def prepare(self, body: bytes) -> bytes:
        """The whole request for `body`: send it with `post_prepared` as often as needed."""
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def post(self, body: bytes) -> bytes:
        """POST `body`; the answer's body (status 200, within the cap and the timeout)."""
        return self.post_prepared(self.prepare(body))

    def post_prepared(self, request: bytes) -> bytes:
        """Send a request made by `prepare`; the answer's body."""
        deadline = time.monotonic() + self._timeout
        sock = self._slot[0]
        if sock is None or _dropped(sock):
            sock = self._connect(deadline)
        try:
            sock.settimeout(self._remaining(deadline))
            sock.sendall(request)
            answer = _Answer(self._max_body)
            answer.read(sock, deadline, self._timeout)
        except BaseException:
            self.close()
            raise
        if not answer.reusable:
            self.close()
        return bytes(answer.body)

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


def receive_before(sock: socket.socket, deadline: float, timeout: float) -> bytes:
    """The next bytes `sock` has (b"" at its end), before the call's `deadline` (monotonic);
    RpcError once it passed (`timeout`: the call's, for the message)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RpcError(f"timed out: no complete answer within {timeout:g}s")
    sock.settimeout(remaining)
    return sock.recv(_READ_CHUNK)


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


class _Answer:
    """One answer as httptools parses it: its callbacks collect the status, the framing and
    the body (see `read`)."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.body = bytearray()
        self.framed = False  # Content-Length or chunked: the parser knows where it ends
        self.header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.beyond = False  # bytes arrived after the answer: nobody asked for them
        self.keep_alive = False
        self.reusable = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self.complete:
            self.beyond = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise RpcError(f"answer headers over {MAX_HEADER_BYTES} bytes")
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        status = self.parser.get_status_code()
        if status != 200:
            raise RpcError(f"HTTP {status}")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > self.max_body:
            raise RpcError(f"answer over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # asked while the answer is current

    def read(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        """Receive and parse until the answer is complete; RpcError when it cannot be."""
        received = 0
        while not self.complete:
            chunk = receive_before(sock, deadline, timeout)
            if not chunk:
                if self.headers_done and not self.framed:
                    return  # the answer ends with the connection (which goes with it)
                raise RpcError("connection closed before a full answer")
            received += len(chunk)
            if not self.headers_done and received > MAX_HEADER_BYTES:
                raise RpcError(f"answer headers over {MAX_HEADER_BYTES} bytes")
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, RpcError):
                    raise cause from None
                raise RpcError(f"malformed HTTP answer: {exc}") from None
            except httptools.HttpParserError as exc:
                if not self.complete:
                    raise RpcError(f"malformed HTTP answer: {exc}") from None
                self.beyond = True  # what followed the answer is no answer at all
        # Reused only when the node keeps it alive and nothing arrived that nobody asked for.
        self.reusable = self.keep_alive and not self.beyond
