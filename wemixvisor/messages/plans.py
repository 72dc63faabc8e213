"""Messages to the OrchestratorActor about plans."""

from __future__ import annotations

from typing import Any

import msgspec

from wemixvisor.plans.queue import Plan


class RegisterPlans(msgspec.Struct, frozen=True):
    """New or re-read plans from one source (file, batch, control, governance).

    The orchestrator applies the queue rules and publishes plan.registered / plan.rejected
    itself. `done`, if given, is a pykka future set with a list of (name, outcome or error)
    pairs, for callers that must answer an operator.
    """

    plans: list[Plan]
    source: str
    now: bool = False
    done: Any = None


class CancelPlan(msgspec.Struct, frozen=True):
    """Cancel a pending plan; `done` (a pykka future) gets None or an error message."""

    name: str
    source: str = "control"
    done: Any = None


class ListPlans(msgspec.Struct, frozen=True):
    """Ask: answered with the queue (wemixvisor.plans.queue.QueueState) and the current journal."""


class ResendPlans(msgspec.Struct, frozen=True):
    """To the files actor: send the plans of the files again (a restarted orchestrator may have
    lost what it had been told but not yet queued)."""
