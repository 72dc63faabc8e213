"""The events socket: envelope, filtering, never blocking the daemon, socket hygiene, gaps.

Every scenario uses real ZeroMQ sockets over ipc in the test's own directory. ZeroMQ's slow
joiner (a SUB misses what is published before its connection is up) is handled by publishing
probes until the first one arrives, never by sleeping.
"""

from __future__ import annotations

import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest
import zmq

from wemixvisor.actors.events import EventsActor
from wemixvisor.events.publisher import EventPublisher, check_bind_endpoint
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent
from wemixvisor.home.ipc import EndpointError
from wemixvisor.messages.events import (
    ConfigRejected,
    Event,
    NodeExited,
    NodeRunning,
    PublishHeartbeat,
    SupervisorStopping,
)

JOIN_DEADLINE = 5.0


def node_probe() -> Event:
    return NodeRunning(pid=1, startup_seconds=0.1, by="probe")


def join(
    publish: Callable[[], object],
    subscriber: EventSubscriber,
    deadline: float = JOIN_DEADLINE,
) -> ReceivedEvent:
    """Publish probes until `subscriber` receives one: then its connection is up."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        publish()
        event = subscriber.receive(timeout=0.01)
        if event is not None:
            return event
    pytest.fail(f"subscriber to {subscriber.endpoints} received nothing within {deadline}s")


def receive_until(
    subscriber: EventSubscriber, done: Callable[[ReceivedEvent], bool], deadline: float = 5.0
) -> list[ReceivedEvent]:
    """Everything received up to and including the first event for which `done` is true."""
    received: list[ReceivedEvent] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        event = subscriber.receive(timeout=0.1)
        if event is None:
            continue
        received.append(event)
        if done(event):
            return received
    pytest.fail(f"gave up after {len(received)} events: the awaited one never came")


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/events.sock"


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., EventPublisher]]:
    """`make_publisher(endpoint, **kw)` → a bound publisher, closed after the test."""
    publishers: list[EventPublisher] = []

    def make(endpoint: str, **kwargs: Any) -> EventPublisher:
        publisher = EventPublisher(endpoint, **kwargs)
        publishers.append(publisher)
        publisher.bind()
        return publisher

    yield make
    for publisher in publishers:
        publisher.close()


@pytest.fixture
def make_subscriber() -> Iterator[Callable[..., EventSubscriber]]:
    """`make_subscriber(endpoints, prefixes, **kw)` → a subscriber, closed after the test."""
    subscribers: list[EventSubscriber] = []

    def make(endpoints: str | list[str], prefixes: tuple[str, ...] = (), **kwargs: Any) -> Any:
        subscriber = EventSubscriber(endpoints, prefixes, **kwargs)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture
def raw_pub() -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    """`raw_pub(endpoint)` → a bare PUB socket for crafting frames by hand."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []

    def make(endpoint: str) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(linger=0)
    context.term()


def test_event_carries_topic_envelope_and_its_own_fields(
    endpoint: str, make_publisher: Any, make_subscriber: Any
) -> None:
    publisher = make_publisher(endpoint)
    subscriber = make_subscriber(endpoint)
    join(lambda: publisher.publish(node_probe()), subscriber)

    before = time.time()
    sent = publisher.publish(
        NodeExited(pid=4242, exit_code=None, signal=9, expected=False, state="RUNNING", uptime=3.5)
    )
    after = time.time()
    [*_, event] = receive_until(subscriber, lambda e: e.topic == "node.exited")

    assert event.topic == "node.exited"
    assert event.payload["topic"] == "node.exited"
    assert event.seq == sent.seq == event.payload["seq"]
    assert event.run_id == publisher.run_id == sent.run_id
    assert len(event.run_id) == 32
    int(event.run_id, 16)
    assert before <= event.ts <= after
    assert {k: event.payload[k] for k in ("pid", "exit_code", "signal", "expected", "state")} == {
        "pid": 4242,
        "exit_code": None,
        "signal": 9,
        "expected": False,
        "state": "RUNNING",
    }
    assert msgspec.json.decode(event.raw) == event.payload


def test_seq_counts_from_one_without_gaps_across_1000_events(
    endpoint: str, make_publisher: Any, make_subscriber: Any
) -> None:
    publisher = make_publisher(endpoint)
    assert publisher.publish(node_probe()).seq == 1
    assert publisher.publish(node_probe()).seq == 2
    subscriber = make_subscriber(endpoint)
    first = join(lambda: publisher.publish(node_probe()), subscriber)

    for i in range(1000):
        publisher.publish(SupervisorStopping(reason=f"event {i}"))
    received = receive_until(subscriber, lambda e: e.payload.get("reason") == "event 999")

    seqs = [first.seq] + [e.seq for e in received]
    assert seqs == list(range(first.seq, first.seq + len(seqs)))
    assert sum(e.topic == "supervisor.stopping" for e in received) == 1000
    assert all(e.gap == 0 for e in received)
    assert subscriber.missed == 0
    assert publisher.stats() == (seqs[-1], 0)


def test_each_publisher_is_its_own_run(tmp_path: Path, make_publisher: Any) -> None:
    first = make_publisher(f"ipc://{tmp_path}/a.sock")
    second = make_publisher(f"ipc://{tmp_path}/b.sock")
    assert first.run_id != second.run_id
    assert first.publish(node_probe()).seq == second.publish(node_probe()).seq == 1


def test_prefix_subscription_receives_only_that_domain(
    endpoint: str, make_publisher: Any, make_subscriber: Any
) -> None:
    publisher = make_publisher(endpoint)
    subscriber = make_subscriber(endpoint, ("node.",))
    join(lambda: publisher.publish(node_probe()), subscriber)

    for _ in range(20):
        publisher.publish(SupervisorStopping(reason="other domain"))
        publisher.publish(ConfigRejected(error="other domain"))
        publisher.publish(NodeRunning(pid=7, startup_seconds=1.0, by="rpc"))
    publisher.publish(NodeRunning(pid=8, startup_seconds=1.0, by="last"))
    received = receive_until(subscriber, lambda e: e.payload.get("by") == "last")

    assert {e.topic for e in received} == {"node.running"}
    assert sum(e.payload["pid"] == 7 for e in received) == 20
    # Filtered-out topics are not losses: no gaps although seq skips them.
    assert all(e.gap == 0 for e in received)


def _flood(publisher: EventPublisher, count: int) -> float:
    event = SupervisorStopping(reason="flood")
    start = time.perf_counter()
    for _ in range(count):
        publisher.publish(event)
    return time.perf_counter() - start


def test_a_subscriber_that_never_reads_does_not_slow_publishing(
    tmp_path: Path, make_publisher: Any, make_subscriber: Any
) -> None:
    count = 200_000
    alone = make_publisher(f"ipc://{tmp_path}/alone.sock", send_hwm=100)
    baseline = _flood(alone, count)

    endpoint = f"ipc://{tmp_path}/stalled.sock"
    publisher = make_publisher(endpoint, send_hwm=100)
    stalled = make_subscriber(endpoint)
    first = join(lambda: publisher.publish(node_probe()), stalled)
    probes = publisher.published
    # From here on the subscriber reads nothing until the flood is over.
    flooded = _flood(publisher, count)

    ratio = flooded / baseline
    message = (
        f"{count} events: {flooded:.2f}s with a stalled subscriber, {baseline:.2f}s with none "
        f"(ratio {ratio:.2f})"
    )
    assert flooded < 30.0, message
    # PUB drops for a full subscriber queue silently: every send was accepted.
    assert publisher.stats() == (probes + count, 0), message
    assert alone.stats() == (count, 0)

    # The stalled subscriber lost most of the flood and sees exactly that as gaps: every seq
    # after the first one it saw was either received or counted as missed.
    received: list[ReceivedEvent] = []
    end = time.monotonic() + 10.0
    while not any(e.payload.get("by") == "after flood" for e in received):
        assert time.monotonic() < end, f"no marker after the flood ({len(received)} received)"
        publisher.publish(NodeRunning(pid=9, startup_seconds=0.0, by="after flood"))
        while (event := stalled.receive(timeout=0.01)) is not None:
            received.append(event)
    marker = next(e for e in received if e.payload.get("by") == "after flood")
    seen = received[: received.index(marker) + 1]
    missed = sum(e.gap for e in seen)
    assert missed > 0, message
    assert len(seen) + missed == marker.seq - first.seq, message


def test_ipc_socket_is_0600_in_a_fresh_0700_directory(tmp_path: Path, make_publisher: Any) -> None:
    run_dir = tmp_path / "home" / "wemixvisor"
    path = run_dir / "events.sock"
    make_publisher(f"ipc://{path}")

    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.parent.stat().st_mode) == 0o700


def test_a_stale_socket_file_left_by_a_killed_daemon_is_replaced(
    tmp_path: Path, make_publisher: Any, make_subscriber: Any
) -> None:
    path = tmp_path / "events.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)

    publisher = make_publisher(f"ipc://{path}")
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    join(lambda: publisher.publish(node_probe()), make_subscriber(f"ipc://{path}"))


def test_a_socket_another_process_listens_on_is_not_stolen(tmp_path: Path) -> None:
    path = tmp_path / "events.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen()
    try:
        publisher = EventPublisher(f"ipc://{path}")
        with pytest.raises(EndpointError, match="another process is listening"):
            publisher.bind()
        assert path.exists()
    finally:
        live.close()


def test_a_regular_file_at_the_socket_path_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.sock"
    path.write_text("operator's notes\n")
    with pytest.raises(EndpointError, match="not a socket"):
        EventPublisher(f"ipc://{path}").bind()
    assert path.read_text() == "operator's notes\n"


def test_close_removes_the_socket_file_and_frees_the_endpoint(
    endpoint: str, tmp_path: Path, make_publisher: Any, make_subscriber: Any
) -> None:
    first = make_publisher(endpoint)
    first.close()
    assert not (tmp_path / "events.sock").exists()
    second = make_publisher(endpoint)
    join(lambda: second.publish(node_probe()), make_subscriber(endpoint))


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://0.0.0.0:7000",
        "tcp://*:7000",
        "tcp://192.168.1.20:7000",
        "tcp://[::]:7000",
        "tcp://eth0:7000",
        "tcp://example.com:7000",
    ],
)
def test_tcp_on_a_non_loopback_address_is_refused(endpoint: str) -> None:
    with pytest.raises(EndpointError, match="not a loopback address"):
        EventPublisher(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:7000", "tcp://127.1.2.3:7000", "tcp://[::1]:7000", "tcp://localhost:7000"],
)
def test_tcp_on_loopback_is_accepted(endpoint: str) -> None:
    check_bind_endpoint(endpoint)


@pytest.mark.parametrize(
    "endpoint", ["udp://127.0.0.1:7000", "inproc://events", "events.sock", "tcp://127.0.0.1"]
)
def test_other_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(EndpointError):
        check_bind_endpoint(endpoint)


def test_publish_over_loopback_tcp(make_publisher: Any, make_subscriber: Any) -> None:
    publisher = make_publisher("tcp://127.0.0.1:*")
    bound = publisher.bound_endpoint
    assert bound.startswith("tcp://127.0.0.1:")
    join(lambda: publisher.publish(node_probe()), make_subscriber(bound))


def test_publish_without_a_socket_counts_a_drop_and_does_not_raise(endpoint: str) -> None:
    publisher = EventPublisher(endpoint)
    event = publisher.publish(node_probe())
    assert event.seq == 1
    assert publisher.stats() == (0, 1)


def test_events_told_to_the_actor_reach_subscribers(endpoint: str, make_subscriber: Any) -> None:
    actor = EventsActor.start(endpoint=endpoint, send_hwm=1000)
    subscriber = make_subscriber(endpoint)
    join(lambda: actor.tell(node_probe()), subscriber)

    for pid in range(5):
        actor.tell(NodeRunning(pid=pid, startup_seconds=0.2, by="rpc"))
    received = receive_until(subscriber, lambda e: e.payload.get("pid") == 4)
    assert [e.payload["pid"] for e in received if e.payload["by"] == "rpc"] == [0, 1, 2, 3, 4]
    assert {e.run_id for e in received} == {actor.proxy().run_id.get(timeout=5)}


def test_heartbeat_reports_the_publish_counters(endpoint: str, make_subscriber: Any) -> None:
    actor = EventsActor.start(endpoint=endpoint)
    subscriber = make_subscriber(endpoint, ("supervisor.",))
    join(lambda: actor.tell(SupervisorStopping(reason="probe")), subscriber)

    published_before, dropped_before = actor.proxy().stats().get(timeout=5)
    actor.tell(PublishHeartbeat(uptime=12.5, node_state="RUNNING"))
    [*_, heartbeat] = receive_until(subscriber, lambda e: e.topic == "supervisor.heartbeat")

    assert heartbeat.payload["uptime"] == 12.5
    assert heartbeat.payload["node_state"] == "RUNNING"
    assert heartbeat.payload["events_published"] == published_before
    assert heartbeat.payload["events_dropped"] == dropped_before == 0
    assert heartbeat.seq == published_before + 1


def test_stopped_actor_frees_the_endpoint_for_its_successor(
    endpoint: str, tmp_path: Path, make_subscriber: Any
) -> None:
    first = EventsActor.start(endpoint=endpoint)
    first_run = first.proxy().run_id.get(timeout=5)
    first.stop(timeout=5)
    assert not (tmp_path / "events.sock").exists()

    second = EventsActor.start(endpoint=endpoint)
    event = join(lambda: second.tell(node_probe()), make_subscriber(endpoint))
    assert event.run_id != first_run


class _CrashingEventsActor(EventsActor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash on purpose")
        return super().on_receive(message)


def test_crashed_actor_frees_the_endpoint_for_its_replacement(
    endpoint: str, make_subscriber: Any
) -> None:
    failures: list[str] = []
    reported = threading.Event()

    def failure_sink(role: str, exc: BaseException | None) -> None:
        failures.append(f"{role}: {exc}")
        reported.set()

    crashed = _CrashingEventsActor.start(endpoint=endpoint, failure_sink=failure_sink)
    crashed.tell("crash")
    # The supervisor hears of the failure after the actor released its socket.
    assert reported.wait(timeout=5)
    assert failures == ["events: crash on purpose"]

    replacement = EventsActor.start(endpoint=endpoint)
    join(lambda: replacement.tell(node_probe()), make_subscriber(endpoint))


def test_actor_refuses_a_non_loopback_endpoint_at_start() -> None:
    with pytest.raises(EndpointError):
        EventsActor.start(endpoint="tcp://0.0.0.0:7000")


def frame(topic: str, seq: int, run_id: str = "a" * 32, **fields: Any) -> list[bytes]:
    payload = {"topic": topic, "seq": seq, "run_id": run_id, "ts": time.time(), **fields}
    return [topic.encode(), msgspec.json.encode(payload)]


def join_raw(pub: zmq.Socket[bytes], subscriber: EventSubscriber, run_id: str) -> int:
    """Slow-joiner probes from a raw PUB; returns the seq the subscriber saw first."""
    seq = 0

    def probe() -> None:
        nonlocal seq
        seq += 1
        pub.send_multipart(frame("node.running", seq, run_id))

    event = join(probe, subscriber)
    # Probes still in flight are consumed so the scenario starts from a known seq.
    while subscriber.receive(timeout=0.05) is not None:
        pass
    assert event.gap == 0
    return seq


def test_a_jump_in_seq_is_reported_as_a_gap_but_a_new_run_is_not(
    endpoint: str, raw_pub: Any, make_subscriber: Any
) -> None:
    pub = raw_pub(endpoint)
    subscriber = make_subscriber(endpoint)
    run = "1" * 32
    seq = join_raw(pub, subscriber, run)

    pub.send_multipart(frame("node.running", seq + 1, run))
    pub.send_multipart(frame("node.running", seq + 4, run))  # seq+2 and seq+3 lost
    restarted = "2" * 32
    pub.send_multipart(frame("supervisor.started", 1, restarted))
    pub.send_multipart(frame("node.running", 2, restarted))
    received = receive_until(subscriber, lambda e: e.run_id == restarted and e.seq == 2)

    assert [(e.run_id[0], e.seq, e.gap) for e in received] == [
        ("1", seq + 1, 0),
        ("1", seq + 4, 2),
        ("2", 1, 0),
        ("2", 2, 0),
    ]
    assert subscriber.missed == 2


def test_a_gap_among_filtered_out_topics_is_reported_on_the_next_wanted_event(
    endpoint: str, raw_pub: Any, make_subscriber: Any
) -> None:
    pub = raw_pub(endpoint)
    subscriber = make_subscriber(endpoint, ("node.",))
    run = "3" * 32
    seq = join_raw(pub, subscriber, run)

    pub.send_multipart(frame("height.observed", seq + 1, run))
    pub.send_multipart(frame("height.observed", seq + 3, run))  # seq+2 lost, not wanted anyway
    pub.send_multipart(frame("node.running", seq + 4, run))
    [event] = receive_until(subscriber, lambda e: e.seq == seq + 4)
    assert event.gap == 1


def test_malformed_messages_are_skipped_and_counted(
    endpoint: str, raw_pub: Any, make_subscriber: Any
) -> None:
    pub = raw_pub(endpoint)
    subscriber = make_subscriber(endpoint)
    run = "4" * 32
    seq = join_raw(pub, subscriber, run)

    good = frame("node.running", seq + 1, run)
    malformed = [
        [b"node.running"],  # one part
        [*good, b"extra"],  # three parts
        [b"node.running", b"{not json"],
        [b"node.running", b"[1, 2, 3]"],  # JSON, not an object
        [b"node.running", b'{"topic": "node.running", "run_id": "x", "ts": 1.0}'],  # no seq
        [b"node.\xff\xfe", good[1]],  # topic not UTF-8
        [b"node.running", b'{"topic": "node.running", "seq": true, "run_id": "x", "ts": 1.0}'],
        [b"node.exited", good[1]],  # frame topic disagrees with the payload
    ]
    for message in malformed:
        pub.send_multipart(message)
    pub.send_multipart(good)

    [event] = receive_until(subscriber, lambda e: e.seq == seq + 1)
    assert event.gap == 0
    assert subscriber.malformed == len(malformed)


def test_an_oversized_frame_is_refused_and_the_subscriber_reconnects(
    endpoint: str, raw_pub: Any, make_subscriber: Any
) -> None:
    pub = raw_pub(endpoint)
    subscriber = make_subscriber(endpoint, max_frame_bytes=64 * 1024)
    run = "5" * 32
    seq = join_raw(pub, subscriber, run)

    pub.send_multipart([b"node.running", b" " * (1024 * 1024)])
    # ZeroMQ drops the connection on the oversized frame; the subscriber dials again, and the
    # events published meanwhile show as a gap.
    after = join(lambda: pub.send_multipart(frame("node.running", seq + 2, run)), subscriber)
    assert after.seq == seq + 2
    assert after.gap == 1
    assert subscriber.disconnects >= 1
    assert subscriber.malformed == 0
    subscriber.receive(timeout=0)  # takes pending connection news
    assert endpoint in subscriber.connected


def test_subscriber_follows_a_daemon_restart(
    endpoint: str, make_publisher: Any, make_subscriber: Any
) -> None:
    subscriber = make_subscriber(endpoint)
    first = make_publisher(endpoint)
    join(lambda: first.publish(node_probe()), subscriber)
    first.close()

    second = make_publisher(endpoint)
    event = join(lambda: second.publish(node_probe()), subscriber)
    assert event.run_id == second.run_id
    assert event.gap == 0


def test_receive_times_out_with_nothing_published(endpoint: str, make_subscriber: Any) -> None:
    subscriber = make_subscriber(endpoint)
    start = time.monotonic()
    assert subscriber.receive(timeout=0.2) is None
    assert 0.2 <= time.monotonic() - start < 2.0
    assert subscriber.connected == frozenset()
