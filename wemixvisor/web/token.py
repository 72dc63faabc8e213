"""The web console's bearer token: `$DAEMON_HOME/wemixvisor/web.token` (0600, SPEC §18)."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from wemixvisor.home.fsutil import fsync_dir

__all__ = ["TOKEN_FILE", "load_or_create_token", "token_matches"]

TOKEN_FILE: Final = "web.token"  # noqa: S105 - the file name, not a secret
_TOKEN_BYTES: Final = 32


def load_or_create_token(visor_dir: Path) -> str:
    """The token in `visor_dir/web.token`, made on first use (0600, never replaced).

    A token file readable by others is refused: anyone who can read it can drive the daemon.
    """
    path = visor_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read(path)
    try:
        os.write(fd, (secrets.token_urlsafe(_TOKEN_BYTES) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(visor_dir)
    return _read(path)


def _read(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{path} is readable by others (mode {mode:o}); chmod 600 it or remove it to make "
            "a new token"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path} holds no usable token; remove it to make a new one")
    return token


def token_matches(expected: str, given: str) -> bool:
    """Whether `given` is the token, compared in constant time."""
    return hmac.compare_digest(expected.encode(), given.encode())
