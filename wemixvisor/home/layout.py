"""The home layout (SPEC §2): where binaries live and which one `current` points at.

Every path under DAEMON_HOME is built here, from a validated home, a validated binary name and
validated upgrade names, so no other module joins operator input onto a path (SPEC §15).
`switch_current` is the only code that points `current`; `read_current` only reads it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from loguru import logger

from wemixvisor.home.fsutil import atomic_write, fsync_dir, removed_on_failure

if TYPE_CHECKING:
    from wemixvisor.config import Config

__all__ = [
    "GENESIS",
    "UPGRADES",
    "UPGRADE_NAME_RE",
    "Current",
    "Home",
    "LayoutError",
    "add_upgrade",
    "check_binary",
    "init_home",
    "install_binary",
    "make_dir",
    "read_current",
    "switch_current",
    "validate_upgrade_name",
]

GENESIS = "genesis"
UPGRADES = "upgrades"

UPGRADE_NAME_RE: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
"""SPEC §4: 1 to 64 ASCII letters, digits, `.`, `_` or `-` (`.` and `..` are refused separately)."""

_COPY_CHUNK = 1 << 20


class LayoutError(Exception):
    """The home layout is missing, broken or would be broken; the message names the path."""


def validate_upgrade_name(name: str) -> str:
    """Return `name` if it is a valid upgrade name (SPEC §4), else raise LayoutError.

    A valid name is always a single, plain path component, so `upgrades/<name>` stays inside
    the upgrades directory.
    """
    if not isinstance(name, str):
        raise LayoutError(f"upgrade name must be a string, got {type(name).__name__}")
    if name in (".", "..") or UPGRADE_NAME_RE.fullmatch(name) is None:
        raise LayoutError(
            f"invalid upgrade name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ -"
            " (not '.' or '..')"
        )
    return name


def _validate_binary_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise LayoutError(
            f"invalid DAEMON_NAME {name!r}: it must be a plain file name"
            " (not empty, no '/', not '.' or '..')"
        )
    return name


@dataclass(frozen=True)
class Home:
    """DAEMON_HOME with the node's binary name and data dir; every layout path derives from it."""

    root: Path
    name: str
    data_dir: Path

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise LayoutError(f"DAEMON_HOME must be an absolute path, got {str(self.root)!r}")
        _validate_binary_name(self.name)

    @classmethod
    def from_config(cls, config: Config) -> Home:
        """The home layout a configuration describes (DAEMON_HOME, DAEMON_NAME, data dir)."""
        return cls(root=config.home, name=config.node.name, data_dir=config.node.data_dir)

    @property
    def visor_dir(self) -> Path:
        """`$DAEMON_HOME/wemixvisor`: binaries, `current`, state and the control/event sockets."""
        return self.root / "wemixvisor"

    @property
    def genesis_dir(self) -> Path:
        """Directory of the genesis binary."""
        return self.visor_dir / GENESIS

    @property
    def genesis_bin(self) -> Path:
        """The genesis binary, `genesis/bin/$DAEMON_NAME`."""
        return self.genesis_dir / "bin" / self.name

    @property
    def upgrades_dir(self) -> Path:
        """Directory holding one `<name>/` per upgrade."""
        return self.visor_dir / UPGRADES

    @property
    def current_link(self) -> Path:
        """The `current` symlink (relative: `genesis` or `upgrades/<name>`)."""
        return self.visor_dir / "current"

    @property
    def state_dir(self) -> Path:
        """Daemon-owned state: journal, plan queue, node.pid."""
        return self.visor_dir / "state"

    @property
    def logs_dir(self) -> Path:
        """`$DAEMON_HOME/logs`."""
        return self.root / "logs"

    @property
    def node_log(self) -> Path:
        """The node's stdout+stderr."""
        return self.logs_dir / "node.log"

    @property
    def config_path(self) -> Path:
        """The optional `config.toml`."""
        return self.visor_dir / "config.toml"

    def upgrade_dir(self, name: str) -> Path:
        """`upgrades/<name>` for a validated upgrade name (LayoutError for an invalid one)."""
        return self.upgrades_dir / validate_upgrade_name(name)

    def upgrade_bin(self, name: str) -> Path:
        """`upgrades/<name>/bin/$DAEMON_NAME`."""
        return self.upgrade_dir(name) / "bin" / self.name

    def target_dir(self, target: str) -> Path:
        """Directory of a `current` target: `genesis` or `upgrades/<name>`."""
        upgrade_name = _parse_target(target)
        return self.genesis_dir if upgrade_name is None else self.upgrade_dir(upgrade_name)


@dataclass(frozen=True)
class Current:
    """What `current` points at, checked: the target, its directory and its executable binary."""

    target: str
    upgrade_name: str | None
    directory: Path
    binary: Path


def _parse_target(target: str) -> str | None:
    """The upgrade name of `upgrades/<name>`, None for `genesis`; LayoutError for anything else."""
    if target == GENESIS:
        return None
    prefix, sep, name = target.partition("/")
    if prefix != UPGRADES or not sep:
        raise LayoutError(f"invalid target {target!r}: expected {GENESIS!r} or '{UPGRADES}/<name>'")
    return validate_upgrade_name(name)


def check_binary(path: Path) -> None:
    """Raise LayoutError unless `path` (after following links) is an executable regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if os.path.lexists(path):
            raise LayoutError(f"binary {path} is a broken symlink") from None
        raise LayoutError(f"binary {path} does not exist") from None
    except OSError as exc:
        raise LayoutError(f"binary {path} cannot be inspected: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise LayoutError(f"binary {path} is {kind}; expected an executable file")
    if not os.access(path, os.X_OK):
        raise LayoutError(f"binary {path} is not executable (mode {stat.filemode(st.st_mode)})")


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(_COPY_CHUNK)
            if chunk != fb.read(_COPY_CHUNK):
                return False
            if not chunk:
                return True


def install_binary(source: Path, dest: Path) -> None:
    """Copy `source` to `dest` (mode 0755) so that `dest` is the old file or the new one.

    Streamed through `atomic_write`, because node binaries are large. Node binaries are public
    programs: 0755 lets a node run as another user.
    """
    try:
        with source.open("rb") as src:
            atomic_write(dest, lambda out: shutil.copyfileobj(src, out, _COPY_CHUNK), mode=0o755)
    except OSError as exc:
        raise LayoutError(f"cannot install {source} as {dest}: {exc.strerror or exc}") from exc


def make_dir(path: Path, lines: list[str], *, mode: int = 0o755, private: bool = False) -> None:
    """Create `path` if missing; a private directory is (re)set to 0700 even if it existed."""
    try:
        if not path.is_dir():
            if os.path.lexists(path):
                raise LayoutError(f"{path} exists but is not a directory")
            path.mkdir(mode=mode, parents=True)
            lines.append(f"created {path}")
        if private and stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
            lines.append(f"set {path} to mode 0700")
    except OSError as exc:
        raise LayoutError(f"cannot create directory {path}: {exc.strerror or exc}") from exc


def init_home(home: Home, binary: Path, *, force: bool = False) -> list[str]:
    """Create the home layout and install `binary` as genesis; return what was done, as lines.

    Idempotent: re-running with the same binary changes nothing. A different binary is refused
    unless `force`. `current` is created (pointing at genesis) only when it does not exist; an
    existing one is never re-pointed, and a broken one is reported as a warning line.
    """
    check_binary(binary)
    dest = home.genesis_bin
    replace = True
    if os.path.lexists(dest):
        if not dest.is_file():
            raise LayoutError(f"genesis binary {dest} exists but is not a regular file")
        try:
            same = _same_content(binary, dest)
        except OSError as exc:
            raise LayoutError(f"cannot compare {binary} with {dest}: {exc.strerror}") from exc
        if same:
            replace = False
        elif not force:
            raise LayoutError(
                f"genesis binary {dest} already exists and differs from {binary};"
                " use --force to replace it"
            )

    lines: list[str] = []
    make_dir(home.root, lines)
    # The control and event sockets live in visor_dir; 0700 is what keeps other users out.
    make_dir(home.visor_dir, lines, mode=0o700, private=True)
    make_dir(home.genesis_dir / "bin", lines)
    make_dir(home.upgrades_dir, lines)
    make_dir(home.state_dir, lines, mode=0o700, private=True)
    make_dir(home.logs_dir, lines)
    # Node data dirs hold the node key; geth-family nodes create theirs 0700 too.
    make_dir(home.data_dir, lines, mode=0o700)

    if replace:
        existed = os.path.lexists(dest)
        install_binary(binary, dest)
        lines.append(f"{'replaced' if existed else 'installed'} genesis binary {dest}")
    else:
        if not os.access(dest, os.X_OK):
            try:
                dest.chmod(0o755)
            except OSError as exc:
                raise LayoutError(f"cannot make {dest} executable: {exc.strerror}") from exc
            lines.append(f"made genesis binary {dest} executable again")
        lines.append(f"genesis binary {dest} already installed (same content)")

    if not os.path.lexists(home.current_link):
        switch_current(home, GENESIS)
        lines.append(f"created {home.current_link} -> {GENESIS}")
    else:
        try:
            current = read_current(home)
        except LayoutError as exc:
            lines.append(f"warning: {exc} (left unchanged)")
        else:
            lines.append(f"{home.current_link} -> {current.target} (left unchanged)")
    return lines


def add_upgrade(home: Home, name: str, binary: Path, *, force: bool = False) -> Path:
    """Install `binary` as `upgrades/<name>/bin/$DAEMON_NAME`; return the installed path.

    The home must be initialised. An existing binary for `name` is refused unless `force`.
    """
    dest = home.upgrade_bin(name)
    if not home.upgrades_dir.is_dir():
        raise LayoutError(
            f"{home.root} is not an initialised home ({home.upgrades_dir} is missing);"
            " run `wemixvisor init <binary>` first"
        )
    check_binary(binary)
    if os.path.lexists(dest) and not force:
        raise LayoutError(
            f"upgrade {name!r} already has a binary at {dest}; use --force to replace it"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayoutError(f"cannot create directory {dest.parent}: {exc.strerror}") from exc
    install_binary(binary, dest)
    return dest


def switch_current(home: Home, target: str) -> None:
    """Point `current` at `target` (`genesis` or `upgrades/<name>`) atomically.

    The target's binary must be an executable file. A relative symlink is created under a
    temporary name and renamed over `current`, then the directory is fsynced: a reader sees the
    old link or the new one, never none, and no temporary link is left behind on failure.
    """
    link = home.current_link
    try:
        check_binary(home.target_dir(target) / "bin" / home.name)
    except LayoutError as exc:
        raise LayoutError(f"cannot point {link} at {target!r}: {exc}") from None
    try:
        previous: str | None = os.readlink(link)
    except OSError:
        previous = None
    tmp = home.visor_dir / f".current.{secrets.token_hex(8)}"
    try:
        with removed_on_failure(tmp):
            os.symlink(target, tmp)
            os.replace(tmp, link)
        fsync_dir(home.visor_dir)
    except OSError as exc:
        raise LayoutError(f"cannot point {link} at {target}: {exc.strerror or exc}") from exc
    if previous is not None and os.path.isabs(previous):
        logger.info("{} was the absolute link {}; it is now relative: {}", link, previous, target)


def _inside_visor_dir(home: Home, text: str) -> str | None:
    """An absolute `current` (as cosmovisor writes it) as the path relative to the home's
    `wemixvisor/` directory, or None when it points elsewhere. `..` is never followed."""
    path = PurePosixPath(text)
    if ".." in path.parts:
        return None
    for base in {home.visor_dir, Path(os.path.realpath(home.visor_dir))}:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(base))
    return None


def read_current(home: Home) -> Current:
    """Resolve and check `current`; LayoutError (never a repair) when it is missing or broken."""
    link = home.current_link
    relink_hint = f"re-create it as a relative link, e.g. `ln -sfn {GENESIS} {link}`"
    try:
        if not os.path.lexists(link):
            raise LayoutError(f"{link} does not exist: run `wemixvisor init <binary>` first")
        if not link.is_symlink():
            kind = "a directory" if link.is_dir() else "a regular file or other non-link"
            raise LayoutError(
                f"{link} is {kind}, not a symlink to {GENESIS} or {UPGRADES}/<name>;"
                f" move it away and {relink_hint}"
            )
        text = os.readlink(link)
    except OSError as exc:
        raise LayoutError(f"cannot read {link}: {exc.strerror or exc}") from exc
    relative = _inside_visor_dir(home, text) if os.path.isabs(text) else text
    if relative is None:
        raise LayoutError(
            f"{link} points at the absolute path {text}, outside {home.visor_dir}; {relink_hint}"
        )
    # PurePosixPath drops "./" and trailing slashes, so only equivalent spellings are accepted.
    target = "/".join(PurePosixPath(relative).parts)
    try:
        upgrade_name = _parse_target(target)
    except LayoutError:
        raise LayoutError(
            f"{link} points at {text!r}, which is not {GENESIS} or {UPGRADES}/<name>"
            f" inside {home.visor_dir}"
        ) from None
    directory = home.visor_dir / target
    if not directory.is_dir():
        raise LayoutError(f"{link} is dangling: {link} -> {text}, but {directory} does not exist")
    binary = directory / "bin" / home.name
    try:
        check_binary(binary)
    except LayoutError as exc:
        raise LayoutError(f"{link} -> {text}: {exc}") from None
    return Current(target=target, upgrade_name=upgrade_name, directory=directory, binary=binary)
