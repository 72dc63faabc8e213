"""`wemixvisor config show | validate [FILE]` as an operator runs them."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wemixvisor.commands import config as config_command
from wemixvisor.config import SETTINGS, load_config


@dataclass
class Context:
    """What the handlers read of the CLI context: the environment and the --set flags."""

    env: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)


def run(argv: list[str], ctx: Context) -> int:
    parser = argparse.ArgumentParser(prog="wemixvisor")
    config_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args, ctx)
    return code


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    (path / "wemixvisor").mkdir(parents=True)
    return path


def source_of(output: str, name: str) -> tuple[str, str]:
    """(value, source) of the first `name = value  # source` line of `config show`."""
    for line in output.splitlines():
        if line.startswith(f"{name} = "):
            assignment, _, source = line.partition(" # ")
            return assignment.split(" = ", 1)[1].strip(), source
    raise AssertionError(f"{name} not shown")


def test_show_prints_each_value_with_its_source(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "wemixvisor" / "config.toml").write_text('[rpc]\npoll_interval = "1s"\n')
    ctx = Context(
        env={"DAEMON_HOME": str(home), "DAEMON_MAX_RESTARTS": "8"},
        overrides={"log.level": "debug"},
    )
    assert run(["config", "show"], ctx) == 0
    output = capsys.readouterr().out
    assert f'# home = "{home}"  (env DAEMON_HOME)' in output
    assert source_of(output, "max_restarts") == ("8", "env DAEMON_MAX_RESTARTS")
    assert source_of(output, "poll_interval") == ('"1s"', "file")
    assert source_of(output, "level") == ('"DEBUG"', "--set")
    assert source_of(output, "name") == ('"gwemix"', "default")
    assert source_of(output, "node_log_max_size") == ('"100MiB"', "default")
    for section in (
        "node",
        "upgrade",
        "backup",
        "rpc",
        "control",
        "events",
        "governance",
        "metrics",
        "log",
    ):
        assert f"\n[{section}]\n" in output


def test_show_output_loads_back_as_the_same_configuration(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "wemixvisor" / "config.toml").write_text(
        '[node]\nargs = ["--http", "quote\\"d"]\n'
        '[governance]\ncontracts = [{address = "0x' + "1f" * 20 + '", kind = "upgrade"}]\n'
    )
    ctx = Context(env={"DAEMON_HOME": str(home), "DAEMON_SHUTDOWN_GRACE": "1m30s"})
    assert run(["config", "show"], ctx) == 0
    copy = tmp_path / "copy.toml"
    copy.write_text(capsys.readouterr().out)
    assert load_config({"DAEMON_HOME": str(home)}, config_path=copy) == load_config(ctx.env)


def test_show_json_has_values_and_sources(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Context(env={"DAEMON_HOME": str(home), "DAEMON_POLL_INTERVAL": "500ms"})
    assert run(["config", "show", "--json"], ctx) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["config"]["rpc"]["poll_interval"] == 0.5
    assert document["config"]["node"]["data_dir"] == str(home / "data")
    assert document["sources"]["rpc.poll_interval"] == "env DAEMON_POLL_INTERVAL"
    assert document["config_file"] == str(home / "wemixvisor" / "config.toml")
    assert document["config_file_exists"] is False
    assert set(document["sources"]) == {s.key for s in SETTINGS}


def test_validate_a_good_file_prints_ok(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = tmp_path / "candidate.toml"
    candidate.write_text("[node]\nmax_restarts = 2\n")
    assert run(["config", "validate", str(candidate)], Context({"DAEMON_HOME": str(home)})) == 0
    assert capsys.readouterr().out == "ok\n"


def test_validate_a_bad_file_names_the_key_and_exits_1(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = tmp_path / "candidate.toml"
    candidate.write_text("[node]\nmax_restart = 2\n")
    assert run(["config", "validate", str(candidate)], Context({"DAEMON_HOME": str(home)})) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"unknown key node.max_restart in {candidate}" in captured.err


def test_validate_checks_the_environment_too(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "wemixvisor" / "config.toml").write_text("[node]\nmax_restarts = 2\n")
    ctx = Context({"DAEMON_HOME": str(home), "DAEMON_RESTART_WINDOW": "soon"})
    assert run(["config", "validate"], ctx) == 1
    assert "DAEMON_RESTART_WINDOW='soon'" in capsys.readouterr().err


def test_validate_a_missing_file_fails(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert run(["config", "validate", str(missing)], Context({"DAEMON_HOME": str(home)})) == 1
    assert f"config file {missing} does not exist" in capsys.readouterr().err


def test_validate_without_a_home_file_checks_environment_and_defaults(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["config", "validate"], Context({"DAEMON_HOME": str(home)})) == 0
    captured = capsys.readouterr()
    assert captured.out == "ok\n"
    assert "checked the environment and defaults" in captured.err


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment without any configuration variable of the outer shell."""
    for setting in SETTINGS:
        if setting.env:
            monkeypatch.delenv(setting.env, raising=False)


@pytest.mark.usefixtures("clean_environ")
def test_through_the_console_script(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wemixvisor.cli import main

    (home / "wemixvisor" / "config.toml").write_text("[node]\nmax_restarts = 2\n")
    assert main(["--home", str(home), "config", "validate"]) == 0
    assert capsys.readouterr().out == "ok\n"

    assert main(["--home", str(home), "--set", "node.max_restarts=4", "config", "show"]) == 0
    assert source_of(capsys.readouterr().out, "max_restarts") == ("4", "--set")

    # A bad flag is a usage error of the whole command line: exit 2, named in the message.
    assert main(["--home", str(home), "--set", "node.max_restarts=abc", "config", "show"]) == 2
    assert "--set node.max_restarts='abc': not an integer" in capsys.readouterr().err

    (home / "wemixvisor" / "config.toml").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["--home", str(home), "config", "validate"]) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err
