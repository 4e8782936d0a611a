"""The engine end to end: OpenSC's opensc-tool and pyscard through pcscd + vpcd.

Each test has its own private pcscd and emulator process (see conftest). The
card is the emulator's factory default, which carries the diagnostic echo
applet (``applets/echo.py``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from applets.echo import ECHO_AID
from vsc.card import DEFAULT_ATR
from vsc.sw import SW
from vsc.testing import EmulatorProcess, PcscdEnv

if TYPE_CHECKING:
    from .conftest import StartEmulator

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 20.0
SELECT_ECHO = bytes.fromhex("00A4040006") + ECHO_AID
UNKNOWN_AID = bytes.fromhex("F07673630002")
PATTERN = bytes(range(256)) * 3

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One command and its response, as opensc-tool printed them."""

    command: bytes
    data: bytes
    sw: int


_SENDING = re.compile(r"Sending: ((?:[0-9A-F]{2} )+)")
_RECEIVED = re.compile(r"Received \(SW1=0x([0-9A-F]{2}), SW2=0x([0-9A-F]{2})\)(:?)")
_HEX_BYTE = re.compile(r"[0-9A-F]{2} ")


def _dump_line(line: str) -> bytes:
    """Bytes of one hex dump line: n bytes as ``XX `` each, then n ascii characters.

    OpenSC pads the hex column to 16 bytes on the last line of a multi-line
    dump only, so both layouts are accepted (the ascii column can look like
    hex, so the length decides, and at most one layout fits).
    """
    for count, width in ((len(line) // 4, 3 * (len(line) // 4)), (len(line) - 48, 48)):
        hex_part = line[: 3 * count]
        fits = 0 < count <= 16 and len(line) == width + count
        if fits and not _HEX_BYTE.sub("", hex_part) and not line[3 * count : width].strip(" "):
            return bytes.fromhex(hex_part)
    raise AssertionError(f"not a hex dump line: {line!r}")


def parse_opensc_tool(stdout: str) -> list[Exchange]:
    """The exchanges of ``opensc-tool -s ...`` output, data bytes exact."""
    lines = stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    exchanges: list[Exchange] = []
    i = 0
    while i < len(lines):
        sending = _SENDING.fullmatch(lines[i])
        received = _RECEIVED.fullmatch(lines[i + 1]) if i + 1 < len(lines) else None
        if sending is None or received is None:
            raise AssertionError(f"unexpected opensc-tool output at line {i}: {lines[i : i + 2]!r}")
        i += 2
        data = b""
        if received.group(3):  # "Received (...):" announces a hex dump
            while i < len(lines) and not lines[i].startswith("Sending: "):
                data += _dump_line(lines[i])
                i += 1
            assert data, "announced data is missing"
        sw = int(received.group(1) + received.group(2), 16)
        exchanges.append(Exchange(bytes.fromhex(sending.group(1)), data, sw))
    return exchanges


def send_apdus(pcscd: PcscdEnv, *apdus: bytes, slot: int = 0) -> list[Exchange]:
    """Send ``apdus`` in one opensc-tool session; check every one was sent and answered."""
    # The "default" driver sends nothing between our APDUs (the PIV driver
    # would re-select PIV at the start of every transaction).
    argv = ["opensc-tool", "-c", "default", "-r", pcscd.reader(slot)]
    for apdu in apdus:
        argv += ["-s", apdu.hex()]
    result = pcscd.run(argv, timeout=CLIENT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    exchanges = parse_opensc_tool(result.stdout)
    assert [e.command for e in exchanges] == list(apdus)
    return exchanges


def opensc_atr(pcscd: PcscdEnv, slot: int = 0) -> bytes:
    result = pcscd.run(["opensc-tool", "-r", pcscd.reader(slot), "-a"], timeout=CLIENT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(result.stdout.strip().replace(":", ""))


@pytest.fixture
def opensc_tool(tool: Callable[[str], str]) -> str:
    return tool("opensc-tool")


def test_parser_reads_both_dump_layouts() -> None:
    # A one-line dump is unpadded; the last line of a longer one is padded to 16
    # bytes. The ascii column here ("0A B", "0A ") looks like hex on purpose.
    full = "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F ................"
    stdout = (
        "Sending: 00 A4 04 00 \nReceived (SW1=0x6A, SW2=0x82)\n"
        "Sending: 00 CA 00 00 \nReceived (SW1=0x90, SW2=0x00):\n30 41 20 0A 0A .\n"
        f"Sending: 00 CB 00 00 \nReceived (SW1=0x61, SW2=0x10):\n{full}\n"
        f"{'30 41 20 42':<48}0A B\n"
    )
    assert parse_opensc_tool(stdout) == [
        Exchange(bytes.fromhex("00A40400"), b"", 0x6A82),
        Exchange(bytes.fromhex("00CA0000"), b"0A \n", 0x9000),
        Exchange(bytes.fromhex("00CB0000"), bytes(range(16)) + b"0A B", 0x6110),
    ]
    with pytest.raises(AssertionError, match="not a hex dump line"):
        parse_opensc_tool("Sending: 00 \nReceived (SW1=0x90, SW2=0x00):\n30 41 0A.\n")


def test_card_appears_with_default_atr_and_disappears(
    pcscd: PcscdEnv, start_emulator: StartEmulator, opensc_tool: str
) -> None:
    assert pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=1.0) == b""
    emulator = start_emulator()

    assert pcscd.wait_for_card(pcscd.reader(0), present=True, timeout=1.0) == DEFAULT_ATR
    assert opensc_atr(pcscd) == DEFAULT_ATR

    assert emulator.stop() == 0, emulator.log_text()
    pcscd.wait_for_card(pcscd.reader(0), present=False, timeout=10.0)
    result = pcscd.run(["opensc-tool", "-r", pcscd.reader(0), "-a"], timeout=CLIENT_TIMEOUT)
    assert result.returncode != 0
    assert "Card not present" in result.stderr


def test_two_slots_are_two_cards(
    pcscd: PcscdEnv, start_emulator: StartEmulator, opensc_tool: str
) -> None:
    start_emulator("--slots", "2")
    assert pcscd.wait_for_card(pcscd.reader(1), present=True, timeout=10.0) == DEFAULT_ATR

    # Selecting in slot 1 does not select in slot 0: the cards are separate.
    select = send_apdus(pcscd, SELECT_ECHO, bytes.fromhex("0001000001AA"), slot=1)
    assert [(e.data, e.sw) for e in select] == [(b"", SW.OK), (b"\xaa", SW.OK)]
    (echo,) = send_apdus(pcscd, bytes.fromhex("0001000001AA"), slot=0)
    assert echo.data == b""
    assert echo.sw != SW.OK


def test_select_unknown_aid(pcscd: PcscdEnv, emulator: EmulatorProcess, opensc_tool: str) -> None:
    (select,) = send_apdus(pcscd, bytes.fromhex("00A4040006") + UNKNOWN_AID)
    assert (select.data, select.sw) == (b"", SW.FILE_NOT_FOUND)


def test_chained_command_is_echoed_whole(
    pcscd: PcscdEnv, emulator: EmulatorProcess, opensc_tool: str
) -> None:
    chunks = [bytes(range(0, 200)), bytes(range(200, 256)) + bytes(144), bytes.fromhex("C0FFEE")]
    apdus = [SELECT_ECHO]
    for chunk in chunks[:-1]:
        apdus.append(bytes([0x10, 0x01, 0x00, 0x00, len(chunk)]) + chunk)
    apdus.append(bytes([0x00, 0x01, 0x00, 0x00, len(chunks[-1])]) + chunks[-1] + b"\x00")

    select, *middle, last = send_apdus(pcscd, *apdus)

    assert select.sw == SW.OK
    assert [(e.data, e.sw) for e in middle] == [(b"", SW.OK)] * len(middle)
    assert last.sw == SW.OK
    assert last.data == b"".join(chunks)


def test_long_response_through_get_response(
    pcscd: PcscdEnv, emulator: EmulatorProcess, opensc_tool: str
) -> None:
    # Le=00 asks 256 bytes; the card answers 256 + 6100 and OpenSC fetches the rest
    # with GET RESPONSE itself, printing the whole response. A further GET
    # RESPONSE finds nothing pending.
    select, pattern, extra = send_apdus(
        pcscd, SELECT_ECHO, bytes.fromhex("0002030000"), bytes.fromhex("00C0000000")
    )
    assert select.sw == SW.OK
    assert pattern.sw == SW.OK
    assert len(pattern.data) == 768
    assert pattern.data == PATTERN
    assert extra.sw == SW.CONDITIONS_NOT_SATISFIED


def test_get_response_by_hand_with_pyscard(pcscd: PcscdEnv, emulator: EmulatorProcess) -> None:
    # pyscard leaves 61xx to the caller, so the GET RESPONSE sequence is visible.
    def exchange() -> list[tuple[bytes, int]]:
        from smartcard.System import readers

        pcscd.use_in_process()
        (reader,) = [r for r in readers() if str(r) == pcscd.reader(0)]
        connection = reader.createConnection()
        connection.connect()
        try:
            answers = [bytes(connection.getATR()) + b"\x00\x00"]
            for apdu in (SELECT_ECHO, bytes.fromhex("0002030000")):
                answers.append(_transmit(connection, apdu))
            while answers[-1][-2] == 0x61:
                answers.append(_transmit(connection, bytes.fromhex("00C0000000")))
            return [(answer[:-2], int.from_bytes(answer[-2:])) for answer in answers]
        finally:
            connection.disconnect()

    atr, select, *parts = _bounded(exchange, CLIENT_TIMEOUT)

    assert atr == (DEFAULT_ATR, 0)
    assert select == (b"", SW.OK)
    assert [sw for _, sw in parts] == [0x6100, 0x6100, SW.OK]
    assert [len(data) for data, _ in parts] == [256, 256, 256]
    assert b"".join(data for data, _ in parts) == PATTERN


def _transmit(connection: Any, apdu: bytes) -> bytes:
    data, sw1, sw2 = connection.transmit(list(apdu))
    return bytes(data) + bytes([sw1, sw2])


def _bounded(function: Callable[[], T], timeout: float) -> T:
    """Run a blocking client call in a thread so a hung card fails the test."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"client call still blocked after {timeout} s")
    if failure:
        raise failure[0]
    return outcome[0]
