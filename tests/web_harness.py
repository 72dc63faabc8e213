"""The web console in scenario tests: a real `wemixvisor web` process over real daemons.

`WebConsole` starts the console as an operator would (its own process, loopback, the home's
token) and gives an HTTP client that sends the token. `JournalKeeper` appends the events a
daemon publishes to its on-disk journal, for as long as the daemon does not do so itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from devtools.anvil import free_port
from tests.daemon_harness import Daemon
from wemixvisor.control.verbs.events import journal_dir
from wemixvisor.events.journal import EventJournal, JournalReplayError, replay
from wemixvisor.events.subscriber import EventSubscriber
from wemixvisor.home.layout import Home

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium() -> Any:
    """Headless Chromium through Debian's chromedriver: the driver's path is given, so
    selenium-manager never runs and nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def daemon_env(home: Path, rpc_port: int) -> dict[str, str]:
    """What the daemons of these scenarios run with: anvil on `rpc_port`, quick heartbeats."""
    return {
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{rpc_port}",
        "DAEMON_POLL_INTERVAL": "100ms",
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "200ms",
        "DAEMON_SHUTDOWN_GRACE": "10s",
        "DAEMON_VERIFY_TIMEOUT": "20s",
    }


def anvil_node_args(home: Path, port: int, block_time: str = "1") -> list[str]:
    """anvil on `port`, its chain kept in the data dir."""
    return [
        "--port",
        str(port),
        "--block-time",
        block_time,
        "--state",
        str(home / "data" / "state.json"),
    ]


def start_anvil_daemon(home: Path, port: int, **env: str) -> Daemon:
    """A daemon on `home` running anvil on `port` (the caller kills it)."""
    return Daemon(home, {**daemon_env(home, port), **env}, anvil_node_args(home, port)).start()


class WebConsole:
    """`wemixvisor web` on a free loopback port for `home`; always killed at the end."""

    def __init__(self, home: Path, connect: list[str] | None = None, heartbeat: str = "1") -> None:
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = ["--listen", f"127.0.0.1:{self.port}", "--heartbeat", heartbeat]
        for endpoint in connect or []:
            args += ["--connect", endpoint]
        self.env = {**os.environ, "DAEMON_HOME": str(home), "DAEMON_NAME": "anvil"}
        self.log_path = home.parent / f"web-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wemixvisor.cli", "web", *args],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.token = ""
        self.client = httpx.Client(base_url=self.base, timeout=15.0, trust_env=False)

    def wait_ready(self, timeout: float = 20.0) -> WebConsole:
        """Wait until the page is served; read the token the console made."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"wemixvisor web exited: {self.log_text()}")
            try:
                if self.client.get("/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"wemixvisor web not serving within {timeout}s: {self.log_text()}")
        self.token = (self.home / "wemixvisor" / "web.token").read_text().strip()
        self.client.headers["Authorization"] = f"Bearer {self.token}"
        return self

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> WebConsole:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def wait_http(
    console: WebConsole, path: str, status: int, timeout: float = 30.0, **kwargs: Any
) -> httpx.Response:
    """The first answer to GET `path` with `status`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = console.get(path, **kwargs)
        if last.status_code == status:
            return last
        time.sleep(0.05)
    raise AssertionError(
        f"GET {path}: no {status} within {timeout}s; last {last.status_code} {last.text}"
    )


class JournalKeeper:
    """Appends every event the daemon publishes to the daemon's journal (`state/events/`),
    unless the daemon journals its events itself (then it only counts them).

    `first` is the first event it saw; `count` how many it saw.
    """

    _PROBE = 3  # events seen before deciding whether the daemon journals them itself

    def __init__(self, home: Home, events_endpoint: str) -> None:
        self.directory = journal_dir(home)
        self.journal: EventJournal | None = None
        self.passive = False
        self.subscriber = EventSubscriber([events_endpoint])
        self.first: dict[str, Any] | None = None
        self.count = 0
        self._held: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.subscriber.receive(0.1)
            if event is None:
                continue
            if self.first is None:
                self.first = event.payload
            if self.journal is None and not self.passive:
                self._held.append(event.raw)
                if len(self._held) >= self._PROBE:
                    self._decide()
            elif self.journal is not None:
                self.journal.append(event.raw)
            self.count += 1

    def _decide(self) -> None:
        assert self.first is not None
        wanted = (self.first["run_id"], self.first["seq"])
        try:
            held = {(p.run_id, p.seq) for p, _ in replay(self.directory, since_run=wanted[0])}
        except JournalReplayError:
            held = set()
        if wanted in held:
            self.passive = True
            return
        self.journal = EventJournal(self.directory)
        self.journal.open()
        for raw in self._held:
            self.journal.append(raw)

    def wait_count(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < max(count, self._PROBE + 1):
            assert time.monotonic() < deadline, f"only {self.count} events seen"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.subscriber.close()
        if self.journal is not None:
            self.journal.close()
