"""The control protocol's messages (SPEC §11), without sockets: what decodes to which request,
and which error code every kind of bad input gets."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wemixvisor.control.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_TYPES,
    ControlError,
    DecodeFailure,
    ErrorCode,
    Logs,
    ScheduleUpgrade,
    Status,
    decode_reply,
    decode_request,
    encode_error,
    encode_ok,
)
from wemixvisor.control.verbs import VERBS

SPEC_VERBS = {
    "status",
    "start",
    "stop",
    "restart",
    "logs",
    "schedule_upgrade",
    "rehearse_upgrade",
    "rollback_upgrade",
    "cancel_upgrade",
    "list_upgrades",
    "backup_create",
    "backup_list",
    "backup_restore",
    "backup_prune",
    "backup_delete",
    "config_show",
    "config_reload",
    "governance_proposals",
    "events",
    "version",
}


def decode(obj: Any) -> Any:
    return decode_request(msgspec.json.encode(obj))


def failure(raw: bytes) -> DecodeFailure:
    with pytest.raises(DecodeFailure) as caught:
        decode_request(raw)
    return caught.value


def test_every_verb_of_the_spec_has_one_request_type_and_one_definition() -> None:
    assert set(REQUEST_TYPES) == SPEC_VERBS
    assert set(VERBS) == SPEC_VERBS
    for name, verb in VERBS.items():
        assert verb.request_type is REQUEST_TYPES[name]


def test_requests_decode_to_their_typed_struct() -> None:
    assert decode({"id": 1, "type": "status"}) == Status(id=1)
    assert decode({"id": "a", "type": "logs", "lines": 5}) == Logs(id="a", lines=5)
    assert decode({"id": "a", "type": "logs"}).lines == 100
    request = decode({"id": 7, "type": "schedule_upgrade", "name": "v2", "height": "120"})
    assert request == ScheduleUpgrade(id=7, name="v2", height="120")
    assert request.verb == "schedule_upgrade"


@pytest.mark.parametrize(
    ("raw", "code", "request_id", "words"),
    [
        (b"", ErrorCode.BAD_REQUEST, None, "not a JSON object"),
        (b"\xff\xfe", ErrorCode.BAD_REQUEST, None, "not a JSON object"),
        (b"[1, 2]", ErrorCode.BAD_REQUEST, None, "not a JSON object"),
        (b'{"id": 1}', ErrorCode.BAD_REQUEST, 1, "no `type`"),
        (b'{"id": 1, "type": 5}', ErrorCode.BAD_REQUEST, 1, "must be a string"),
        (b'{"id": 1, "type": "reboot"}', ErrorCode.UNKNOWN_TYPE, 1, "unknown request type"),
        (b'{"type": "status"}', ErrorCode.BAD_REQUEST, None, "id"),
        (b'{"id": true, "type": "status"}', ErrorCode.BAD_REQUEST, None, "id"),
        (b'{"id": 2, "type": "logs", "lines": "x"}', ErrorCode.BAD_REQUEST, 2, "lines"),
        (b'{"id": 2, "type": "logs", "lines": 0}', ErrorCode.BAD_REQUEST, 2, "lines"),
        (b'{"id": 2, "type": "logs", "lines": 10001}', ErrorCode.BAD_REQUEST, 2, "lines"),
        (b'{"id": 3, "type": "status", "extra": 1}', ErrorCode.BAD_REQUEST, 3, "extra"),
        (b'{"id": 4, "type": "cancel_upgrade"}', ErrorCode.BAD_REQUEST, 4, "name"),
        (
            b'{"id": 4, "type": "schedule_upgrade", "name": 1, "height": 1}',
            "bad_request",
            4,
            "name",
        ),
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.BAD_REQUEST, None, ""),
    ],
)
def test_bad_requests_get_the_matching_error_code(
    raw: bytes, code: str, request_id: Any, words: str
) -> None:
    error = failure(raw)
    assert error.code == code
    assert error.request_id == request_id
    assert words in error.message


def test_an_oversized_request_is_refused_before_it_is_parsed() -> None:
    raw = b'{"id": 1, "type": "status", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    error = failure(raw)
    assert error.code == ErrorCode.BAD_REQUEST
    assert "over the" in error.message


def test_replies_have_the_shape_of_the_spec() -> None:
    assert msgspec.json.decode(encode_ok(1, {"a": 1})) == {"id": 1, "ok": True, "result": {"a": 1}}
    assert msgspec.json.decode(encode_ok("x", None)) == {"id": "x", "ok": True, "result": None}
    assert msgspec.json.decode(encode_error(None, ErrorCode.BUSY, "later")) == {
        "id": None,
        "ok": False,
        "error": {"code": "busy", "message": "later"},
    }
    reply = decode_reply(encode_error(3, ErrorCode.NOT_FOUND, "no such plan"))
    assert (reply.ok, reply.error_code, reply.error_message) == (False, "not_found", "no such plan")
    with pytest.raises(ValueError, match="malformed"):
        decode_reply(b'{"id": 1, "ok": false}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_a_decode_failure(raw: bytes) -> None:
    code = None
    try:
        decode_request(raw)
    except DecodeFailure as exc:
        code = exc.code
    assert code in (None, ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SPEC_VERBS)),
    st.dictionaries(
        st.sampled_from(["id", "lines", "name", "height", "info", "now", "label", "backup_id"]),
        json_values,
        max_size=5,
    ),
)
def test_valid_json_of_wrong_types_is_a_bad_request_or_a_request(
    verb: str, fields: dict[str, Any]
) -> None:
    try:
        request = decode({**fields, "type": verb})
    except DecodeFailure as exc:
        code, decoded = exc.code, None
    else:
        code, decoded = None, request.verb
    assert (code, decoded) in ((ErrorCode.BAD_REQUEST, None), (None, verb))


def test_every_verb_carries_what_a_front_end_needs_to_describe_it() -> None:
    """Request and reply types, a summary and the long-operation flag: enough for the CLI and,
    later, for an OpenAPI document of the HTTP API (SPEC §18)."""
    for name, verb in VERBS.items():
        assert issubclass(verb.reply_type, msgspec.Struct), name
        assert verb.summary and "\n" not in verb.summary, name
        assert isinstance(verb.long_operation, bool), name
    long_operations = {name for name, verb in VERBS.items() if verb.long_operation}
    assert {"start", "stop", "restart", "backup_create", "backup_restore"} <= long_operations
    offline = {name for name, verb in VERBS.items() if verb.offline}
    assert offline == {
        "schedule_upgrade",
        "cancel_upgrade",
        "list_upgrades",
        "backup_list",
        "backup_prune",
        "backup_delete",
    }
    types = [t for verb in VERBS.values() for t in (verb.request_type, verb.reply_type)]
    schemas, components = msgspec.json.schema_components(types)
    assert len(schemas) == 2 * len(VERBS)
    assert "StatusReply" in components


def test_replies_encode_as_the_wire_results_and_decode_back() -> None:
    listing = VERBS["list_upgrades"]
    result = {
        "daemon": {"running": True, "pid": 7},
        "plans": [
            {
                "name": "v2",
                "height": 200,
                "status": "pending",
                "source": "control",
                "late": False,
                "result": None,
                "registered_at": 1.5,
                "finished_at": None,
            },
            {
                "name": "v3",
                "height": 300,
                "info": {"binaries": {"any": "https://h/x?checksum=sha256:00"}},
                "status": "in_file",
                "source": "batch",
                "late": False,
                "result": "in file, not yet seen by the daemon",
                "registered_at": None,
                "finished_at": None,
            },
        ],
        "journal": None,
        "head": 120,
        "problems": [],
    }
    reply = listing.decode_reply(result)
    assert msgspec.json.decode(msgspec.json.encode(reply)) == result, "no `info` without one"

    governance = VERBS["governance_proposals"]
    for shown in ({"proposals": [], "note": "not followed"}, {"proposals": []}):
        assert msgspec.to_builtins(governance.decode_reply(shown)) == shown
    with pytest.raises(ValueError, match="malformed list_upgrades result"):
        listing.decode_reply({"plans": "none"})


def test_the_events_verb_reads_the_journal_page_by_page(tmp_path: Any) -> None:
    from wemixvisor.control.protocol import ControlError, Events
    from wemixvisor.control.verbs.events import read_page
    from wemixvisor.events.journal import EventJournal

    writer = EventJournal(tmp_path)
    writer.open()
    for run, count in (("run-a", 3), ("run-b", 4)):
        for seq in range(1, count + 1):
            payload = {"topic": "node.running", "seq": seq, "run_id": run, "ts": 1.0}
            writer.append(msgspec.json.encode(payload))
    writer.close()

    page = read_page(tmp_path, Events(id=1, since=2, limit=2))
    assert [e["seq"] for e in page.events] == [2, 3] and page.more and page.run_id == "run-b"
    rest = read_page(tmp_path, Events(id=2, since=4, run="run-b"))
    assert [e["seq"] for e in rest.events] == [4] and not rest.more
    across = read_page(tmp_path, Events(id=3, since=3, run="run-a"))
    assert [(e["run_id"], e["seq"]) for e in across.events][:2] == [("run-a", 3), ("run-b", 1)]
    with pytest.raises(ControlError) as refused:
        read_page(tmp_path, Events(id=4, run="run-x"))
    assert refused.value.code == "bad_request" and "run-x" in refused.value.message
    for wrong in ({"since": 0}, {"limit": 10_001}, {"run": "x" * 129}):
        assert failure(msgspec.json.encode({"id": 5, "type": "events", **wrong})).code == (
            ErrorCode.BAD_REQUEST
        )


@pytest.mark.parametrize(
    "hostile",
    ["../x", "/etc/passwd", "a\x00b", "x" * 10_000, "..", ".", "", "a/b"],
)
def test_backup_delete_refuses_ids_that_are_not_plain_names(hostile: str) -> None:
    verb = VERBS["backup_delete"]

    class Untouched:
        def delete_backup(self, backup_id: str) -> str:
            raise AssertionError(f"asked to delete {backup_id!r}")

    request = decode({"id": 1, "type": "backup_delete", "backup_id": hostile})
    with pytest.raises(ControlError) as refused:
        verb.execute(Untouched(), request)
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert len(str(refused.value)) < 200
