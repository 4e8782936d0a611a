"""The relay's APDU trace masks as the card's does: by the selected applet's rules."""

from __future__ import annotations

import logging

import pytest

from vsc.share.events import EventKind, EventLog, read_events
from vsc.share.masking import ApduTrace
from vsc.trace import TRACE

SELECT_PIV = bytes.fromhex("00A4040005A000000308")
SELECTED = bytes.fromhex("61114F0600001000010079074F05A0000003089000")
VERIFY = bytes.fromhex("0020008008313233343536FFFF")


def test_trace_masks_pins_and_their_continuations(caplog: pytest.LogCaptureFixture) -> None:
    trace = ApduTrace("link")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        trace.exchange(SELECT_PIV, SELECTED)
        trace.exchange(VERIFY, b"\x90\x00")
        trace.exchange(bytes.fromhex("0087119A05AABBCCDDEE"), bytes.fromhex("112233446108"))
        trace.exchange(bytes.fromhex("00C0000008"), bytes.fromhex("55667788990011229000"))
        trace.exchange(bytes.fromhex("00CB3FFF055C035FC102"), bytes.fromhex("5301AA9000"))
    text = caplog.text
    assert "00 20 00 80 <9 secret bytes>" in text
    for leaked in ("31 32 33", "AA BB", "11 22 33", "55 66 77"):
        assert leaked not in text
    assert "00 C0 00 00 08 < <8 secret bytes> 90 00" in text  # Le is no secret
    assert "00 A4 04 00 05 A0 00 00 03 08" in text  # ordinary commands stay readable
    assert "53 01 AA 90 00" in text


def test_trace_follows_a_chained_put_data_of_the_protected_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = bytes(range(0x40, 0x58))
    data = bytes.fromhex("5C035FC109531C881A8918") + key
    trace = ApduTrace("link")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        trace.exchange(SELECT_PIV, SELECTED)
        trace.exchange(bytes.fromhex("10DB3FFF10") + data[:16], b"\x90\x00")
        trace.exchange(bytes.fromhex("00DB3FFF13") + data[16:], b"\x90\x00")
    assert "00 DB 3F FF <20 secret bytes>" in caplog.text
    assert key[-8:].hex(" ").upper() not in caplog.text


def test_unknown_applets_show_headers_only(caplog: pytest.LogCaptureFixture) -> None:
    trace = ApduTrace("link")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        trace.exchange(bytes.fromhex("00CA010000"), bytes.fromhex("0102039000"))  # not selected
        trace.exchange(bytes.fromhex("00A4040006D27600012401"), b"\x90\x00")  # OpenPGP
        trace.exchange(bytes.fromhex("00DA005E0401020304"), b"\x90\x00")
    assert "00 A4 04 00 06 D2 76 00 01 24 01" in caplog.text
    assert "00 CA 01 00 <1 secret bytes> < <3 secret bytes> 90 00" in caplog.text
    assert "00 DA 00 5E <5 secret bytes>" in caplog.text


def test_a_restart_forgets_the_selection(caplog: pytest.LogCaptureFixture) -> None:
    trace = ApduTrace("link")
    with caplog.at_level(TRACE, logger="vsc.share.apdu"):
        trace.exchange(SELECT_PIV, SELECTED)
        trace.restart()  # e.g. another application reset the shared card
        trace.exchange(bytes.fromhex("00CB3FFF055C035FC102"), bytes.fromhex("5301AA9000"))
    assert "00 CB 3F FF <6 secret bytes>" in caplog.text


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
