"""The relay's APDU trace masks PINs, keys and secrets, and the GET RESPONSEs after them."""

from __future__ import annotations

import logging

import pytest

from vsc.share.events import EventKind, EventLog, read_events
from vsc.share.masking import ApduTrace, is_secret_command
from vsc.trace import TRACE

VERIFY = bytes.fromhex("0020008008313233343536FFFF")


@pytest.mark.parametrize(
    ("apdu", "secret"),
    [
        (VERIFY, True),
        (bytes.fromhex("002400800831323334353637"), True),  # CHANGE REFERENCE DATA
        (bytes.fromhex("002C008010"), True),  # RESET RETRY COUNTER
        (bytes.fromhex("0087119A0A7C08820081"), True),  # GENERAL AUTHENTICATE
        (bytes.fromhex("00FE9A0000"), True),  # IMPORT KEY
        (bytes.fromhex("00FFFFFE1B"), True),  # SET MANAGEMENT KEY
        (bytes.fromhex("00CB3FFF055C035FC109"), True),  # GET DATA of the protected key
        (bytes.fromhex("00DB3FFF085C035FC1095300"), True),
        (bytes.fromhex("00CB3FFF055C035FC102"), False),  # GET DATA of the CHUID
        (bytes.fromhex("00A4040005A000000308"), False),
        (b"\x00\x20", False),  # too short to have an INS... and a header
    ],
)
def test_secret_commands(apdu: bytes, secret: bool) -> None:
    assert is_secret_command(apdu) is secret


def test_trace_masks_pins_and_their_continuations(caplog: pytest.LogCaptureFixture) -> None:
    trace = ApduTrace("link")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        trace.exchange(VERIFY, b"\x90\x00")
        trace.exchange(bytes.fromhex("0087119A05AABBCCDDEE"), bytes.fromhex("112233446108"))
        trace.exchange(bytes.fromhex("00C0000008"), bytes.fromhex("55667788990011229000"))
        trace.exchange(bytes.fromhex("00A4040005A000000308"), bytes.fromhex("9000"))
    text = caplog.text
    assert "00 20 00 80 <9 secret bytes>" in text
    for leaked in ("31 32 33", "AA BB", "11 22 33", "55 66 77"):
        assert leaked not in text
    assert "00 C0 00 00 <1 secret bytes>" in text
    assert "00 A4 04 00 05 A0 00 00 03 08" in text  # ordinary commands stay readable


def test_trace_costs_nothing_when_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vsc.share.apdu"):
        ApduTrace("link").exchange(VERIFY, b"\x90\x00")
    assert caplog.records == []


def test_event_log_lines(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "events.log"
    log = EventLog(path, "service")
    with caplog.at_level(logging.INFO, logger="vsc.share.events"):
        log.record(EventKind.SHARED, "Reader 1 shared into session S", reader="Reader 1", x=None)
    (event,) = read_events(path)
    assert event["event"] == "shared" and event["side"] == "service"
    assert event["reader"] == "Reader 1" and "x" not in event
    assert event["time"].endswith("+00:00")
    assert "Reader 1 shared into session S" in caplog.text
    assert read_events(Path(str(tmp_path)) / "missing.log") == []
