"""The home layout: init, add-upgrade, and the `current` symlink (SPEC §2, §4, §12, §15)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from wemixvisor.home.layout import (
    UPGRADE_NAME_RE,
    Current,
    Home,
    LayoutError,
    add_upgrade,
    check_binary,
    init_home,
    read_current,
    switch_current,
    validate_upgrade_name,
)

MakeBinary = Callable[..., Path]


@pytest.fixture
def make_binary(tmp_path: Path) -> MakeBinary:
    """Write a small executable shell script that prints `version` and return its path."""
    source_dir = tmp_path / "src"
    source_dir.mkdir()

    def make(name: str = "gwemix", version: str = "1.0.0", *, executable: bool = True) -> Path:
        path = source_dir / f"{name}-{version}"
        path.write_text(f"#!/bin/sh\necho {name} {version}\n")
        path.chmod(0o755 if executable else 0o644)
        return path

    return make


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    return Home(root=root, name="gwemix", data_dir=root / "data")


@pytest.fixture
def initialised(home: Home, make_binary: MakeBinary) -> Home:
    init_home(home, make_binary(version="1.0.0"))
    return home


def no_temp_links(home: Home) -> bool:
    return not [p for p in home.visor_dir.iterdir() if p.name.startswith(".current.")]


def test_home_paths_follow_the_documented_layout(home: Home) -> None:
    root = home.root
    assert home.visor_dir == root / "wemixvisor"
    assert home.genesis_bin == root / "wemixvisor/genesis/bin/gwemix"
    assert home.upgrade_bin("v1.2.0") == root / "wemixvisor/upgrades/v1.2.0/bin/gwemix"
    assert home.current_link == root / "wemixvisor/current"
    assert home.state_dir == root / "wemixvisor/state"
    assert home.node_log == root / "logs/node.log"
    assert home.config_path == root / "wemixvisor/config.toml"
    assert home.target_dir("genesis") == home.genesis_dir
    assert home.target_dir("upgrades/v2") == root / "wemixvisor/upgrades/v2"


def test_relative_home_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="absolute"):
        Home(root=Path("relative/home"), name="gwemix", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["", ".", "..", "bin/gwemix", "../gwemix", "gw\0emix"])
def test_binary_name_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(LayoutError, match="DAEMON_NAME"):
        Home(root=tmp_path, name=name, data_dir=tmp_path / "data")


@pytest.mark.parametrize("target", ["", "current", "upgrades", "upgrades/", "upgrades/a/b", "/x"])
def test_target_dir_refuses_anything_but_genesis_or_an_upgrade(home: Home, target: str) -> None:
    with pytest.raises(LayoutError):
        home.target_dir(target)


def test_init_creates_the_layout_and_points_current_at_genesis(
    home: Home, make_binary: MakeBinary
) -> None:
    binary = make_binary()
    lines = init_home(home, binary)

    assert home.genesis_bin.read_bytes() == binary.read_bytes()
    assert stat.S_IMODE(home.genesis_bin.stat().st_mode) == 0o755
    for directory in (home.upgrades_dir, home.logs_dir, home.data_dir):
        assert directory.is_dir()
    assert stat.S_IMODE(home.visor_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.state_dir.stat().st_mode) == 0o700
    assert os.readlink(home.current_link) == "genesis"
    assert read_current(home) == Current(
        target="genesis",
        upgrade_name=None,
        directory=home.genesis_dir,
        binary=home.genesis_dir / "bin" / "gwemix",
    )
    assert any("installed genesis binary" in line for line in lines)
    assert any("current -> genesis" in line for line in lines)
    assert no_temp_links(home)
    assert not [p for p in home.genesis_bin.parent.iterdir() if p.name != "gwemix"]


def test_init_again_with_the_same_binary_changes_nothing(
    home: Home, make_binary: MakeBinary
) -> None:
    binary = make_binary()
    init_home(home, binary)
    inode = home.genesis_bin.stat().st_ino

    lines = init_home(home, binary)

    assert home.genesis_bin.stat().st_ino == inode
    assert not any(line.startswith("created") for line in lines)
    assert any("already installed" in line for line in lines)


def test_init_again_restores_the_execute_bit_of_the_genesis_binary(
    initialised: Home, make_binary: MakeBinary
) -> None:
    initialised.genesis_bin.chmod(0o644)

    lines = init_home(initialised, make_binary(version="1.0.0"))

    check_binary(initialised.genesis_bin)
    assert any("executable again" in line for line in lines)


def test_init_with_a_different_binary_is_refused_unless_forced(
    home: Home, make_binary: MakeBinary
) -> None:
    init_home(home, make_binary(version="1.0.0"))
    other = make_binary(version="2.0.0")

    with pytest.raises(LayoutError, match="differs") as refused:
        init_home(home, other)
    assert str(home.genesis_bin) in str(refused.value)
    assert b"1.0.0" in home.genesis_bin.read_bytes()

    lines = init_home(home, other, force=True)
    assert home.genesis_bin.read_bytes() == other.read_bytes()
    assert any("replaced genesis binary" in line for line in lines)


def test_init_never_repoints_an_existing_current(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    switch_current(initialised, "upgrades/v2")

    lines = init_home(initialised, make_binary(version="1.0.0"))

    assert os.readlink(initialised.current_link) == "upgrades/v2"
    assert any("upgrades/v2 (left unchanged)" in line for line in lines)


def test_init_reports_a_broken_current_without_fixing_it(
    initialised: Home, make_binary: MakeBinary
) -> None:
    initialised.current_link.unlink()
    initialised.current_link.symlink_to("upgrades/gone")

    lines = init_home(initialised, make_binary(version="1.0.0"))

    assert os.readlink(initialised.current_link) == "upgrades/gone"
    assert any(line.startswith("warning:") and "dangling" in line for line in lines)


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: (p.write_text("#!/bin/sh\n"), p.chmod(0o644)), "not executable"),
        (lambda p: p.symlink_to(p.parent / "nowhere"), "broken symlink"),
    ],
    ids=["missing", "directory", "not-executable", "broken-symlink"],
)
def test_init_refuses_an_unusable_binary(
    home: Home, tmp_path: Path, prepare: Callable[[Path], object], reason: str
) -> None:
    binary = tmp_path / "gwemix"
    prepare(binary)

    with pytest.raises(LayoutError, match=reason) as refused:
        init_home(home, binary)

    assert str(binary) in str(refused.value)
    assert not home.root.exists()


def test_check_binary_follows_symlinks_to_an_executable(
    tmp_path: Path, make_binary: MakeBinary
) -> None:
    link = tmp_path / "link"
    link.symlink_to(make_binary())
    check_binary(link)


def test_add_upgrade_installs_the_binary_like_cosmovisor(
    initialised: Home, make_binary: MakeBinary
) -> None:
    binary = make_binary(version="1.2.0")

    installed = add_upgrade(initialised, "v1.2.0", binary)

    assert installed == initialised.root / "wemixvisor/upgrades/v1.2.0/bin/gwemix"
    assert installed.read_bytes() == binary.read_bytes()
    check_binary(installed)


def test_add_upgrade_refuses_an_existing_upgrade_unless_forced(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    replacement = make_binary(version="2.0.1")

    with pytest.raises(LayoutError, match="already has a binary"):
        add_upgrade(initialised, "v2", replacement)

    installed = add_upgrade(initialised, "v2", replacement, force=True)
    assert installed.read_bytes() == replacement.read_bytes()


def test_add_upgrade_requires_an_initialised_home(home: Home, make_binary: MakeBinary) -> None:
    with pytest.raises(LayoutError, match="wemixvisor init"):
        add_upgrade(home, "v2", make_binary())
    assert not home.root.exists()


def test_add_upgrade_refuses_a_non_executable_binary(
    initialised: Home, make_binary: MakeBinary
) -> None:
    with pytest.raises(LayoutError, match="not executable"):
        add_upgrade(initialised, "v2", make_binary(executable=False))
    assert not initialised.upgrade_dir("v2").exists()


HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "../../x",
    "../genesis",
    "a/b",
    "/etc",
    "a\\b",
    "a b",
    "v1\n",
    "v1\0",
    "x" * 65,
    "v1.2.0-é",
    "\uff561",  # fullwidth v: looks like "v1", is not ASCII
    "~root",
    "$HOME",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_upgrade_names_are_refused(
    initialised: Home, make_binary: MakeBinary, name: str
) -> None:
    before = sorted(p for p in initialised.root.rglob("*"))

    with pytest.raises(LayoutError, match="invalid upgrade name"):
        add_upgrade(initialised, name, make_binary())

    assert sorted(p for p in initialised.root.rglob("*")) == before


@pytest.mark.parametrize("name", ["v1.2.0", "x" * 64, "a", "...", ".hidden", "RC_1-final", "-1"])
def test_valid_upgrade_names_are_used_as_is(home: Home, name: str) -> None:
    assert validate_upgrade_name(name) == name
    assert home.upgrade_dir(name) == home.upgrades_dir / name


@settings(max_examples=300, database=None, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="./-_aZ09\\\0 ", max_size=70),
        st.sampled_from(HOSTILE_NAMES),
    )
)
def test_any_upgrade_name_stays_inside_upgrades_or_is_refused(name: str) -> None:
    home = Home(root=Path("/srv/node"), name="gwemix", data_dir=Path("/srv/node/data"))
    try:
        directory = home.upgrade_dir(name)
    except LayoutError:
        assert UPGRADE_NAME_RE.fullmatch(name) is None or name in (".", "..")
        return
    normalised = Path(os.path.normpath(directory))
    assert normalised.parent == home.upgrades_dir
    assert normalised.name == name


def test_switch_current_uses_a_relative_link_back_and_forth(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))

    switch_current(initialised, "upgrades/v2")
    assert os.readlink(initialised.current_link) == "upgrades/v2"
    current = read_current(initialised)
    assert current.upgrade_name == "v2"
    assert current.binary == initialised.upgrade_bin("v2")

    switch_current(initialised, "genesis")
    assert os.readlink(initialised.current_link) == "genesis"
    assert read_current(initialised).upgrade_name is None
    assert no_temp_links(initialised)


def test_a_moved_home_keeps_a_working_current(
    initialised: Home, make_binary: MakeBinary, tmp_path: Path
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    switch_current(initialised, "upgrades/v2")
    moved_root = tmp_path / "moved"
    initialised.root.rename(moved_root)

    moved = Home(root=moved_root, name="gwemix", data_dir=moved_root / "data")

    assert read_current(moved).binary == moved.upgrade_bin("v2")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("upgrades/missing", "does not exist"),
        ("upgrades/../../etc", "invalid upgrade name"),
        ("genesis/bin", "invalid target"),
    ],
)
def test_a_failed_switch_keeps_the_old_link_and_leaves_no_temp_link(
    initialised: Home, target: str, reason: str
) -> None:
    with pytest.raises(LayoutError, match=reason):
        switch_current(initialised, target)

    assert os.readlink(initialised.current_link) == "genesis"
    assert no_temp_links(initialised)


def test_switch_refuses_an_upgrade_whose_binary_is_not_executable(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    initialised.upgrade_bin("v2").chmod(0o644)

    with pytest.raises(LayoutError, match="not executable"):
        switch_current(initialised, "upgrades/v2")
    assert os.readlink(initialised.current_link) == "genesis"


def test_switch_over_a_real_directory_fails_cleanly(initialised: Home) -> None:
    initialised.current_link.unlink()
    initialised.current_link.mkdir()

    with pytest.raises(LayoutError, match="cannot point"):
        switch_current(initialised, "genesis")

    assert initialised.current_link.is_dir()
    assert not initialised.current_link.is_symlink()
    assert no_temp_links(initialised)


def test_readers_never_see_a_missing_current_during_switches(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    stop = threading.Event()
    errors: list[Exception] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(read_current(initialised).target)
            except Exception as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            switch_current(initialised, "upgrades/v2" if i % 2 == 0 else "genesis")
    finally:
        stop.set()
        thread.join(timeout=10)

    assert errors == []
    assert seen <= {"genesis", "upgrades/v2"}
    assert seen
    assert no_temp_links(initialised)


def relink(home: Home, text: str) -> None:
    home.current_link.unlink()
    home.current_link.symlink_to(text)


def test_read_current_without_current_says_to_run_init(initialised: Home) -> None:
    initialised.current_link.unlink()
    with pytest.raises(LayoutError, match="wemixvisor init") as refused:
        read_current(initialised)
    assert str(initialised.current_link) in str(refused.value)


def test_read_current_refuses_a_real_directory(initialised: Home) -> None:
    initialised.current_link.unlink()
    (initialised.current_link / "bin").mkdir(parents=True)
    with pytest.raises(LayoutError, match="is a directory, not a symlink"):
        read_current(initialised)
    assert not initialised.current_link.is_symlink()


def test_an_absolute_link_inside_the_home_is_read_and_made_relative_at_the_next_switch(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    relink(initialised, str(initialised.upgrades_dir / "v2") + "/")
    current = read_current(initialised)
    assert (current.target, current.upgrade_name) == ("upgrades/v2", "v2")
    assert current.binary == initialised.upgrade_bin("v2")
    # Left as it is until `current` is switched; then written relative, as ours always are.
    assert os.path.isabs(os.readlink(initialised.current_link))
    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    try:
        switch_current(initialised, "genesis")
        switch_current(initialised, "upgrades/v2")
    finally:
        logger.remove(sink)
    assert os.readlink(initialised.current_link) == "upgrades/v2"
    rewritten = [line for line in lines if "now relative" in line]
    assert len(rewritten) == 1
    assert str(initialised.upgrades_dir / "v2") in rewritten[0]


def test_an_absolute_link_through_a_symlinked_home_is_read(
    tmp_path: Path, make_binary: MakeBinary
) -> None:
    real = Home(root=tmp_path / "real", name="gwemix", data_dir=tmp_path / "real" / "data")
    init_home(real, make_binary())
    (tmp_path / "alias").symlink_to(real.root)
    relink(real, str(real.root.resolve() / "wemixvisor" / "genesis"))
    aliased = Home(root=tmp_path / "alias", name="gwemix", data_dir=tmp_path / "alias" / "data")
    assert read_current(aliased).target == "genesis"


@pytest.mark.parametrize(
    "text",
    [
        "/usr/bin",
        "{home}/genesis",
        "{visor}/../wemixvisor/genesis",
        "{visor}/upgrades/../genesis",
        "{visor}",
        "{visor}/state",
    ],
)
def test_an_absolute_link_outside_genesis_and_upgrades_of_the_home_stays_an_error(
    initialised: Home, text: str
) -> None:
    shown = text.format(home=initialised.root, visor=initialised.visor_dir)
    relink(initialised, shown)
    with pytest.raises(LayoutError, match=r"absolute path|not genesis or upgrades/<name>"):
        read_current(initialised)
    assert os.readlink(initialised.current_link) == shown


def test_read_current_refuses_a_dangling_link(initialised: Home) -> None:
    relink(initialised, "upgrades/v9")
    with pytest.raises(LayoutError, match="dangling"):
        read_current(initialised)


@pytest.mark.parametrize("text", ["../..", "..", "../wemixvisor/genesis", "state", "upgrades"])
def test_read_current_refuses_a_link_outside_genesis_and_upgrades(
    initialised: Home, text: str
) -> None:
    relink(initialised, text)
    with pytest.raises(LayoutError, match="not genesis or upgrades/<name>"):
        read_current(initialised)
    assert os.readlink(initialised.current_link) == text


def test_read_current_refuses_a_binary_that_is_not_executable(initialised: Home) -> None:
    initialised.genesis_bin.chmod(0o644)
    with pytest.raises(LayoutError, match="not executable") as refused:
        read_current(initialised)
    assert str(initialised.genesis_bin) in str(refused.value)


def test_read_current_refuses_a_target_without_a_binary(
    initialised: Home, make_binary: MakeBinary
) -> None:
    add_upgrade(initialised, "v2", make_binary(version="2.0.0"))
    switch_current(initialised, "upgrades/v2")
    initialised.upgrade_bin("v2").unlink()
    with pytest.raises(LayoutError, match="does not exist"):
        read_current(initialised)
    assert os.readlink(initialised.current_link) == "upgrades/v2"


def test_read_current_accepts_equivalent_spellings(initialised: Home) -> None:
    relink(initialised, "./genesis/")
    assert read_current(initialised).target == "genesis"
