"""The systemd units in configs/ (every `*.service`, the daemon's and the web console's): they
pass `systemd-analyze verify` without a warning, stay under an exposure threshold of
`systemd-analyze security`, carry the hardening an operator expects, and the daemon's unit lets
the daemon stop its node itself before systemd loses patience."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wemixvisor.config import load_config
from wemixvisor.config.values import parse_duration

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
UNITS = sorted(CONFIGS.glob("*.service"))
# systemd-analyze security: 0 (locked down) … 10 (exposed); the threshold is in tenths.
MAX_EXPOSURE = 25
# What the daemon needs beyond the node's grace to stop its actors and exit.
STOP_MARGIN = 30.0
_EXEC_WEMIXVISOR = re.compile(r"^(Exec\w+=[-@+!:]*)(\S*/)?wemixvisor(?=\s|$)", re.MULTILINE)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value given (a key may repeat); continuation lines joined."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def last(unit: Unit, section: str, key: str) -> str | None:
    values = unit.get(section, {}).get(key)
    return values[-1] if values else None


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def systemd_analyze() -> str:
    """The tool, or a skip when it is absent and cannot be installed here (not root); a failure
    when scripts/setup.sh should have installed it."""
    path = shutil.which("systemd-analyze")
    if path is not None:
        return path
    if os.geteuid() == 0:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd")
    pytest.skip("systemd-analyze is missing and installing Debian's systemd needs root")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def installed_copy(unit: Path, directory: Path) -> Path:
    """The unit as installed on this machine, beside every other unit of configs/ (one may name
    another in After= or Requires=): `verify` insists that ExecStart's program exists, so the
    wemixvisor path becomes the one installed here; nothing else changes."""
    program = Path(sys.executable).parent / "wemixvisor"
    assert program.exists(), f"{program}: the project is not installed in this environment"
    for other in [*UNITS, unit]:  # `unit` last: it may stand in for one of configs/
        text = _EXEC_WEMIXVISOR.sub(rf"\g<1>{program}", other.read_text())
        (directory / other.name).write_text(text)
    return directory / unit.name


def seconds(timespan: str) -> float:
    """A systemd time span (`90s`, `1min 30s`) as systemd itself reads it."""
    result = analyze("timespan", timespan)
    assert result.returncode == 0, result.stderr
    match = re.search(r"μs: (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1)) / 1e6


def test_every_unit_is_found() -> None:
    assert CONFIGS / "wemixvisor.service" in UNITS


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_passes_systemd_analyze_verify_without_a_warning(
    unit: Path, tmp_path: Path
) -> None:
    result = analyze("verify", str(installed_copy(unit, tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "wemixvisor.service"
    text = (CONFIGS / "wemixvisor.service").read_text()
    broken.write_text(text.replace("KillMode=process", "KillMode=procss"))
    installed = tmp_path / "installed"
    installed.mkdir()
    result = analyze("verify", str(installed_copy(broken, installed)))
    assert "kill mode" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_exposes_little_by_systemd_analyze_security(unit: Path, tmp_path: Path) -> None:
    result = analyze(
        "security",
        "--offline=true",
        f"--threshold={MAX_EXPOSURE}",
        str(installed_copy(unit, tmp_path)),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_runs_hardened_as_a_dedicated_user(unit: Path) -> None:
    parsed = parse_unit(unit.read_text())
    service = "Service"
    user = last(parsed, service, "User")
    assert user and user not in {"root", "0"}, "a dedicated user, never root"
    assert last(parsed, service, "NoNewPrivileges") == "true"
    assert last(parsed, service, "ProtectSystem") == "strict"
    assert last(parsed, service, "PrivateTmp") == "true"
    assert last(parsed, service, "ProtectHome") in {"true", "tmpfs", "read-only"}
    assert last(parsed, service, "Restart") in {"on-failure", "always"}
    home = environment(parsed).get("DAEMON_HOME")
    if home is not None:
        writable = " ".join(parsed[service].get("ReadWritePaths", [])).split()
        # The daemon writes all over its home; the console only its token under wemixvisor/.
        assert any(w == home or w.startswith(home + "/") for w in writable), (
            "the home (or the part of it the unit writes) must stay writable under "
            "ProtectSystem=strict"
        )


def daemon_units() -> list[Path]:
    """The units that run the daemon itself (`wemixvisor run`)."""
    return [
        unit
        for unit in UNITS
        if re.search(
            r"wemixvisor run\b", " ".join(parse_unit(unit.read_text())["Service"]["ExecStart"])
        )
    ]


@pytest.mark.parametrize("unit", daemon_units(), ids=lambda p: p.name)
def test_the_daemon_stops_its_node_itself_within_systemds_timeout(unit: Path) -> None:
    parsed = parse_unit(unit.read_text())
    # systemd signals the daemon only; the daemon stops the node's group after the grace.
    assert last(parsed, "Service", "KillMode") == "process"
    assert last(parsed, "Service", "KillSignal") in {None, "SIGTERM"}
    env = environment(parsed)
    grace_text = env.get("DAEMON_SHUTDOWN_GRACE")
    grace = (
        parse_duration(grace_text)
        if grace_text is not None
        else load_config(env={"DAEMON_HOME": "/var/lib/wemixd"}).node.shutdown_grace
    )
    timeout = last(parsed, "Service", "TimeoutStopSec")
    assert timeout is not None, "systemd's default (90 s) must not be left to chance"
    assert seconds(timeout) >= grace + STOP_MARGIN
