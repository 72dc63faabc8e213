"""What goes wrong with a backup, restore or prune: the errors the backup modules raise."""

from __future__ import annotations


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message says why, with figures."""


class BackupBusy(BackupError):
    """Another backup operation is running (control code `busy`)."""


class BackupNotFound(BackupError, LookupError):
    """No backup of that id (control code `not_found`)."""


class BackupCancelled(BackupError):
    """The operation was cancelled (a pre-staging copy giving way to the upgrade)."""
