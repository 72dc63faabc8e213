"""The IPC endpoint of one node's proxy in the WBFT network double: geth's IPC framing on a unix
socket.

A client writes a stream of JSON-RPC objects (single calls or batches) over the socket, with
no HTTP around them and no separator required, and reads the answers the same way. As on geth,
IPC serves every namespace: `istanbul_*` is answered even when the node's HTTP/WS refuse it.
`eth_subscribe` / `eth_unsubscribe` (single calls) go to the node's own WebSocket, opened for
the connection on its first subscription; the node's answers and `newHeads` notifications come
back with the same extraData rewrite as the proxy's WebSocket.

While the node does not answer, a connection is closed instead of answered (and one open on a
node that goes away is closed), so a client sees the node as down. Hostile input never stops
the endpoint: a value that is not a JSON object or array, malformed JSON, nesting over 64
levels or a value over 1 MiB gets -32700 and the connection is closed, as geth does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from devtools.wbft.proxy import MAX_BODY_BYTES

if TYPE_CHECKING:
    from devtools.wbft.proxy import NodeProxy

__all__ = ["IpcEndpoint", "ValueSplitter"]

_MAX_NESTING = 64
_SUBSCRIPTIONS = frozenset({"eth_subscribe", "eth_unsubscribe"})
_PARSE_ERROR = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}'
_WHITESPACE = b" \t\r\n"


class _Hostile(Exception):
    """The stream holds something that is not a JSON-RPC value within the limits."""


class ValueSplitter:
    """Cuts a byte stream into its JSON objects/arrays, scanning each byte once."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already scanned
        self._depth = 0
        self._in_string = self._escaped = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The values completed by `chunk`; raises ValueError for a stream that cannot hold
        one (a value that is not `{`/`[`, nested over 64 levels, or over 1 MiB)."""
        self._buffer += chunk
        values = []
        start = 0  # where the value being scanned begins
        position = self._scanned
        while position < len(self._buffer):
            byte = self._buffer[position]
            position += 1
            if self._depth == 0:
                if byte in _WHITESPACE:
                    start = position  # nothing of a value yet
                    continue
                if byte not in (0x5B, 0x7B):
                    raise ValueError("a JSON-RPC value is an object or an array")
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte in (0x5B, 0x7B):  # [ {
                self._depth += 1
                if self._depth > _MAX_NESTING:
                    raise ValueError("nested too deep")
            elif byte in (0x5D, 0x7D):  # ] }
                self._depth -= 1
                if self._depth == 0:
                    values.append(bytes(self._buffer[start:position]))
                    start = position
        del self._buffer[:start]
        self._scanned = position - start
        if len(self._buffer) > MAX_BODY_BYTES:
            raise ValueError("value too large")
        return values


class _Connection:
    """One client connection: answers in order, subscriptions through the node's WebSocket."""

    def __init__(
        self, proxy: NodeProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.upstream: aiohttp.ClientWebSocketResponse | None = None
        self.pump: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        splitter = ValueSplitter()
        try:
            while chunk := await self.reader.read(65536):
                for value in splitter.feed(chunk):
                    await self._answer(value)
        except (ValueError, _Hostile):
            with contextlib.suppress(ConnectionError):
                await self._send(_PARSE_ERROR)
        except (_NodeGone, ConnectionError, aiohttp.ClientError):
            pass  # the node or the client went away: so does the connection
        finally:
            await self._close()

    async def _answer(self, value: bytes) -> None:
        try:
            request = json.loads(value)
        except ValueError:
            raise _Hostile from None
        if isinstance(request, dict) and request.get("method") in _SUBSCRIPTIONS:
            upstream = await self._upstream()
            await upstream.send_str(value.decode())
            return
        status, payload = await self.proxy.handle(value, all_namespaces=True)
        if status != 200:
            raise _NodeGone
        await self._send(payload)

    async def _upstream(self) -> aiohttp.ClientWebSocketResponse:
        if self.upstream is None:
            try:
                self.upstream = await self.proxy.session.ws_connect(
                    self.proxy.upstream_ws_url, max_msg_size=0
                )
            except (aiohttp.ClientError, TimeoutError, OSError):
                raise _NodeGone from None
            self.pump = asyncio.create_task(self._pump(self.upstream))
        return self.upstream

    async def _pump(self, upstream: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError):
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._send(self.proxy.rewrite(message.data))
        # The node went away: so does this connection, as the node's own socket would.
        self.writer.close()

    async def _send(self, payload: bytes) -> None:
        async with self.lock:
            self.writer.write(payload + b"\n")
            await self.writer.drain()

    async def _close(self) -> None:
        if self.pump is not None and self.pump is not asyncio.current_task():
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self.pump
        if self.upstream is not None:
            await self.upstream.close()
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class _NodeGone(Exception):
    """The node behind the proxy does not answer: the connection closes."""


class IpcEndpoint:
    """A unix socket at `path` speaking geth's IPC framing for `proxy` (see the module doc)."""

    def __init__(self, proxy: NodeProxy, path: Path) -> None:
        self.proxy = proxy
        self.path = path
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"IpcEndpoint({str(self.path)!r})"

    async def start(self) -> None:
        """Listen at `path` (owner-only); a stale socket there is replaced, any other file
        is an error."""
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.path), limit=MAX_BODY_BYTES
        )
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        """Stop listening, close every connection, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # only a socket this endpoint made

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await _Connection(self.proxy, reader, writer).serve()
        finally:
            if task is not None:
                self._tasks.discard(task)
