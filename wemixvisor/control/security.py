"""Who may talk to the control socket (SPEC §11, §15).

- ipc: the socket file is mode 0600 inside a 0700 directory; the file system is the check.
- tcp: CURVE (ZeroMQ's public-key encryption and authentication) whenever the home has server
  keys; a client is served only if its public key is in `keys/authorized/`. A tcp endpoint on a
  non-loopback address without server keys is refused at startup; a loopback one is allowed
  (with a warning), like the events socket.

`wemixvisor keys generate` writes, under `$DAEMON_HOME/wemixvisor/keys/` (mode 0700, files 0600):
`server.key` + `server.key_secret` (the daemon's keypair), `client.key` + `client.key_secret`
(the operator tool's), and `authorized/client.key` (the client's public key, allowed in).
More clients are allowed by copying their public `.key` files into `authorized/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
from loguru import logger

from wemixvisor.home.ipc import EndpointError, is_loopback_host

__all__ = [
    "AUTHORIZED_DIR",
    "CLIENT_NAME",
    "KEYS_DIR",
    "SERVER_NAME",
    "CurveClientKeys",
    "ServerCurve",
    "client_keys_for",
    "generate_keys",
    "keys_dir_of",
    "load_client_keys",
    "load_server_curve",
    "server_curve_for",
    "tcp_is_loopback",
]

KEYS_DIR = "keys"
AUTHORIZED_DIR = "authorized"
SERVER_NAME = "server"
CLIENT_NAME = "client"


class ServerCurve(NamedTuple):
    """The daemon's CURVE keypair (Z85 bytes) and the directory of authorized client keys."""

    public: bytes
    secret: bytes
    authorized_dir: Path


class CurveClientKeys(NamedTuple):
    """What a client needs for CURVE: the server's public key and its own keypair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes


def keys_dir_of(home_root: Path) -> Path:
    """`$DAEMON_HOME/wemixvisor/keys`."""
    return home_root / "wemixvisor" / KEYS_DIR


def _private_file(path: Path) -> None:
    os.chmod(path, 0o600)


def generate_keys(keys_dir: Path, *, force: bool = False) -> list[Path]:
    """Write a server and a client keypair and authorize the client; the files written.

    Refuses (FileExistsError) to replace existing keys unless `force`: replacing the server key
    locks out every client holding the old public key.
    """
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    server_secret = keys_dir / f"{SERVER_NAME}.key_secret"
    if server_secret.exists() and not force:
        raise FileExistsError(f"{server_secret} exists; use --force to replace the keys")
    authorized = keys_dir / AUTHORIZED_DIR
    for directory in (keys_dir, authorized):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    written: list[Path] = []
    for name in (SERVER_NAME, CLIENT_NAME):
        public_file, secret_file = zmq.auth.create_certificates(keys_dir, name)
        for path in (Path(public_file), Path(secret_file)):
            _private_file(path)
            written.append(path)
    client_public = keys_dir / f"{CLIENT_NAME}.key"
    allowed = authorized / client_public.name
    allowed.write_bytes(client_public.read_bytes())
    _private_file(allowed)
    written.append(allowed)
    return written


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise EndpointError(f"cannot read CURVE key file {path}: {exc}") from exc


def _load_keypair(secret_file: Path) -> tuple[bytes, bytes] | None:
    if not secret_file.is_file():
        return None
    public, secret = _load_certificate(secret_file)
    if secret is None:
        raise EndpointError(f"{secret_file} holds no secret key")
    return public, secret


def load_server_curve(keys_dir: Path) -> ServerCurve | None:
    """The daemon's keys, None when `server.key_secret` does not exist; EndpointError when a
    key file cannot be read."""
    pair = _load_keypair(keys_dir / f"{SERVER_NAME}.key_secret")
    if pair is None:
        return None
    return ServerCurve(public=pair[0], secret=pair[1], authorized_dir=keys_dir / AUTHORIZED_DIR)


def load_client_keys(keys_dir: Path) -> CurveClientKeys | None:
    """The operator tool's keys, None unless both `server.key` and `client.key_secret` exist;
    EndpointError when a key file cannot be read."""
    server_public_file = keys_dir / f"{SERVER_NAME}.key"
    if not server_public_file.is_file():
        return None
    pair = _load_keypair(keys_dir / f"{CLIENT_NAME}.key_secret")
    if pair is None:
        return None
    server_public, _ = _load_certificate(server_public_file)
    return CurveClientKeys(server_public=server_public, public=pair[0], secret=pair[1])


def _tcp_host(endpoint: str) -> str:
    address = endpoint.removeprefix("tcp://")
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0]


def tcp_is_loopback(endpoint: str) -> bool:
    """Whether a tcp:// endpoint names a loopback address (127.0.0.0/8, ::1, localhost).

    Wildcards (`*`, `0.0.0.0`), interface names and other host names are not loopback.
    """
    return is_loopback_host(_tcp_host(endpoint))


def server_curve_for(endpoint: str, keys_dir: Path) -> ServerCurve | None:
    """The CURVE keys the control server binds `endpoint` with (None: no CURVE).

    Raises EndpointError for a tcp endpoint on a non-loopback address without server keys, and
    for a transport other than ipc or tcp.
    """
    if endpoint.startswith("ipc://"):
        return None
    if not endpoint.startswith("tcp://"):
        raise EndpointError(f"control endpoint {endpoint!r}: only ipc:// and tcp:// are supported")
    curve = load_server_curve(keys_dir)
    if curve is not None:
        if not zmq.has("curve"):
            raise EndpointError("control endpoint needs CURVE but libzmq was built without it")
        return curve
    if not tcp_is_loopback(endpoint):
        raise EndpointError(
            f"refusing to bind control endpoint {endpoint}: not a loopback address and no CURVE "
            f"keys in {keys_dir}; run `wemixvisor keys generate`, or use ipc:// or "
            "tcp://127.0.0.1:PORT"
        )
    logger.warning(
        "control endpoint {} has no CURVE keys: every local user can control the daemon; "
        "`wemixvisor keys generate` turns authentication on",
        endpoint,
    )
    return None


def client_keys_for(endpoint: str, keys_dir: Path) -> CurveClientKeys | None:
    """The client keys to use for `endpoint`: the home's keys for tcp, None for ipc."""
    if not endpoint.startswith("tcp://"):
        return None
    return load_client_keys(keys_dir)
