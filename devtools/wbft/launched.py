"""The anvil nodes a WBFT network double started itself (`WbftNetwork.launch`).

One owner for their processes: each node has a fixed port and a `--state` file, so a node that
is stopped and started again (perhaps with another anvil version) comes back on the same URL
with its chain, as a node restarted by its supervisor would. Only a node without a state file
gets the network's genesis timestamp (`--timestamp`); a restart loads its chain from the state
file and runs with the wall clock, as a daemon restarting `anvil --no-mining --state FILE` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from devtools.anvil import AnvilProcess, anvil_binary, free_port, wait_for_rpc

__all__ = ["LaunchedNodes"]


class LaunchedNodes:
    """anvil `--no-mining` nodes with one genesis timestamp, one per version in `versions`."""

    def __init__(self, versions: Sequence[str], directory: Path, genesis_timestamp: int) -> None:
        self.versions = list(versions)
        self.directory = directory
        self.ports = [free_port() for _ in versions]
        # One genesis for all: nodes of one version then mine byte-identical blocks.
        self._genesis = ["--timestamp", str(genesis_timestamp)]
        self._processes: list[AnvilProcess | None] = [None] * len(versions)

    @property
    def urls(self) -> list[str]:
        """Each node's RPC URL (fixed across restarts)."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_all(self, timeout: float = 30.0) -> None:
        """Start every node and wait until each answers RPC."""
        for index in range(len(self.versions)):
            self.start(index, wait=False)
        for url in self.urls:
            wait_for_rpc(url, timeout)

    def start(self, index: int, version: str | None = None, *, wait: bool = True) -> None:
        """Start node `index` on its port and state file, with anvil `version` (default: the
        one it ran before)."""
        current = self._processes[index]
        if current is not None and current.returncode is None:
            raise RuntimeError(f"node {index} is running")
        if version is not None:
            self.versions[index] = version
        state_file = self.directory / f"node{index}.state.json"
        process = AnvilProcess(
            anvil_binary(self.versions[index]),
            self.directory,
            port=self.ports[index],
            block_time=None,
            state_file=state_file,
            extra_args=["--no-mining", *([] if state_file.exists() else self._genesis)],
        )
        self._processes[index] = process
        process.start(wait=wait)

    def stop(self, index: int) -> None:
        """Stop node `index` gracefully: anvil writes its state file on SIGTERM."""
        process = self._processes[index]
        if process is not None:
            process.stop()

    def stop_all(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after the grace period)."""
        for process in self._processes:
            if process is not None:
                try:
                    process.stop()
                finally:
                    process.kill()
