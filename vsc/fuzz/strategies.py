"""Hypothesis strategies for property tests of cards and card clients.

Needs ``hypothesis`` (it is not imported by :mod:`vsc.fuzz` itself). Each
strategy draws *bytes as they go on the wire*, so a test can hand them to
``Card.transmit``, to a client under test, or to a parser::

    from hypothesis import given
    from vsc import Card
    from vsc.fuzz.strategies import apdus

    @given(apdus())
    def test_every_command_gets_a_status_word(apdu):
        assert len(my_card().transmit(apdu)) >= 2

What there is:

* :func:`apdus` — well-formed command APDUs of every ISO 7816-3 case (1, 2S,
  3S, 4S, 2E, 3E, 4E; choose with ``cases``), with CLA, INS, P1, P2 and
  data from your strategies or ours; :func:`classes` — CLA bytes for logical
  channels 0-19, chaining, secure messaging; :func:`raw_apdus` — anything
  from well-formed to garbage (for "any input gets a status word");
* :func:`ber_tlvs` — BER-TLV: 1- to 3-byte tags, short and long lengths
  (optionally not minimal), nested constructed templates;
* :func:`chained` — one command cut into a chain of short APDUs (CLA bit
  ``0x10`` on all but the last), at boundaries Hypothesis chooses;
* :func:`piv_commands` — PIV card-edge commands with well-formed templates
  and drawn content (SELECT, VERIFY, CHANGE/RESET RETRY, GET/PUT DATA,
  GENERAL AUTHENTICATE, GENERATE, IMPORT, the Yubico extensions);
* :func:`fuzz_inputs` — whole inputs for :class:`vsc.fuzz.Harness`: APDUs,
  chains, power events and the management-key macro.

Sizes are kept small by default (``max_data``) so examples run fast; raise
them where lengths matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from hypothesis import strategies as st

from ..apdu import CommandApdu, encode_cla
from ..sw import ApduError
from ..tlv import encode_length, tag_bytes
from .inputs import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    MAX_STEPS,
    FuzzInput,
    Step,
    StepKind,
    authenticate,
)

__all__ = [
    "Case",
    "apdus",
    "ber_tlvs",
    "chained",
    "classes",
    "commands",
    "fuzz_inputs",
    "piv_commands",
    "raw_apdus",
    "tags",
]

Bytes = st.SearchStrategy[bytes]
Ints = st.SearchStrategy[int]


class Case(Enum):
    """The command cases of ISO 7816-3 §12.1.3, named as there."""

    CASE_1 = "1"  # header only
    CASE_2S = "2S"  # Le
    CASE_3S = "3S"  # Lc data
    CASE_4S = "4S"  # Lc data Le
    CASE_2E = "2E"  # 00 Le1 Le2
    CASE_3E = "3E"  # 00 Lc1 Lc2 data
    CASE_4E = "4E"  # 00 Lc1 Lc2 data Le1 Le2

    @property
    def has_data(self) -> bool:
        return self.value[0] in "34"

    @property
    def has_le(self) -> bool:
        return self.value[0] in "24"

    @property
    def extended(self) -> bool:
        return self.value.endswith("E")


_BYTE = st.integers(0, 255)


def classes(
    channels: Sequence[int] = tuple(range(20)),
    *,
    chaining: bool | None = False,
    proprietary: bool | None = False,
) -> Ints:
    """Valid CLA bytes for ``channels`` (0-3 first interindustry, 4-19 further).

    ``chaining`` / ``proprietary``: True always, False never, None either.
    """

    @st.composite
    def draw(draw: st.DrawFn) -> int:
        channel = draw(st.sampled_from(list(channels)))
        chain = draw(st.booleans()) if chaining is None else chaining
        own = channel < 4 and (draw(st.booleans()) if proprietary is None else proprietary)
        return encode_cla(channel, chaining=chain, proprietary=own)

    return draw()


@st.composite
def _apdu(
    draw: st.DrawFn,
    cases: Sequence[Case],
    cla: Ints,
    ins: Ints,
    p1: Ints,
    p2: Ints,
    data: Bytes | None,
    max_data: int,
) -> bytes:
    case = draw(st.sampled_from(list(cases)))
    header = bytes((draw(cla), draw(ins), draw(p1), draw(p2)))
    limit = min(max_data, 0xFFFF if case.extended else 0xFF)
    body = b""
    if case.has_data:
        payload = draw(data if data is not None else st.binary(min_size=1, max_size=limit))
        payload = payload[:limit] or b"\x00"
        if case.extended:
            body = b"\x00" + len(payload).to_bytes(2, "big") + payload
        else:
            body = bytes((len(payload),)) + payload
    if case.has_le:
        if case.extended:
            le = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
            body += le if case.has_data else b"\x00" + le
        else:
            body += bytes((draw(_BYTE),))
    return header + body


def apdus(
    cases: Iterable[Case] | Case | None = None,
    *,
    cla: Ints | None = None,
    ins: Ints | None = None,
    p1: Ints | None = None,
    p2: Ints | None = None,
    data: Bytes | None = None,
    max_data: int = 300,
) -> Bytes:
    """Well-formed command APDUs (they parse) of the given cases (default: all seven).

    ``cla`` defaults to :func:`classes` without chaining; ``data`` (cases 3
    and 4) to up to ``max_data`` bytes, cut to what the case can carry.
    """
    chosen = list(Case) if cases is None else [cases] if isinstance(cases, Case) else list(cases)
    return _apdu(
        chosen,
        cla if cla is not None else classes(),
        ins if ins is not None else _BYTE,
        p1 if p1 is not None else _BYTE,
        p2 if p2 is not None else _BYTE,
        data,
        max_data,
    )


def commands(
    cases: Iterable[Case] | Case | None = None, *, max_data: int = 300
) -> st.SearchStrategy[CommandApdu]:
    """Like :func:`apdus`, parsed: :class:`vsc.CommandApdu` values."""
    return apdus(cases, max_data=max_data).map(CommandApdu.parse)


@st.composite
def _damaged(draw: st.DrawFn, apdu: bytes) -> bytes:
    data = bytearray(apdu)
    how = draw(st.sampled_from(("truncate", "extend", "flip", "length")))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    if how == "extend":
        return bytes(data) + draw(st.binary(min_size=1, max_size=4))
    index = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        data[index] ^= 1 << draw(st.integers(0, 7))
    elif len(data) > 4:
        data[4] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF)))
    return bytes(data)


def raw_apdus(max_size: int = 300) -> Bytes:
    """Command bytes from well-formed to garbage: valid APDUs, damaged ones, random bytes."""
    valid = apdus(cla=_BYTE, max_data=max_size)
    return st.one_of(valid, valid.flatmap(_damaged), st.binary(max_size=max_size))


# -- BER-TLV -------------------------------------------------------------------------------------


@st.composite
def _tag(draw: st.DrawFn, constructed: bool) -> int:
    """A valid BER tag of 1 to 3 bytes (class, constructed bit, number)."""
    first = draw(st.sampled_from((0x00, 0x40, 0x80, 0xC0))) | (0x20 if constructed else 0)
    size = draw(st.integers(1, 3))
    if size == 1:
        return first | draw(st.integers(0, 30))
    last = draw(st.integers(0x1F if size == 2 else 0, 0x7F))
    if size == 2:
        return (first | 0x1F) << 8 | last
    return ((first | 0x1F) << 16) | (draw(st.integers(0x81, 0xFF)) << 8) | last


def tags(constructed: bool = False) -> Ints:
    """BER tags as vsc writes them: integers of their encoded bytes (``0x5FC109``)."""
    return _tag(constructed)


@st.composite
def _length(draw: st.DrawFn, n: int, minimal: bool) -> bytes:
    if minimal or n > 0xFFFFFF:
        return encode_length(n)
    extra = draw(st.integers(0, 2))
    if extra == 0:
        return encode_length(n)
    width = max(1, (n.bit_length() + 7) // 8) + extra - 1  # a long form, maybe padded
    return bytes((0x80 | width,)) + n.to_bytes(width, "big")


@st.composite
def _tlv(draw: st.DrawFn, depth: int, max_value: int, minimal: bool) -> bytes:
    constructed = depth > 0 and draw(st.booleans())
    tag = draw(_tag(constructed))
    if constructed:
        children = draw(st.lists(_tlv(depth - 1, max_value, minimal), max_size=3))
        value = b"".join(children)
    else:
        value = draw(st.binary(max_size=max_value))
    return tag_bytes(tag) + draw(_length(len(value), minimal)) + value


def ber_tlvs(
    *, max_items: int = 4, max_depth: int = 2, max_value: int = 300, minimal: bool = True
) -> Bytes:
    """A run of BER-TLV items, some constructed (nested to ``max_depth``).

    With ``minimal=False`` some lengths take a longer form than needed
    (``81 05``), which BER allows and DER does not.
    """
    return st.lists(_tlv(max_depth, max_value, minimal), max_size=max_items).map(b"".join)


# -- chaining ------------------------------------------------------------------------------------


@st.composite
def _chain(draw: st.DrawFn, command: bytes, max_chunk: int) -> list[bytes]:
    cmd = CommandApdu.parse(command)
    data, pieces = cmd.data, []
    while True:
        size = draw(st.integers(1, max_chunk))
        pieces.append(data[:size])
        data = data[size:]
        if not data:
            break
    apdus = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        cla = cmd.cla & 0xEF if last else cmd.cla | 0x10
        le = cmd.le if last and cmd.le is not None and cmd.le <= 256 else None
        apdus.append(CommandApdu(cla, cmd.ins, cmd.p1, cmd.p2, piece, le).encode())
    return apdus


def chained(
    command: Bytes | None = None, *, max_chunk: int = 255
) -> st.SearchStrategy[list[bytes]]:
    """A command with data cut into a chain of short APDUs, the way clients chain.

    ``command`` defaults to case 3/4 :func:`apdus` with up to 1000 bytes of
    data. Chunks hold 1 to ``max_chunk`` bytes; all but the last carry CLA
    bit ``0x10``; the last keeps the command's Le if it fits a short APDU.
    """
    if command is None:
        command = apdus((Case.CASE_3S, Case.CASE_4S, Case.CASE_3E, Case.CASE_4E), max_data=1000)
    return command.filter(_has_data).flatmap(lambda c: _chain(c, max_chunk))


def _has_data(command: bytes) -> bool:
    try:
        return bool(CommandApdu.parse(command).data)
    except ApduError:
        return False  # not a command (raw_apdus draws garbage too): nothing to chain


# -- PIV -----------------------------------------------------------------------------------------

PIV_AID = bytes.fromhex("A000000308000010000100")
#: GENERATE and IMPORT algorithms (P1/tag 80): RSA 1024/2048/3072/4096, P-256, P-384, 25519.
PIV_ALGORITHMS = (0x06, 0x07, 0x05, 0x16, 0x11, 0x14, 0xE0, 0xE1)
PIV_KEY_SLOTS = (0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96), 0xF9)
PIV_OBJECTS = (*range(0x5FC101, 0x5FC124), 0x5FFF00, 0x5FFF01, 0x7E, 0x7F61)
_PIV_REFERENCES = (0x80, 0x81, 0x00, 0x96)
_MGMT_ALGORITHMS = (0x03, 0x08, 0x0A, 0x0C)


def _tlv_bytes(tag: int, value: bytes) -> bytes:
    return tag_bytes(tag) + encode_length(len(value)) + value


def _apdu_bytes(ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    return CommandApdu(0, ins, p1, p2, data, le).encode()


_PIN_BLOCKS = st.one_of(
    st.just(DEFAULT_PIN),
    st.binary(min_size=6, max_size=8).map(lambda b: (b + b"\xff\xff")[:8]),
    st.binary(max_size=12),
)


@st.composite
def _piv_command(draw: st.DrawFn, max_data: int, rsa_generate: bool) -> bytes:
    what = draw(
        st.sampled_from(
            ("select", "verify", "change", "reset-retry", "get-data", "put-data", "ga",
             "generate", "import", "metadata", "attest", "move", "set-mgmt", "simple")
        )
    )  # fmt: skip
    slot = draw(st.sampled_from(PIV_KEY_SLOTS))
    if what == "select":
        aid = PIV_AID[: draw(st.sampled_from((5, 9, 11)))]
        return _apdu_bytes(0xA4, 0x04, 0x00, aid, draw(st.sampled_from((None, 256))))
    if what == "verify":
        pin = draw(st.one_of(st.just(b""), _PIN_BLOCKS))
        return _apdu_bytes(0x20, draw(st.sampled_from((0x00, 0xFF))), 0x80, pin)
    if what == "change":
        ref = draw(st.sampled_from(_PIV_REFERENCES))
        return _apdu_bytes(0x24, 0x00, ref, draw(_PIN_BLOCKS) + draw(_PIN_BLOCKS))
    if what == "reset-retry":
        return _apdu_bytes(0x2C, 0x00, 0x80, draw(_PIN_BLOCKS) + draw(_PIN_BLOCKS))
    tag = draw(st.sampled_from(PIV_OBJECTS))
    name = _tlv_bytes(0x5C, tag_bytes(tag))
    if what == "get-data":
        return _apdu_bytes(0xCB, 0x3F, 0xFF, name, 256)
    if what == "put-data":
        value = draw(st.binary(max_size=max_data))
        return _apdu_bytes(0xDB, 0x3F, 0xFF, name + _tlv_bytes(0x53, value))
    if what == "ga":
        item = draw(st.sampled_from((0x80, 0x81, 0x82, 0x85)))
        items = _tlv_bytes(0x82, b"") + _tlv_bytes(item, draw(st.binary(max_size=max_data)))
        alg = draw(st.sampled_from(PIV_ALGORITHMS + _MGMT_ALGORITHMS))
        return _apdu_bytes(0x87, alg, draw(st.sampled_from((slot, 0x9B))), _tlv_bytes(0x7C, items))
    if what == "generate":
        algorithms = PIV_ALGORITHMS if rsa_generate else (0x11, 0x14, 0xE0, 0xE1)
        template = _tlv_bytes(0x80, bytes((draw(st.sampled_from(algorithms)),)))
        if draw(st.booleans()):
            template += _tlv_bytes(0xAA, bytes((draw(st.integers(0, 4)),)))
        return _apdu_bytes(0x47, 0x00, slot, _tlv_bytes(0xAC, template))
    if what == "import":
        alg = draw(st.sampled_from(PIV_ALGORITHMS))
        fields = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5, unique=True))
        data = b"".join(_tlv_bytes(f, draw(st.binary(max_size=64))) for f in fields)
        return _apdu_bytes(0xFE, alg, slot, data)
    if what == "metadata":
        return _apdu_bytes(0xF7, 0x00, draw(st.sampled_from((*PIV_KEY_SLOTS, 0x80, 0x81, 0x9B))))
    if what == "attest":
        return _apdu_bytes(0xF9, slot, 0x00)
    if what == "move":
        return _apdu_bytes(0xF6, draw(st.sampled_from((*PIV_KEY_SLOTS, 0xFF))), slot)
    if what == "set-mgmt":
        alg = draw(st.sampled_from(_MGMT_ALGORITHMS))
        key = draw(st.one_of(st.just(DEFAULT_MANAGEMENT_KEY), st.binary(max_size=32)))
        return _apdu_bytes(
            0xFF, 0xFF, draw(st.sampled_from((0xFF, 0xFE))), bytes((alg,)) + _tlv_bytes(0x9B, key)
        )
    ins = draw(st.sampled_from((0xFD, 0xF8, 0xFB, 0xFA, 0xF1)))
    return _apdu_bytes(ins, draw(st.sampled_from((0, 1, 2, 3))), 0)


def piv_commands(*, max_data: int = 300, rsa_generate: bool = False) -> Bytes:
    """PIV commands with well-formed templates and drawn content, one APDU each
    (extended when long: chain them with :func:`chained`).

    RSA key generation takes up to a second on a card in software; it is
    left out unless ``rsa_generate``.
    """
    return _piv_command(max_data, rsa_generate)


# -- whole inputs --------------------------------------------------------------------------------


def _apdu_steps(commands: Bytes) -> st.SearchStrategy[list[Step]]:
    one = commands.map(lambda c: [Step(StepKind.APDU, c)])
    chain = chained(commands).map(lambda chunks: [Step(StepKind.APDU, c) for c in chunks])
    return st.one_of(one, one, chain)


def fuzz_inputs(
    commands: Bytes | None = None, *, max_steps: int = 12
) -> st.SearchStrategy[FuzzInput]:
    """Inputs for :meth:`vsc.fuzz.Harness.run`: commands (default: PIV commands and
    raw APDUs), some chained, with power events and the management-key macro."""
    if commands is None:
        commands = st.one_of(piv_commands(), raw_apdus(max_size=64))
    other = st.sampled_from(
        (
            [Step(StepKind.RESET)],
            [Step(StepKind.POWER_OFF), Step(StepKind.POWER_ON)],
            [authenticate()],
        )
    )
    groups = st.lists(st.one_of(_apdu_steps(commands), other), max_size=max_steps)
    return groups.map(lambda g: tuple(step for group in g for step in group)[:MAX_STEPS])
