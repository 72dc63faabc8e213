"""The demo: wemixvisor supervising a local anvil chain, its events printed as they happen.

    python -m devtools.demo [--home DIR] [--duration SECONDS]

It initialises a demo home with anvil 1.5.1 as the genesis binary, starts the daemon, tails its
events with `wemixvisor events`, then plays a short scenario: the node is killed with SIGKILL
and comes back on its own; then an upgrade to anvil 1.7.1 is scheduled a few blocks ahead with
`wemixvisor add-upgrade --height`, and at that height the daemon stops the node, backs up its
data, switches `current` and starts the new binary, which continues the same chain. It keeps
running until Ctrl-C (or `--duration`), then stops the daemon, which stops the node gracefully.
Meanwhile `wemixvisor web` serves the web console; its URL, with the token, is printed at the
start (`--web-port`, default 8731).

With `--validators N` it plays the validator-set demo instead (`devtools.fleet_demo`): N
validators on the WBFT network double upgrade in a rolling window.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devtools import fleet_demo
from devtools.anvil import anvil_binary, free_port, rpc_call, wait_for_rpc

_REPO = Path(__file__).resolve().parent.parent


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _wemixvisor(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "wemixvisor.cli", *args], env=env, check=True)


def _node_pid(home: Path) -> int | None:
    try:
        text = (home / "wemixvisor" / "state" / "node.pid").read_text()
    except FileNotFoundError:
        return None
    import json  # noqa: PLC0415

    pid = json.loads(text).get("pid")
    return pid if isinstance(pid, int) else None


def _wait_new_pid(home: Path, old: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _node_pid(home)
        if pid is not None and pid != old:
            return pid
        time.sleep(0.01)
    raise TimeoutError("the node did not come back")


def _start_console(env: dict[str, str], home: Path, port: int) -> subprocess.Popen[bytes]:
    """`wemixvisor web` on 127.0.0.1:`port`; its URL with the token printed."""
    listen = f"127.0.0.1:{port}"
    url = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", "web", "--listen", listen, "--print-url"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    log = (home / "web.log").open("ab")
    console = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", "web", "--listen", listen],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    _say(f"the web console: open {url}")
    return console


def run(home: Path, duration: float | None, web_port: int = 8731) -> int:
    """Play the demo in `home` (wiped first); the exit code."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    genesis = anvil_binary("1.5.1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DAEMON_HOME": str(home),
        "DAEMON_NAME": "anvil",
        "DAEMON_RPC_ADDRESS": url,
        "WEMIXVISOR_HEARTBEAT_INTERVAL": "10s",
        "DAEMON_SHUTDOWN_GRACE": "10s",
    }
    _say(f"wemixvisor init {genesis}  (home {home})")
    _wemixvisor("init", str(genesis), env=env)

    _say("starting the daemon: anvil 1.5.1 with 1 s blocks, chain state kept in data/state.json")
    events = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", "events"], env=env, start_new_session=True
    )
    daemon_log = (home / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wemixvisor.bootstrap",
            "--port",
            str(port),
            "--block-time",
            "1",
            "--state",
            str(home / "data" / "state.json"),
            # anvil writes its state on SIGTERM, and with this every second too, so that the
            # SIGKILL of the scenario does not lose the chain.
            "--state-interval",
            "1",
        ],
        env=env,
        stdout=daemon_log,
        stderr=daemon_log,
        start_new_session=True,
    )
    daemon_log.close()
    console = _start_console(env, home, web_port)
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        wait_for_rpc(url, timeout=30)
        time.sleep(3)  # let a few blocks pass so the crash has a chain to resume
        head = int(rpc_call(url, "eth_blockNumber"), 16)
        pid = _node_pid(home)
        _say(f"head is {head}; killing the node (pid {pid}) with SIGKILL")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        began = time.monotonic()
        new_pid = _wait_new_pid(home, pid, timeout=30)
        waited = wait_for_rpc(url, timeout=30)
        _say(
            f"node back as pid {new_pid}, answering RPC "
            f"{time.monotonic() - began:.3f}s after the kill "
            f"({waited:.3f}s of that waiting for RPC)"
        )
        upgrade_bin = anvil_binary("1.7.1")
        head = int(rpc_call(url, "eth_blockNumber"), 16)
        height = head + 5
        _say(
            f"{rpc_call(url, 'web3_clientVersion')} at head {head}; scheduling anvil 1.7.1 "
            f"at height {height}:\n    wemixvisor add-upgrade v1.7.1 {upgrade_bin} "
            f"--height {height}"
        )
        _wemixvisor("add-upgrade", "v1.7.1", str(upgrade_bin), "--height", str(height), env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stop_requested:
            try:
                version = rpc_call(url, "web3_clientVersion")
            except OSError:
                version = ""
            if version == "anvil/v1.7.1":
                break
            time.sleep(0.2)
        head = int(rpc_call(url, "eth_blockNumber"), 16)
        _say(f"the node now answers {rpc_call(url, 'web3_clientVersion')}, head {head}")
        _say(
            "the daemon keeps supervising; in another terminal try:\n"
            f"    DAEMON_HOME={home} .venv/bin/wemixvisor events node.\n"
            "Ctrl-C stops the demo"
            + (f" (or it stops by itself after {duration:g}s)" if duration else "")
        )
        end = time.monotonic() + duration if duration else None
        while not stop_requested and daemon.poll() is None:
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(0.2)
    finally:
        _say("stopping the daemon (SIGTERM): the node is stopped gracefully first")
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        time.sleep(0.3)  # let the events tail print the last events before it goes
        events.send_signal(signal.SIGINT)
        events.wait(timeout=10)
        console.terminate()
        console.wait(timeout=10)
    print(f"daemon exited with {code}; its log: {home / 'daemon.log'}", flush=True)
    return 0 if code == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and play the demo (`--validators N`: the validator-set demo)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--validators" or a.startswith("--validators=") for a in arguments):
        return fleet_demo.main(arguments)
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--home", type=Path, default=_REPO / "demo-home")
    parser.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    parser.add_argument("--web-port", type=int, default=8731, help="the web console's port")
    args = parser.parse_args(arguments)
    return run(args.home.resolve(), args.duration, args.web_port)


if __name__ == "__main__":
    sys.exit(main())
