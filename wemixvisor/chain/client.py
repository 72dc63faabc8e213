"""`ChainClient`: the daemon's few calls to the node, through web3 (SPEC §13.1).

web3 is the chain client (`wemixvisor.chain.providers` sets it up: kept-alive HTTP session,
persistent IPC socket, web3's websocket provider; short timeouts, no hidden retries, size caps,
WBFT extraData handling, the `istanbul` module). This facade gives callers typed methods and
the project's exceptions instead of web3's: whatever goes wrong — transport, timeout, an error
object, a malformed answer — is an `RpcError` (`RpcMethodNotFound` for -32601), one attempt per
call; callers own retry and backoff.

web3 is imported when the first client is made, not with this module (`load_web3`): the CLI
stays fast, and the recursion limit that web3's import raises is put back.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from wemixvisor.chain.rpc import (
    MalformedAnswer,
    RpcError,
    RpcMethodNotFound,
    describe_value,
    parse_quantity,
)

if TYPE_CHECKING:
    from web3 import Web3
    from web3.types import RPCEndpoint

    from wemixvisor.chain.istanbul import Istanbul

__all__ = ["ChainClient", "address_kind", "load_web3", "rpc_failure", "translated"]

T = TypeVar("T")

_METHOD_NOT_FOUND = -32601
_SHOWN_CHARS = 200


_web3_lock = threading.Lock()


def load_web3() -> ModuleType:
    """`wemixvisor.chain.providers` (and web3 with it), imported once.

    web3's import pulls in py_ecc, which raises the recursion limit to 100000: a deeply nested
    hostile JSON document would then overflow the C stack (a segfault) instead of raising
    RecursionError. The limit in force before the import is put back.
    """
    with _web3_lock:
        limit = sys.getrecursionlimit()
        try:
            from wemixvisor.chain import providers  # noqa: PLC0415 - web3 is heavy
        finally:
            sys.setrecursionlimit(limit)
    return providers


def address_kind(address: str) -> str:
    """`http`, `ws` or `ipc` for an RPC address; ValueError for anything else."""
    if address.startswith(("http://", "https://")):
        return "http"
    if address.startswith(("ws://", "wss://")):
        return "ws"
    if "://" in address or not address:
        raise ValueError(f"unsupported RPC address {address!r}")
    return "ipc"


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        # urllib3 keeps the cause in `reason` (websockets has a deprecated one: not read).
        reason = (
            getattr(current, "reason", None)
            if type(current).__module__.startswith("urllib3")
            else None
        )
        current = (
            reason
            if isinstance(reason, BaseException)
            else (current.__cause__ or current.__context__)
        )


def _transport_problem(exc: BaseException) -> str | None:
    """What went wrong on the way to the node, in the operator's words; None when the node
    did answer (then the answer was malformed)."""
    load_web3()
    from web3.exceptions import ProviderConnectionError, TimeExhausted  # noqa: PLC0415

    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror  # "Connection refused", "No such file or directory"...
    for cause in chain:
        if isinstance(cause, (TimeoutError, TimeExhausted)) or "Timeout" in type(cause).__name__:
            return "timed out"
    # The deepest transport error says most ("InvalidStatus: server rejected WebSocket...").
    for cause in reversed(chain):
        if type(cause).__module__.startswith(("http.client", "urllib3", "websockets")):
            return f"{type(cause).__name__}: {_short(str(cause))}"
    for cause in chain:
        if isinstance(cause, (OSError, ProviderConnectionError)):
            return f"{type(cause).__name__}: {_short(str(cause))}"
    return None


def rpc_failure(address: str, exc: BaseException) -> RpcError:
    """The project's exception for whatever a web3 call raised: the node's error object, a
    transport failure, or a malformed answer (anything the node sent that web3 could not read)."""
    if isinstance(exc, RpcError):
        return exc
    response = getattr(exc, "rpc_response", None)
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        shown = _short(message) if isinstance(message, str) else describe_value(message)
        text = f"JSON-RPC error {describe_value(code)}: {shown}"
        if code == _METHOD_NOT_FOUND:
            return RpcMethodNotFound(text)
        return RpcError(text)
    problem = _transport_problem(exc)
    if problem is not None:
        return RpcError(f"{address}: {problem}")
    detail = _short(str(exc)) or type(exc).__name__
    return MalformedAnswer(f"{address}: malformed JSON-RPC answer: {type(exc).__name__}: {detail}")


@contextlib.contextmanager
def translated(address: str) -> Iterator[None]:
    """Raise whatever fails inside as the project's RpcError family."""
    try:
        yield
    except RpcError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile answer can break web3 in any way
        raise rpc_failure(address, exc) from None


def _block_number(w3: Web3) -> Any:
    method = cast("RPCEndpoint", "eth_blockNumber")
    answer_without_params = getattr(w3.provider, "answer_without_params", None)
    if answer_without_params is None:
        return w3.manager.request_blocking(method, [])
    return w3.manager.formatted_response(answer_without_params(method), [])


class ChainClient:
    """One node endpoint: http(s)://, ws(s):// or an IPC path. Blocking: actors call it from
    their workers. Calls from several threads are serialised."""

    def __init__(self, address: str, *, timeout: float = 5.0, w3: Web3 | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.kind = address_kind(address) if w3 is None else "custom"
        self._w3 = w3
        self._lock = threading.Lock()

    def _web3(self) -> Web3:
        if self._w3 is None:
            self._w3 = cast("Web3", load_web3().sync_web3(self.address, self.kind, self.timeout))
        return self._w3

    def _ask(self, use: Callable[[Web3], T]) -> T:
        with self._lock, translated(self.address):
            return use(self._web3())

    def request(self, method: str, params: list[Any] | None = None) -> Any:
        """The raw result of one call (through web3's middleware, without its formatters):
        for readers that check the answer themselves."""
        endpoint = cast("RPCEndpoint", method)
        return self._ask(lambda w3: w3.manager.request_blocking(endpoint, params or []))

    def block_number(self) -> int:
        """`eth_blockNumber`, strictly a hex quantity (never a guessed height).

        Over HTTP the provider's prepared path (`answer_without_params`), its answer checked by
        web3's `formatted_response`: the head is polled for the daemon's whole life, and the
        middleware has nothing to do for this method.
        """
        return parse_quantity(self._ask(_block_number), "a block height")

    def client_version(self) -> str:
        """`web3_clientVersion`."""
        version = self.request("web3_clientVersion")
        if not isinstance(version, str):
            raise MalformedAnswer(f"web3_clientVersion: {describe_value(version)}")
        return version

    def block(self, number: int) -> dict[str, Any]:
        """`eth_getBlockByNumber(number, false)`: the block as the node sent it, except that
        the WBFT seal in `extraData` is moved to `proofOfAuthorityData`, as bytes (web3's
        handling of long extraData)."""
        answer = self.request("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(answer, dict):
            raise MalformedAnswer(f"block {number}: the answer is not a block")
        return answer

    def istanbul(self, use: Callable[[Istanbul], T]) -> T:
        """Call the `istanbul` web3 module: `client.istanbul(lambda ist: ist.node_address())`."""
        return self._ask(lambda w3: use(w3.istanbul))  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the kept-alive connection, if any (a later call opens a new one)."""
        with self._lock:
            provider = self._w3.provider if self._w3 is not None else None
            close = getattr(provider, "close", None)
            if callable(close):
                with contextlib.suppress(OSError):
                    close()
