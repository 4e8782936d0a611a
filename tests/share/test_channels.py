"""Moving the remote session's commands to its own logical channel (shared mode)."""

from __future__ import annotations

import pytest

from vsc.apdu import decode_cla
from vsc.share import channels


@pytest.mark.parametrize("channel", range(1, 20))
@pytest.mark.parametrize("cla", [0x00, 0x10, 0x04, 0x0C, 0x1C])
def test_a_basic_channel_command_moves_keeping_chaining_and_secure_messaging(
    cla: int, channel: int
) -> None:
    moved = channels.move(bytes([cla]) + bytes.fromhex("A4040000"), channel)
    assert moved is not None and moved[1:] == bytes.fromhex("A4040000")
    before, after = decode_cla(cla), decode_cla(moved[0])
    assert after.channel == channel
    assert (after.chaining, after.secure_messaging) == (before.chaining, before.secure_messaging)


def test_proprietary_classes_reach_the_first_four_channels_only() -> None:
    assert channels.move(bytes.fromhex("80CA9F7F00"), 3) == bytes.fromhex("83CA9F7F00")
    assert channels.move(bytes.fromhex("80CA9F7F00"), 4) is None


@pytest.mark.parametrize(
    "apdu",
    ["01A4040000", "40A4040000", "7FA4040000", "0070000001", "00708001", "8070000001"],
)
def test_the_remote_side_cannot_address_channels_itself(apdu: str) -> None:
    assert channels.move(bytes.fromhex(apdu), 1) is None


@pytest.mark.parametrize("apdu", ["", "00", "00A404", "FFA4040000", "20A4040000"])
def test_malformed_commands_reach_the_card_unchanged(apdu: str) -> None:
    assert channels.move(bytes.fromhex(apdu), 1) == bytes.fromhex(apdu)


def test_open_and_close() -> None:
    assert channels.opened(bytes.fromhex("019000")) == 1
    assert channels.opened(bytes.fromhex("139000")) == 19
    for answer in ["6881", "6D00", "009000", "149000", "01029000", "016A81"]:
        assert channels.opened(bytes.fromhex(answer)) is None
    assert channels.close(5) == bytes.fromhex("00708005")
