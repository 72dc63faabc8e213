"""Where actors find each other by role.

Actors never hold each other's refs directly: a restarted actor gets a new ref, and the
supervisor swaps it in here, so a sender always reaches the live one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
from loguru import logger

from wemixvisor.messages.events import Event

_RETRY_PAUSE = 0.05
"""Seconds between two tries while an actor is being restarted by its supervisor."""


class Bus:
    """Role name → current ActorRef; fire-and-forget `tell`, bounded `ask`."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._lock = threading.Lock()

    def register(self, role: str, ref: pykka.ActorRef[Any]) -> None:
        """Make `ref` the actor that plays `role` from now on."""
        with self._lock:
            self._refs[role] = ref

    def unregister(self, role: str) -> None:
        """Forget `role` (its actor stopped for good)."""
        with self._lock:
            self._refs.pop(role, None)

    def ref(self, role: str) -> pykka.ActorRef[Any] | None:
        """The live actor playing `role`, if any."""
        with self._lock:
            return self._refs.get(role)

    def tell(self, role: str, message: Any) -> bool:
        """Send without waiting; False (and a debug line) when nobody plays `role` now."""
        ref = self.ref(role)
        if ref is None:
            logger.debug("no {} actor for {}", role, type(message).__name__)
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            logger.debug("{} actor is dead; dropped {}", role, type(message).__name__)
            return False
        return True

    def ask(self, role: str, message: Any, timeout: float) -> Any:
        """Ask `role` and wait at most `timeout` seconds (pykka.Timeout / ActorDeadError raise)."""
        ref = self.ref(role)
        if ref is None:
            raise pykka.ActorDeadError(f"no {role} actor")
        return ref.ask(message, timeout=timeout)

    def ask_retrying(self, role: str, message: Any, *, within: float, timeout: float = 5.0) -> Any:
        """`ask`, asked again while `role`'s actor is being restarted (dead, or not answering)
        until `within` seconds have passed; then the last pykka.Timeout / ActorDeadError raises.

        Blocking: for worker threads, never from inside an actor.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                return self.ask(role, message, timeout=timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_RETRY_PAUSE)

    def tell_retrying(self, role: str, message: Any, *, within: float) -> bool:
        """`tell`, tried again while nobody plays `role` (its actor is being restarted) until
        `within` seconds have passed; whether the message was delivered."""
        deadline = time.monotonic() + within
        while not self.tell(role, message):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY_PAUSE)
        return True

    def publish(self, event: Event) -> None:
        """Broadcast a lifecycle event (the events actor stamps and sends it)."""
        self.tell("events", event)
