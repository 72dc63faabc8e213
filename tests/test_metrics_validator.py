"""Validator metrics scraped from a real daemon in validator mode, in front of the WBFT test
double over real anvil nodes: a plan whose downtime would break the quorum shows as
`wemixvisor_validator_quorum_at_risk` while it is pending, and a validator that does not sign
after the upgrade shows as `wemixvisor_validator_signing 0` — what the alert rules fire on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from devtools.anvil import rpc_call, wait_for_rpc
from tests.control_harness import short_root
from tests.daemon_harness import Daemon, EventLog
from tests.metrics_harness import scrape, scrape_until, value
from tests.wbft_proxy import WbftDouble, address
from wemixvisor.home.layout import Home, add_upgrade, init_home

ME = address(0xA1)
VALIDATORS = [ME, address(0xB2), address(0xC3), address(0xD4)]
DOWN = VALIDATORS[1]
AHEAD = 24  # blocks of 0.25 s between the plan's arrival and its height: time to scrape


def test_a_quorum_warning_and_a_silent_validator_show_in_the_metrics(
    anvil_bin: Callable[[str], Path], free_port: Callable[[], int]
) -> None:
    with short_root() as root:
        scenario(root / "home", anvil_bin, free_port)


def scenario(home: Path, anvil_bin: Callable[[str], Path], free_port: Callable[[], int]) -> None:
    layout = Home(root=home, name="anvil", data_dir=home / "data")
    init_home(layout, anvil_bin("1.4.4"))
    add_upgrade(layout, "v1.5.1", anvil_bin("1.5.1"))
    port, metrics_port = free_port(), free_port()
    node_url = f"http://127.0.0.1:{port}"
    # Another validator is down: with ours down for the upgrade, 2 of 4 remain, below 3.
    double = WbftDouble(
        node_url, validators=VALIDATORS, node_address=ME, signing=set(VALIDATORS) - {DOWN}
    ).start()
    env = {
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": double.url,
        "DAEMON_POLL_INTERVAL": "100ms",
        "DAEMON_STARTSECS": "300ms",
        "DAEMON_SHUTDOWN_GRACE": "10s",
        "UNSAFE_SKIP_BACKUP": "true",
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
        "VALIDATOR_MODE": "true",
        "WEMIXVISOR_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }
    args = ["--port", str(port), "--block-time", "0.25", "--state", str(home / "data" / "s")]
    daemon = Daemon(home, env, args).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(node_url, timeout=10)
        assert not [k for k in scrape(metrics_port) if k[0].startswith("wemixvisor_validator")]

        height = int(rpc_call(node_url, "eth_blockNumber"), 16) + AHEAD
        (home / "data" / "upgrade-info.json").write_bytes(
            msgspec.json.encode({"name": "v1.5.1", "height": height})
        )
        events.wait_for("validator.quorum_at_risk")
        warned = ("wemixvisor_validator_quorum_at_risk", (("plan", "v1.5.1"),))
        samples = scrape_until(metrics_port, lambda s: warned in s)  # the exporter's feed
        assert value(samples, "wemixvisor_validator_quorum_at_risk", plan="v1.5.1") == 1
        assert value(samples, "wemixvisor_plan_height", plan="v1.5.1") == height

        # The double stops counting our node among the committers after the switch.
        double.stop_signing(ME)
        events.wait_for("upgrade.completed", timeout=60)
        events.wait_for("validator.not_signing", timeout=30)
        samples = scrape_until(
            metrics_port,
            lambda s: ("wemixvisor_validator_signing", (("address", ME),)) in s,
        )
        assert value(samples, "wemixvisor_validator_signing", address=ME) == 0
        assert not [k for k in samples if k[0] == "wemixvisor_validator_quorum_at_risk"], (
            "the plan is done: its warning is gone"
        )
        assert value(samples, "wemixvisor_upgrades_total", result="completed") == 1
    finally:
        events.close()
        double.close()
        try:
            assert daemon.terminate() == 0
        finally:
            daemon.kill()
