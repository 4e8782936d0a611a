"""Structure-aware mutations of fuzz inputs (:mod:`vsc.fuzz`).

A mutation works on one of two levels. On an APDU: bit flips, byte sets,
insertions, deletions, truncation, CLA/INS/P1/P2 from tables of interesting
values, Lc/Le off by one or set to boundary values, short↔extended re-encoding,
broken BER lengths inside the data, fresh random data. On the sequence:
splicing steps from other inputs, crossover, deletion, duplication, swaps,
power events, the management-key macro, VERIFY, GET RESPONSE with random Le,
splitting an APDU into chained chunks (sometimes with another command or a
corrupted header in the middle), moving a run of APDUs onto a freshly opened
logical channel, fresh APDUs from the tables, and raw junk.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..apdu import CommandApdu
from .inputs import DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN, MAX_STEPS, FuzzInput, Step, StepKind

# -- tables ----------------------------------------------------------------------------------

CLAS = (0x00, 0x10, 0x01, 0x11, 0x02, 0x03, 0x13, 0x0C, 0x1C, 0x40, 0x41, 0x4F, 0x50, 0x5F,
        0x60, 0x80, 0x81, 0x84, 0x90, 0x94, 0xA0, 0xFE, 0xFF, 0x20, 0x3F)  # fmt: skip
INSES = (0xA4, 0xC0, 0x70, 0xCB, 0xDB, 0x20, 0x24, 0x2C, 0x87, 0x47, 0xF6, 0xF7, 0xF8, 0xF9,
         0xFA, 0xFB, 0xFD, 0xFE, 0xFF, 0x01, 0x02, 0x00, 0x60, 0x6F, 0x90, 0xB0, 0xD6)  # fmt: skip
PS = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x0C, 0x11, 0x14, 0x16,
      0xE0, 0xE1, 0x3F, 0xFF, 0xFE, 0xFD, 0x80, 0x81, 0x82, 0x95, 0x96, 0x9A, 0x9B, 0x9C,
      0x9D, 0x9E, 0xF9, 0x7F, 0x10)  # fmt: skip
LENGTHS = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0xFE, 0xFF)


class Mutator:
    """Structure-aware mutations of inputs (see the module docstring for the list)."""

    def __init__(self, rng: random.Random, max_apdu: int = 70_000) -> None:
        self.rng = rng
        self.max_apdu = max_apdu
        self._apdu_ops: tuple[Callable[[bytearray], bytearray], ...] = (
            self._flip_bit,
            self._set_byte,
            self._insert_bytes,
            self._delete_bytes,
            self._truncate,
            self._header_field,
            self._header_field,
            self._length_field,
            self._length_field,
            self._reshape,
            self._tlv_length,
            self._new_data,
        )

    # sequence level

    def mutate(self, steps: FuzzInput, pool: Sequence[FuzzInput]) -> FuzzInput:
        out = list(steps)
        for _ in range(1 + min(int(self.rng.expovariate(0.7)), 7)):
            out = self._mutate_once(out, pool)
        return tuple(out[:MAX_STEPS])

    def _mutate_once(self, out: list[Step], pool: Sequence[FuzzInput]) -> list[Step]:
        rng = self.rng
        r = rng.random()
        apdus = [i for i, s in enumerate(out) if s.kind is StepKind.APDU]
        if r < 0.45 and apdus:
            i = rng.choice(apdus)
            op = rng.choice(self._apdu_ops)
            out[i] = Step(StepKind.APDU, bytes(op(bytearray(out[i].data))[: self.max_apdu]))
        elif r < 0.55 and pool:
            donor = rng.choice(pool)
            if donor:
                a = rng.randrange(len(donor))
                piece = donor[a : a + rng.randint(1, 4)]
                at = rng.randint(0, len(out))
                out[at:at] = piece
        elif r < 0.60 and pool:
            donor = rng.choice(pool)
            out = out[: rng.randint(0, len(out))] + list(donor[rng.randint(0, len(donor)) :])
        elif r < 0.66 and out:
            i = rng.randrange(len(out))
            if rng.random() < 0.5:
                del out[i]
            else:
                out.insert(i, out[i])
        elif r < 0.69 and len(out) > 1:
            i, j = rng.randrange(len(out)), rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        elif r < 0.74:
            kind = rng.choice((StepKind.RESET, StepKind.POWER_OFF, StepKind.POWER_ON))
            out.insert(rng.randint(0, len(out)), Step(kind))
        elif r < 0.78:
            out.insert(rng.randint(0, len(out)), self._auth_step())
        elif r < 0.81:
            pin = DEFAULT_PIN if rng.random() < 0.7 else bytes(rng.randbytes(8))
            cla = rng.choice((0, 0, 0, 1, 2, 3))
            step = Step(StepKind.APDU, bytes((cla, 0x20, 0, 0x80, 8)) + pin)
            out.insert(rng.randint(0, len(out)), step)
        elif r < 0.86:
            le = rng.choice((0, 0, 1, 8, 0x10, 0xFF, rng.randrange(256)))
            cla = rng.choice((0, 0, 0, 1, 2, 0x10, 0x40))
            gr = Step(StepKind.APDU, bytes((cla, 0xC0, 0, 0, le)))
            out.insert(rng.randint(0, len(out)), gr)
        elif r < 0.91 and apdus:
            out = self._chain(out, rng.choice(apdus), pool)
        elif r < 0.94:
            out = self._channels(out)
        elif r < 0.97:
            out.insert(rng.randint(0, len(out)), Step(StepKind.APDU, self._fresh_apdu()))
        else:
            junk = rng.randbytes(rng.choice((0, 1, 2, 3, 4, 5, 6, 7, rng.randrange(300))))
            out.insert(rng.randint(0, len(out)), Step(StepKind.APDU, junk))
        return out

    def _auth_step(self) -> Step:
        rng = self.rng
        cla = rng.choice((0, 0, 0, 1, 2, 0x40))
        alg = rng.choice((0x03, 0x03, 0x03, 0x08, 0x0A, 0x0C, rng.randrange(256)))
        key = DEFAULT_MANAGEMENT_KEY if rng.random() < 0.8 else rng.randbytes(24)
        return Step(StepKind.AUTHENTICATE, bytes((cla, alg)) + key)

    def _chain(self, out: list[Step], i: int, pool: Sequence[FuzzInput]) -> list[Step]:
        """Split an APDU into chained chunks; maybe interleave or corrupt a chunk."""
        rng = self.rng
        try:
            cmd = CommandApdu.parse(out[i].data)
        except Exception:
            return out
        if len(cmd.data) < 2:
            return out
        size = rng.choice((1, 2, 16, 128, 255, rng.randint(1, len(cmd.data) - 1)))
        pieces = [cmd.data[k : k + size] for k in range(0, len(cmd.data), size)]
        chunks = []
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            cla = cmd.cla if last else cmd.cla | 0x10
            le = cmd.le if last else rng.choice((None, None, 1, 256))
            chunks.append(
                Step(StepKind.APDU, CommandApdu(cla, cmd.ins, cmd.p1, cmd.p2, piece, le).encode())
            )
        if len(chunks) > 1 and rng.random() < 0.4:
            k = rng.randrange(1, len(chunks))
            if rng.random() < 0.5 and pool and (donor := rng.choice(pool)):
                chunks.insert(k, rng.choice(donor))
            else:
                b = bytearray(chunks[k].data)
                b[rng.randrange(1, 4)] ^= 1 + rng.randrange(255)
                chunks[k] = Step(StepKind.APDU, bytes(b))
        return out[:i] + chunks[:MAX_STEPS] + out[i + 1 :]

    def _channels(self, out: list[Step]) -> list[Step]:
        """Open a channel and move a run of APDUs onto it (or close one)."""
        rng = self.rng
        channel = rng.choice((1, 2, 3, 4, 19, 0))
        opener = bytes((0, 0x70, 0, channel)) if channel else bytes((0, 0x70, 0, 0, 1))
        at = rng.randint(0, len(out))
        out.insert(at, Step(StepKind.APDU, opener))
        cla = channel if channel < 4 else 0x40 | (channel - 4)
        for j in range(at + 1, min(len(out), at + 1 + rng.randint(1, 6))):
            s = out[j]
            if s.kind is StepKind.APDU and s.data:
                out[j] = Step(StepKind.APDU, bytes((cla | (s.data[0] & 0x10),)) + s.data[1:])
            elif s.kind is StepKind.AUTHENTICATE:
                out[j] = Step(StepKind.AUTHENTICATE, bytes((cla,)) + s.data[1:])
        if rng.random() < 0.5:
            closer = Step(StepKind.APDU, bytes((0, 0x70, 0x80, channel)))
            out.insert(rng.randint(at, len(out)), closer)
        return out

    def _fresh_apdu(self) -> bytes:
        rng = self.rng
        header = (rng.choice(CLAS), rng.choice(INSES), rng.choice(PS), rng.choice(PS))
        data = rng.randbytes(rng.choice((0, 0, 1, 2, 8, 16, rng.randrange(300))))
        le = rng.choice((None, None, 0, 8, 256, 65536, rng.randrange(1, 257)))
        if le == 0:
            le = None
        extended = rng.random() < 0.1
        return CommandApdu(*header, data, le, extended).encode()

    # APDU level

    def _flip_bit(self, b: bytearray) -> bytearray:
        if b:
            b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
        return b

    def _set_byte(self, b: bytearray) -> bytearray:
        if b:
            value = self.rng.choice((0x00, 0xFF, 0x80, 0x7F, self.rng.randrange(256)))
            b[self.rng.randrange(len(b))] = value
        return b

    def _insert_bytes(self, b: bytearray) -> bytearray:
        at = self.rng.randint(0, len(b))
        b[at:at] = self.rng.randbytes(self.rng.randint(1, 8))
        return b

    def _delete_bytes(self, b: bytearray) -> bytearray:
        if b:
            at = self.rng.randrange(len(b))
            del b[at : at + self.rng.randint(1, 8)]
        return b

    def _truncate(self, b: bytearray) -> bytearray:
        return b[: self.rng.randint(0, len(b))]

    def _header_field(self, b: bytearray) -> bytearray:
        if len(b) < 4:
            b += bytes(4 - len(b))
        i = self.rng.randrange(4)
        table = (CLAS, INSES, PS, PS)[i]
        b[i] = self.rng.choice(table) if self.rng.random() < 0.85 else self.rng.randrange(256)
        return b

    def _length_field(self, b: bytearray) -> bytearray:
        """Lc/Le off by one, zero, FF, or made extended."""
        rng = self.rng
        if len(b) < 5:
            b.append(rng.choice(LENGTHS))
            return b
        if rng.random() < 0.3 and len(b) > 6:
            b[-1] = rng.choice(LENGTHS)  # the Le byte, or the last data byte
        elif rng.random() < 0.5:
            b[4] = (b[4] + rng.choice((-1, 1, -2, 2))) & 0xFF
        else:
            b[4] = rng.choice(LENGTHS)
        return b

    def _reshape(self, b: bytearray) -> bytearray:
        """Re-encode a valid APDU short↔extended, with or without Le."""
        rng = self.rng
        try:
            cmd = CommandApdu.parse(bytes(b))
        except Exception:
            return self._length_field(b)
        le = rng.choice((None, cmd.le, 1, 8, 255, 256, 257, 65536))
        extended = rng.random() < 0.5 or len(cmd.data) > 255
        if le is not None and le > 256 and not extended:
            le = 256
        try:
            return bytearray(
                CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, le, extended).encode()
            )
        except ValueError:
            return b

    def _tlv_length(self, b: bytearray) -> bytearray:
        """Break a BER length inside the data (what TLV parsers choke on)."""
        if len(b) <= 6:
            return self._insert_bytes(b)
        at = self.rng.randrange(5, len(b))
        form = self.rng.choice((b"\x80", b"\x81", b"\x82", b"\x84", b"\x81\xff", b"\x82\xff\xff",
                                b"\x83\x01\x00\x00", b"\x00", b"\x7f", b"\xff"))  # fmt: skip
        b[at : at + self.rng.randint(0, 2)] = form
        if len(b) > 4:
            b[4] = (len(b) - 5) & 0xFF if self.rng.random() < 0.5 else b[4]
        return b

    def _new_data(self, b: bytearray) -> bytearray:
        header = bytes(b[:4]).ljust(4, b"\x00")
        data = self.rng.randbytes(self.rng.choice((0, 1, 8, 16, 32, 64, 255, 256, 1000)))
        le = self.rng.choice((None, 256, 8))
        cmd = CommandApdu(header[0], header[1], header[2], header[3], data, le)
        return bytearray(cmd.encode())
