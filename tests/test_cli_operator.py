"""The operator is never locked out and nothing fails silently (SPEC §12, §4): `run` hands every
argument to the node, a broken config.toml does not stop the verbs that only ask the running
daemon, `status` exit codes, a closed pipe, the node log without a daemon, and the start-time
checks of ports — against real daemons supervising anvil or a stand-in node."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import free_port
from tests.control_harness import (
    BASE_ENV,
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
from wemixvisor.bootstrap import rpc_port_mismatch
from wemixvisor.cli import split_node_args
from wemixvisor.control import ControlClient
from wemixvisor.home.layout import Home
from wemixvisor.home.state import DaemonRecord, daemon_lock, write_daemon_record, write_queue
from wemixvisor.plans.queue import Plan, PlanStatus, QueuedPlan, QueueState

# The verbs that only ask the daemon: a broken config.toml must not lock the operator out.
DAEMON_ONLY_VERBS = [
    ["status"],
    ["logs", "-n", "3"],
    ["upgrade", "list"],
    ["upgrade", "status"],
    ["backup", "list"],
    ["governance", "proposals"],
    ["config", "show"],
    ["events", "--count", "1"],
    ["web", "--print-url"],
]


@pytest.mark.parametrize(
    ("argv", "own", "node"),
    [
        (["run", "--port", "8545"], ["run"], ["--port", "8545"]),
        (
            ["--home", "/h", "--set", "a.b=1", "run", "--home", "x"],
            ["--home", "/h", "--set", "a.b=1", "run"],
            ["--home", "x"],
        ),
        (["--home=/h", "run", "--", "-h"], ["--home=/h", "run"], ["--", "-h"]),
        (["run"], ["run"], []),
        (["status", "run"], ["status", "run"], []),
        (["upgrade", "list"], ["upgrade", "list"], []),
        ([], [], []),
    ],
)
def test_everything_after_run_belongs_to_the_node(
    argv: list[str], own: list[str], node: list[str]
) -> None:
    assert split_node_args(argv) == (own, node)


@pytest.mark.parametrize(
    ("address", "args", "warned"),
    [
        ("http://127.0.0.1:8545", ["--port", "8545"], False),
        ("http://127.0.0.1:8545", ["--port", "9000"], True),
        ("http://127.0.0.1:8545", ["--port=9000", "--http.port=8545"], False),
        ("ws://127.0.0.1:8546", ["-ws.port", "8546", "--port", "30303"], False),
        ("http://127.0.0.1:8545", ["--http.port", "8645", "--ws.port", "8646"], True),
        ("http://127.0.0.1:8545", ["--datadir", "/d"], False),
        ("http://127.0.0.1:8545", [], False),
        ("http://127.0.0.1:8545", ["--port"], False),
        ("http://127.0.0.1", ["--port", "80"], False),
        ("/var/run/geth.ipc", ["--port", "30303"], False),
        ("http://127.0.0.1:8545", ["8545", "--port", "x"], False),
        ("http://127.0.0.1:8545", ["--portal", "1"], False),
    ],
)
def test_an_rpc_address_on_none_of_the_nodes_ports_is_a_warning(
    address: str, args: list[str], warned: bool
) -> None:
    warning = rpc_port_mismatch(address, args)
    assert (warning is not None) == warned
    if warning is not None:
        assert address in warning
        assert "port 8545" in warning


def test_run_passes_the_node_args_and_a_broken_config_never_locks_the_operator_out(
    anvil_bin_1_5_1: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        node_args = ["--port", str(port), "--block-time", "1"]
        daemon = Daemon(
            home,
            {**BASE_ENV, "DAEMON_RPC_ADDRESS": url, "DAEMON_POLL_INTERVAL": "100ms"},
            node_args,
            command=[sys.executable, "-m", "wemixvisor.cli", "--set", "node.max_restarts=4", "run"],
        ).start()
        events = EventLog(daemon.events_endpoint)
        try:
            with ControlClient(control_endpoint(home), 5.0) as client:
                status = wait_status(client, lambda s: s["node"]["state"] == "RUNNING")
            genesis = str(home / "wemixvisor/genesis/bin/anvil")
            assert psutil.Process(status["node"]["pid"]).cmdline() == [genesis, *node_args]

            record_path = home / "wemixvisor/state/daemon.json"
            assert stat.S_IMODE(record_path.stat().st_mode) == 0o600
            record = msgspec.json.decode(record_path.read_bytes())
            assert record["pid"] == daemon.pid
            assert record["control_endpoint"] == control_endpoint(home)
            assert record["events_endpoint"] == daemon.events_endpoint
            assert record["home"] == str(home)

            # The daemon rejects the edit and keeps running; so must the operator's tool.
            (home / "wemixvisor/config.toml").write_text("[node]\nmax_restarts = 'many'\n")
            events.wait_for("config.rejected", timeout=15)
            cli = operator_cli(home, monkeypatch, capsys, DAEMON_RPC_ADDRESS=url)
            for argv in DAEMON_ONLY_VERBS:
                code, out, err = cli(*argv)
                assert (argv, code) == (argv, 0), err
                assert out
                assert "node.max_restarts='many'" in err
                assert f"daemon pid {daemon.pid} recorded in {record_path}" in err
            code, out, _ = cli("config", "show")
            assert "max_restarts = 4" in out  # the running daemon's --set value
            # Verbs that write the home's files still need a valid configuration.
            assert cli("upgrade", "schedule", "v9", "100000")[0] == 2

            # A reader that goes away at once: no traceback, the status's exit code.
            reader = subprocess.Popen(
                [sys.executable, "-m", "wemixvisor.cli", "status"],
                env={**cli_env(home), "DAEMON_RPC_ADDRESS": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert reader.stdout is not None
            reader.stdout.close()
            _, err_bytes = reader.communicate(timeout=30)
            assert reader.returncode == 0
            assert b"Traceback" not in err_bytes
            assert b"BrokenPipe" not in err_bytes

            # A stopped node: status exits 1 and still names the binary the next start runs.
            assert cli("stop")[0] == 0
            events.wait_for("rpc.unavailable", timeout=15)
            code, out, _ = cli("status")
            assert code == 1
            assert "node      STOPPED" in out
            assert f"genesis: {genesis}" in out
            assert cli("start")[0] == 0
            events.wait_for("rpc.recovered", timeout=30)
            # `status` may be answered from a reply a quarter second old: wait for a fresh one.
            with ControlClient(control_endpoint(home), 5.0) as client:
                wait_status(client, lambda s: s["head"]["rpc_available"])
            code, out, _ = cli("status", "--json")
            assert code == 0
            head = msgspec.json.decode(out)["head"]
            assert head["rpc_available"] is True
            assert head["last_error"] is None

            assert daemon.terminate() == 0
            assert not record_path.exists()
            code, out, err = cli("logs", "-n", "2")
            assert code == 0
            assert "reading the node log directly" in err
            assert len(out.splitlines()) == 2
            assert cli("status")[0] == 3
        finally:
            events.close()
            daemon.kill()


def test_a_node_that_goes_fatal_makes_status_exit_1_and_names_its_binary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        crasher = root / "anvil"
        crasher.write_text("#!/bin/sh\nexit 3\n")
        crasher.chmod(0o755)
        home = make_home(root, crasher)
        daemon = start_daemon(
            home, DAEMON_MAX_RESTARTS="1", DAEMON_BACKOFF_INITIAL="50ms", DAEMON_BACKOFF_MAX="50ms"
        )
        try:
            with ControlClient(control_endpoint(home), 5.0) as client:
                wait_status(client, lambda s: s["node"]["state"] == "FATAL")
            cli = operator_cli(home, monkeypatch, capsys)
            code, out, _ = cli("status")
            assert code == 1
            assert "node      FATAL" in out
            assert f"genesis: {home / 'wemixvisor/genesis/bin/anvil'}" in out
            code, out, _ = cli("status", "--json")
            assert code == 1
            assert msgspec.json.decode(out)["node"]["target"] == "genesis"
        finally:
            daemon.kill()


def test_a_completed_plan_shown_with_a_new_height_and_a_wrong_rpc_port_are_reported() -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        layout = Home(root=home, name="anvil", data_dir=home / "data")
        done = QueuedPlan(
            plan=Plan(name="v1", height=100), status=PlanStatus.COMPLETED, finished_at=1.0
        )
        write_queue(layout, QueueState(plans=[done]))
        rpc_port = free_port()
        daemon = start_daemon(
            home,
            ["--http.port", "9", "--ws.port", "10"],
            DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{rpc_port}",
            DAEMON_POLL_INTERVAL="100ms",
            DAEMON_STARTSECS="100ms",
        )
        events = EventLog(daemon.events_endpoint)
        try:
            events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
            log = daemon.log_text()
            assert f"DAEMON_RPC_ADDRESS http://127.0.0.1:{rpc_port} uses port {rpc_port}" in log
            assert "name port 9, 10" in log

            (home / "data/upgrade-info.json").write_text('{"name": "v1", "height": 500}')
            rejected = events.wait_for("plan.rejected", timeout=15)
            assert rejected["name"] == "v1"
            assert rejected["source"] == "file"
            assert "already completed at height 100" in rejected["reason"]
            # The same plan as it ran is no news: nothing more is published for it.
            (home / "data/upgrade-info.json").write_text('{"name": "v1", "height": 100}')
            (home / "data/upgrade-info.json.batch").write_text('[{"name": "v2", "height": 900}]')
            events.wait_for("plan.registered", lambda p: p["name"] == "v2", timeout=15)
            assert [p for p in events.seen if p["topic"] == "plan.rejected"] == [rejected]
        finally:
            events.close()
            daemon.kill()


def test_a_control_port_in_use_is_a_clear_startup_error() -> None:
    with short_root() as root, socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        endpoint = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        home = make_home(root, sleeper_node(root))
        daemon = start_daemon(home, WEMIXVISOR_CONTROL_ENDPOINT=endpoint)
        try:
            assert daemon.process is not None
            assert daemon.process.wait(timeout=30) == 1
            log = daemon.log_text()
            assert f"cannot bind control endpoint {endpoint}" in log
            assert "Address already in use" in log
            assert not (home / "wemixvisor/state/node.pid").exists()
            assert not (home / "wemixvisor/state/daemon.json").exists()
        finally:
            daemon.kill()


@pytest.mark.parametrize(
    ("endpoint", "valid"),
    [
        ("tcp://0.0.0.0:{port}", False),
        ("tcp://192.0.2.1:{port}", False),
        ("tcp://127.0.0.1:{port}", True),
        ("ipc:///tmp/wv-ok/control.sock", True),
    ],
)
def test_config_validate_applies_the_daemons_control_endpoint_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
    valid: bool,
) -> None:
    home = tmp_path / "home"
    (home / "wemixvisor").mkdir(parents=True)
    cli = operator_cli(
        home, monkeypatch, capsys, WEMIXVISOR_CONTROL_ENDPOINT=endpoint.format(port=free_port())
    )
    code, out, err = cli("config", "validate")
    if valid:
        assert (code, out.strip()) == (0, "ok")
    else:
        assert code == 1
        assert "refusing to bind control endpoint" in err
        assert "wemixvisor keys generate" in err


def test_the_node_log_without_a_daemon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        cli = operator_cli(home, monkeypatch, capsys)
        code, out, _ = cli("logs", "-n", "5")
        assert (code, out.strip()) == (0, f"no node log yet at {home / 'logs/node.log'}")
        lines = [f"line {i}" for i in range(20)] + ["\xff-not-utf8"]
        (home / "logs/node.log").write_bytes("\n".join(lines).encode("latin-1") + b"\n")
        code, out, err = cli("logs", "-n", "3")
        assert code == 0
        assert out.splitlines() == ["line 18", "line 19", "\ufffd-not-utf8"]
        assert "nothing listens" in err or "does not exist" in err
        code, out, _ = cli("logs", "-n", "2", "--json")
        assert msgspec.json.decode(out)["more"] is True
        (home / "wemixvisor/config.toml").write_text("[node\n")
        code, out, err = cli("logs", "-n", "1")
        assert (code, out) == (0, "\ufffd-not-utf8\n")
        assert "not valid TOML" in err
        assert "no usable record of a running daemon" in err
        # Nothing runs that could show its configuration: the file's error is the answer.
        code, out, err = cli("config", "show")
        assert (code, out) == (2, "")
        assert "configuration error" in err
        assert "not valid TOML" in err


HOSTILE_RECORDS = [
    (b"", "not a daemon record"),
    (b"{half", "not a daemon record"),
    (b'{"pid": "1"}', "not a daemon record"),
    (b"[1, 2]", "not a daemon record"),
    (b"[" * 60_000, "not a daemon record"),
    (b" " * (64 * 1024 + 1), "limit"),
]


@pytest.mark.parametrize(("content", "message"), HOSTILE_RECORDS)
def test_a_hostile_daemon_record_is_a_warning_and_the_defaults_are_used(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    message: str,
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        layout = Home(root=home, name="anvil", data_dir=home / "data")
        (home / "wemixvisor/config.toml").write_text("[nope]\n")
        (home / "wemixvisor/state/daemon.json").write_bytes(content)
        cli = operator_cli(home, monkeypatch, capsys)
        # Held as a running daemon holds it: the record is what the tool would trust.
        with daemon_lock(layout):
            code, _, err = cli("status")
        assert code == 3
        assert "unknown section [nope]" in err
        assert message in err
        assert control_endpoint(home) in err


def test_a_record_of_another_home_or_of_a_daemon_that_is_gone_is_not_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        layout = Home(root=home, name="anvil", data_dir=home / "data")
        (home / "wemixvisor/config.toml").write_text("[nope]\n")
        elsewhere = "ipc:///tmp/elsewhere/control.sock"
        record = DaemonRecord(
            pid=1,
            control_endpoint=elsewhere,
            events_endpoint="ipc:///tmp/elsewhere/events.sock",
            version="0",
            home="/somewhere/else",
            started_at=0.0,
        )
        write_daemon_record(layout, record)
        cli = operator_cli(home, monkeypatch, capsys)
        with daemon_lock(layout):
            code, _, err = cli("status")
        assert (code, elsewhere in err, control_endpoint(home) in err) == (3, False, True)
        write_daemon_record(layout, msgspec.structs.replace(record, home=str(home)))
        code, _, err = cli("status")  # no daemon holds the lock: the record is stale
        assert (code, elsewhere in err, control_endpoint(home) in err) == (3, False, True)
