"""Rehearsal of a plan's new binary before H (SPEC §19), against real anvil daemons.

The rehearsal runs the new binary on a scratch copy of the plan's pre-staged backup, on a free
port, and must leave nothing behind: not the copy, not the process — also when the daemon is
stopped or killed in the middle of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from devtools.anvil import AnvilProcess, rpc_call, wait_for_rpc
from tests.chain_daemon import start_daemon
from tests.daemon_harness import Daemon, EventLog, kill_node_processes
from tests.support import wait_until
from tests.test_upgrade import Chain, script
from wemixvisor.backup import store as backups
from wemixvisor.config import ConfigError, load_config
from wemixvisor.control import ControlClient, ControlError
from wemixvisor.control.protocol import (
    CancelUpgrade,
    ListUpgrades,
    RehearseUpgrade,
    RollbackUpgrade,
    ScheduleUpgrade,
    new_request_id,
)
from wemixvisor.home.layout import Home, add_upgrade, init_home
from wemixvisor.messages.plans import Refusal
from wemixvisor.plans.queue import (
    Plan,
    PlanError,
    PlanStatus,
    QueuedPlan,
    QueueState,
    RehearsalRecord,
    parse_plan,
    register,
    rehearsal_pending,
)
from wemixvisor.upgrade import rehearsal

ANVIL_REHEARSAL = '["--state", "{datadir}/state.json", "--port", "{port}"]'
FAR = 100_000  # blocks: hours ahead at one block a second


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    yield path
    kill_node_processes(path)
    if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def chain(root: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]) -> Iterator[Chain]:
    made = Chain(root / "c", anvil_bin_1_5_1, free_port())
    yield made
    made.stop()


def configure(chain: Chain, timeout: str = "60s", args: str = ANVIL_REHEARSAL) -> None:
    (chain.home / "wemixvisor" / "config.toml").write_text(
        f'[upgrade]\nrehearsal_args = {args}\nrehearsal_timeout = "{timeout}"\n'
    )


def start(chain: Chain, **env: str) -> Daemon:
    """The daemon on an anvil that writes its state every second: the pre-staged copy holds
    the chain."""
    return start_daemon(chain, "--state-interval", "1", **env)


def write_plan(chain: Chain, name: str, height: int) -> None:
    plan = {"name": name, "height": height, "rehearse": True}
    (chain.home / "data" / "upgrade-info.json").write_bytes(msgspec.json.encode(plan))


def scratch_dirs(chain: Chain) -> list[str]:
    backups = chain.home / "backups"
    if not backups.is_dir():
        return []
    return [p.name for p in backups.iterdir() if p.name.startswith(rehearsal.SCRATCH_PREFIX)]


def rehearsal_processes(chain: Chain) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        alive = proc.info["status"] != psutil.STATUS_ZOMBIE
        if alive and rehearsal.SCRATCH_PREFIX in cmdline and str(chain.home) in cmdline:
            found.append(proc.pid)
    return found


def queued(chain: Chain, name: str) -> QueuedPlan:
    path = chain.home / "wemixvisor" / "state" / "plans.json"
    state = msgspec.json.decode(path.read_bytes(), type=QueueState)
    return next(entry for entry in state.plans if entry.plan.name == name)


def client(chain: Chain) -> ControlClient:
    return ControlClient(f"ipc://{chain.home}/wemixvisor/control.sock", 10.0)


def refused_with(chain: Chain, request: object) -> str:
    with client(chain) as control, pytest.raises(ControlError) as caught:
        control.request(request)
    return caught.value.code


def broken_binary(root: Path) -> Path:
    """A release that reports a version but cannot open this node's data."""
    return script(
        root / "broken" / "anvil",
        """\
        [ "$1" = "--version" ] && { echo "anvil 9.9.9"; exit 0; }
        echo "opening database in $2" >&2
        echo "Fatal: cannot open database: unsupported format version 42" >&2
        exit 1
        """,
    )


def silent_binary(root: Path) -> Path:
    """A release that starts but never answers RPC."""
    return script(
        root / "silent" / "anvil",
        """\
        [ "$1" = "--version" ] && { echo "anvil 9.9.9"; exit 0; }
        echo "upgrading the database schema, this may take a while"
        sleep 600
        """,
    )


# decisions


def test_rehearsal_arguments_are_filled_in() -> None:
    args = rehearsal.fill_args(
        ["--datadir", "{datadir}", "--http.port={port}", "--ipcpath", "{ipc}", "{other}"],
        datadir=Path("/b/.rehearsal-x/data"),
        port=4242,
        ipc=Path("/b/.rehearsal-x/node.ipc"),
    )
    assert args == [
        "--datadir",
        "/b/.rehearsal-x/data",
        "--http.port=4242",
        "--ipcpath",
        "/b/.rehearsal-x/node.ipc",
        "{other}",
    ]


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        (["--port", "{port}", "--ipcpath", "{ipc}"], "port"),
        (["--ipcpath", "{ipc}"], "ipc"),
        (["--datadir", "{datadir}"], None),
        ([], None),
    ],
)
def test_the_rehearsal_is_asked_where_its_arguments_say(
    template: list[str], kind: str | None
) -> None:
    assert rehearsal.endpoint_kind(template) == kind


@pytest.mark.parametrize(
    ("head", "expected", "enough"),
    [
        (None, None, False),
        (None, 10, False),
        (0, None, True),
        (0, 0, True),
        (0, 10, False),  # a chain of its own
        (5, 10, True),  # the copy, reopened at its last persisted state
        (11, 10, True),
    ],
)
def test_an_answer_counts_once_it_shows_the_copied_chain(
    head: int | None, expected: int | None, enough: bool
) -> None:
    assert rehearsal.answered_enough(head, expected) is enough


def test_a_plan_that_requires_a_rehearsal_starts_only_after_one_passed() -> None:
    entry = QueuedPlan(plan=Plan(name="v2", height=10, rehearse=True))
    assert rehearsal_pending(entry) == "its rehearsal has not passed yet"
    entry.rehearsal = RehearsalRecord(ok=False, at=1.0, seconds=2.0, reason="exit code 1")
    assert rehearsal_pending(entry) == "its rehearsal failed: exit code 1"
    entry.rehearsal = RehearsalRecord(ok=True, at=1.0, seconds=2.0, head=5)
    assert rehearsal_pending(entry) is None
    assert rehearsal_pending(QueuedPlan(plan=Plan(name="v3", height=11))) is None


def test_a_changed_plan_forgets_its_rehearsal() -> None:
    state = QueueState()
    _, entry = register(state, Plan(name="v2", height=10, rehearse=True), head=1, now=False, at=1)
    assert entry is not None
    entry.rehearsal = RehearsalRecord(ok=True, at=1.0, seconds=1.0)
    register(state, Plan(name="v2", height=12, rehearse=True), head=1, now=False, at=2)
    assert entry.rehearsal is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"name": "v2", "height": 5, "rehearse": "yes"}', "rehearse must be true or false"),
        (b'{"name": "v2", "height": 5, "rehearse": 1}', "rehearse must be true or false"),
        (b'{"name": "v2", "height": 5, "rehearse": null}', "rehearse must be true or false"),
    ],
)
def test_a_plan_with_a_bad_rehearse_field_is_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(PlanError, match=reason):
        parse_plan(raw)
    assert parse_plan(b'{"name": "v2", "height": 5, "rehearse": true}').rehearse is True


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["--datadir", "{data}"]', "unknown placeholder {data}"),
        ('["--port", "{port}", 8545]', "expected a string"),
        ('"--port {port}"', "expected an array of strings"),
        ('["--x", "a\\u0001b"]', "control character"),
    ],
)
def test_hostile_rehearsal_arguments_are_a_config_error(
    tmp_path: Path, value: str, message: str
) -> None:
    (tmp_path / "wemixvisor").mkdir()
    (tmp_path / "wemixvisor" / "config.toml").write_text(f"[upgrade]\nrehearsal_args = {value}\n")
    with pytest.raises(ConfigError, match=r"upgrade\.rehearsal_args") as caught:
        load_config({"DAEMON_HOME": str(tmp_path)})
    assert message in str(caught.value)


def test_refusals_of_a_rehearsal(tmp_path: Path) -> None:
    (tmp_path / "wemixvisor").mkdir()
    (tmp_path / "wemixvisor" / "config.toml").write_text(
        '[upgrade]\nrehearsal_args = ["--port", "{port}"]\n'
    )
    config = load_config({"DAEMON_HOME": str(tmp_path)})
    pending = QueuedPlan(plan=Plan(name="v2", height=10))
    done = QueuedPlan(plan=Plan(name="v1", height=5), status=PlanStatus.COMPLETED)

    def refuse(entry: QueuedPlan | None, busy: str | None = None, ok: bool = True) -> str | None:
        refusal = rehearsal.refuse_rehearsal(entry, "v2", config=config, busy=busy, installed=ok)
        return refusal.code if isinstance(refusal, Refusal) else None

    assert refuse(None) == "not_found"
    assert refuse(done) == "conflict"
    assert refuse(pending, busy="upgrade v0") == "busy"
    assert refuse(pending, ok=False) == "conflict"
    assert refuse(pending) is None


# scenarios


def test_a_good_binary_rehearses_hours_ahead_on_a_copy_and_leaves_nothing_behind(
    chain: Chain, anvil_bin_1_7_1: Path
) -> None:
    chain.add("v1.7.1", anvil_bin_1_7_1)
    configure(chain)
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        events.wait_for("height.observed", lambda p: p["height"] >= 3, timeout=20)
        height = chain.head() + FAR
        write_plan(chain, "v1.7.1", height)

        started = events.wait_for("upgrade.rehearsal_started", timeout=60)
        assert started["port"] != chain.port
        # The head the daemon saw as the copy began is recorded with it, and checked.
        assert started["expected_head"] is not None
        assert 3 <= started["expected_head"] <= chain.head()
        rehearsed = events.wait_for("upgrade.rehearsed", timeout=90)
        assert rehearsed["ok"] is True, rehearsed
        # The copied chain was loaded: the rehearsal answered with its blocks.
        assert rehearsed["head"] > 0
        assert rehearsed["log_tail"] == []
        assert scratch_dirs(chain) == []
        assert rehearsal_processes(chain) == []
        # The live node never noticed.
        assert chain.client_version() == "anvil/v1.5.1"
        record = queued(chain, "v1.7.1")
        assert record.status is PlanStatus.PENDING
        assert record.rehearsal is not None
        assert record.rehearsal.ok is True
        with client(chain) as control:
            listing = control.request(ListUpgrades(id=new_request_id()))
        row = next(row for row in listing["plans"] if row["name"] == "v1.7.1")
        assert row["rehearsal"]["ok"] is True  # the plan's readiness shows it

        # The operator's own rehearsal: an operation, reported as events.
        with client(chain) as control:
            reply = control.request(RehearseUpgrade(id=new_request_id(), name="v1.7.1"))
        operation = reply["operation"]
        done = events.wait_for(
            "control.operation_completed", lambda p: p["operation"] == operation, timeout=90
        )
        assert done["ok"] is True, done
        assert scratch_dirs(chain) == []
        assert not any(p["topic"] == "upgrade.started" for p in events.seen)
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_binary_that_cannot_open_the_data_fails_its_rehearsal_and_never_starts_at_h(
    chain: Chain, root: Path
) -> None:
    chain.add("v2", broken_binary(root))
    configure(chain)
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        height = chain.head() + 8
        write_plan(chain, "v2", height)

        rehearsed = events.wait_for("upgrade.rehearsed", timeout=60)
        assert rehearsed["ok"] is False
        assert "exited (exit code 1)" in rehearsed["reason"]
        assert any("cannot open database" in line for line in rehearsed["log_tail"])
        failed = events.wait_for(
            "plan.preflight_failed",
            lambda p: any("rehearsal failed" in problem for problem in p["problems"]),
            timeout=30,
        )
        assert failed["name"] == "v2"
        assert scratch_dirs(chain) == []

        # H passes: the old binary keeps running and nothing starts.
        events.wait_for("height.observed", lambda p: p["height"] >= height + 2, timeout=60)
        assert not any(p["topic"] == "upgrade.started" for p in events.seen)
        assert chain.client_version() == "anvil/v1.5.1"
        assert chain.current() == "genesis"
        record = queued(chain, "v2")
        assert record.status is PlanStatus.PENDING
        assert record.rehearsal is not None
        assert not record.rehearsal.ok
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_binary_that_never_answers_fails_after_the_timeout_and_is_killed(
    chain: Chain, root: Path
) -> None:
    chain.add("v2", silent_binary(root))
    configure(chain, timeout="2s")
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        write_plan(chain, "v2", chain.head() + FAR)
        rehearsed = events.wait_for("upgrade.rehearsed", timeout=60)
        assert rehearsed["ok"] is False
        assert "RPC did not answer within 2s" in rehearsed["reason"]
        assert any("upgrading the database schema" in line for line in rehearsed["log_tail"])
        assert scratch_dirs(chain) == []
        assert rehearsal_processes(chain) == []
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_stopped_or_killed_daemon_leaves_no_rehearsal_behind(chain: Chain, root: Path) -> None:
    chain.add("v2", silent_binary(root))
    configure(chain, timeout="10m")
    daemon = start(chain)
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        wait_for_rpc(chain.url, timeout=10)
        write_plan(chain, "v2", chain.head() + FAR)
        events.wait_for("upgrade.rehearsal_started", timeout=60)
    finally:
        events.close()
    left = scratch_dirs(chain)
    killed = rehearsal_processes(chain)
    assert len(left) == 1
    assert killed
    daemon.kill()
    assert scratch_dirs(chain) == left  # a killed daemon cleans nothing up itself
    assert all(psutil.pid_exists(pid) for pid in killed)

    again = start(chain)
    events = EventLog(again.events_endpoint)
    try:
        # The next daemon removes the left-overs (and, the plan still waiting for a passing
        # rehearsal, starts a rehearsal of its own).
        wait_until(lambda: left[0] not in scratch_dirs(chain), timeout=30, what="left-over gone")
        wait_until(
            lambda: not any(pid in rehearsal_processes(chain) for pid in killed),
            timeout=30,
            what="left-over process gone",
        )
        # (Its rehearsal_started may come before a subscriber joins: the log tells.)
        wait_until(lambda: "rehearsing v2 on port" in again.log_text(), timeout=60)
        assert len(scratch_dirs(chain)) == 1
    finally:
        events.close()
    assert again.terminate() == 0
    assert scratch_dirs(chain) == []
    assert rehearsal_processes(chain) == []


def test_hostile_rehearse_and_rollback_requests_change_nothing(chain: Chain) -> None:
    daemon = start(chain)  # no rehearsal_args configured
    events = EventLog(daemon.events_endpoint)
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        with client(chain) as control:
            control.request(
                ScheduleUpgrade(id=new_request_id(), name="later", height=10**9, rehearse=True)
            )
            control.request(ScheduleUpgrade(id=new_request_id(), name="gone", height=10**9 + 1))
            control.request(CancelUpgrade(id=new_request_id(), name="gone"))
        before = (chain.home / "wemixvisor" / "state" / "plans.json").read_bytes()

        def rehearse(name: str) -> str:
            return refused_with(chain, RehearseUpgrade(id=new_request_id(), name=name))

        def rollback(name: str, restore: bool = False) -> str:
            request = RollbackUpgrade(id=new_request_id(), name=name, restore=restore)
            return refused_with(chain, request)

        assert rehearse("nope") == "not_found"
        assert rehearse("../etc") == "bad_request"
        assert rehearse("x" * 100_000) == "bad_request"
        assert rehearse("gone") == "conflict"  # cancelled
        assert rehearse("later") == "bad_request"  # no [upgrade] rehearsal_args
        assert rollback("nope") == "not_found"
        assert rollback("../etc", restore=True) == "bad_request"
        assert rollback("later") == "conflict"  # still pending
        assert rollback("later", restore=True) == "conflict"
        assert rollback("gone") == "conflict"
        assert (chain.home / "wemixvisor" / "state" / "plans.json").read_bytes() == before
        assert not (chain.home / "wemixvisor" / "state" / "rollback.json").exists()
        assert chain.current() == "genesis"
        assert rpc_call(chain.url, "web3_clientVersion") == "anvil/v1.5.1"
    finally:
        events.close()
    assert daemon.terminate() == 0


# the copied head, in process


@pytest.fixture
def staged_home(root: Path, anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path) -> tuple[Home, Path]:
    """A home whose plan v1.7.1 has a pre-staged backup of a 5-block anvil chain."""
    home = Home(root=root / "home", name="anvil", data_dir=root / "home" / "data")
    init_home(home, anvil_bin_1_5_1)
    add_upgrade(home, "v1.7.1", anvil_bin_1_7_1)
    node = AnvilProcess(
        anvil_bin_1_5_1, root, block_time=None, state_file=home.data_dir / "state.json"
    ).start()
    try:
        rpc_call(node.url, "anvil_mine", ["0x5"])
    finally:
        node.stop()
    staged, _ = backups.prestage_upgrade_backup(home.data_dir, root / "home" / "backups", "v1.7.1")
    return home, staged


@pytest.mark.parametrize(
    ("recorded", "args", "passes"),
    [
        (None, ANVIL_REHEARSAL, True),  # nothing recorded: any answer
        (5, ANVIL_REHEARSAL, True),  # the copied chain
        (10**6, ANVIL_REHEARSAL, True),  # reopened behind the head seen: still the copy's chain
        (5, '["--port", "{port}"]', False),  # the data ignored: a new chain
        (0, '["--port", "{port}"]', True),  # copied at genesis: block 0 is it
        ("5", ANVIL_REHEARSAL, True),  # not a head: unknown
        (-1, ANVIL_REHEARSAL, True),
    ],
)
def test_a_rehearsal_passes_only_on_the_copied_chain(
    staged_home: tuple[Home, Path], recorded: object, args: str, passes: bool
) -> None:
    home, staged = staged_home
    if recorded is not None:
        manifest = msgspec.json.decode((staged / backups.MANIFEST).read_bytes())
        manifest["head"] = recorded
        (staged / backups.MANIFEST).write_bytes(msgspec.json.encode(manifest))
    (home.visor_dir / "config.toml").write_text(
        f'[upgrade]\nrehearsal_args = {args}\nrehearsal_timeout = "2s"\n'
    )
    config = load_config({"DAEMON_HOME": str(home.root), "DAEMON_NAME": "anvil"})
    before = sorted(p.name for p in (staged / backups.DATA).iterdir())
    outcome = rehearsal.rehearse(home, config, "v1.7.1", stopping=threading.Event())
    assert outcome.ok is passes, outcome
    assert outcome.head is not None
    if args == ANVIL_REHEARSAL:
        assert outcome.head >= 5
    if not passes:
        assert outcome.head == 0
        assert f"it answers at block 0: a new chain, not the copied one (at block {recorded}" in (
            outcome.reason
        )
    # The backup is as it was, and the scratch copy is gone.
    assert sorted(p.name for p in (staged / backups.DATA).iterdir()) == before
    assert not any(p.name.startswith(rehearsal.SCRATCH_PREFIX) for p in staged.parent.iterdir())
