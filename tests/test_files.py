"""The FileSourceActor watching real plan files and config.toml (SPEC §3 hot reload, §4)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import wait_until
from wemixvisor.actors.files import (
    CONFIG_ROLES,
    SAFETY_INTERVALS,
    FileSourceActor,
    PollFiles,
    _ChangedFiles,
    _Tick,
)
from wemixvisor.bus import Bus
from wemixvisor.config import Config, load_config
from wemixvisor.messages.config import ConfigChanged
from wemixvisor.messages.events import ConfigRejected, ConfigReloaded, PlanRejected
from wemixvisor.messages.plans import RegisterPlans
from wemixvisor.plans.dirwatch import DirectoryEvents
from wemixvisor.plans.queue import Plan

WAIT = 10.0


class TestCollector(pykka.ThreadingActor):
    """A test double playing a role (orchestrator, events, node...): keeps what it is told."""

    __test__ = False  # a pykka actor, not a pytest class

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "get":
            return list(self.received)
        self.received.append(message)
        return None


@dataclass
class Rig:
    """A FileSourceActor on a home in tmp_path, with collectors in every role it talks to."""

    home: Path
    data_dir: Path
    config: Config
    env: dict[str, str]
    bus: Bus
    collectors: dict[str, pykka.ActorRef[Any]]
    files: pykka.ActorRef[Any] | None = None

    @property
    def plan_path(self) -> Path:
        return self.data_dir / "upgrade-info.json"

    @property
    def batch_path(self) -> Path:
        return self.data_dir / "upgrade-info.json.batch"

    @property
    def config_path(self) -> Path:
        return self.home / "wemixvisor" / "config.toml"

    def start(self) -> pykka.ActorRef[Any]:
        self.files = FileSourceActor.start(self.config, self.bus, env=self.env, overrides={})
        self.bus.register("files", self.files)
        return self.files

    def received(self, role: str) -> list[Any]:
        return list(self.collectors[role].ask("get", timeout=WAIT))

    def wait_for(
        self, role: str, predicate: Callable[[list[Any]], bool], timeout: float = WAIT
    ) -> list[Any]:
        """Wait (with a deadline) until what `role` received satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.received(role)
            if predicate(messages):
                return messages
            if time.monotonic() > deadline:
                pytest.fail(f"{role} never got the expected messages; got {messages!r}")
            time.sleep(0.005)

    def poll(self, times: int = 1) -> None:
        """Make the actor look at its files now, `times` times, and wait until it did."""
        assert self.files is not None
        for _ in range(times):
            self.files.ask(PollFiles(), timeout=WAIT)


def registered(messages: list[Any]) -> list[Plan]:
    return [plan for m in messages if isinstance(m, RegisterPlans) for plan in m.plans]


def of_type(messages: list[Any], kind: type[Any]) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., Rig]:
    def make(poll_interval: str = "20ms") -> Rig:
        home = tmp_path / "home"
        data_dir = home / "data"
        data_dir.mkdir(parents=True)
        (home / "wemixvisor").mkdir()
        env = {"DAEMON_HOME": str(home), "DAEMON_POLL_INTERVAL": poll_interval}
        config = load_config(env)
        bus = Bus()
        collectors = {}
        # The events role is where rejections are published; the others are told reloads.
        for role in (*CONFIG_ROLES, "events"):
            if role != "files":
                collectors[role] = TestCollector.start()
                bus.register(role, collectors[role])
        return Rig(home, data_dir, config, env, bus, collectors)

    return make


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def test_a_valid_plan_file_is_registered_from_source_file(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.plan_path, b'{"name": "v1.2.0", "height": 1500000}')

    messages = rig.wait_for("orchestrator", lambda m: bool(registered(m)))

    assert messages == [
        RegisterPlans(plans=[Plan(name="v1.2.0", height=1500000, source="file")], source="file")
    ]
    assert of_type(rig.received("events"), PlanRejected) == []


def test_plans_present_at_start_are_sent_once_and_again_only_when_changed(rig: Rig) -> None:
    rig.plan_path.write_bytes(b'{"name": "v1", "height": 100}')
    rig.batch_path.write_bytes(b'[{"name": "v2", "height": 200}]')
    rig.start()

    rig.wait_for("orchestrator", lambda m: len(m) == 2)
    rig.poll(3)
    os.utime(rig.plan_path)  # touched, same content: nothing new to say
    rig.poll(3)
    assert sorted(p.name for p in registered(rig.received("orchestrator"))) == ["v1", "v2"]

    write_atomically(rig.plan_path, b'{"name": "v1", "height": 150}')
    messages = rig.wait_for("orchestrator", lambda m: len(m) == 3)
    assert messages[-1].plans == [Plan(name="v1", height=150, source="file")]


def test_a_rewrite_of_the_same_size_in_the_same_second_is_noticed_by_the_poll(rig: Rig) -> None:
    rig.plan_path.write_bytes(b'{"name": "v1", "height": 100}')
    rig.start()
    rig.wait_for("orchestrator", lambda m: len(m) == 1)
    before = rig.plan_path.stat()

    # In place, same size, the clock one nanosecond on: mtime_ns tells it apart.
    with rig.plan_path.open("r+b") as file:
        file.write(b'{"name": "v1", "height": 200}')
    os.utime(rig.plan_path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    messages = rig.wait_for("orchestrator", lambda m: len(m) == 2)
    assert messages[-1].plans == [Plan(name="v1", height=200, source="file")]

    # Replaced by a rename, same size, the very same mtime_ns: the inode tells it apart.
    write_atomically(rig.plan_path, b'{"name": "v1", "height": 300}')
    os.utime(rig.plan_path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    messages = rig.wait_for("orchestrator", lambda m: len(m) == 3)
    assert messages[-1].plans == [Plan(name="v1", height=300, source="file")]


def test_the_poller_wakes_the_actor_only_for_a_change_or_unsettled_work(tmp_path: Path) -> None:
    plan, absent = tmp_path / "upgrade-info.json", tmp_path / "absent"
    plan.write_bytes(b"{}")
    changed = _ChangedFiles((plan, absent))
    assert changed() == _Tick()  # the first look always ticks
    assert changed() == _Tick()  # and so does every look while the actor is not quiet
    changed.quiet.set()
    assert changed() is None
    absent.write_bytes(b"")
    assert changed() == _Tick()
    assert changed() is None
    absent.unlink()
    assert changed() == _Tick()
    changed.quiet.clear()
    assert changed() == _Tick()


def test_a_restarted_actor_sends_the_files_again(rig: Rig) -> None:
    rig.batch_path.write_bytes(b'[{"name": "v2", "height": 200}]')
    first = rig.start()
    rig.wait_for("orchestrator", lambda m: len(m) == 1)
    first.stop()

    rig.start()

    messages = rig.wait_for("orchestrator", lambda m: len(m) == 2)
    assert messages[0] == messages[1]


def test_a_stopped_actor_leaves_no_poll_thread_behind(rig: Rig) -> None:
    rig.start().stop()

    deadline = time.monotonic() + WAIT
    while any(thread.name == "files-poll" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the poll thread outlived its actor"
        time.sleep(0.005)


def test_plans_wait_for_an_orchestrator_that_starts_later(rig: Rig) -> None:
    rig.bus.unregister("orchestrator")
    rig.plan_path.write_bytes(b'{"name": "v1", "height": 100}')
    rig.start()
    rig.poll(2)

    rig.bus.register("orchestrator", rig.collectors["orchestrator"])

    messages = rig.wait_for("orchestrator", lambda m: bool(registered(m)))
    rig.poll(2)
    assert messages == rig.received("orchestrator")
    assert registered(messages) == [Plan(name="v1", height=100, source="file")]


def test_a_half_written_file_is_registered_once_complete_and_never_rejected(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(poll_interval="250ms")  # stability window: two polls, 500 ms
    rig.start()
    document = b'{"name": "v1.2.0", "height": 1500000, "info": {"binaries": {}}}'
    with rig.plan_path.open("wb") as handle:
        handle.write(document[:20])
        handle.flush()
        # The writer pauses mid-file, well inside the stability window.
        threading.Event().wait(0.1)
        handle.write(document[20:])

    messages = rig.wait_for("orchestrator", lambda m: bool(registered(m)))
    # Two more polls with the complete file: nothing left to reject.
    rig.poll(2)

    assert registered(messages) == [
        Plan(name="v1.2.0", height=1500000, info={"binaries": {}}, source="file")
    ]
    assert of_type(rig.received("events"), PlanRejected) == []


def test_a_garbage_file_is_rejected_once_and_a_later_valid_write_is_picked_up(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.plan_path, b"this is not json")

    events = rig.wait_for("events", lambda m: bool(of_type(m, PlanRejected)))
    rig.poll(5)

    rejections = of_type(rig.received("events"), PlanRejected)
    assert len(rejections) == 1, events
    assert rejections[0].source == "file"
    assert "not valid JSON" in rejections[0].reason
    assert registered(rig.received("orchestrator")) == []

    write_atomically(rig.plan_path, b'{"name": "v2", "height": "42"}')
    messages = rig.wait_for("orchestrator", lambda m: bool(registered(m)))
    assert registered(messages) == [Plan(name="v2", height=42, source="file")]


def test_a_plan_with_a_traversal_name_is_rejected_with_its_height(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.plan_path, b'{"name": "../../etc", "height": 77}')

    events = rig.wait_for("events", lambda m: bool(of_type(m, PlanRejected)))

    rejection = of_type(events, PlanRejected)[0]
    assert (rejection.name, rejection.height, rejection.source) == (None, 77, "file")
    assert "invalid name" in rejection.reason
    assert registered(rig.received("orchestrator")) == []


def test_a_file_over_one_mebibyte_is_rejected(rig: Rig) -> None:
    rig.start()
    write_atomically(
        rig.plan_path, b'{"name": "v1", "height": 5, "pad": "' + b"x" * (1 << 20) + b'"}'
    )

    events = rig.wait_for("events", lambda m: bool(of_type(m, PlanRejected)))
    rig.poll(3)

    rejections = of_type(rig.received("events"), PlanRejected)
    assert len(rejections) == 1, events
    assert "limit" in rejections[0].reason
    assert registered(rig.received("orchestrator")) == []


def test_a_batch_with_one_bad_entry_registers_the_others(rig: Rig) -> None:
    rig.start()
    write_atomically(
        rig.batch_path,
        msgspec.json.encode(
            [
                {"name": "v1", "height": 100},
                {"name": "v2", "height": -4},
                {"name": "v3", "height": 300, "info": "https://h/info.json"},
            ]
        ),
    )

    messages = rig.wait_for("orchestrator", lambda m: bool(registered(m)))
    events = rig.wait_for("events", lambda m: bool(of_type(m, PlanRejected)))

    assert messages == [
        RegisterPlans(
            plans=[
                Plan(name="v1", height=100, source="batch"),
                Plan(name="v3", height=300, info_url="https://h/info.json", source="batch"),
            ],
            source="batch",
        )
    ]
    (rejection,) = of_type(events, PlanRejected)
    assert (rejection.source, rejection.name, rejection.height) == ("batch", "v2", None)
    assert rejection.reason.startswith("batch entry 1:")


def test_a_batch_of_many_bad_entries_does_not_flood_the_events(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.batch_path, b"[" + b",".join([b"1"] * 100_000) + b"]")

    events = rig.wait_for("events", lambda m: any("more" in r.reason for r in m))

    rejections = of_type(events, PlanRejected)
    assert len(rejections) == 33
    assert rejections[-1].reason == "99968 more batch entries rejected"


def test_a_removed_file_changes_nothing_and_its_return_is_read_again(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.plan_path, b'{"name": "v1", "height": 100}')
    rig.wait_for("orchestrator", lambda m: len(m) == 1)

    rig.plan_path.unlink()
    rig.poll(3)
    assert len(rig.received("orchestrator")) == 1
    assert rig.received("events") == []

    write_atomically(rig.plan_path, b'{"name": "v1", "height": 100}')
    rig.wait_for("orchestrator", lambda m: len(m) == 2)


def test_a_fifo_in_place_of_the_plan_file_is_rejected_without_blocking(rig: Rig) -> None:
    os.mkfifo(rig.plan_path)
    rig.start()

    events = rig.wait_for("events", lambda m: bool(of_type(m, PlanRejected)))

    assert "not a regular file" in of_type(events, PlanRejected)[0].reason


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
_hostile = (
    st.binary(max_size=200)
    | _json.map(msgspec.json.encode)
    | st.fixed_dictionaries(
        {"name": st.sampled_from(["../x", "a/b", "..", "x" * 65, "ok"]) | _json},
        optional={"height": st.integers() | st.text(max_size=22) | _json, "info": _json},
    ).map(msgspec.json.encode)
    | st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n)
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(document=_hostile, batch=st.booleans())
def test_hostile_contents_never_crash_the_actor(rig: Rig, document: bytes, batch: bool) -> None:
    if rig.files is None:
        rig.start()
    assert rig.files is not None
    write_atomically(rig.batch_path if batch else rig.plan_path, document)
    rig.poll(3)

    assert rig.files.is_alive()
    assert rig.files.ask(PollFiles(), timeout=WAIT) is None


def test_a_valid_config_edit_is_reloaded_and_told_to_every_actor(rig: Rig) -> None:
    rig.start()
    rig.poll(3)  # no config.toml yet: nothing changed, nothing said
    assert of_type(rig.received("events"), ConfigReloaded) == []

    write_atomically(rig.config_path, b'[node]\nmax_restarts = 7\n[rpc]\naddress = "http://h:1"\n')

    events = rig.wait_for("events", lambda m: bool(of_type(m, ConfigReloaded)))
    (reloaded,) = of_type(events, ConfigReloaded)
    assert reloaded.changed == ["node.max_restarts", "rpc.address"]
    assert reloaded.restart_required == ["rpc.address"]
    for role in ("node", "height", "orchestrator", "backup", "governance"):
        (changed,) = of_type(
            rig.wait_for(role, lambda m: bool(of_type(m, ConfigChanged))), ConfigChanged
        )
        assert changed.changed == ["node.max_restarts", "rpc.address"]
        assert changed.config.node.max_restarts == 7
    assert rig.files is not None
    assert rig.files.is_alive()


def test_an_invalid_config_edit_is_rejected_and_the_old_config_stays(rig: Rig) -> None:
    rig.start()
    write_atomically(rig.config_path, b"[node]\nmax_restarts = 7\n")
    rig.wait_for("events", lambda m: len(of_type(m, ConfigReloaded)) == 1)

    write_atomically(rig.config_path, b'[node]\nmax_restarts = "many"\n')
    events = rig.wait_for("events", lambda m: bool(of_type(m, ConfigRejected)))
    rig.poll(3)

    (rejected,) = of_type(rig.received("events"), ConfigRejected)
    assert "node.max_restarts" in rejected.error
    assert len(of_type(events, ConfigReloaded)) == 1

    # Compared with the kept configuration (7 restarts), only the new key changed.
    write_atomically(rig.config_path, b'[node]\nmax_restarts = 7\nstartsecs = "2s"\n')
    events = rig.wait_for("events", lambda m: len(of_type(m, ConfigReloaded)) == 2)
    assert of_type(events, ConfigReloaded)[-1].changed == ["node.startsecs"]


def test_the_environment_keeps_precedence_over_an_edited_file(rig: Rig) -> None:
    rig.start()
    # DAEMON_POLL_INTERVAL is set in the daemon's environment: the file cannot change it.
    write_atomically(rig.config_path, b'[rpc]\npoll_interval = "5s"\n[backup]\nkeep = 9\n')

    events = rig.wait_for("events", lambda m: bool(of_type(m, ConfigReloaded)))

    assert of_type(events, ConfigReloaded)[0].changed == ["backup.keep"]


def test_a_half_written_config_is_not_rejected(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(poll_interval="250ms")
    rig.start()
    document = b"[node]\nmax_restarts = 7\n[backup]\nkeep = 4\n"
    with rig.config_path.open("wb") as handle:
        handle.write(document[:9])
        handle.flush()
        threading.Event().wait(0.1)
        handle.write(document[9:])

    events = rig.wait_for(
        "events",
        lambda m: any(
            r.changed == ["node.max_restarts", "backup.keep"] for r in of_type(m, ConfigReloaded)
        ),
    )
    rig.poll(2)

    assert of_type(rig.received("events"), ConfigRejected) == []
    assert len(of_type(events, ConfigReloaded)) == 1


def ticker_interval(rig: Rig) -> float:
    """The files poller's wait now (the rig runs one files actor, so one such thread)."""
    assert rig.files is not None
    [thread] = [t for t in threading.enumerate() if t.name == "files-poll"]
    poller = thread._target.__self__  # type: ignore[attr-defined]
    return float(poller.interval)


def test_with_inotify_an_idle_poller_waits_long_and_a_write_is_seen_at_once(
    make_rig: Callable[..., Rig],
) -> None:
    # 30 s between looks when idle: only the directory's events can show the plan in time.
    rig = make_rig(poll_interval="3s")
    rig.start()
    rig.poll()
    wait_until(lambda: ticker_interval(rig) == 3.0 * SAFETY_INTERVALS, what="the long wait")
    write_atomically(rig.plan_path, b'{"name": "v1", "height": 100}')
    messages = rig.wait_for("orchestrator", lambda m: len(m) == 1)
    assert registered(messages) == [Plan(name="v1", height=100, source="file")]
    rig.config_path.write_text("[node]\nmax_restarts = 7\n")
    rig.wait_for("node", lambda m: len(of_type(m, ConfigChanged)) == 1)


def test_a_linked_plan_file_keeps_the_poller_at_the_interval(
    make_rig: Callable[..., Rig], tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(b'{"name": "v1", "height": 100}')
    rig = make_rig(poll_interval="3s")
    rig.plan_path.symlink_to(target)
    rig.start()
    rig.wait_for("orchestrator", lambda m: len(m) == 1)
    rig.poll()
    # Its target changes without an event in the data dir: the poller keeps looking.
    assert ticker_interval(rig) == 3.0
    rig.plan_path.unlink()
    rig.poll()
    assert ticker_interval(rig) == 3.0 * SAFETY_INTERVALS


def test_a_stopped_actor_leaves_no_event_thread_behind(rig: Rig) -> None:
    rig.start().stop()
    wait_until(
        lambda: not any(t.name == "files-events" for t in threading.enumerate()),
        what="the event thread gone with its actor",
    )


def test_directory_events_poke_for_watched_names_only(tmp_path: Path) -> None:
    pokes: list[str] = []
    lost: list[str] = []
    watched = tmp_path / "upgrade-info.json"
    events = DirectoryEvents([watched], lambda: pokes.append("poke"), lambda: lost.append("lost"))
    assert events.start()
    try:
        assert events.healthy
        (tmp_path / "unrelated").write_bytes(b"x")
        watched.write_bytes(b"{}")
        wait_until(lambda: pokes, what="a poke for the watched name")
        # The unrelated write came first: had it poked, the count would show two by now.
        (tmp_path / "later").write_bytes(b"x")
        os.replace(tmp_path / "later", watched)
        wait_until(lambda: len(pokes) == 2, what="a poke for the rename onto the name")
        assert lost == []
        # The directory goes: nothing it holds can be seen any more.
        watched.unlink()
        (tmp_path / "unrelated").unlink()
        tmp_path.rmdir()
        wait_until(lambda: lost == ["lost"], what="the watch lost")
        assert not events.healthy
    finally:
        events.close()
    assert not any(t.name == "files-events" for t in threading.enumerate())


def test_directory_events_without_a_directory_are_never_healthy(tmp_path: Path) -> None:
    events = DirectoryEvents([tmp_path / "missing" / "upgrade-info.json"], lambda: None)
    assert not events.start()
    assert not events.healthy
    events.close()
