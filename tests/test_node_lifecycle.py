"""The node's transition table, row by row: what each command or report does in each state."""

from __future__ import annotations

import pytest

from wemixvisor.messages.node import NodeState
from wemixvisor.node.lifecycle import TABLE, Action, Lifecycle, Trigger, transition

S = NodeState
T = Trigger
A = Action

CASES = [
    # (state, start_after_stop, trigger) -> (state, start_after_stop, actions)
    (S.STOPPED, False, T.START, S.STOPPED, False, (A.CANCEL_BACKOFF, A.RESET_HISTORY, A.SPAWN)),
    (S.FATAL, False, T.START, S.FATAL, False, (A.CANCEL_BACKOFF, A.RESET_HISTORY, A.SPAWN)),
    (S.BACKOFF, False, T.START, S.BACKOFF, False, (A.CANCEL_BACKOFF, A.RESET_HISTORY, A.SPAWN)),
    (S.RUNNING, False, T.START, S.RUNNING, False, ()),
    (S.STARTING, False, T.START, S.STARTING, False, ()),
    (S.STOPPING, False, T.START, S.STOPPING, True, ()),
    (S.RUNNING, False, T.STOP, S.STOPPING, False, (A.TERMINATE,)),
    (S.STARTING, False, T.STOP, S.STOPPING, False, (A.TERMINATE,)),
    (S.STOPPING, True, T.STOP, S.STOPPING, False, ()),
    (S.STOPPED, False, T.STOP, S.STOPPED, False, (A.CANCEL_BACKOFF, A.RESOLVE_STOP_WAITERS)),
    (S.BACKOFF, False, T.STOP, S.STOPPED, False, (A.CANCEL_BACKOFF, A.RESOLVE_STOP_WAITERS)),
    (S.FATAL, False, T.STOP, S.STOPPED, False, (A.CANCEL_BACKOFF, A.RESOLVE_STOP_WAITERS)),
    (S.RUNNING, False, T.RESTART, S.STOPPING, True, (A.TERMINATE,)),
    (S.EXITED, False, T.RESTART, S.EXITED, False, (A.CANCEL_BACKOFF, A.RESET_HISTORY, A.SPAWN)),
    (S.STOPPED, False, T.ADOPTED, S.RUNNING, False, ()),
    (S.STOPPED, False, T.SPAWNING, S.STARTING, False, ()),
    (S.RUNNING, False, T.SPAWNING, S.STARTING, False, ()),
    (S.STOPPED, False, T.CANNOT_START, S.FATAL, False, (A.ANNOUNCE_FATAL,)),
    (S.STARTING, False, T.SPAWN_FAILED, S.STARTING, False, (A.APPLY_RESTART_POLICY,)),
    (S.STARTING, False, T.CONFIRMED, S.RUNNING, False, (A.ANNOUNCE_RUNNING,)),
    (S.STOPPING, False, T.CONFIRMED, S.STOPPING, False, ()),
    (S.STOPPING, False, T.EXITED, S.STOPPED, False, (A.ANNOUNCE_STOPPED, A.RESOLVE_STOP_WAITERS)),
    (
        S.STOPPING,
        True,
        T.EXITED,
        S.STOPPED,
        False,
        (A.ANNOUNCE_STOPPED, A.RESOLVE_STOP_WAITERS, A.RESET_HISTORY, A.SPAWN),
    ),
    (S.RUNNING, False, T.EXITED, S.RUNNING, False, (A.APPLY_RESTART_POLICY,)),
    (S.STARTING, False, T.EXITED, S.STARTING, False, (A.APPLY_RESTART_POLICY,)),
    (S.BACKOFF, False, T.BACKOFF_ELAPSED, S.BACKOFF, False, (A.SPAWN,)),
    (S.STOPPED, False, T.BACKOFF_ELAPSED, S.STOPPED, False, ()),
    (S.STOPPING, False, T.GRACE_EXPIRED, S.STOPPING, False, (A.KILL,)),
    (S.STOPPED, False, T.GRACE_EXPIRED, S.STOPPED, False, ()),
    (S.RUNNING, False, T.RESTART_NOW, S.RUNNING, False, (A.COUNT_RESTART, A.SPAWN)),
    (S.STARTING, False, T.BACK_OFF, S.BACKOFF, False, (A.COUNT_RESTART, A.SCHEDULE_BACKOFF)),
    (S.STARTING, False, T.GIVE_UP, S.FATAL, False, (A.ANNOUNCE_FATAL,)),
    (S.RUNNING, False, T.STAY_EXITED, S.EXITED, False, ()),
]


@pytest.mark.parametrize(
    ("state", "pending", "trigger", "after", "pending_after", "actions"), CASES
)
def test_each_trigger_in_each_state(
    state: NodeState,
    pending: bool,
    trigger: Trigger,
    after: NodeState,
    pending_after: bool,
    actions: tuple[Action, ...],
) -> None:
    lifecycle, done = transition(Lifecycle(state, pending), trigger)
    assert (lifecycle.state, lifecycle.start_after_stop, done) == (after, pending_after, actions)


def test_a_start_asked_while_stopping_happens_once_the_node_is_down() -> None:
    lifecycle = Lifecycle(S.RUNNING)
    lifecycle, actions = transition(lifecycle, T.STOP)
    assert actions == (A.TERMINATE,)
    lifecycle, actions = transition(lifecycle, T.START)
    assert actions == ()
    lifecycle, actions = transition(lifecycle, T.EXITED)
    assert lifecycle == Lifecycle(S.STOPPED, False)
    assert actions[-1] is A.SPAWN


def test_a_stop_cancels_a_restart_asked_before() -> None:
    lifecycle, _ = transition(Lifecycle(S.RUNNING), T.RESTART)
    lifecycle, _ = transition(lifecycle, T.STOP)
    lifecycle, actions = transition(lifecycle, T.EXITED)
    assert lifecycle == Lifecycle(S.STOPPED, False)
    assert A.SPAWN not in actions


def test_every_state_answers_start_and_stop() -> None:
    for state in NodeState:
        for trigger in (T.START, T.STOP, T.RESTART):
            assert (state, trigger, None) in TABLE, (state, trigger)
