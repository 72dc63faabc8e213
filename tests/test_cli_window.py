"""`wemixvisor upgrade schedule … --window W` and how a window plan is shown (SPEC §19)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.test_cli_upgrade import home  # noqa: F401  (the initialised home fixture)
from wemixvisor.cli import main
from wemixvisor.control.protocol import DecodeFailure, ErrorCode, ScheduleUpgrade, decode_request
from wemixvisor.control.verbs.render import window_note
from wemixvisor.upgrade.window import WindowState


def test_window_schedules_a_rolling_window_plan_in_the_batch_file(
    home: Path,  # noqa: F811  (the fixture imported above)
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["upgrade", "schedule", "v2", "5000", "--window", "300"]) == 0
    batch = msgspec.json.decode((home / "data/upgrade-info.json.batch").read_bytes())
    assert batch == [{"name": "v2", "height": 5000, "mode": "window", "window": 300}]
    assert main(["upgrade", "status"]) == 0
    out = capsys.readouterr().out
    assert "window of 300 blocks: slot not taken yet" in out


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("0", "1-100000 blocks"),
        ("-5", "1-100000 blocks"),
        ("100001", "1-100000 blocks"),
        ("9" * 400, "digits"),
        ("5000", "before block 1"),
        ("ten", "invalid int value"),
        ("", "invalid int value"),
    ],
)
def test_a_bad_window_is_refused_and_nothing_is_written(
    home: Path,  # noqa: F811  (the fixture imported above)
    capsys: pytest.CaptureFixture[str],
    window: str,
    message: str,
) -> None:
    if window.lstrip("-").isdigit():
        assert main(["upgrade", "schedule", "v2", "5000", "--window", window]) == 2
    else:
        with pytest.raises(SystemExit) as usage:  # argparse's own usage error
            main(["upgrade", "schedule", "v2", "5000", "--window", window])
        assert usage.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err) < 1500
    assert not (home / "data/upgrade-info.json.batch").exists()


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (None, "window of 20 blocks: slot not taken yet"),
        (
            WindowState(
                verdict="before_slot",
                slot_start=84,
                slot_end=87,
                slot_index=1,
                slot_count=4,
                validator=True,
                eta_blocks=12,
            ),
            "window of 20 blocks; slot 2/4 at blocks 84-87 (validator); slot opens in 12 blocks,"
            " ETA unknown (block time not measured yet)",
        ),
        (
            WindowState(
                verdict="waiting_for_quorum",
                slot_start=80,
                slot_end=80,
                slot_index=0,
                slot_count=4,
                validator=True,
                shared=True,
                active=2,
                needed=3,
                eta_blocks=0,
            ),
            "slot 1/4 at blocks 80-80 (validator, shared: window shorter than the validator set)"
            "; waiting for quorum: 2 other validators up, 3 needed",
        ),
        (
            WindowState(
                verdict="closed",
                slot_start=88,
                slot_end=91,
                slot_index=2,
                slot_count=4,
                validator=False,
                reason="no survey of the chain answered in the window",
            ),
            "(non-validator, by address hash); window closed (no survey of the chain answered"
            " in the window): switches at H-1",
        ),
    ],
)
def test_a_window_plan_is_shown_with_its_slot_verdict_and_eta(
    state: WindowState | None, shown: str
) -> None:
    assert shown in window_note(20, state)


def test_schedule_upgrade_requests_carry_mode_and_window() -> None:
    raw = b'{"id": 1, "type": "schedule_upgrade", "name": "v2", "height": 90, "window": 20}'
    request = decode_request(raw)
    assert isinstance(request, ScheduleUpgrade)
    assert (request.mode, request.window) == (None, 20)
    plain = decode_request(b'{"id": 1, "type": "schedule_upgrade", "name": "v2", "height": 9}')
    assert isinstance(plain, ScheduleUpgrade)
    assert (plain.mode, plain.window) == (None, None)


@pytest.mark.parametrize(
    "fields",
    # (a huge integer window decodes, and is refused by the plan's validation: see above)
    [b'"window": "20"', b'"window": 1e400', b'"window": 2.5', b'"mode": ["window"]'],
)
def test_a_malformed_mode_or_window_is_a_bad_request(fields: bytes) -> None:
    raw = b'{"id": 5, "type": "schedule_upgrade", "name": "v2", "height": 90, ' + fields + b"}"
    with pytest.raises(DecodeFailure) as caught:
        decode_request(raw)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert caught.value.request_id == 5
    assert len(caught.value.message) < 300
