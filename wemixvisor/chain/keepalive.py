"""One kept-alive HTTP/1.1 connection to the node: the transport under web3's HTTP provider.

The head is asked every poll interval for the daemon's whole life, so what one call costs is
what the idle daemon costs. A call is one `sendall` of the request (built once for a call that
repeats: `prepare`) and the reading of one answer here: its status line and headers, then a
body framed by Content-Length, chunked, or ended by the close of the connection. Measured on an
idle daemon (bench/README.md, crash_restart), a poll through `requests` cost two to three
times the CPU of one through `http.client`, and `http.client` (its header parsing goes through
the email package) about twice this.

Every answer is bounded: headers to `MAX_HEADER_BYTES`, the body to the caller's cap, the whole
call to its timeout (a peer trickling bytes cannot hold a caller). Any failure closes the
connection, so that a late answer is never read as the next call's; the next call connects
again, as it does when the node closed an idle connection (a restart, say).
"""

from __future__ import annotations

import base64
import re
import select
import socket
import ssl
import time
import urllib.parse
import weakref
from typing import Final

from wemixvisor.chain.rpc import RpcError

__all__ = ["MAX_HEADER_BYTES", "KeptAliveConnection"]

MAX_HEADER_BYTES: Final = 64 * 1024
"""The longest status line and headers read; a node sends a few hundred bytes."""

_READ_CHUNK: Final = 65536
_MAX_CHUNK_LINE: Final = 1024
_SHOWN: Final = 40
_HEX_DIGITS: Final = re.compile(rb"[0-9a-fA-F]{1,15}")


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
            body, keep_alive = _read_answer(sock, deadline, self._timeout, self._max_body)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
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


class _Reader:
    """The bytes of one answer, received as they are needed, within the deadline."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout
        self.buffer = bytearray()

    def receive(self) -> bool:
        """Append what the peer sent next; False at the end of the connection."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RpcError(f"timed out: no complete answer within {self.timeout:g}s")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(_READ_CHUNK)
        self.buffer += chunk
        return bool(chunk)

    def line(self, limit: int, what: str) -> bytes:
        """The next CRLF-terminated line (without its CRLF), taken from the buffer."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise RpcError(f"{what} over {limit} bytes")
            if not self.receive():
                raise RpcError("connection closed before a full answer")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def take(self, count: int) -> bytes:
        """The next `count` bytes, taken from the buffer."""
        while len(self.buffer) < count:
            if not self.receive():
                raise RpcError("connection closed before a full answer")
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken


def _read_answer(
    sock: socket.socket, deadline: float, timeout: float, max_body: int
) -> tuple[bytes, bool]:
    """The body of a 200 answer, and whether the connection may carry the next call."""
    reader = _Reader(sock, deadline, timeout)
    while (end := reader.buffer.find(b"\r\n\r\n")) < 0:
        if len(reader.buffer) > MAX_HEADER_BYTES:
            raise RpcError(f"answer headers over {MAX_HEADER_BYTES} bytes")
        if not reader.receive():
            raise RpcError("connection closed before a full answer")
    if end > MAX_HEADER_BYTES:
        raise RpcError(f"answer headers over {MAX_HEADER_BYTES} bytes")
    status, *lines = bytes(reader.buffer[:end]).decode("latin-1").split("\r\n")
    del reader.buffer[: end + 4]
    version, _, rest = status.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and code.isascii()):
        raise RpcError(f"not an HTTP answer: {status[:_SHOWN]!r}")
    if code != "200":
        raise RpcError(f"HTTP {code}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise RpcError(f"malformed HTTP header: {line[:_SHOWN]!r}")
        headers[name.lower()] = value.strip()
    tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower() != "chunked":
            raise RpcError(
                f"unsupported Transfer-Encoding: {headers['transfer-encoding'][:_SHOWN]!r}"
            )
        return _read_chunked(reader, max_body), keep_alive
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isdigit() and declared.isascii()) or len(declared) > 19:
            raise RpcError(f"bad Content-Length: {declared[:_SHOWN]!r}")
        length = int(declared)
        if length > max_body:
            raise RpcError(f"answer over {max_body} bytes")
        body = reader.take(length)
        # Bytes beyond the declared answer belong to no call: the connection is not reused.
        return body, keep_alive and not reader.buffer
    # Neither: the answer ends with the connection.
    while reader.receive():
        if len(reader.buffer) > max_body:
            raise RpcError(f"answer over {max_body} bytes")
    return bytes(reader.buffer), False


def _read_chunked(reader: _Reader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        size_field = reader.line(_MAX_CHUNK_LINE, "a chunk size line").split(b";", 1)[0].strip()
        if not _HEX_DIGITS.fullmatch(size_field):
            raise RpcError(f"bad chunk size: {size_field[:_SHOWN]!r}")
        size = int(size_field, 16)
        if size == 0:
            # Trailer fields, if any, up to the empty line.
            trailers = 0
            while line := reader.line(_MAX_CHUNK_LINE, "a trailer line"):
                trailers += len(line)
                if trailers > MAX_HEADER_BYTES:
                    raise RpcError(f"answer trailers over {MAX_HEADER_BYTES} bytes")
            return bytes(body)
        if len(body) + size > max_body:
            raise RpcError(f"answer over {max_body} bytes")
        body += reader.take(size)
        if reader.take(2) != b"\r\n":
            raise RpcError("malformed chunked answer")
