"""`upgrade schedule` says at once what the first preflight found, `--binary file://` works, and
`upgrade status NAME` shows one plan — with the daemon down (the files) and through a running
daemon (SPEC §4, §8, §12)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.control_harness import (
    control_endpoint,
    make_home,
    operator_cli,
    short_root,
    sleeper_node,
    start_daemon,
    wait_status,
)
from tests.daemon_harness import EventLog
from wemixvisor.control import ControlClient

HomeCli = Callable[..., tuple[int, str, str]]


def script(path: Path, version: str) -> Path:
    path.write_text(f"#!/bin/sh\necho anvil {version}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> HomeCli:
    def run(*argv: str, home: Path, **env: str) -> tuple[int, str, str]:
        return operator_cli(home, monkeypatch, capsys, **env)(*argv)

    return run


def test_with_the_daemon_down_schedule_reports_the_preflight_and_status_shows_one_plan(
    cli: HomeCli,
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        code, out, err = cli("upgrade", "schedule", "v2", "500", home=home)
        assert code == 0
        assert "preflight: 1 problem(s) to fix before height 500" in out
        assert f"preflight: new binary: binary {home}/wemixvisor/upgrades/v2/bin/anvil" in err
        assert "does not exist" in err

        assert cli("add-upgrade", "v3", str(script(root / "v3", "3.0")), home=home)[0] == 0
        code, out, _ = cli("upgrade", "schedule", "v3", "600", home=home)
        assert code == 0
        assert "preflight: ok" in out

        code, out, _ = cli("upgrade", "status", "v2", home=home)
        assert code == 0
        assert "plan        v2" in out
        assert "height      500" in out
        assert "in file, not yet seen by the daemon" in out
        assert "v3" not in out
        code, out, _ = cli("upgrade", "status", "v3", "--json", home=home)
        assert code == 0
        document = msgspec.json.decode(out)
        assert [(p["name"], p["height"]) for p in document["plans"]] == [("v3", 600)]
        assert document["journal"] is None

        code, _, err = cli("upgrade", "status", "nope", home=home)
        assert (code, err.strip()) == (
            1,
            "wemixvisor: no plan named 'nope' in the queue or the plan files",
        )
        assert cli("upgrade", "status", "../x", home=home)[0] == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "only http://, https:// and file:// URLs"),
        ("file://otherhost/x", "must name a local path"),
        ("file:relative/x", "need an absolute path"),
        ("https:///x", "has no host"),
        ("file:///x y", "without spaces"),
    ],
)
def test_a_binary_url_the_downloader_would_refuse_is_a_usage_error(
    cli: HomeCli, tmp_path: Path, url: str, message: str
) -> None:
    home = tmp_path / "home"
    code, _, err = cli(
        "upgrade",
        "schedule",
        "v2",
        "500",
        "--binary",
        url,
        "--checksum",
        "sha256:" + "0" * 64,
        home=home,
    )
    assert code == 2
    assert message in err


def test_through_the_daemon_a_file_binary_is_downloaded_and_a_missing_one_reported_at_once(
    cli: HomeCli,
) -> None:
    with short_root() as root:
        home = make_home(root, sleeper_node(root))
        env = {"DAEMON_ALLOW_DOWNLOAD_BINARIES": "true", "DAEMON_STARTSECS": "100ms"}
        daemon = start_daemon(home, **env)
        events = EventLog(daemon.events_endpoint)
        try:
            with ControlClient(control_endpoint(home), 5.0) as client:
                wait_status(client, lambda s: s["node"]["state"] == "RUNNING")
            code, out, err = cli("upgrade", "schedule", "v2", "500", home=home, **env)
            assert code == 0
            assert "in the daemon's queue" in out
            assert "preflight: 1 problem(s)" in out
            assert "upgrades/v2/bin/anvil does not exist" in err

            release = script(root / "anvil-4.0", "4.0")
            digest = hashlib.sha256(release.read_bytes()).hexdigest()
            code, out, err = cli(
                "upgrade", "schedule", "v4", "900",
                "--binary", f"file://{release}", "--checksum", f"sha256:{digest}",
                home=home, **env,
            )  # fmt: skip
            assert code == 0, err
            assert "preflight: ok" in out  # the download is under way, not a problem
            # The same plan again registers nothing, so there is nothing to check.
            code, out, _ = cli("upgrade", "schedule", "v2", "500", home=home, **env)
            assert (code, "(unchanged)" in out, "preflight" in out) == (0, True, False)
            events.wait_for("download.completed", lambda p: p["name"] == "v4", timeout=30)
            installed = home / "wemixvisor/upgrades/v4/bin/anvil"
            assert installed.read_bytes() == release.read_bytes()

            code, out, _ = cli("upgrade", "status", "v4", home=home, **env)
            assert code == 0
            assert "status      pending" in out
            assert f"file://{release}?checksum=sha256:{digest}" in out
        finally:
            events.close()
            daemon.kill()
