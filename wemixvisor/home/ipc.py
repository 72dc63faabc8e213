"""The daemon's ipc:// socket files: private directories, stale files, whose file it is.

Both ZeroMQ sockets the daemon binds (events, control) go through `prepare_socket_file` before
binding, so that the rules of SPEC §2/§11 hold for both: the directory is 0700, a file left by a
killed daemon is replaced, and a socket somebody still listens on is never taken over.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from pathlib import Path

from loguru import logger


class EndpointError(ValueError):
    """An endpoint that must not or cannot be bound; the message says why."""


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an `ipc://` endpoint; None for other transports and abstract names."""
    if not endpoint.startswith("ipc://"):
        return None
    address = endpoint.removeprefix("ipc://")
    if not address or address.startswith("@"):
        return None
    return Path(address)


def is_loopback_host(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback address (127.0.0.0/8, ::1).

    Wildcards (`*`, `0.0.0.0`), interface names (`lo`, `eth0`) and other host names are not:
    only an explicit address is accepted.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` (and missing parents) with mode 0700; an existing directory that
    others can enter is left as it is, with a warning."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        # mkdir's mode is filtered by the umask; set it exactly.
        os.chmod(path, 0o700)
    if not missing:
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "{} has mode {:o}; 0700 keeps other users away from the sockets in it",
                directory,
                mode,
            )


def unix_socket_accepts(path: Path, timeout: float = 1.0) -> bool:
    """True if a process accepts connections on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return False
    except TimeoutError:
        # A listener whose backlog is full is still a listener.
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise EndpointError(f"cannot check the socket {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.close()
    return True


def prepare_socket_file(endpoint: str, what: str) -> Path | None:
    """Make an ipc endpoint's directory private and clear a stale socket file; its path.

    None for endpoints without a file (tcp, abstract names). EndpointError when the path holds
    something that is not a socket, or a socket another process still listens on.
    """
    path = ipc_path(endpoint)
    if path is None:
        return None
    ensure_private_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(st.st_mode):
        raise EndpointError(
            f"cannot bind {what} endpoint {endpoint}: {path} exists and is not a socket"
        )
    if unix_socket_accepts(path):
        raise EndpointError(
            f"cannot bind {what} endpoint {endpoint}: another process is listening on it"
        )
    # Left behind by a daemon that was killed: nobody listens, so it is safe to replace.
    logger.info("removing stale {} socket {}", what, path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return path
