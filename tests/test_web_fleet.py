"""One console, several daemons (SPEC §18): two homes, each with its own daemon, in one fleet
table and under `/api/v1/daemons/{id}/…`; a client that stops reading its event stream slows
nobody else down. Beta's node names itself with markup, which the page shows as text."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_harness import (
    control_endpoint,
    make_home,
    short_root,
    sleeper_node,
    start_daemon,
    wait_status,
)
from tests.daemon_harness import Daemon
from tests.web_harness import CHROMEDRIVER, CHROMIUM, WebConsole, chromium, wait_http
from wemixvisor.control import ControlClient
from wemixvisor.web import daemon_id

XSS = '<img src=x onerror=alert(1)> "v9"&amp;'


def marked_node(root: Path) -> Path:
    """A stand-in node whose version line is markup; it runs until killed."""
    path = root / "anvil"
    path.write_text(
        "#!/bin/sh\n"
        f"case \"$1\" in version|--version) printf '%s\\n' '{XSS}'; exit 0;; esac\n"
        "exec sleep 600\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[list[Path], WebConsole]]:
    with short_root() as root:
        homes: list[Path] = []
        daemons: list[Daemon] = []
        try:
            for name in ("alpha", "beta"):
                (root / name).mkdir()
                node = sleeper_node(root / name) if name == "alpha" else marked_node(root / name)
                home = make_home(root / name, node)
                homes.append(home)
                daemons.append(start_daemon(home))
            for home in homes:
                with ControlClient(control_endpoint(home), timeout=2.0) as client:
                    wait_status(client, lambda s: s["node"]["state"] == "RUNNING", timeout=60)
            connect = [f"alpha={control_endpoint(homes[0])}", control_endpoint(homes[1])]
            with WebConsole(root / "alpha" / "home", connect=connect) as console:
                console.wait_ready()
                yield homes, console
        finally:
            for daemon in daemons:
                daemon.kill()


def test_every_daemon_has_a_stable_id_and_its_own_routes(
    fleet: tuple[list[Path], WebConsole],
) -> None:
    homes, console = fleet
    beta = daemon_id(control_endpoint(homes[1]))
    daemons = console.get("/api/v1/daemons").json()["daemons"]
    assert [(d["id"], d["reachable"]) for d in daemons] == [("alpha", True), (beta, True)]
    assert daemons[1]["events_endpoint"] == f"ipc://{homes[1]}/wemixvisor/events.sock"
    for ident, home in (("alpha", homes[0]), (beta, homes[1])):
        status = console.get(f"/api/v1/daemons/{ident}/status").json()
        assert status["daemon"]["home"] == str(home)
    # The unprefixed routes address the first daemon.
    assert console.get("/api/v1/status").json()["daemon"]["home"] == str(homes[0])
    scheduled = console.client.post(
        f"/api/v1/daemons/{beta}/upgrades", json={"name": "only-beta", "height": 10_000}
    )
    assert scheduled.status_code == 200, scheduled.text
    beta_plans = console.get(f"/api/v1/daemons/{beta}/upgrades").json()["plans"]
    alpha_plans = console.get("/api/v1/daemons/alpha/upgrades").json()["plans"]
    assert [p["name"] for p in beta_plans] == ["only-beta"] and alpha_plans == []
    assert console.client.delete(f"/api/v1/daemons/{beta}/upgrades/only-beta").status_code == 200


def test_an_event_stream_client_that_stops_reading_slows_nobody(
    fleet: tuple[list[Path], WebConsole],
) -> None:
    _homes, console = fleet
    stalled = console.client.stream("GET", "/api/v1/daemons/alpha/events", params={"since": 1})
    response = stalled.__enter__()
    try:
        assert response.status_code == 200
        # Heartbeats every 200 ms keep coming; this client reads none of them.
        worst = 0.0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            began = time.monotonic()
            assert console.get("/api/v1/daemons/alpha/status").status_code == 200
            worst = max(worst, time.monotonic() - began)
        assert worst < 1.0, f"a status took {worst:.3f}s"
        with console.client.stream("GET", "/api/v1/daemons/alpha/events") as live:
            lines = live.iter_lines()
            assert any(line.startswith("data: ") for line, _ in zip(lines, range(50), strict=False))
    finally:
        stalled.__exit__(None, None, None)
    wait_http(console, "/api/v1/status", 200)


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)",
)
def test_the_page_puts_every_daemon_in_the_fleet_table(
    fleet: tuple[list[Path], WebConsole],
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    homes, console = fleet
    beta = daemon_id(control_endpoint(homes[1]))
    driver = chromium()
    try:
        driver.get(f"{console.base}/#token={console.token}")
        rows_script = (
            "return [...document.querySelectorAll('#fleet tbody tr')]"
            ".map(r => [r.dataset.daemon, r.innerText]);"
        )
        deadline = time.monotonic() + 30
        rows: list[list[str]] = []
        while time.monotonic() < deadline:
            rows = driver.execute_script(rows_script)
            if len(rows) == 2 and all("RUNNING" in text for _, text in rows):
                break
            time.sleep(0.1)
        assert [ident for ident, _ in rows] == ["alpha", beta], rows
        assert all("RUNNING" in text for _, text in rows), rows
        # No window plan anywhere yet; then one on alpha, whose node has no chain: its slot is
        # not taken and its ETA unknown (no head), in the fleet's slots table.
        assert driver.find_element("id", "slots-none").is_displayed()
        deadline = time.monotonic() + 30
        plan = {"name": "rolling", "height": 9000, "mode": "window", "window": 50}
        scheduled = console.client.post("/api/v1/daemons/alpha/upgrades", json=plan)
        assert scheduled.status_code == 200, scheduled.text
        slots_script = (
            "return [...document.querySelectorAll('#slots tbody tr')]"
            ".map(r => [...r.children].map(c => c.textContent));"
        )
        slots: list[list[str]] = []
        while time.monotonic() < deadline and not slots:
            slots = driver.execute_script(slots_script)
            time.sleep(0.1)
        assert slots == [
            [
                "alpha",
                "rolling @ 9000 (window 50)",
                "not taken yet",
                "surveyed when the window opens",
                "unknown",
            ]
        ], slots
        assert not driver.find_element("id", "slots-none").is_displayed()
        # Beta's version, markup from the node, is text in its cell.
        while time.monotonic() < deadline and XSS not in rows[1][1]:
            rows = driver.execute_script(rows_script)
            time.sleep(0.1)
        assert XSS in rows[1][1], rows
        assert driver.find_elements("css selector", "main img, main b") == []
        with pytest.raises(NoAlertPresentException):
            _ = driver.switch_to.alert.text
        assert console.client.delete("/api/v1/daemons/alpha/upgrades/rolling").status_code == 200
        deadline = time.monotonic() + 30
        driver.execute_script(
            "document.querySelector(`#fleet tr[data-daemon='${arguments[0]}'] button`).click()",
            beta,
        )
        while time.monotonic() < deadline:
            if driver.find_element("id", "daemon-id").text == beta:
                break
            time.sleep(0.1)
        assert driver.find_element("id", "daemon-id").text == beta
    finally:
        driver.quit()
