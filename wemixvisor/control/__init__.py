"""The control socket (SPEC §11): protocol, server, client, verbs and their security.

Operator tools use `client_for(config)` (or `ControlClient(endpoint, timeout, curve=...)`) and
`ControlClient.request(Status(id=new_request_id()))`, which returns the reply's result or raises
`ControlError(code, message)` / `ControlUnreachable(endpoint)`; each verb of `control.verbs`
decodes that result into its reply Struct.
"""

from __future__ import annotations

from wemixvisor.config import Config
from wemixvisor.control.client import ControlClient, ControlUnreachable
from wemixvisor.control.protocol import ControlError, ErrorCode
from wemixvisor.control.security import CurveClientKeys, client_keys_for, keys_dir_of

__all__ = [
    "ControlClient",
    "ControlError",
    "ControlUnreachable",
    "CurveClientKeys",
    "ErrorCode",
    "client_for",
]


def client_for(config: Config, timeout: float = 5.0) -> ControlClient:
    """A client of the daemon `config` describes: its control endpoint, and for a tcp endpoint
    the CURVE keys in `$DAEMON_HOME/wemixvisor/keys/` when they are there."""
    endpoint = config.control.endpoint
    curve = client_keys_for(endpoint, keys_dir_of(config.home))
    return ControlClient(endpoint, timeout, curve=curve)
