"""What to do when the node exits on its own: restart now, back off, or give up (FATAL).

Pure decisions over plain data, after supervisord's process.py semantics:
- a crash of a node that had been RUNNING restarts it at once;
- exits during STARTING and repeated crashes back off exponentially with jitter, capped;
- the back-off resets after `reset_after` seconds of RUNNING;
- more than `max_restarts` automatic restarts within `window` seconds → FATAL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wemixvisor.config import Config


class ExitAction(enum.Enum):
    """The NodeActor's next move after an unexpected exit."""

    RESTART_NOW = "restart_now"
    BACKOFF = "backoff"
    FATAL = "fatal"
    STAY_EXITED = "stay_exited"


@dataclass(frozen=True)
class RestartPolicy:
    """Operator settings that drive `decide_after_exit`."""

    restart_on_failure: bool = True
    max_restarts: int = 5
    window: float = 600.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    reset_after: float = 60.0

    @classmethod
    def of(cls, config: Config) -> RestartPolicy:
        """The restart policy the configuration asks for."""
        node = config.node
        return cls(
            restart_on_failure=node.restart_on_failure,
            max_restarts=node.max_restarts,
            window=node.restart_window,
            backoff_initial=node.backoff_initial,
            backoff_max=node.backoff_max,
        )


@dataclass(frozen=True)
class RestartHistory:
    """Automatic restarts so far: their times (monotonic) and the current failure streak."""

    restarts: tuple[float, ...] = field(default_factory=tuple)
    streak: int = 0

    def in_window(self, now: float, window: float) -> tuple[float, ...]:
        """Restart times not older than `window` seconds."""
        return tuple(t for t in self.restarts if now - t < window)


@dataclass(frozen=True)
class ExitDecision:
    """The action, its delay (seconds, 0 unless BACKOFF) and the history to keep."""

    action: ExitAction
    delay: float
    history: RestartHistory
    restarts_in_window: int


def backoff_delay(policy: RestartPolicy, streak: int, jitter: float) -> float:
    """Exponential delay for the `streak`-th consecutive failure (1-based).

    `jitter` in [0, 1) spreads the delay over ±25 % so that many nodes on one host
    do not retry in lockstep; the cap always holds.
    """
    # Past 2**64 the cap has long taken over; bounding the exponent avoids float overflow.
    base = policy.backoff_initial * 2.0 ** min(max(streak - 1, 0), 64)
    return min(policy.backoff_max, base * (0.75 + 0.5 * jitter))


def decide_after_exit(
    policy: RestartPolicy,
    history: RestartHistory,
    *,
    now: float,
    was_running: bool,
    running_for: float,
    jitter: Callable[[], float],
) -> ExitDecision:
    """Decide what follows an exit the daemon did not ask for.

    `was_running`: the node had reached RUNNING (else it died while STARTING).
    `running_for`: seconds it spent RUNNING before the exit.
    """
    recent = history.in_window(now, policy.window)
    if not policy.restart_on_failure:
        return ExitDecision(ExitAction.STAY_EXITED, 0.0, history, len(recent))
    streak = 0 if was_running and running_for >= policy.reset_after else history.streak
    streak += 1
    if len(recent) >= policy.max_restarts:
        kept = RestartHistory(restarts=recent, streak=streak)
        return ExitDecision(ExitAction.FATAL, 0.0, kept, len(recent))
    updated = RestartHistory(restarts=(*recent, now), streak=streak)
    if was_running and streak == 1:
        return ExitDecision(ExitAction.RESTART_NOW, 0.0, updated, len(recent) + 1)
    # A healthy run ended the streak at 1, so the first back-off after a RUNNING crash
    # starts from the initial delay rather than twice it.
    backoff_streak = streak - 1 if was_running else streak
    delay = backoff_delay(policy, backoff_streak, jitter())
    return ExitDecision(ExitAction.BACKOFF, delay, updated, len(recent) + 1)
