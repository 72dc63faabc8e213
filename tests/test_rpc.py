"""The web3 chain client against real anvil (http, ws, ipc) and hostile test-double servers."""

from __future__ import annotations

import base64
import http.server
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.anvil import AnvilProcess
from tests.support import wait_until
from wemixvisor.chain.client import ChainClient, load_web3
from wemixvisor.chain.rpc import MalformedAnswer, RpcError, RpcMethodNotFound

# Through load_web3, as the daemon does: importing web3 directly would raise the recursion limit
# of this process (see load_web3).
MAX_RESPONSE_BYTES: int = load_web3().MAX_RESPONSE_BYTES


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
    for address in (node.url, node.ws_url, ipc):
        client = ChainClient(address, timeout=5)
        try:
            assert client.block_number() == 0
            assert client.client_version().startswith("anvil/")
            assert client.block(0)["number"] == "0x0"
        finally:
            client.close()


def test_a_large_ipc_answer_is_read_whole(anvil_ipc: tuple[AnvilProcess, str]) -> None:
    _node, ipc = anvil_ipc
    client = ChainClient(ipc, timeout=10)
    for _ in range(5):
        client.request("evm_mine")
    block = client.request("eth_getBlockByNumber", ["latest", True])
    assert block["number"] == "0x5"
    client.close()


def test_the_ipc_socket_is_reopened_after_the_node_restarts(
    anvil_bin_1_5_1: Path, short_root: Path
) -> None:
    ipc = str(short_root / "a.ipc")
    first = AnvilProcess(anvil_bin_1_5_1, short_root, block_time=None, extra_args=["--ipc", ipc])
    first.start()
    client = ChainClient(ipc, timeout=5)
    second = AnvilProcess(
        anvil_bin_1_5_1, short_root, port=first.port, block_time=None, extra_args=["--ipc", ipc]
    )
    try:
        assert client.block_number() == 0
        first.stop()
        with pytest.raises(RpcError):
            client.block_number()
        second.start()
        # anvil answers HTTP a moment before its IPC socket exists: wait for the socket file.
        wait_until(lambda: Path(ipc).is_socket(), timeout=10, what="the IPC socket")
        assert client.block_number() == 0  # the next call opens a new socket
    finally:
        client.close()
        first.kill()
        second.kill()


def test_an_unknown_method_is_method_not_found(anvil_ipc: tuple[AnvilProcess, str]) -> None:
    node, _ = anvil_ipc
    with pytest.raises(RpcMethodNotFound):
        ChainClient(node.url, timeout=5).request("istanbul_nodeAddress")


def test_unsupported_addresses_are_refused() -> None:
    for address in ("ftp://x", "gopher://y:1", ""):
        with pytest.raises(ValueError, match="unsupported"):
            ChainClient(address)


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Test double: an HTTP server answering JSON-RPC calls badly, in the way the path asks."""

    behaviours: dict[str, Callable[[_Hostile], None]] = {}
    protocol_version = "HTTP/1.1"  # keep-alive, as a node serves it

    def setup(self) -> None:
        super().setup()
        self.server.open_connections.add(self.client_address)  # type: ignore[attr-defined]

    def finish(self) -> None:
        super().finish()
        self.server.open_connections.discard(self.client_address)  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.ports.append(self.client_address[1])  # type: ignore[attr-defined]
        if "Authorization" in self.headers:
            self.server.authorization.append(self.headers["Authorization"])  # type: ignore[attr-defined]
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
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def _hang(handler: _Hostile) -> None:
    time.sleep(3)


def _undeclared_flood(handler: _Hostile) -> None:
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk = b"a" * 65536
    try:
        handler.wfile.write(b'{"jsonrpc":"2.0","id":1,"result":"')
        for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
            handler.wfile.write(chunk)
    except OSError:
        pass


def _chunked(handler: _Hostile) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for part in (b'{"jsonrpc":"2.0",', b'"id":1,"result":"0x2a"}'):
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
    handler.wfile.write(b"0\r\n\r\n")


def _answer_then_close(handler: _Hostile) -> None:
    # Answers as if the connection stayed open (HTTP/1.1, no "Connection: close"), then
    # closes it: the next call must notice and open a new one, not fail.
    _send(handler, b'{"jsonrpc":"2.0","id":1,"result":"0x7"}')
    handler.close_connection = True


def _raw(handler: _Hostile, answer: bytes, *, close: bool = True) -> None:
    handler.wfile.write(answer)
    handler.wfile.flush()
    handler.close_connection = close


_DEEP = 200_000
_OK_HEAD = b"HTTP/1.1 200 OK\r\n"
_FORTY_TWO = b'{"jsonrpc":"2.0","id":1,"result":"0x2a"}'
_FORTY_TWO_LENGTH = b"Content-Length: %d\r\n\r\n" % len(_FORTY_TWO)

_Answers = {
    "chunked": _chunked,
    "extra-bytes": lambda h: _raw(
        h,
        _OK_HEAD + _FORTY_TWO_LENGTH + _FORTY_TWO + b"junk",
        close=False,
    ),
    "extra-answer-start": lambda h: _raw(
        h,
        _OK_HEAD + _FORTY_TWO_LENGTH + _FORTY_TWO + b"HTTP/1.1 200 OK\r\n",
        close=False,
    ),
    "answer-then-close": _answer_then_close,
    "http-1.0": lambda h: _raw(h, b"HTTP/1.0 200 OK\r\n" + _FORTY_TWO_LENGTH + _FORTY_TWO),
    "until-close": lambda h: _raw(h, _OK_HEAD + b"Connection: close\r\n\r\n" + _FORTY_TWO),
    "chunked-with-trailer": lambda h: _raw(
        h,
        _OK_HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(_FORTY_TWO), _FORTY_TWO),
        close=False,
    ),
}

_Hostile.behaviours = {
    "not-json": lambda h: _send(h, b"<html>nope</html>"),
    "array": lambda h: _send(h, b"[1,2,3]"),
    "no-result": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1}'),
    "error": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"boom"}}'),
    "error-no-code": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"error":{"message":"x"}}'),
    "decimal-height": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":"123"}'),
    "number-height": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":123}'),
    "null-height": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":null}'),
    "huge-height": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":"0x' + b"f" * 40 + b'"}'),
    "http-500": lambda h: _send(h, b"oops", status=500),
    "oversized": lambda h: _send(h, b'{"result":"' + b"a" * (MAX_RESPONSE_BYTES + 10) + b'"}'),
    "undeclared-flood": _undeclared_flood,
    "trickle": _trickle,
    "hung": _hang,
    "deep-result": lambda h: _send(
        h, b'{"jsonrpc":"2.0","id":1,"result":' + b"[" * _DEEP + b"]" * _DEEP + b"}"
    ),
    "deep-answer": lambda h: _send(h, b"[" * _DEEP),
    "deep-error": lambda h: _send(
        h, b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":' + b"[" * _DEEP + b"}}"
    ),
    "not-utf8": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":"\xff\xfe"}'),
    "number-answer": lambda h: _send(h, b"42"),
    "huge-number": lambda h: _send(h, b'{"jsonrpc":"2.0","id":1,"result":1e999}'),
    "result-and-error": lambda h: _send(
        h, b'{"jsonrpc":"2.0","id":1,"result":"0x1","error":{"code":-1,"message":"x"}}'
    ),
    "no-jsonrpc": lambda h: _send(h, b'{"id":1,"result":"0x1"}'),
    "bad-status-line": lambda h: (h.wfile.write(b"NOT HTTP AT ALL\r\n\r\n"), h.wfile.flush()),
    "huge-headers": lambda h: _raw(h, _OK_HEAD + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n{}"),
    "header-without-colon": lambda h: _raw(h, _OK_HEAD + b"garbage\r\n\r\n{}"),
    "bad-content-length": lambda h: _raw(h, _OK_HEAD + b"Content-Length: -5\r\n\r\n{}"),
    "gzip-transfer": lambda h: _raw(h, _OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\n{}"),
    "bad-chunk-size": lambda h: _raw(h, _OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
    "chunk-over-cap": lambda h: _raw(
        h, _OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nfffffffff\r\n", close=False
    ),
    "chunk-without-crlf": lambda h: _raw(
        h, _OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
    ),
    "endless-chunk-line": lambda h: _raw(
        h, _OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 5000, close=False
    ),
    "status-only": lambda h: _raw(h, b"HTTP/1.1 200 OK\r\n"),
    "status-garbage": lambda h: _raw(h, b"HTTP/1.1 2x0 OK\r\n\r\n"),
    "truncated": lambda h: (
        h.send_response(200),
        h.send_header("Content-Length", "100"),
        h.send_header("Connection", "close"),
        h.end_headers(),
        h.wfile.write(b'{"result":'),
    ),
}


_Hostile.behaviours.update(_Answers)


@pytest.fixture
def hostile() -> Iterator[Callable[[str], str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    server.ports = []  # type: ignore[attr-defined]
    server.authorization = []  # type: ignore[attr-defined]
    server.open_connections = set()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def address(behaviour: str) -> str:
        server.behaviour = behaviour  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{server.server_address[1]}"

    address.server = server  # type: ignore[attr-defined]
    yield address
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("behaviour", sorted(set(_Hostile.behaviours) - set(_Answers)))
def test_hostile_answers_are_errors_within_the_timeout(
    hostile: Callable[[str], str], behaviour: str
) -> None:
    client = ChainClient(hostile(behaviour), timeout=1.0)
    began = time.monotonic()
    with pytest.raises(RpcError) as caught:
        client.block_number()
    assert time.monotonic() - began < 3.0
    assert len(str(caught.value)) < 400  # a huge answer is never echoed whole
    client.close()


@pytest.mark.parametrize("behaviour", ["deep-result", "deep-answer", "deep-error"])
def test_deeply_nested_answers_are_malformed_on_every_path(
    hostile: Callable[[str], str], behaviour: str
) -> None:
    # The head's prepared path (msgspec) and web3's own (json) both refuse the nesting with an
    # error, never a crash of the interpreter.
    client = ChainClient(hostile(behaviour), timeout=2.0)
    with pytest.raises(MalformedAnswer):
        client.block_number()
    with pytest.raises(RpcError):
        client.request("eth_blockNumber")
    client.close()


def test_a_chunked_answer_is_read_whole(hostile: Callable[[str], str]) -> None:
    client = ChainClient(hostile("chunked"), timeout=1.0)
    assert [client.block_number() for _ in range(3)] == [42, 42, 42]
    assert len(set(hostile.server.ports)) == 1  # type: ignore[attr-defined]
    client.close()


@pytest.mark.parametrize("behaviour", ["http-1.0", "until-close", "chunked-with-trailer"])
def test_every_framing_of_a_good_answer_is_read(
    hostile: Callable[[str], str], behaviour: str
) -> None:
    client = ChainClient(hostile(behaviour), timeout=1.0)
    assert [client.block_number() for _ in range(3)] == [42, 42, 42]
    assert client.request("eth_blockNumber") == "0x2a"
    client.close()


@pytest.mark.parametrize("behaviour", ["extra-bytes", "extra-answer-start"])
def test_answer_bytes_beyond_the_declared_length_end_the_connection(
    hostile: Callable[[str], str], behaviour: str
) -> None:
    client = ChainClient(hostile("http-1.0"), timeout=1.0)
    hostile.server.behaviour = behaviour  # type: ignore[attr-defined]
    assert client.block_number() == 42
    assert client.block_number() == 42
    ports = hostile.server.ports  # type: ignore[attr-defined]
    assert len(set(ports)) == 2  # the bytes nobody asked for were never read as an answer
    client.close()


def test_a_connection_the_node_closed_is_reopened_by_the_next_call(
    hostile: Callable[[str], str],
) -> None:
    client = ChainClient(hostile("answer-then-close"), timeout=1.0)
    for _ in range(3):
        # Wait until the server has closed it: the client must notice, not fail the call.
        wait_until(lambda: not _connection_open(hostile), timeout=5)
        assert client.block_number() == 7
    ports = hostile.server.ports  # type: ignore[attr-defined]
    assert len(set(ports)) == 3  # a new connection for each call, none failed
    client.close()


def _connection_open(hostile: Callable[[str], str]) -> bool:
    return bool(hostile.server.open_connections)  # type: ignore[attr-defined]


def test_credentials_in_the_address_are_sent_as_basic_authentication(
    hostile: Callable[[str], str],
) -> None:
    address = hostile("chunked").replace("http://", "http://operator:s%40cret@")
    client = ChainClient(address, timeout=1.0)
    assert client.block_number() == 42
    assert hostile.server.authorization == [  # type: ignore[attr-defined]
        "Basic " + base64.b64encode(b"operator:s@cret").decode()
    ]
    client.close()


@pytest.mark.parametrize(
    "address", ["http://", "http://127.0.0.1:port", "https://:8545", "http://h:1/a b"]
)
def test_an_http_address_without_host_or_port_is_an_rpc_error(address: str) -> None:
    with pytest.raises(RpcError, match=r"not an http|cannot be sent"):
        ChainClient(address, timeout=1.0).block_number()


def test_a_height_is_only_ever_a_hex_quantity(hostile: Callable[[str], str]) -> None:
    # web3's own formatter would read "123" as 0x123: the client never guesses a height.
    with pytest.raises(MalformedAnswer, match="not a block height: '123'"):
        ChainClient(hostile("decimal-height"), timeout=1.0).block_number()


def test_http_calls_share_one_kept_alive_connection(
    hostile: Callable[[str], str], anvil: AnvilProcess
) -> None:
    client = ChainClient(hostile("decimal-height"), timeout=1.0)
    for _ in range(5):
        with pytest.raises(MalformedAnswer):
            client.block_number()
    ports = hostile.server.ports  # type: ignore[attr-defined]
    assert len(ports) == 5
    assert len(set(ports)) == 1  # one TCP connection for every call
    client.close()


def test_a_failed_http_call_is_tried_once(hostile: Callable[[str], str]) -> None:
    client = ChainClient(hostile("http-500"), timeout=1.0)
    with pytest.raises(RpcError, match="HTTP 500"):
        client.block_number()
    assert len(hostile.server.ports) == 1  # type: ignore[attr-defined]  # no hidden retry


def test_a_closed_port_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"):
        began = time.monotonic()
        with pytest.raises(RpcError):
            ChainClient(address, timeout=2).block_number()
        assert time.monotonic() - began < 1.0


def test_a_missing_ipc_file_fails_fast(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(RpcError):
        ChainClient(str(tmp_path / "absent.ipc"), timeout=2).block_number()
    assert time.monotonic() - began < 1.0


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\n",
        b'{"jsonrpc":"2.0","id":0,"result":"123"}\n',
        b'{"jsonrpc":"2.0","id":0,"result":"0x' + b"1" * 30 + b'"}\n',
        b"",
    ],
    ids=["garbage", "decimal", "too-long", "closes"],
)
def test_hostile_ipc_answers_are_errors(short_root: Path, answer: bytes) -> None:
    path = str(short_root / "hostile.ipc")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answer:
                    conn.sendall(answer)
                    time.sleep(2)  # garbage never completes: the deadline ends the call

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ChainClient(path, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(RpcError):
        client.block_number()
    assert time.monotonic() - began < 3.0
    client.close()
    server.close()
    thread.join(5)
