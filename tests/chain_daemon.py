"""A daemon on a `tests.test_upgrade.Chain`, with the node arguments a scenario adds."""

from __future__ import annotations

from tests.daemon_harness import Daemon
from tests.test_upgrade import Chain

BASE_ENV = {
    "DAEMON_NAME": "anvil",
    "DAEMON_POLL_INTERVAL": "100ms",
    "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
    "DAEMON_SHUTDOWN_GRACE": "10s",
    "DAEMON_VERIFY_TIMEOUT": "20s",
}


def start_daemon(chain: Chain, *extra_args: str, **env: str) -> Daemon:
    """The daemon of `chain`'s home on an anvil with 1 s blocks keeping its chain in
    data/state.json, plus `extra_args`; stopped with the chain."""
    state_file = str(chain.home / "data" / "state.json")
    args = ["--port", str(chain.port), "--block-time", "1", "--state", state_file, *extra_args]
    daemon = Daemon(chain.home, {**BASE_ENV, "DAEMON_RPC_ADDRESS": chain.url, **env}, args)
    chain.daemons.append(daemon.start())
    return daemon
