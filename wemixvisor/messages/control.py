"""Events of the control server (SPEC §11): the completion of a long operation.

Long operations (node start/stop/restart, a backup prune that outlasts its request) are
answered at once with an operation id; this event says how each one ended.
"""

from __future__ import annotations

from wemixvisor.messages.events import Event


class OperationCompleted(Event, tag="control.operation_completed", frozen=True):
    """Operation `operation` (started by control verb `verb`) ended: `ok`, and what happened."""

    operation: str
    verb: str
    ok: bool
    detail: str
