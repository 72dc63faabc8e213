"""The web console and HTTP API (SPEC §18): a process of its own, a client of daemons.

- `app`: the ASGI application (`create_app`) — routes, the bearer token, security headers;
- `routes`: the route table, each route one control verb; `openapi`: its generated document;
- `fleet`: the daemons one console watches; `sse`: their events as Server-Sent Events;
- `token`: the console's token file; `static/`: the page.
"""

from __future__ import annotations

from wemixvisor.web.app import MAX_BODY_BYTES, ConsoleSettings, create_app
from wemixvisor.web.fleet import DaemonLink, Fleet, daemon_id, parse_connect
from wemixvisor.web.token import load_or_create_token

__all__ = [
    "MAX_BODY_BYTES",
    "ConsoleSettings",
    "DaemonLink",
    "Fleet",
    "create_app",
    "daemon_id",
    "load_or_create_token",
    "parse_connect",
]
