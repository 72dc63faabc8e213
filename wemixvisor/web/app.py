"""The web console's ASGI application: the HTTP API, its event stream, and the page.

Every API route is one control verb, carried out by the daemon it addresses; the blocking
control call runs in a worker thread (anyio), never on the event loop. The page is static
files; everything it shows comes from the API with the bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import anyio.to_thread
import msgspec
import zmq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wemixvisor.control import protocol
from wemixvisor.control.client import ControlUnreachable
from wemixvisor.control.protocol import ControlError, new_request_id
from wemixvisor.control.verbs import VERBS
from wemixvisor.web.errors import error_response
from wemixvisor.web.fleet import DaemonLink, Fleet
from wemixvisor.web.openapi import openapi_document
from wemixvisor.web.routes import ROUTES, ApiRoute
from wemixvisor.web.sse import event_stream
from wemixvisor.web.token import token_matches

__all__ = ["MAX_BODY_BYTES", "ConsoleSettings", "create_app"]

MAX_BODY_BYTES: Final = 1024 * 1024 + 4096
"""A request body over this is refused (413): a plan's `info` may be up to 1 MiB."""

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
_SECURITY_HEADERS: Final = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_STATIC: Final = resources.files("wemixvisor.web") / "static"

STATUS_MAX_AGE: Final = 0.1
"""A `status` this recent is answered again without asking the daemon: many open pages and
API clients polling cost the daemon one request per tenth of a second (the daemon itself answers
from a status up to 250 ms old)."""


@dataclass(frozen=True)
class ConsoleSettings:
    """What the console serves: its daemons, its token, the stream's heartbeat period."""

    fleet: Fleet
    token: str
    heartbeat: float = 15.0


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SecurityMiddleware:
    """Security headers on every response; the bearer token on every API request.

    The token comes in `Authorization: Bearer <token>`; only the event stream also takes
    `?access_token=` (a browser's EventSource cannot set headers). No cookies are read or set.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                message["headers"] = headers + _SECURITY_HEADERS
            await send(message)

        path: str = scope["path"]
        if path.startswith("/api/") and not self._authorized(scope):
            response = error_response(
                "unauthorized",
                "this API needs `Authorization: Bearer <token>` with the console's token "
                "(wemixvisor web --print-token)",
                headers={"WWW-Authenticate": 'Bearer realm="wemixvisor"'},
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value:
                scheme, _, given = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and token_matches(self.token, given.strip())
        if _is_event_stream(scope["path"]):
            query = Request(scope).query_params
            given = query.get("access_token")
            return given is not None and token_matches(self.token, given)
        return False


def _is_event_stream(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    return parts[-1] == "events" and parts[:3] == ["", "api", "v1"]


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _Refused("too_large", f"request body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refused("too_large", f"request body over {MAX_BODY_BYTES} bytes")
    return bytes(body)


async def _request_fields(route: ApiRoute, request: Request) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if route.body:
        body = await _read_body(request)
        if body.strip():
            try:
                decoded = msgspec.json.decode(body)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise _Refused("bad_request", f"body is not JSON: {exc}") from None
            if not isinstance(decoded, dict):
                raise _Refused("bad_request", "body must be a JSON object")
            for taken in ("id", "type"):
                if taken in decoded:
                    raise _Refused("bad_request", f"unknown field {taken!r} in the body")
            fields.update(decoded)
    elif int(request.headers.get("content-length") or 0) > 0:
        await _read_body(request)
    for param in route.query:
        text = request.query_params.get(param.name)
        if text is None:
            continue
        if param.integer:
            try:
                fields[param.field] = int(text)
            except ValueError:
                raise _Refused(
                    "bad_request", f"query {param.name}: expected a whole number, got {text!r}"
                ) from None
        else:
            fields[param.field] = text
    for name, value in request.path_params.items():
        if name != "daemon":
            fields[route.field_of(name)] = value
    return fields


class Console:
    """The handlers, bound to the console's settings."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.fleet = settings.fleet
        self.zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._in_flight: dict[tuple[str, bytes], asyncio.Future[Any]] = {}
        self._recent: dict[tuple[str, bytes], tuple[float, Any]] = {}

    def link_of(self, request: Request) -> DaemonLink:
        """The daemon a request addresses: `{daemon}` of the path, else the first."""
        ident = request.path_params.get("daemon")
        if ident is None:
            return self.fleet.first
        link = self.fleet.get(ident)
        if link is None:
            known = ", ".join(link.id for link in self.fleet.links)
            raise _Refused("not_found", f"no daemon {ident!r} in this console (daemons: {known})")
        return link

    def verb_handler(self, route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
        """The handler of `route`: its verb's request, sent to the daemon; its reply."""

        async def handle(request: Request) -> Response:
            try:
                return await self._call_verb(route, request)
            except _Refused as exc:
                return error_response(exc.code, exc.message)

        return handle

    async def _call_verb(self, route: ApiRoute, request: Request) -> Response:
        link = self.link_of(request)
        verb = VERBS.get(route.verb)
        if verb is None:
            raise _Refused("not_implemented", f"the daemon has no {route.verb!r} verb yet")
        fields = await _request_fields(route, request)
        fields.update(id=new_request_id(), type=verb.name)
        try:
            message = msgspec.convert(fields, verb.request_type)
        except msgspec.ValidationError as exc:
            raise _Refused("bad_request", str(exc)) from None
        try:
            if route.method == "GET":
                result = await self._shared_call(link, message)
            else:
                result = await anyio.to_thread.run_sync(link.call, message)
        except ControlUnreachable as exc:
            raise _Refused(
                "unreachable", f"daemon {link.id} does not answer at {exc.endpoint}: {exc.reason}"
            ) from None
        except ControlError as exc:
            raise _Refused(exc.code, exc.message) from None
        try:
            reply: Any = verb.decode_reply(result)
        except ValueError as exc:
            raise _Refused("internal", str(exc)) from None
        if route.reply is not None:
            reply = route.reply(reply)
        return Response(msgspec.json.encode(reply), media_type="application/json")

    async def _shared_call(self, link: DaemonLink, message: protocol.Request) -> Any:
        """A reading request's result; callers asking the same while it is under way share it,
        and a `status` up to STATUS_MAX_AGE old is answered again. The call is a task of its
        own: a caller that goes away does not cancel it for the others."""
        key = (link.id, msgspec.json.encode(msgspec.structs.replace(message, id="")))
        fresh = self._recent.get(key)
        if fresh is not None and time.monotonic() - fresh[0] <= STATUS_MAX_AGE:
            return fresh[1]
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._call_and_keep(link, message, key))
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    async def _call_and_keep(
        self, link: DaemonLink, message: protocol.Request, key: tuple[str, bytes]
    ) -> Any:
        result = await anyio.to_thread.run_sync(link.call, message)
        if message.verb == "status":
            self._recent[key] = (time.monotonic(), result)
        return result

    def _forget(self, key: tuple[str, bytes], done: asyncio.Future[Any]) -> None:
        self._in_flight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved, even when every caller has gone

    async def daemons(self, request: Request) -> Response:
        """Every daemon of the console: id, endpoints, and whether it answers now."""

        async def one(link: DaemonLink) -> dict[str, Any]:
            row: dict[str, Any] = {"id": link.id, "control_endpoint": link.control_endpoint}
            try:
                row["events_endpoint"] = await anyio.to_thread.run_sync(link.learn_events_endpoint)
                row["reachable"], row["error"] = True, None
            except (ControlError, ControlUnreachable, LookupError) as exc:
                row["events_endpoint"] = link.events_endpoint
                row["reachable"], row["error"] = False, str(exc)
            return row

        rows = await asyncio.gather(*(one(link) for link in self.fleet.links))
        return Response(msgspec.json.encode({"daemons": rows}), media_type="application/json")

    async def events(self, request: Request) -> Response:
        """Server-Sent Events: replay from `since` (of `run`), then live."""
        try:
            link = self.link_of(request)
            since, run = _position(request)
        except _Refused as exc:
            return error_response(exc.code, exc.message)
        topics = request.query_params.get("topics", "")
        return StreamingResponse(
            event_stream(
                link,
                self.zmq_context,
                since=since,
                run=run,
                prefixes=[t for t in topics.split(",") if t],
                heartbeat=self.settings.heartbeat,
            ),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI document."""
        return Response(msgspec.json.encode(openapi_document()), media_type="application/json")

    async def page(self, request: Request) -> Response:
        """The console's page (it holds no data: everything comes from the API)."""
        return FileResponse(str(_STATIC / "index.html"), media_type="text/html")

    def close(self) -> None:
        """Release the daemons' clients and the ZeroMQ context (the server is stopping)."""
        self.fleet.close()
        self.zmq_context.term()


def _position(request: Request) -> tuple[int | None, str | None]:
    """`since`/`run` from the query, else from `Last-Event-ID` (`run_id:seq`, resume after)."""
    query = request.query_params
    run = query.get("run")
    since_text = query.get("since")
    last_id = request.headers.get("last-event-id")
    if since_text is None and last_id:
        last_run, _, last_seq = last_id.rpartition(":")
        if last_run and last_seq.isdigit():
            return int(last_seq) + 1, last_run
    if since_text is None:
        return None, run
    if not since_text.isdigit() or int(since_text) < 1:
        raise _Refused("bad_request", f"since: expected a seq of at least 1, got {since_text!r}")
    return int(since_text), run


def create_app(settings: ConsoleSettings) -> ASGIApp:
    """The console's ASGI application."""
    console = Console(settings)
    api: list[BaseRoute] = [
        Route(r.path, console.verb_handler(r), methods=[r.method]) for r in ROUTES
    ]
    api.append(Route("/events", console.events, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            console.close()

    app = Starlette(
        routes=[
            Route("/", console.page, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=str(_STATIC)), name="static"),
            Route("/api/v1/openapi.json", console.openapi, methods=["GET"]),
            Route("/api/v1/daemons", console.daemons, methods=["GET"]),
            Mount("/api/v1/daemons/{daemon}", routes=api),
            Mount("/api/v1", routes=api),
        ],
        exception_handlers={
            404: _not_found,
            405: _not_allowed,
        },
        lifespan=lifespan,
    )
    return SecurityMiddleware(app, settings.token)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response("not_found", f"no route {request.method} {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return error_response("method_not_allowed", f"{request.method} is not allowed here")
