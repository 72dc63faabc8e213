"""`wemixvisor alert` (SPEC §12): a webhook receiver and a command get the events of a real node
crash, the webhook keeps getting them after it was down for a while, both follow a restarted
daemon, and gaps in the events are reported."""

from __future__ import annotations

import http.server
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import free_port
from tests.control_harness import (
    anvil_args,
    cli_env,
    control_endpoint,
    make_home,
    short_root,
    start_daemon,
    wait_status,
)
from tests.daemon_harness import EventLog
from tests.support import wait_until
from wemixvisor.control import ControlClient
from wemixvisor.events.alert import AlertForwarder, DeliveryError, alert_text
from wemixvisor.events.journal import replay
from wemixvisor.events.publisher import EventPublisher
from wemixvisor.events.subscriber import ReceivedEvent
from wemixvisor.messages import events as ev

Alert = dict[str, Any]


class Receiver:
    """A local webhook: collects every POSTed JSON object; can be taken down and brought back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.alerts: queue.SimpleQueue[Alert] = queue.SimpleQueue()
        self.seen: list[Alert] = []
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> Receiver:
        alerts = self.alerts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                alerts.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(
        self, topic: str, where: Callable[[Alert], bool] = lambda a: True, timeout: float = 20.0
    ) -> Alert:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                alert = self.alerts.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(alert)
            if alert.get("topic") == topic and where(alert):
                return alert
        raise AssertionError(f"no {topic} alert; got {[a.get('topic') for a in self.seen]}")


class AlertProcess:
    """`wemixvisor alert ...` as an operator runs it, its stderr collected."""

    def __init__(self, home: Path, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wemixvisor.cli", "alert", *argv],
            env=cli_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_stderr(self, words: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(words in line for line in self.stderr):
            assert time.monotonic() < deadline, f"no {words!r} on stderr: {self.stderr[-5:]}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(timeout=5)
            assert self.process.stderr is not None
            self.process.stderr.close()
        return code


@pytest.fixture
def alert_processes() -> Iterator[list[AlertProcess]]:
    started: list[AlertProcess] = []
    yield started
    for process in started:
        process.stop()


def node_pid(home: Path) -> int:
    return int(msgspec.json.decode((home / "wemixvisor/state/node.pid").read_bytes())["pid"])


def test_crashes_reach_a_webhook_and_a_command_through_receiver_downtime_and_daemon_restarts(
    anvil_bin_1_5_1: Path, alert_processes: list[AlertProcess]
) -> None:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        port = free_port()
        env = {"DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{port}"}
        daemon = start_daemon(home, anvil_args(port, home), **env)
        receiver = Receiver(free_port()).up()
        exec_out = root / "exec.jsonl"
        client = ControlClient(control_endpoint(home), 5.0)
        events = EventLog(f"ipc://{home}/wemixvisor/events.sock", ["node."])
        try:
            wait_status(client, lambda s: s["node"]["state"] == "RUNNING")
            # Heartbeats (every 200 ms here) show when each forwarder is subscribed.
            topics = ["node.exited", "node.running", "supervisor.heartbeat"]
            hook = AlertProcess(
                home, "--webhook", receiver.url, "--topics", *topics, "--max-backoff", "0.3"
            )
            command = AlertProcess(
                home, "--exec", f"tee -a {exec_out}", "--topics", "node.", "supervisor.heartbeat"
            )
            alert_processes.extend([hook, command])
            receiver.wait_for("supervisor.heartbeat")
            command_deadline = time.monotonic() + 20
            while "supervisor.heartbeat" not in (exec_out.read_text() if exec_out.exists() else ""):
                assert time.monotonic() < command_deadline, "the command never got an event"
                time.sleep(0.05)

            first = node_pid(home)
            os.kill(first, signal.SIGKILL)
            exited = receiver.wait_for("node.exited", lambda a: a["pid"] == first)
            assert exited["signal"] == signal.SIGKILL
            assert exited["expected"] is False
            assert exited["text"].endswith(
                f"node.exited: pid {first} killed by signal 9 (unexpected)"
            )
            receiver.wait_for("node.running", lambda a: a["pid"] != first)

            # The receiver goes down: the next crash is retried until it comes back.
            receiver.down()
            events.wait_for("node.running", lambda p: p["pid"] != first)
            second = node_pid(home)
            os.kill(second, signal.SIGKILL)
            events.wait_for("node.running", lambda p: p["pid"] != second)
            hook.wait_stderr("not delivered")
            receiver.up()
            receiver.wait_for("node.exited", lambda a: a["pid"] == second)
            receiver.wait_for("node.running", lambda a: a["pid"] != second)

            # The daemon restarts: the forwarders' subscriptions follow the new run (what it
            # publishes before they reconnect is lost to them, as to any late subscriber).
            old_run = client.request({"type": "status"})["daemon"]["run_id"]
            assert daemon.terminate() == 0
            daemon = start_daemon(home, anvil_args(port, home), **env)
            beat = receiver.wait_for("supervisor.heartbeat", lambda a: a["run_id"] != old_run)
            assert beat["text"].startswith("[")

            lines = [json.loads(line) for line in exec_out.read_text().splitlines()]
            crashes = [a for a in lines if a["topic"] == "node.exited" and not a["expected"]]
            assert {a["pid"] for a in crashes} >= {first, second}
            assert all("text" in a for a in lines)
            assert hook.stop() == 0
            assert any("0 dropped" in line for line in hook.stderr)
        finally:
            events.close()
            client.close()
            receiver.down()
            try:
                assert daemon.terminate() == 0
            finally:
                daemon.kill()


def test_gaps_in_the_events_are_alerted(
    root_dir: Path, alert_processes: list[AlertProcess]
) -> None:
    endpoint = f"ipc://{root_dir}/events.sock"
    publisher = EventPublisher(endpoint)
    publisher.bind()
    receiver = Receiver(free_port()).up()
    try:
        home = root_dir / "home"
        hook = AlertProcess(home, "--webhook", receiver.url, "--connect", endpoint)
        alert_processes.append(hook)
        # Publish until the forwarder is connected and relaying (a PUB drops for late joiners).
        deadline = time.monotonic() + 20
        while True:
            publisher.publish(ev.ConfigRejected(error="probe"))
            try:
                receiver.wait_for("config.rejected", timeout=0.2)
                break
            except AssertionError:
                assert time.monotonic() < deadline
        publisher._seq += 3  # three events the forwarder never sees
        publisher.publish(ev.ConfigRejected(error="after the gap"))
        missed = receiver.wait_for("alert.missed_events")
        assert missed["missed"] == 3
        assert missed["run_id"] == publisher.run_id
        assert "missed 3 events" in missed["text"]
        receiver.wait_for("config.rejected", lambda a: a["error"] == "after the gap")
    finally:
        receiver.down()
        publisher.close()


@pytest.fixture
def root_dir(short_root: Path) -> Path:
    return short_root


class FlakySink:
    """Fails the first `failures` deliveries with a retryable error; records what it got."""

    def __init__(self, failures: int, retry: bool = True) -> None:
        self.failures = failures
        self.retry = retry
        self.delivered: list[Alert] = []
        self.attempts = 0

    def describe(self) -> str:
        return "flaky"

    def deliver(self, alert: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DeliveryError("receiver down", retry=self.retry)
        self.delivered.append(dict(alert))


class SilentSubscriber:
    def receive(self, timeout: float | None = None) -> None:
        time.sleep(min(timeout or 0.01, 0.01))


def received(topic: str, seq: int, gap: int = 0, **fields: Any) -> ReceivedEvent:
    payload = {"topic": topic, "seq": seq, "run_id": "run1", "ts": time.time(), **fields}
    return ReceivedEvent(topic, payload, b"", seq, "run1", payload["ts"], gap)


def run_forwarder(forwarder: AlertForwarder, until: Callable[[], bool]) -> None:
    stop = threading.Event()
    runner = threading.Thread(target=forwarder.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not until():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        runner.join(10)


def test_undelivered_alerts_are_retried_with_backoff_and_keep_their_order() -> None:
    sink = FlakySink(failures=3)
    forwarder = AlertForwarder(
        SilentSubscriber(),  # type: ignore[arg-type]
        sink,
        backoff_initial=0.01,
        backoff_max=0.05,
        host="h",
    )
    for seq in (1, 2, 3):
        forwarder.accept(received("node.exited", seq, pid=seq, signal=9, expected=False))
    run_forwarder(forwarder, lambda: len(sink.delivered) == 3)
    assert [a["seq"] for a in sink.delivered] == [1, 2, 3]
    assert sink.attempts == 6
    assert sink.delivered[0]["text"] == "[h] node.exited: pid 1 killed by signal 9 (unexpected)"


def test_a_refused_alert_is_dropped_and_a_full_queue_drops_the_oldest_with_a_notice() -> None:
    sink = FlakySink(failures=1, retry=False)
    forwarder = AlertForwarder(
        SilentSubscriber(),  # type: ignore[arg-type]
        sink,
        queue_size=2,
        host="h",
    )
    for seq in range(1, 6):
        forwarder.accept(received("node.running", seq, gap=2 if seq == 5 else 0, pid=seq))
    run_forwarder(forwarder, lambda: forwarder.failed + len(sink.delivered) >= 3)
    topics = [a["topic"] for a in sink.delivered]
    # The queue held the newest two (the gap notice and event 5); four alerts fell out.
    assert topics == ["alert.missed_events", "node.running"]
    assert forwarder.dropped == 4
    assert forwarder.failed == 1  # the "dropped" notice itself was refused
    assert forwarder.missed == 2


def test_alert_text_is_one_readable_line() -> None:
    assert alert_text({"topic": "node.fatal", "reason": "more than 5 restarts"}, "n1") == (
        "[n1] node.fatal: node down for good: more than 5 restarts; `wemixvisor start` retries"
    )
    text = alert_text({"topic": "plan.rejected", "seq": 3, "reason": "bad\nname", "x": [1]}, "n1")
    assert text == "[n1] plan.rejected: reason=bad?name x=[1]"
    assert "\n" not in alert_text({"topic": "x.y", "v": "a" * 500}, "n1")


def test_a_restarted_forwarder_delivers_what_it_missed_from_the_journal(
    anvil_bin_1_5_1: Path, short_root: Path, alert_processes: list[AlertProcess]
) -> None:
    """At-least-once: a forwarder killed with SIGKILL and started again delivers every heartbeat
    published while it was down, from the event after the last one it had delivered."""
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    daemon = start_daemon(
        home, anvil_args(port, home), DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{port}"
    )
    receiver = Receiver(free_port()).up()
    events = EventLog(f"ipc://{home}/wemixvisor/events.sock", ["supervisor.heartbeat"])
    try:
        first = AlertProcess(home, "--webhook", receiver.url, "--topics", "supervisor.heartbeat")
        alert_processes.append(first)
        delivered = receiver.wait_for("supervisor.heartbeat")
        cursors = list((home / "wemixvisor" / "alerts").glob("*.json"))
        wait_deadline = time.monotonic() + 10
        while not cursors:
            assert time.monotonic() < wait_deadline, "no cursor written"
            time.sleep(0.05)
            cursors = list((home / "wemixvisor" / "alerts").glob("*.json"))
        first.process.kill()
        first.stop()
        last = msgspec.json.decode(cursors[0].read_bytes())
        assert last["run_id"] == delivered["run_id"]
        # Five heartbeats go by with no forwarder running.
        missed = [
            events.wait_for("supervisor.heartbeat", lambda p: p["seq"] > last["seq"])
            for _ in range(5)
        ]
        second = AlertProcess(home, "--webhook", receiver.url, "--topics", "supervisor.heartbeat")
        alert_processes.append(second)
        newest = missed[-1]["seq"]
        receiver.wait_for("supervisor.heartbeat", lambda a: a["seq"] > newest)
        got = {a["seq"] for a in receiver.seen if a.get("topic") == "supervisor.heartbeat"}
        journal = [
            e["seq"]
            for _, line in replay(
                home / "wemixvisor" / "state" / "events", since_run=last["run_id"]
            )
            if (e := msgspec.json.decode(line))["topic"] == "supervisor.heartbeat"
            and last["seq"] < e["seq"] <= newest
        ]
        assert journal and set(journal) <= got
    finally:
        events.close()
        receiver.down()
        daemon.kill()


def test_a_hostile_cursor_file_means_following_live_events(
    anvil_bin_1_5_1: Path, short_root: Path, alert_processes: list[AlertProcess]
) -> None:
    home = make_home(short_root, anvil_bin_1_5_1)
    port = free_port()
    daemon = start_daemon(
        home, anvil_args(port, home), DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{port}"
    )
    receiver = Receiver(free_port()).up()
    try:
        for content in (
            b"\x00\xffgarbage",
            b'{"run_id": "gone", "seq": 5}',
            b"[" * 5000,
            b"x" * 9000,
        ):
            cursor = short_root / "cursor.json"
            cursor.write_bytes(content)
            forwarder = AlertProcess(
                home,
                "--webhook",
                receiver.url,
                "--topics",
                "supervisor.heartbeat",
                "--cursor",
                str(cursor),
            )
            alert_processes.append(forwarder)
            beat = receiver.wait_for("supervisor.heartbeat")
            written = lambda path=cursor, old=content: path.read_bytes() != old  # noqa: E731
            wait_until(written, what="the cursor written")
            assert msgspec.json.decode(cursor.read_bytes())["run_id"] == beat["run_id"]
            assert forwarder.stop() == 0
    finally:
        receiver.down()
        daemon.kill()
