"""The orchestrator's part in rolling-window plans (SPEC §19): when a window plan's window
opens it surveys the chain each block (a job: `upgrade.window.survey`), and starts the saga in
this node's slot once the other validators reach the quorum without it; it says when it waits
(`upgrade.waiting_for_quorum`) and when it gives up on the window (`upgrade.window_closed`: the
plan then runs at H-1 like a plain plan).

`RollingWindow` is a part of `OrchestratorActor` (a mixin: its handlers run on the actor's
thread); the decisions are `upgrade.window.judge` and `assign_slot`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import msgspec
from loguru import logger

from wemixvisor.actors.workers import Workers
from wemixvisor.bus import Bus
from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError
from wemixvisor.chain.wbft import NotWbft, WbftClient
from wemixvisor.config import Config
from wemixvisor.messages import events as ev
from wemixvisor.plans import queue as queue_rules
from wemixvisor.plans.queue import PlanStatus, QueuedPlan, QueueState
from wemixvisor.upgrade.window import (
    Survey,
    WindowState,
    WindowVerdict,
    judge,
    last_window_block,
    survey,
    window_bounds,
)

SURVEY_AHEAD = 2
"""Blocks before the window opens at which the first survey runs, so the slot is known in time."""
SURVEY_TIMEOUT = 1.0
"""Seconds each `istanbul_*` call of a survey may take (local calls of milliseconds)."""


class WindowSurveyed(msgspec.Struct, frozen=True):
    """A survey job ended: the facts, or why there are none."""

    name: str
    survey: Survey | None
    error: str = ""
    not_wbft: bool = False


class RollingWindow:
    """Window plans' surveys and decisions, as handlers of the orchestrator's messages."""

    # The orchestrator's own, used here.
    _config: Config
    _bus: Bus
    _queue: QueueState
    _head: int | None
    workers: Workers

    if TYPE_CHECKING:  # the orchestrator's methods, which this mixin calls

        def _maybe_start(self, chosen: QueuedPlan | None = None) -> None: ...

        def _tell_next_trigger(self) -> None: ...

        def _review_arming(self) -> None: ...

    def _init_rolling_window(self) -> None:
        self._windows: dict[str, WindowState] = {}
        self._surveying: set[str] = set()

    def window_states(self) -> dict[str, WindowState]:
        """The window plans' states, with the blocks left until each slot (at the last head)."""
        head = self._head
        return {
            name: state
            if head is None or state.slot_start is None
            else msgspec.structs.replace(state, eta_blocks=max(state.slot_start - head, 0))
            for name, state in self._windows.items()
        }

    def _window_trigger(self, entry: QueuedPlan) -> int:
        """The height standing in for H in NextTrigger (the head polled tightly is this - 1):
        the slot's start once known, the window's opening before, H for a closed window."""
        plan = entry.plan
        state = self._windows.get(plan.name)
        if plan.mode != "window" or plan.window is None or entry.late:
            return plan.height
        if state is not None and state.verdict == WindowVerdict.CLOSED:
            return plan.height
        if state is not None and state.slot_start is not None:
            return state.slot_start + 1
        first, _ = window_bounds(plan.height, plan.window, self._config.upgrade.window_margin)
        return max(first - SURVEY_AHEAD + 1, 1)

    def _switch_head(self, entry: QueuedPlan) -> int:
        """The head at which the plan's switch begins once seen: H-1, or for a window plan
        whose slot is known and not waiting for the quorum, the slot's start (the survey there
        says go). What the plan is armed ahead of."""
        plan = entry.plan
        last = queue_rules.last_old_block(plan.height)
        if plan.mode != "window" or plan.window is None or entry.late:
            return last
        state = self._windows.get(plan.name)
        if state is None or state.slot_start is None:
            return last
        if state.verdict in (WindowVerdict.CLOSED, WindowVerdict.WAIT_FOR_QUORUM):
            return last
        return min(state.slot_start, last)

    def _window_on_head(self, head: int) -> None:
        """Survey each window plan whose window is open (or about to), once per block."""
        for entry in queue_rules.pending(self._queue):
            plan = entry.plan
            if plan.mode != "window" or plan.window is None or entry.late:
                continue
            state = self._windows.get(plan.name)
            if state is not None and state.verdict == WindowVerdict.CLOSED:
                continue
            if head > last_window_block(plan.height, self._config.upgrade.window_margin):
                self._close(entry, _closing_reason(state))
                continue
            if plan.name in self._surveying:
                continue
            if head + 1 >= self._window_trigger(entry):
                self._survey(entry)

    def _survey(self, entry: QueuedPlan) -> None:
        plan, margin = entry.plan, self._config.upgrade.window_margin
        address, timeout = self._config.rpc.address, min(self._config.rpc.timeout, SURVEY_TIMEOUT)
        self._surveying.add(plan.name)
        if plan.name not in self._windows:
            self._windows[plan.name] = WindowState(verdict="surveying", head=self._head)

        def run(_stopping: threading.Event) -> WindowSurveyed:
            chain = ChainClient(address, timeout=timeout)
            try:
                return WindowSurveyed(plan.name, survey(WbftClient(chain), plan, margin))
            except NotWbft as exc:
                return WindowSurveyed(plan.name, None, str(exc), not_wbft=True)
            except RpcError as exc:
                return WindowSurveyed(plan.name, None, str(exc))
            finally:
                chain.close()

        self.workers.run(f"window-{plan.name}", run)

    def _on_window_surveyed(self, message: WindowSurveyed) -> None:
        self._surveying.discard(message.name)
        entry = queue_rules.get(self._queue, message.name)
        if entry is None or entry.status is not PlanStatus.PENDING:
            self._windows.pop(message.name, None)
            return
        facts = message.survey
        if facts is None:
            if message.not_wbft:
                self._close(entry, f"no slot without istanbul_* ({message.error})")
            else:
                logger.info(
                    "window of {}: survey failed ({}); again next block",
                    message.name,
                    message.error,
                )
            return
        plan, margin = entry.plan, self._config.upgrade.window_margin
        slot = facts.slot
        verdict = judge(
            head=facts.head,
            height=plan.height,
            margin=margin,
            slot=slot,
            validator=slot is not None and slot.validator,
            active_others=facts.active_others,
            quorum=facts.quorum,
        )
        before = self._windows.get(plan.name)
        state = WindowState(
            verdict=verdict.value,
            head=facts.head,
            validator=slot.validator if slot else None,
            slot_start=slot.start if slot else None,
            slot_end=slot.end if slot else None,
            slot_index=slot.index if slot else None,
            slot_count=slot.count if slot else None,
            shared=slot.shared if slot else False,
            active=facts.active_others,
            needed=facts.quorum,
        )
        self._windows[plan.name] = state
        if slot is not None and (before is None or before.slot_start != slot.start):
            logger.info(
                "upgrade {}: slot {} of {} (blocks {}-{}){}",
                plan.name,
                slot.index + 1,
                slot.count,
                slot.start,
                slot.end,
                "; the window is shorter than the validator set: slots are shared"
                if slot.shared
                else "",
            )
            self._tell_next_trigger()
        if verdict is WindowVerdict.CLOSED:
            self._close(entry, "the window was empty" if slot is None else _closing_reason(before))
        elif verdict is WindowVerdict.WAIT_FOR_QUORUM and slot is not None:
            if before is None or before.verdict != verdict or before.active != state.active:
                logger.warning(
                    "upgrade {}: slot at {} but only {} other validators are up, {} needed:"
                    " waiting",
                    plan.name,
                    slot.start,
                    facts.active_others,
                    facts.quorum,
                )
                self._bus.publish(
                    ev.UpgradeWaitingForQuorum(
                        name=plan.name,
                        height=plan.height,
                        head=facts.head,
                        slot_start=slot.start,
                        slot_end=slot.end,
                        active=facts.active_others,
                        needed=facts.quorum,
                    )
                )
        elif verdict is WindowVerdict.GO:
            self._maybe_start(entry)
        self._review_arming()

    def _close(self, entry: QueuedPlan, reason: str) -> None:
        plan = entry.plan
        before = self._windows.get(plan.name, WindowState(verdict="surveying"))
        self._windows[plan.name] = msgspec.structs.replace(
            before, verdict=WindowVerdict.CLOSED.value, reason=reason
        )
        logger.warning(
            "upgrade {}: {}; it runs at H-1 ({})",
            plan.name,
            reason,
            queue_rules.last_old_block(plan.height),
        )
        self._bus.publish(
            ev.UpgradeWindowClosed(
                name=plan.name, height=plan.height, head=self._head, reason=reason
            )
        )
        self._tell_next_trigger()
        self._review_arming()


def _closing_reason(state: WindowState | None) -> str:
    """Why the window passed without a switch, from the plan's last known state."""
    if state is None or state.verdict == "surveying":
        return "no survey of the chain answered in the window"
    if state.verdict == WindowVerdict.WAIT_FOR_QUORUM:
        return (
            "no safe moment in the window: the other validators were short of the quorum"
            f" without this node ({state.active} up, {state.needed} needed)"
        )
    return "the window passed before this node's switch could start"
