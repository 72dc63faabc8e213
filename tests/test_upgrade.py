"""Upgrade scenarios at height against real anvil binaries (SPEC §5, §17).

anvil 1.5.1 is the genesis binary and 1.7.1 the upgrade; `--state` in the data dir carries
the chain across the switch, so the head continues and `web3_clientVersion` tells which binary
answers. H is the new binary's first block: the old binary's last head is H-1.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import AnvilProcess, rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.home.layout import Home, add_upgrade, init_home

H_AHEAD = 4  # blocks between "now" and the plan's height: enough to register it in time


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


class Chain:
    """A home with its daemon(s) and an anvil port."""

    def __init__(self, root: Path, genesis: Path, port: int) -> None:
        self.root = root
        self.home = root / "home"
        self.layout = Home(root=self.home, name="anvil", data_dir=self.home / "data")
        init_home(self.layout, genesis)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.daemons: list[Daemon] = []

    def add(self, name: str, binary: Path) -> None:
        add_upgrade(self.layout, name, binary)

    def daemon(self, *, mining: bool = True, **env: str) -> Daemon:
        base = {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": self.url,
            "DAEMON_POLL_INTERVAL": "100ms",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "DAEMON_VERIFY_TIMEOUT": "20s",
        }
        args = ["--port", str(self.port), "--state", str(self.home / "data" / "state.json")]
        if mining:
            args += ["--block-time", "1"]
        daemon = Daemon(self.home, {**base, **env}, args).start()
        self.daemons.append(daemon)
        return daemon

    def head(self) -> int:
        return int(rpc_call(self.url, "eth_blockNumber"), 16)

    def client_version(self) -> str:
        return str(rpc_call(self.url, "web3_clientVersion"))

    def write_plan(self, name: str, height: int) -> None:
        (self.home / "data" / "upgrade-info.json").write_text(
            msgspec.json.encode({"name": name, "height": height}).decode()
        )

    def write_batch(self, plans: list[tuple[str, int]]) -> None:
        body = [{"name": name, "height": height} for name, height in plans]
        (self.home / "data" / "upgrade-info.json.batch").write_bytes(msgspec.json.encode(body))

    def current(self) -> str:
        return os.readlink(self.home / "wemixvisor" / "current")

    def anvils(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if (
                proc.info["status"] != psutil.STATUS_ZOMBIE
                and cmdline
                and str(self.home) in " ".join(cmdline)
                and "wemixvisor.bootstrap" not in " ".join(cmdline)
            ):
                found.append(proc)
        return found

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


@pytest.fixture
def chain_factory(
    root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> Iterator[Callable[..., Chain]]:
    chains: list[Chain] = []

    def make(genesis: Path | None = None) -> Chain:
        chain = Chain(root / f"c{len(chains)}", genesis or anvil_bin_1_5_1, free_port())
        chains.append(chain)
        return chain

    yield make
    for chain in chains:
        chain.stop()


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("genesis_version", "upgrade_version", "with_transaction"),
    [
        # anvil 1.7.1 cannot load a 1.5.1 state file that holds transactions (its transaction
        # encoding changed), so the transaction check runs on the 1.4.4 -> 1.5.1 upgrade.
        ("1.5.1", "1.7.1", False),
        ("1.4.4", "1.5.1", True),
    ],
)
def test_the_node_switches_binary_at_height_and_the_chain_continues(
    chain_factory: Callable[..., Chain],
    anvil_bin: Callable[[str], Path],
    genesis_version: str,
    upgrade_version: str,
    with_transaction: bool,
) -> None:
    chain = chain_factory(anvil_bin(genesis_version))
    name = f"v{upgrade_version}"
    chain.add(name, anvil_bin(upgrade_version))
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        assert genesis_version in chain.client_version()
        tx = None
        if with_transaction:
            sender = rpc_call(chain.url, "eth_accounts")[0]
            transfer = {
                "from": sender,
                "to": "0x000000000000000000000000000000000000dEaD",
                "value": "0x1",
            }
            tx = rpc_call(chain.url, "eth_sendTransaction", [transfer])
        height = chain.head() + H_AHEAD
        chain.write_plan(name, height)

        registered = events.wait_for("plan.registered")
        assert registered["name"] == name
        assert registered["source"] == "file"
        started = events.wait_for("upgrade.started", timeout=H_AHEAD + 20)
        assert started["observed_height"] == height - 1
        assert started["late"] is False
        completed = events.wait_for("upgrade.completed", timeout=60)
        steps = [p["step"] for p in events.seen if p["topic"] == "upgrade.step"]
        assert steps[:2] == ["stopping", "backup"]
        assert "switch" in steps
        assert steps[-1] == "verifying"
        # The old binary's last head is H-1: the new binary took over from exactly there, so
        # block H is the new binary's first block.
        assert completed["first_head"] == height - 1
        assert completed["downtime_seconds"] > 0
        assert upgrade_version in (completed["version"] or "")

        assert chain.client_version() == f"anvil/v{upgrade_version}"
        assert chain.current() == f"upgrades/{name}"
        events.wait_for("height.observed", lambda p: p["height"] >= height, timeout=10)
        assert "upgrade.overshoot" not in [p["topic"] for p in events.seen]
        if tx is not None:
            found = rpc_call(chain.url, "eth_getTransactionByHash", [tx])
            assert found is not None
            assert found["hash"] == tx
        plan_copy = chain.home / "wemixvisor" / "upgrades" / name / "upgrade-info.json"
        assert msgspec.json.decode(plan_copy.read_bytes())["height"] == height
        backups = list((chain.home / "backups").iterdir())
        assert len(backups) == 1
        assert (backups[0] / "manifest.json").exists()
    finally:
        events.close()
    assert daemon.terminate() == 0

    # A restart must not upgrade again: the plan is completed and stays so.
    again = chain.daemon()
    events = EventLog(again.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        assert chain.client_version() == f"anvil/v{upgrade_version}"
        assert not [p for p in events.seen if p["topic"].startswith("upgrade.")]
    finally:
        events.close()
    assert again.terminate() == 0


def test_a_batch_upgrades_twice_in_one_run(
    chain_factory: Callable[..., Chain],
    anvil_bin_1_4_4: Path,
    anvil_bin_1_5_1: Path,
    anvil_bin_1_7_1: Path,
) -> None:
    chain = chain_factory(anvil_bin_1_4_4)
    chain.add("v1.5.1", anvil_bin_1_5_1)
    chain.add("v1.7.1", anvil_bin_1_7_1)
    daemon = chain.daemon(UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        assert "1.4.4" in chain.client_version()
        first = chain.head() + H_AHEAD
        second = first + 3
        chain.write_batch([("v1.5.1", first), ("v1.7.1", second)])
        one = events.wait_for("upgrade.completed", timeout=60)
        assert one["name"] == "v1.5.1"
        assert one["first_head"] == first - 1
        two = events.wait_for("upgrade.completed", timeout=60)
        assert two["name"] == "v1.7.1"
        assert two["first_head"] == second - 1
        assert chain.client_version() == "anvil/v1.7.1"
        switches = [p["to_target"] for p in events.seen if p["topic"] == "upgrade.started"]
        assert switches == ["upgrades/v1.5.1", "upgrades/v1.7.1"]
    finally:
        events.close()
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("echo 'bad binary' >&2\nexit 1\n", "exited"),
        ("exec sleep 600\n", "RPC never answered"),
    ],
    ids=["exits-at-once", "never-opens-rpc"],
)
def test_a_bad_upgrade_binary_is_rolled_back_and_the_chain_keeps_going(
    chain_factory: Callable[..., Chain], root: Path, body: str, reason: str
) -> None:
    chain = chain_factory()
    bad = script(
        root / "bad" / "anvil",
        f'[ "$1" = "--version" ] && echo "anvil Version: 9.9.9" && exit 0\n{body}',
    )
    chain.add("broken", bad)
    daemon = chain.daemon(DAEMON_VERIFY_TIMEOUT="3s", DAEMON_BACKOFF_INITIAL="100ms")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        height = chain.head() + H_AHEAD
        chain.write_plan("broken", height)
        failed = events.wait_for("upgrade.failed", timeout=H_AHEAD + 30)
        assert failed["step"] == "verifying"
        assert reason in failed["reason"]
        rolled = events.wait_for("upgrade.rolled_back", timeout=30)
        assert rolled["target"] == "genesis"
        assert rolled["restored_backup"] is not None
        topics = [p["topic"] for p in events.seen]
        assert topics.index("upgrade.failed") < topics.index("upgrade.rolled_back")
        events.wait_for("node.running", timeout=20)
        wait_for_rpc(chain.url, timeout=10)
        assert "1.5.1" in chain.client_version()
        assert chain.current() == "genesis"
        head = chain.head()
        events.wait_for("height.observed", lambda p: p["height"] > head, timeout=10)
        queue = msgspec.json.decode(
            (chain.home / "wemixvisor" / "state" / "plans.json").read_bytes()
        )
        assert [p["status"] for p in queue["plans"]] == ["failed"]
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_no_upgrade_fires_while_rpc_is_dead(
    chain_factory: Callable[..., Chain], anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path, root: Path
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    # The daemon follows an RPC endpoint that the test controls and then takes away, while
    # the node itself keeps mining: the head becomes unknown, and an unknown head never
    # triggers an upgrade.
    watched = AnvilProcess(anvil_bin_1_5_1, root, block_time=None).start()
    try:
        daemon = chain.daemon(DAEMON_RPC_ADDRESS=watched.url, DAEMON_STARTSECS="300ms")
        events = EventLog(daemon.events_endpoint)
        try:
            events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
            chain.write_plan("v1.7.1", 3)
            events.wait_for("plan.registered", timeout=20)
            watched.kill()
            unavailable = events.wait_for("rpc.unavailable", timeout=20)
            assert unavailable["address"] == watched.url
            wait_for_rpc(chain.url, timeout=10)
            while chain.head() < 5:
                events.wait_for("supervisor.heartbeat")
            events.wait_for("supervisor.heartbeat")
            # Armed at registration (H-1 was 2 blocks away) and disarmed when RPC went, or
            # not armed at all (RPC went first): nothing held, nothing started.
            topics = [p["topic"] for p in events.seen if p["topic"].startswith("upgrade.")]
            assert topics in ([], ["upgrade.armed", "upgrade.disarmed"]), topics
            if topics:
                disarmed = next(p for p in events.seen if p["topic"] == "upgrade.disarmed")
                assert "RPC is unavailable" in disarmed["reason"]
            assert len([p for p in events.seen if p["topic"] == "rpc.unavailable"]) == 1
            assert chain.current() == "genesis"
        finally:
            events.close()
        assert daemon.terminate() == 0
    finally:
        watched.kill()


STEPS = [
    "stopping",
    "backup",
    "custom_preupgrade",
    "switch",
    "app_preupgrade",
    "starting",
    "verifying",
]


@pytest.mark.parametrize("step", STEPS)
def test_a_daemon_killed_right_after_a_step_is_finished_by_the_next_daemon(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path, step: str
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    first = chain.daemon()
    events = EventLog(first.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        height = chain.head() + H_AHEAD
        chain.write_plan("v1.7.1", height)
        events.wait_for("upgrade.step", lambda p: p["step"] == step, timeout=H_AHEAD + 30)
        first.kill()
    finally:
        events.close()
    assert chain.current() in ("genesis", "upgrades/v1.7.1")

    second = chain.daemon()
    events = EventLog(second.events_endpoint)
    journal = chain.home / "wemixvisor" / "state" / "journal.json"
    try:
        events.wait_for(
            "supervisor.heartbeat",
            lambda p: p["node_state"] == "RUNNING" and not journal.exists(),
            timeout=60,
        )
        wait_for_rpc(chain.url, timeout=20)
        assert chain.current() == "upgrades/v1.7.1"
        assert chain.client_version() == "anvil/v1.7.1"
        assert len(chain.anvils()) == 1, "never two nodes"
        queue = msgspec.json.decode(
            (chain.home / "wemixvisor" / "state" / "plans.json").read_bytes()
        )
        assert [p["status"] for p in queue["plans"]] == ["completed"]
    finally:
        events.close()
    assert second.terminate() == 0


@pytest.mark.parametrize(("code", "upgrades"), [(0, True), (1, False), (30, False)])
def test_the_custom_preupgrade_script_decides(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path, code: int, upgrades: bool
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    marker = chain.root / "hook-ran"
    script(
        chain.home / "wemixvisor" / "pre-upgrade.sh",
        f'echo "$1 $2 $UPGRADE_NAME" > {marker}\nexit {code}\n',
    )
    daemon = chain.daemon(COSMOVISOR_CUSTOM_PREUPGRADE="pre-upgrade.sh", UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        height = chain.head() + H_AHEAD
        chain.write_plan("v1.7.1", height)
        if upgrades:
            events.wait_for("upgrade.completed", timeout=H_AHEAD + 30)
            assert chain.client_version() == "anvil/v1.7.1"
        else:
            failed = events.wait_for("upgrade.failed", timeout=H_AHEAD + 30)
            assert failed["step"] == "custom_preupgrade"
            assert f"exited with {code}" in failed["reason"]
            events.wait_for("upgrade.rolled_back", timeout=30)
            events.wait_for("node.running", timeout=20)
            wait_for_rpc(chain.url, timeout=10)
            assert "1.5.1" in chain.client_version()
        assert marker.read_text().split() == ["v1.7.1", str(height), "v1.7.1"]
    finally:
        events.close()
    assert daemon.terminate() == 0


@pytest.mark.parametrize(
    ("codes", "retries", "upgrades"),
    [
        ([0], 0, True),
        ([1], 0, True),
        ([30], 3, False),
        ([31, 0], 1, True),
        ([31, 31], 1, False),
        ([7], 0, False),
    ],
)
def test_the_app_preupgrade_exit_codes(
    chain_factory: Callable[..., Chain],
    anvil_bin_1_7_1: Path,
    root: Path,
    codes: list[int],
    retries: int,
    upgrades: bool,
) -> None:
    chain = chain_factory()
    counter = root / "calls"
    counter.write_text("0")
    cases = "\n".join(f"    {i}) exit {c} ;;" for i, c in enumerate(codes))
    wrapper = script(
        root / "app" / "anvil",
        f"""\
        if [ "$1" = pre-upgrade ]; then
          n=$(cat {counter}); echo $((n+1)) > {counter}
          case $n in
        {cases}
            *) exit 0 ;;
          esac
        fi
        exec {anvil_bin_1_7_1} "$@"
        """,
    )
    chain.add("v1.7.1", wrapper)
    daemon = chain.daemon(
        DAEMON_APP_PREUPGRADE="true",
        DAEMON_PREUPGRADE_MAX_RETRIES=str(retries),
        UNSAFE_SKIP_BACKUP="true",
    )
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        chain.write_plan("v1.7.1", chain.head() + H_AHEAD)
        if upgrades:
            events.wait_for("upgrade.completed", timeout=H_AHEAD + 30)
            assert chain.client_version() == "anvil/v1.7.1"
        else:
            failed = events.wait_for("upgrade.failed", timeout=H_AHEAD + 30)
            assert failed["step"] == "app_preupgrade"
            events.wait_for("upgrade.rolled_back", timeout=30)
            events.wait_for("node.running", timeout=20)
            wait_for_rpc(chain.url, timeout=10)
            assert "1.5.1" in chain.client_version()
            assert chain.current() == "genesis"
        attempts = [
            p
            for p in events.seen
            if p["topic"] == "upgrade.step" and p["step"] == "app_preupgrade" and p["attempt"] >= 1
        ]
        assert len(attempts) >= 1
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_restart_after_upgrade_false_leaves_the_node_stopped_for_the_operator(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    daemon = chain.daemon(DAEMON_RESTART_AFTER_UPGRADE="false", UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        chain.write_plan("v1.7.1", chain.head() + H_AHEAD)
        events.wait_for("upgrade.awaiting_operator", timeout=H_AHEAD + 30)
        beat = events.wait_for("supervisor.heartbeat")
        assert beat["node_state"] == "STOPPED"
        assert chain.current() == "upgrades/v1.7.1"
        assert chain.anvils() == []
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_killing_the_node_is_not_mistaken_for_an_upgrade_and_sigterm_is_clean(
    chain_factory: Callable[..., Chain],
) -> None:
    chain = chain_factory()
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        pid = chain.anvils()[0].pid
        os.kill(pid, signal.SIGKILL)
        events.wait_for("node.running", timeout=20)
        assert not [p for p in events.seen if p["topic"].startswith("upgrade.")]
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_chain_that_does_not_move_after_the_upgrade_is_waited_for_not_rolled_back(
    chain_factory: Callable[..., Chain], anvil_bin_1_7_1: Path
) -> None:
    chain = chain_factory()
    chain.add("v1.7.1", anvil_bin_1_7_1)
    # No block time: blocks appear only when the test mines them, as on a chain whose other
    # validators have not upgraded yet.
    daemon = chain.daemon(mining=False, DAEMON_NETWORK_WAIT="2s", UNSAFE_SKIP_BACKUP="true")
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        height = chain.head() + 2
        chain.write_plan("v1.7.1", height)
        events.wait_for("plan.registered", timeout=20)
        rpc_call(chain.url, "evm_mine")  # H-1: the old binary's last block
        completed = events.wait_for("upgrade.completed", timeout=30)
        assert completed["first_head"] == height - 1
        waiting = events.wait_for("upgrade.waiting_for_network", timeout=20)
        assert waiting["name"] == "v1.7.1"
        assert waiting["head"] == height - 1
        assert chain.client_version() == "anvil/v1.7.1"
        assert not [
            p for p in events.seen if p["topic"] in ("upgrade.failed", "upgrade.rolled_back")
        ]
        assert chain.current() == "upgrades/v1.7.1"
    finally:
        events.close()
    assert daemon.terminate() == 0
