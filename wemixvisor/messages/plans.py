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


class RehearsePlan(msgspec.Struct, frozen=True):
    """Rehearse pending plan `name`'s new binary on a scratch copy of its pre-staged backup.

    `done` (a pykka future) gets None when the rehearsal was accepted, else a `Refusal`;
    `finished`, when given, gets the `upgrade.rehearsed` event once it is over."""

    name: str
    done: Any = None
    finished: Any = None


class RollbackPlan(msgspec.Struct, frozen=True):
    """Roll completed upgrade `name` back: `current` to the binary before it, and with
    `restore` its backup in place of the data. `done` gets None (accepted) or a `Refusal`;
    `finished`, when given, gets the final `upgrade.rollback_completed|failed` event."""

    name: str
    restore: bool = False
    done: Any = None
    finished: Any = None


class Refusal(msgspec.Struct, frozen=True):
    """Why the orchestrator refused a request: `code` is a control error code (not_found,
    conflict, busy, bad_request) and `message` is for the operator."""

    code: str
    message: str
