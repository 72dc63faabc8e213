"""`wemixvisor upgrade ...`, `show-upgrade-info` and `add-upgrade --height` as an operator runs
them with the daemon stopped (SPEC §4, §12): everything goes through the plan files and the
daemon's state files."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from devtools.anvil import AnvilProcess, rpc_call
from wemixvisor.cli import main
from wemixvisor.plans.platforms import current_platform
from wemixvisor.plans.queue import (
    Plan,
    PlanStatus,
    QueuedPlan,
    QueueState,
    decode_state,
    encode_state,
    plan_from_object,
)

SHA = "sha256:" + "ab" * 32


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: Callable[[], int]) -> Path:
    """An initialised home in tmp_path; the node's RPC points at a port nobody listens on."""
    for key in list(os.environ):
        if key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            monkeypatch.delenv(key)
    root = tmp_path / "home"
    monkeypatch.setenv("DAEMON_HOME", str(root))
    monkeypatch.setenv("DAEMON_NAME", "gwemix")
    monkeypatch.setenv("DAEMON_RPC_ADDRESS", f"http://127.0.0.1:{free_port()}")
    binary = tmp_path / "gwemix"
    binary.write_text("#!/bin/sh\necho gwemix 1.0\n")
    binary.chmod(0o755)
    assert main(["init", str(binary)]) == 0
    return root


@pytest.fixture
def new_binary(tmp_path: Path) -> Path:
    path = tmp_path / "gwemix-2"
    path.write_text("#!/bin/sh\necho gwemix 2.0\n")
    path.chmod(0o755)
    return path


def batch(home: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = msgspec.json.decode(
        (home / "data/upgrade-info.json.batch").read_bytes()
    )
    return entries


def write_queue(home: Path, *entries: QueuedPlan) -> None:
    (home / "wemixvisor/state/plans.json").write_bytes(
        encode_state(QueueState(plans=list(entries)))
    )


def read_queue(home: Path) -> QueueState:
    return decode_state((home / "wemixvisor/state/plans.json").read_bytes())


@pytest.fixture
def daemon_lock_held(home: Path) -> Iterator[int]:
    """What a running daemon does to its home: an exclusive flock on state/daemon.lock."""
    path = home / "wemixvisor/state/daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, b"4242\n", 0)
    try:
        yield 4242
    finally:
        os.close(fd)


def test_schedule_writes_the_plan_into_the_batch_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upgrade", "schedule", "v1.2.0", "1500000"]) == 0

    assert batch(home) == [{"name": "v1.2.0", "height": 1500000}]
    captured = capsys.readouterr()
    assert "scheduled upgrade 'v1.2.0' at height 1500000" in captured.out
    assert "the daemon reads it when it starts" in captured.out
    assert "head unknown" in captured.err


def test_a_daemon_starting_while_a_plan_is_scheduled_is_not_turned_away(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduling offline only writes the plan files: it does not hold the daemon's lock while
    it asks the chain for the head."""
    from wemixvisor.bootstrap import daemon_lock
    from wemixvisor.control.verbs import offline
    from wemixvisor.home.layout import Home

    started: list[bool] = []

    def head_while_a_daemon_starts(config: object) -> tuple[None, str]:
        with daemon_lock(Home(root=home, name="gwemix", data_dir=home / "data")):
            started.append(True)
        return None, "the node is down"

    monkeypatch.setattr(offline, "chain_head", head_while_a_daemon_starts)

    assert main(["upgrade", "schedule", "v2", "200"]) == 0
    assert started == [True]
    assert batch(home) == [{"name": "v2", "height": 200}]


def test_schedule_with_a_binary_url_and_checksum(home: Path) -> None:
    assert (
        main(
            [
                "upgrade",
                "schedule",
                "v2",
                "200",
                "--binary",
                "https://example.com/gwemix.tar.gz",
                "--checksum",
                SHA,
                "--info",
                '{"note": "hard fork"}',
            ]
        )
        == 0
    )

    (entry,) = batch(home)
    assert entry["info"] == {
        "note": "hard fork",
        "binaries": {current_platform(): f"https://example.com/gwemix.tar.gz?checksum={SHA}"},
    }


def test_schedule_merges_and_replaces_by_name(home: Path) -> None:
    (home / "data/upgrade-info.json.batch").write_text(
        '[{"name": "other", "height": 50, "info": {"x": 1}}, {"name": "v2", "height": 200}]'
    )

    assert main(["upgrade", "schedule", "v2", "300"]) == 0
    assert main(["upgrade", "schedule", "v3", "400"]) == 0

    assert batch(home) == [
        {"name": "other", "height": 50, "info": {"x": 1}},
        {"name": "v2", "height": 300},
        {"name": "v3", "height": 400},
    ]


def test_schedule_refuses_a_second_plan_at_the_same_height(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upgrade", "schedule", "v2", "300"]) == 0
    before = (home / "data/upgrade-info.json.batch").read_bytes()

    assert main(["upgrade", "schedule", "v3", "300"]) == 1

    assert "conflict: plan 'v2'" in capsys.readouterr().err
    assert (home / "data/upgrade-info.json.batch").read_bytes() == before


def test_schedule_refuses_a_plan_that_already_completed(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(
        home, QueuedPlan(plan=Plan(name="v2", height=100), status=PlanStatus.COMPLETED, result="ok")
    )

    assert main(["upgrade", "schedule", "v2", "500"]) == 1

    assert "already completed" in capsys.readouterr().err
    assert not (home / "data/upgrade-info.json.batch").exists()


def test_schedule_refuses_a_batch_file_it_cannot_understand(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "data/upgrade-info.json.batch").write_text('{"name": "v1"')

    assert main(["upgrade", "schedule", "v2", "300"]) == 1

    assert "fix or remove it" in capsys.readouterr().err
    assert (home / "data/upgrade-info.json.batch").read_text() == '{"name": "v1"'


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["../../x", "10"], "invalid name"),
        (["a/b", "10"], "invalid name"),
        ([".", "10"], "invalid name"),
        (["..", "10"], "invalid name"),
        (["x" * 65, "10"], "invalid name"),
        (["v\u00e9", "10"], "invalid name"),
        (["v2", "0"], "> 0"),
        (["v2", "-1"], "not a decimal integer"),
        (["v2", "12a"], "not a decimal integer"),
        (["v2", str(2**63)], "out of range"),
        (["v2", "9" * 5000], "not a decimal integer"),
        (["v2", "10", "--info", "not json"], "--info is not valid JSON"),
        (["v2", "10", "--info", "[1, 2]"], "--info must be a JSON object, got an array"),
        (["v2", "10", "--info", "[" * 100_000], "--info is not valid JSON"),
        (["v2", "10", "--info", '{"a": "' + "x" * (1 << 20) + '"}'], "over the"),
        (["v2", "10", "--info", '{"binaries": {"any": 3}}'], "URL string"),
        (["v2", "10", "--checksum", SHA], "--checksum needs --binary"),
        (
            ["v2", "10", "--binary", "ftp://h/x", "--checksum", SHA],
            "only http://, https:// and file:// URLs",
        ),
        (["v2", "10", "--binary", "https://h/x y", "--checksum", SHA], "without spaces"),
        (["v2", "10", "--binary", "https://h/\udcff", "--checksum", SHA], "ASCII URL"),
        (["v2", "10", "--info", '{"a": "\udcff"}'], "not valid UTF-8"),
        (["v\udcff", "10"], "invalid name"),
        (["v2", "1\udcff"], "not a decimal integer"),
        (["v2", "10", "--binary", "https://h/x", "--checksum", "md5:abc"], "sha256:<64 hex"),
        (["v2", "10", "--binary", "https://h/x"], "has no checksum"),
        (
            ["v2", "10", "--binary", f"https://h/x?checksum={SHA}", "--checksum", SHA],
            "already carries",
        ),
    ],
)
def test_hostile_arguments_are_refused_and_nothing_is_written(
    home: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["upgrade", "schedule", *arguments]) == 2

    err = capsys.readouterr().err
    assert message in err
    assert len(err) < 1000
    assert not (home / "data/upgrade-info.json.batch").exists()
    assert sorted(p.name for p in (home / "data").iterdir()) == []


def test_schedule_refuses_a_passed_height_unless_now(
    home: Path,
    anvil: AnvilProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DAEMON_RPC_ADDRESS", anvil.url)
    rpc_call(anvil.url, "anvil_mine", ["0x14"])
    head = int(rpc_call(anvil.url, "eth_blockNumber"), 16)
    assert head >= 20

    assert main(["upgrade", "schedule", "v2", "10"]) == 1
    err = capsys.readouterr().err
    assert f"height 10 is due: the head ({head}) has passed or reached block 9" in err
    assert "use --now" in err
    assert not (home / "data/upgrade-info.json.batch").exists()

    assert main(["upgrade", "schedule", "v2", "10", "--now"]) == 0
    assert f"at once (already due: head {head} ≥ 9)" in capsys.readouterr().out
    assert batch(home) == [{"name": "v2", "height": 10}]

    # H is the new binary's first block: a node holding H-1 is already due.
    head = int(rpc_call(anvil.url, "eth_blockNumber"), 16)
    assert main(["upgrade", "schedule", "v4", str(head + 1)]) == 1
    assert f"is due: the head ({head}) has passed or reached block {head}" in (
        capsys.readouterr().err
    )
    assert main(["upgrade", "schedule", "v4", str(head + 2)]) == 0
    assert f"scheduled upgrade 'v4' at height {head + 2}" in capsys.readouterr().out

    assert main(["upgrade", "schedule", "v3", "100000"]) == 0
    assert "head unknown" not in capsys.readouterr().err


def test_list_shows_the_queue_and_plans_the_daemon_has_not_seen(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(
        home,
        QueuedPlan(plan=Plan(name="v1", height=100), status=PlanStatus.COMPLETED, result="ok"),
        QueuedPlan(plan=Plan(name="v2", height=200, source="control"), late=True),
    )
    (home / "data/upgrade-info.json").write_text('{"name": "v3", "height": 300}')
    (home / "data/upgrade-info.json.batch").write_text(
        '[{"name": "v2", "height": 200}, {"name": "v4", "height": 400},'
        ' {"name": "..", "height": 1}]'
    )

    assert main(["upgrade", "list"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    header = ["NAME", "HEIGHT", "SWITCHES", "ETA", "STATUS", "SOURCE", "LATE", "RESULT"]
    assert lines[0].split() == header
    assert lines[1].split() == ["v1", "100", "completed", "file", "ok"]
    # A late plan runs at once; one still ahead switches once the old binary holds H-1 (when
    # is unknown with the daemon down: nobody follows the head).
    assert lines[2].split() == ["v2", "200", "now", "pending", "control", "yes"]
    assert lines[3].split()[:8] == ["v3", "300", "after", "block", "299", "unknown", "in", "file"]
    assert "in file, not yet seen by the daemon" in lines[3]
    assert lines[4].split()[:7] == ["v4", "400", "after", "block", "399", "unknown", "in"]
    assert "batch entry 2" in captured.err

    assert main(["upgrade", "list", "--json"]) == 0
    document = msgspec.json.decode(capsys.readouterr().out)
    # The same reply as the running daemon's `list_upgrades`: the one verb, run on the files.
    assert set(document) == {"daemon", "plans", "journal", "head", "problems", "block_time"}
    assert document["daemon"] == {"running": False, "pid": None}
    assert [(p["name"], p["status"]) for p in document["plans"]] == [
        ("v1", "completed"),
        ("v2", "pending"),
        ("v3", "in_file"),
        ("v4", "in_file"),
    ]
    assert document["plans"][1]["late"] is True


def test_list_with_nothing_anywhere(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upgrade", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no plans"


def test_list_reports_an_unreadable_queue(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "wemixvisor/state/plans.json").write_text("{not json")

    assert main(["upgrade", "list"]) == 1
    assert "cannot read the plan queue" in capsys.readouterr().err


def test_status_shows_pending_plans_and_the_journal(
    home: Path, capsys: pytest.CaptureFixture[str], daemon_lock_held: int
) -> None:
    write_queue(
        home,
        QueuedPlan(plan=Plan(name="v1", height=100), status=PlanStatus.RUNNING),
        QueuedPlan(plan=Plan(name="v2", height=200)),
    )
    journal = {"name": "v1", "height": 100, "step": "backup", "attempt": 1}
    (home / "wemixvisor/state/journal.json").write_text(msgspec.json.encode(journal).decode())

    assert main(["upgrade", "status"]) == 0
    out = capsys.readouterr().out
    assert f"daemon: running (pid {daemon_lock_held})" in out
    assert "v2 at height 200 (file): switches after block 199" in out
    assert "v1 at height" not in out
    assert 'step: "backup"' in out

    assert main(["upgrade", "status", "--json"]) == 0
    document = msgspec.json.decode(capsys.readouterr().out)
    assert document["daemon"] == {"running": True, "pid": daemon_lock_held}
    assert [p["name"] for p in document["pending"]] == ["v2"]
    assert document["journal"] == journal


def test_status_without_anything(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upgrade", "status"]) == 0
    out = capsys.readouterr().out
    assert "daemon: not running" in out
    assert "pending: none" in out
    assert "upgrade in progress: none" in out


def test_status_names_an_unreadable_journal_and_fails(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(home, QueuedPlan(plan=Plan(name="v2", height=200)))
    (home / "wemixvisor/state/journal.json").write_text("{half")

    assert main(["upgrade", "status"]) == 1
    captured = capsys.readouterr()
    assert "v2 at height 200 (file)" in captured.out
    assert "journal" in captured.err
    assert "is not valid JSON" in captured.err

    assert main(["upgrade", "status", "--json"]) == 1
    document = msgspec.json.decode(capsys.readouterr().out)
    assert document["journal"] is None
    assert "is not valid JSON" in document["journal_error"]


def test_cancel_marks_the_plan_cancelled_and_removes_it_from_the_files(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(home, QueuedPlan(plan=Plan(name="v2", height=200)))
    (home / "data/upgrade-info.json").write_text('{"name": "v2", "height": 200}')
    (home / "data/upgrade-info.json.batch").write_text(
        '[{"name": "v2", "height": 200}, {"name": "v3", "height": 300}]'
    )
    before = time.time()

    assert main(["upgrade", "cancel", "v2"]) == 0

    (entry,) = read_queue(home).plans
    assert entry.status is PlanStatus.CANCELLED
    assert entry.finished_at is not None
    assert entry.finished_at >= before
    assert not (home / "data/upgrade-info.json").exists()
    assert batch(home) == [{"name": "v3", "height": 300}]
    assert "cancelled plan 'v2' at height 200" in capsys.readouterr().out


def test_cancel_a_plan_only_in_the_files(home: Path) -> None:
    (home / "data/upgrade-info.json.batch").write_text('[{"name": "v2", "height": 200}]')

    assert main(["upgrade", "cancel", "v2"]) == 0

    assert not (home / "data/upgrade-info.json.batch").exists()


def test_cancel_is_refused_while_a_daemon_holds_the_lock(
    home: Path, capsys: pytest.CaptureFixture[str], daemon_lock_held: int
) -> None:
    write_queue(home, QueuedPlan(plan=Plan(name="v2", height=200)))
    (home / "data/upgrade-info.json.batch").write_text('[{"name": "v2", "height": 200}]')
    queue_before = (home / "wemixvisor/state/plans.json").read_bytes()

    assert main(["upgrade", "cancel", "v2"]) == 3

    err = capsys.readouterr().err
    assert f"daemon is running (pid {daemon_lock_held})" in err
    assert "control socket" in err
    assert (home / "wemixvisor/state/plans.json").read_bytes() == queue_before
    assert batch(home) == [{"name": "v2", "height": 200}]


@pytest.mark.parametrize(
    ("status", "message"),
    [(PlanStatus.COMPLETED, "is completed"), (PlanStatus.RUNNING, "is running")],
)
def test_cancel_refuses_a_plan_that_is_not_pending(
    home: Path, capsys: pytest.CaptureFixture[str], status: PlanStatus, message: str
) -> None:
    write_queue(home, QueuedPlan(plan=Plan(name="v2", height=200), status=status))

    assert main(["upgrade", "cancel", "v2"]) == 1

    assert message in capsys.readouterr().err
    assert read_queue(home).plans[0].status is status


@pytest.mark.parametrize(("name", "code"), [("nope", 1), ("../x", 2)])
def test_cancel_an_unknown_or_invalid_name(
    home: Path, capsys: pytest.CaptureFixture[str], name: str, code: int
) -> None:
    assert main(["upgrade", "cancel", name]) == code
    assert capsys.readouterr().err


def test_show_upgrade_info_without_any(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show-upgrade-info"]) == 0
    assert "no upgrade-info.json (looked in" in capsys.readouterr().out


def test_show_upgrade_info_of_the_data_dir_and_current(
    home: Path, new_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "data/upgrade-info.json").write_text('{"name": "v3", "height": 300}')
    assert main(["add-upgrade", "v2", str(new_binary)]) == 0
    (home / "wemixvisor/upgrades/v2/upgrade-info.json").write_text('{"name": "v2", "height": 2}')
    os.symlink("upgrades/v2", home / "wemixvisor/current.tmp")
    os.replace(home / "wemixvisor/current.tmp", home / "wemixvisor/current")
    capsys.readouterr()

    assert main(["show-upgrade-info"]) == 0

    document = msgspec.json.decode(capsys.readouterr().out)
    assert document["data"] == {
        "path": str(home / "data/upgrade-info.json"),
        "upgrade_info": {"name": "v3", "height": 300},
    }
    assert document["current"] == {
        "path": str(home / "wemixvisor/upgrades/v2/upgrade-info.json"),
        "upgrade_info": {"name": "v2", "height": 2},
        "target": "upgrades/v2",
    }


def test_show_upgrade_info_names_an_unreadable_file(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "data/upgrade-info.json").write_text("{half")

    assert main(["show-upgrade-info"]) == 1

    assert "upgrade-info.json is not valid JSON" in capsys.readouterr().err


def test_add_upgrade_with_height_installs_and_schedules(
    home: Path, new_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add-upgrade", "v2", str(new_binary), "--height", "1500"]) == 0

    assert (home / "wemixvisor/upgrades/v2/bin/gwemix").read_bytes() == new_binary.read_bytes()
    assert batch(home) == [{"name": "v2", "height": 1500}]
    assert "scheduled upgrade 'v2' at height 1500" in capsys.readouterr().out


@pytest.mark.parametrize("height", ["0", "-5", "12a", str(2**64)])
def test_add_upgrade_with_a_bad_height_installs_nothing(
    home: Path, new_binary: Path, height: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add-upgrade", "v2", str(new_binary), "--height", height]) == 2

    assert "height" in capsys.readouterr().err
    assert not (home / "wemixvisor/upgrades/v2").exists()
    assert not (home / "data/upgrade-info.json.batch").exists()


def test_add_upgrade_with_a_conflicting_height_installs_nothing(
    home: Path, new_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["upgrade", "schedule", "v1", "1500"]) == 0

    assert main(["add-upgrade", "v2", str(new_binary), "--height", "1500"]) == 1

    assert "conflict" in capsys.readouterr().err
    assert not (home / "wemixvisor/upgrades/v2").exists()


def test_add_upgrade_of_a_completed_plan_installs_nothing(
    home: Path, new_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_queue(
        home, QueuedPlan(plan=Plan(name="v2", height=100), status=PlanStatus.COMPLETED, result="ok")
    )

    assert main(["add-upgrade", "v2", str(new_binary), "--height", "1500"]) == 1

    assert "already completed" in capsys.readouterr().err
    assert not (home / "wemixvisor/upgrades/v2").exists()
    assert not (home / "data/upgrade-info.json.batch").exists()


# Every value `platform.machine()` returns on the platforms Python supports (uname -m on Linux and
# the BSDs, PROCESSOR_ARCHITECTURE on Windows, the Darwin names).
_MACHINES = (
    "x86_64", "amd64", "AMD64", "x64", "i386", "i486", "i586", "i686", "x86",
    "aarch64", "arm64", "ARM64", "armv6l", "armv7l", "armv8l", "arm",
    "ppc64le", "ppc64", "s390x", "riscv64", "mips", "mips64", "loongarch64",
)  # fmt: skip


@pytest.mark.parametrize("machine", _MACHINES)
def test_the_daemon_finds_the_binary_the_cli_scheduled_on_every_machine(
    home: Path, monkeypatch: pytest.MonkeyPatch, machine: str
) -> None:
    """`upgrade schedule --binary` names the platform key the daemon's download looks up."""
    import platform

    from wemixvisor.upgrade.download import resolve_binary_url

    monkeypatch.setattr(platform, "machine", lambda: machine)
    url = "https://example.com/gwemix.tar.gz"
    assert main(["upgrade", "schedule", "v2", "200", "--binary", url, "--checksum", SHA]) == 0

    (entry,) = batch(home)
    plan = plan_from_object(entry, source="test")
    assert resolve_binary_url(plan, "gwemix") == f"{url}?checksum={SHA}"
