"""Shared by the control, CLI, alert and metrics scenarios: homes, daemons, a status poll."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.daemon_harness import Daemon, kill_node_processes
from wemixvisor.control import ControlClient, ControlError, ControlUnreachable
from wemixvisor.control.protocol import Status, new_request_id
from wemixvisor.control.security import CurveClientKeys
from wemixvisor.home.layout import Home, init_home

# What a daemon started by these tests gets unless a test says otherwise.
BASE_ENV = {
    "DAEMON_NAME": "anvil",
    "WEMIXVISOR_HEARTBEAT_INTERVAL": "200ms",
    "DAEMON_SHUTDOWN_GRACE": "10s",
}


@contextmanager
def short_root() -> Iterator[Path]:
    """A short directory under /tmp (ipc socket paths must stay under 107 bytes); every process
    whose command line names it is killed and the directory removed at the end
    (WEMIXVISOR_KEEP_TEST_DIRS=1 keeps it for a post-mortem)."""
    root = Path(tempfile.mkdtemp(prefix="wv-", dir="/tmp"))
    try:
        yield root
    finally:
        kill_node_processes(root)
        if not os.environ.get("WEMIXVISOR_KEEP_TEST_DIRS"):
            shutil.rmtree(root, ignore_errors=True)


def make_home(root: Path, binary: Path, name: str = "anvil") -> Path:
    """An initialised home under `root` with `binary` as genesis."""
    home = root / "home"
    init_home(Home(root=home, name=name, data_dir=home / "data"), binary)
    return home


def sleeper_node(root: Path) -> Path:
    """A stand-in node for scenarios that need no chain: it runs until killed."""
    path = root / "anvil"
    path.write_text("#!/bin/sh\n" + textwrap.dedent("exec sleep 600\n"))
    path.chmod(0o755)
    return path


def anvil_args(port: int, home: Path) -> list[str]:
    """anvil on `port` with 1 s blocks, keeping its chain in the data dir."""
    return ["--port", str(port), "--block-time", "1", "--state", str(home / "data" / "state.json")]


def control_endpoint(home: Path) -> str:
    """The default control endpoint of `home`."""
    return f"ipc://{home}/wemixvisor/control.sock"


def start_daemon(home: Path, node_args: list[str] | None = None, **env: str) -> Daemon:
    """A daemon on `home` (the caller kills it)."""
    return Daemon(home, {**BASE_ENV, **env}, node_args or []).start()


def wait_status(
    client: ControlClient,
    where: Callable[[dict[str, Any]], bool] = lambda status: True,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """The first `status` result matching `where`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = client.request(Status(id=new_request_id()))
        except (ControlUnreachable, ControlError) as exc:
            last = exc
        else:
            if where(last):
                return dict(last)
        time.sleep(0.05)
    raise AssertionError(f"no matching status within {timeout}s; last: {last!r}")


Cli = Callable[..., tuple[int, str, str]]
"""`cli("status", "--json")` → (exit code, stdout, stderr) of `wemixvisor` run in this process."""


def operator_cli(home: Path, monkeypatch: Any, capsys: Any, **env: str) -> Cli:
    """`wemixvisor ...` in this process, from an operator's shell on `home` (with `env` added):
    the test's own DAEMON_*/WEMIXVISOR_* variables are removed through `monkeypatch`, output
    is taken from `capsys`."""
    from wemixvisor.cli import main

    for key in list(os.environ):
        if key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            monkeypatch.delenv(key)
    for key, value in {**cli_env(home), **env}.items():
        monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def cli_env(home: Path) -> dict[str, str]:
    """The environment of an operator's shell on `home` (nothing inherited from the test's)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_"))
    }
    env.update(DAEMON_HOME=str(home), DAEMON_NAME="anvil")
    return env


class WellBehavedClient:
    """Asks `status` over and over from its own thread; records every failure."""

    def __init__(
        self,
        endpoint: str,
        curve: CurveClientKeys | None = None,
        check: Callable[[Any], bool] = lambda result: result.get("verb") == "status",
    ) -> None:
        self.client = ControlClient(endpoint, timeout=2.0, curve=curve)
        self.check = check
        self.served = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WellBehavedClient:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                result = self.client.request(Status(id=new_request_id()))
            except (ControlError, ControlUnreachable) as exc:
                self.failures.append(repr(exc))
                continue
            self.slowest = max(self.slowest, time.monotonic() - began)
            if not self.check(result):
                self.failures.append(f"wrong result {result!r}")
            self.served += 1
            self._stop.wait(0.005)

    def assert_served_throughout(self, minimum: int = 5) -> None:
        assert self.failures == []
        assert self.served >= minimum
        assert self.slowest < 1.0, f"a status took {self.slowest:.3f}s"
