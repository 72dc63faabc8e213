"""The web console in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by scripts/setup.sh) driven by Selenium, over a real daemon running
real anvil nodes (SPEC §17, §18).

The operator opens the URL `wemixvisor web --print-url` prints, sees the node and its head
advance, schedules an upgrade through the form (after a confirmation naming the height), and
watches the upgrade's steps until the node runs the new binary. Text from the daemon or the
chain is shown as text: markup in a log line or a plan's info runs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.anvil import free_port
from tests.control_harness import control_endpoint, make_home, short_root, wait_status
from tests.daemon_harness import Daemon
from tests.web_harness import CHROMEDRIVER, CHROMIUM, WebConsole, chromium, start_anvil_daemon
from wemixvisor.control import ControlClient
from wemixvisor.home.layout import Home, add_upgrade

XSS = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)",
)


@dataclass
class Browser:
    home: Path
    daemon: Daemon
    console: WebConsole
    driver: Any

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element("id", element_id).text)

    def wait(self, what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception:  # the page is redrawing: ask again
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what} not seen within {timeout}s; page: {self.body()[:2000]}")

    def row_text(self, selector: str) -> str:
        """The text of the first element matching `selector` now ("" if none): read in one
        go, as the page redraws its tables every second."""
        script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
        return str(self.driver.execute_script(script, selector))

    def click(self, selector: str) -> None:
        """Click the element matching `selector` (found again if the page redrew it)."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked() -> bool:
            try:
                self.driver.find_element("css selector", selector).click()
            except StaleElementReferenceException:
                return False
            return True

        self.wait(f"a click on {selector}", clicked)

    def body(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def head(self) -> int | None:
        text = self.text("head")
        return int(text) if text.isdigit() else None

    def no_alert(self) -> None:
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            _ = self.driver.switch_to.alert.text


@pytest.fixture(scope="module")
def browser(anvil_bin_1_5_1: Path, anvil_bin_1_7_1: Path) -> Iterator[Browser]:
    with short_root() as root:
        home = make_home(root, anvil_bin_1_5_1)
        add_upgrade(Home(root=home, name="anvil", data_dir=home / "data"), "v171", anvil_bin_1_7_1)
        daemon = start_anvil_daemon(home, free_port())
        driver = None
        try:
            with ControlClient(control_endpoint(home), timeout=2.0) as client:
                wait_status(client, lambda s: s["node"]["state"] == "RUNNING", timeout=60)
            with WebConsole(home) as console:
                console.wait_ready()
                driver = chromium()
                driver.get(f"{console.base}/#token={console.token}")
                yield Browser(home, daemon, console, driver)
        finally:
            if driver is not None:
                driver.quit()
            daemon.kill()


def test_the_page_shows_the_node_running_and_its_head_advancing(browser: Browser) -> None:
    browser.wait("RUNNING", lambda: browser.text("node-state") == "RUNNING")
    first = browser.wait("a head", browser.head)
    browser.wait("the head advancing", lambda: (browser.head() or 0) > first)
    # The token left the address bar and lives in the tab's session only.
    assert "token" not in browser.driver.current_url
    stored = browser.driver.execute_script("return sessionStorage.getItem('wemixvisor.token')")
    assert stored == browser.console.token
    assert browser.driver.get_cookies() == []
    browser.wait("the fleet row", lambda: "RUNNING" in browser.row_text("#fleet tbody tr"))
    rows = browser.driver.execute_script(
        "return document.querySelectorAll('#fleet tbody tr').length"
    )
    assert rows == 1
    browser.wait(
        "a block-time chart",
        lambda: browser.driver.find_elements("css selector", "#chart polyline"),
        timeout=20,
    )


def test_scheduling_through_the_form_asks_for_a_confirmation_naming_the_height(
    browser: Browser,
) -> None:
    head = browser.wait("a head", browser.head)
    height = head + 5000
    driver = browser.driver
    driver.find_element("id", "schedule-name").send_keys("later")
    driver.find_element("id", "schedule-height").send_keys(str(height))
    driver.find_element("css selector", "#schedule-form button").click()
    question = browser.wait("the confirmation", lambda: browser.text("confirm-text"))
    assert f"at height {height}" in question and "ETA" in question
    listed = browser.console.get("/api/v1/upgrades").json()["plans"]
    assert [p for p in listed if p["name"] == "later"] == [], "nothing before the confirmation"
    driver.find_element("id", "confirm-yes").click()
    row = browser.wait("the plan's row", lambda: browser.row_text("#plans tr[data-plan='later']"))
    assert str(height) in row and "blocks" in row
    plans = browser.console.get("/api/v1/upgrades").json()["plans"]
    assert [(p["name"], p["height"], p["status"]) for p in plans] == [("later", height, "pending")]

    browser.click("button[data-cancel='later']")
    assert f"height {height}" in browser.wait(
        "the cancel question", lambda: browser.text("confirm-text")
    )
    driver.find_element("id", "confirm-yes").click()
    browser.wait(
        "the plan cancelled",
        lambda: [
            p
            for p in browser.console.get("/api/v1/upgrades").json()["plans"]
            if p["name"] == "later" and p["status"] == "cancelled"
        ],
    )


def test_markup_from_the_node_or_a_plan_is_shown_as_text_and_runs_nothing(
    browser: Browser,
) -> None:
    with (browser.home / "logs" / "node.log").open("a") as log:
        log.write(f"peer said {XSS}\n")
    browser.wait("the log line", lambda: XSS in browser.text("logs"))
    info = {"note": XSS}
    head = browser.wait("a head", browser.head)
    scheduled = browser.console.client.post(
        "/api/v1/upgrades", json={"name": "marked", "height": head + 6000, "info": info}
    )
    assert scheduled.status_code == 200, scheduled.text
    browser.wait(
        "the plan's info",
        lambda: (
            XSS in browser.driver.find_element("css selector", "#plans tr[data-plan='marked']").text
        ),
    )
    # A name the daemon refuses: its reason, quoting the name, is shown as text too.
    driver = browser.driver
    name = driver.find_element("id", "schedule-name")
    name.clear()
    name.send_keys(XSS)
    height = driver.find_element("id", "schedule-height")
    height.clear()
    height.send_keys(str(head + 7000))
    driver.find_element("css selector", "#schedule-form button").click()
    browser.wait("the confirmation", lambda: XSS in browser.text("confirm-text"))
    driver.find_element("id", "confirm-yes").click()
    browser.wait("the refusal", lambda: "bad_request" in browser.text("message"))
    assert driver.find_elements("css selector", "main img") == []
    browser.no_alert()
    assert browser.console.client.delete("/api/v1/upgrades/marked").status_code == 200


def test_an_upgrade_shows_its_steps_live_and_ends_on_the_new_version(browser: Browser) -> None:
    driver = browser.driver
    head = browser.wait("a head", browser.head)
    height = head + 8  # time to see the plan waiting, with its readiness
    name = driver.find_element("id", "schedule-name")
    name.clear()
    name.send_keys("v171")
    field = driver.find_element("id", "schedule-height")
    field.clear()
    field.send_keys(str(height))
    driver.find_element("css selector", "#schedule-form button").click()
    browser.wait("the confirmation", lambda: f"height {height}" in browser.text("confirm-text"))
    driver.find_element("id", "confirm-yes").click()
    row = browser.wait("the plan's row", lambda: browser.row_text("#plans tr[data-plan='v171']"))
    assert "binary staged: yes" in row and "hooks present: yes" in row, row
    assert "checksum verified: not downloaded" in row, row
    browser.wait(
        "the saga's first steps",
        lambda: driver.find_elements("css selector", "#saga li"),
        timeout=60,
    )
    assert "v171" in browser.text("saga-title")
    browser.wait(
        "upgrade completed",
        lambda: driver.find_elements("css selector", "#saga li[data-step='completed']"),
        timeout=90,
    )
    steps = [
        item.get_attribute("data-step") for item in driver.find_elements("css selector", "#saga li")
    ]
    assert len(steps) >= 3, steps
    browser.wait("the new binary", lambda: "1.7.1" in browser.text("node-version"), timeout=30)
    browser.wait("RUNNING again", lambda: browser.text("node-state") == "RUNNING")


def test_without_a_token_the_page_asks_for_it_once(browser: Browser) -> None:
    driver = browser.driver
    driver.execute_script("sessionStorage.clear()")
    driver.get(browser.console.base + "/")
    browser.wait("the token question", lambda: driver.find_element("id", "login").is_displayed())
    assert not driver.find_element("id", "console").is_displayed()
    field = driver.find_element("id", "login-token")
    field.send_keys("not-the-token")
    driver.find_element("css selector", "#login-form button").click()
    browser.wait("the refusal", lambda: "refused" in browser.text("login-error"))
    field.send_keys(browser.console.token)
    driver.find_element("css selector", "#login-form button").click()
    browser.wait("RUNNING", lambda: browser.text("node-state") == "RUNNING")
    assert driver.execute_script("return sessionStorage.getItem('wemixvisor.token')") == (
        browser.console.token
    )
