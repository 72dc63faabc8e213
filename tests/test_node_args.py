"""Node arguments that follow the binary (SPEC §4): a plan's `info.node_args` or an upgrade's
`node-args` file give the new binary its arguments from the switch on; a rollback returns to the
old ones; hostile declarations are refused before anything happens.

The scenarios upgrade anvil 1.5.1 (`--block-time 1`) to 1.7.1 with other arguments, and read the
real node process's command line with psutil.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import wait_for_rpc
from tests.daemon_harness import EventLog
from tests.test_upgrade import H_AHEAD, Chain, chain_factory, root, script
from wemixvisor.config import Config, load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.node.args import NODE_ARGS_FILE, NodeArgsError, args_for_target
from wemixvisor.plans.queue import (
    MAX_NODE_ARGS,
    PlanError,
    parse_node_args_file,
    plan_from_object,
)
from wemixvisor.upgrade.preflight import check_plan

__all__ = ["chain_factory", "root"]  # fixtures used here, defined with the upgrade scenarios


def node_cmdline(chain: Chain) -> list[str]:
    """The running anvil's arguments (one node per home)."""
    nodes = chain.anvils()
    assert len(nodes) == 1, [p.info["cmdline"] for p in nodes]
    return list(nodes[0].cmdline()[1:])


def status_node(chain: Chain) -> dict[str, Any]:
    """`wemixvisor status --json`: what the daemon says about the node."""
    result = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", "status", "--json"],
        env={**os.environ, **chain.daemons[-1].env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    node: dict[str, Any] = msgspec.json.decode(result.stdout)["node"]
    return node


def status_args(chain: Chain) -> list[str]:
    """The arguments the daemon says the node runs with."""
    args: list[str] = status_node(chain)["args"]
    return args


def base_args(chain: Chain) -> list[str]:
    return ["--port", str(chain.port), "--state", str(chain.home / "data" / "state.json")]


def test_a_plan_gives_the_new_binary_its_arguments_and_they_survive_a_daemon_restart(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    new_args = [*base_args(chain), "--block-time", "2", "--steps-tracing"]
    # The custom pre-upgrade hook runs between the stop and the switch: it keeps a copy of the
    # journal as it is then, to show what the saga recorded durably.
    journal_copy = chain.root / "journal-at-hook.json"
    script(
        chain.home / "wemixvisor" / "keep-journal.sh",
        f"cp wemixvisor/state/journal.json {journal_copy}\n",
    )
    daemon = chain.daemon(COSMOVISOR_CUSTOM_PREUPGRADE="keep-journal.sh")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        old_args = [*base_args(chain), "--block-time", "1"]
        assert node_cmdline(chain) == old_args
        assert status_args(chain) == old_args

        height = chain.head() + H_AHEAD
        plan = {"name": "v1.7.1", "height": height, "info": {"node_args": new_args}}
        (chain.home / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))
        completed = events.wait_for("upgrade.completed", timeout=H_AHEAD + 60)
        assert completed["first_head"] == height - 1  # the old binary's last block
        starting = [p for p in events.seen if p["topic"] == "node.starting"]
        assert starting[-1]["args"] == new_args
        assert chain.client_version() == "anvil/v1.7.1"
        assert node_cmdline(chain) == new_args
        assert status_args(chain) == new_args
        journal = msgspec.json.decode(journal_copy.read_bytes())
        assert journal["from_args"] == old_args
        assert journal["to_args"] == new_args
    finally:
        events.close()
    assert daemon.terminate() == 0

    # The next daemon finds the arguments where it finds the binary: upgrades/v1.7.1.
    again = chain.daemon()
    events = EventLog(again.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        assert chain.current() == "upgrades/v1.7.1"
        assert node_cmdline(chain) == new_args
        assert status_args(chain) == new_args
    finally:
        events.close()
    # A daemon killed outright leaves its node running; the next one adopts it and reports the
    # arguments the process really has.
    again.kill()
    adopting = chain.daemon()
    events = EventLog(adopting.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        node = status_node(chain)
        assert node["adopted"] is True
        assert node["args"] == new_args
    finally:
        events.close()
    assert adopting.terminate() == 0


def test_a_new_binary_failing_with_its_file_arguments_rolls_back_to_the_old_ones(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    # The release "renamed" a flag: this one does not exist, so anvil 1.7.1 exits at once.
    (chain.home / "wemixvisor" / "upgrades" / "v1.7.1" / NODE_ARGS_FILE).write_text(
        "# arguments of anvil 1.7.1, one per line\n"
        + "\n".join(base_args(chain))
        + "\n\n--block-time\n2\n--no-such-flag\n"
    )
    daemon = chain.daemon(DAEMON_VERIFY_TIMEOUT="5s", DAEMON_BACKOFF_INITIAL="100ms")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        old_args = node_cmdline(chain)
        assert old_args == [*base_args(chain), "--block-time", "1"]

        # A plan whose node_args are not strings is refused, naming the field.
        plan_file = chain.home / "data" / "upgrade-info.json"
        height = chain.head() + H_AHEAD + 2
        bad = {"name": "v1.7.1", "height": height, "info": {"node_args": ["--port", 8545]}}
        plan_file.write_bytes(msgspec.json.encode(bad))
        rejected = events.wait_for("plan.rejected", timeout=20)
        assert "info.node_args[1] must be a string" in rejected["reason"]

        height = chain.head() + H_AHEAD
        plan_file.write_bytes(msgspec.json.encode({"name": "v1.7.1", "height": height}))
        failed = events.wait_for("upgrade.failed", timeout=H_AHEAD + 60)
        assert failed["step"] in ("starting", "verifying")
        rolled = events.wait_for("upgrade.rolled_back", timeout=60)
        assert rolled["target"] == "genesis"
        failing = [p for p in events.seen if p["topic"] == "node.starting"]
        assert any("--no-such-flag" in p["args"] for p in failing)
        events.wait_for("node.running", timeout=30)
        wait_for_rpc(chain.url, timeout=10)
        assert "1.5.1" in chain.client_version()
        assert node_cmdline(chain) == old_args
        assert status_args(chain) == old_args
    finally:
        events.close()
    assert daemon.terminate() == 0


# Hostile declarations: refused with the reason, before any switch.


@pytest.mark.parametrize(
    ("node_args", "reason"),
    [
        ("--block-time 2", "info.node_args must be a list of strings, got str"),
        ({"--port": "1"}, "info.node_args must be a list of strings, got dict"),
        (["--port", None], "info.node_args[1] must be a string, got NoneType"),
        (["--state", "a\0b"], "info.node_args[1] contains a NUL byte"),
        (["-v"] * (MAX_NODE_ARGS + 1), f"over the limit of {MAX_NODE_ARGS}"),
        (["x" * (1 << 20)], "over the 1048576-byte limit"),
    ],
    ids=["string", "object", "null", "nul-byte", "too-many", "too-big"],
)
def test_a_plan_with_hostile_node_args_is_rejected(node_args: object, reason: str) -> None:
    plan = {"name": "v2", "height": 10, "info": {"node_args": node_args}}
    with pytest.raises(PlanError, match=re.escape(reason)):
        plan_from_object(plan, "file")


def test_a_node_args_file_keeps_one_argument_per_line() -> None:
    raw = b"# comment\n  --port  \n8545\r\n\n   # indented comment\n--name\nwith space\n"
    assert parse_node_args_file(raw) == ["--port", "8545", "--name", "with space"]
    assert parse_node_args_file(b"") == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"--port\n\xff\xfe\n", "not UTF-8 text"),
        (b"--a\n--b\x00c\n", "contains a NUL byte"),
        (b"-v\n" * (MAX_NODE_ARGS + 1), f"over the limit of {MAX_NODE_ARGS}"),
        (b"#" * ((1 << 20) + 1), "over the 1048576-byte limit"),
    ],
    ids=["not-utf8", "nul-byte", "too-many", "too-big"],
)
def test_a_hostile_node_args_file_fails_the_preflight(
    tmp_path: Path, anvil_bin_1_7_1: Path, content: bytes, reason: str
) -> None:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    init_home(home, anvil_bin_1_7_1)
    add_upgrade(home, "v2", anvil_bin_1_7_1)
    (home.upgrade_dir("v2") / NODE_ARGS_FILE).write_bytes(content)
    config = _config(home)
    plan = plan_from_object({"name": "v2", "height": 10}, "file")
    problems = check_plan(home, config, plan, quick=True)
    assert any(p.startswith("node arguments:") and reason in p for p in problems), problems
    with pytest.raises(NodeArgsError, match=re.escape(reason)):
        args_for_target(home, "upgrades/v2", ["--configured"])


def test_file_and_plan_that_disagree_fail_the_preflight_and_agreeing_ones_pass(
    tmp_path: Path, anvil_bin_1_7_1: Path
) -> None:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    init_home(home, anvil_bin_1_7_1)
    add_upgrade(home, "v2", anvil_bin_1_7_1)
    (home.upgrade_dir("v2") / NODE_ARGS_FILE).write_text("--block-time\n2\n")
    config = _config(home)
    agreeing = plan_from_object(
        {"name": "v2", "height": 10, "info": {"node_args": ["--block-time", "2"]}}, "file"
    )
    assert check_plan(home, config, agreeing, quick=True) == []
    other = plan_from_object(
        {"name": "v2", "height": 10, "info": {"node_args": ["--block-time", "3"]}}, "file"
    )
    problems = check_plan(home, config, other, quick=True)
    assert any("disagree" in p for p in problems), problems


def test_each_target_runs_with_its_own_arguments(tmp_path: Path, anvil_bin_1_7_1: Path) -> None:
    home = Home(root=tmp_path / "home", name="anvil", data_dir=tmp_path / "home" / "data")
    init_home(home, anvil_bin_1_7_1)
    for name in ("plain", "filed", "planned"):
        add_upgrade(home, name, anvil_bin_1_7_1)
    (home.upgrade_dir("filed") / NODE_ARGS_FILE).write_text("--from-file\n")
    copy = {"name": "planned", "height": 5, "info": {"node_args": ["--from-plan"]}}
    (home.upgrade_dir("planned") / "upgrade-info.json").write_bytes(msgspec.json.encode(copy))
    configured = ["--configured", "1"]
    assert args_for_target(home, "genesis", configured) == configured
    assert args_for_target(home, "upgrades/plain", configured) == configured
    assert args_for_target(home, "upgrades/filed", configured) == ["--from-file"]
    assert args_for_target(home, "upgrades/planned", configured) == ["--from-plan"]
    (home.upgrade_dir("plain") / "upgrade-info.json").write_bytes(b"{half")
    with pytest.raises(NodeArgsError, match=r"upgrade-info\.json"):
        args_for_target(home, "upgrades/plain", configured)


def _config(home: Home) -> Config:
    return load_config(
        {"DAEMON_HOME": str(home.root), "DAEMON_NAME": "anvil", "UNSAFE_SKIP_BACKUP": "true"}
    )
