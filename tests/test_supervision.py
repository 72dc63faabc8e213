"""An actor that fails is restarted by its supervisor; the others keep running."""

from __future__ import annotations

import time
from typing import Any

from wemixvisor.actors.base import SupervisedActor
from wemixvisor.actors.supervision import Supervisor
from wemixvisor.bus import Bus


class Counter(SupervisedActor):
    """Counts messages; the message "boom" makes it fail."""

    role = "counter"

    def __init__(self, failure_sink: Any = None) -> None:
        super().__init__(failure_sink)
        self.count = 0

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        if message == "count":
            return self.count
        self.count += 1
        return None


class FailsOnStart(SupervisedActor):
    role = "fragile"
    starts = 0

    def setup(self) -> None:
        FailsOnStart.starts += 1
        if FailsOnStart.starts < 3:
            raise OSError("resource not ready")

    def on_receive(self, message: Any) -> Any:
        return "alive"


def wait_restarted(supervisor: Supervisor, role: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while supervisor.restarts()[role] < count:
        assert time.monotonic() < deadline, f"{role} not restarted {count} times"
        due = supervisor.handle_failures()
        time.sleep(min(due, 0.01))


def test_a_failed_actor_is_restarted_and_reachable_through_the_bus() -> None:
    bus = Bus()
    restarted: list[str] = []
    supervisor = Supervisor(bus, on_restart=lambda role, error: restarted.append(role))
    supervisor.add("counter", lambda sup: Counter.start(failure_sink=sup.failure_sink))
    supervisor.start_all()
    bus.tell("counter", "tick")
    assert bus.ask("counter", "count", timeout=5) == 1

    bus.tell("counter", "boom")
    wait_restarted(supervisor, "counter", 1)

    assert restarted == ["counter"]
    assert bus.ask("counter", "count", timeout=5) == 0  # a fresh actor
    supervisor.stop_all()


def test_an_actor_failing_in_setup_is_retried_with_backoff_until_it_starts() -> None:
    bus = Bus()
    supervisor = Supervisor(bus)
    supervisor.add("fragile", lambda sup: FailsOnStart.start(failure_sink=sup.failure_sink))
    supervisor.start_all()
    wait_restarted(supervisor, "fragile", 2)
    assert bus.ask("fragile", "ping", timeout=5) == "alive"
    supervisor.stop_all()


def test_stop_all_stops_in_reverse_order() -> None:
    order: list[str] = []

    class Recorder(SupervisedActor):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def teardown(self) -> None:
            order.append(self.name)

    bus = Bus()
    supervisor = Supervisor(bus)
    for name in ("events", "node", "orchestrator"):
        supervisor.add(name, lambda sup, name=name: Recorder.start(name))
    supervisor.start_all()
    supervisor.stop_all()
    assert order == ["orchestrator", "node", "events"]
