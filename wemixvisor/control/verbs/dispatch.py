"""The control server's dispatch: a decoded request, carried out by its verb in the daemon."""

from __future__ import annotations

import threading
import time
from typing import Any

from loguru import logger

from wemixvisor.control.operations import Operations
from wemixvisor.control.protocol import ControlError, ErrorCode, Request
from wemixvisor.control.verbs.daemon import ControlContext
from wemixvisor.control.verbs.registry import STATUS, VERBS

__all__ = ["STATUS_MAX_AGE", "STATUS_REFRESH_AGE", "Dispatcher"]

STATUS_MAX_AGE = 0.25
"""A `status` this recent is answered at once, on the server thread (`Dispatcher.quick`)."""
STATUS_REFRESH_AGE = 0.05
"""A quick answer older than this also starts a refresh, so that busy clients keep it fresh."""


class Dispatcher:
    """The server's dispatch function: the request's verb, carried out in the daemon."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx
        self.operations = Operations(ctx.bus)
        ctx.operations = self.operations
        self._refreshing = threading.Lock()

    def quick(self, request: Request) -> tuple[Any] | None:
        """An answer that needs no actor, given on the server thread itself, or None.

        Many clients polling `status` are answered from a status at most STATUS_MAX_AGE old:
        every hand-over between threads costs latency on a busy machine, and a quarter of a
        second is well inside what an operator's `status` means by "now".
        """
        if request.verb != STATUS.name:
            return None
        cached = self.ctx.status_cache
        if cached is None:
            return None
        age = time.monotonic() - cached[0]
        if age > STATUS_MAX_AGE:
            return None
        if age > STATUS_REFRESH_AGE and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="control-status", daemon=True).start()
        return (cached[1],)

    def _refresh(self) -> None:
        try:
            self.ctx.status_flight.call(lambda: STATUS.refresh(self.ctx))
        except ControlError as exc:
            logger.debug("status refresh: {}", exc.message)
        finally:
            self._refreshing.release()

    def __call__(self, request: Request) -> Any:
        verb = VERBS.get(request.verb)
        if verb is None:
            raise ControlError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {request.verb!r}")
        if verb.changes_state and self.ctx.stopping.is_set():
            raise ControlError(ErrorCode.BUSY, "the daemon is stopping")
        return verb.execute(self.ctx, request)

    def close(self) -> None:
        """Stop following operations."""
        self.operations.stop()
