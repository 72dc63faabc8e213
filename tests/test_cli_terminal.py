"""The operator tool on a terminal (a real pseudo-terminal): tables, colour, progress bars;
NO_COLOR; plain text byte for byte when the output is a pipe; shell completion scripts that
bash and zsh load; rich, tomlkit and shtab imported only by the runs that need them."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.test_download import FileServer
from tests.test_download_upgrade import TARBALL_PATH, chain, root, server, start, tarball
from tests.test_upgrade import Chain
from wemixvisor.control.verbs import BACKUP_LIST
from wemixvisor.control.verbs.replies import BackupListReply

__all__ = ["chain", "root", "server", "tarball"]  # fixtures of the download scenarios

# An SGR sequence that sets a colour (30-37, 38;..., 90-97 and the backgrounds), not bold.
_COLOUR_RE = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
_BAR = "━"  # rich's bar glyph


def terminal_env(**extra: str) -> dict[str, str]:
    """This environment for a colour terminal: no NO_COLOR, FORCE_COLOR or COLUMNS inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TERM")
    }
    return {**env, "TERM": "xterm-256color", **extra}


def in_terminal(argv: list[str], env: dict[str, str], timeout: float = 120.0) -> tuple[int, str]:
    """Run `wemixvisor ARGV` with stdin, stdout and stderr on a 120-column pseudo-terminal;
    its exit code and everything it wrote (line ends as the terminal shows them: \\r\\n)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "wemixvisor.cli", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def piped(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """`wemixvisor ARGV` with stdout and stderr on pipes."""
    return subprocess.run(
        [sys.executable, "-m", "wemixvisor.cli", *argv],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def home_env(tmp_path: Path, free_port: Callable[[], int]) -> dict[str, str]:
    """An initialised home with some chain-like data and no daemon; its environment."""
    root = tmp_path / "home"
    env = terminal_env(
        DAEMON_HOME=str(root),
        DAEMON_NAME="gwemix",
        DAEMON_RPC_ADDRESS=f"http://127.0.0.1:{free_port()}",
    )
    for key in list(env):
        if key.startswith(("WEMIXVISOR_", "UNSAFE_", "COSMOVISOR_")):
            del env[key]
    binary = tmp_path / "gwemix"
    binary.write_text("#!/bin/sh\necho gwemix 1.0\n")
    binary.chmod(0o755)
    assert piped(["init", str(binary)], env).returncode == 0
    chaindata = root / "data" / "geth" / "chaindata"
    chaindata.mkdir(parents=True)
    for index in range(4):
        (chaindata / f"00000{index}.ldb").write_bytes(os.urandom(300_000))
    return env


def test_a_backup_on_a_terminal_draws_a_bar_and_the_list_is_a_coloured_table(
    home_env: dict[str, str],
) -> None:
    code, shown = in_terminal(["backup", "create", "--label", "first"], home_env)
    assert code == 0, shown
    assert _BAR in shown
    assert "backup first" in shown
    assert "1.1/1.1 MiB" in shown  # the bar ends at the real byte total
    assert re.search(r"backup \S+-first complete", shown)

    code, shown = in_terminal(["backup", "list"], home_env)
    assert code == 0, shown
    header = next(line for line in shown.splitlines() if "STATE" in line)
    assert re.search(r"ID.+STATE.+SIZE.+FILES.+CREATED \(UTC\)", header)
    assert "\x1b[1m" in header  # the header is bold
    assert "\x1b[32mcomplete\x1b[0m" in shown  # the state in green
    assert _COLOUR_RE.search(shown)


def test_no_color_keeps_tables_and_bars_but_drops_the_colour(home_env: dict[str, str]) -> None:
    env = {**home_env, "NO_COLOR": "1"}
    code, shown = in_terminal(["backup", "create", "--label", "plain"], env)
    assert code == 0, shown
    assert _BAR in shown
    assert not _COLOUR_RE.search(shown), repr(shown)
    code, shown = in_terminal(["backup", "list"], env)
    assert code == 0, shown
    assert "complete" in shown
    assert not _COLOUR_RE.search(shown), repr(shown)


def test_piped_output_is_the_plain_text_byte_for_byte(home_env: dict[str, str]) -> None:
    created = piped(["backup", "create", "--label", "piped"], home_env)
    assert created.returncode == 0, created.stderr
    assert b"\x1b" not in created.stdout + created.stderr
    assert _BAR.encode() not in created.stderr
    listed = piped(["backup", "list"], home_env)
    as_json = piped(["backup", "list", "--json"], home_env)
    reply = msgspec.json.decode(as_json.stdout, type=BackupListReply)
    assert listed.stdout.decode() == BACKUP_LIST.render(reply) + "\n"
    assert listed.stdout.startswith(b"ID  ")


def test_rich_tomlkit_and_shtab_load_only_where_they_are_needed(home_env: dict[str, str]) -> None:
    probe = (
        "import sys\n"
        "from wemixvisor.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'tomlkit', 'shtab'})\n"
        "print('LOADED', ','.join(loaded), file=sys.stderr)\n"
    )

    def loaded(*argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv],
            env=home_env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        found = re.search(r"^LOADED (.*)$", result.stderr.decode(), re.MULTILINE)
        assert found is not None, result.stderr
        return found.group(1)

    assert loaded("backup", "list") == ""
    assert loaded("config", "show") == ""
    assert loaded("config", "set", "node.max_restarts", "4") == "tomlkit"
    assert loaded("completion", "bash") == "shtab"
    daemon_side = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, wemixvisor.bootstrap, wemixvisor.actors.node\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'tomlkit', 'shtab'}))",
        ],
        env=home_env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert daemon_side.stdout.strip() == b"[]"


def test_bash_completes_verbs_actions_and_options(home_env: dict[str, str]) -> None:
    script = piped(["completion", "bash"], home_env)
    assert script.returncode == 0, script.stderr

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        program = (
            f"source /dev/stdin\n"
            f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            f"_shtab_wemixvisor wemixvisor '{words[-1]}' '{words[-2]}'\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        result = subprocess.run(
            ["bash", "-c", program, "bash"],
            input=script.stdout,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return sorted(result.stdout.decode().split())

    assert {"status", "upgrade", "config", "completion"} <= set(complete("wemixvisor "))
    assert complete("wemixvisor config s") == ["set", "show"]
    assert "--follow" in complete("wemixvisor upgrade schedule --f")
    assert complete("wemixvisor completion ") == ["bash", "zsh"]
    assert complete("wemixvisor config set node.max_r") == ["node.max_restarts"]
    assert "rpc.poll_interval" in complete("wemixvisor config unset rpc.")
    assert "home" not in complete("wemixvisor config set ")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_the_completion_function(home_env: dict[str, str], tmp_path: Path) -> None:
    script = piped(["completion", "zsh"], home_env)
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith(b"#compdef wemixvisor")
    (tmp_path / "_wemixvisor").write_bytes(script.stdout)
    result = subprocess.run(
        [
            "zsh",
            "-f",
            "-c",
            f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path}/dump;"
            " autoload -Uz _wemixvisor; print -r -- ${_comps[wemixvisor]};"
            " source " + str(tmp_path / "_wemixvisor") + "; print -l ${(k)functions}",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == "_wemixvisor"
    assert "_shtab_wemixvisor_config" in lines
    assert b"node.max_restarts" in script.stdout


def test_a_download_followed_on_a_terminal_shows_its_bar_until_installed(
    chain: Chain, server: FileServer, tarball: Path
) -> None:
    daemon, events = start(chain)
    try:
        env = terminal_env(**daemon.env)
        checksum = "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest()
        argv = ["upgrade", "schedule", "v1.7.1", "100000", "--follow"]
        argv += ["--binary", server.url(TARBALL_PATH), "--checksum", checksum]
        code, shown = in_terminal(argv, env)
        assert code == 0, shown
        assert _BAR in shown
        assert "download v1.7.1" in shown
        assert "MiB" in shown
        assert f"installed as {chain.layout.upgrade_bin('v1.7.1')}" in shown
        assert chain.layout.upgrade_bin("v1.7.1").is_file()
        completed = events.wait_for("download.completed", timeout=30)
        assert completed["bytes"] == tarball.stat().st_size

        code, shown = in_terminal(["upgrade", "list"], env)
        assert code == 0, shown
        assert re.search(r"\x1b\[1mNAME", shown)  # a table with a bold header
        assert "\x1b[33mpending\x1b[0m" in shown
        code, shown = in_terminal(["status"], env)
        assert code == 0, shown
        assert "\x1b[1;36mnode" in shown  # the labels in bold cyan, aligned as fields
        assert "\x1b[32mRUNNING\x1b[0m" in shown
    finally:
        events.close()
    assert daemon.terminate() == 0


def test_a_refused_download_followed_exits_1_with_the_reason(
    chain: Chain, server: FileServer
) -> None:
    daemon, events = start(chain)
    try:
        env = terminal_env(**daemon.env)
        argv = ["upgrade", "schedule", "v1.7.1", "100000", "--follow"]
        argv += ["--binary", server.url(TARBALL_PATH), "--checksum", "sha256:" + "0" * 64]
        code, shown = in_terminal(argv, env)
        assert code == 1, shown
        assert "checksum mismatch" in shown
        assert not chain.layout.upgrade_dir("v1.7.1").exists()
    finally:
        events.close()
    assert daemon.terminate() == 0
