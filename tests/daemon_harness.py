"""A real wemixvisor daemon in a subprocess, and a subscriber to its events, for scenario tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil

from wemixvisor.events.subscriber import EventSubscriber

Payload = dict[str, Any]


class EventLog:
    """Everything a subscriber saw, and waiting for the next matching event with a deadline."""

    def __init__(self, endpoint: str, prefixes: list[str] | None = None) -> None:
        self.subscriber = EventSubscriber([endpoint], prefixes or [])
        self.seen: list[Payload] = []
        self.gaps = 0

    def _pull(self, timeout: float) -> Payload | None:
        received = self.subscriber.receive(timeout=timeout)
        if received is None:
            return None
        self.gaps += received.gap
        self.seen.append(received.payload)
        return received.payload

    def wait_for(
        self,
        topic: str,
        where: Callable[[Payload], bool] = lambda payload: True,
        timeout: float = 30.0,
    ) -> Payload:
        """The next event of `topic` matching `where`; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            payload = self._pull(min(left, 0.5))
            if payload is not None and payload["topic"] == topic and where(payload):
                return payload
        recent = [p["topic"] for p in self.seen[-30:]]
        raise AssertionError(f"no {topic} within {timeout}s; recent events: {recent}")

    def close(self) -> None:
        """Close the SUB socket."""
        self.subscriber.close()


class Daemon:
    """`python -m wemixvisor.bootstrap` on a home made by the test; always killed at the end."""

    _count = 0

    def __init__(
        self,
        home: Path,
        env: dict[str, str],
        node_args: list[str],
        *,
        command: list[str] | None = None,
    ) -> None:
        self.home = home
        self.env = {**os.environ, **env, "DAEMON_HOME": str(home)}
        self.node_args = node_args
        # What runs the daemon, before the node's arguments (default: the bootstrap module).
        self.command = command or [sys.executable, "-m", "wemixvisor.bootstrap"]
        Daemon._count += 1
        self.log_path = home.parent / f"{home.name}-daemon-{Daemon._count}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def events_endpoint(self) -> str:
        """Where the daemon publishes (the default ipc endpoint of the home)."""
        return self.env.get(
            "WEMIXVISOR_EVENTS_ENDPOINT", f"ipc://{self.home}/wemixvisor/events.sock"
        )

    def start(self) -> Daemon:
        """Spawn the daemon (own session, so a test's signals reach only it)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.command, *self.node_args],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        """The daemon's pid."""
        assert self.process is not None
        return self.process.pid

    def node_pid(self) -> int | None:
        """The node's pid as the daemon records it (`state/node.pid`); None without a record.

        Not the daemon's children: those include short-lived `<binary> --version` probes."""
        record = self.home / "wemixvisor" / "state" / "node.pid"
        try:
            return int(msgspec.json.decode(record.read_bytes())["pid"])
        except FileNotFoundError:
            return None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the daemon's exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the daemon only (its node, in its own session, survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        """The daemon's own stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def kill_node_processes(home: Path) -> None:
    """Kill every process whose command line mentions the home (nodes left by a test)."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(home) in cmdline and proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.Error:
                continue
