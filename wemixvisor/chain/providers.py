"""web3 providers for the node, set up for a supervisor: short timeouts, no hidden retries,
size-capped answers.

- http(s): web3's `HTTPProvider` on one kept-alive HTTP/1.1 connection (`KeptAliveConnection`,
  never through the environment's HTTP proxy), its retry middleware off; the answer is read with
  a deadline for the whole call and a size cap, so a peer trickling bytes or sending gigabytes is
  an error.
- IPC: web3's `IPCProvider` (one persistent socket), the answer read the same way; a socket the
  node closed is dropped and reopened by the next call.
- ws(s) calls: web3's `WebSocketProvider`, one connection per call (web3 has no synchronous
  websocket provider; calls over ws are rare: the head is followed by a subscription).
- ws(s) and IPC subscriptions: `persistent_web3`, an `AsyncWeb3` on web3's `WebSocketProvider`
  or `AsyncIPCProvider` for `eth.subscribe("newHeads")`.

Every web3 instance gets `ExtraDataToPOAMiddleware`: blocks of WBFT chains carry the seal in a
long `extraData`. This module imports web3 (≈ 40 MB, ≈ 1 s): the client imports it lazily.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import select
import socket
import ssl
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import Any, Final, cast

import msgspec
from web3 import AsyncWeb3, Web3
from web3.middleware import ExtraDataToPOAMiddleware
from web3.middleware.formatting import FormattingMiddlewareBuilder
from web3.providers import AsyncIPCProvider, HTTPProvider, IPCProvider, WebSocketProvider
from web3.providers.base import JSONBaseProvider
from web3.providers.ipc import PersistentSocket
from web3.types import RPCEndpoint, RPCResponse

from wemixvisor.chain.istanbul import Istanbul
from wemixvisor.chain.rpc import MalformedAnswer, RpcError, describe_value, is_quantity

MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
"""The largest answer read from the node; anything longer is refused."""

MAX_NOTIFICATION_BYTES: Final = 1 << 20
"""A newHeads notification is a header of about 1 KB: anything near this size is hostile."""

_WS_PING_INTERVAL: Final = 2.0

# web3 logs every connection at INFO (one per call over ws): the daemon reports RPC itself.
logging.getLogger("web3").setLevel(logging.WARNING)
_READ_CHUNK: Final = 65536
# msgspec raises RecursionError on deeply nested JSON, whatever the interpreter's limit.
_answer_decoder: Final = msgspec.json.Decoder()


def _read_capped_http(response: http.client.HTTPResponse, deadline: float, timeout: float) -> bytes:
    if response.status != 200:
        raise RpcError(f"HTTP {response.status}")
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise RpcError(f"answer over {MAX_RESPONSE_BYTES} bytes")
    body = bytearray()
    while True:
        # The timeout bounds the whole call, not each read: a peer trickling a byte at a time
        # must not keep a caller waiting for ever.
        if time.monotonic() > deadline:
            raise RpcError(f"timed out: no complete answer within {timeout:g}s")
        chunk = response.read1(_READ_CHUNK)
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise RpcError(f"answer over {MAX_RESPONSE_BYTES} bytes")
        if response.length == 0 or not chunk:
            if response.length:  # declared more than it sent before closing
                raise RpcError("connection closed before a full answer")
            response.close()  # read whole: the connection is free for the next call
            return bytes(body)


class KeptAliveConnection:
    """One HTTP/1.1 connection to the node, kept open between calls and reopened when the node
    closed it (a restart, an idle timeout). Not thread-safe: the client serialises its calls.

    The standard library's `http.client` rather than `requests`: the head is polled every few
    hundred milliseconds for the daemon's whole life, and a call through `requests` costs about
    three times the CPU for the same bytes on the wire (bench/README.md, crash_restart).
    """

    def __init__(self, endpoint_uri: str, timeout: float, headers: dict[str, str]) -> None:
        parts = urllib.parse.urlsplit(endpoint_uri)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise RpcError(f"not an http(s) address with a host and port: {endpoint_uri!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._headers = dict(headers)
        if parts.username is not None:
            # http(s)://user:password@host: basic authentication, as requests read it.
            credentials = f"{urllib.parse.unquote(parts.username)}:"
            credentials += urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(credentials.encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        # In a list that outlives this object: a client dropped without `close` has its socket
        # closed when it is collected, as a requests session's pool would.
        self._slot: list[http.client.HTTPConnection | None] = [None]
        weakref.finalize(self, _close_slot, self._slot)

    def post(self, body: bytes) -> bytes:
        """POST `body` and return the answer's body: status 200, at most MAX_RESPONSE_BYTES,
        complete within the timeout. Any failure closes the connection (a late answer must
        never be read as the next call's)."""
        deadline = time.monotonic() + self._timeout
        connection = self._slot[0]
        if connection is None or _dropped(connection):
            connection = self._open()
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            answer = _read_capped_http(response, deadline, self._timeout)
        except BaseException:
            if response is not None:
                response.close()  # an answer that closes the connection owns its socket
            self.close()
            raise
        if response.will_close:
            self.close()
        return answer

    def _open(self) -> http.client.HTTPConnection:
        self.close()
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=_tls_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._slot[0] = connection
        return connection

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        _close_slot(self._slot)


def _close_slot(slot: list[http.client.HTTPConnection | None]) -> None:
    connection, slot[0] = slot[0], None
    if connection is not None:
        connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an open kept-alive connection can no longer carry a call: readable while idle
    means the node closed it (or sent something nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return False  # not connected yet: `request` connects
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


_tls: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _tls  # noqa: PLW0603 - one context for the process, made on first use
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


class CappedHTTPProvider(HTTPProvider):
    """web3's `HTTPProvider` on one kept-alive connection, one attempt per call, capped
    answers."""

    def __init__(self, endpoint_uri: str, timeout: float) -> None:
        super().__init__(
            endpoint_uri,
            request_kwargs={"timeout": timeout},
            exception_retry_configuration=None,
        )
        self._connection = KeptAliveConnection(endpoint_uri, timeout, self.get_request_headers())
        self._prepared: dict[RPCEndpoint, bytes] = {}

    def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        return self._connection.post(request_data)

    def answer_without_params(self, method: RPCEndpoint) -> RPCResponse:
        """The answer to `method` called without parameters, by the shortest path: the request
        encoded once (by web3) and sent again as is, the answer decoded with msgspec and checked
        to be a JSON object; the caller gives it to web3's `formatted_response`.

        This is the head poll's path: `eth_blockNumber` every poll interval for the daemon's
        whole life, whose answer no middleware changes.
        """
        body = self._prepared.get(method)
        if body is None:
            body = self._prepared[method] = self.encode_rpc_request(method, [])
        answer = _answer_decoder.decode(self._connection.post(body))
        if not isinstance(answer, dict):
            raise MalformedAnswer(f"the answer is {describe_value(answer)}, not a JSON object")
        return cast(RPCResponse, answer)

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        """Not used by the daemon: refused rather than sent around the caps."""
        raise RpcError("batch requests are not supported")

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._connection.close()


def _read_ipc_answer(sock: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    decoder = msgspec.json.Decoder()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RpcError(f"timed out: no complete answer within {timeout:g}s")
        sock.settimeout(remaining)
        chunk = sock.recv(_READ_CHUNK)
        if not chunk:
            raise RpcError("IPC connection closed before a full answer")
        buffer += chunk
        if len(buffer) > MAX_RESPONSE_BYTES:
            raise RpcError(f"answer over {MAX_RESPONSE_BYTES} bytes")
        # IPC answers are not length-framed: only an answer that ends like a JSON object or
        # array can be complete, which keeps big answers linear to read.
        if bytes(buffer.rstrip()[-1:]) not in (b"}", b"]"):
            continue
        try:
            decoder.decode(buffer)
        except msgspec.DecodeError:
            continue
        return bytes(buffer)


class _IPCSocket(PersistentSocket):
    """web3's persistent IPC socket, closed when connecting fails (web3's own leaks it)."""

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.ipc_path)
        except BaseException:
            sock.close()
            raise
        return sock


class CappedIPCProvider(IPCProvider):
    """`IPCProvider` (one persistent socket) with a whole-call deadline and a size cap.

    web3's own read waits out its timeout on a closed socket; this one fails at once, and any
    failure drops the socket so that a late answer is never read as the next call's.
    """

    def __init__(self, ipc_path: str, timeout: float) -> None:
        super().__init__(ipc_path, timeout=max(int(timeout), 1))
        self._deadline_seconds = timeout
        self._persistent = _IPCSocket(str(Path(ipc_path).expanduser().resolve()))
        self._socket = self._persistent  # type: ignore[assignment]  # web3 types it as None

    def _make_request(self, request: bytes) -> RPCResponse:
        with self._lock, self._persistent as opened:
            sock = opened
            try:
                sock.sendall(request + b"\n")
            except BrokenPipeError:
                # The node restarted since the last call: one fresh socket, nothing was sent.
                sock = self._persistent.reset()
                sock.sendall(request + b"\n")
            return self.decode_rpc_response(_read_ipc_answer(sock, self._deadline_seconds))

    def close(self) -> None:
        """Close the persistent socket."""
        sock, self._persistent.sock = self._persistent.sock, None
        if sock is not None:
            sock.close()


class WebSocketCallProvider(JSONBaseProvider):
    """Synchronous calls over web3's `WebSocketProvider`: one connection per call."""

    def __init__(self, endpoint_uri: str, timeout: float) -> None:
        super().__init__()
        self.endpoint_uri = endpoint_uri
        self._timeout = timeout

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Connect, call once, disconnect, all within the timeout."""
        return asyncio.run(asyncio.wait_for(self._call(method, params), self._timeout))

    async def _call(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        provider = websocket_provider(self.endpoint_uri, self._timeout)
        await provider.connect()
        try:
            return await provider.make_request(method, params)
        finally:
            await disconnect(provider)


async def disconnect(provider: WebSocketProvider | AsyncIPCProvider) -> None:
    """Close a persistent connection, whatever state a hostile peer left it in: web3 closes
    only a websocket that is still open, so what it leaves is aborted here."""
    try:
        await asyncio.wait_for(provider.disconnect(), 1.5)
    except Exception as exc:  # noqa: BLE001 - a broken connection may fail to close cleanly
        logging.getLogger(__name__).debug("closing %s: %r", provider, exc)
    finally:
        ws = getattr(provider, "_ws", None)
        if ws is not None:
            ws.transport.abort()
        writer = getattr(provider, "_writer", None)
        if writer is not None:
            writer.transport.abort()


def websocket_provider(endpoint_uri: str, timeout: float) -> WebSocketProvider:
    """web3's `WebSocketProvider`: one connection attempt, short timeouts, keepalive pings
    that declare a silent peer dead within seconds, capped message size, no env proxy."""
    return WebSocketProvider(
        endpoint_uri,
        websocket_kwargs={
            "open_timeout": timeout,
            "ping_interval": _WS_PING_INTERVAL,
            "ping_timeout": timeout,
            "close_timeout": min(timeout, 1.0),
            "max_size": MAX_RESPONSE_BYTES,
            "compression": None,
            "proxy": None,
        },
        request_timeout=timeout,
        max_connection_retries=1,
        # JSON-RPC over websocket is text (geth answers in text frames; some proxies and
        # gateways drop binary ones).
        use_text_frames=True,
    )


def _strict_head(header: Any) -> Any:
    # web3's block formatter would read decimal text as hex: a height is checked before it.
    if isinstance(header, dict) and not is_quantity(header.get("number")):
        raise MalformedAnswer(
            f"newHeads header number is not a block height: {describe_value(header.get('number'))}"
        )
    return header


StrictHeadMiddleware = FormattingMiddlewareBuilder.build(
    result_formatters={RPCEndpoint("eth_subscribe"): _strict_head}
)
"""Refuses a newHeads notification whose `number` is not a hex quantity."""


def sync_web3(address: str, kind: str, timeout: float) -> Web3:
    """A `Web3` for calls to the node at `address` (`kind`: http, ws or ipc), with the
    `istanbul` module attached and no middleware but the WBFT extraData handling."""
    provider: JSONBaseProvider
    if kind == "http":
        provider = CappedHTTPProvider(address, timeout)
    elif kind == "ipc":
        provider = CappedIPCProvider(address, timeout)
    else:
        provider = WebSocketCallProvider(address, timeout)
    # No default middleware: it would turn answers into attribute dicts and validate
    # transactions this daemon never sends; answers are checked by their readers.
    w3 = Web3(provider, middleware=[], external_modules={"istanbul": Istanbul})
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def persistent_web3(address: str, kind: str, timeout: float) -> AsyncWeb3[Any]:
    """An `AsyncWeb3` on a persistent ws or IPC connection for subscriptions (not connected:
    use it with `async with`). One connection attempt; no hidden retries."""
    provider: WebSocketProvider | AsyncIPCProvider
    if kind == "ws":
        provider = websocket_provider(address, timeout)
        provider.websocket_kwargs["max_size"] = MAX_NOTIFICATION_BYTES
    else:
        provider = AsyncIPCProvider(
            address,
            read_buffer_limit=MAX_NOTIFICATION_BYTES,
            request_timeout=timeout,
            max_connection_retries=1,
        )
    w3: AsyncWeb3[Any] = AsyncWeb3(provider, middleware=[])
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    w3.middleware_onion.add(StrictHeadMiddleware, name="strict_head")
    return w3
