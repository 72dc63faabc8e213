"""`wemixvisor events`: an operator tails one or many daemons from the command line.

Publishers run in threads of the test over real ipc sockets. Where a scenario needs exact
control of what the tail receives, a raw XPUB socket stands in for the daemon: it learns when
the tail's subscription arrived, so nothing is sent before the tail can receive it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from wemixvisor.cli import main
from wemixvisor.commands.events import format_event
from wemixvisor.events.publisher import EventPublisher
from wemixvisor.events.subscriber import EventSubscriber, ReceivedEvent
from wemixvisor.messages.events import Event, NodeRunning, SupervisorHeartbeat

TEXT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} node\.running seq=\d+ pid=\d+ startup_seconds=0\.25 by=rpc$"
)


def node_running(i: int) -> Event:
    return NodeRunning(pid=1000 + i, startup_seconds=0.25, by="rpc")


class DaemonStandIn:
    """A real EventPublisher in its own thread, publishing about one event per millisecond."""

    def __init__(self, endpoint: str, make_event: Callable[[int], Event] = node_running) -> None:
        self.endpoint = endpoint
        self._make_event = make_event
        self._bound = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.run_id = ""
        self._thread = threading.Thread(target=self._run, name=f"publisher {endpoint}")

    def start(self) -> None:
        self._thread.start()
        assert self._bound.wait(timeout=5), f"publisher on {self.endpoint} did not bind"
        assert self._error is None, self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        publisher = EventPublisher(self.endpoint)
        try:
            publisher.bind()
            self.run_id = publisher.run_id
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._bound.set()
        try:
            i = 0
            # Paced, not ordered: the tail takes whatever arrives once it is connected.
            while not self._stop.wait(0.001):
                publisher.publish(self._make_event(i))
                i += 1
        finally:
            publisher.close()


@pytest.fixture
def daemon() -> Iterator[Callable[..., DaemonStandIn]]:
    """`daemon(endpoint, make_event=...)` → a started publisher thread, stopped after the test."""
    started: list[DaemonStandIn] = []

    def start(endpoint: str, make_event: Callable[[int], Event] = node_running) -> DaemonStandIn:
        stand_in = DaemonStandIn(endpoint, make_event)
        started.append(stand_in)
        stand_in.start()
        return stand_in

    yield start
    for stand_in in started:
        stand_in.stop()


@pytest.fixture
def scripted() -> Iterator[Callable[[str, list[list[bytes]]], None]]:
    """`scripted(endpoint, messages)`: an XPUB that sends `messages` once a tail subscribed."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    threads: list[threading.Thread] = []
    done = threading.Event()

    def start(endpoint: str, messages: list[list[bytes]]) -> None:
        xpub = context.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.bind(endpoint)

        def run() -> None:
            try:
                if xpub.poll(timeout=5000):
                    xpub.recv()  # the subscription: the tail is connected from here on
                    for message in messages:
                        xpub.send_multipart(message)
                done.wait(timeout=10)
            finally:
                xpub.close(linger=0)

        thread = threading.Thread(target=run, name=f"scripted {endpoint}")
        threads.append(thread)
        thread.start()

    yield start
    done.set()
    for thread in threads:
        thread.join(timeout=5)
    context.term()


def frame(topic: str, seq: int, run_id: str, **fields: Any) -> list[bytes]:
    payload = {"topic": topic, "seq": seq, "run_id": run_id, "ts": 1_700_000_000.5, **fields}
    return [topic.encode(), msgspec.json.encode(payload)]


def test_tail_prints_count_events_as_text_lines(
    tmp_path: Path, daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    daemon(endpoint)

    code = main(["events", "--connect", endpoint, "--count", "3", "--timeout", "5"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 3, out
    for line in out:
        assert TEXT_LINE.match(line), line


def test_tail_json_lines_are_the_events_objects(
    tmp_path: Path, daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    stand_in = daemon(endpoint)

    code = main(["events", "--json", "--connect", endpoint, "--count", "5", "--timeout", "5"])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    events = [msgspec.json.decode(line) for line in lines]
    assert len(events) == 5
    assert {e["topic"] for e in events} == {"node.running"}
    assert {e["run_id"] for e in events} == {stand_in.run_id}
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 5))


def test_one_tail_follows_two_daemons(
    tmp_path: Path, daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    first = daemon(f"ipc://{tmp_path}/a.sock")
    second = daemon(f"ipc://{tmp_path}/b.sock")

    code = main(
        [
            "events",
            "--json",
            "--connect",
            first.endpoint,
            "--connect",
            second.endpoint,
            "--count",
            "200",
            "--timeout",
            "5",
        ]
    )

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert {msgspec.json.decode(line)["run_id"] for line in lines} == {
        first.run_id,
        second.run_id,
    }


def test_prefix_selects_the_domain(
    tmp_path: Path, daemon: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    def mixed(i: int) -> Event:
        if i % 2:
            return node_running(i)
        return SupervisorHeartbeat(
            uptime=float(i), node_state="RUNNING", events_published=i, events_dropped=0
        )

    endpoint = f"ipc://{tmp_path}/events.sock"
    daemon(endpoint, mixed)

    code = main(["events", "node.", "--connect", endpoint, "--count", "4", "--timeout", "5"])

    captured = capsys.readouterr()
    assert code == 0
    assert all(TEXT_LINE.match(line) for line in captured.out.splitlines()), captured.out
    assert "missed" not in captured.err  # skipped topics are not losses


def test_missed_events_are_reported_on_stderr(
    tmp_path: Path, scripted: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    run_id = "7e57" * 8
    scripted(
        endpoint,
        [
            frame("node.running", 1, run_id, pid=1),
            frame("node.running", 2, run_id, pid=2),
            frame("node.running", 5, run_id, pid=5),
        ],
    )

    code = main(["events", "--connect", endpoint, "--count", "3", "--timeout", "5"])

    captured = capsys.readouterr()
    assert code == 0
    assert [line.split()[2] for line in captured.out.splitlines()] == ["seq=1", "seq=2", "seq=5"]
    assert captured.err.splitlines() == ["wemixvisor events: missed 2 events (run 7e577e57)"]


def test_idle_timeout_after_events_exits_0(
    tmp_path: Path, scripted: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"ipc://{tmp_path}/events.sock"
    scripted(endpoint, [frame("node.running", seq, "ab" * 16, pid=seq) for seq in (1, 2)])

    code = main(["events", "--connect", endpoint, "--timeout", "0.5"])

    assert code == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_no_daemon_exits_3_naming_the_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"ipc://{tmp_path}/nobody-home.sock"

    code = main(["events", "--connect", endpoint, "--timeout", "0.5"])

    captured = capsys.readouterr()
    assert code == 3
    assert captured.out == ""
    assert f"no events from {endpoint} within 0.5s" in captured.err
    assert "no daemon answered" in captured.err


def test_default_endpoint_comes_from_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WEMIXVISOR_EVENTS_ENDPOINT", raising=False)

    code = main(["--home", str(tmp_path), "events", "--timeout", "0.3"])

    assert code == 3
    assert f"ipc://{tmp_path}/wemixvisor/events.sock" in capsys.readouterr().err


def test_ctrl_c_exits_0_and_closes_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[tuple[str, ...]] = []
    real_close = EventSubscriber.close

    def interrupted(self: EventSubscriber, timeout: float | None = None) -> ReceivedEvent | None:
        raise KeyboardInterrupt

    def close(self: EventSubscriber) -> None:
        closed.append(self.endpoints)
        real_close(self)

    monkeypatch.setattr(EventSubscriber, "receive", interrupted)
    monkeypatch.setattr(EventSubscriber, "close", close)
    endpoint = f"ipc://{tmp_path}/events.sock"

    assert main(["events", "--connect", endpoint]) == 0
    assert closed == [(endpoint,)]


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "--count", "0"],
        ["events", "--count", "many"],
        ["events", "--timeout", "0"],
        ["events", "--timeout", "nan"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_an_endpoint_zeromq_cannot_parse_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["events", "--connect", "events.sock", "--timeout", "0.1"]) == 2
    assert "events.sock" in capsys.readouterr().err


def received(payload: dict[str, Any]) -> ReceivedEvent:
    return ReceivedEvent(
        topic=payload["topic"],
        payload=payload,
        raw=msgspec.json.encode(payload),
        seq=payload["seq"],
        run_id=payload["run_id"],
        ts=payload["ts"],
        gap=0,
    )


def test_text_line_quotes_what_is_not_a_plain_token() -> None:
    event = received(
        {
            "topic": "node.exited",
            "exit_code": None,
            "expected": False,
            "args": ["--port", "8545"],
            "reason": "stopped by operator",
            "binary": "/home/wemix/bin/gwemix",
            "seq": 12,
            "run_id": "f" * 32,
            "ts": 1_700_000_000.25,
        }
    )
    line = format_event(event)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.250", line.split()[0])
    assert line.split(" ", 1)[1] == (
        'node.exited seq=12 exit_code=null expected=false args=["--port","8545"] '
        'reason="stopped by operator" binary=/home/wemix/bin/gwemix'
    )


def test_text_line_cannot_drive_the_terminal() -> None:
    event = received(
        {
            "topic": "node.\x1b[2Jexited",
            "error": "boom\x1b]0;owned\x07\nnext line\u202e",
            "seq": 1,
            "run_id": "f" * 32,
            "ts": 1_700_000_000.0,
        }
    )
    line = format_event(event)
    assert "\x1b" not in line
    assert "\n" not in line
    assert "\u202e" not in line
    assert '"node.\\u001b[2Jexited"' in line
    assert 'error="boom\\u001b]0;owned\\u0007\\u000anext line\\u202e"' in line


def test_text_line_survives_a_timestamp_no_clock_can_show() -> None:
    event = received({"topic": "node.running", "seq": 1, "run_id": "f" * 32, "ts": 1e20})
    assert format_event(event) == "??:??:??.??? node.running seq=1"


# Replay from the journal, then live (SPEC §10): `events.follow` and `events --since`.


def journal_with(directory: Path, run_id: str, seqs: range) -> list[list[bytes]]:
    """Journal events `seqs` of run `run_id` in `directory`; their frames."""
    from wemixvisor.events.journal import EventJournal

    writer = EventJournal(directory)
    writer.open()
    frames = [frame("node.running", seq, run_id, pid=seq) for seq in seqs]
    for _topic, payload in frames:
        writer.append(payload)
    writer.close()
    return frames


def journal_pages(directory: Path) -> Any:
    """What the daemon's `events` verb answers, read straight from `directory`."""
    from wemixvisor.control.verbs.events import read_page

    asked: list[Any] = []

    def fetch_page(request: Any) -> Any:
        asked.append(request)
        return read_page(directory, request)

    fetch_page.asked = asked  # type: ignore[attr-defined]
    return fetch_page


def follow_all(follower: Any, count: int) -> list[tuple[str, int, int]]:
    got = []
    while len(got) < count:
        event = follower.receive(5.0)
        assert event is not None, f"only {got}"
        got.append((event.run_id, event.seq, event.gap))
    return got


def test_a_follower_replays_the_journal_then_follows_live_with_no_gap_and_no_repeat(
    tmp_path: Path, scripted: Any
) -> None:
    from wemixvisor.events.follow import EventFollower

    journal = tmp_path / "events"
    frames = journal_with(journal, "run-a", range(1, 13))
    endpoint = f"ipc://{tmp_path}/events.sock"
    # Live, the tail sees 5..7 again (published while it replayed), misses 8..9 (a slow
    # reader's overflow), then 10..12 and a new event 13 that the journal does not hold yet.
    scripted(endpoint, [*frames[4:7], *frames[9:12], frame("node.running", 13, "run-a", pid=13)])
    pages = journal_pages(journal)
    follower = EventFollower(pages, EventSubscriber([endpoint]), since=3, since_run="run-a")
    try:
        got = follow_all(follower, 11)
    finally:
        follower.close()
    assert got == [("run-a", seq, 0) for seq in range(3, 14)]
    assert follower.replayed == 10 and follower.missed == 0


def test_a_follower_fills_a_gap_across_a_daemon_restart_and_reports_what_the_journal_lacks(
    tmp_path: Path, scripted: Any
) -> None:
    from wemixvisor.events.follow import EventFollower

    journal = tmp_path / "events"
    journal_with(journal, "run-a", range(1, 4))
    journal_with(journal, "run-b", range(1, 3))
    endpoint = f"ipc://{tmp_path}/events.sock"
    scripted(
        endpoint,
        [
            frame(
                "node.running", 3, "run-b", pid=3
            ),  # after a restart: run-b 1..2 from the journal
            frame("node.running", 7, "run-b", pid=7),  # 4..6 are nowhere: reported as a gap
        ],
    )
    follower = EventFollower(journal_pages(journal), EventSubscriber([endpoint]), since=2)
    # No run given: the newest run of the journal (run-b) from seq 2.
    try:
        got = follow_all(follower, 3)
    finally:
        follower.close()
    assert got == [("run-b", 2, 0), ("run-b", 3, 0), ("run-b", 7, 3)]


def test_a_follower_filters_topics_but_counts_every_seq(tmp_path: Path, scripted: Any) -> None:
    from wemixvisor.events.follow import EventFollower

    journal = tmp_path / "events"
    journal_with(journal, "run-a", range(1, 3))
    endpoint = f"ipc://{tmp_path}/events.sock"
    scripted(
        endpoint,
        [frame("supervisor.heartbeat", 3, "run-a"), frame("node.running", 4, "run-a", pid=4)],
    )
    follower = EventFollower(
        journal_pages(journal), EventSubscriber([endpoint]), since=1, prefixes=["node."]
    )
    try:
        got = follow_all(follower, 3)
    finally:
        follower.close()
    assert got == [("run-a", 1, 0), ("run-a", 2, 0), ("run-a", 4, 0)]


def test_events_since_replays_a_real_daemons_journal_then_follows_it(
    short_root: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.control_harness import cli_env, make_home, sleeper_node, start_daemon
    from tests.web_harness import JournalKeeper
    from wemixvisor.home.layout import Home

    home = make_home(short_root, sleeper_node(short_root))
    daemon = start_daemon(home)
    keeper = None
    try:
        layout = Home(root=home, name="anvil", data_dir=home / "data")
        keeper = JournalKeeper(layout, f"ipc://{home}/wemixvisor/events.sock")
        keeper.wait_count(6)
        assert keeper.first is not None
        since, run = keeper.first["seq"] + 1, keeper.first["run_id"]
        count = keeper.count + 5  # beyond what is journaled now: the rest comes live
        tail = subprocess.run(
            [
                sys.executable,
                "-m",
                "wemixvisor.cli",
                "events",
                "--json",
                "--since",
                str(since),
                "--since-run",
                run,
                "--count",
                str(count),
                "--timeout",
                "20",
            ],
            env=cli_env(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert tail.returncode == 0, tail.stderr
        events = [msgspec.json.decode(line) for line in tail.stdout.splitlines()]
        assert [e["seq"] for e in events] == list(range(since, since + count))
        assert {e["run_id"] for e in events} == {run}

        rotated = subprocess.run(
            [
                sys.executable,
                "-m",
                "wemixvisor.cli",
                "events",
                "--since-run",
                "no-such-run",
                "--count",
                "1",
                "--timeout",
                "5",
            ],
            env=cli_env(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert rotated.returncode == 1
        assert "bad_request" in rotated.stderr and "no-such-run" in rotated.stderr
    finally:
        if keeper is not None:
            keeper.close()
        daemon.kill()


def test_a_follower_asked_for_a_seq_not_journaled_yet_fills_what_live_skips(
    tmp_path: Path, scripted: Any
) -> None:
    from wemixvisor.events.follow import EventFollower
    from wemixvisor.events.journal import EventJournal

    journal = tmp_path / "events"
    journal_with(journal, "run-a", range(1, 5))
    endpoint = f"ipc://{tmp_path}/events.sock"
    later = [frame("node.running", seq, "run-a", pid=seq) for seq in range(5, 9)]
    scripted(endpoint, later[2:])  # live, the tail sees 7 and 8 only
    pages = journal_pages(journal)

    def daemon_journals_5_and_6_after_the_replay(request: Any) -> Any:
        # The replay from 5 finds nothing; 5 and 6 are published (and journaled) right after.
        reply = pages(request)
        if len(pages.asked) == 1:
            writer = EventJournal(journal)
            writer.open()
            for _topic, payload in later[:2]:
                writer.append(payload)
            writer.close()
        return reply

    follower = EventFollower(
        daemon_journals_5_and_6_after_the_replay,
        EventSubscriber([endpoint]),
        since=5,
        since_run="run-a",
    )
    try:
        got = follow_all(follower, 4)
    finally:
        follower.close()
    assert got == [("run-a", seq, 0) for seq in range(5, 9)]
    assert pages.asked[0].since == 5 and pages.asked[1].since == 5, "the gap read back"
