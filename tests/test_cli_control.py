"""The operator tool against a real daemon supervising anvil (SPEC §11, §12), and against no
daemon at all: every socket verb, the waits of start/stop/restart, the node log, upgrade verbs
through the daemon, and the security of the control socket."""

from __future__ import annotations

import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from devtools.anvil import free_port, wait_for_rpc
from tests.control_harness import (
    Cli,
    WellBehavedClient,
    anvil_args,
    cli_env,
    control_endpoint,
    make_home,
    operator_cli,
    short_root,
    sleeper_node,
    start_daemon,
    wait_status,
)
from tests.daemon_harness import Daemon, EventLog
from wemixvisor.control import ControlClient, ControlError, ControlUnreachable
from wemixvisor.control.protocol import new_request_id
from wemixvisor.control.security import CurveClientKeys, load_server_curve
from wemixvisor.control.verbs import (
    BACKUP_LIST,
    BACKUP_RESTORE,
    CONFIG_RELOAD,
    CONFIG_SHOW,
    GOVERNANCE_PROPOSALS,
    STATUS,
    VERSION,
    Verb,
)
from wemixvisor.messages.node import NodeState
from wemixvisor.node.logfile import rotate_if_needed


@dataclass
class Running:
    root: Path
    home: Path
    daemon: Daemon
    url: str
    client: ControlClient

    def node_pid(self) -> int:
        record = msgspec.json.decode((self.home / "wemixvisor/state/node.pid").read_bytes())
        return int(record["pid"])


@pytest.fixture(scope="module")
def running(anvil_bin_1_5_1: Path) -> Iterator[Running]:
    """One daemon supervising anvil for the scenarios that only need a running daemon."""
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        daemon = start_daemon(home, anvil_args(port, home), DAEMON_RPC_ADDRESS=url)
        client = ControlClient(control_endpoint(home), 5.0)
        try:
            wait_status(
                client,
                lambda s: s["node"]["state"] == "RUNNING" and s["head"]["height"] is not None,
            )
            yield Running(root, home, daemon, url, client)
        finally:
            client.close()
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()


@pytest.fixture
def cli(
    running: Running, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """`wemixvisor ...` in this process, as an operator's shell on the running daemon's home."""
    return operator_cli(running.home, monkeypatch, capsys, DAEMON_RPC_ADDRESS=running.url)


def test_status_shows_node_binary_head_plans_and_resources(running: Running, cli: Cli) -> None:
    code, out, _ = cli("status")
    assert code == 0
    pid = running.node_pid()
    assert re.search(rf"^node +RUNNING +pid {pid} +up \S+ +restarts \d+", out, re.MULTILINE)
    assert "genesis/bin/anvil" in out
    assert "anvil Version: 1.5.1" in out
    assert re.search(r"^head +\d+ +\(poll, rpc up\)", out, re.MULTILINE)
    assert re.search(r"^plans +\d+ pending", out, re.MULTILINE)
    assert re.search(r"^last +no upgrade yet", out, re.MULTILINE)
    assert re.search(r"^cpu/rss +[\d.]+ % +[\d.]+ MiB", out, re.MULTILINE)

    code, out, _ = cli("status", "--json")
    assert code == 0
    status = msgspec.json.decode(out)
    assert status["node"]["state"] == "RUNNING"
    assert status["node"]["pid"] == pid
    assert status["node"]["rss_bytes"] > 1_000_000
    assert status["head"]["height"] >= 0
    assert status["head"]["rpc_available"] is True
    assert status["daemon"]["pid"] == running.daemon.pid
    assert re.fullmatch(r"[0-9a-f]{32}", status["daemon"]["run_id"])
    assert status["problems"] == []


def test_the_control_socket_is_private_to_the_daemons_user(running: Running) -> None:
    sock = running.home / "wemixvisor" / "control.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700


def test_stop_start_and_restart_wait_for_the_state_they_asked_for(
    running: Running, cli: Cli
) -> None:
    events = EventLog(running.daemon.events_endpoint, ["control.", "node."])
    try:
        code, out, _ = cli("stop")
        assert (code, out.strip()) == (0, "node STOPPED")
        assert running.client.request({"type": "status"})["node"]["state"] == "STOPPED"
        completed = events.wait_for("control.operation_completed", lambda p: p["verb"] == "stop")
        assert completed["ok"] is True

        code, out, _ = cli("start")
        assert code == 0
        started = int(re.fullmatch(r"node RUNNING \(pid (\d+)\)\n", out).group(1))  # type: ignore[union-attr]
        assert started == running.node_pid()
        wait_for_rpc(running.url, timeout=10)

        code, out, _ = cli("restart")
        assert code == 0
        restarted = running.node_pid()
        assert restarted != started
        assert out == f"node RUNNING (pid {restarted})\n"
        wait_for_rpc(running.url, timeout=10)

        code, out, _ = cli("start", "--no-wait", "--json")
        assert code == 0
        reply = msgspec.json.decode(out)
        assert reply["before"] == {"state": "RUNNING", "pid": restarted}
        completed = events.wait_for(
            "control.operation_completed", lambda p: p["operation"] == reply["operation"]
        )
        assert completed["ok"] is True
    finally:
        events.close()


def test_logs_prints_the_last_lines_of_the_node_log(running: Running, cli: Cli) -> None:
    code, out, _ = cli("logs", "-n", "4")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    text = (running.home / "logs" / "node.log").read_text(errors="replace")
    assert all(line in text for line in lines)

    code, out, _ = cli("logs", "-n", "2", "--json")
    result = msgspec.json.decode(out)
    assert (code, result["exists"], len(result["lines"])) == (0, True, 2)
    assert result["path"] == str(running.home / "logs" / "node.log")


def test_logs_follow_keeps_printing_across_a_copy_truncate_rotation(running: Running) -> None:
    log = running.home / "logs" / "node.log"
    follower = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", "logs", "-f", "-n", "1"],
        env=cli_env(running.home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read() -> None:
        assert follower.stdout is not None
        for raw in follower.stdout:
            lines.put(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_block(timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            match = re.search(r"Block Number: (\d+)", line)
            if match:
                return int(match.group(1))
        raise AssertionError("no new block in the followed log")

    try:
        before = next_block()
        assert rotate_if_needed(log, 0, 1)
        assert log.stat().st_size < 10_000
        after = next_block()
        while after <= before:
            after = next_block()
        assert (log.parent / "node.log.1").exists()
    finally:
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=10)
        reader.join(timeout=10)
        assert follower.stdout is not None
        follower.stdout.close()
    assert code == 0


def test_upgrade_verbs_go_through_the_running_daemon(running: Running, cli: Cli) -> None:
    batch = running.home / "data" / "upgrade-info.json.batch"
    code, out, _ = cli("upgrade", "schedule", "v2", "1000000")
    assert code == 0
    assert "scheduled upgrade 'v2' at height 1000000 (added) in the daemon's queue" in out
    assert not batch.exists(), "the daemon's queue holds it, not the files"

    code, _, err = cli("upgrade", "schedule", "old", "1")
    assert code == 1
    assert "has passed" in err
    assert "--now" in err
    code, _, err = cli("upgrade", "schedule", "v3", "1000000")
    assert (code, "conflict" in err) == (1, True)
    code, _, err = cli("upgrade", "schedule", "../x", "5")
    assert code == 2

    # A plan from the batch file, cancelled through the daemon, leaves the file too.
    batch.write_text('[{"name": "v4", "height": 2000000}]')
    deadline = time.monotonic() + 10
    while True:
        code, out, _ = cli("upgrade", "list", "--json")
        rows = {row["name"]: row for row in msgspec.json.decode(out)["plans"]}
        if rows.get("v4", {}).get("status") == "pending":
            break
        assert time.monotonic() < deadline, f"v4 never queued: {rows}"
        time.sleep(0.1)
    listing = set(msgspec.json.decode(out))
    assert listing == {"daemon", "plans", "journal", "head", "problems", "block_time"}
    assert rows["v2"]["source"] == "control"
    assert rows["v4"]["source"] == "batch"

    code, out, _ = cli("upgrade", "status")
    assert code == 0
    assert f"daemon: running (pid {running.daemon.pid})" in out
    assert "v2 at height 1000000 (control)" in out
    assert "v4 at height 2000000 (batch)" in out

    code, out, _ = cli("upgrade", "cancel", "v4")
    assert code == 0
    assert f"removed plan 'v4' from {batch}" in out
    assert "cancelled plan 'v4' at height 2000000" in out
    assert not batch.exists()
    code, out, _ = cli("upgrade", "cancel", "v2")
    assert code == 0
    code, _, err = cli("upgrade", "cancel", "nope")
    assert (code, "no plan named 'nope'" in err) == (1, True)

    code, out, _ = cli("upgrade", "list")
    assert re.search(r"^v2 +1000000 +cancelled +control", out, re.MULTILINE)
    assert re.search(r"^v4 +2000000 +cancelled +batch", out, re.MULTILINE)


def test_configuration_version_backups_and_governance_over_the_socket(running: Running) -> None:
    """Request Structs in, reply Structs out: each verb's reply type reads the daemon's result."""
    client = running.client

    def ask(verb: Verb[Any, Any, Any], **fields: Any) -> Any:
        return verb.decode_reply(client.request(verb.request_type(id=new_request_id(), **fields)))

    shown = ask(CONFIG_SHOW)
    assert shown.config["home"] == str(running.home)
    assert shown.config["node"]["max_restarts"] == 5
    config_file = running.home / "wemixvisor" / "config.toml"
    try:
        config_file.write_text('[node]\nmax_restarts = 7\n\n[rpc]\ntimeout = "2s"\n')
        reloaded = ask(CONFIG_RELOAD)
        # The daemon watches the file: the edit may be in effect before the reload asks.
        assert reloaded.changed in (["node.max_restarts"], [])
        assert reloaded.restart_required == ["rpc.timeout"]
        assert CONFIG_RELOAD.render(
            msgspec.structs.replace(reloaded, changed=[])
        ) == f"reloaded: {config_file} is in effect (nothing left to change)" + (
            "; a restart is needed for: rpc.timeout"
        )
        shown = ask(CONFIG_SHOW)
        assert shown.config["node"]["max_restarts"] == 7
        assert shown.config["rpc"]["timeout"] == 5.0, "not reloadable: stays until a restart"

        config_file.write_text('[node]\nmax_restarts = "many"\n')
        with pytest.raises(ControlError) as caught:
            ask(CONFIG_RELOAD)
        assert caught.value.code == "bad_request"
        assert "max_restarts" in caught.value.message
        assert ask(CONFIG_SHOW).config["node"]["max_restarts"] == 7
    finally:
        config_file.unlink(missing_ok=True)
    assert "node.max_restarts" in ask(CONFIG_RELOAD).changed

    version = ask(VERSION)
    assert "1.5.1" in version.node.version
    governance = ask(GOVERNANCE_PROPOSALS)
    assert governance.proposals == []
    assert isinstance(ask(BACKUP_LIST).backups, list)
    with pytest.raises(ControlError) as caught:
        ask(BACKUP_RESTORE, backup_id="20200101T000000Z-none")
    assert caught.value.code == "not_found"
    status = ask(STATUS)
    assert status.node.state is NodeState.RUNNING
    assert status.daemon.pid == running.daemon.pid


def test_garbage_sent_to_the_daemon_gets_errors_while_status_is_served(running: Running) -> None:
    garbage: list[list[bytes]] = [
        [b"", b"not json"],
        [b"", b"{}"],
        [b"", b'{"id": 1, "type": "stop", "now": 1}'],
        [b"", b'{"id": 1, "type": "schedule_upgrade", "name": "v9", "height": "-1"}'],
        [b"", b'{"id": 1, "type": "logs", "lines": 1e9}'],
        [b"", b'{"id": 1, "type": "drop_tables"}'],
        [b"", b"a", b"b"],
        [b"\xff" * 1000],
        [b"", b'{"id": 1, "type": "status", "x": "' + b"x" * 3_000_000 + b'"}'],
    ]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(control_endpoint(running.home))
        with WellBehavedClient(
            control_endpoint(running.home), check=lambda s: s["node"]["state"] == "RUNNING"
        ) as good:
            for frames in garbage:
                dealer.send_multipart(frames)
                assert dealer.poll(5000), f"no reply to {frames[-1][:60]!r}"
                reply = msgspec.json.decode(dealer.recv_multipart()[-1])
                assert reply["ok"] is False
                assert reply["error"]["code"] in ("bad_request", "unknown_type")
            time.sleep(0.3)
        good.assert_served_throughout()
    finally:
        dealer.close(linger=0)
        context.term()
    assert running.client.request({"type": "status"})["node"]["state"] == "RUNNING"


SOCKET_VERBS = [
    ["status"],
    ["status", "--json"],
    ["start"],
    ["stop"],
    ["restart"],
    ["governance", "proposals"],
]


def test_with_no_daemon_socket_verbs_exit_3_at_once_and_upgrade_verbs_use_the_files(
    anvil_bin_1_5_1: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        cli = operator_cli(
            home, monkeypatch, capsys, DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{free_port()}"
        )
        endpoint = control_endpoint(home)
        for argv in SOCKET_VERBS:
            began = time.monotonic()
            code, _, err = cli(*argv)
            assert (argv, code) == (argv, 3)
            assert endpoint in err
            assert time.monotonic() - began < 2.0
        # The node log is a file of the home: read without the daemon.
        code, out, err = cli("logs", "-n", "5")
        assert (code, out.strip()) == (0, f"no node log yet at {home / 'logs/node.log'}")
        assert endpoint in err
        code, out, _ = cli("upgrade", "schedule", "v2", "500")
        assert code == 0
        assert "reads it when it starts" in out
        assert "v2" in (home / "data" / "upgrade-info.json.batch").read_text()
        code, _, _ = cli("upgrade", "cancel", "v2")
        assert code == 0
        assert not (home / "data" / "upgrade-info.json.batch").exists()


def test_a_killed_daemons_socket_file_does_not_make_the_tool_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        daemon = start_daemon(home, DAEMON_STARTSECS="100ms")
        try:
            with ControlClient(control_endpoint(home), 5.0) as client:
                wait_status(client, lambda s: s["node"]["state"] == "RUNNING")
            daemon.kill()
            assert (home / "wemixvisor" / "control.sock").exists()
            cli = operator_cli(home, monkeypatch, capsys)
            began = time.monotonic()
            code, _, err = cli("status")
            assert code == 3
            assert "nothing listens" in err
            assert time.monotonic() - began < 2.0
        finally:
            daemon.kill()


def test_a_non_loopback_tcp_control_endpoint_without_curve_keys_is_refused_at_startup() -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        endpoint = f"tcp://0.0.0.0:{free_port()}"
        daemon = start_daemon(home, WEMIXVISOR_CONTROL_ENDPOINT=endpoint)
        try:
            assert daemon.process is not None
            assert daemon.process.wait(timeout=30) == 1
            log = daemon.log_text()
            assert f"refusing to bind control endpoint {endpoint}" in log
            assert "wemixvisor keys generate" in log
            assert not (home / "wemixvisor" / "state" / "node.pid").exists()
        finally:
            daemon.kill()


def test_a_tcp_control_endpoint_with_curve_keys_serves_only_the_holders_of_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cli = operator_cli(home, monkeypatch, capsys, WEMIXVISOR_CONTROL_ENDPOINT=endpoint)
        code, out, _ = cli("keys", "generate")
        assert code == 0
        assert "wrote" in out
        keys = home / "wemixvisor" / "keys"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o700
        assert {p.name for p in keys.iterdir()} >= {"server.key_secret", "client.key_secret"}
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.rglob("*.key*"))
        assert cli("keys", "generate")[0] == 1, "existing keys are not replaced silently"
        daemon = start_daemon(home, WEMIXVISOR_CONTROL_ENDPOINT=endpoint, DAEMON_STARTSECS="100ms")
        try:
            deadline = time.monotonic() + 20
            while (code := cli("status", "--json")[0]) != 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert code == 0
            server = load_server_curve(keys)
            assert server is not None
            public, secret = zmq.curve_keypair()
            for curve in (None, CurveClientKeys(server.public, public, secret)):
                with (
                    ControlClient(endpoint, 1.0, curve=curve) as stranger,
                    pytest.raises(ControlUnreachable),
                ):
                    stranger.request({"type": "status"})
            assert cli("status")[0] == 0
        finally:
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()
