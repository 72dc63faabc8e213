"""The validator-set demo (`scripts/demo.sh --validators 4`) end to end: four real daemons on
the WBFT network double upgrade in a rolling window; the console's fleet view shows each
daemon's slot and verdict in headless Chromium; the summary read from the chain reports every
node on the new binary; Ctrl-C ends it with every process it started gone.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devtools import fleet_demo
from devtools.anvil import free_port
from tests.control_harness import short_root
from tests.web_harness import CHROMEDRIVER, CHROMIUM, chromium

_REPO = Path(__file__).resolve().parent.parent
_URL = re.compile(r"open (http://127\.0\.0\.1:\d+/#token=\S+)")


class DemoRun:
    """`python -m devtools.demo --validators 4` running, its output collected line by line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines: list[str] = []
        self._changed = threading.Condition()
        env = {**os.environ, "PYTHONPATH": str(_REPO), "PYTHONUNBUFFERED": "1"}
        args = ["--validators", "4", "--home", str(root / "fleet"), "--duration", "300"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", *args, "--web-port", str(free_port())],
            cwd=_REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`, waiting up to `timeout` seconds."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = compiled.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and self._ended()):
                    tail = "\n".join(self.lines[-60:])
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{tail}")
                self._changed.wait(min(remaining, 1.0))

    def _ended(self) -> bool:
        return not self._reader.is_alive()

    def close(self) -> None:
        """Once the demo exited: the rest of its output read, the pipe closed."""
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoRun]:
    with short_root() as root:
        run = DemoRun(root)
        try:
            yield run
        finally:
            if run.process.poll() is None:
                run.process.send_signal(signal.SIGINT)
                try:
                    run.process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    run.process.kill()
                    run.process.wait(timeout=10)
            run.close()


def _slot_rows(driver: object) -> list[list[str]]:
    script = (
        "return [...document.querySelectorAll('#slots tbody tr')]"
        ".map(r => [...r.children].map(c => c.textContent));"
    )
    rows: list[list[str]] = driver.execute_script(script)  # type: ignore[attr-defined]
    return rows


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)",
)
def test_the_fleet_view_shows_each_validators_slot_verdict_and_eta(demo: DemoRun) -> None:
    url = demo.wait_line(_URL.pattern, timeout=180).group(1)
    driver = chromium()
    try:
        driver.get(url)
        deadline = time.monotonic() + 120
        slots: dict[str, list[str]] = {}
        while time.monotonic() < deadline and len(slots) < 4:
            for row in _slot_rows(driver):
                if "/4, blocks " in row[2]:
                    slots.setdefault(row[0], row)
            time.sleep(0.2)
        assert sorted(slots) == ["v0", "v1", "v2", "v3"], (slots, demo.output()[-3000:])
        # Slot i of 4 is validator i's (validator-index order), none overlapping.
        ranges = []
        for index in range(4):
            daemon, plan, slot, verdict, eta = slots[f"v{index}"]
            assert plan.startswith("v1.7.1 @ ") and "(window 20)" in plan, plan
            assert slot.startswith(f"{index + 1}/4, blocks "), slot
            first, last = (int(n) for n in slot.split("blocks ")[1].split("-"))
            ranges.append((first, last))
            assert verdict, slots
            assert eta == "now" or " blocks, ETA " in eta, eta
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), ranges
        fleet = driver.execute_script(
            "return [...document.querySelectorAll('#fleet tbody tr')]"
            ".map(r => [r.dataset.daemon, r.children[3].textContent]);"
        )
        for daemon, validator in fleet:
            assert re.fullmatch(rf"validator #{daemon[1]} 0x[0-9a-f]{{40}}", validator), fleet
        # Each daemon's plan ends as done, in the same table.
        deadline = time.monotonic() + 180
        done: set[str] = set()
        while time.monotonic() < deadline and len(done) < 4:
            done = {row[0] for row in _slot_rows(driver) if row[3] == "done"}
            time.sleep(0.3)
        assert done == {"v0", "v1", "v2", "v3"}, (_slot_rows(driver), demo.output()[-3000:])
        assert driver.find_elements("css selector", "main img") == []
    finally:
        driver.quit()


def test_the_summary_reports_every_node_on_the_new_binary_and_ctrl_c_ends_it_all(
    demo: DemoRun,
) -> None:
    demo.wait_line(r"=== summary, read from the chain", timeout=240)
    versions = [demo.wait_line(rf"^v{i} 0x[0-9a-f]{{40}}  runs (\S+)", 30) for i in range(4)]
    assert [found.group(1) for found in versions] == ["anvil/v1.7.1"] * 4
    demo.wait_line(r"^block slots missed +\d+$", 5)
    longest = int(demo.wait_line(r"^longest interval +(\d+) s", 5).group(1))
    produced = int(demo.wait_line(r"^blocks produced +(\d+)", 5).group(1))
    assert produced >= fleet_demo.LEAD + 20 + fleet_demo.AFTER, demo.output()[-2000:]
    # The rolling window keeps the chain going: no interval over two block times.
    assert longest <= 2, demo.output()[-2000:]
    for index in range(4):
        completed = rf"^\[v{index}\] \S+ upgrade\.completed "
        assert re.search(completed, demo.output(), re.M), demo.output()[-3000:]
    demo.wait_line(r"Ctrl-C stops the demo", 10)
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=120) == 0, demo.output()[-2000:]
    demo.wait_line(r"daemons exited with \[0, 0, 0, 0\]", 10)
    left = [
        process.info["pid"]
        for process in psutil.process_iter(["pid", "cmdline"])
        if any(str(demo.root) in part for part in process.info["cmdline"] or [])
    ]
    assert left == [], (left, demo.output()[-2000:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validators", "0"], "1-8 validators"),
        (["--validators", "9"], "1-8 validators"),
        (["--validators", "-4"], "1-8 validators"),
        (["--validators", "four"], "a number of validators"),
        (["--validators", "9" * 5000], "a number of validators"),
        (["--validators", "4", "--window", "3"], "a window of 4-1000 blocks"),
        (["--validators", "4", "--window", "x" * 5000], "a window in blocks"),
        (["--validators", "4", "--block-time", "0.01"], "a block time of 0.5-10 seconds"),
        (["--validators", "4", "--block-time", "nan"], "a block time of 0.5-10 seconds"),
        (["--validators", "4", "--block-time", "inf"], "a block time of 0.5-10 seconds"),
    ],
)
def test_bad_demo_arguments_are_refused_before_anything_starts(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as usage:
        fleet_demo.main([*args, "--home", str(tmp_path / "fleet")])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err) < 2000, err
    assert not (tmp_path / "fleet").exists()


def test_blocks_not_committed_are_shown_as_ranges() -> None:
    assert fleet_demo._ranges([]) == "none"
    assert fleet_demo._ranges([7]) == "7"
    assert fleet_demo._ranges([3, 4, 5, 9, 11, 12]) == "3-5, 9, 11-12"
