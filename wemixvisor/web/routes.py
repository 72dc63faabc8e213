"""The HTTP API's routes (SPEC §18): each one control verb, its request built from the path, the
query and the JSON body, its reply the verb's reply Struct as JSON.

`ROUTES` is the one table both the server and the OpenAPI document are made from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from wemixvisor.control.verbs import upgrade_status
from wemixvisor.control.verbs.replies import UpgradeStatus

__all__ = ["ROUTES", "ApiRoute", "QueryParam"]


@dataclass(frozen=True)
class QueryParam:
    """A query parameter that becomes the request field `field` (an integer when `integer`)."""

    name: str
    field: str
    integer: bool
    description: str


@dataclass(frozen=True)
class ApiRoute:
    """`method path` → verb `verb`.

    `path` params become the request fields of the same name (`path_fields` renames them);
    `body` routes take a JSON object of the request's other fields; `reply` rewrites the verb's
    reply (the upgrade status is the pending part of `list_upgrades`).
    """

    method: str
    path: str
    verb: str
    summary: str = ""
    body: bool = False
    query: tuple[QueryParam, ...] = ()
    path_fields: Mapping[str, str] | None = None
    reply: Callable[[Any], msgspec.Struct] | None = None
    reply_type: type[msgspec.Struct] | None = None

    def field_of(self, param: str) -> str:
        """The request field a path parameter fills."""
        return (self.path_fields or {}).get(param, param)


ROUTES: Final[tuple[ApiRoute, ...]] = (
    ApiRoute("GET", "/status", "status"),
    ApiRoute("GET", "/version", "version"),
    ApiRoute("POST", "/node/start", "start"),
    ApiRoute("POST", "/node/stop", "stop"),
    ApiRoute("POST", "/node/restart", "restart"),
    ApiRoute(
        "GET",
        "/logs",
        "logs",
        query=(QueryParam("n", "lines", True, "how many of the last lines (default 100)"),),
    ),
    ApiRoute("GET", "/upgrades", "list_upgrades"),
    ApiRoute("POST", "/upgrades", "schedule_upgrade", body=True),
    ApiRoute(
        "GET",
        "/upgrades/status",
        "list_upgrades",
        summary="The pending plans and the journal of the upgrade in progress.",
        reply=upgrade_status,
        reply_type=UpgradeStatus,
    ),
    ApiRoute("DELETE", "/upgrades/{name}", "cancel_upgrade"),
    ApiRoute("GET", "/backups", "backup_list"),
    ApiRoute("POST", "/backups", "backup_create", body=True),
    ApiRoute("POST", "/backups/prune", "backup_prune"),
    ApiRoute("POST", "/backups/{id}/restore", "backup_restore", path_fields={"id": "backup_id"}),
    ApiRoute("DELETE", "/backups/{id}", "backup_delete", path_fields={"id": "backup_id"}),
    ApiRoute("GET", "/config", "config_show"),
    ApiRoute("POST", "/config/reload", "config_reload"),
    ApiRoute("GET", "/governance/proposals", "governance_proposals"),
    ApiRoute(
        "GET",
        "/events/journal",
        "events",
        query=(
            QueryParam("since", "since", True, "first seq (inclusive) of the run"),
            QueryParam("run", "run", False, "run_id (default: the newest run in the journal)"),
            QueryParam("limit", "limit", True, "at most this many events (1..10000)"),
        ),
    ),
)
"""Every verb route, relative to `/api/v1` (and to `/api/v1/daemons/{daemon}`)."""
