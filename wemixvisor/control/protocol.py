"""The control protocol's messages (SPEC §11): one msgspec Struct per verb, and the replies.

A request is a JSON object with an `id` (string or integer, echoed in the reply) and a `type` tag
naming the verb; its other fields are the verb's, and no others. A reply is
`{"id", "ok": true, "result"}` or `{"id", "ok": false, "error": {"code", "message"}}`.

Decoding is done in two steps so that each failure gets its own code: first the envelope (`id`
and `type`, whatever else is there), then the verb's Struct, strictly (wrong types, unknown or
missing fields are `bad_request`; an unknown `type` is `unknown_type`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "MAX_EVENTS_PAGE",
    "MAX_FRAME_BYTES",
    "MAX_LOG_LINES",
    "MAX_REQUEST_BYTES",
    "REQUEST_TYPES",
    "BackupCreate",
    "BackupDelete",
    "BackupList",
    "BackupPrune",
    "BackupRestore",
    "CancelUpgrade",
    "ConfigReload",
    "ConfigShow",
    "ControlError",
    "DecodeFailure",
    "ErrorCode",
    "Events",
    "GovernanceProposals",
    "ListUpgrades",
    "Logs",
    "RehearseUpgrade",
    "Reply",
    "Request",
    "RequestId",
    "Restart",
    "RollbackUpgrade",
    "ScheduleUpgrade",
    "Start",
    "Status",
    "Stop",
    "Version",
    "decode_reply",
    "decode_request",
    "encode_error",
    "encode_ok",
    "encode_request",
    "new_request_id",
]

MAX_REQUEST_BYTES: Final = 2 * 1024 * 1024
"""A request over this size gets a `bad_request` reply (a plan's info may be up to 1 MiB)."""

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""ZeroMQ drops the connection of a peer announcing a bigger frame, before allocating it."""

MAX_LOG_LINES: Final = 10_000
"""The most node log lines one `logs` request returns."""

MAX_EVENTS_PAGE: Final = 10_000
"""The most journaled events one `events` request returns."""

_MAX_ID_CHARS: Final = 128

RequestId = Annotated[str, msgspec.Meta(max_length=_MAX_ID_CHARS)] | int
"""What identifies a request: echoed unchanged in its reply."""


class ErrorCode(enum.StrEnum):
    """The `error.code` of a failed request."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    BUSY = "busy"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class ControlError(Exception):
    """A request the daemon refused or could not carry out: `code` (an ErrorCode value) and
    `message` for the operator. The server turns it into an error reply; the client raises it
    for one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Request(
    msgspec.Struct, tag_field="type", kw_only=True, frozen=True, forbid_unknown_fields=True
):
    """Base of every request; the subclass's tag is the verb (`type` on the wire)."""

    id: RequestId

    @property
    def verb(self) -> str:
        """The `type` tag, e.g. `status`."""
        tag = type(self).__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class Status(Request, tag="status", frozen=True):
    """Node, head, plans and daemon at a glance."""


class Start(Request, tag="start", frozen=True):
    """Start the node (also leaves FATAL); answers at once with an operation id."""


class Stop(Request, tag="stop", frozen=True):
    """Stop the node gracefully; answers at once with an operation id."""


class Restart(Request, tag="restart", frozen=True):
    """Stop the node, then start it; answers at once with an operation id."""


class Logs(Request, tag="logs", frozen=True):
    """The last `lines` lines of logs/node.log."""

    lines: Annotated[int, msgspec.Meta(ge=1, le=MAX_LOG_LINES)] = 100


class ScheduleUpgrade(Request, tag="schedule_upgrade", frozen=True):
    """Register plan `name` at `height`; a passed height is refused unless `now`."""

    name: str
    height: int | str
    info: dict[str, Any] | str | None = None
    now: bool = False
    rehearse: bool = False
    mode: str | None = None  # "at" (default) or "window" with `window` blocks (SPEC §19)
    window: int | None = None


class CancelUpgrade(Request, tag="cancel_upgrade", frozen=True):
    """Cancel pending plan `name` and take it out of the plan files."""

    name: str


class ListUpgrades(Request, tag="list_upgrades", frozen=True):
    """The plan queue, the upgrade in progress, and plans in the files not yet seen."""


class RehearseUpgrade(Request, tag="rehearse_upgrade", frozen=True):
    """Run pending plan `name`'s new binary on a scratch copy of its pre-staged backup;
    answers at once with an operation id (the outcome: upgrade.rehearsed)."""

    name: str


class RollbackUpgrade(Request, tag="rollback_upgrade", frozen=True):
    """Roll completed upgrade `name` back to the binary before it (`restore`: and its backup in
    place of the data); answers at once with an operation id."""

    name: str
    restore: bool = False


class BackupCreate(Request, tag="backup_create", frozen=True):
    """Make a full backup now; answers at once with an operation id."""

    label: str | None = None


class BackupList(Request, tag="backup_list", frozen=True):
    """The backups, complete or not."""


class BackupRestore(Request, tag="backup_restore", frozen=True):
    """Restore backup `backup_id` (the node is stopped and restarted); answers at once."""

    backup_id: str


class BackupPrune(Request, tag="backup_prune", frozen=True):
    """Remove incomplete backups and all but the configured number of complete upgrade
    backups (and moved-aside data dirs); never an operator's."""


class BackupDelete(Request, tag="backup_delete", frozen=True):
    """Remove backup `backup_id` (any kind, also a moved-aside data dir)."""

    backup_id: str


class ConfigShow(Request, tag="config_show", frozen=True):
    """The configuration the daemon runs with."""


class ConfigReload(Request, tag="config_reload", frozen=True):
    """Read config.toml now and apply its reloadable keys."""


class GovernanceProposals(Request, tag="governance_proposals", frozen=True):
    """The governance proposals the daemon follows."""


class Version(Request, tag="version", frozen=True):
    """wemixvisor's version and the node binary's."""


class Events(Request, tag="events", frozen=True):
    """Journaled events from seq `since` (inclusive) of run `run` (default: the newest run in
    the journal) on, then every event of later runs; at most `limit` of them."""

    since: Annotated[int, msgspec.Meta(ge=1)] | None = None
    run: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_EVENTS_PAGE)] = 1000


REQUEST_TYPES: Final[dict[str, type[Request]]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (
        Status,
        Start,
        Stop,
        Restart,
        Logs,
        ScheduleUpgrade,
        CancelUpgrade,
        ListUpgrades,
        RehearseUpgrade,
        RollbackUpgrade,
        BackupCreate,
        BackupList,
        BackupRestore,
        BackupPrune,
        BackupDelete,
        ConfigShow,
        ConfigReload,
        GovernanceProposals,
        Events,
        Version,
    )
}
"""Verb name → its request Struct."""


class _Envelope(msgspec.Struct):
    """What is read of a request before its verb is known; other fields are ignored here."""

    id: Any = None
    type: Any = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_decoders: Final = {verb: msgspec.json.Decoder(cls) for verb, cls in REQUEST_TYPES.items()}


def _valid_id(value: Any) -> str | int | None:
    if isinstance(value, str) and len(value) <= _MAX_ID_CHARS:
        return value
    if type(value) is int:
        return value
    return None


class DecodeFailure(ControlError):
    """A request that cannot be decoded; `request_id` is its id when that much was readable."""

    def __init__(self, code: str, message: str, request_id: str | int | None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def decode_request(raw: bytes) -> Request:
    """Decode one request frame; DecodeFailure (bad_request or unknown_type) if it is not one."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise DecodeFailure(
            ErrorCode.BAD_REQUEST,
            f"request is {len(raw)} bytes, over the {MAX_REQUEST_BYTES}-byte limit",
            None,
        )
    try:
        envelope = _envelope_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeFailure(ErrorCode.BAD_REQUEST, f"not a JSON object: {exc}", None) from None
    except RecursionError:
        # msgspec raises this (not DecodeError) for containers nested thousands deep.
        raise DecodeFailure(ErrorCode.BAD_REQUEST, "JSON nested too deeply", None) from None
    request_id = _valid_id(envelope.id)
    if envelope.type is None:
        raise DecodeFailure(ErrorCode.BAD_REQUEST, "request has no `type`", request_id)
    if not isinstance(envelope.type, str):
        raise DecodeFailure(ErrorCode.BAD_REQUEST, "`type` must be a string", request_id)
    decoder = _decoders.get(envelope.type)
    if decoder is None:
        shown = envelope.type if len(envelope.type) <= 64 else envelope.type[:64] + "…"
        raise DecodeFailure(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown request type {shown!r}; known: {', '.join(REQUEST_TYPES)}",
            request_id,
        )
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeFailure(ErrorCode.BAD_REQUEST, f"{envelope.type}: {exc}", request_id) from None
    except RecursionError:
        raise DecodeFailure(ErrorCode.BAD_REQUEST, "JSON nested too deeply", request_id) from None


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex[:16]


def encode_request(request: Request | Mapping[str, Any]) -> bytes:
    """A request as sent on the wire: a request Struct, or (for tools that send raw or
    malformed requests on purpose) a JSON object."""
    return msgspec.json.encode(request)


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class _OkReply(msgspec.Struct, frozen=True):
    id: str | int | None
    ok: bool
    result: Any


class _ErrorReply(msgspec.Struct, frozen=True):
    id: str | int | None
    ok: bool
    error: _ErrorBody


def _encode_extra(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


_reply_encoder: Final = msgspec.json.Encoder(enc_hook=_encode_extra)


def encode_ok(request_id: str | int | None, result: Any) -> bytes:
    """`{"id", "ok": true, "result"}`; TypeError/msgspec.EncodeError if `result` cannot be JSON."""
    return _reply_encoder.encode(_OkReply(id=request_id, ok=True, result=result))


def encode_error(request_id: str | int | None, code: str, message: str) -> bytes:
    """`{"id", "ok": false, "error": {"code", "message"}}`."""
    return _reply_encoder.encode(
        _ErrorReply(id=request_id, ok=False, error=_ErrorBody(code=str(code), message=message))
    )


class Reply(msgspec.Struct, frozen=True):
    """A decoded reply: `result` when `ok`, else `error_code` and `error_message`."""

    id: str | int | None
    ok: bool
    result: Any = None
    error_code: str = ""
    error_message: str = ""


class _WireReply(msgspec.Struct, frozen=True):
    id: str | int | None
    ok: bool
    result: Any = None
    error: _ErrorBody | None = None


_wire_reply_decoder: Final = msgspec.json.Decoder(_WireReply)


def decode_reply(raw: bytes) -> Reply:
    """Decode a reply frame; ValueError when it is not one."""
    try:
        wire = _wire_reply_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(f"malformed reply: {exc}") from None
    if wire.ok:
        return Reply(id=wire.id, ok=True, result=wire.result)
    if wire.error is None:
        raise ValueError("malformed reply: ok is false but there is no error")
    return Reply(id=wire.id, ok=False, error_code=wire.error.code, error_message=wire.error.message)
