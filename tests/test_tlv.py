"""BER-TLV: tags, the shortest length forms at every boundary, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsc.sw import SW, ApduError
from vsc.tlv import Tlv, encode_length, encode_tlv, parse_dict, parse_tlv, parse_tlvs, tag_bytes


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (0x7F, "7F"),
        (0x80, "8180"),
        (0xFF, "81FF"),
        (0x100, "820100"),
        (0xFFFF, "82FFFF"),
        (0x10000, "83010000"),
    ],
)
def test_length_boundaries(length: int, encoded: str) -> None:
    assert encode_length(length) == bytes.fromhex(encoded)
    value = bytes(length)
    tlv = parse_tlv(encode_tlv(0x53, value))
    assert tlv == Tlv(0x53, value)


@pytest.mark.parametrize(
    ("tag", "encoded"),
    [(0x53, "53"), (0x7F49, "7F49"), (0x5FC105, "5FC105"), (0x7F61, "7F61"), (0x01, "01")],
)
def test_multibyte_tags(tag: int, encoded: str) -> None:
    assert tag_bytes(tag) == bytes.fromhex(encoded)
    assert parse_tlv(encode_tlv(tag, b"\x01\x02")).tag == tag


def test_parse_nested_and_dict() -> None:
    inner = encode_tlv(0x80, b"\x11") + encode_tlv(0xAA, b"\x02")
    outer = encode_tlv(0xAC, inner)
    assert parse_dict(parse_tlv(outer, 0xAC).value) == {0x80: b"\x11", 0xAA: b"\x02"}


@pytest.mark.parametrize(
    "raw",
    [
        "53",  # no length
        "5303AABB",  # value runs past the end
        "5F",  # truncated multi-byte tag
        "5FC1",  # truncated multi-byte tag
        "5380",  # indefinite length
        "5385FFFFFFFFFF",  # 5-byte length
        "538201",  # truncated length
        "53015301AA",  # wrong number of TLVs for parse_tlv
    ],
)
def test_malformed_is_6a80(raw: str) -> None:
    with pytest.raises(ApduError) as e:
        parse_tlv(bytes.fromhex(raw))
    assert e.value.sw == SW.INVALID_DATA


def test_wrong_tag_and_repeated_tag() -> None:
    with pytest.raises(ApduError):
        parse_tlv(bytes.fromhex("5300"), 0x7E)
    with pytest.raises(ApduError):
        parse_dict(bytes.fromhex("80008000"))


@given(
    st.lists(
        st.tuples(st.sampled_from([0x53, 0x7E, 0x5FC102, 0x7F49, 0x80]), st.binary(max_size=300))
    )
)
def test_round_trip(items: list[tuple[int, bytes]]) -> None:
    raw = b"".join(encode_tlv(t, v) for t, v in items)
    assert [(t.tag, t.value) for t in parse_tlvs(raw)] == items


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_6a80(raw: bytes) -> None:
    try:
        tlvs = parse_tlvs(raw)
    except ApduError as e:
        assert e.sw == SW.INVALID_DATA
    else:
        assert sum(len(t.encode()) for t in tlvs) <= len(raw)
