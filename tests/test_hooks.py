"""Pre-upgrade hooks as real scripts: exit-code protocol, retries, timeouts, output capture."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.support import wait_until
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade.hooks import run_app_preupgrade, run_custom_preupgrade, run_hook


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_custom_script_gets_argv_cwd_and_the_plan_in_its_environment(tmp_path: Path) -> None:
    hook = script(
        tmp_path / "hook.sh",
        'echo "args=$1,$2 cwd=$(pwd) name=$UPGRADE_NAME height=$UPGRADE_HEIGHT"\n'
        'echo "info=$UPGRADE_INFO"\n',
    )
    plan = Plan(name="v1.7.1", height=42, info={"binaries": {"any": "file:///x"}})
    result = run_custom_preupgrade(hook, plan, home=tmp_path, timeout=10, base_env=os.environ)
    assert result.ok
    assert f"args=v1.7.1,42 cwd={tmp_path} name=v1.7.1 height=42" in result.output
    assert '"binaries"' in result.output


@pytest.mark.parametrize("code", [1, 2, 30, 31, 127])
def test_custom_script_nonzero_exit_is_a_failure(tmp_path: Path, code: int) -> None:
    hook = script(tmp_path / "hook.sh", f"echo refusing >&2\nexit {code}\n")
    result = run_custom_preupgrade(
        hook, Plan(name="a", height=1), home=tmp_path, timeout=10, base_env=os.environ
    )
    assert not result.ok
    assert result.exit_code == code
    assert "refusing" in result.output


def test_a_hook_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hook = script(tmp_path / "hang.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    result = run_hook([str(hook)], cwd=tmp_path, env=os.environ, timeout=0.5)
    assert result.timed_out
    assert not result.ok
    child = int(pidfile.read_text())

    def dead() -> bool:
        # Gone, or a zombie waiting for a reaper (PID 1 here may not reap); the SIGKILL may
        # take a moment to land on a loaded machine.
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(dead, timeout=10, what="the hook's child killed")


def test_a_chatty_hook_keeps_only_the_tail_of_its_output(tmp_path: Path) -> None:
    hook = script(tmp_path / "chatty.sh", "yes line | head -n 200000\necho THE-END\n")
    result = run_hook([str(hook)], cwd=tmp_path, env=os.environ, timeout=30)
    assert result.ok
    assert result.output.endswith("THE-END\n")
    assert len(result.output) <= 8192


def test_a_missing_hook_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    result = run_hook([str(tmp_path / "absent")], cwd=tmp_path, env=os.environ, timeout=5)
    assert not result.ok
    assert result.exit_code is None


def app(tmp_path: Path, codes: list[int]) -> Path:
    """A fake node binary whose `pre-upgrade` exits with the next code of `codes` each call."""
    counter = tmp_path / "calls"
    counter.write_text("0")
    cases = "\n".join(f"  {i}) exit {code} ;;" for i, code in enumerate(codes))
    return script(
        tmp_path / "node",
        f"""\
        [ "$1" = pre-upgrade ] || exit 99
        n=$(cat {counter}); echo $((n+1)) > {counter}
        case $n in
        {cases}
          *) exit 0 ;;
        esac
        """,
    )


@pytest.mark.parametrize(
    ("codes", "retries", "ok", "attempts"),
    [
        ([0], 0, True, 1),
        ([1], 0, True, 1),  # not implemented: fine
        ([30], 5, False, 1),  # fatal, never retried
        ([31, 31, 0], 2, True, 3),  # retried until it succeeds
        ([31, 31, 31], 2, False, 3),  # out of retries
        ([31], 0, False, 1),
        ([2], 3, False, 1),  # any other code is a failure
    ],
)
def test_app_preupgrade_exit_code_protocol(
    tmp_path: Path, codes: list[int], retries: int, ok: bool, attempts: int
) -> None:
    binary = app(tmp_path, codes)
    seen: list[int] = []
    outcome = run_app_preupgrade(
        binary,
        cwd=tmp_path,
        env=os.environ,
        timeout=10,
        max_retries=retries,
        on_attempt=seen.append,
    )
    assert outcome.ok is ok, outcome.reason
    assert len(outcome.attempts) == attempts
    assert seen == list(range(1, attempts + 1))


def test_app_preupgrade_timeout_is_a_failure(tmp_path: Path) -> None:
    binary = script(tmp_path / "node", "sleep 30\n")
    outcome = run_app_preupgrade(binary, cwd=tmp_path, env=os.environ, timeout=0.3, max_retries=3)
    assert not outcome.ok
    assert "timed out" in outcome.reason
