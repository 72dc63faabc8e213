"""Configuration: precedence, every variable's error message, hostile files, templates, reload."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wemixvisor.config import (
    MAX_CONFIG_BYTES,
    SECTIONS,
    SETTINGS,
    Config,
    ConfigError,
    GovernanceContract,
    Setting,
    format_duration,
    format_size,
    load_config,
    load_config_with_sources,
    parse_bool,
    parse_duration,
    parse_size,
    reload_diff,
    setting_value,
)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
ADDRESS = "0x" + "ab" * 20

# A value each kind refuses; string keys with their own syntax have their own bad example, so a
# new row of the table is covered by the parametrized tests below (or fails them until it is).
BAD_TEXT_BY_KIND = {
    "duration": "abc",
    "bool": "maybe",
    "int": "abc",
    "size": "12XB",
    "path": "relative/dir",
    "enum": "bogus",
}
BAD_TEXT_BY_KEY = {
    "node.name": "bin/gwemix",
    "upgrade.custom_preupgrade": "../escape.sh",
    "rpc.address": "ftp://127.0.0.1:8545",
    "control.endpoint": "udp://127.0.0.1:1",
    "events.endpoint": "ipc://relative.sock",
    "metrics.address": "9100",
}


def bad_text(setting: Setting) -> str:
    return BAD_TEXT_BY_KEY.get(setting.key) or BAD_TEXT_BY_KIND[setting.kind]


def write_config(home: Path, text: str | bytes) -> Path:
    path = home / "wemixvisor" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def load_error(env: dict[str, str], overrides: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(env, overrides)
    return str(caught.value)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return {"DAEMON_HOME": str(home)}


def test_every_struct_field_is_one_row_of_the_table(env: dict[str, str]) -> None:
    config = load_config(env)
    for section in SECTIONS:
        fields = [f.name for f in msgspec.structs.fields(getattr(config, section))]
        assert fields == [s.name for s in SETTINGS if s.section == section]
    rows = [s.key for s in SETTINGS]
    assert len(rows) == len(set(rows))
    env_names = [s.env for s in SETTINGS if s.env]
    assert len(env_names) == len(set(env_names))


def test_defaults_follow_the_spec_and_derive_paths_from_home(home: Path) -> None:
    config, sources = load_config_with_sources({"DAEMON_HOME": str(home)})
    assert config.home == home
    assert config.node.name == "gwemix"
    assert config.node.data_dir == home / "data"
    assert config.node.args == []
    assert config.node.shutdown_grace == 30.0
    assert config.node.max_restarts == 5
    assert config.node.restart_window == 600.0
    assert config.upgrade.download_must_have_checksum is True
    assert config.upgrade.app_preupgrade is False
    assert config.backup.dir == home / "backups"
    assert config.backup.keep == 3
    assert config.rpc.address == "http://127.0.0.1:8545"
    assert config.rpc.poll_interval == 0.3
    assert config.control.endpoint == f"ipc://{home}/wemixvisor/control.sock"
    assert config.events.endpoint == f"ipc://{home}/wemixvisor/events.sock"
    assert config.metrics.address == ""
    assert config.log.node_log_max_size == 100 * 1024 * 1024
    assert config.config_path == home / "wemixvisor" / "config.toml"
    assert sources["home"] == "env DAEMON_HOME"
    assert {sources[s.key] for s in SETTINGS if s.key != "home"} == {"default"}


def test_home_defaults_to_dot_wemixd_in_the_users_home(tmp_path: Path) -> None:
    config, sources = load_config_with_sources({"HOME": str(tmp_path)})
    assert config.home == tmp_path / ".wemixd"
    assert config.node.data_dir == tmp_path / ".wemixd" / "data"
    assert sources["home"] == "default"


def test_defaults_do_not_share_mutable_lists(env: dict[str, str]) -> None:
    first = load_config(env)
    first.node.args.append("--mutated")
    assert load_config(env).node.args == []


class Layers(NamedTuple):
    """One key set at every level, and the value expected as each level is added."""

    key: str
    toml_value: str
    env_name: str
    env_value: str
    set_value: str
    expected: tuple[object, object, object, object]


PRECEDENCE_CASES = [
    Layers("node.max_restarts", "7", "DAEMON_MAX_RESTARTS", "8", "9", (5, 7, 8, 9)),
    Layers(
        "rpc.poll_interval", '"1s"', "DAEMON_POLL_INTERVAL", "2s", "250ms", (0.3, 1.0, 2.0, 0.25)
    ),
    Layers(
        "upgrade.allow_download_binaries",
        "true",
        "DAEMON_ALLOW_DOWNLOAD_BINARIES",
        "FALSE",
        "1",
        (False, True, False, True),
    ),
    Layers(
        "log.level",
        '"debug"',
        "WEMIXVISOR_LOG_LEVEL",
        "Warning",
        "error",
        ("INFO", "DEBUG", "WARNING", "ERROR"),
    ),
    Layers(
        "node.name",
        '"geth"',
        "DAEMON_NAME",
        "gwemix2",
        "anvil",
        ("gwemix", "geth", "gwemix2", "anvil"),
    ),
    Layers(
        "metrics.address",
        '"127.0.0.1:9100"',
        "WEMIXVISOR_METRICS_ADDRESS",
        "[::1]:9101",
        "",
        ("", "127.0.0.1:9100", "[::1]:9101", ""),
    ),
]


@pytest.mark.parametrize("case", PRECEDENCE_CASES, ids=lambda case: case.key)
def test_flag_beats_environment_beats_file_beats_default(home: Path, case: Layers) -> None:
    section, _, name = case.key.partition(".")
    env = {"DAEMON_HOME": str(home)}

    def value_and_source(overrides: dict[str, str] | None = None) -> tuple[object, str]:
        config, sources = load_config_with_sources(env, overrides)
        return setting_value(config, case.key), sources[case.key]

    assert value_and_source() == (case.expected[0], "default")
    write_config(home, f"[{section}]\n{name} = {case.toml_value}\n")
    assert value_and_source() == (case.expected[1], "file")
    env[case.env_name] = case.env_value
    assert value_and_source() == (case.expected[2], f"env {case.env_name}")
    assert value_and_source({case.key: case.set_value}) == (case.expected[3], "--set")


def test_empty_environment_variable_counts_as_unset(home: Path) -> None:
    write_config(home, "[node]\nmax_restarts = 2\n")
    config = load_config({"DAEMON_HOME": str(home), "DAEMON_MAX_RESTARTS": ""})
    assert config.node.max_restarts == 2


def test_derived_paths_follow_the_final_home(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    config = load_config({"DAEMON_HOME": str(home)}, {"home": str(other)})
    assert config.home == other
    assert config.node.data_dir == other / "data"
    assert config.backup.dir == other / "backups"
    assert config.control.endpoint == f"ipc://{other}/wemixvisor/control.sock"
    # An explicit data dir is kept as given, not re-rooted.
    config = load_config({"DAEMON_HOME": str(home), "DAEMON_DATA_DIR": "/srv/chain"})
    assert config.node.data_dir == Path("/srv/chain")


def test_file_from_the_final_home_is_read(home: Path, tmp_path: Path) -> None:
    write_config(home, "[node]\nmax_restarts = 1\n")
    other = tmp_path / "other"
    write_config(other, "[node]\nmax_restarts = 2\n")
    assert load_config({"DAEMON_HOME": str(home)}, {"home": str(other)}).node.max_restarts == 2


def test_explicit_config_path_replaces_the_homes_file(home: Path, tmp_path: Path) -> None:
    write_config(home, "[node]\nmax_restarts = 1\n")
    elsewhere = tmp_path / "candidate.toml"
    elsewhere.write_text("[node]\nmax_restarts = 4\n")
    env = {"DAEMON_HOME": str(home)}
    assert load_config(env, config_path=elsewhere).node.max_restarts == 4
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env, config_path=tmp_path / "missing.toml")


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.env], ids=lambda s: s.env)
def test_bad_environment_value_names_the_variable_and_the_value(
    home: Path, setting: Setting
) -> None:
    assert setting.env is not None
    value = bad_text(setting)
    env = {"DAEMON_HOME": str(home), setting.env: value}
    message = load_error(env)
    assert message.startswith(f"{setting.env}={value!r}: ")


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.text_settable], ids=lambda s: s.key)
def test_bad_flag_value_names_the_flag_and_the_value(env: dict[str, str], setting: Setting) -> None:
    value = bad_text(setting)
    message = load_error(env, {setting.key: value})
    assert message.startswith(f"--set {setting.key}={value!r}: ")


def test_example_message_for_a_non_integer(env: dict[str, str]) -> None:
    assert load_error({**env, "DAEMON_MAX_RESTARTS": "abc"}) == (
        "DAEMON_MAX_RESTARTS='abc': not an integer"
    )


def test_unknown_or_file_only_flag_is_refused(env: dict[str, str]) -> None:
    assert "--set node.max_restart: unknown key" in load_error(env, {"node.max_restart": "3"})
    assert "did you mean node.max_restarts?" in load_error(env, {"node.max_restart": "3"})
    assert "only be set in config.toml" in load_error(env, {"node.args": "--foo"})


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("DAEMON_MAX_RESTARTS", "-1", "must be at least 0"),
        ("DAEMON_BACKUP_KEEP", "0", "must be at least 1"),
        ("DAEMON_RPC_TIMEOUT", "6s", "must be at most 5s"),
        ("DAEMON_RPC_TIMEOUT", "0s", "must be greater than 0"),
        ("DAEMON_POLL_INTERVAL", "0", "must be greater than 0"),
        ("DAEMON_SHUTDOWN_GRACE", "-5s", "cannot be negative"),
        ("DAEMON_MAX_RESTARTS", "3.5", "not an integer"),
        ("DAEMON_MAX_RESTARTS", "٣", "not an integer"),
        ("DAEMON_NAME", "..", "plain file name"),
        ("DAEMON_NAME", "gw\nemix", "plain file name"),
        ("COSMOVISOR_CUSTOM_PREUPGRADE", "/etc/passwd", "no '..'"),
        ("DAEMON_RPC_ADDRESS", "http://127.0.0.1:99999", "not a valid URL"),
        ("DAEMON_RPC_ADDRESS", "relative.ipc", "absolute IPC path"),
        ("WEMIXVISOR_CONTROL_ENDPOINT", "tcp://127.0.0.1", "host:port"),
        ("WEMIXVISOR_METRICS_ADDRESS", "::1:9100", "brackets"),
        ("WEMIXVISOR_METRICS_ADDRESS", "127.0.0.1:0", "port out of range"),
        ("WEMIXVISOR_LOG_FORMAT", "xml", "must be one of text, json"),
    ],
)
def test_out_of_range_values_are_explained(
    env: dict[str, str], variable: str, value: str, reason: str
) -> None:
    message = load_error({**env, variable: value})
    assert message.startswith(f"{variable}={value!r}: ")
    assert reason in message


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        ("DAEMON_RPC_ADDRESS", "/var/lib/wemixd/data/gwemix.ipc", "rpc.address", None),
        ("DAEMON_RPC_ADDRESS", "wss://node.example:443/ws", "rpc.address", None),
        ("WEMIXVISOR_CONTROL_ENDPOINT", "tcp://127.0.0.1:5555", "control.endpoint", None),
        ("WEMIXVISOR_METRICS_ADDRESS", "0.0.0.0:9100", "metrics.address", None),
        ("COSMOVISOR_CUSTOM_PREUPGRADE", "hooks/pre.sh", "upgrade.custom_preupgrade", None),
        ("WEMIXVISOR_LOG_LEVEL", "success", "log.level", "SUCCESS"),
        ("WEMIXVISOR_LOG_FORMAT", "JSON", "log.format", "json"),
        ("UNSAFE_SKIP_BACKUP", "True", "backup.skip", True),
    ],
)
def test_accepted_values(
    env: dict[str, str], variable: str, value: str, key: str, expected: object
) -> None:
    config = load_config({**env, variable: value})
    assert setting_value(config, key) == (value if expected is None else expected)


def test_backoff_max_below_initial_names_both_keys(env: dict[str, str]) -> None:
    message = load_error({**env, "DAEMON_BACKOFF_MAX": "100ms"})
    assert "node.backoff_max=100ms (env DAEMON_BACKOFF_MAX)" in message
    assert "node.backoff_initial=500ms (default)" in message


def test_control_and_events_endpoints_must_differ(env: dict[str, str]) -> None:
    same = "tcp://127.0.0.1:7000"
    message = load_error(
        {**env, "WEMIXVISOR_CONTROL_ENDPOINT": same, "WEMIXVISOR_EVENTS_ENDPOINT": same}
    )
    assert "must differ" in message


@pytest.mark.parametrize("backup_dir", ["{data}", "{data}/backups", "{home}"])
def test_backups_cannot_live_inside_the_data_they_copy(
    env: dict[str, str], home: Path, backup_dir: str
) -> None:
    data = home / "chain"
    message = load_error(
        {
            **env,
            "DAEMON_DATA_DIR": str(data),
            "DAEMON_DATA_BACKUP_DIR": backup_dir.format(data=data, home=home),
        }
    )
    assert "must not contain each other" in message


@pytest.mark.parametrize("value", ["relative/home", "", "./x"])
def test_relative_daemon_home_is_refused(value: str, tmp_path: Path) -> None:
    if value == "":
        # An empty DAEMON_HOME counts as unset: the default applies.
        assert load_config({"DAEMON_HOME": "", "HOME": str(tmp_path)}).home == tmp_path / ".wemixd"
        return
    assert load_error({"DAEMON_HOME": value}) == (
        f"DAEMON_HOME={value!r}: must be an absolute path"
    )


def test_relative_home_flag_is_refused(env: dict[str, str]) -> None:
    assert load_error(env, {"home": "rel"}).startswith("--set home='rel': ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        (" 2s ", 2.0),
        ("8760h", 365 * 24 * 3600.0),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-1s",
        "30",
        "1.5",
        "abc",
        "1d",
        "s",
        "1 s",
        "1e3s",
        "8761h",
        "٣s",
        "1s-",
        "9" * 70 + "s",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(
        ConfigError, match="^" + repr(text)[:20].replace("\\", "\\\\").replace("(", r"\(")
    ):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("False", False),
        ("0", False),
        (" false ", False),
    ],
)
def test_parse_bool_accepts(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "yes", "no", "on", "2", "truee", "-1"])
def test_parse_bool_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100MiB", 100 * 2**20),
        ("1GB", 10**9),
        ("512KiB", 512 * 1024),
        ("4096", 4096),
        ("10 mib", 10 * 2**20),
        ("1.5KiB", 1536),
        ("0", 0),
    ],
)
def test_parse_size_accepts(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "MiB", "1XB", "1 2", "1e3", "9" * 30 + "TiB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.3, "300ms"), (30, "30s"), (90, "1m30s"), (3600, "1h"), (1.5, "1s500ms")],
)
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_format_size_reads_back() -> None:
    for size in (0, 1, 1000, 1024, 100 * 2**20, 3 * 2**40):
        assert parse_size(format_size(size)) == size


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parsers_raise_only_config_error_on_garbage(text: str) -> None:
    for parse in (parse_duration, parse_bool, parse_size):
        with contextlib.suppress(ConfigError):
            parse(text)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"\A[0-9]{1,3}(ms|s|m|h)([0-9]{1,2}(ms|s|m))?\Z"))
def test_valid_durations_survive_a_format_round_trip(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_file_values_are_typed_and_checked(home: Path, env: dict[str, str]) -> None:
    write_config(
        home,
        f"""
[node]
name = "geth"
args = ["--http", "--http.port", "8545"]
shutdown_grace = 45           # seconds as a number are accepted too
[rpc]
address = "ws://127.0.0.1:8546"
[governance]
contracts = [{{address = "{ADDRESS}", kind = "upgrade"}}]
confirmations = 2
poll_interval = "2s"
[log]
node_log_max_size = "1GiB"
""",
    )
    config = load_config(env)
    assert config.node.args == ["--http", "--http.port", "8545"]
    assert config.node.shutdown_grace == 45.0
    assert config.governance.contracts == [GovernanceContract(address=ADDRESS, kind="upgrade")]
    assert config.governance.poll_interval == 2.0
    assert config.log.node_log_max_size == 2**30


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[node]\nmax_restart = 3\n",
            "unknown key node.max_restart in {path} (did you mean node.max_restarts?)",
        ),
        ("[nodes]\nname = 'x'\n", "unknown section [nodes] in {path} (did you mean [node]?)"),
        ("stray = 1\n", "unknown key stray in {path}"),
        ("home = '/x'\n", "unknown key home in {path}"),
        ("[node.extra]\nx = 1\n", "unknown key node.extra in {path}"),
        ("[node]\n'we ird' = 1\n", "unknown key node.'we ird' in {path}"),
        (
            f"[governance]\ncontracts = [{{address = '{ADDRESS}', kind = 'upgrade', knd = 1}}]\n",
            "unknown key governance.contracts[0].knd in {path}",
        ),
    ],
)
def test_unknown_keys_are_named_with_their_path(
    home: Path, env: dict[str, str], toml: str, expected: str
) -> None:
    path = write_config(home, toml)
    assert load_error(env).startswith(expected.format(path=path))


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[node]\nmax_restarts = "3"\n',
            "node.max_restarts='3' in {path}: expected an integer, got a string",
        ),
        (
            "[node]\nmax_restarts = true\n",
            "node.max_restarts=True in {path}: expected an integer, got a boolean",
        ),
        (
            "[node]\nrestart_on_failure = 1\n",
            "node.restart_on_failure=1 in {path}: expected true or false",
        ),
        (
            '[node]\nrestart_on_failure = "yes"\n',
            "node.restart_on_failure='yes' in {path}: expected true",
        ),
        ("[rpc]\npoll_interval = true\n", "rpc.poll_interval=True in {path}: expected a duration"),
        ('[rpc]\npoll_interval = "fast"\n', "rpc.poll_interval='fast' in {path}: not a duration"),
        ("[rpc]\npoll_interval = -1\n", "rpc.poll_interval=-1 in {path}: a duration in seconds"),
        ("[rpc]\npoll_interval = inf\n", "rpc.poll_interval=inf in {path}: a duration in seconds"),
        ("[node]\nargs = '--http'\n", "node.args='--http' in {path}: expected an array of strings"),
        ("[node]\nargs = ['--port', 8545]\n", "node.args[1]=8545 in {path}: expected a string"),
        ("[node]\ndata_dir = 'data'\n", "node.data_dir='data' in {path}: must be an absolute path"),
        (
            "[log]\nlevel = 1979-05-27\n",
            "log.level=datetime.date(1979, 5, 27) in {path}: expected a string, got a date/time",
        ),
        (
            "[log]\nnode_log_max_size = -5\n",
            "log.node_log_max_size=-5 in {path}: a size cannot be negative",
        ),
        ("node = 3\n", "node in {path}: expected a table [node], got an integer"),
        (
            "[governance]\ncontracts = [{address = '0x12', kind = 'upgrade'}]\n",
            "governance.contracts[0].address='0x12' in {path}",
        ),
        (
            f"[governance]\ncontracts = [{{address = '{ADDRESS}', kind = 'vote'}}]\n",
            "governance.contracts[0].kind='vote' in {path}: expected one of upgrade, govbase",
        ),
        (f"[governance]\ncontracts = [{{address = '{ADDRESS}'}}]\n", "governance.contracts[0]="),
        (
            f"[governance]\ncontracts = [{{address = '{ADDRESS}', kind = 'upgrade'}}, "
            f"{{address = '{ADDRESS.upper().replace('0X', '0x')}', kind = 'govbase'}}]\n",
            "governance.contracts[1].address=",
        ),
        (
            "[governance]\ncontracts = ['0x1']\n",
            "governance.contracts[0]='0x1' in {path}: expected a table",
        ),
    ],
)
def test_wrong_types_and_values_in_the_file_are_named(
    home: Path, env: dict[str, str], toml: str, expected: str
) -> None:
    path = write_config(home, toml)
    assert load_error(env).startswith(expected.format(path=path))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'[node]\nname = "gwe', "is not valid TOML"),
        (b"[node\n", "is not valid TOML"),
        (b"\x00\x01\x02\xff\xfe garbage", "is not UTF-8 text"),
        (b'[node]\nname = "\xc3\x28"\n', "is not UTF-8 text"),
        (b'a = "\x00"\n', "is not valid TOML"),
        (b"a = " + b"[" * 50_000, "is not valid TOML"),
        (b"[node]\nname = 'a'\n[node]\nname = 'b'\n", "is not valid TOML"),
    ],
)
def test_broken_file_is_a_config_error_naming_the_file(
    home: Path, env: dict[str, str], content: bytes, expected: str
) -> None:
    path = write_config(home, content)
    message = load_error(env)
    assert message.startswith(f"config file {path} {expected}")


def test_oversized_file_is_refused_unparsed(home: Path, env: dict[str, str]) -> None:
    path = write_config(home, b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    assert load_error(env) == f"config file {path} is larger than 1MiB"


def test_file_of_exactly_the_limit_is_read(home: Path, env: dict[str, str]) -> None:
    body = b"[node]\nmax_restarts = 2\n"
    write_config(home, body + b"#" * (MAX_CONFIG_BYTES - len(body)))
    assert load_config(env).node.max_restarts == 2


def test_config_path_that_is_not_a_regular_file_is_refused(home: Path, env: dict[str, str]) -> None:
    path = home / "wemixvisor" / "config.toml"
    path.mkdir(parents=True)
    assert "is not a regular file" in load_error(env)
    path.rmdir()
    os.mkfifo(path)  # reading a FIFO would block forever
    assert "is not a regular file" in load_error(env)


def test_dangling_config_symlink_is_reported(home: Path, env: dict[str, str]) -> None:
    path = home / "wemixvisor" / "config.toml"
    path.parent.mkdir(parents=True)
    path.symlink_to(home / "nowhere.toml")
    assert load_error(env) == f"config file {path} does not exist"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_file_content_loads_or_is_a_config_error(home: Path, content: bytes) -> None:
    write_config(home, content)
    # Either outcome is fine; any other exception fails the test.
    with contextlib.suppress(ConfigError):
        load_config({"DAEMON_HOME": str(home)})


@pytest.mark.parametrize("template", sorted(CONFIGS_DIR.glob("*.toml")), ids=lambda path: path.name)
def test_every_shipped_template_loads(env: dict[str, str], template: Path) -> None:
    config, sources = load_config_with_sources(env, config_path=template)
    assert config.node.args, "a template shows how the node is started"
    # Every key of the file is documented: each appears, set or commented out.
    text = template.read_text()
    for setting in SETTINGS:
        if setting.in_file:
            assert f"{setting.name} =" in text, f"{template.name} does not explain {setting.key}"
    assert "file" in sources.values()


def test_the_three_templates_exist() -> None:
    names = {path.name for path in CONFIGS_DIR.glob("*.toml")}
    assert {"mainnet.toml", "testnet.toml", "local-anvil.toml"} <= names


def replace(config: Config, section: str, **changes: object) -> Config:
    part = msgspec.structs.replace(getattr(config, section), **changes)
    return msgspec.structs.replace(config, **{section: part})


def test_reload_diff_of_identical_configs_is_empty(env: dict[str, str]) -> None:
    assert reload_diff(load_config(env), load_config(env)) == ([], [])


def test_reload_diff_applies_policy_live_and_flags_restart_keys(env: dict[str, str]) -> None:
    old = load_config(env)
    new = replace(old, "node", max_restarts=9, shutdown_grace=5.0, args=["--x"])
    new = replace(new, "log", level="DEBUG", format="json")
    new = replace(new, "rpc", address="ws://127.0.0.1:8546", poll_interval=1.0)
    new = replace(
        new, "governance", contracts=[GovernanceContract(address=ADDRESS, kind="govbase")]
    )
    new = replace(new, "backup", keep=7)
    changed, restart = reload_diff(old, new)
    assert changed == [
        "node.args",
        "node.shutdown_grace",
        "node.max_restarts",
        "backup.keep",
        "rpc.address",
        "rpc.poll_interval",
        "governance.contracts",
        "log.format",
        "log.level",
    ]
    assert restart == ["node.args", "rpc.address", "log.format"]


def test_reload_diff_of_a_new_home_needs_a_restart(env: dict[str, str], tmp_path: Path) -> None:
    old = load_config(env)
    new = load_config({"DAEMON_HOME": str(tmp_path / "elsewhere")})
    changed, restart = reload_diff(old, new)
    assert {"home", "node.data_dir", "backup.dir", "control.endpoint", "events.endpoint"} <= set(
        restart
    )
    assert changed == restart


def test_reloadable_keys_match_the_spec() -> None:
    reloadable = {s.key for s in SETTINGS if s.reloadable}
    must_restart = {
        "home",
        "node.name",
        "node.data_dir",
        "node.args",
        "rpc.address",
        "control.endpoint",
        "events.endpoint",
        "metrics.address",
        "log.format",
    }
    assert not reloadable & must_restart
    assert {
        "node.shutdown_grace",
        "node.max_restarts",
        "node.restart_window",
        "node.restart_on_failure",
        "rpc.poll_interval",
        "backup.keep",
        "log.level",
        "governance.contracts",
        "governance.poll_interval",
    } <= reloadable
