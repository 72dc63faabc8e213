"""`wemixvisor config set | unset | init` (SPEC §3, §12): config.toml edited in place with its
comments kept, checked by the daemon's own loader before it is replaced, never left half
written or invalid; a running daemon picks a valid edit up by its hot reload."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.daemon_harness import EventLog
from tests.test_upgrade import Chain, chain_factory, root
from wemixvisor.config.templates import TEMPLATES

__all__ = ["chain_factory", "root"]  # fixtures of the upgrade scenarios

REPO = Path(__file__).resolve().parents[1]


def wemixvisor(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """`wemixvisor ARGV` as a process: exit code, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *argv],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment naming a fresh home, without configuration variables of this shell."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DAEMON_", "WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_"))
    }
    (tmp_path / "home" / "wemixvisor").mkdir(parents=True)
    return {**clean, "DAEMON_HOME": str(tmp_path / "home")}


def config_path(env: dict[str, str]) -> Path:
    return Path(env["DAEMON_HOME"]) / "wemixvisor" / "config.toml"


def leftovers(env: dict[str, str]) -> list[str]:
    """Temporary files an edit left beside config.toml (there must be none)."""
    return [p.name for p in config_path(env).parent.iterdir() if p.name.startswith(".config")]


def test_set_changes_one_line_and_keeps_every_comment(env: dict[str, str]) -> None:
    assert wemixvisor(env, "config", "init", "--template", "local")[0] == 0
    path = config_path(env)
    before = path.read_text()

    code, out, _ = wemixvisor(env, "config", "set", "node.max_restarts", "7")
    assert code == 0
    assert "node.max_restarts set" in out
    assert "a running daemon applies it live" in out
    after = path.read_text()
    assert after == before.replace("max_restarts = 5\n", "max_restarts = 7\n")
    assert wemixvisor(env, "config", "show", "--json")[1].count('"max_restarts":7') == 1

    code, out, _ = wemixvisor(env, "config", "set", "node.args", '["--block-time", "2"]')
    assert code == 0
    assert "takes effect when the daemon restarts" in out
    code, out, _ = wemixvisor(env, "config", "set", "node.restart_on_failure", "FALSE")
    assert code == 0
    code, _, _ = wemixvisor(env, "config", "set", "rpc.poll_interval", "250ms")
    assert code == 0
    text = path.read_text()
    assert 'args = ["--block-time", "2"]' in text
    assert "restart_on_failure = false\n" in text
    assert 'poll_interval = "250ms"' in text
    # Every comment line of the template is still there, in order.
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    kept = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert kept == comments
    assert wemixvisor(env, "config", "validate") == (0, "ok\n", "")
    assert leftovers(env) == []

    code, out, _ = wemixvisor(env, "config", "set", "node.max_restarts", "7")
    assert (code, out) == (0, "node.max_restarts set: no change\n")


def test_set_creates_the_file_and_the_section(env: dict[str, str]) -> None:
    path = config_path(env)
    assert wemixvisor(env, "config", "set", "backup.keep", "9")[0] == 0
    assert path.read_text() == "[backup]\nkeep = 9\n"
    assert wemixvisor(env, "config", "set", "log.level", "debug")[0] == 0
    assert "[log]\nlevel = " in path.read_text()
    assert wemixvisor(env, "config", "validate") == (0, "ok\n", "")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("node.max_restarts", "-1", "node.max_restarts=-1 in {path}: must be at least 0"),
        ("node.max_restarts", "many", "node.max_restarts='many'"),
        ("node.restart_on_failure", "maybe", "node.restart_on_failure='maybe'"),
        ("rpc.poll_interval", "soon", "rpc.poll_interval='soon' in {path}"),
        ("rpc.poll_interval", '30s"\n[evil]\nx = "1', "rpc.poll_interval="),
        ("node.name", "../../bin/sh", "node.name='../../bin/sh' in {path}"),
        ("node.args", '["--a", 1]', "node.args[1]=1 in {path}: expected a string"),
        ("node.args", '["--a",', "node.args='[\"--a\",': expected a TOML array"),
        ("node.args", "[" * 5000, "expected a TOML array"),
        ("node.max_restart", "3", "unknown key node.max_restart (did you mean node.max_restarts?)"),
        ("home", "/tmp/x", "home is DAEMON_HOME or --home"),
        ("rpc.stall_timeout", "100ms", "rpc.stall_timeout=100ms (file) must be 0 (off)"),
    ],
    ids=[
        "below-minimum",
        "not-an-integer",
        "not-a-boolean",
        "not-a-duration",
        "toml-injection",
        "bad-binary-name",
        "array-of-non-strings",
        "half-an-array",
        "nested-too-deep",
        "unknown-key",
        "home",
        "inconsistent",
    ],
)
def test_an_invalid_value_exits_2_naming_the_key_and_leaves_the_file_untouched(
    env: dict[str, str], key: str, value: str, message: str
) -> None:
    assert wemixvisor(env, "config", "init", "--template", "local")[0] == 0
    path = config_path(env)
    before, inode = path.read_bytes(), path.stat().st_ino
    code, out, err = wemixvisor(env, "config", "set", key, value)
    assert code == 2, (out, err)
    assert "config.toml not changed" in err
    assert message.format(path=path) in err
    assert len(err) < 2000
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode
    assert leftovers(env) == []


def test_an_edit_that_would_grow_the_file_past_its_limit_is_refused(env: dict[str, str]) -> None:
    path = config_path(env)
    path.write_text("# notes\n" + "#" * (1024 * 1024 - 40_000) + "\n[node]\nmax_restarts = 5\n")
    before = path.read_bytes()
    # One argument of the command line stays under 128 KiB (the kernel's limit).
    code, _, err = wemixvisor(env, "config", "set", "node.args", "[" + '"x",' * 20_000 + "]")
    assert code == 2
    assert "is larger than" in err
    assert path.read_bytes() == before
    assert leftovers(env) == []


def test_a_broken_file_is_refused_and_a_bad_key_can_be_unset(env: dict[str, str]) -> None:
    path = config_path(env)
    path.write_text("# mine\n[node]\nmax_restarts = 5\nstartsecs = 'x'\n")
    code, _, err = wemixvisor(env, "config", "set", "node.max_restarts", "6")
    assert code == 2
    assert "node.startsecs='x'" in err
    code, out, _ = wemixvisor(env, "config", "unset", "node.startsecs")
    assert code == 0
    assert "node.startsecs unset" in out
    assert path.read_text() == "# mine\n[node]\nmax_restarts = 5\n"
    assert (
        wemixvisor(env, "config", "unset", "node.startsecs")[1]
        == "node.startsecs unset: no change\n"
    )

    path.write_text("[node\nmax_restarts = 5\n")
    code, _, err = wemixvisor(env, "config", "set", "node.max_restarts", "6")
    assert code == 2
    assert "is not valid TOML" in err
    assert path.read_text() == "[node\nmax_restarts = 5\n"
    path.write_text("node = 3\n")
    assert "is not a table [node]" in wemixvisor(env, "config", "set", "node.max_restarts", "6")[2]
    path.unlink()
    path.mkdir()
    assert "is not a regular file" in wemixvisor(env, "config", "set", "node.max_restarts", "6")[2]


def test_edits_made_at_the_same_time_all_land(env: dict[str, str]) -> None:
    keys = ["node.max_restarts", "backup.keep", "rpc.timeout", "node.startsecs"]
    keys += ["node.backoff_max", "rpc.poll_interval", "log.level", "node.shutdown_grace"]
    values = ["7", "4", "3s", "3s", "2m", "400ms", "debug", "20s"]
    editors = [
        subprocess.Popen(
            [sys.executable, "-m", "wemixvisor.cli", "config", "set", key, value],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for key, value in zip(keys, values, strict=True)
    ]
    for editor in editors:
        _, err = editor.communicate(timeout=120)
        assert editor.returncode == 0, err
    shown = msgspec.json.decode(wemixvisor(env, "config", "show", "--json")[1])
    assert {key for key, source in shown["sources"].items() if source == "file"} == set(keys)
    assert leftovers(env) == []


def test_a_symlinked_file_keeps_its_link_and_its_mode(env: dict[str, str], tmp_path: Path) -> None:
    real = tmp_path / "etc" / "wemixvisor.toml"
    real.parent.mkdir()
    real.write_text("[node]\n# restarts before FATAL\nmax_restarts = 5\n")
    real.chmod(0o600)
    config_path(env).symlink_to(real)
    assert wemixvisor(env, "config", "set", "node.max_restarts", "2")[0] == 0
    assert config_path(env).is_symlink()
    assert real.read_text() == "[node]\n# restarts before FATAL\nmax_restarts = 2\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600


def test_a_value_the_environment_overrides_is_written_with_a_warning(env: dict[str, str]) -> None:
    overridden = {**env, "DAEMON_MAX_RESTARTS": "4"}
    code, _, err = wemixvisor(overridden, "config", "set", "node.max_restarts", "2")
    assert code == 0
    assert "DAEMON_MAX_RESTARTS is set in this environment and overrides the file" in err


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_init_writes_each_commented_template_once(env: dict[str, str], template: str) -> None:
    code, out, _ = wemixvisor(env, "config", "init", "--template", template)
    assert code == 0
    path = config_path(env)
    assert path.read_bytes() == (REPO / "configs" / TEMPLATES[template]).read_bytes()
    assert f"wrote {path}" in out
    assert wemixvisor(env, "config", "validate") == (0, "ok\n", "")

    path.write_text("# the operator's own\n")
    code, _, err = wemixvisor(env, "config", "init", "--template", template)
    assert code == 1
    assert "exists; use --force" in err
    assert path.read_text() == "# the operator's own\n"
    assert wemixvisor(env, "config", "init", "--template", template, "--force")[0] == 0
    assert path.read_bytes() == (REPO / "configs" / TEMPLATES[template]).read_bytes()


def test_init_refuses_an_unknown_template(env: dict[str, str]) -> None:
    code, _, err = wemixvisor(env, "config", "init", "--template", "devnet")
    assert code == 2
    assert "invalid choice: 'devnet'" in err
    assert not config_path(env).exists()


def test_the_running_daemon_applies_an_edit_and_never_sees_an_invalid_one(
    chain_factory: Callable[..., Chain],
) -> None:
    chain = chain_factory()
    daemon = chain.daemon()
    events = EventLog(daemon.events_endpoint, ["config.", "supervisor.heartbeat"])
    try:
        events.wait_for("supervisor.heartbeat", lambda p: p["node_state"] == "RUNNING")
        code, _, err = wemixvisor(daemon.env, "config", "set", "node.max_restarts", "9")
        assert code == 0, err
        reloaded = events.wait_for("config.reloaded", timeout=30)
        assert reloaded["changed"] == ["node.max_restarts"]
        assert reloaded["restart_required"] == []

        code, _, err = wemixvisor(daemon.env, "config", "set", "node.max_restarts", "-3")
        assert code == 2
        code, _, err = wemixvisor(daemon.env, "config", "set", "node.args", '["--port"]')
        assert code == 0, err
        reloaded = events.wait_for("config.reloaded", timeout=30)
        assert reloaded["changed"] == ["node.args"]
        assert reloaded["restart_required"] == ["node.args"]
        code, _, err = wemixvisor(daemon.env, "config", "unset", "node.max_restarts")
        assert code == 0, err
        reloaded = events.wait_for("config.reloaded", timeout=30)
        assert reloaded["changed"] == ["node.max_restarts"]
        # The invalid value between the edits never reached the daemon.
        assert not [p for p in events.seen if p["topic"] == "config.rejected"]
    finally:
        events.close()
    assert daemon.terminate() == 0
