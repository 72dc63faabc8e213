"""Client side of the control socket: one request, one reply, a bounded wait.

Each request uses a fresh REQ socket (LINGER 0), so a reply that never comes cannot leave the
client stuck in REQ's send/receive lock-step; the wait for the reply is a poll with a deadline.
An ipc endpoint whose socket file is missing or refuses connections fails at once instead of
waiting out the timeout (checked before a client's first request and after a silence; a daemon
that answered the previous request is not probed again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import zmq

from wemixvisor.control.protocol import (
    MAX_FRAME_BYTES,
    ControlError,
    Request,
    decode_reply,
    encode_request,
    new_request_id,
)
from wemixvisor.control.security import CurveClientKeys
from wemixvisor.home.ipc import ipc_path, unix_socket_accepts

__all__ = ["ControlClient", "ControlError", "ControlUnreachable"]


class ControlUnreachable(Exception):
    """No daemon answered at `endpoint` within the timeout (or none listens there at all)."""

    def __init__(self, endpoint: str, reason: str = "") -> None:
        message = f"no answer from the daemon at {endpoint}"
        super().__init__(f"{message}: {reason}" if reason else message)
        self.endpoint = endpoint
        self.reason = reason


class ControlClient:
    """Sends requests to the daemon's control endpoint.

    `request(Status(id=new_request_id()))` returns the reply's `result`. Raises ControlError
    for an error reply and ControlUnreachable when no reply arrives within `timeout` seconds.
    `curve` holds the keys for a CURVE-protected tcp endpoint. Safe to share between threads:
    every request has its own socket.
    """

    def __init__(
        self, endpoint: str, timeout: float = 5.0, *, curve: CurveClientKeys | None = None
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._context: zmq.Context[zmq.Socket[bytes]] | None = zmq.Context()
        self._answered = False  # the last request got a reply: skip the listener probe

    def request(self, request: Request | Mapping[str, Any]) -> Any:
        """Send one request and return the `result` of its reply (decoded JSON).

        `request` is a request Struct; a mapping is sent as it is (an `id` added when it has
        none), for tools that speak the wire format directly.
        """
        if self._context is None:
            raise RuntimeError("the control client is closed")
        if isinstance(request, Request):
            request_id: Any = request.id
            raw = encode_request(request)
        else:
            message = dict(request)
            request_id = message.setdefault("id", new_request_id())
            raw = encode_request(message)
        if not self._answered:
            self._check_listener()
        self._answered = False
        deadline = time.monotonic() + self.timeout
        sock = self._context.socket(zmq.REQ)
        try:
            self._configure(sock)
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as exc:
                raise ControlUnreachable(self.endpoint, str(exc)) from exc
            if not sock.poll(_remaining_ms(deadline), zmq.POLLOUT):
                raise ControlUnreachable(self.endpoint, self._hint())
            sock.send(raw, flags=zmq.NOBLOCK)
            if not sock.poll(_remaining_ms(deadline), zmq.POLLIN):
                raise ControlUnreachable(self.endpoint, self._hint())
            frame = sock.recv(flags=zmq.NOBLOCK)
        finally:
            sock.close(linger=0)
        self._answered = True
        try:
            reply = decode_reply(frame)
        except ValueError as exc:
            raise ControlError("internal", str(exc)) from None
        if reply.id != request_id:
            raise ControlError(
                "internal", f"reply for request {reply.id!r} instead of {request_id!r}"
            )
        if not reply.ok:
            raise ControlError(reply.error_code, reply.error_message)
        return reply.result

    def close(self) -> None:
        """Release the ZeroMQ context; the client cannot be used afterwards."""
        context, self._context = self._context, None
        if context is not None:
            context.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _configure(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        if self.endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)
        if self.curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)

    def _check_listener(self) -> None:
        """Fail at once when nothing can be listening on an ipc endpoint."""
        path = ipc_path(self.endpoint)
        if path is None:
            return
        if not path.exists():
            raise ControlUnreachable(self.endpoint, f"{path} does not exist")
        try:
            accepts = unix_socket_accepts(path, timeout=min(self.timeout, 1.0))
        except OSError as exc:
            raise ControlUnreachable(self.endpoint, f"cannot connect to {path}: {exc}") from exc
        if not accepts:
            raise ControlUnreachable(self.endpoint, f"nothing listens on {path}")

    def _hint(self) -> str:
        reason = f"no reply within {self.timeout:g}s"
        if self.endpoint.startswith("tcp://") and self.curve is None:
            reason += " (a CURVE-protected endpoint answers only clients with authorized keys)"
        return reason


def _remaining_ms(deadline: float) -> int:
    return max(0, math.ceil((deadline - time.monotonic()) * 1000))
