"""The OpenAPI document of the HTTP API, generated from the route table and the verb registry:
request and reply schemas are msgspec's own schemas of the verbs' Structs."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from wemixvisor import __version__
from wemixvisor.control.verbs import VERBS
from wemixvisor.web.errors import ErrorReply
from wemixvisor.web.routes import ROUTES, ApiRoute

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_SERVER_FIELDS = ("id", "type")  # set by the console, not by the HTTP client


def _body_schema(request_schema: dict[str, Any], route: ApiRoute) -> dict[str, Any]:
    """The request Struct's schema without what the console fills in (id, type, path)."""
    schema = copy.deepcopy(request_schema)
    taken = set(_SERVER_FIELDS) | {route.field_of(p) for p in _path_params(route.path)}
    schema["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k not in taken}
    schema["required"] = [k for k in schema.get("required", []) if k not in taken]
    if not schema["required"]:
        del schema["required"]
    schema["additionalProperties"] = False
    return schema


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _error(description: str) -> dict[str, Any]:
    ref = {"$ref": _REF.format(name="ErrorReply")}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_ERRORS = {
    "400": _error("bad_request: bad JSON, wrong or unknown fields, a value refused"),
    "401": _error("no or wrong `Authorization: Bearer <token>`"),
    "404": _error("not_found: no such plan, backup or daemon"),
    "409": _error("conflict or busy: refused in the daemon's present state"),
    "413": _error("request body too large"),
    "503": _error("unreachable: the daemon does not answer"),
    "504": _error("timeout: an actor of the daemon did not answer in time"),
}


def openapi_document() -> dict[str, Any]:
    """The whole document (OpenAPI 3.1)."""
    routes = [route for route in ROUTES if route.verb in VERBS]
    types: list[Any] = [ErrorReply]
    for route in routes:
        verb = VERBS[route.verb]
        types += [verb.request_type, route.reply_type or verb.reply_type]
    _schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    request_schemas = {}
    for route in routes:
        request_type = VERBS[route.verb].request_type
        name = request_type.__name__
        request_schemas[name] = components.pop(name, None) or {}
    paths: dict[str, dict[str, Any]] = {}
    for prefix, fleet in (("/api/v1", False), ("/api/v1/daemons/{daemon}", True)):
        for route in routes:
            paths.setdefault(prefix + route.path, {})[route.method.lower()] = _operation(
                route, request_schemas[VERBS[route.verb].request_type.__name__], fleet
            )
    for prefix in ("/api/v1", "/api/v1/daemons/{daemon}"):
        paths[prefix + "/events"] = {"get": _event_stream(fleet=prefix != "/api/v1")}
    paths["/api/v1/daemons"] = {
        "get": {
            "summary": "The console's daemons: id, endpoints, and whether each answers now.",
            "operationId": "get_daemons",
            "responses": {
                "200": {
                    "description": "`{daemons: [{id, control_endpoint, "
                    "events_endpoint, reachable, error}]}`"
                },
                "401": _ERRORS["401"],
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wemixvisor",
            "version": __version__,
            "description": (
                "Each route is one control verb of the daemon. The unprefixed routes address "
                "the console's first daemon; /api/v1/daemons lists every daemon and "
                "/api/v1/daemons/{daemon}/... addresses one. Every request needs "
                "`Authorization: Bearer <token>` (the SSE route /api/v1/events also takes "
                "`?access_token=`). GET /api/v1/events?since=SEQ[&run=RUN] is a Server-Sent "
                "Events stream: journal replay, then live, `id: run_id:seq`."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _event_stream(*, fleet: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "since",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1},
            "description": "first seq (inclusive) to replay from the journal; none: live only",
        },
        {
            "name": "run",
            "in": "query",
            "schema": {"type": "string"},
            "description": "the run `since` counts in (default: the newest run in the journal)",
        },
        {
            "name": "topics",
            "in": "query",
            "schema": {"type": "string"},
            "description": "comma-separated topic prefixes (default: every topic)",
        },
        {
            "name": "access_token",
            "in": "query",
            "schema": {"type": "string"},
            "description": "the token, for clients that cannot send the Authorization header",
        },
    ]
    if fleet:
        parameters.insert(
            0, {"name": "daemon", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    return {
        "summary": "The daemon's events as Server-Sent Events: journal replay, then live.",
        "operationId": ("fleet_" if fleet else "") + "get_events_stream",
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "`id: <run_id>:<seq>` and `data: <event JSON>` per event; "
                "comment lines as heartbeats; `event: error` ends a replay that cannot start",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "401": _ERRORS["401"],
            "404": _ERRORS["404"],
        },
    }


def _operation(route: ApiRoute, request_schema: dict[str, Any], fleet: bool) -> dict[str, Any]:
    verb = VERBS[route.verb]
    reply_type = route.reply_type or verb.reply_type
    parameters: list[dict[str, Any]] = []
    if fleet:
        parameters.append(
            {"name": "daemon", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    parameters += [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in _path_params(route.path)
    ]
    parameters += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": {"type": "integer" if q.integer else "string"},
        }
        for q in route.query
    ]
    operation: dict[str, Any] = {
        "summary": route.summary or verb.summary,
        "operationId": ("fleet_" if fleet else "") + route.method.lower() + "_" + verb.name,
        "x-control-verb": verb.name,
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "the verb's reply"
                + (" (a long operation: its end arrives as events)" if verb.long_operation else ""),
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(name=reply_type.__name__)}}
                },
            },
            **_ERRORS,
        },
    }
    if route.body:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _body_schema(request_schema, route)}},
        }
    return operation
