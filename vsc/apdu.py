"""ISO 7816-4 command APDUs: parsing, encoding and the CLA byte.

Theory of operation
-------------------
A command APDU is ``CLA INS P1 P2`` followed by an optional body. The body's
shape decides the case (ISO 7816-3 §12.1.3)::

    case 1    (nothing)
    case 2S   Le                      (1 byte, 00 means 256)
    case 3S   Lc data                 (Lc 01..FF)
    case 4S   Lc data Le
    case 2E   00 Le1 Le2              (0000 means 65536)
    case 3E   00 Lc1 Lc2 data         (Lc 0001..FFFF)
    case 4E   00 Lc1 Lc2 data Le1 Le2

A body whose first byte is ``00`` and that is longer than one byte is
extended; anything that fits none of the shapes is ``6700``. PIV clients send
case 3 commands and expect data back, so an absent Le means "as much as the
transport allows": 256 for short APDUs, 65536 for extended ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .sw import SW, ApduError

SHORT_MAX_NE = 256
EXTENDED_MAX_NE = 65536

# CLA bits (ISO 7816-4 §5.4.1).
CLA_CHAINING = 0x10

# The commands the card itself handles (ISO 7816-4 §11.1.1, §11.1.2, §7.1.1).
INS_SELECT = 0xA4
INS_MANAGE_CHANNEL = 0x70
INS_GET_RESPONSE = 0xC0


@dataclass(frozen=True, slots=True)
class ClassByte:
    """What a CLA byte says: logical channel, chaining, secure messaging."""

    channel: int
    chaining: bool
    secure_messaging: bool
    proprietary: bool


def _decode_cla(cla: int) -> ClassByte | None:
    if cla == 0xFF or 0x20 <= cla <= 0x3F:
        return None  # FF is PPS, 001x xxxx is reserved for future use
    if 0x40 <= cla <= 0x7F:  # further interindustry: channels 4-19
        return ClassByte(4 + (cla & 0x0F), bool(cla & 0x10), bool(cla & 0x20), False)
    # First interindustry (and, by GlobalPlatform convention, proprietary
    # classes 80-FE): channel in b2-b1, secure messaging in b4-b3.
    return ClassByte(cla & 0x03, bool(cla & 0x10), bool(cla & 0x0C), cla >= 0x80)


# Decoded once: the CLA byte is read on every APDU.
_CLA_TABLE: tuple[ClassByte | None, ...] = tuple(_decode_cla(c) for c in range(256))


def decode_cla(cla: int) -> ClassByte:
    """Decode a CLA byte; ``6E00`` for the invalid and reserved values."""
    decoded = _CLA_TABLE[cla]
    if decoded is None:
        raise ApduError(SW.CLASS_NOT_SUPPORTED, f"invalid CLA {cla:02X}")
    return decoded


def encode_cla(channel: int, *, chaining: bool = False, proprietary: bool = False) -> int:
    """The CLA byte for ``channel`` (0-19), without secure messaging."""
    if not 0 <= channel <= 19:
        raise ValueError(f"logical channel {channel} out of range 0-19")
    if channel < 4:
        cla = channel | (0x80 if proprietary else 0)
    elif proprietary:
        raise ValueError("proprietary classes only address channels 0-3")
    else:
        cla = 0x40 | (channel - 4)
    return cla | (CLA_CHAINING if chaining else 0)


class CommandApdu(NamedTuple):
    """A parsed command APDU.

    ``le`` is the Ne the command carried (1-256 short, 1-65536 extended) or
    None when it had no Le field; :attr:`ne` is what the card may answer.
    An immutable record built once per APDU; a NamedTuple because building a
    frozen dataclass costs ~0.85 us per APDU and a tuple ~0.1 us.
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    extended: bool = False

    @property
    def ne(self) -> int:
        """The most response bytes the client accepts for this command."""
        if self.le is not None:
            return self.le
        return EXTENDED_MAX_NE if self.extended else SHORT_MAX_NE

    @classmethod
    def parse(cls, apdu: bytes) -> CommandApdu:
        """Parse raw bytes; raises :class:`ApduError` ``6700`` on a bad shape."""
        n = len(apdu)
        new = _new
        if n < 4:
            raise ApduError(SW.WRONG_LENGTH, f"APDU of {n} bytes")
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        if n == 4:
            return new(cls, (cla, ins, p1, p2, b"", None, False))
        b4 = apdu[4]
        if n == 5:
            return new(cls, (cla, ins, p1, p2, b"", b4 or SHORT_MAX_NE, False))
        if b4:  # short Lc
            if n == 5 + b4:
                return new(cls, (cla, ins, p1, p2, apdu[5:], None, False))
            if n == 6 + b4:
                return new(cls, (cla, ins, p1, p2, apdu[5:-1], apdu[-1] or SHORT_MAX_NE, False))
            raise ApduError(SW.WRONG_LENGTH, f"Lc {b4} does not match {n - 5} body bytes")
        if n == 6:
            raise ApduError(SW.WRONG_LENGTH, "body of 00 xx is neither short nor extended")
        ext = (apdu[5] << 8) | apdu[6]
        if n == 7:
            return new(cls, (cla, ins, p1, p2, b"", ext or EXTENDED_MAX_NE, True))
        if ext == 0:
            raise ApduError(SW.WRONG_LENGTH, "extended Lc of 0")
        if n == 7 + ext:
            return new(cls, (cla, ins, p1, p2, apdu[7:], None, True))
        if n == 9 + ext:
            le = (apdu[-2] << 8) | apdu[-1]
            return new(cls, (cla, ins, p1, p2, apdu[7:-2], le or EXTENDED_MAX_NE, True))
        raise ApduError(SW.WRONG_LENGTH, f"extended Lc {ext} does not match {n - 7} body bytes")

    def encode(self) -> bytes:
        """Serialise; short form unless ``extended`` is set or the sizes need it."""
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        nc = len(self.data)
        if nc > 0xFFFF:
            raise ValueError(f"command data of {nc} bytes does not fit an APDU")
        if self.le is not None and not 1 <= self.le <= EXTENDED_MAX_NE:
            raise ValueError(f"Le {self.le} out of range")
        extended = self.extended or nc > 0xFF or (self.le or 0) > SHORT_MAX_NE
        body = b""
        if extended:
            if nc:
                body = b"\x00" + nc.to_bytes(2, "big") + self.data
            if self.le is not None:
                le = (self.le & 0xFFFF).to_bytes(2, "big")
                body += le if nc else b"\x00" + le
        else:
            if nc:
                body = bytes((nc,)) + self.data
            if self.le is not None:
                body += bytes((self.le & 0xFF,))
        return header + body


_new = tuple.__new__


def aid_matches(selected: bytes, aid: bytes, min_prefix: int = 0) -> bool:
    """Whether SELECT by ``selected`` chooses the applet ``aid``.

    The full AID always does; with ``min_prefix`` > 0, so does a shorter
    prefix of it of at least that many bytes (PIV: the 5-byte RID).
    """
    if selected == aid:
        return True
    return 0 < min_prefix <= len(selected) < len(aid) and aid.startswith(selected)


def response(data: bytes, sw: int) -> bytes:
    """A response APDU: data then the two status bytes."""
    return data + sw.to_bytes(2, "big")
