"""The HTTP API's error replies: the control protocol's error body, with a matching status."""

from __future__ import annotations

from typing import Final

import msgspec
from starlette.responses import Response

__all__ = ["STATUS_OF", "ErrorBody", "ErrorReply", "error_response"]

STATUS_OF: Final[dict[str, int]] = {
    "bad_request": 400,
    "unknown_type": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "busy": 409,
    "too_large": 413,
    "internal": 500,
    "not_implemented": 501,
    "unreachable": 503,
    "timeout": 504,
}
"""A control error code (and the few of HTTP's own) → the HTTP status it is answered with."""


class ErrorBody(msgspec.Struct, frozen=True):
    """What went wrong: a control error code (or `unauthorized`, `unreachable`, `too_large`)."""

    code: str
    message: str


class ErrorReply(msgspec.Struct, frozen=True):
    """The body of every error reply."""

    error: ErrorBody


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": {"code", "message"}}` with the status of `code`."""
    return Response(
        msgspec.json.encode(ErrorReply(ErrorBody(code=code, message=message))),
        status_code=STATUS_OF.get(code, 500),
        media_type="application/json",
        headers=headers,
    )
