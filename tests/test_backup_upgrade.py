"""Backups under a real daemon supervising real anvil binaries (SPEC §5 step 2, §7).

The data dir holds anvil's `--state` file plus chain-like filler files written "long ago", so
that a pre-staged copy can be told apart from a full one by the bytes copied at H.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.backup import store as backups
from wemixvisor.home.layout import Home, add_upgrade, init_home

OLD = 1_600_000_000
MiB = 1024 * 1024


class Chain:
    """A home with an anvil port, its daemons, and the operator tool."""

    def __init__(self, root: Path, genesis: Path, port: int) -> None:
        self.root = root
        self.home = root / "home"
        self.data = self.home / "data"
        self.store = root / "backups"
        init_home(Home(root=self.home, name="anvil", data_dir=self.data), genesis)
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.env = {
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": self.url,
            "DAEMON_DATA_BACKUP_DIR": str(self.store),
            "DAEMON_POLL_INTERVAL": "100ms",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "500ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "DAEMON_VERIFY_TIMEOUT": "20s",
        }
        self.daemons: list[Daemon] = []

    def fill(self, files: int, size: int) -> int:
        """Chain-like files the node does not touch; their total size."""
        chaindata = self.data / "geth" / "chaindata"
        chaindata.mkdir(parents=True, exist_ok=True)
        block = os.urandom(size)
        for index in range(files):
            path = chaindata / f"{index:06d}.ldb"
            path.write_bytes(block)
            os.utime(path, (OLD, OLD))
        return files * size

    def daemon(self, **env: str) -> Daemon:
        args = [
            "--port",
            str(self.port),
            "--block-time",
            "1",
            "--state",
            str(self.data / "state.json"),
        ]
        daemon = Daemon(self.home, {**self.env, **env}, args).start()
        self.daemons.append(daemon)
        return daemon

    def tool(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`wemixvisor ...` as the operator runs it against this home."""
        env = {**os.environ, **self.env, "DAEMON_HOME": str(self.home)}
        return subprocess.run(
            [sys.executable, "-m", "wemixvisor.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def head(self) -> int:
        return int(rpc_call(self.url, "eth_blockNumber"), 16)

    def client_version(self) -> str:
        return str(rpc_call(self.url, "web3_clientVersion"))

    def write_plan(self, name: str, height: int) -> None:
        (self.data / "upgrade-info.json").write_bytes(
            msgspec.json.encode({"name": name, "height": height})
        )

    def complete_backups(self) -> list[str]:
        if not self.store.exists():
            return []
        return [
            p.name for p in sorted(self.store.iterdir()) if backups.read_manifest(p) is not None
        ]

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()


@pytest.fixture
def chain_factory(
    anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path, free_port: Callable[[], int]
) -> Iterator[Callable[[], Chain]]:
    root = Path(tempfile.mkdtemp(prefix="wvb-", dir="/tmp"))
    chains: list[Chain] = []

    def make() -> Chain:
        chain = Chain(root / f"c{len(chains)}", anvil_bin_1_5_1, free_port())
        add_upgrade(
            Home(root=chain.home, name="anvil", data_dir=chain.data), "v1.7.1", anvil_bin_1_7_1
        )
        chains.append(chain)
        return chain

    try:
        yield make
    finally:
        for chain in chains:
            chain.stop()
        kill_node_processes(root)
        for chain in chains:
            subprocess.run(["umount", "-l", str(chain.store)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def running(events: EventLog, chain: Chain) -> None:
    events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
    wait_for_rpc(chain.url, timeout=15)


def test_the_upgrade_finishes_the_prestaged_backup_copying_only_what_changed(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    filler = chain.fill(20, MiB)
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint, ["backup.", "upgrade.", "plan.", "supervisor."])
    try:
        running(events, chain)
        height = chain.head() + 6
        chain.write_plan("v1.7.1", height)

        staged = events.wait_for("backup.staged", timeout=20)
        assert staged["plan"] == "v1.7.1"
        assert staged["total_bytes"] >= filler
        events.wait_for("upgrade.started", timeout=30)
        done = events.wait_for("backup.completed", lambda p: p["kind"] == "upgrade", timeout=30)
        completed = events.wait_for("upgrade.completed", timeout=60)
        topics = [p["topic"] for p in events.seen]
        assert topics.index("backup.staged") < topics.index("upgrade.started")

        # At H only anvil's state file and other small changes were copied.
        assert done["total_bytes"] >= filler
        assert done["changed_bytes"] < done["total_bytes"] * 0.05
        assert completed["first_head"] == height - 1
        assert chain.client_version() == "anvil/v1.7.1"
        assert chain.complete_backups() == [done["id"]]
        manifest = backups.read_manifest(chain.store / done["id"])
        assert manifest is not None
        assert manifest.plan == "v1.7.1"
        assert backups.verify_against(chain.store / done["id"] / "data", manifest.entries) == []

        # The operator tool asks the running daemon.
        listed = chain.tool("backup", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = msgspec.json.decode(listed.stdout)["backups"]
        assert row["id"] == done["id"]
        assert row["complete"] is True
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_an_upgrade_whose_backup_cannot_fit_fails_before_the_node_is_stopped(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    chain.store.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(chain.store)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    chain.fill(8, MiB)
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint)
    try:
        running(events, chain)
        node = daemon.node_pid()
        assert node is not None
        height = chain.head() + 4
        chain.write_plan("v1.7.1", height)

        preflight = events.wait_for("plan.preflight_failed", timeout=20)
        [problem] = [p for p in preflight["problems"] if "free space" in p]
        assert "need" in problem
        assert "available" in problem
        failed = events.wait_for("upgrade.failed", timeout=30)
        assert failed["step"] == "preflight"
        reason: str = failed["reason"]
        need = int(reason.split("need ")[1].split(" bytes", maxsplit=1)[0])
        free = int(reason.split("), ")[1].split(" available", maxsplit=1)[0])
        assert need > 8 * MiB
        assert free < need

        # The node was never stopped: the old binary keeps the chain going.
        assert not [p for p in events.seen if p["topic"] in ("node.stopping", "node.exited")]
        assert daemon.node_pid() == node
        assert psutil.Process(node).status() != psutil.STATUS_ZOMBIE
        assert "1.5.1" in chain.client_version()
        head = chain.head()
        events.wait_for("height.observed", lambda p: p["height"] > head, timeout=10)
        assert os.readlink(chain.home / "wemixvisor" / "current") == "genesis"
        assert chain.complete_backups() == []
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_daemon_killed_during_the_backup_at_height_leaves_it_incomplete_for_the_next_one(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    filler = chain.fill(200, MiB)
    first = chain.daemon()
    events = EventLog(first.events_endpoint)
    try:
        running(events, chain)
        events.wait_for("height.observed", lambda p: p["height"] >= 1, timeout=10)
        # A plan already due runs at once: its backup is a full copy at the switch.
        chain.write_plan("v1.7.1", 1)
        started = events.wait_for("backup.started", lambda p: p["kind"] == "upgrade", timeout=30)
        first.kill()
        assert not [p for p in events.seen if p["topic"] == "backup.completed"]
    finally:
        events.close()
    assert chain.complete_backups() == []
    [partial] = list(chain.store.iterdir())
    assert partial.name == started["id"]
    # The unfinished upgrade still needs it: pruning leaves it alone.
    pruned = chain.tool("backup", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip() == "removed: nothing"

    second = chain.daemon()
    events = EventLog(second.events_endpoint)
    try:
        done = events.wait_for("backup.completed", lambda p: p["kind"] == "upgrade", timeout=60)
        events.wait_for("upgrade.completed", timeout=60)
        assert done["total_bytes"] >= filler
        assert chain.complete_backups() == [done["id"]]
        assert [p.name for p in chain.store.iterdir()] == [done["id"]]
        assert chain.client_version() == "anvil/v1.7.1"
    finally:
        events.close()
    assert second.terminate() == 0


def test_operator_backups_through_the_daemon_survive_its_kill_and_restore_the_chain(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    chain.fill(200, MiB)
    first = chain.daemon()
    events = EventLog(first.events_endpoint)
    tool = None
    try:
        running(events, chain)
        env = {**os.environ, **chain.env, "DAEMON_HOME": str(chain.home)}
        tool = subprocess.Popen(
            [sys.executable, "-m", "wemixvisor.cli", "backup", "create", "--label", "doomed"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = events.wait_for("backup.started", lambda p: p["kind"] == "full", timeout=30)
        first.kill()
        assert not [p for p in events.seen if p["topic"] == "backup.completed"]
    finally:
        events.close()
        if tool is not None:
            tool.kill()
            tool.wait()
    assert chain.complete_backups() == []

    second = chain.daemon()
    events = EventLog(second.events_endpoint)
    try:
        running(events, chain)
        pruned = chain.tool("backup", "prune", "--json")
        assert pruned.returncode == 0, pruned.stderr
        assert msgspec.json.decode(pruned.stdout)["removed"] == [started["id"]]

        made = chain.tool("backup", "create", "--label", "good")
        assert made.returncode == 0, made.stderr
        assert "complete" in made.stdout
        [good] = chain.complete_backups()
        wait_for_rpc(chain.url, timeout=15)
        at_backup = chain.head()
        events.wait_for("height.observed", lambda p: p["height"] >= at_backup + 4, timeout=20)

        restored = chain.tool("backup", "restore", good)
        assert restored.returncode == 0, restored.stderr
        assert f"restored {good}" in restored.stdout
        wait_for_rpc(chain.url, timeout=20)
        after = chain.head()
        assert after < at_backup + 3, "the blocks made after the backup are gone"
        events.wait_for("height.observed", lambda p: p["height"] > after, timeout=10)
    finally:
        events.close()
    assert second.terminate() == 0


def test_a_daemon_killed_between_the_copy_and_the_seal_leaves_the_backup_incomplete(
    chain_factory: Callable[[], Chain],
) -> None:
    chain = chain_factory()
    filler = chain.fill(20, MiB)
    # The custom pre-upgrade hook runs after the backup's copy and before the node starts
    # again: the first time, it kills the daemon (its parent) there, before any seal.
    hook = chain.home / "wemixvisor" / "kill-daemon.sh"
    hook.write_text(
        "#!/bin/sh\n"
        "if [ ! -e killed-once ]; then touch killed-once; kill -9 $PPID; sleep 30; fi\n"
        "exit 0\n"
    )
    hook.chmod(0o755)
    first = chain.daemon(COSMOVISOR_CUSTOM_PREUPGRADE="kill-daemon.sh")
    events = EventLog(first.events_endpoint)
    try:
        running(events, chain)
        chain.write_plan("v1.7.1", chain.head() + 6)
        events.wait_for("backup.staged", timeout=20)
        assert first.process is not None
        assert first.process.wait(timeout=60) == -9
        assert not [p for p in events.seen if p["topic"] == "backup.completed"]
    finally:
        events.close()
    assert "tracked changes) in" in first.log_text()
    [journal_path] = chain.home.rglob("journal.json")
    journal = msgspec.json.decode(journal_path.read_bytes())
    assert journal["step"] == "custom_preupgrade"
    copied = chain.store / journal["backup"]
    # Copied, never sealed: incomplete, never restored, not listed as complete.
    assert (copied / "data" / "state.json").exists()
    assert backups.read_manifest(copied) is None
    assert chain.complete_backups() == []
    listed = chain.tool("backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = msgspec.json.decode(listed.stdout)["backups"]
    assert row["id"] == copied.name
    assert row["complete"] is False

    # The resumed upgrade makes its backup again (a scan: no tracking survived the restart)
    # and seals it once the new binary answers.
    second = chain.daemon(COSMOVISOR_CUSTOM_PREUPGRADE="kill-daemon.sh")
    events = EventLog(second.events_endpoint)
    try:
        done = events.wait_for("backup.completed", lambda p: p["kind"] == "upgrade", timeout=60)
        completed = events.wait_for("upgrade.completed", timeout=60)
        assert completed["name"] == "v1.7.1"
        assert done["total_bytes"] >= filler
        assert chain.complete_backups() == [done["id"]]
        assert [p.name for p in chain.store.iterdir()] == [done["id"]]
        manifest = backups.read_manifest(chain.store / done["id"])
        assert manifest is not None
        assert backups.verify_against(chain.store / done["id"] / "data", manifest.entries) == []
        assert chain.client_version() == "anvil/v1.7.1"
    finally:
        events.close()
    assert "scanning the whole data dir" in second.log_text()
    assert second.terminate() == 0
