"""Messages of the HeightActor: what the chain head is, and whether RPC answers."""

from __future__ import annotations

import msgspec


class HeadObserved(msgspec.Struct, frozen=True):
    """A head height seen on the node's RPC (told to the orchestrator on every new head).

    `observed_at` is time.monotonic() when the answer arrived, for latency accounting.
    """

    height: int
    observed_at: float
    source: str  # "ws", "ipc" (subscriptions) or "poll"


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
    mode: str  # "ws", "ipc" (newHeads subscription) or "poll"
    stalled: bool
    poll_interval: float | None = None  # seconds between polls (None: subscribed)
    fallback: str | None = None  # why a ws/IPC address is polled: the subscription was refused
    block_time: float | None = None  # seconds, measured from the new heads; None until known


class ResendNextTrigger(msgspec.Struct, frozen=True):
    """To the orchestrator from a HeightActor that starts: tell `NextTrigger` again (one
    restarted by its supervisor forgot it, and the queue may not change for hours)."""


class NextTrigger(msgspec.Struct, frozen=True):
    """Told by the orchestrator whenever its queue changes: the head at which the next plan
    starts (H-1 of the lowest pending plan), or None. Polling tightens near it (SPEC §16)."""

    height: int | None
