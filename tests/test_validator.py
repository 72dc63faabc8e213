"""Validator mode (SPEC §13.2) with the WBFT test double in front of real anvil nodes: the node
must sign again after an upgrade (else an alert, never a rollback), preflight warns when its
downtime would cost the chain its quorum, `status` facts come from `istanbul_*`, and over an IPC
path (which serves every namespace) the istanbul preflight passes where HTTP refuses it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from devtools.anvil import AnvilProcess, rpc_call, wait_for_rpc
from devtools.wbft import NodeSpec, WbftNetwork
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.metrics_harness import scrape_until, value
from tests.support import wait_until
from tests.wbft_proxy import WbftDouble, address, wait_for_block
from wemixvisor.actors.governance import GovernanceActor
from wemixvisor.actors.orchestrator import PREFLIGHT_RECHECK
from wemixvisor.bus import Bus
from wemixvisor.chain.wbft import SIGNING_CHECK_BLOCKS
from wemixvisor.config import load_config
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.messages.events import ValidatorQuorumAtRisk
from wemixvisor.messages.governance import ChainInfo, GetChainInfo
from wemixvisor.plans.queue import Plan
from wemixvisor.upgrade.preflight import validator_problems, warn_if_quorum_at_risk

ME = address(0xA1)
VALIDATORS = [ME, address(0xB2), address(0xC3), address(0xD4)]
DOWN = VALIDATORS[1]
BLOCK_TIME = "0.25"  # fast blocks: the signing check waits for 20 of them
AHEAD = 12  # blocks between "now" and a plan's height (3 s)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


def validator_env(rpc_address: str) -> dict[str, str]:
    """A daemon in validator mode on `rpc_address`, quick to start and to stop."""
    return {
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": rpc_address,
        "DAEMON_POLL_INTERVAL": "100ms",
        "DAEMON_STARTSECS": "300ms",
        "DAEMON_SHUTDOWN_GRACE": "10s",
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
        "UNSAFE_SKIP_BACKUP": "true",
        "VALIDATOR_MODE": "true",
    }


def write_plan(home: Path, name: str, height: int) -> None:
    (home / "data" / "upgrade-info.json").write_bytes(
        msgspec.json.encode({"name": name, "height": height})
    )


def test_validator_mode_checks_signing_after_each_upgrade_and_only_alerts(
    root: Path,
    anvil_bin: Callable[[str], Path],
    free_port: Callable[[], int],
) -> None:
    home = root / "home"
    layout = Home(root=home, name="anvil", data_dir=home / "data")
    init_home(layout, anvil_bin("1.4.4"))
    add_upgrade(layout, "v1.5.1", anvil_bin("1.5.1"))
    add_upgrade(layout, "v1.7.1", anvil_bin("1.7.1"))
    port = free_port()
    node_url = f"http://127.0.0.1:{port}"
    # One other validator is down from the start: with ours down too, two of four remain,
    # below the quorum of three.
    double = WbftDouble(
        node_url, validators=VALIDATORS, node_address=ME, signing=set(VALIDATORS) - {DOWN}
    ).start()
    env = validator_env(double.url)
    args = ["--port", str(port), "--block-time", BLOCK_TIME, "--state", str(home / "data" / "s")]
    daemon = Daemon(home, env, args).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(node_url, timeout=10)

        first = int(rpc_call(node_url, "eth_blockNumber"), 16) + AHEAD
        write_plan(home, "v1.5.1", first)
        risk = events.wait_for("validator.quorum_at_risk")
        assert (risk["address"], risk["plan"], risk["height"]) == (ME, "v1.5.1", first)
        assert (risk["validators"], risk["quorum"], risk["active"]) == (4, 3, 3)
        assert risk["active_without_me"] == 2
        events.wait_for("upgrade.completed", lambda p: p["name"] == "v1.5.1", timeout=60)
        signing = events.wait_for("validator.signing", timeout=30)
        assert (signing["address"], signing["height"]) == (ME, first)
        assert signing["block"] > first
        assert ME in wait_for_block(double, signing["block"])

        # The double stops counting our node among the committers: an alert, no rollback.
        double.stop_signing(ME)
        second = int(rpc_call(node_url, "eth_blockNumber"), 16) + AHEAD
        write_plan(home, "v1.7.1", second)
        events.wait_for("upgrade.completed", lambda p: p["name"] == "v1.7.1", timeout=60)
        alert = events.wait_for("validator.not_signing", timeout=30)
        assert (alert["address"], alert["height"]) == (ME, second)
        assert alert["blocks_checked"] == SIGNING_CHECK_BLOCKS
        assert f"{second + 1}-{second + SIGNING_CHECK_BLOCKS}" in alert["reason"]
        assert rpc_call(node_url, "web3_clientVersion") == "anvil/v1.7.1"
        topics = [p["topic"] for p in events.seen]
        assert "upgrade.failed" not in topics
        assert "upgrade.rolled_back" not in topics
        assert topics.count("validator.signing") == 1
        assert os.readlink(home / "wemixvisor" / "current") == "upgrades/v1.7.1"
    finally:
        events.close()
        double.close()
    assert daemon.terminate() == 0


@contextlib.contextmanager
def governance_actor(rpc_address: str, home: Path) -> Iterator[pykka.ActorRef[Any]]:
    """The GovernanceActor alone (no contracts): what `status` asks for validator facts."""
    config = load_config(env={"DAEMON_HOME": str(home), "DAEMON_RPC_ADDRESS": rpc_address})
    layout = Home(root=home, name="anvil", data_dir=home / "data")
    actor = GovernanceActor.start(config=config, home=layout, bus=Bus())
    try:
        yield actor
    finally:
        actor.stop()


def facts(actor: pykka.ActorRef[Any], timeout: float = 10.0) -> ChainInfo:
    """The actor's validator facts once it has asked the node."""
    deadline = time.monotonic() + timeout
    while True:
        info = actor.ask(GetChainInfo(), timeout=2)
        assert isinstance(info, ChainInfo)
        if info.wbft is not None:
            return info
        if time.monotonic() >= deadline:
            raise AssertionError(f"no validator facts within {timeout}s: {info}")
        time.sleep(0.02)


def test_status_facts_come_from_istanbul_and_are_off_on_plain_anvil(
    anvil: AnvilProcess, tmp_path: Path
) -> None:
    double = WbftDouble(anvil.url, validators=VALIDATORS, node_address=ME).start()
    try:
        wait_for_block(double, 0)
        with governance_actor(double.url, tmp_path / "wbft") as actor:
            info = facts(actor)
        assert info.wbft is True
        assert (info.node_address, info.is_validator) == (ME, True)
        assert (info.validator_count, info.quorum, info.active_validators) == (4, 3, 4)
        assert info.sealing is not None
        assert info.sealing.committed >= 1
        assert info.sealing.blocks == info.sealing.end_block - info.sealing.start_block + 1
        assert info.error is None
    finally:
        double.close()

    with governance_actor(anvil.url, tmp_path / "plain") as actor:
        info = facts(actor)
    assert info == ChainInfo(wbft=False, checked_at=info.checked_at)


# preflight: the quorum and the istanbul namespace


def preflight_config(home: Path, rpc_address: str, validator_mode: bool = True) -> Any:
    return load_config(
        env={
            "DAEMON_HOME": str(home),
            "DAEMON_RPC_ADDRESS": rpc_address,
            "VALIDATOR_MODE": "true" if validator_mode else "false",
        }
    )


@pytest.mark.parametrize(
    ("validators", "warned"),
    [(3, True), (4, False)],
    ids=["3-validators-need-all-3", "4-validators-need-3"],
)
def test_preflight_warns_when_my_downtime_would_cost_the_quorum(
    anvil: AnvilProcess, tmp_path: Path, validators: int, warned: bool
) -> None:
    # Every validator seals: with 3, the quorum is 3 and two remain while this node is down.
    members = VALIDATORS[:validators]
    double = WbftDouble(anvil.url, validators=members, node_address=ME).start()
    published: list[Any] = []
    try:
        wait_for_block(double, 1)
        config = preflight_config(tmp_path, double.url)
        plan = Plan(name="v2", height=10_000)
        warn_if_quorum_at_risk(config, plan, publish=published.append)
    finally:
        double.close()
    if not warned:
        assert published == []
        return
    [risk] = published
    assert isinstance(risk, ValidatorQuorumAtRisk)
    assert (risk.validators, risk.quorum, risk.active, risk.active_without_me) == (3, 3, 3, 2)
    assert (risk.address, risk.plan, risk.height) == (ME, "v2", 10_000)


def test_validator_mode_needs_the_istanbul_namespace(anvil: AnvilProcess, tmp_path: Path) -> None:
    # anvil over HTTP answers istanbul_* with -32601, as geth without --http.api istanbul.
    [problem] = validator_problems(preflight_config(tmp_path, anvil.url))
    assert "istanbul" in problem
    assert "--http.api" in problem
    assert "--ws.api" in problem
    assert "IPC" in problem
    # Without VALIDATOR_MODE the same node is a quiet non-WBFT chain.
    assert validator_problems(preflight_config(tmp_path, anvil.url, validator_mode=False)) == []
    # A node that serves the namespace passes.
    double = WbftDouble(anvil.url, validators=VALIDATORS, node_address=ME).start()
    try:
        assert validator_problems(preflight_config(tmp_path, double.url)) == []
    finally:
        double.close()


def test_validator_mode_without_istanbul_fails_every_preflight_and_warns_at_start(
    root: Path, anvil_bin: Callable[[str], Path], free_port: Callable[[], int]
) -> None:
    home = root / "home"
    layout = Home(root=home, name="anvil", data_dir=home / "data")
    init_home(layout, anvil_bin("1.5.1"))
    add_upgrade(layout, "v1.7.1", anvil_bin("1.7.1"))
    port = free_port()
    env = validator_env(f"http://127.0.0.1:{port}")  # the node itself, over HTTP
    daemon = Daemon(home, env, ["--port", str(port), "--block-time", "1"]).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        write_plan(home, "v1.7.1", 100_000)
        failed = events.wait_for("plan.preflight_failed", lambda p: p["name"] == "v1.7.1")
        [problem] = failed["problems"]
        assert "istanbul" in problem
        assert "--http.api" in problem
        assert "IPC" in problem

        def warned() -> bool:
            return any(
                "WARNING" in line and "does not serve the istanbul namespace" in line
                for line in daemon.log_text().splitlines()
            )

        wait_until(warned, what="a warning about the istanbul namespace")
        topics = [p["topic"] for p in events.seen]
        assert "upgrade.started" not in topics
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_validator_mode_over_ipc_passes_where_the_same_node_over_http_fails(
    root: Path, anvil_bin: Callable[[str], Path], free_port: Callable[[], int]
) -> None:
    # Two nodes of the WBFT network double whose HTTP refuses istanbul_* (geth without
    # --http.api istanbul); node 0's daemon follows the proxy's IPC path (geth's IPC serves
    # every namespace), node 1's the same kind of proxy over HTTP.
    ports = [free_port(), free_port()]
    ipc = root / "n0.ipc"
    specs = [
        NodeSpec(f"http://127.0.0.1:{ports[0]}", serve_istanbul=False, ipc_path=ipc),
        NodeSpec(f"http://127.0.0.1:{ports[1]}", serve_istanbul=False),
    ]
    metrics_port = free_port()
    started: list[tuple[Daemon, EventLog]] = []
    with contextlib.ExitStack() as stack, WbftNetwork(specs, block_time=0.5) as network:
        for index, rpc_address in enumerate((str(ipc), network.proxy_url(1))):
            home = root / f"home{index}"
            layout = Home(root=home, name="anvil", data_dir=home / "data")
            init_home(layout, anvil_bin("1.5.1"))
            add_upgrade(layout, "v1.7.1", anvil_bin("1.7.1"))
            env = validator_env(rpc_address)
            if index == 0:
                env["WEMIXVISOR_METRICS_ADDRESS"] = f"127.0.0.1:{metrics_port}"
            daemon = Daemon(home, env, ["--port", str(ports[index]), "--no-mining"]).start()
            stack.callback(daemon.kill)
            events = EventLog(daemon.events_endpoint)
            stack.callback(events.close)
            started.append((daemon, events))
        for daemon, events in started:
            events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
            write_plan(daemon.home, "v1.7.1", 100_000)
        network.wait_for(lambda s: all(node.committing for node in s.nodes), timeout=60)

        # Over HTTP: the plan's preflight fails, naming istanbul and the IPC fix.
        failed = started[1][1].wait_for("plan.preflight_failed", lambda p: p["name"] == "v1.7.1")
        [problem] = failed["problems"]
        assert "istanbul" in problem
        assert "IPC" in problem
        # Over IPC: the same check passes — the plan's first preflight completes with no
        # problem (ready; a failed one would only be re-checked after PREFLIGHT_RECHECK,
        # longer than this wait) and no preflight failure was counted.
        assert PREFLIGHT_RECHECK > 45
        samples = scrape_until(
            metrics_port,
            lambda s: s.get(("wemixvisor_plan_ready", (("plan", "v1.7.1"),))) == 1,
            timeout=45,
        )
        assert value(samples, "wemixvisor_plans_pending") == 1
        assert samples.get(("wemixvisor_plan_preflight_failures_total", ()), 0) == 0
        for daemon, _ in started:
            assert daemon.terminate() == 0
