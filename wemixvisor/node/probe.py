"""Is a starting node up? RPC answering, or alive for STARTSECS, whichever comes first."""

from __future__ import annotations

import threading
import time

from wemixvisor.chain.client import ChainClient
from wemixvisor.chain.rpc import RpcError

PROBE_INTERVAL = 0.01
"""Seconds between two RPC attempts while the node starts."""


def confirm_startup(
    address: str, startsecs: float, stopping: threading.Event
) -> tuple[str, float] | None:
    """Block until the node answers RPC at `address` ("rpc") or STARTSECS passed
    ("startsecs"); with the seconds it took. None when `stopping` was set first."""
    began = time.monotonic()
    client = ChainClient(address, timeout=0.5)
    try:
        while not stopping.is_set():
            if time.monotonic() - began >= startsecs:
                return "startsecs", time.monotonic() - began
            try:
                client.block_number()
            except RpcError:
                stopping.wait(PROBE_INTERVAL)
                continue
            return "rpc", time.monotonic() - began
        return None
    finally:
        client.close()
