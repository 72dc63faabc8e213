"""A small JSON-RPC client for the node: http(s)://, ws(s):// or an IPC socket path.

Explicit short timeouts, one attempt per call and no hidden retries: callers own retry and
backoff. Answers are size-capped and shape-checked, since a node (or whatever listens on its
port) may send anything.
"""

from __future__ import annotations

import http.client
import itertools
import re
import socket
import time
import urllib.parse
from typing import Any, Final

import msgspec

MAX_RESPONSE_BYTES = 16 * 1024 * 1024

MAX_QUANTITY: Final = (1 << 64) - 1
"""The largest quantity a well-formed answer carries (16 hex digits, geth's uint64)."""

_QUANTITY_RE: Final = re.compile(r"0x[0-9a-fA-F]{1,16}", re.ASCII)
_SHOWN_CHARS: Final = 40


class RpcError(Exception):
    """The call failed: transport, timeout, malformed answer, or an error object."""


class RpcMethodNotFound(RpcError):
    """The node does not serve the method (e.g. no `istanbul_*` on a non-WBFT chain)."""


class MalformedAnswer(RpcError):
    """The node answered, but not with the shape the method promises."""


def describe_value(value: object) -> str:
    """A short, safe description of a JSON value for error messages (never a huge repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "an integer beyond 64 bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
        return repr(shown)
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    return type(value).__name__


def parse_quantity(value: object, what: str = "a hex quantity") -> int:
    """A JSON-RPC quantity (`0x` and 1 to 16 hex digits, a uint64) as an int.

    Anything else (null, a number, decimal text, a sign, more digits, non-ASCII digits that
    `int()` would take) raises MalformedAnswer, `not <what>: <the value, cut short>`: a height
    that triggers an upgrade is never guessed.
    """
    if isinstance(value, str) and _QUANTITY_RE.fullmatch(value):
        return int(value[2:], 16)
    raise MalformedAnswer(f"not {what}: {describe_value(value)}")


class _Response(msgspec.Struct):
    id: Any = None
    result: Any = None
    error: Any = None


_ids = itertools.count(1)


def _decode(raw: bytes) -> Any:
    try:
        reply = msgspec.json.decode(raw, type=_Response)
    except msgspec.DecodeError as exc:
        raise RpcError(f"malformed JSON-RPC answer: {exc}") from None
    if reply.error is not None:
        code = reply.error.get("code") if isinstance(reply.error, dict) else None
        message = reply.error.get("message") if isinstance(reply.error, dict) else reply.error
        if code == -32601:
            raise RpcMethodNotFound(str(message))
        raise RpcError(f"JSON-RPC error {code}: {message}")
    return reply.result


class RpcClient:
    """One endpoint; `call` is blocking, so actors use it from helper threads only."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        parsed = urllib.parse.urlsplit(address)
        self._scheme = parsed.scheme if "://" in address else "ipc"
        if self._scheme not in ("http", "https", "ws", "wss", "ipc"):
            raise ValueError(f"unsupported RPC address {address!r}")
        self._parsed = parsed

    def call(self, method: str, params: list[Any] | None = None) -> Any:
        """Call `method` once; raise RpcError on any failure."""
        body = msgspec.json.encode(
            {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or []}
        )
        try:
            if self._scheme in ("http", "https"):
                return _decode(self._post(body))
            if self._scheme in ("ws", "wss"):
                return _decode(self._ws(body))
            return _decode(self._ipc(body))
        except RpcError:
            raise
        except (OSError, http.client.HTTPException, TimeoutError) as exc:
            raise RpcError(f"{self.address}: {exc or type(exc).__name__}") from None

    def _post(self, body: bytes) -> bytes:
        parsed = self._parsed
        conn_type = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_type(parsed.hostname or "127.0.0.1", parsed.port, timeout=self.timeout)
        try:
            deadline = time.monotonic() + self.timeout
            conn.request(
                "POST",
                parsed.path or "/",
                body=body,
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            if response.status != 200:
                raise RpcError(f"HTTP {response.status}")
            # The timeout bounds the whole call, not each read: a peer trickling a byte at a
            # time must not keep a caller waiting for ever.
            raw = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RpcError(f"answer not complete within {self.timeout:g}s")
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                chunk = response.read1(65536)
                if not chunk:
                    return bytes(raw)
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise RpcError(f"answer over {MAX_RESPONSE_BYTES} bytes")
        finally:
            conn.close()

    def _ws(self, body: bytes) -> bytes:
        # Imported here: only ws users pay for it.
        from websockets.exceptions import WebSocketException  # noqa: PLC0415
        from websockets.sync.client import connect  # noqa: PLC0415

        try:
            with connect(
                self.address,
                open_timeout=self.timeout,
                close_timeout=self.timeout,
                max_size=MAX_RESPONSE_BYTES,
                proxy=None,  # node RPC is never sent through an HTTP(S)_PROXY of the environment
            ) as ws:
                ws.send(body.decode())
                answer = ws.recv(timeout=self.timeout)
        except WebSocketException as exc:
            raise RpcError(f"{self.address}: {type(exc).__name__}: {exc}") from None
        return answer.encode() if isinstance(answer, str) else answer

    def _ipc(self, body: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.address)
            sock.sendall(body)
            buffer = bytearray()
            decoder = msgspec.json.Decoder()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RpcError(f"answer not complete within {self.timeout:g}s")
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise RpcError("IPC connection closed before a full answer")
                buffer += chunk
                if len(buffer) > MAX_RESPONSE_BYTES:
                    raise RpcError(f"answer over {MAX_RESPONSE_BYTES} bytes")
                # IPC answers are not length-framed: only an answer that ends like a JSON
                # object or array can be complete, which keeps big answers linear to read.
                if bytes(buffer.rstrip()[-1:]) not in (b"}", b"]"):
                    continue
                try:
                    decoder.decode(buffer)
                except msgspec.DecodeError:
                    continue
                return bytes(buffer)
