"""May a backup operation start now? The BackupActor's scheduling rules (SPEC §7), pure.

One operation runs at a time. A pre-staging copy is background work nobody waits for: it gives
way to any other request (cancelled at its next chunk, taken up again afterwards). Otherwise a
request while busy is refused, except the upgrade's own requests (finishing its backup, a
rollback's restore), which wait for their turn, first in line: an upgrade must get its backup.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    """What a request asks for."""

    FULL = "full"  # `backup create`
    PRESTAGE = "prestage"  # the bulk copy for a plan, while the node runs
    UPGRADE = "upgrade"  # finish the plan's backup at H (the node is stopped)
    RESTORE = "restore"  # `backup restore`
    ROLLBACK_RESTORE = "rollback_restore"  # an upgrade's rollback restores its backup
    PRUNE = "prune"
    DELETE = "delete"  # `backup delete`


class Admission(enum.StrEnum):
    """What becomes of a request."""

    START = "start"  # now
    QUEUE = "queue"  # after what runs and what waits (a running pre-staging gives way)
    QUEUE_FIRST = "queue_first"  # after what runs, before what waits
    LATER = "later"  # pre-staging: once nothing else is running or waiting
    REFUSE = "refuse"  # busy


@dataclass(frozen=True)
class Load:
    """What the BackupActor is doing: the kind running (None: idle) and how many wait."""

    running: Kind | None = None
    waiting: int = 0

    @property
    def idle(self) -> bool:
        """Nothing runs and nothing waits."""
        return self.running is None and self.waiting == 0

    @property
    def busy(self) -> bool:
        """A request that cannot wait must be refused: something other than a pre-staging
        copy runs, or something waits."""
        return self.waiting > 0 or self.running not in (None, Kind.PRESTAGE)


_UPGRADES = (Kind.UPGRADE, Kind.ROLLBACK_RESTORE)


def admit(kind: Kind, load: Load) -> Admission:
    """Whether a request of `kind` starts now, waits (and where), or is refused."""
    if load.idle:
        return Admission.START
    if kind is Kind.PRESTAGE:
        return Admission.LATER
    if kind in _UPGRADES:
        return Admission.QUEUE_FIRST
    return Admission.REFUSE if load.busy else Admission.QUEUE


def preempts(admission: Admission, load: Load) -> bool:
    """Whether admitting a request this way cancels the running pre-staging copy."""
    return load.running is Kind.PRESTAGE and admission in (Admission.QUEUE, Admission.QUEUE_FIRST)
