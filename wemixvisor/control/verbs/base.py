"""What every verb is, and what the plan and backup verbs ask of whoever carries them out.

A `Verb` ties one request Struct (`protocol.py`) to its reply Struct, what is done for it
(`execute`) and how the operator tool shows the reply (`render`). The reply Struct's JSON is the
`result` of the wire reply, byte for byte; the CLI decodes a result back into it.

`execute` gets a context. Verbs that only make sense with a daemon (status, start, logs…) take
the daemon's (`daemon.ControlContext`, which asks actors). The plan and backup verbs take a
`PlanContext` / `BackupContext`: the daemon implements them by asking its actors, and
`offline.OfflineContext` against the files in the home while no daemon runs, so the same
`execute` serves both.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec

from wemixvisor.config import Config
from wemixvisor.control.protocol import Request
from wemixvisor.home.layout import Home
from wemixvisor.messages.backup import BackupInfo
from wemixvisor.plans.queue import Plan, QueuedPlan, QueueState
from wemixvisor.upgrade.window import WindowState

__all__ = [
    "BackupContext",
    "DaemonState",
    "PlanContext",
    "PlanSnapshot",
    "PruneOutcome",
    "Registration",
    "Verb",
]

Ctx = TypeVar("Ctx")
Req = TypeVar("Req", bound=Request)
Rep = TypeVar("Rep", bound=msgspec.Struct)


class Verb(abc.ABC, Generic[Ctx, Req, Rep]):
    """One control verb: request and reply types, what is done for it, how its reply reads.

    `summary` is the verb's one-line description; `long_operation` verbs answer at once with an
    operation id and report their end as events; `changes_state` verbs are refused (`busy`)
    while the daemon is stopping; `offline` verbs also run on the files of a home whose daemon
    is down (their context is a PlanContext or BackupContext).
    """

    request_type: type[Req]
    reply_type: type[Rep]
    summary: ClassVar[str]
    long_operation: ClassVar[bool] = False
    changes_state: ClassVar[bool] = False
    offline: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The verb's `type` on the wire."""
        return str(self.request_type.__struct_config__.tag)

    @abc.abstractmethod
    def execute(self, ctx: Ctx, request: Req) -> Rep:
        """Carry out `request`; its reply (ControlError to refuse it)."""

    def render(self, reply: Rep) -> str:
        """The reply as the operator tool prints it."""
        return msgspec.json.format(msgspec.json.encode(reply), indent=2).decode()

    def decode_reply(self, result: Any) -> Rep:
        """A reply's `result` (decoded JSON) as the reply Struct; ValueError if it is not one."""
        try:
            return msgspec.convert(result, self.reply_type)
        except msgspec.ValidationError as exc:
            raise ValueError(f"malformed {self.name} result: {exc}") from None


class DaemonState(msgspec.Struct, frozen=True):
    """Whether a daemon runs on the home (None: its lock cannot be read), and its pid."""

    running: bool | None
    pid: int | None


@dataclass(frozen=True)
class PlanSnapshot:
    """The plan queue, the journal of the upgrade in progress (as JSON) and the chain head."""

    queue: QueueState
    journal: dict[str, Any] | None
    head: int | None
    preflight_ok: dict[str, bool] = field(default_factory=dict)  # the daemon's last verdicts
    windows: dict[str, WindowState] = field(default_factory=dict)  # window plans' slots (§19)
    block_time: float | None = None  # seconds, measured by the daemon (None: not known)


@dataclass(frozen=True)
class Registration:
    """What registering a plan did: `added`, `updated` or `unchanged`, the plan's entry in the
    queue after it (None if it has none), and the head it was checked against."""

    outcome: str
    entry: QueuedPlan | None
    head: int | None


@dataclass(frozen=True)
class PruneOutcome:
    """The backups a prune removed, or (None) the operation id of a prune still going on."""

    operation: str | None
    removed: list[str] | None


class PlanContext(Protocol):
    """What the plan verbs need, from the daemon's actors or from the files of a home."""

    @property
    def home(self) -> Home:
        """The home whose plans these are."""

    @property
    def config(self) -> Config:
        """The configuration its checks follow."""

    def plan_snapshot(self) -> PlanSnapshot:
        """The queue, the journal and the head now."""

    def register_plan(self, plan: Plan, *, now: bool) -> Registration:
        """Register `plan` by the queue's rules (a passed height only with `now`); ControlError
        when it is refused."""

    def cancel_plan(self, name: str) -> None:
        """Cancel pending plan `name` in the queue; ControlError when that cannot be done."""

    def daemon_state(self) -> DaemonState:
        """Whether a daemon runs on the home."""


class BackupContext(Protocol):
    """What the backup verbs that also work offline need."""

    def list_backups(self) -> list[BackupInfo]:
        """Every backup, complete or not."""

    def prune_backups(self) -> PruneOutcome:
        """Remove what retention does not keep."""

    def delete_backup(self, backup_id: str) -> str:
        """Remove backup `backup_id` (a plain name); the path removed. ControlError:
        not_found, or conflict when an unfinished upgrade needs it."""
