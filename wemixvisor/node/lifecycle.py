"""The node's lifecycle as a transition table (SPEC §6): (state, trigger) → (state, actions).

supervisord's `transition()` idea, as data: the NodeActor feeds each trigger (a command, a
report from a worker, a restart-policy decision) to `transition` and carries out the actions it
returns, in order. Nothing here does I/O, so the table is tested without processes.

Besides the state, the lifecycle remembers one thing: a start asked for while the node was
stopping (or a restart), carried out once it has stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wemixvisor.messages.node import NodeState


class Trigger(enum.StrEnum):
    """What happened to the node, or what was asked of it."""

    START = "start"  # a start was asked (also leaves FATAL, cuts a BACKOFF short)
    STOP = "stop"  # a graceful stop was asked
    RESTART = "restart"  # stop, then start again
    ADOPTED = "adopted"  # a node left running by an earlier run was taken over
    SPAWNING = "spawning"  # the node is being started (its binary was found)
    CANNOT_START = "cannot_start"  # `current` is broken: no retry can fix that
    SPAWN_FAILED = "spawn_failed"  # the binary could not be executed
    CONFIRMED = "confirmed"  # RPC answered, or alive for STARTSECS
    EXITED = "exited"  # the process ended
    BACKOFF_ELAPSED = "backoff_elapsed"
    GRACE_EXPIRED = "grace_expired"  # still running after the stop's grace
    # The restart policy's decisions after an unexpected exit:
    RESTART_NOW = "restart_now"
    BACK_OFF = "back_off"
    GIVE_UP = "give_up"
    STAY_EXITED = "stay_exited"


class Action(enum.StrEnum):
    """What the NodeActor does after a transition."""

    SPAWN = "spawn"  # start the node on `current`
    TERMINATE = "terminate"  # SIGTERM to the group, arm the grace timer
    KILL = "kill"  # SIGKILL to the group
    CANCEL_BACKOFF = "cancel_backoff"
    RESET_HISTORY = "reset_history"  # a fresh start: FATAL's count and the back-off reset
    RESOLVE_STOP_WAITERS = "resolve_stop_waiters"  # answer those waiting for the stop
    ANNOUNCE_RUNNING = "announce_running"
    ANNOUNCE_STOPPED = "announce_stopped"
    APPLY_RESTART_POLICY = "apply_restart_policy"  # decide what an unexpected exit leads to
    COUNT_RESTART = "count_restart"
    SCHEDULE_BACKOFF = "schedule_backoff"
    ANNOUNCE_FATAL = "announce_fatal"


@dataclass(frozen=True)
class Lifecycle:
    """The node's state, and whether it starts again once stopped."""

    state: NodeState = NodeState.STOPPED
    start_after_stop: bool = False


@dataclass(frozen=True)
class Rule:
    """One row of the table: the next state (None: unchanged), the actions, and the new
    start-after-stop flag (None: unchanged)."""

    state: NodeState | None
    actions: tuple[Action, ...] = ()
    start_after_stop: bool | None = None


S = NodeState
A = Action
_UP = (S.STARTING, S.RUNNING)
_DOWN = (S.STOPPED, S.EXITED, S.BACKOFF, S.FATAL)
_ALL = tuple(NodeState)
_FRESH_START = Rule(None, (A.CANCEL_BACKOFF, A.RESET_HISTORY, A.SPAWN))

_ROWS: list[tuple[tuple[NodeState, ...], Trigger, bool | None, Rule]] = [
    # (states, trigger, only when start_after_stop is, rule)
    (_UP, Trigger.START, None, Rule(None)),
    ((S.STOPPING,), Trigger.START, None, Rule(None, start_after_stop=True)),
    (_DOWN, Trigger.START, None, _FRESH_START),
    (_UP, Trigger.STOP, None, Rule(S.STOPPING, (A.TERMINATE,), start_after_stop=False)),
    ((S.STOPPING,), Trigger.STOP, None, Rule(None, start_after_stop=False)),
    ((S.STOPPED,), Trigger.STOP, None, Rule(None, (A.CANCEL_BACKOFF, A.RESOLVE_STOP_WAITERS))),
    (
        (S.EXITED, S.BACKOFF, S.FATAL),
        Trigger.STOP,
        None,
        Rule(S.STOPPED, (A.CANCEL_BACKOFF, A.RESOLVE_STOP_WAITERS), start_after_stop=False),
    ),
    (_UP, Trigger.RESTART, None, Rule(S.STOPPING, (A.TERMINATE,), start_after_stop=True)),
    ((S.STOPPING,), Trigger.RESTART, None, Rule(None, start_after_stop=True)),
    (_DOWN, Trigger.RESTART, None, _FRESH_START),
    ((S.STOPPED,), Trigger.ADOPTED, None, Rule(S.RUNNING)),
    (_ALL, Trigger.SPAWNING, None, Rule(S.STARTING)),
    (_ALL, Trigger.CANNOT_START, None, Rule(S.FATAL, (A.ANNOUNCE_FATAL,))),
    (_ALL, Trigger.SPAWN_FAILED, None, Rule(None, (A.APPLY_RESTART_POLICY,))),
    ((S.STARTING,), Trigger.CONFIRMED, None, Rule(S.RUNNING, (A.ANNOUNCE_RUNNING,))),
    (
        (S.STOPPING,),
        Trigger.EXITED,
        False,
        Rule(S.STOPPED, (A.ANNOUNCE_STOPPED, A.RESOLVE_STOP_WAITERS)),
    ),
    (
        (S.STOPPING,),
        Trigger.EXITED,
        True,
        Rule(
            S.STOPPED,
            (A.ANNOUNCE_STOPPED, A.RESOLVE_STOP_WAITERS, A.RESET_HISTORY, A.SPAWN),
            start_after_stop=False,
        ),
    ),
    ((*_UP, *_DOWN), Trigger.EXITED, None, Rule(None, (A.APPLY_RESTART_POLICY,))),
    ((S.BACKOFF,), Trigger.BACKOFF_ELAPSED, None, Rule(None, (A.SPAWN,))),
    ((S.STOPPING,), Trigger.GRACE_EXPIRED, None, Rule(None, (A.KILL,))),
    (_ALL, Trigger.RESTART_NOW, None, Rule(None, (A.COUNT_RESTART, A.SPAWN))),
    (_ALL, Trigger.BACK_OFF, None, Rule(S.BACKOFF, (A.COUNT_RESTART, A.SCHEDULE_BACKOFF))),
    (_ALL, Trigger.GIVE_UP, None, Rule(S.FATAL, (A.ANNOUNCE_FATAL,))),
    (_ALL, Trigger.STAY_EXITED, None, Rule(S.EXITED)),
]

TABLE: dict[tuple[NodeState, Trigger, bool | None], Rule] = {
    (state, trigger, flag): rule for states, trigger, flag, rule in _ROWS for state in states
}
"""Every transition; a (state, trigger) pair not in it is ignored (a late or stale report)."""


def transition(lifecycle: Lifecycle, trigger: Trigger) -> tuple[Lifecycle, tuple[Action, ...]]:
    """The lifecycle after `trigger`, and the actions to carry out, in order."""
    rule = TABLE.get((lifecycle.state, trigger, lifecycle.start_after_stop)) or TABLE.get(
        (lifecycle.state, trigger, None)
    )
    if rule is None:
        return lifecycle, ()
    return (
        Lifecycle(
            state=rule.state if rule.state is not None else lifecycle.state,
            start_after_stop=(
                rule.start_after_stop
                if rule.start_after_stop is not None
                else lifecycle.start_after_stop
            ),
        ),
        rule.actions,
    )
