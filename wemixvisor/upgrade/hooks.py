"""Pre-upgrade hooks (SPEC §5 steps 3 and 5, §9): argv lists, timeouts, captured output.

The custom script (COSMOVISOR_CUSTOM_PREUPGRADE) gets argv `[name, height]`, cwd DAEMON_HOME
and UPGRADE_NAME / UPGRADE_HEIGHT / UPGRADE_INFO in its environment. The app's own
`<new bin> pre-upgrade` follows cosmovisor's exit-code protocol.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from wemixvisor.plans.queue import Plan

OUTPUT_TAIL_BYTES = 8192

# cosmovisor's app pre-upgrade exit codes
APP_PREUPGRADE_OK = 0
APP_PREUPGRADE_NOT_IMPLEMENTED = 1
APP_PREUPGRADE_FATAL = 30
APP_PREUPGRADE_RETRY = 31


@dataclass(frozen=True)
class HookResult:
    """How one hook run ended; `output` is the tail of its merged stdout+stderr."""

    argv: tuple[str, ...]
    exit_code: int | None
    timed_out: bool
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Exit code 0 within the time limit."""
        return not self.timed_out and self.exit_code == 0

    def describe(self) -> str:
        """One line for logs and events."""
        if self.timed_out:
            return f"{self.argv[0]} timed out after {self.seconds:.1f}s"
        if self.exit_code is None:
            return f"{self.argv[0]} could not run"
        return f"{self.argv[0]} exited with {self.exit_code}"


def run_hook(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> HookResult:
    """Run `argv` (never through a shell) in its own process group, killed on timeout.

    Output goes to a temporary file, not a pipe, so a chatty hook can neither block on a full
    pipe nor fill the daemon's memory; only its tail is kept.
    """
    began = time.monotonic()
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return HookResult(tuple(argv), None, False, str(exc), time.monotonic() - began)
        timed_out = False
        try:
            exit_code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exit_code = None
        else:
            # Children the hook left behind in its group do not outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - OUTPUT_TAIL_BYTES))
        tail = output.read().decode(errors="replace")
    return HookResult(tuple(argv), exit_code, timed_out, tail, time.monotonic() - began)


def plan_environment(plan: Plan, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the custom pre-upgrade script."""
    info = plan.info if plan.info is not None else (plan.info_url or "")
    env = dict(base)
    env["UPGRADE_NAME"] = plan.name
    env["UPGRADE_HEIGHT"] = str(plan.height)
    env["UPGRADE_INFO"] = info if isinstance(info, str) else msgspec.json.encode(info).decode()
    return env


def run_custom_preupgrade(
    script: Path, plan: Plan, *, home: Path, timeout: float, base_env: Mapping[str, str]
) -> HookResult:
    """`<script> <name> <height>` in DAEMON_HOME with the plan in its environment."""
    return run_hook(
        [str(script), plan.name, str(plan.height)],
        cwd=home,
        env=plan_environment(plan, base_env),
        timeout=timeout,
    )


@dataclass(frozen=True)
class AppPreupgradeOutcome:
    """The verdict of `<bin> pre-upgrade` over all its attempts."""

    ok: bool
    reason: str
    attempts: list[HookResult]


def run_app_preupgrade(
    binary: Path,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    max_retries: int,
    on_attempt: Callable[[int], None] = lambda attempt: None,
) -> AppPreupgradeOutcome:
    """`<new bin> pre-upgrade`: 0 ok; 1 not implemented (ok); 30 fatal; 31 retry up to
    `max_retries` times then fatal; any other exit or a timeout is a failure."""
    attempts: list[HookResult] = []
    while True:
        on_attempt(len(attempts) + 1)
        result = run_hook([str(binary), "pre-upgrade"], cwd=cwd, env=env, timeout=timeout)
        attempts.append(result)
        code = result.exit_code
        if result.timed_out or code is None:
            return AppPreupgradeOutcome(False, result.describe(), attempts)
        if code == APP_PREUPGRADE_OK:
            return AppPreupgradeOutcome(True, "pre-upgrade succeeded", attempts)
        if code == APP_PREUPGRADE_NOT_IMPLEMENTED:
            return AppPreupgradeOutcome(True, "pre-upgrade not implemented (exit 1)", attempts)
        if code == APP_PREUPGRADE_FATAL:
            return AppPreupgradeOutcome(False, "pre-upgrade failed fatally (exit 30)", attempts)
        if code == APP_PREUPGRADE_RETRY:
            if len(attempts) > max_retries:
                return AppPreupgradeOutcome(
                    False,
                    f"pre-upgrade asked to retry (exit 31) after {max_retries} retries",
                    attempts,
                )
            continue
        return AppPreupgradeOutcome(False, f"pre-upgrade exited with {code}", attempts)
