"""WbftDouble: a TEST DOUBLE of a WBFT node's `istanbul_*` namespace, in front of a real anvil.

anvil has no `istanbul_*` methods (SPEC §17). This small JSON-RPC HTTP proxy forwards every
request to anvil unchanged, except single `istanbul_*` calls, which it answers itself from a
configurable validator set with the shapes of SPEC §13.2 (as go-wbft encodes them: capitalised
keys in `getCommitSignersFromBlock`, lower-case hex addresses, JSON numbers for block numbers).

A watcher thread records, for every block anvil produces, which validators "committed" it: the
validators marked as signing at the moment the block was first seen. `stop_signing(address)`
makes a validator (e.g. "our" node) absent from the committers of every later block.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devtools.anvil import rpc_call

UNKNOWN_BLOCK = {"code": -32000, "message": "unknown block"}


def address(n: int) -> str:
    """A distinct, valid validator address for tests (lower-case hex)."""
    return "0x" + f"{n:040x}"


class WbftDouble:
    """The proxy: `url` is what the daemon uses as its RPC address."""

    def __init__(
        self,
        upstream: str,
        *,
        validators: list[str],
        node_address: str,
        signing: set[str] | None = None,
    ) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.validators = sorted(a.lower() for a in validators)
        self.node_address = node_address.lower()
        self._signing = {a.lower() for a in (signing if signing is not None else validators)}
        self._committers: dict[int, list[str]] = {}
        self._head = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.calls: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="wbft-double", daemon=True),
            threading.Thread(target=self._watch, name="wbft-double-blocks", daemon=True),
        ]

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port> of the proxy."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WbftDouble:
        """Serve and record blocks (on daemon threads)."""
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        """Stop serving and watching."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)

    def stop_signing(self, validator: str) -> None:
        """`validator` is absent from the committers of every block seen from now on."""
        with self._lock:
            self._signing.discard(validator.lower())

    def resume_signing(self, validator: str) -> None:
        """`validator` commits again from the next block seen."""
        with self._lock:
            self._signing.add(validator.lower())

    def committers(self, block: int) -> list[str] | None:
        """What the double recorded for `block` (None before it was seen)."""
        with self._lock:
            return self._committers.get(block)

    # block watcher

    def _upstream_url(self) -> str:
        return f"{self.upstream.scheme}://{self.upstream.netloc}"

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                head = int(rpc_call(self._upstream_url(), "eth_blockNumber", timeout=1.0), 16)
            except Exception:  # the node is restarting (an upgrade): try again
                head = None
            if head is not None:
                self._record_until(head)
            self._stop.wait(0.02)

    def _record_until(self, head: int) -> None:
        with self._lock:
            signing = sorted(self._signing & set(self.validators))
            for block in range(max(self._head + 1, 0), head + 1):
                self._committers.setdefault(block, signing)
            self._head = max(self._head, head)

    # answers

    def _author(self, block: int) -> str:
        return self.validators[block % len(self.validators)]

    def answer(self, method: str, params: list[Any]) -> tuple[Any, dict[str, Any] | None]:
        """(result, error) of one `istanbul_*` call."""
        with self._lock:
            head = self._head
        if method == "istanbul_nodeAddress":
            return self.node_address, None
        if method == "istanbul_getValidators":
            return list(self.validators), None
        if method == "istanbul_isValidator":
            return self.node_address in self.validators, None
        if method == "istanbul_getCommitSignersFromBlock":
            block = _block(params[0] if params else None, head)
            committers = self.committers(block) if block is not None else None
            if block is None or committers is None:
                return None, UNKNOWN_BLOCK
            header = rpc_call(self._upstream_url(), "eth_getBlockByNumber", [hex(block), False])
            return {
                "Number": block,
                "Hash": header["hash"] if header else "0x" + "00" * 32,
                "Author": self._author(block),
                "Committers": committers,
            }, None
        if method == "istanbul_status":
            return self._status(params, head)
        return None, {"code": -32601, "message": f"the method {method} does not exist"}

    def _status(self, params: list[Any], head: int) -> tuple[Any, dict[str, Any] | None]:
        if params:
            start, end = _block(params[0], head), _block(params[1], head)
            if start is None or end is None or start > end or end > head:
                return None, {"code": -32000, "message": "bad block range"}
        else:
            end, start = head, max(head - 63, 0)
        counts = dict.fromkeys(self.validators, 0)
        authors = dict(counts)
        for block in range(start, end + 1):
            for committer in self.committers(block) or []:
                counts[committer] += 1
            authors[self._author(block)] += 1
        zeros = dict.fromkeys(self.validators, 0)
        return {
            "sealerActivity": {
                "total": {v: 2 * n for v, n in counts.items()},
                "prepared": dict(counts),
                "committed": dict(counts),
                "prevPrepared": dict(zeros),
                "prevCommitted": dict(zeros),
            },
            "author": authors,
            "blockRange": {
                "startBlock": start,
                "endBlock": end,
                "totalBlocks": end - start + 1,
            },
            "roundStats": {"roundDistribution": {"0": end - start + 1}},
        }, None

    # HTTP

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=5
        )
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 502, b"upstream unavailable"
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    request = json.loads(body)
                except ValueError:
                    request = None
                method = request.get("method") if isinstance(request, dict) else None
                if isinstance(method, str) and method.startswith("istanbul_"):
                    double.calls.append(method)
                    try:
                        result, error = double.answer(method, request.get("params") or [])
                    except Exception as exc:  # anvil restarting: answer like a busy node
                        result, error = None, {"code": -32000, "message": str(exc)}
                    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
                    if error is not None:
                        reply["error"] = error
                    else:
                        reply["result"] = result
                    status, payload = 200, json.dumps(reply).encode()
                else:
                    status, payload = double._forward(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read events, not access logs

        return Handler


def _block(value: Any, head: int) -> int | None:
    if value is None or value == "latest":
        return head
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def wait_for_block(double: WbftDouble, block: int, timeout: float = 30.0) -> list[str]:
    """The committers the double recorded for `block`, once it has seen it."""
    deadline = time.monotonic() + timeout
    while (committers := double.committers(block)) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"the WBFT double never saw block {block}")
        time.sleep(0.02)
    return committers
