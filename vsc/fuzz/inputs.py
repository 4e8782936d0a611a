"""Fuzz inputs: what one input is, and its text and binary forms.

Theory of operation
-------------------
A fuzz input is a short sequence of :class:`Step` s played against a fresh
card: raw command APDUs, power events, and one macro, ``authenticate``, that
performs a management-key mutual authentication with a known key. The macro
exists because a recorded authentication cannot be replayed (the card's
witness is random), and without it a fuzzer would never get past the ``6982``
of PUT DATA, GENERATE, IMPORT and the other privileged commands.

Inputs have two forms:

* **text** (seed files, crash files, ``--replay``): one step per line, a hex
  APDU or a keyword (``reset``, ``power-off``, ``power-on``,
  ``authenticate [CLA ALG KEY...]``), ``#`` comments, and an optional ``=XXXX``
  at the end of a line: the status word a factory-fresh card answers (seed
  files are checked against it; the fuzzer ignores it).
* **binary** (atheris/libFuzzer): ``kind len_hi len_lo payload`` per step.
  :func:`decode_input` accepts *any* bytes, so raw libFuzzer mutations are
  inputs too.

Seed files and recorded transcripts are read by :mod:`vsc.fuzz.corpus`; the
generated seeds are in :mod:`vsc.fuzz.seeds`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from ..apdu import CommandApdu

#: Inputs longer than this are cut: it bounds the time one input can take.
MAX_STEPS = 64

PIV_AID = bytes.fromhex("A000000308000010000100")
ECHO_AID = bytes.fromhex("F07673630001")
DEFAULT_PIN = b"123456\xff\xff"
DEFAULT_PUK = b"12345678"
DEFAULT_MANAGEMENT_KEY = bytes(range(1, 9)) * 3
#: Management-key algorithm (GA P1) → key length.
MANAGEMENT_KEY_LENGTHS = {0x03: 24, 0x08: 16, 0x0A: 24, 0x0C: 32}

CORPUS_SUFFIX = ".fuzz"


class StepKind(IntEnum):
    """What a step does; the value is its byte in the binary form."""

    APDU = 0
    RESET = 1
    POWER_OFF = 2
    POWER_ON = 3
    AUTHENTICATE = 4


_KEYWORDS = {
    StepKind.RESET: "reset",
    StepKind.POWER_OFF: "power-off",
    StepKind.POWER_ON: "power-on",
    StepKind.AUTHENTICATE: "authenticate",
}
#: Text-form keyword -> step kind.
KEYWORD_KINDS = {word: kind for kind, word in _KEYWORDS.items()}
_CARRIES_DATA = frozenset({StepKind.APDU, StepKind.AUTHENTICATE})


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an input.

    For APDU steps ``data`` is the command; for AUTHENTICATE it is
    ``CLA ALG KEY...`` (all optional: CLA 00, 3DES, the factory key).
    ``expect`` is the documented status word of a seed, never used to judge.
    """

    kind: StepKind
    data: bytes = b""
    expect: int | None = None

    def __post_init__(self) -> None:
        if self.data and self.kind not in _CARRIES_DATA:
            raise ValueError(f"a {self.kind.name} step carries no data")


FuzzInput = tuple[Step, ...]


def apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> Step:
    """An APDU step built from fields (short form unless the sizes need extended)."""
    return Step(StepKind.APDU, CommandApdu(cla, ins, p1, p2, data, le).encode())


def raw(hexstr: str, expect: int | None = None) -> Step:
    return Step(StepKind.APDU, bytes.fromhex(hexstr), expect)


def authenticate(cla: int = 0, alg: int = 0x03, key: bytes = DEFAULT_MANAGEMENT_KEY) -> Step:
    return Step(StepKind.AUTHENTICATE, bytes((cla, alg)) + key)


def split_authenticate(data: bytes) -> tuple[int, int, bytes]:
    """The macro's (CLA, algorithm, key), defaults filled in; the key is cut or
    padded to the algorithm's length so the macro always runs."""
    cla = data[0] if data else 0
    alg = data[1] if len(data) > 1 else 0x03
    key = data[2:] if len(data) > 2 else DEFAULT_MANAGEMENT_KEY
    size = MANAGEMENT_KEY_LENGTHS.get(alg, 24)
    return cla, alg, (key + DEFAULT_MANAGEMENT_KEY * 2)[:size]


# -- text form ----------------------------------------------------------------------------

_EXPECT = re.compile(r"\s=([0-9A-Fa-f]{4})\s*$")


def format_input(steps: Iterable[Step], comment: str = "") -> str:
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for step in steps:
        if step.kind is StepKind.APDU:
            text = step.data.hex(" ").upper() if step.data else "<empty>"
        else:
            text = " ".join((_KEYWORDS[step.kind], step.data.hex().upper())).rstrip()
        if step.expect is not None:
            text = f"{text:<40} ={step.expect:04X}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def parse_input(text: str) -> FuzzInput:
    """Parse the text form; ``ValueError`` names the bad line."""
    steps: list[Step] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].rstrip()
        expect = None
        if m := _EXPECT.search(" " + line):
            expect = int(m.group(1), 16)
            line = line[: m.start()].rstrip()
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        try:
            if word.lower() in KEYWORD_KINDS:
                kind = KEYWORD_KINDS[word.lower()]
                steps.append(Step(kind, bytes.fromhex(rest), expect))
            elif line.strip() == "<empty>":
                steps.append(Step(StepKind.APDU, b"", expect))
            else:
                steps.append(Step(StepKind.APDU, bytes.fromhex(line), expect))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
    return tuple(steps)


# -- binary form (atheris) ------------------------------------------------------------------


def encode_input(steps: Iterable[Step]) -> bytes:
    out = bytearray()
    for step in steps:
        out.append(step.kind)
        if step.kind in _CARRIES_DATA:
            out += len(step.data).to_bytes(2, "big") + step.data
    return bytes(out)


def decode_input(data: bytes) -> FuzzInput:
    """Any bytes → an input (kinds taken modulo, lengths cut at the end)."""
    steps: list[Step] = []
    pos, n = 0, len(data)
    while pos < n and len(steps) < MAX_STEPS:
        kind = StepKind(data[pos] % len(StepKind))
        pos += 1
        payload = b""
        if kind in _CARRIES_DATA:
            length = int.from_bytes(data[pos : pos + 2], "big")
            payload = data[pos + 2 : pos + 2 + length]
            pos += 2 + length
        steps.append(Step(kind, payload))
    return tuple(steps)
