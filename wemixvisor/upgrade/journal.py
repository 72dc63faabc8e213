"""The journal of the upgrade in progress: state/journal.json (SPEC §5).

Rewritten durably before each step of the saga, so a daemon killed at any moment resumes the
same upgrade on its next start. The orchestrator owns it: it reads it at start and hands it to
the saga, which alone writes it until the upgrade is over. The file itself is `home.state`'s.
"""

from __future__ import annotations

import enum
from pathlib import Path

import msgspec

from wemixvisor.home import state
from wemixvisor.home.state import JournalError, clear_journal, save_journal
from wemixvisor.plans.queue import Plan

__all__ = ["Journal", "JournalError", "Step", "clear_journal", "load_journal", "save_journal"]


class Step(enum.StrEnum):
    """The saga's steps, in order, plus the rollback."""

    STOPPING = "stopping"
    BACKUP = "backup"
    CUSTOM_PREUPGRADE = "custom_preupgrade"
    SWITCH = "switch"
    APP_PREUPGRADE = "app_preupgrade"
    STARTING = "starting"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"


class Journal(msgspec.Struct, kw_only=True):
    """state/journal.json: the upgrade in progress."""

    plan: Plan
    step: Step
    from_target: str
    to_target: str
    observed_height: int | None
    late: bool
    started_at: float
    stop_requested_at: float | None = None
    backup: str | None = None
    new_binary_started: bool = False
    failure: str | None = None
    failed_step: str | None = None
    resumed: int = 0
    # Validator mode: whether the node validated, and with which address, when the upgrade was
    # armed, a few blocks before the stop (None when unknown: not validator mode, not a WBFT
    # chain, or the node did not answer).
    validator: bool | None = None
    validator_address: str | None = None
    # The node's arguments before the upgrade, and those the plan gives the new binary (None:
    # it declares none, the configured ones apply). A rollback's `current` brings the old back.
    from_args: list[str] | None = None
    to_args: list[str] | None = None

    @property
    def name(self) -> str:
        """The plan's name."""
        return self.plan.name

    @property
    def height(self) -> int:
        """The plan's height H."""
        return self.plan.height

    @property
    def holder(self) -> str:
        """Who holds the node's lease while this upgrade runs."""
        return f"upgrade {self.plan.name}"


def load_journal(path: Path) -> Journal | None:
    """The journal, None when no upgrade is in progress, JournalError when unreadable."""
    return state.load_journal(path, Journal)
