"""Restart decisions, without processes: what supervisord operators expect."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wemixvisor.node.restart_policy import (
    ExitAction,
    RestartHistory,
    RestartPolicy,
    backoff_delay,
    decide_after_exit,
)

POLICY = RestartPolicy(max_restarts=5, window=600, backoff_initial=0.5, backoff_max=60)


def no_jitter() -> float:
    return 0.5  # the middle of the jitter range: delay exactly as computed


def test_crash_of_a_healthy_running_node_restarts_at_once() -> None:
    decision = decide_after_exit(
        POLICY, RestartHistory(), now=100.0, was_running=True, running_for=3600, jitter=no_jitter
    )
    assert decision.action is ExitAction.RESTART_NOW
    assert decision.delay == 0
    assert decision.history.restarts == (100.0,)


def test_exit_during_starting_backs_off_and_doubles() -> None:
    history = RestartHistory()
    delays = []
    for now in (1.0, 2.0, 3.0, 4.0):
        decision = decide_after_exit(
            POLICY, history, now=now, was_running=False, running_for=0, jitter=no_jitter
        )
        assert decision.action is ExitAction.BACKOFF
        delays.append(decision.delay)
        history = decision.history
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_second_crash_within_a_minute_of_running_backs_off() -> None:
    first = decide_after_exit(
        POLICY, RestartHistory(), now=10.0, was_running=True, running_for=120, jitter=no_jitter
    )
    second = decide_after_exit(
        POLICY, first.history, now=20.0, was_running=True, running_for=5, jitter=no_jitter
    )
    assert second.action is ExitAction.BACKOFF
    assert second.delay == 0.5


def test_a_minute_of_running_resets_the_backoff() -> None:
    history = RestartHistory(restarts=(1.0, 2.0, 3.0), streak=3)
    decision = decide_after_exit(
        POLICY, history, now=200.0, was_running=True, running_for=61, jitter=no_jitter
    )
    assert decision.action is ExitAction.RESTART_NOW


def test_more_than_max_restarts_within_the_window_is_fatal() -> None:
    history = RestartHistory(restarts=(1.0, 2.0, 3.0, 4.0, 5.0), streak=5)
    decision = decide_after_exit(
        POLICY, history, now=6.0, was_running=False, running_for=0, jitter=no_jitter
    )
    assert decision.action is ExitAction.FATAL
    assert decision.restarts_in_window == 5


def test_restarts_older_than_the_window_do_not_count() -> None:
    history = RestartHistory(restarts=(1.0, 2.0, 3.0, 4.0, 5.0), streak=1)
    decision = decide_after_exit(
        POLICY, history, now=1000.0, was_running=True, running_for=120, jitter=no_jitter
    )
    assert decision.action is ExitAction.RESTART_NOW
    assert decision.history.restarts == (1000.0,)


def test_max_restarts_zero_means_no_automatic_restart() -> None:
    policy = RestartPolicy(max_restarts=0)
    decision = decide_after_exit(
        policy, RestartHistory(), now=1.0, was_running=True, running_for=999, jitter=no_jitter
    )
    assert decision.action is ExitAction.FATAL


def test_restart_on_failure_off_leaves_the_node_exited() -> None:
    policy = RestartPolicy(restart_on_failure=False)
    decision = decide_after_exit(
        policy, RestartHistory(), now=1.0, was_running=True, running_for=999, jitter=no_jitter
    )
    assert decision.action is ExitAction.STAY_EXITED


@given(
    streak=st.integers(min_value=1, max_value=10_000),
    jitter=st.floats(min_value=0, max_value=0.999999),
    initial=st.floats(min_value=0.001, max_value=60),
    cap=st.floats(min_value=0.001, max_value=600),
)
def test_backoff_never_exceeds_the_cap_and_is_never_negative(
    streak: int, jitter: float, initial: float, cap: float
) -> None:
    policy = RestartPolicy(backoff_initial=initial, backoff_max=cap)
    delay = backoff_delay(policy, streak, jitter)
    assert 0 <= delay <= cap


@given(
    exits=st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.booleans(), st.floats(0, 120)),
        max_size=60,
    )
)
def test_never_more_than_max_restarts_in_any_window(
    exits: list[tuple[float, bool, float]],
) -> None:
    history = RestartHistory()
    now = 0.0
    for gap, was_running, running_for in exits:
        now += gap
        decision = decide_after_exit(
            POLICY,
            history,
            now=now,
            was_running=was_running,
            running_for=running_for,
            jitter=no_jitter,
        )
        history = decision.history
        assert len(history.in_window(now, POLICY.window)) <= POLICY.max_restarts
