"""Node supervision scenarios: a real anvil, a real daemon, real events."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from wemixvisor.home.layout import Home, init_home
from wemixvisor.node.process import group_members

MakeDaemon = Callable[..., Daemon]


def make_home(root: Path, binary: Path, name: str = "anvil") -> Path:
    home = root / "home"
    init_home(Home(root=home, name=name, data_dir=home / "data"), binary)
    return home


@pytest.fixture
def daemons(short_root: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()
    kill_node_processes(short_root)


@pytest.fixture
def make_daemon(daemons: list[Daemon], free_port: Callable[[], int]) -> MakeDaemon:
    def make(home: Path, node_args: list[str] | None = None, **env: str) -> Daemon:
        base = {
            "DAEMON_NAME": "anvil",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "200ms",
            "DAEMON_SHUTDOWN_GRACE": "10s",
        }
        daemon = Daemon(home, {**base, **env}, node_args or [])
        daemons.append(daemon)
        return daemon

    return make


def anvil_args(port: int, home: Path) -> list[str]:
    return ["--port", str(port), "--block-time", "1", "--state", str(home / "data" / "state.json")]


def read_node_pid(home: Path) -> int:
    record = msgspec.json.decode((home / "wemixvisor" / "state" / "node.pid").read_bytes())
    return int(record["pid"])


def wait_node_pid(home: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return read_node_pid(home)
        except (FileNotFoundError, msgspec.DecodeError):
            time.sleep(0.02)
    raise AssertionError("the daemon never recorded a node pid")


def anvil_processes(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (
            proc.info["status"] != psutil.STATUS_ZOMBIE
            and cmdline
            and cmdline[0].endswith("/anvil")
            and str(home) in " ".join(cmdline)
        ):
            found.append(proc)
    return found


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_kill_9_of_the_node_is_reported_and_the_node_answers_rpc_again(
    short_root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int], make_daemon: MakeDaemon
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(url, timeout=10)
        old_pid = read_node_pid(home)

        os.kill(old_pid, signal.SIGKILL)

        exited = events.wait_for("node.exited", lambda p: p["pid"] == old_pid)
        assert exited["signal"] == signal.SIGKILL
        assert exited["exit_code"] is None
        assert exited["expected"] is False
        running = events.wait_for("node.running")
        assert running["pid"] != old_pid
        wait_for_rpc(url, timeout=10)
        assert [p.pid for p in anvil_processes(home)] == [running["pid"]]
        assert events.gaps == 0
        seqs = [p["seq"] for p in events.seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "event seq has gaps"
    finally:
        events.close()
    assert daemon.terminate() == 0
    assert anvil_processes(home) == []


def test_a_binary_that_exits_at_once_backs_off_then_goes_fatal_and_the_daemon_stays_up(
    short_root: Path, make_daemon: MakeDaemon
) -> None:
    broken = write_script(short_root / "anvil", "echo 'cannot open database' >&2\nexit 3\n")
    home = make_home(short_root, broken)
    daemon = make_daemon(
        home,
        DAEMON_MAX_RESTARTS="3",
        DAEMON_BACKOFF_INITIAL="200ms",
        DAEMON_STARTSECS="5s",
    ).start()
    events = EventLog(daemon.events_endpoint)
    try:
        backoff = events.wait_for("node.backoff")
        assert backoff["max_restarts"] == 3
        fatal = events.wait_for("node.fatal")
        assert "3 restarts" in fatal["reason"]
        exits = [p for p in events.seen if p["topic"] == "node.exited"]
        assert exits and all(p["exit_code"] == 3 and not p["expected"] for p in exits)
        delays = [p["delay"] for p in events.seen if p["topic"] == "node.backoff"]
        assert delays == sorted(delays), f"back-off must grow: {delays}"
        # FATAL leaves the node down but the daemon keeps publishing.
        beat = events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "FATAL")
        later = events.wait_for("supervisor.heartbeat")
        assert later["seq"] > beat["seq"]
        assert daemon.process is not None and daemon.process.poll() is None
        assert "cannot open database" in (home / "logs" / "node.log").read_text()
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_node_that_ignores_sigterm_is_killed_after_the_grace_with_its_whole_group(
    short_root: Path, make_daemon: MakeDaemon
) -> None:
    stubborn = write_script(
        short_root / "anvil",
        """\
        trap '' TERM
        sleep 600 &
        echo "child $!"
        while true; do sleep 1; done
        """,
    )
    home = make_home(short_root, stubborn)
    daemon = make_daemon(home, DAEMON_SHUTDOWN_GRACE="1s", DAEMON_STARTSECS="300ms").start()
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        pgid = read_node_pid(home)
        assert len(group_members(pgid)) >= 2  # the script and its sleeping child
        began = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        stopping = events.wait_for("node.stopping")
        assert stopping["grace"] == 1.0
        stopped = events.wait_for("node.stopped")
        assert stopped["killed"] is True
        assert time.monotonic() - began >= 1.0
    finally:
        events.close()
    assert daemon.process is not None and daemon.process.wait(timeout=20) == 0
    assert group_members(pgid) == []
    zombies = [p for p in psutil.process_iter(["status"]) if p.info["status"] == "zombie"]
    assert all(os.getpgid(z.pid) != pgid for z in zombies if z.pid != pgid)


def test_a_daemon_killed_with_sigkill_leaves_the_node_running_and_the_next_one_adopts_it(
    short_root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int], make_daemon: MakeDaemon
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    wait_for_rpc(url, timeout=15)
    node_pid = wait_node_pid(home)

    first.kill()

    assert psutil.pid_exists(node_pid)
    head_before = int(rpc_call(url, "eth_blockNumber"), 16)
    second = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    events = EventLog(second.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        assert read_node_pid(home) == node_pid
        assert [p.pid for p in anvil_processes(home)] == [node_pid]
        # The adopted node is watched: a crash is still seen and repaired.
        os.kill(node_pid, signal.SIGKILL)
        exited = events.wait_for("node.exited", lambda p: p["pid"] == node_pid)
        assert exited["expected"] is False
        events.wait_for("node.running")
        wait_for_rpc(url, timeout=10)
        assert int(rpc_call(url, "eth_blockNumber"), 16) >= 0
        assert head_before >= 0
        assert len(anvil_processes(home)) == 1
    finally:
        events.close()
    assert second.terminate() == 0
    assert anvil_processes(home) == []


def test_a_second_daemon_on_the_same_home_refuses_to_start(
    short_root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int], make_daemon: MakeDaemon
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    wait_for_rpc(url, timeout=15)
    second = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    assert second.process is not None
    assert second.process.wait(timeout=20) == 1
    assert "another wemixvisor" in second.log_text()
    assert len(anvil_processes(home)) == 1
    assert first.terminate() == 0


def test_sigterm_stops_the_node_gracefully_and_the_chain_survives_a_daemon_restart(
    short_root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int], make_daemon: MakeDaemon
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    wait_for_rpc(url, timeout=15)
    rpc_call(url, "evm_mine")
    rpc_call(url, "evm_mine")
    head = int(rpc_call(url, "eth_blockNumber"), 16)
    assert first.terminate() == 0
    assert anvil_processes(home) == []
    assert not (home / "wemixvisor" / "state" / "node.pid").exists()
    # anvil wrote its state on SIGTERM: the next run continues the chain.
    second = make_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url).start()
    wait_for_rpc(url, timeout=15)
    assert int(rpc_call(url, "eth_blockNumber"), 16) >= head
    assert second.terminate() == 0


def test_a_broken_current_link_is_reported_not_repointed(
    short_root: Path, anvil_bin_1_5_1: Path, make_daemon: MakeDaemon
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    current = home / "wemixvisor" / "current"
    current.unlink()
    current.symlink_to("upgrades/missing")
    daemon = make_daemon(home).start()
    events = EventLog(daemon.events_endpoint)
    try:
        beat = events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "FATAL")
        assert beat["node_state"] == "FATAL"
    finally:
        events.close()
    assert os.readlink(current) == "upgrades/missing"
    assert "current" in daemon.log_text()
    assert daemon.terminate() == 0


def test_an_uninitialised_home_is_a_clear_startup_error(
    short_root: Path, make_daemon: MakeDaemon
) -> None:
    daemon = make_daemon(short_root / "nothing-here").start()
    assert daemon.process is not None
    assert daemon.process.wait(timeout=20) == 1
    assert "wemixvisor init" in daemon.log_text()
