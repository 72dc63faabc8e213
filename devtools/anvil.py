"""A real node for tests, the demo and the benchmarks: anvil, fetched from the npm registry.

`anvil_binary(version)` returns `<cache>/anvil/<version>/anvil`, fetching it on first use with
`npm pack @foundry-rs/anvil-linux-amd64@<version>`. The tarball is checked against the sha512
recorded here before anything is extracted, and only `package/bin/anvil` is taken out of it.
Several processes (pytest workers, the demo, a bench) may ask at once: a lock file per version
lets one of them fetch while the others wait for its result.

Run `python -m devtools.anvil [VERSION...]` to fill the cache ahead of time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "SUPPORTED_VERSIONS",
    "AnvilProcess",
    "IntegrityError",
    "RpcError",
    "anvil_binary",
    "anvil_tarball",
    "cache_root",
    "fetch_all",
    "free_port",
    "rpc_call",
    "wait_for_rpc",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_PACKAGE = "@foundry-rs/anvil-linux-amd64"
_MEMBER = "package/bin/anvil"

# npm's `integrity` field of each published tarball (sha512, base64), checked before extraction.
_INTEGRITY: dict[str, str] = {
    "1.4.4": "sha512-q3HTiQZ8EST8W2YQ+5G43TDnTVArY2g+Xkx0upWTiEXmb6K5yjURQHEXV9ydwi7w5IdBomoBvzyBxdGR1rxnaw==",  # noqa: E501
    "1.5.1": "sha512-17AQOAcW1/iLQ9batoTWNMDp6hcCvh5rH0f5fkEzvsiv50Sq6Q4jyyGB30YEdQnHFkkmmQNKsZz/R1RhuyxJkg==",  # noqa: E501
    "1.7.1": "sha512-+XmShybEaxfCrr0OUUZwYEy2OnYZt5pHH9TzBtLv3+VrK0O/ANuNSVEahqNhKHlgX7GRJ59383ofNhxkRWIYTg==",  # noqa: E501
}

SUPPORTED_VERSIONS: tuple[str, ...] = tuple(_INTEGRITY)
"""Versions with a recorded integrity: 1.5.1 is the genesis binary, 1.7.1 the upgrade."""

_NPM_TIMEOUT = 600.0
_MAX_BINARY_BYTES = 512 * 1024 * 1024
_CHUNK = 1024 * 1024

# Binaries already hashed by this process, keyed by path and the stat fields that change when
# the file is rewritten or truncated, so that repeated look-ups do not re-hash 34 MB each time.
_verified: dict[Path, tuple[int, int, int]] = {}


class IntegrityError(RuntimeError):
    """The downloaded tarball does not match the recorded integrity; nothing was installed."""


class RpcError(RuntimeError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message


def cache_root() -> Path:
    """Directory shared by tests, demo and benches: `$WEMIXVISOR_CACHE`, else `<repo>/.cache`."""
    configured = os.environ.get("WEMIXVISOR_CACHE")
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(__file__).resolve().parent.parent / ".cache"


def anvil_binary(version: str) -> Path:
    """Path of the cached anvil `version`, fetched from npm first if missing or damaged.

    Raises ValueError for a version without a recorded integrity, IntegrityError when the
    tarball does not match it, and RuntimeError when npm is missing or fails.
    """
    if version not in _INTEGRITY:
        supported = ", ".join(SUPPORTED_VERSIONS)
        raise ValueError(f"unknown anvil version {version!r} (supported: {supported})")
    anvil_dir = cache_root() / "anvil"
    binary = anvil_dir / version / "anvil"
    if _is_intact(binary):
        return binary
    anvil_dir.mkdir(parents=True, exist_ok=True)
    with _locked(anvil_dir / f".{version}.lock"):
        # Another process may have installed it while this one waited for the lock.
        if _is_intact(binary):
            return binary
        _fetch(version, anvil_dir, binary)
    return binary


def anvil_tarball(version: str) -> Path:
    """Path of the npm tarball of anvil `version` (`<cache>/tarballs/`), fetched if missing.

    The tarball is checked against the recorded integrity on every call, so a caller may serve
    its bytes as a genuine release artifact. Raises like `anvil_binary`.
    """
    if version not in _INTEGRITY:
        supported = ", ".join(SUPPORTED_VERSIONS)
        raise ValueError(f"unknown anvil version {version!r} (supported: {supported})")
    tarball_dir = cache_root() / "tarballs"
    tarball = tarball_dir / f"anvil-linux-amd64-{version}.tgz"
    tarball_dir.mkdir(parents=True, exist_ok=True)
    with _locked(tarball_dir / f".{version}.lock"):
        if tarball.is_file():
            try:
                _check_integrity(tarball, _INTEGRITY[version])
            except IntegrityError:
                logger.warning("cached %s is damaged; fetching it again", tarball)
            else:
                return tarball
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", dir=tarball_dir))
        try:
            fetched = _npm_pack(version, work)
            _check_integrity(fetched, _INTEGRITY[version])
            os.replace(fetched, tarball)
            _fsync_dir(tarball_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def fetch_all() -> dict[str, Path]:
    """Fetch every supported version into the cache; maps version to binary path."""
    return {version: anvil_binary(version) for version in SUPPORTED_VERSIONS}


def _digest_path(binary: Path) -> Path:
    return binary.with_name(binary.name + ".sha256")


def _is_intact(binary: Path) -> bool:
    """Whether `binary` is the complete, executable file that was extracted from a verified tarball.

    The sha256 recorded beside it at install time catches truncated or overwritten files.
    """
    try:
        stat = binary.stat()
        recorded = _digest_path(binary).read_text().split()
    except OSError:
        return False
    if not binary.is_file() or not os.access(binary, os.X_OK) or len(recorded) != 2:
        return False
    expected_digest, expected_size = recorded
    if str(stat.st_size) != expected_size:
        return False
    key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if _verified.get(binary) == key:
        return True
    if _sha256_file(binary) != expected_digest:
        return False
    _verified[binary] = key
    return True


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # flock locks belong to the open file description, so they also exclude threads of one
    # process that open the lock file separately; the kernel drops them if the holder dies.
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fetch(version: str, anvil_dir: Path, binary: Path) -> None:
    logger.info("fetching anvil %s from npm (%s)", version, _PACKAGE)
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", dir=anvil_dir))
    try:
        tarball = _npm_pack(version, work)
        _check_integrity(tarball, _INTEGRITY[version])
        extracted = work / "anvil"
        digest, size = _extract_binary(tarball, extracted)
        binary.parent.mkdir(parents=True, exist_ok=True)
        # Digest first, binary last: a binary is only trusted with a digest that matches it.
        digest_tmp = work / "anvil.sha256"
        digest_tmp.write_text(f"{digest} {size}\n")
        os.replace(digest_tmp, _digest_path(binary))
        os.replace(extracted, binary)
        _fsync_dir(binary.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("anvil %s installed at %s", version, binary)


def _npm_pack(version: str, destination: Path) -> Path:
    """Download the package tarball with npm into `destination` and return its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH; it is needed to fetch anvil from npm")
    spec = f"{_PACKAGE}@{version}"
    try:
        completed = subprocess.run(
            [npm, "pack", spec, "--ignore-scripts", "--pack-destination", str(destination)],
            cwd=destination,
            capture_output=True,
            text=True,
            timeout=_NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"npm pack {spec} did not finish within {_NPM_TIMEOUT:.0f} s") from exc
    if completed.returncode != 0:
        raise RuntimeError(
            f"npm pack {spec} failed (exit {completed.returncode}): {completed.stderr.strip()}"
        )
    tarballs = sorted(destination.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeError(f"npm pack {spec} produced {len(tarballs)} tarballs, expected one")
    return tarballs[0]


def _check_integrity(tarball: Path, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise IntegrityError(f"unsupported integrity algorithm {algorithm!r}")
    digest = hashlib.sha512()
    with tarball.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual != expected:
        raise IntegrityError(
            f"{tarball.name}: sha512-{actual} does not match recorded {integrity}; not installed"
        )


def _extract_binary(tarball: Path, target: Path) -> tuple[str, int]:
    """Copy `package/bin/anvil` out of `tarball` into `target` (mode 0755); returns sha256, size.

    The member's bytes are streamed into a file this function names, so no path, link or
    device entry of the archive is ever created on disk.
    """
    with tarfile.open(tarball, mode="r:gz") as archive:
        try:
            member = archive.getmember(_MEMBER)
        except KeyError:
            raise RuntimeError(f"{tarball.name} has no {_MEMBER}") from None
        if not member.isreg() or not 0 < member.size <= _MAX_BINARY_BYTES:
            raise RuntimeError(f"{tarball.name}: {_MEMBER} is not a plausible executable file")
        source = archive.extractfile(member)
        if source is None:
            raise RuntimeError(f"{tarball.name}: {_MEMBER} cannot be read")
        digest = hashlib.sha256()
        written = 0
        with source, target.open("xb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    if written != member.size:
        raise RuntimeError(
            f"{tarball.name}: {_MEMBER} is truncated ({written}/{member.size} bytes)"
        )
    target.chmod(0o755)
    return digest.hexdigest(), written


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Local nodes only: an http_proxy in the environment must not capture requests to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rpc_call(url: str, method: str, params: Sequence[Any] = (), timeout: float = 2.0) -> Any:
    """One JSON-RPC 2.0 call over HTTP; returns `result` or raises RpcError / OSError."""
    _check_url(url)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(  # noqa: S310 -- scheme checked above
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=timeout) as response:
        reply = json.load(response)
    if "error" in reply:
        error = reply["error"]
        raise RpcError(int(error.get("code", 0)), str(error.get("message", "")))
    return reply["result"]


def _check_url(url: str) -> None:
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        raise ValueError(f"not an http(s) JSON-RPC URL: {url!r}")


# What a node that is not (yet) listening or still starting up looks like to a caller.
_NOT_READY = (OSError, http.client.HTTPException, ValueError, RpcError)


def wait_for_rpc(url: str, timeout: float, interval: float = 0.002) -> float:
    """Poll `eth_blockNumber` until it answers; returns the seconds waited.

    The short interval keeps the measurement error of the benchmarks small; a refused
    connection costs microseconds. Raises TimeoutError after `timeout` seconds.
    """
    _check_url(url)
    start = time.monotonic()
    deadline = start + timeout
    while True:
        now = time.monotonic()
        try:
            rpc_call(url, "eth_blockNumber", timeout=max(0.05, min(1.0, deadline - now)))
            return time.monotonic() - start
        except _NOT_READY:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{url} did not answer eth_blockNumber within {timeout} s"
                ) from None
            time.sleep(interval)


class AnvilProcess:
    """An anvil node run as a child process in its own session, stdout+stderr to a log file.

    Use as a context manager, or call `start()` and `stop()`; `stop()` sends SIGTERM (anvil
    writes its `--state` file then) and SIGKILL after the grace period.
    """

    def __init__(
        self,
        binary: Path,
        log_dir: Path,
        *,
        port: int | None = None,
        block_time: float | None = 1.0,
        state_file: Path | None = None,
        state_interval: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = Path(binary)
        self.port = port if port is not None else free_port()
        self.log_path = Path(log_dir) / f"anvil-{self.port}.log"
        self.state_file = state_file
        args = [str(self.binary), "--port", str(self.port)]
        if block_time is not None:
            args += ["--block-time", f"{block_time:g}"]
        if state_file is not None:
            args += ["--state", str(state_file)]
        if state_interval is not None:
            args += ["--state-interval", str(state_interval)]
        self.args: list[str] = [*args, *extra_args]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """HTTP JSON-RPC address of the node."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket JSON-RPC address of the node (anvil serves both on one port)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the running node."""
        if self._process is None:
            raise RuntimeError("anvil has not been started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the node has exited, else None."""
        return None if self._process is None else self._process.poll()

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Self:
        """Spawn the node; with `wait`, return only once it answers RPC (else stop it and raise)."""
        if self._process is not None:
            raise RuntimeError("anvil already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            try:
                self._wait_ready(timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.returncode
            if code is not None:
                raise RuntimeError(f"anvil exited with {code} while starting:\n{self.log_tail()}")
            try:
                rpc_call(self.url, "eth_blockNumber", timeout=1.0)
                return
            except _NOT_READY:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"anvil on port {self.port} did not answer RPC within {timeout} s:\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.005)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, SIGKILL after `grace` seconds; returns the exit status (None if never run)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the node at once (if running) and reap it."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the node's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None, out: IO[str] = sys.stdout) -> int:
    """`python -m devtools.anvil [VERSION...]`: fetch versions (default all), print their paths."""
    parser = argparse.ArgumentParser(prog="python -m devtools.anvil", description=main.__doc__)
    parser.add_argument(
        "versions", nargs="*", metavar="VERSION", help=", ".join(SUPPORTED_VERSIONS)
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        for version in args.versions or SUPPORTED_VERSIONS:
            print(f"{version} {anvil_binary(version)}", file=out)
    except ValueError as exc:
        parser.error(str(exc))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
