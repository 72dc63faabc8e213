"""The validator-set demo: a rolling-window upgrade of N validators, judged from the chain.

    python -m devtools.fleet_demo --validators 4 [--home DIR] [--window W] [--block-time S]
                                  [--web-port P] [--duration S] [--exit-when-done]

(`scripts/demo.sh --validators 4` runs it.) Each validator gets a home of its own with anvil
1.5.1 as the genesis binary and 1.7.1 installed as the upgrade `v1.7.1`, and its own daemon
supervising `anvil --no-mining` (own control and events sockets). The WBFT network double
(`devtools.wbft`, a TEST DOUBLE with the real anvils under it) mines them in lockstep while a
quorum of validators answers, serves `istanbul_*` through a proxy in front of each node, and
withholds the fork block H from a 1.5.1 node. One `wemixvisor web` console watches all the
daemons (its URL with the token is printed). Each daemon is told, as an operator would,
`wemixvisor upgrade schedule v1.7.1 H --window W`; the daemons' lifecycle events are printed as
they happen, prefixed by validator. Once every node runs 1.7.1 past H, a summary read from the
chain follows: blocks produced, block slots missed, the blocks each validator did not commit,
the longest block interval, and the binary each node answers with. It keeps running until
Ctrl-C (or `--duration`); `--exit-when-done` stops after the summary. Every process it started
is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
import psutil

from devtools.anvil import RpcError, anvil_binary, free_port, rpc_call, wait_for_rpc
from devtools.wbft import NetworkStatus, NodeSpec, WbftNetwork, quorum_size

_REPO = Path(__file__).resolve().parent.parent
GENESIS_VERSION = "1.5.1"
UPGRADE_VERSION = "1.7.1"
UPGRADE_NAME = "v1.7.1"
MAX_VALIDATORS = 8  # each one is an anvil and a daemon on this machine
LEAD = 15  # blocks from the network's first block to the window's opening: scheduling time
AFTER = 3  # blocks past H before the summary
_QUIET_TOPICS = ("height.observed", "supervisor.heartbeat")
_STOP_GRACE = 60.0  # seconds a daemon gets to stop its node and exit


@dataclass
class Validator:
    """One validator: its home, its anvil's port, the network double's proxy in front of it,
    and the daemon supervising the anvil."""

    index: int
    home: Path
    port: int
    proxy_port: int
    daemon: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """The validator's name here, on the console and in the printed events."""
        return f"v{self.index}"

    @property
    def node_url(self) -> str:
        """The anvil's own RPC."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_url(self) -> str:
        """The node as the chain's clients see it (`istanbul_*` served)."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def control_endpoint(self) -> str:
        """The daemon's control socket."""
        return f"ipc://{self.home}/wemixvisor/control.sock"

    @property
    def events_endpoint(self) -> str:
        """The daemon's events socket."""
        return f"ipc://{self.home}/wemixvisor/events.sock"

    def env(self) -> dict[str, str]:
        """What its CLI calls and its daemon run with."""
        return {
            **os.environ,
            "DAEMON_HOME": str(self.home),
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": self.proxy_url,
            "VALIDATOR_MODE": "true",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "10s",
            "DAEMON_SHUTDOWN_GRACE": "10s",
            "NO_COLOR": "1",
        }


class Printer:
    """Lines on the terminal, one at a time (event threads and the main thread share it)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print `text` as it is."""
        with self._lock:
            print(text, file=self._out, flush=True)

    def say(self, text: str) -> None:
        """A step of the demo."""
        self.line(f"\n=== {text}")


def _wemixvisor(validator: Validator, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=validator.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _prepare(validator: Validator, genesis: Path, upgrade: Path) -> None:
    """`wemixvisor init` and `add-upgrade`, as an operator sets a node up."""
    validator.home.mkdir(parents=True)
    for args in (("init", str(genesis)), ("add-upgrade", UPGRADE_NAME, str(upgrade))):
        done = _wemixvisor(validator, *args)
        if done.returncode != 0:
            raise RuntimeError(f"{validator.name}: wemixvisor {args[0]} failed: {done.stderr}")


def _start_daemon(validator: Validator) -> None:
    log = (validator.home / "daemon.log").open("ab")
    args = ["--no-mining", "--port", str(validator.port)]
    args += ["--state", str(validator.home / "data" / "state.json")]
    validator.daemon = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.bootstrap", *args],
        env=validator.env(),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()


def _follow_events(validator: Validator, printer: Printer, stop: threading.Event) -> None:
    """Print the daemon's events, `[vN] ` first, until `stop`."""
    from wemixvisor.commands.events import format_event  # noqa: PLC0415
    from wemixvisor.events.subscriber import EventSubscriber  # noqa: PLC0415

    with EventSubscriber([validator.events_endpoint]) as subscriber:
        while not stop.is_set():
            event = subscriber.receive(0.2)
            if event is None or event.topic in _QUIET_TOPICS:
                continue
            printer.line(f"[{validator.name}] {format_event(event)}")


def _start_console(
    validators: list[Validator], root: Path, port: int, printer: Printer
) -> subprocess.Popen[bytes]:
    """One `wemixvisor web` for every daemon (`--connect vN=…`); its URL with the token printed."""
    first = validators[0]
    args = ["web", "--listen", f"127.0.0.1:{port}"]
    for validator in validators:
        args += ["--connect", f"{validator.name}={validator.control_endpoint}"]
    done = _wemixvisor(first, *args, "--print-url")
    if done.returncode != 0:
        raise RuntimeError(f"wemixvisor web --print-url failed: {done.stderr}")
    log = (root / "web.log").open("ab")
    console = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=first.env(),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    url = done.stdout.strip()
    printer.say(f"the web console, one fleet of {len(validators)} daemons: open {url}")
    return console


def _schedule_everywhere(
    validators: list[Validator], height: int, window: int, printer: Printer
) -> None:
    """`wemixvisor upgrade schedule` on every validator at once, as N operators would."""
    command = ["upgrade", "schedule", UPGRADE_NAME, str(height), "--window", str(window)]
    printer.say(f"on every validator: wemixvisor {' '.join(command)}")
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "wemixvisor.cli", *command],
            env=validator.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for validator in validators
    ]
    failed = []
    for validator, process in zip(validators, running, strict=True):
        out, _ = process.communicate(timeout=120)
        for line in out.splitlines():
            printer.line(f"[{validator.name}] {line}")
        if process.returncode != 0:
            failed.append(validator.name)
    if failed:
        raise RuntimeError(f"the upgrade could not be scheduled on {', '.join(failed)}")


def _committers_line(status: NetworkStatus, names: dict[str, str]) -> str:
    if status.halted:
        return f"block {status.head}: HALTED, fewer than {status.quorum} validators answer"
    marks = [
        f"{names[node.address]}{'' if node.committing else ' (missing)'}"
        for node in status.nodes
        if node.validator
    ]
    return f"block {status.head}: committed by " + ", ".join(marks)


def _done(status: NetworkStatus, height: int) -> bool:
    return (
        status.head is not None
        and status.head >= height + AFTER
        and all(node.has_fork and node.committing for node in status.nodes)
    )


def _ranges(numbers: list[int]) -> str:
    """`3-5, 9` for [3, 4, 5, 9]; `none` for []."""
    if not numbers:
        return "none"
    parts = []
    for _, run in itertools.groupby(enumerate(numbers), lambda pair: pair[1] - pair[0]):
        block = [number for _, number in run]
        parts.append(str(block[0]) if len(block) == 1 else f"{block[0]}-{block[-1]}")
    return ", ".join(parts)


class Summary(msgspec.Struct, frozen=True):
    """The upgrade as the chain tells it."""

    head: int
    longest_interval: int  # seconds between consecutive block timestamps
    missed_slots: int  # elapsed time / block time - blocks made
    not_committed: dict[str, list[int]]  # validator address -> blocks it did not commit
    versions: list[str]  # each node's web3_clientVersion, by validator index


def read_summary(validators: list[Validator], block_time: float) -> Summary:
    """Read the chain through the first node that answers: blocks, their timestamps and
    committers (`istanbul_getCommitSignersFromBlock`), and every node's client version."""
    url = validators[0].proxy_url
    for validator in validators:
        with contextlib.suppress(OSError, RpcError):
            rpc_call(validator.proxy_url, "eth_blockNumber")
            url = validator.proxy_url
            break
    head = int(rpc_call(url, "eth_blockNumber"), 16)
    members = [str(address).lower() for address in rpc_call(url, "istanbul_getValidators")]
    stamps: list[int] = []
    not_committed: dict[str, list[int]] = {address: [] for address in members}
    for number in range(1, head + 1):
        block = rpc_call(url, "eth_getBlockByNumber", [hex(number), False])
        stamps.append(int(block["timestamp"], 16))
        signers = rpc_call(url, "istanbul_getCommitSignersFromBlock", [hex(number)])
        committed = {str(address).lower() for address in signers["Committers"]}
        for address in members:
            if address not in committed:
                not_committed[address].append(number)
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    elapsed = round((stamps[-1] - stamps[0]) / block_time) if stamps else 0
    versions = []
    for validator in validators:
        try:
            versions.append(str(rpc_call(validator.proxy_url, "web3_clientVersion")))
        except (OSError, RpcError) as exc:
            versions.append(f"not answering ({exc})")
    return Summary(
        head=head,
        longest_interval=max(intervals, default=0),
        missed_slots=max(elapsed - max(len(stamps) - 1, 0), 0),
        not_committed=not_committed,
        versions=versions,
    )


def print_summary(
    summary: Summary, validators: list[Validator], addresses: list[str], printer: Printer
) -> None:
    """The summary as lines, one per validator after the chain's figures."""
    printer.say("summary, read from the chain")
    printer.line(f"blocks produced      {summary.head}")
    printer.line(f"block slots missed   {summary.missed_slots}")
    printer.line(f"longest interval     {summary.longest_interval} s")
    for validator, address, version in zip(validators, addresses, summary.versions, strict=True):
        missed = summary.not_committed.get(address, [])
        printer.line(
            f"{validator.name} {address}  runs {version}  did not commit: {_ranges(missed)}"
        )


def _stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


def _kill_leftover_node(validator: Validator) -> None:
    """The node a daemon could not stop (it runs in a session of its own)."""
    record = validator.home / "wemixvisor" / "state" / "node.pid"
    try:
        pid = msgspec.json.decode(record.read_bytes()).get("pid")
    except (OSError, msgspec.DecodeError, AttributeError):
        return
    if not isinstance(pid, int) or pid <= 1:
        return
    try:  # only that node: a recorded pid may have been reused since
        if not any(str(validator.home) in part for part in psutil.Process(pid).cmdline()):
            return
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


def run(
    root: Path,
    count: int,
    *,
    window: int,
    block_time: float,
    web_port: int,
    duration: float | None,
    exit_when_done: bool,
    out: IO[str] = sys.stdout,
) -> int:
    """Play the validator-set demo in `root` (wiped first); the exit code (1: the upgrade did
    not end on every node)."""
    printer = Printer(out)
    from loguru import logger  # noqa: PLC0415

    logger.remove()  # the subscribers' reconnection notes would drown the events
    logger.add(sys.stderr, level="WARNING")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    height = LEAD + window
    genesis, upgrade = anvil_binary(GENESIS_VERSION), anvil_binary(UPGRADE_VERSION)
    validators = [
        Validator(index, root / f"v{index}", free_port(), free_port()) for index in range(count)
    ]
    stop = threading.Event()
    stop_requested = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    followers: list[threading.Thread] = []
    console: subprocess.Popen[bytes] | None = None
    network: WbftNetwork | None = None
    finished = False
    try:
        printer.say(
            f"{count} validators (quorum {quorum_size(count)}), each a home with anvil "
            f"{GENESIS_VERSION} and {UPGRADE_NAME} installed, under {root}"
        )
        for validator in validators:
            _prepare(validator, genesis, upgrade)
            _start_daemon(validator)
            follower = threading.Thread(
                target=_follow_events, args=(validator, printer, stop), daemon=True
            )
            follower.start()
            followers.append(follower)
        for validator in validators:
            wait_for_rpc(validator.node_url, timeout=60)
        printer.say(
            "every daemon runs its anvil; their RPC (the network's proxies) answers once the "
            "network runs"
        )
        console = _start_console(validators, root, web_port, printer)
        specs = [NodeSpec(v.node_url, proxy_port=v.proxy_port) for v in validators]
        network = WbftNetwork(specs, block_time=block_time, fork_block=height).start()
        names = {address: v.name for address, v in zip(network.addresses, validators, strict=True)}
        printer.say(
            f"the WBFT network double mines a block every {block_time:g} s while "
            f"{network.quorum} of {count} validators answer; block {height} (the fork) only on "
            f"anvil {UPGRADE_VERSION}"
        )
        network.wait_for_height(1, timeout=60)
        _schedule_everywhere(validators, height, window, printer)
        head = network.status().head or 0
        opens = height - window
        if head >= opens - 2:
            raise RuntimeError(
                f"scheduling took until block {head}, the window opens at {opens}: "
                "the machine is too slow for this window; try a larger --window"
            )
        printer.say(
            f"each daemon takes its slot in blocks {opens}-{height - 2} (its validator index) "
            "and switches while the others keep the quorum; watch the console's fleet view"
        )
        limit = time.monotonic() + (height + AFTER) * block_time + 120
        end = None if duration is None else time.monotonic() + duration
        previous: tuple[object, ...] = ()
        while not stop_requested.is_set():
            if end is not None and time.monotonic() >= end:
                break
            if not finished and time.monotonic() > limit:
                printer.say("the upgrade did not end on every node in time")
                break
            try:
                status = network.wait_for_ticks(1, timeout=max(5.0, 3 * block_time))
            except TimeoutError:
                continue
            shown = (status.halted, tuple(node.committing for node in status.nodes))
            if status.head is not None and (shown != previous or status.head % 10 == 0):
                printer.line(_committers_line(status, names))
                previous = shown
            if not finished and _done(status, height):
                try:
                    summary = read_summary(validators, block_time)
                except (OSError, RpcError, KeyError, TypeError, ValueError) as exc:
                    printer.line(f"the chain could not be read ({exc}); again at the next block")
                    continue
                finished = True
                print_summary(summary, validators, network.addresses, printer)
                if exit_when_done:
                    break
                printer.say(
                    "the daemons keep supervising; Ctrl-C stops the demo"
                    + (f" (or it stops by itself after {duration:g}s)" if duration else "")
                )
    finally:
        printer.say("stopping the console, the daemons (each stops its node first), the network")
        _stop_process(console, 10)
        codes = [_stop_process(validator.daemon, _STOP_GRACE) for validator in validators]
        for validator in validators:
            _kill_leftover_node(validator)
        if network is not None:
            network.stop()
        stop.set()
        for follower in followers:
            follower.join(5)
    printer.line(f"daemons exited with {codes}; their logs: {root}/v*/daemon.log")
    return 0 if finished and all(code == 0 for code in codes) else 1


def _validator_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of validators, got {text[:40]!r}") from None
    if not 1 <= count <= MAX_VALIDATORS:
        raise argparse.ArgumentTypeError(f"1-{MAX_VALIDATORS} validators, got {count}")
    return count


def _window(text: str) -> int:
    try:
        window = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a window in blocks, got {text[:40]!r}") from None
    if not 4 <= window <= 1000:
        raise argparse.ArgumentTypeError(f"a window of 4-1000 blocks, got {window}")
    return window


def _block_time(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a block time in seconds, got {text[:40]!r}") from None
    if not 0.5 <= seconds <= 10:  # a daemon restarting its node needs a moment per block
        raise argparse.ArgumentTypeError(f"a block time of 0.5-10 seconds, got {text[:40]}")
    return seconds


def parser() -> argparse.ArgumentParser:
    """The command line of the validator-set demo."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo.sh --validators N", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--validators", type=_validator_count, required=True, metavar="N")
    parser.add_argument("--home", type=Path, default=_REPO / "demo-fleet", help="wiped first")
    parser.add_argument("--window", type=_window, default=20, metavar="W", help="blocks")
    parser.add_argument("--block-time", type=_block_time, default=1.0, metavar="SECONDS")
    parser.add_argument("--web-port", type=int, default=8731, help="the web console's port")
    parser.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    parser.add_argument(
        "--exit-when-done", action="store_true", help="stop once the summary is printed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and play the demo."""
    args = parser().parse_args(argv)
    try:
        return run(
            args.home.resolve(),
            args.validators,
            window=args.window,
            block_time=args.block_time,
            web_port=args.web_port,
            duration=args.duration,
            exit_when_done=args.exit_when_done,
        )
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
