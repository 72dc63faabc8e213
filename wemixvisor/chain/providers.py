"""web3 providers for the node, set up for a supervisor: short timeouts, no hidden retries,
size-capped answers.

- http(s): web3's `HTTPProvider` on one kept-alive HTTP/1.1 connection (`chain.keepalive`,
  never through the environment's HTTP proxy), its retry middleware off; the answer is read with
  a deadline for the whole call and a size cap, so a peer trickling bytes or sending gigabytes is
  an error. The head poll sends a request built once (`answer_without_params`).
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
import logging
import socket
import time
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
from wemixvisor.chain.keepalive import KeptAliveConnection, receive_before
from wemixvisor.chain.rpc import MalformedAnswer, RpcError, describe_value, is_quantity

MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
"""The largest answer read from the node; anything longer is refused."""

MAX_NOTIFICATION_BYTES: Final = 1 << 20
"""A newHeads notification is a header of about 1 KB: anything near this size is hostile."""

_WS_PING_INTERVAL: Final = 2.0

# web3 logs every connection at INFO (one per call over ws): the daemon reports RPC itself.
logging.getLogger("web3").setLevel(logging.WARNING)
# msgspec raises RecursionError on deeply nested JSON, whatever the interpreter's limit.
_answer_decoder: Final = msgspec.json.Decoder()


class CappedHTTPProvider(HTTPProvider):
    """web3's `HTTPProvider` on one kept-alive connection, one attempt per call, capped
    answers."""

    def __init__(self, endpoint_uri: str, timeout: float) -> None:
        super().__init__(
            endpoint_uri,
            request_kwargs={"timeout": timeout},
            exception_retry_configuration=None,
        )
        self._connection = KeptAliveConnection(
            endpoint_uri, timeout, self.get_request_headers(), MAX_RESPONSE_BYTES
        )
        self._prepared: dict[RPCEndpoint, bytes] = {}

    def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        return self._connection.post(request_data)

    def answer_without_params(self, method: RPCEndpoint) -> RPCResponse:
        """The answer to `method` called without parameters, by the shortest path: the request
        encoded once (by web3, then as HTTP) and sent again as is, the answer decoded with
        msgspec and checked to be a JSON object; the caller gives it to web3's
        `formatted_response`.

        This is the head poll's path: `eth_blockNumber` every poll interval for the daemon's
        whole life, whose answer no middleware changes.
        """
        request = self._prepared.get(method)
        if request is None:
            body = self.encode_rpc_request(method, [])
            request = self._prepared[method] = self._connection.prepare(body)
        answer = _answer_decoder.decode(self._connection.post_prepared(request))
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
        chunk = receive_before(sock, deadline, timeout)
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
