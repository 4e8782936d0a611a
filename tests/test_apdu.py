"""The APDU codec: every ISO 7816-3 case, short and extended, and the CLA byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsc.apdu import CommandApdu, decode_cla, encode_cla
from vsc.sw import SW, ApduError


def h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.mark.parametrize(
    ("raw", "data", "le", "extended"),
    [
        ("00200080", b"", None, False),  # case 1
        ("0020008000", b"", 256, False),  # case 2S, Le 00 = 256
        ("00FD000003", b"", 3, False),
        ("00A4040005A000000308", h("A000000308"), None, False),  # case 3S
        ("00A4040005A00000030800", h("A000000308"), 256, False),  # case 4S
        ("00CB3FFF035C017E08", h("5C017E"), 8, False),
        ("00C0000000FFFF", b"", 0xFFFF, True),  # case 2E
        ("00C00000000000", b"", 65536, True),  # case 2E, 0000 = 65536
        ("00DB3FFF000003AABBCC", h("AABBCC"), None, True),  # case 3E
        ("00DB3FFF000003AABBCC0000", h("AABBCC"), 65536, True),  # case 4E, any Le
        ("00DB3FFF000003AABBCC0102", h("AABBCC"), 0x102, True),
    ],
)
def test_parse_cases(raw: str, data: bytes, le: int | None, extended: bool) -> None:
    apdu = CommandApdu.parse(h(raw))
    assert (apdu.data, apdu.le, apdu.extended) == (data, le, extended)
    assert apdu.encode() == h(raw) or (le == 256 and not extended) or le == 65536


def test_absent_le_means_transport_maximum() -> None:
    assert CommandApdu.parse(h("00A4040001AA")).ne == 256
    assert CommandApdu.parse(h("00A40400000001AA")).ne == 65536
    assert CommandApdu.parse(h("00200080")).ne == 256


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "00",
        "00A404",
        "00A4040003AABB",  # Lc 3, two bytes
        "00A4040002AABBCCDD",  # Lc 2, four bytes
        "00A4040000AA",  # ambiguous: 00 then one byte
        "00A404000000",  # 6 bytes: neither short nor extended
        "00A4040000000000AA",  # extended Lc 0 with data
        "00A40400000003AABB",  # extended Lc 3, two bytes
        "00A40400000002AABBCCDDEE",  # extended Lc 2, trailing 3 bytes
    ],
)
def test_wrong_length(raw: str) -> None:
    with pytest.raises(ApduError) as e:
        CommandApdu.parse(h(raw))
    assert e.value.sw == SW.WRONG_LENGTH


@given(
    cla=st.integers(0, 255),
    ins=st.integers(0, 255),
    p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    data=st.binary(max_size=600),
    le=st.one_of(st.none(), st.integers(1, 65536)),
    extended=st.booleans(),
)
def test_encode_parse_round_trip(
    cla: int, ins: int, p1: int, p2: int, data: bytes, le: int | None, extended: bool
) -> None:
    apdu = CommandApdu(cla, ins, p1, p2, data, le, extended)
    parsed = CommandApdu.parse(apdu.encode())
    assert (parsed.cla, parsed.ins, parsed.p1, parsed.p2) == (cla, ins, p1, p2)
    assert parsed.data == data
    assert parsed.le == le
    has_body = bool(data) or le is not None  # case 1 has no extended form
    assert parsed.extended == (has_body and (extended or len(data) > 255 or (le or 0) > 256))


@given(st.binary(max_size=300))
def test_parse_raises_only_wrong_length(raw: bytes) -> None:
    try:
        apdu = CommandApdu.parse(raw)
    except ApduError as e:
        assert e.sw == SW.WRONG_LENGTH
    else:
        assert CommandApdu.parse(apdu.encode()) == apdu


@pytest.mark.parametrize(
    ("cla", "channel", "chaining", "sm", "proprietary"),
    [
        (0x00, 0, False, False, False),
        (0x10, 0, True, False, False),
        (0x03, 3, False, False, False),
        (0x13, 3, True, False, False),
        (0x0C, 0, False, True, False),
        (0x40, 4, False, False, False),
        (0x4F, 19, False, False, False),
        (0x5F, 19, True, False, False),
        (0x60, 4, False, True, False),
        (0x80, 0, False, False, True),
        (0x91, 1, True, False, True),
    ],
)
def test_decode_cla(cla: int, channel: int, chaining: bool, sm: bool, proprietary: bool) -> None:
    decoded = decode_cla(cla)
    assert (decoded.channel, decoded.chaining) == (channel, chaining)
    assert (decoded.secure_messaging, decoded.proprietary) == (sm, proprietary)


@pytest.mark.parametrize("cla", [0x20, 0x3F, 0xFF])
def test_invalid_cla(cla: int) -> None:
    with pytest.raises(ApduError) as e:
        decode_cla(cla)
    assert e.value.sw == SW.CLASS_NOT_SUPPORTED


@pytest.mark.parametrize("channel", range(20))
def test_encode_cla_round_trip(channel: int) -> None:
    for chaining in (False, True):
        decoded = decode_cla(encode_cla(channel, chaining=chaining))
        assert (decoded.channel, decoded.chaining) == (channel, chaining)
