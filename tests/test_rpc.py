"""The node JSON-RPC client against real anvil (http, ws, ipc) and hostile test-double servers."""

from __future__ import annotations

import http.server
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.anvil import AnvilProcess
from wemixvisor.chain.rpc import MAX_RESPONSE_BYTES, RpcClient, RpcError, RpcMethodNotFound


@pytest.fixture
def anvil_ipc(anvil_bin_1_5_1: Path) -> Iterator[tuple[AnvilProcess, str]]:
    root = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    ipc = str(root / "anvil.ipc")
    node = AnvilProcess(anvil_bin_1_5_1, root, block_time=None, extra_args=["--ipc", ipc])
    node.start()
    try:
        yield node, ipc
    finally:
        node.kill()


def test_http_ws_and_ipc_reach_the_same_real_node(anvil_ipc: tuple[AnvilProcess, str]) -> None:
    node, ipc = anvil_ipc
    for address in (node.url, f"ws://127.0.0.1:{node.port}", ipc):
        client = RpcClient(address, timeout=5)
        assert client.call("eth_blockNumber") == "0x0"
        assert client.call("web3_clientVersion").startswith("anvil/")


def test_a_large_ipc_answer_is_read_whole(anvil_ipc: tuple[AnvilProcess, str]) -> None:
    _node, ipc = anvil_ipc
    client = RpcClient(ipc, timeout=10)
    for _ in range(5):
        client.call("evm_mine")
    block = client.call("eth_getBlockByNumber", ["latest", True])
    assert block["number"] == "0x5"


def test_an_unknown_method_is_method_not_found(anvil_ipc: tuple[AnvilProcess, str]) -> None:
    node, _ = anvil_ipc
    with pytest.raises(RpcMethodNotFound):
        RpcClient(node.url, timeout=5).call("istanbul_nodeAddress")


def test_unsupported_addresses_are_refused() -> None:
    for address in ("ftp://x", "gopher://y:1"):
        with pytest.raises(ValueError, match="unsupported"):
            RpcClient(address)


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Test double: an HTTP server answering JSON-RPC calls badly, in the way the path asks."""

    behaviours: dict[str, Callable[[_Hostile], None]] = {}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.behaviours[self.server.behaviour](self)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


def _send(handler: _Hostile, body: bytes, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _trickle(handler: _Hostile) -> None:
    handler.send_response(200)
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


_Hostile.behaviours = {
    "not-json": lambda h: _send(h, b"<html>nope</html>"),
    "array": lambda h: _send(h, b"[1,2,3]"),
    "error": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"boom"}}'),
    "http-500": lambda h: _send(h, b"oops", status=500),
    "oversized": lambda h: _send(h, b'{"result":"' + b"a" * (MAX_RESPONSE_BYTES + 10) + b'"}'),
    "trickle": _trickle,
    "truncated": lambda h: (
        h.send_response(200),
        h.send_header("Content-Length", "100"),
        h.end_headers(),
        h.wfile.write(b'{"result":'),
    ),
}


@pytest.fixture
def hostile() -> Iterator[Callable[[str], str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def address(behaviour: str) -> str:
        server.behaviour = behaviour  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield address
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("behaviour", sorted(_Hostile.behaviours))
def test_hostile_answers_are_errors_within_the_timeout(
    hostile: Callable[[str], str], behaviour: str
) -> None:
    client = RpcClient(hostile(behaviour), timeout=1.0)
    began = time.monotonic()
    with pytest.raises(RpcError):
        client.call("eth_blockNumber")
    assert time.monotonic() - began < 3.0


def test_a_closed_port_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(RpcError):
        RpcClient(f"http://127.0.0.1:{port}", timeout=2).call("eth_blockNumber")
    assert time.monotonic() - began < 1.0
