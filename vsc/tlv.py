"""BER-TLV as used by ISO 7816-4 and PIV.

Tags are kept as integers of their encoded bytes (``0x5FC105``, ``0x7F49``),
the way the specs write them. Lengths are always encoded in the shortest form:
clients such as libykpiv read values at fixed offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from .sw import InvalidData


def tag_bytes(tag: int) -> bytes:
    """The encoded bytes of ``tag`` (``0x5FC105`` → ``5F C1 05``)."""
    if tag < 0:
        raise ValueError(f"negative tag {tag}")
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def encode_length(length: int) -> bytes:
    """The shortest DER length field for ``length``."""
    if length < 0:
        raise ValueError(f"negative length {length}")
    if length < 0x80:
        return bytes((length,))
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise ValueError(f"length {length} too large")
    return bytes((0x80 | len(body),)) + body


def encode_tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if 0 <= tag < 0x100 and n < 0x80:  # the common case, without the general helpers
        return bytes((tag, n)) + value
    return tag_bytes(tag) + encode_length(n) + value


class Tlv(NamedTuple):
    tag: int
    value: bytes

    def encode(self) -> bytes:
        return encode_tlv(self.tag, self.value)


def _read_tag(data: bytes, offset: int) -> tuple[int, int]:
    end = len(data)
    if offset >= end:
        raise InvalidData("TLV truncated in tag")
    first = data[offset]
    tag = first
    offset += 1
    if first & 0x1F == 0x1F:  # multi-byte tag: continuation while b8 is set
        while True:
            if offset >= end:
                raise InvalidData("TLV truncated in tag")
            b = data[offset]
            tag = (tag << 8) | b
            offset += 1
            if not b & 0x80:
                break
            if tag > 0xFFFFFFFF:
                raise InvalidData("TLV tag longer than 4 bytes")
    return tag, offset


def _read_long_length(data: bytes, offset: int, first: int) -> tuple[int, int]:
    n = first & 0x7F
    if n == 0 or n > 4:
        raise InvalidData(f"unsupported TLV length form {first:02X}")
    if offset + n > len(data):
        raise InvalidData("TLV truncated in length")
    return int.from_bytes(data[offset : offset + n], "big"), offset + n


def _read_length(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise InvalidData("TLV truncated in length")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    n = first & 0x7F
    if n == 0 or n > 4:
        raise InvalidData(f"unsupported TLV length form {first:02X}")
    if offset + n > len(data):
        raise InvalidData("TLV truncated in length")
    return int.from_bytes(data[offset : offset + n], "big"), offset + n


def peek_header(data: bytes) -> tuple[int, int, int] | None:
    """The first TLV's tag, length and value offset; None while ``data`` ends inside the header.

    For deciding what a command is about from its first bytes, before the rest
    has arrived (the chunks of a chained command come one by one). ``6A80``
    if the header is malformed.
    """
    end = len(data)
    if end == 0:
        return None
    tag = data[0]
    offset = 1
    if tag & 0x1F == 0x1F:
        while True:
            if offset >= end:
                return None
            b = data[offset]
            tag = (tag << 8) | b
            offset += 1
            if not b & 0x80:
                break
            if tag > 0xFFFFFFFF:  # the same limit as parse_tlvs
                raise InvalidData("TLV tag longer than 4 bytes")
    if offset >= end:
        return None
    first = data[offset]
    if first < 0x80:
        return tag, first, offset + 1
    n = first & 0x7F
    if n == 0 or n > 4:
        raise InvalidData(f"unsupported TLV length form {first:02X}")
    if offset + 1 + n > end:
        return None
    return tag, int.from_bytes(data[offset + 1 : offset + 1 + n], "big"), offset + 1 + n


def parse_tlvs(data: bytes) -> list[Tlv]:
    """The TLVs of ``data`` in order; ``6A80`` if anything is malformed."""
    out: list[Tlv] = []
    offset = 0
    end = len(data)
    while offset < end:
        tag = data[offset]
        if tag & 0x1F == 0x1F:
            tag, offset = _read_tag(data, offset)
        else:
            offset += 1
        if offset >= end:
            raise InvalidData("TLV truncated in length")
        length = data[offset]
        offset += 1
        if length >= 0x80:
            length, offset = _read_long_length(data, offset, length)
        stop = offset + length
        if stop > end:
            raise InvalidData("TLV value runs past the end of the data")
        out.append(_new_tlv(Tlv, (tag, bytes(data[offset:stop]))))
        offset = stop
    return out


_new_tlv = tuple.__new__


def iter_tlvs(data: bytes) -> Iterator[Tlv]:
    """Yield the TLVs of ``data`` in order; ``6A80`` if anything is malformed."""
    return iter(parse_tlvs(data))


def parse_tlv(data: bytes, tag: int | None = None) -> Tlv:
    """Exactly one TLV (optionally with the expected ``tag``); ``6A80`` otherwise."""
    tlvs = parse_tlvs(data)
    if len(tlvs) != 1:
        raise InvalidData(f"expected one TLV, found {len(tlvs)}")
    if tag is not None and tlvs[0].tag != tag:
        raise InvalidData(f"expected tag {tag:X}, found {tlvs[0].tag:X}")
    return tlvs[0]


def parse_dict(data: bytes) -> dict[int, bytes]:
    """TLVs by tag; a repeated tag is ``6A80``."""
    result: dict[int, bytes] = {}
    for tlv in iter_tlvs(data):
        if tlv.tag in result:
            raise InvalidData(f"tag {tlv.tag:X} repeated")
        result[tlv.tag] = tlv.value
    return result
