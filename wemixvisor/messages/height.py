"""Messages of the HeightActor: what the chain head is, and whether RPC answers."""

from __future__ import annotations

import msgspec


class HeadObserved(msgspec.Struct, frozen=True):
    """A head height seen on the node's RPC (told to the orchestrator on every new head).

    `observed_at` is time.monotonic() when the answer arrived, for latency accounting.
    """

    height: int
    observed_at: float
    source: str  # "ws" or "poll"


class RpcAvailability(msgspec.Struct, frozen=True):
    """Told to the orchestrator whenever RPC goes down or comes back."""

    available: bool
    error: str | None = None


class GetHeight(msgspec.Struct, frozen=True):
    """Ask: answered with a HeightStatus."""


class HeightStatus(msgspec.Struct, frozen=True):
    """What status reports about the chain head."""

    height: int | None  # None until the first valid answer: never guessed
    observed_age: float | None  # seconds since the last new head
    rpc_available: bool
    last_error: str | None
    mode: str  # "ws" or "poll"
    stalled: bool
