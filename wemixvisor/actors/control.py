"""ControlActor: owns the control socket's server (SPEC §11) under the daemon's supervision.

The server runs on threads of its own (a ROUTER thread and a small worker pool, see
`wemixvisor.control.server`); the actor gives it a place in the start and stop order and a
supervisor that restarts it when its serving loop dies.
"""

from __future__ import annotations

from typing import Any

import msgspec

from wemixvisor.actors.base import FailureSink, SupervisedActor
from wemixvisor.actors.workers import tell_if_alive
from wemixvisor.control.security import ServerCurve
from wemixvisor.control.server import ControlServer
from wemixvisor.control.verbs import ControlContext, Dispatcher


class _ServerCrashed(msgspec.Struct, frozen=True):
    error: str


class ControlServerCrashed(RuntimeError):
    """The control server's loop died; the actor fails so that its supervisor restarts it."""


class ControlActor(SupervisedActor):
    """Serves the control protocol on `endpoint` for the daemon described by `context`."""

    role = "control"

    def __init__(
        self,
        *,
        context: ControlContext,
        endpoint: str,
        curve: ServerCurve | None,
        failure_sink: FailureSink | None = None,
    ) -> None:
        super().__init__(failure_sink)
        self._context = context
        self._endpoint = endpoint
        self._curve = curve
        self._dispatcher: Dispatcher | None = None
        self._server: ControlServer | None = None

    def setup(self) -> None:
        ref = self.actor_ref

        def crashed(exc: BaseException) -> None:
            tell_if_alive(ref, _ServerCrashed(repr(exc)))

        self._dispatcher = Dispatcher(self._context)
        self._server = ControlServer(
            self._endpoint,
            self._dispatcher,
            curve=self._curve,
            on_crash=crashed,
            quick=self._dispatcher.quick,
        )
        try:
            self._server.start()
        except Exception:
            self._close()
            raise

    def release(self) -> None:
        # Also after a failure: the endpoint must be free for the replacement.
        self._close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _ServerCrashed):
            raise ControlServerCrashed(message.error)
        return super().on_receive(message)

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.close()
