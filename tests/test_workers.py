"""Work off an actor's mailbox: jobs and pollers report back as messages, stop with the actor,
and an ask can be answered later by a job."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka

from wemixvisor.actors.base import SupervisedActor
from wemixvisor.actors.workers import Poller


class Recorder(SupervisedActor):
    """Keeps what its workers tell it; "boom" makes it fail."""

    role = "recorder"
    last: Recorder | None = None

    def __init__(self) -> None:
        super().__init__()
        Recorder.last = self
        self.seen: list[Any] = []
        self.poller: Poller | None = None
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    def on_receive(self, message: Any) -> Any:
        match message:
            case ("poll", interval, paced):
                self.poller = self.workers.poll("ticks", lambda: "tick", interval, paced=paced)
            case ("poll-quiet", quiet_calls):
                calls = iter(range(quiet_calls + 1))
                # None (nothing to tell) for the first calls, then a tick, then None for ever.
                self.poller = self.workers.poll(
                    "ticks",
                    lambda: "tick" if next(calls, None) == quiet_calls else None,
                    0.001,
                    paced=True,
                )
            case ("interval", interval):
                assert self.poller is not None
                self.poller.set_interval(interval)
            case ("job", value):
                self.workers.run("job", lambda _stopping: ("done", value))
            case "slow ask":
                reply = self.reply_later()
                self.workers.run("answer", lambda _stopping: reply and reply.set("later"))
            case "seen":
                return list(self.seen)
            case "boom":
                raise RuntimeError("boom")
            case "tick":
                self.seen.append(message)
                if self.poller is not None:
                    self.poller.handled()
            case _:
                self.seen.append(message)
        return None


def wait_for(ref: pykka.ActorRef[Any], predicate: Any, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen: list[Any] = ref.ask("seen", timeout=5)
        if predicate(seen):
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)


def test_a_job_reports_its_result_as_a_message() -> None:
    ref = Recorder.start()
    ref.tell(("job", 7))
    assert wait_for(ref, lambda seen: seen) == [("done", 7)]


def test_an_ask_is_answered_later_by_a_job() -> None:
    ref = Recorder.start()
    assert ref.ask("slow ask", timeout=5) == "later"


def test_a_poller_ticks_and_its_interval_changes_on_the_fly() -> None:
    ref = Recorder.start()
    ref.tell(("poll", 60.0, True))
    wait_for(ref, lambda seen: len(seen) == 1)  # the first call is at once
    ref.tell(("interval", 0.01))
    wait_for(ref, lambda seen: len(seen) >= 5)


def test_a_paced_poller_with_nothing_to_tell_keeps_calling() -> None:
    ref = Recorder.start()
    ref.tell(("poll-quiet", 5))
    wait_for(ref, lambda seen: seen == ["tick"])


def test_workers_end_and_release_runs_when_the_actor_fails() -> None:
    ref = Recorder.start()
    actor = Recorder.last
    assert actor is not None
    ref.tell(("poll", 0.01, False))
    wait_for(ref, lambda seen: len(seen) >= 2)
    ref.tell("boom")
    assert actor.released.wait(5)
    poller = actor.poller
    assert poller is not None
    assert poller.stopping.is_set()
