"""The BackupActor in-process: one operation at a time, pre-staging giving way, and a restore
round trip on a real anvil `--state` data dir supervised by the real NodeActor."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from devtools.anvil import rpc_call, wait_for_rpc
from wemixvisor.actors.backup import BackupActor
from wemixvisor.actors.node import NodeActor
from wemixvisor.backup import store as backups
from wemixvisor.bus import Bus
from wemixvisor.config import Config, load_config
from wemixvisor.home.layout import Home, init_home
from wemixvisor.messages.backup import (
    BackupAccepted,
    CreateBackup,
    FinishBackup,
    ListBackups,
    PrestageBackup,
    PruneBackups,
    RestoreBackup,
)
from wemixvisor.messages.events import Event
from wemixvisor.messages.node import (
    AcquireNodeLease,
    GetNodeStatus,
    NodeLease,
    NodeState,
    NodeStatus,
    ReleaseNodeLease,
    StartNode,
    StopNode,
)

OLD = 1_600_000_000


class Collector(pykka.ThreadingActor):
    """Stands where the events publisher would: keeps every event it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "get":
            return list(self.received)
        self.received.append(message)
        return None


class _Stopped(msgspec.Struct, frozen=True):
    done: Any


class NodeDouble(pykka.ThreadingActor):
    """A test double of the NodeActor: RUNNING until stopped; a stop completes only once the
    test sets `release`, so that an operation can be held in the middle."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release
        self.state = NodeState.RUNNING
        self.starts: list[str] = []
        self.lease: str | None = None

    def status(self) -> NodeStatus:
        return NodeStatus(
            state=self.state,
            pid=None,
            uptime=None,
            restarts=0,
            restarts_in_window=0,
            exits=[],
            binary=None,
            target=None,
            version=None,
            adopted=False,
            cpu_percent=0.0,
            rss_bytes=0,
            last_error=None,
            lease=self.lease,
        )

    def on_receive(self, message: Any) -> Any:
        match message:
            case GetNodeStatus():
                return self.status()
            case StopNode(done=done):
                self.state = NodeState.STOPPING
                ref = self.actor_ref

                def later() -> None:
                    self.release.wait(30)
                    ref.tell(_Stopped(done))

                threading.Thread(target=later, daemon=True).start()
            case _Stopped(done=done):
                self.state = NodeState.STOPPED
                if done is not None:
                    done.set(self.status())
            case StartNode(reason=reason):
                self.starts.append(reason)
                self.state = NodeState.RUNNING
            case AcquireNodeLease(holder=holder, reason=reason, done=done):
                granted = self.lease in (None, holder)
                if granted:
                    self.lease = holder
                done.set(NodeLease(granted, self.lease or holder, reason))
            case ReleaseNodeLease(holder=holder) if self.lease == holder:
                self.lease = None
            case "starts":
                return list(self.starts)
            case "lease":
                return self.lease
        return None


@pytest.fixture(autouse=True)
def stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


def wait_event(
    events: pykka.ActorRef[Any],
    topic: str,
    where: Callable[[Any], bool] = lambda event: True,
    timeout: float = 20.0,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for event in events.ask("get", timeout=5):
            if isinstance(event, Event) and event.topic == topic and where(event):
                return event
        if time.monotonic() >= deadline:
            seen = [e.topic for e in events.ask("get", timeout=5) if isinstance(e, Event)]
            raise AssertionError(f"no {topic} within {timeout}s; seen {seen}")
        time.sleep(0.02)


def make_home(tmp_path: Path, anvil: Path, **env: str) -> tuple[Home, Config]:
    root = tmp_path / "home"
    home = Home(root=root, name="anvil", data_dir=root / "data")
    init_home(home, anvil)
    config = load_config(
        env={
            "DAEMON_HOME": str(root),
            "DAEMON_NAME": "anvil",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            **env,
        }
    )
    return home, config


def fill(data: Path, files: int, size: int) -> None:
    block = os.urandom(size)
    for index in range(files):
        path = data / "chaindata" / f"{index:06d}.ldb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(block)
        os.utime(path, (OLD, OLD))


def test_one_operation_at_a_time_and_the_upgrade_waits_for_its_turn(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    home, config = make_home(tmp_path, anvil_bin_1_5_1)
    fill(home.data_dir, 4, 100_000)
    bus = Bus()
    release = threading.Event()
    events = Collector.start()
    node = NodeDouble.start(release)
    bus.register("events", events)
    bus.register("node", node)
    actor = BackupActor.start(config=config, home=home, bus=bus)
    bus.register("backup", actor)

    first: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="first", done=first))
    backup_id = first.get(timeout=5).operation
    # The bulk is copied while the node runs; the create then waits for the node to stop.
    deadline = time.monotonic() + 10
    while node.ask(GetNodeStatus(), timeout=5).state is not NodeState.STOPPING:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    for request in (CreateBackup(label="second"), PruneBackups()):
        refused: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        actor.tell(msgspec.structs.replace(request, done=refused))
        with pytest.raises(backups.BackupBusy, match="busy"):
            refused.get(timeout=5)
    restore_refused: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    actor.tell(RestoreBackup(backup_id="20200101T000000Z-none", done=restore_refused))
    with pytest.raises(backups.BackupNotFound):
        restore_refused.get(timeout=5)
    # The upgrade's backup is not refused: it runs once the manual one is over.
    finished: pykka.ThreadingFuture[backups.PendingSeal] = pykka.ThreadingFuture()
    actor.tell(FinishBackup("v2", done=finished))
    with pytest.raises(pykka.Timeout):
        finished.get(timeout=0.3)

    release.set()
    seal = finished.get(timeout=20)
    upgrade_id = seal.id
    seal.request()
    seal.wait(20)
    completed = wait_event(events, "backup.completed", lambda e: e.id == backup_id)
    assert completed.kind == "full"
    assert completed.total_bytes == 400_000
    assert node.ask("starts", timeout=5) == [f"backup {backup_id} copied"]
    upgrade = wait_event(events, "backup.completed", lambda e: e.id == upgrade_id)
    assert upgrade.kind == "upgrade"
    listed = {info.id: info for info in actor.ask(ListBackups(), timeout=5)}
    assert listed[backup_id].complete
    assert listed[upgrade_id].plan == "v2"


def test_pre_staging_gives_way_to_the_backup_at_height(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    home, config = make_home(tmp_path, anvil_bin_1_5_1)
    fill(home.data_dir, 60, 1024 * 1024)
    bus = Bus()
    events = Collector.start()
    bus.register("events", events)
    actor = BackupActor.start(config=config, home=home, bus=bus)

    actor.tell(PrestageBackup("v2"))
    finished: pykka.ThreadingFuture[backups.PendingSeal] = pykka.ThreadingFuture()
    actor.tell(FinishBackup("v2", done=finished))
    seal = finished.get(timeout=30)
    backup_id = seal.id
    # Copied, not sealed yet: the backup does not count until the saga asks for the seal.
    assert backups.read_manifest(config.backup.dir / backup_id) is None
    seal.request()
    seal.wait(30)

    cancelled = wait_event(events, "backup.cancelled")
    assert cancelled.label == "pre-v2"
    completed = wait_event(events, "backup.completed")
    assert completed.id == backup_id
    assert completed.total_bytes == 60 * 1024 * 1024
    manifest = backups.read_manifest(config.backup.dir / backup_id)
    assert manifest is not None
    assert manifest.entries == backups.scan(home.data_dir)
    # The staging copy became the backup: nothing else is left.
    assert [p.name for p in config.backup.dir.iterdir()] == [backup_id]


def test_progress_events_are_rate_limited(tmp_path: Path, anvil_bin_1_5_1: Path) -> None:
    home, config = make_home(tmp_path, anvil_bin_1_5_1)
    fill(home.data_dir, 2, 1024)
    bus = Bus()
    events = Collector.start()
    bus.register("events", events)
    node = NodeDouble.start(threading.Event())
    node.tell(_Stopped(None))
    bus.register("node", node)
    actor = BackupActor.start(config=config, home=home, bus=bus)
    done: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="tiny", done=done))
    ident = done.get(timeout=5).operation
    wait_event(events, "backup.completed", lambda e: e.id == ident)
    progress = [
        e
        for e in events.ask("get", timeout=5)
        if isinstance(e, Event) and e.topic == "backup.progress"
    ]
    assert len(progress) <= 2
    topics = [e.topic for e in events.ask("get", timeout=5) if isinstance(e, Event)]
    assert topics[0] == "backup.started"


def test_while_an_upgrade_holds_the_node_create_and_restore_are_refused_busy(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    home, config = make_home(tmp_path, anvil_bin_1_5_1)
    fill(home.data_dir, 2, 1024)
    bus = Bus()
    events = Collector.start()
    bus.register("events", events)
    node = NodeDouble.start(threading.Event())
    node.tell(_Stopped(None))
    bus.register("node", node)
    actor = BackupActor.start(config=config, home=home, bus=bus)
    made: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="before", done=made))
    backup_id = made.get(timeout=5).operation
    wait_event(events, "backup.completed", lambda e: e.id == backup_id)

    leased: pykka.ThreadingFuture[NodeLease] = pykka.ThreadingFuture()
    node.tell(AcquireNodeLease("upgrade v2", "upgrade at height 100", done=leased))
    assert leased.get(timeout=5).granted
    refused: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="during", done=refused))
    with pytest.raises(backups.BackupBusy, match="busy: the node is held by upgrade v2"):
        refused.get(timeout=5)
    restore_refused: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    finished: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    actor.tell(RestoreBackup(backup_id=backup_id, done=restore_refused, finished=finished))
    with pytest.raises(backups.BackupBusy, match="upgrade v2"):
        restore_refused.get(timeout=5)
    with pytest.raises(backups.BackupBusy):
        finished.get(timeout=5)
    assert node.ask("starts", timeout=5) == []

    node.tell(ReleaseNodeLease("upgrade v2"))
    after: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="after", done=after))
    wait_event(events, "backup.completed", lambda e: e.id == after.get(timeout=5).operation)
    assert node.ask("lease", timeout=5) is None


@pytest.fixture
def chain(
    tmp_path: Path, anvil_bin_1_5_1: Path, free_port: Callable[[], int]
) -> Iterator[tuple[Home, Config, Bus, pykka.ActorRef[Any], pykka.ActorRef[Any], str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home, config = make_home(tmp_path, anvil_bin_1_5_1, DAEMON_RPC_ADDRESS=url)
    bus = Bus()
    events = Collector.start()
    bus.register("events", events)
    node = NodeActor.start(
        config=config,
        home=home,
        bus=bus,
        node_args=[
            "--port",
            str(port),
            "--block-time",
            "1",
            "--state",
            str(home.data_dir / "state.json"),
        ],
    )
    bus.register("node", node)
    actor = BackupActor.start(config=config, home=home, bus=bus)
    bus.register("backup", actor)
    try:
        yield home, config, bus, actor, events, url
    finally:
        done: pykka.ThreadingFuture[NodeStatus] = pykka.ThreadingFuture()
        node.tell(StopNode(reason="test teardown", done=done))
        done.get(timeout=30)


def head(url: str) -> int:
    return int(rpc_call(url, "eth_blockNumber"), 16)


def wait_head(url: str, at_least: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = head(url)
        except Exception:  # the node is restarting
            current = -1
        if current >= at_least:
            return current
        assert time.monotonic() < deadline, f"head stayed below {at_least}"
        time.sleep(0.05)


def test_a_restore_brings_the_chain_back_to_the_backup_and_it_serves_again(chain: Any) -> None:
    _home, _config, _bus, actor, events, url = chain
    wait_for_rpc(url, timeout=15)
    wait_head(url, 2)

    done: pykka.ThreadingFuture[BackupAccepted] = pykka.ThreadingFuture()
    actor.tell(CreateBackup(label="at-n", done=done))
    backup_id = done.get(timeout=5).operation
    completed = wait_event(events, "backup.completed", lambda e: e.id == backup_id, timeout=30)
    assert completed.total_bytes > 0
    # The create stopped the node for its last pass (anvil writes its state on SIGTERM) and
    # started it again: the chain continues from the state in the backup.
    wait_for_rpc(url, timeout=15)
    at_backup = head(url)
    sender = rpc_call(url, "eth_accounts")[0]
    tx = rpc_call(
        url,
        "eth_sendTransaction",
        [{"from": sender, "to": "0x000000000000000000000000000000000000dEaD", "value": "0x1"}],
    )
    wait_head(url, at_backup + 5)
    assert rpc_call(url, "eth_getTransactionByHash", [tx]) is not None

    restored: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    accepted: pykka.ThreadingFuture[str] = pykka.ThreadingFuture()
    actor.tell(RestoreBackup(backup_id=backup_id, done=accepted, finished=restored))
    operation = accepted.get(timeout=5)
    aside = Path(restored.get(timeout=60))
    event = wait_event(events, "backup.restored", lambda e: e.id == operation)
    assert event.backup_id == backup_id
    assert aside.is_dir()
    assert (aside / "state.json").exists()

    wait_for_rpc(url, timeout=20)
    after = head(url)
    assert after < at_backup + 4, "the blocks made after the backup are gone"
    assert rpc_call(url, "eth_getTransactionByHash", [tx]) is None
    wait_head(url, after + 1)


def change_trackers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("change-tracker")]


def test_the_staging_copy_is_watched_until_discarded_relabelled_or_the_actor_stops(
    tmp_path: Path, anvil_bin_1_5_1: Path
) -> None:
    home, config = make_home(tmp_path, anvil_bin_1_5_1)
    fill(home.data_dir, 3, 1024)
    bus = Bus()
    events = Collector.start()
    bus.register("events", events)
    actor = BackupActor.start(config=config, home=home, bus=bus)
    before = len(change_trackers())

    actor.tell(PrestageBackup("v2"))
    wait_event(events, "backup.staged", lambda e: e.plan == "v2")
    assert len(change_trackers()) == before + 1
    # Relabelled for another plan: the old watch goes, the copy's new one replaces it.
    actor.tell(PrestageBackup("v3"))
    wait_event(events, "backup.staged", lambda e: e.plan == "v3")
    assert len(change_trackers()) == before + 1
    # No plan needs the copy any more (cancelled): it goes, and its watch with it.
    actor.tell(PrestageBackup(None))
    wait_event(events, "backup.pruned")
    assert len(change_trackers()) == before

    actor.tell(PrestageBackup("v4"))
    wait_event(events, "backup.staged", lambda e: e.plan == "v4")
    assert len(change_trackers()) == before + 1
    actor.stop()
    assert len(change_trackers()) == before
