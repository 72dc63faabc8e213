"""Regenerate `docs/console.png`: the web console over a real daemon, in headless Chromium.

    python -m devtools.screenshot [--out docs/console.png]

A throw-away home runs anvil 1.5.1 under the daemon with an upgrade to 1.7.1 staged and a plan
for it a few hundred blocks ahead; `wemixvisor web` serves the console, which Debian's chromium
(driven through /usr/bin/chromedriver, nothing downloaded) opens with the token URL. The picture
is taken once the head has moved and the block-time chart has a few points.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from devtools.anvil import anvil_binary, free_port, wait_for_rpc

_REPO = Path(__file__).resolve().parent.parent
_CHROMIUM = "/usr/bin/chromium"
_CHROMEDRIVER = "/usr/bin/chromedriver"


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _wait_served(url: str, timeout: float = 30.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not served within {timeout}s")


def take(out: Path) -> None:
    """Write the screenshot to `out`."""
    from selenium import webdriver  # noqa: PLC0415 - a dev dependency, for this tool only
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="wv-shot-", dir="/tmp"))
    home = root / "home"
    processes: list[subprocess.Popen[bytes]] = []
    driver = None
    try:
        rpc_port, web_port = free_port(), free_port()
        env = {
            **os.environ,
            "DAEMON_HOME": str(home),
            "DAEMON_NAME": "anvil",
            "DAEMON_RPC_ADDRESS": f"http://127.0.0.1:{rpc_port}",
            "WEMIXVISOR_HEARTBEAT_INTERVAL": "5s",
        }
        _cli(env, "init", str(anvil_binary("1.5.1")))
        _cli(env, "add-upgrade", "v1.7.1", str(anvil_binary("1.7.1")))
        state = str(home / "data" / "state.json")
        node_args = ["--port", str(rpc_port), "--block-time", "1", "--state", state]
        log = (root / "daemon.log").open("ab")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "wemixvisor.bootstrap", *node_args],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        wait_for_rpc(f"http://127.0.0.1:{rpc_port}", timeout=30)
        _cli(env, "upgrade", "schedule", "v1.7.1", "400")
        listen = f"127.0.0.1:{web_port}"
        url = _cli(env, "web", "--listen", listen, "--print-url")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "wemixvisor.cli", "web", "--listen", listen],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        log.close()
        _wait_served(f"http://{listen}/")
        options = webdriver.ChromeOptions()
        options.binary_location = _CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1500"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=_CHROMEDRIVER))
        driver.get(url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            points = driver.execute_script(
                "const p = document.querySelector('#chart polyline');"
                "return p ? p.getAttribute('points').split(' ').length : 0;"
            )
            if isinstance(points, int) and points >= 8:
                break
            time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        if driver is not None:
            driver.quit()
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and take the screenshot."""
    parser = argparse.ArgumentParser(prog="python -m devtools.screenshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=_REPO / "docs" / "console.png")
    args = parser.parse_args(argv)
    take(args.out.resolve())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
