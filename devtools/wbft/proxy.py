"""The per-node JSON-RPC proxy of the WBFT network double: HTTP and WebSocket on one port.

Each proxy stands in front of one anvil node. It answers `istanbul_*` itself (or refuses the
namespace with -32601, as geth over HTTP/WS without `--http.api istanbul` does), forwards every
other request to the node unchanged, and rewrites the `extraData` of every block header in the
node's replies and `newHeads` notifications to a WBFT-style value of several hundred bytes
(anvil cannot set extraData). Block hashes stay the node's own.

While the node does not answer, HTTP requests get `502` and WebSocket connections are closed
with code 1011, so a client sees the node as down, not as the proxy answering for it. Hostile
input never stops a proxy: garbage or JSON nested over 64 levels gets -32700, a body over
1 MiB gets 413, a batch over 100 calls gets -32600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from devtools.wbft import istanbul
from devtools.wbft.ledger import Ledger

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "NodeProxy", "ProxyHost", "Served"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 100
_MAX_NESTING = 64  # far deeper than any JSON-RPC request
_UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
_JSON = {"Content-Type": "application/json"}

_T = TypeVar("_T")


class _NodeDown(Exception):
    """The node behind the proxy does not answer."""


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _parse(body: bytes | str) -> Any:
    """The JSON document of a request; ValueError for malformed or absurdly nested input.

    Nesting is checked before decoding: json's C decoder recurses once per level and, with
    a raised recursion limit (web3 sets 100000), a deep enough body overflows the C stack.
    """
    raw = body.encode() if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > _MAX_NESTING and _nesting(raw) > _MAX_NESTING:
        raise ValueError("nested too deep")
    return json.loads(raw)


def _nesting(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _is_local(request: Any) -> bool:
    method = request.get("method") if isinstance(request, dict) else None
    return isinstance(method, str) and method.startswith("istanbul_")


class NodeProxy:
    """The proxy of one node: `url`/`ws_url` are what a client (a wemixvisor daemon) uses."""

    def __init__(
        self, upstream_url: str, address: str, ledger: Ledger, port: int, *, serve_istanbul: bool
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_ws_url = "ws" + self.upstream_url.removeprefix("http")
        self.address = address.lower()
        self.ledger = ledger
        self.port = port
        self.serve_istanbul = serve_istanbul
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """HTTP JSON-RPC address of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket JSON-RPC address of the proxy (same port)."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1:`port`."""
        self._session = aiohttp.ClientSession(timeout=_UPSTREAM_TIMEOUT)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Close the listener, the open connections and the upstream session."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("proxy not started")
        return self._session

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method != "POST":
            return web.Response(status=405, text="JSON-RPC: POST a request, or open a WebSocket")
        body = await request.read()  # over client_max_size: aiohttp answers 413
        status, payload = await self.handle(body)
        return web.Response(status=status, body=payload, headers=_JSON)

    async def handle(self, body: bytes | str, *, all_namespaces: bool = False) -> tuple[int, bytes]:
        """HTTP status and JSON reply for one request body (single call or batch);
        `all_namespaces` serves `istanbul_*` whatever `serve_istanbul` says (IPC does)."""
        try:
            request = _parse(body)
        except ValueError:
            return 200, json.dumps(_error(None, -32700, "parse error")).encode()
        try:
            if isinstance(request, dict):
                if _is_local(request):
                    reply = await self._local(request, all_namespaces)
                    return 200, json.dumps(reply).encode()
                raw = body.encode() if isinstance(body, str) else body
                return await self._forward(raw)
            if isinstance(request, list):
                return 200, json.dumps(await self._batch(request, all_namespaces)).encode()
        except _NodeDown:
            return 502, json.dumps(_error(None, -32000, "node unavailable")).encode()
        return 200, json.dumps(_error(None, -32600, "invalid request")).encode()

    async def _batch(self, requests: list[Any], all_namespaces: bool) -> Any:
        if not requests:
            return _error(None, -32600, "empty batch")
        if len(requests) > MAX_BATCH:
            return _error(None, -32600, f"batch too large (at most {MAX_BATCH} calls)")
        replies: list[Any] = [None] * len(requests)
        forwarded = []
        for index, request in enumerate(requests):
            if not isinstance(request, dict):
                replies[index] = _error(None, -32600, "invalid request")
            elif _is_local(request):
                replies[index] = await self._local(request, all_namespaces)
            else:
                forwarded.append(index)
        if forwarded:
            body = json.dumps([requests[index] for index in forwarded]).encode()
            status, payload = await self._forward(body)
            try:
                answers = json.loads(payload) if status == 200 else None
            except ValueError:
                answers = None
            if not isinstance(answers, list) or len(answers) != len(forwarded):
                raise _NodeDown
            # A batch's answers may come in any order: match them to the calls by id.
            by_id = {
                json.dumps(answer.get("id")): answer
                for answer in answers
                if isinstance(answer, dict)
            }
            for index in forwarded:
                key = json.dumps(requests[index].get("id"))
                replies[index] = by_id.get(key, _error(requests[index].get("id"), -32603, "lost"))
        return replies

    async def _local(self, request: dict[str, Any], all_namespaces: bool) -> dict[str, Any]:
        method: str = request["method"]
        request_id = request.get("id")
        if not (self.serve_istanbul or all_namespaces):
            refusal = istanbul.not_available(method)
            return _error(request_id, refusal.code, refusal.message)
        try:
            head = int(await self._upstream_call("eth_blockNumber", []), 16)
        except (TypeError, ValueError):
            raise _NodeDown from None
        block_hash = None
        params = request.get("params")
        try:
            if method == "istanbul_getCommitSignersFromBlock":
                number = istanbul.commit_signers_block(params, head)
                if number <= head:
                    block = await self._upstream_call("eth_getBlockByNumber", [hex(number), False])
                    block_hash = block.get("hash") if isinstance(block, dict) else None
            view = istanbul.NodeView(self.address, head, block_hash)
            result = istanbul.answer(method, params, view, self.ledger)
        except istanbul.IstanbulError as exc:
            return _error(request_id, exc.code, exc.message)
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _upstream_call(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        status, payload = await self._forward(body.encode(), rewrite=False)
        try:
            reply = json.loads(payload)
            if status != 200 or not isinstance(reply, dict) or "result" not in reply:
                raise _NodeDown
        except ValueError:
            raise _NodeDown from None
        return reply["result"]

    async def _forward(self, body: bytes, *, rewrite: bool = True) -> tuple[int, bytes]:
        try:
            async with self.session.post(self.upstream_url, data=body, headers=_JSON) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise _NodeDown from None
        return status, self.rewrite(payload) if rewrite else payload

    def rewrite(self, payload: bytes | str) -> bytes:
        """`payload` with every block header's extraData replaced by the WBFT-style value."""
        raw = payload.encode() if isinstance(payload, str) else payload
        if b'"extraData"' not in raw:
            return raw
        try:
            document = json.loads(raw)
        except ValueError:
            return raw
        self._rewrite_headers(document)
        return json.dumps(document).encode()

    def _rewrite_headers(self, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                self._rewrite_headers(item)
        elif isinstance(value, dict):
            number = value.get("number")
            if "extraData" in value and "parentHash" in value and isinstance(number, str):
                with contextlib.suppress(ValueError):
                    value["extraData"] = self.ledger.extra_data(int(number, 16))
            for item in value.values():
                if isinstance(item, dict | list):
                    self._rewrite_headers(item)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES, compress=False)
        await client.prepare(request)
        try:
            upstream = await self.session.ws_connect(self.upstream_ws_url, max_msg_size=0)
        except (aiohttp.ClientError, TimeoutError, OSError):
            await client.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"node down")
            return client
        send_lock = asyncio.Lock()
        pump = asyncio.create_task(self._pump_notifications(upstream, client, send_lock))
        try:
            async for message in client:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # JSON-RPC over WebSocket is text frames
                reply = await self._ws_request(message.data)
                if reply is None:
                    await upstream.send_str(message.data)
                else:
                    async with send_lock:
                        await client.send_str(reply)
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            pump.cancel()
            # The pump ends cancelled, or with the error of a client that went away.
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, ConnectionError):
                await pump
            await upstream.close()
            await client.close()
        return client

    async def _ws_request(self, text: str) -> str | None:
        """The proxy's own reply to one WebSocket message, or None to forward it unchanged."""
        try:
            request = _parse(text)
        except ValueError:
            return json.dumps(_error(None, -32700, "parse error"))
        if isinstance(request, dict) and not _is_local(request):
            return None  # subscriptions and the rest go to the node's own WebSocket
        _, payload = await self.handle(text)
        return payload.decode()

    async def _pump_notifications(
        self,
        upstream: aiohttp.ClientWebSocketResponse,
        client: web.WebSocketResponse,
        send_lock: asyncio.Lock,
    ) -> None:
        async for message in upstream:
            if message.type == aiohttp.WSMsgType.TEXT:
                async with send_lock:
                    await client.send_str(self.rewrite(message.data).decode())
        # The node went away: so does this connection, as it would with the node itself.
        await client.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node closed")


class Served(Protocol):
    """Something a `ProxyHost` serves: a proxy, or a proxy's IPC endpoint."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ProxyHost:
    """One event-loop thread serving every proxy (and IPC endpoint) of a network."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proxies: list[Served] = []

    def start(self, proxies: Sequence[Served]) -> None:
        """Start the loop and every proxy; raises if one cannot listen (its port is taken)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wbft-proxies", daemon=True
        )
        self._thread.start()
        for proxy in proxies:
            self._proxies.append(proxy)  # so that stop() closes it even if it fails to start
            self.run(proxy.start())

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        """Run `coroutine` on the loop and wait for its result."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the proxy host is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop every proxy, then the loop; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        for proxy in reversed(self._proxies):
            try:
                self.run(proxy.stop())
            except Exception:
                logger.exception("stopping %r", proxy)
        self._proxies.clear()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None
