"""Fuzz inputs: what one input is, its text and binary forms, and the seed corpus.

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

:func:`load_corpus` reads seed files and, leniently, recorded client
transcripts (``> 00 A4 ...`` lines as the APDU trace writes them, or JSON
with ``command``/``apdu`` fields); masked secrets (``<8 secret bytes>``) are
replaced by the factory PIN/PUK so VERIFY-like commands stay meaningful.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from .apdu import CommandApdu
from .tlv import encode_tlv

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
_BY_KEYWORD = {word: kind for kind, word in _KEYWORDS.items()}
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
            if word.lower() in _BY_KEYWORD:
                kind = _BY_KEYWORD[word.lower()]
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


# -- corpus files and transcripts -------------------------------------------------------------

_COMMAND_LINE = re.compile(
    r"^\s*(?:\[\d+\]\s*)?(?:>>?|->|=>|C:|command:?|cmd:?|send:?)\s*"
    r"(?P<hex>[0-9A-Fa-f][0-9A-Fa-f <>a-z]*)$",
    re.IGNORECASE,
)
_SECRET = re.compile(r"<(\d+) secret bytes>")
_POWER_WORDS = (
    ("power-off", StepKind.POWER_OFF),
    ("power off", StepKind.POWER_OFF),
    ("power-on", StepKind.POWER_ON),
    ("power on", StepKind.POWER_ON),
    ("reset", StepKind.RESET),
)
_JSON_COMMAND_KEYS = ("command", "apdu", "capdu", "cmd", "c", "request")


def _unmask(header: bytes, length: int) -> bytes:
    """Stand-in for data the trace masked: the factory secrets where they fit."""
    ins = header[1] if len(header) > 1 else 0
    if ins == 0x20 and length == 9:  # Lc + PIN
        return b"\x08" + DEFAULT_PIN
    if ins in (0x24, 0x2C) and length == 17:
        first = DEFAULT_PUK if header[3:4] == b"\x81" or ins == 0x2C else DEFAULT_PIN
        return b"\x10" + first + DEFAULT_PIN
    return bytes((min(length - 1, 255),)) + bytes(length - 1) if length else b""


def _command_from_trace(text: str) -> bytes | None:
    secret = _SECRET.search(text)
    hexpart = _SECRET.sub(" ", text)
    try:
        data = bytes.fromhex(hexpart.replace(" ", ""))
    except ValueError:
        return None
    if secret is not None:
        data += _unmask(data, int(secret.group(1)))
    return data


def parse_transcript(text: str) -> FuzzInput:
    """Commands and power events from a recorded transcript (format-lenient)."""
    steps: list[Step] = []
    for line in text.splitlines():
        if m := _COMMAND_LINE.match(line):
            data = _command_from_trace(m.group("hex"))
            if data is not None and len(data) >= 4:
                steps.append(Step(StepKind.APDU, data))
            continue
        lowered = line.strip().lower().lstrip("#!*- ")
        for word, kind in _POWER_WORDS:
            if lowered.startswith(word) and len(lowered) < 40:
                steps.append(Step(kind))
                break
    return tuple(steps)


def _json_commands(node: Any) -> Iterator[Step]:
    if isinstance(node, dict):
        for key in _JSON_COMMAND_KEYS:
            value = node.get(key)
            if isinstance(value, str):
                data = _command_from_trace(value)
                if data is not None and len(data) >= 4:
                    yield Step(StepKind.APDU, data)
                return
        event = node.get("event") or node.get("type")
        if isinstance(event, str) and event.lower().replace("_", "-") in _BY_KEYWORD:
            yield Step(_BY_KEYWORD[event.lower().replace("_", "-")])
            return
        for value in node.values():
            yield from _json_commands(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):  # "> 00 A4 ...", "< 90 00", "power on" (vsc-transcript/1)
                yield from parse_transcript(item)
            else:
                yield from _json_commands(item)


def _chunks(steps: FuzzInput) -> Iterator[FuzzInput]:
    """Long transcripts become several inputs of at most MAX_STEPS steps."""
    for start in range(0, len(steps), MAX_STEPS):
        yield steps[start : start + MAX_STEPS]


def load_file(path: Path) -> list[FuzzInput]:
    """The inputs in one corpus file: our text form, a transcript, or JSON."""
    text = path.read_text(errors="replace")
    if path.suffix == CORPUS_SUFFIX:
        return list(_chunks(parse_input(text)))
    if path.suffix == ".json":
        try:
            steps = tuple(_json_commands(json.loads(text)))
        except ValueError:
            steps = ()
    else:
        steps = parse_transcript(text)
    return [chunk for chunk in _chunks(steps) if chunk]


def load_corpus(paths: Iterable[Path]) -> list[FuzzInput]:
    """Every input in the given files and directories (recursively, sorted)."""
    inputs: list[FuzzInput] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (CORPUS_SUFFIX, ".json", ".txt", ".log", ".trace", ".apdu"):
                inputs.extend(load_file(file))
    return inputs


# -- the seed corpus ------------------------------------------------------------------------

_SELECT_PIV = raw("00 A4 04 00 0B A0 00 00 03 08 00 00 10 00 01 00", 0x9000)
_VERIFY = Step(StepKind.APDU, bytes.fromhex("0020008008") + DEFAULT_PIN, 0x9000)
_AUTH = Step(authenticate().kind, authenticate().data, 0x9000)


def _ok(step: Step, expect: int = 0x9000) -> Step:
    return Step(step.kind, step.data, expect)


def _chained(ins: int, p1: int, p2: int, data: bytes, chunk: int = 255) -> list[Step]:
    """Command chaining the way ykman/libykpiv/OpenSC do it: 255-byte chunks."""
    steps = []
    while len(data) > chunk:
        steps.append(_ok(apdu(0x10, ins, p1, p2, data[:chunk])))
        data = data[chunk:]
    steps.append(apdu(0x00, ins, p1, p2, data))
    return steps


def _put(tag: int, value: bytes) -> bytes:
    return encode_tlv(0x5C, tag.to_bytes(3, "big")) + encode_tlv(0x53, value)


def _get(tag: int) -> bytes:
    return encode_tlv(0x5C, tag.to_bytes((tag.bit_length() + 7) // 8, "big"))


def _ga(payload_tag: int, payload: bytes) -> bytes:
    return encode_tlv(0x7C, encode_tlv(0x82, b"") + encode_tlv(payload_tag, payload))


def _scalar(label: bytes) -> int:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(label)
    return int.from_bytes(digest.finalize(), "big") % (2**255)


def _rsa_import(key: rsa.RSAPrivateKey) -> bytes:
    n = key.private_numbers()
    size = key.key_size // 16
    parts = (n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
    return b"".join(encode_tlv(tag, v.to_bytes(size, "big")) for tag, v in enumerate(parts, 1))


def _seed_chuid() -> bytes:
    fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
    guid = bytes(range(16))
    return (
        encode_tlv(0x30, fascn)
        + encode_tlv(0x34, guid)
        + encode_tlv(0x35, b"20991231")
        + encode_tlv(0x3E, b"")
        + encode_tlv(0xFE, b"")
    )


def seed_inputs() -> dict[str, FuzzInput]:
    """Realistic client sequences against a factory-fresh card, with their SWs.

    RSA keys are random (write the seeds once with ``--write-seeds``; the
    files are the corpus), EC/25519 keys are derived from fixed labels.
    """
    p256 = ec.derive_private_key(_scalar(b"vsc fuzz p256"), ec.SECP256R1())
    peer = ec.derive_private_key(_scalar(b"vsc fuzz peer"), ec.SECP256R1()).public_key()
    peer_point = peer.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ed_seed = _scalar(b"vsc fuzz ed25519").to_bytes(32, "big")
    x_seed = _scalar(b"vsc fuzz x25519").to_bytes(32, "big")
    x_peer = (
        x25519.X25519PrivateKey.from_private_bytes(_scalar(b"vsc fuzz x peer").to_bytes(32, "big"))
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    ed25519.Ed25519PrivateKey.from_private_bytes(ed_seed)  # a valid seed, checked early
    rsa2048 = rsa.generate_private_key(65537, 2048)
    rsa1024 = rsa.generate_private_key(65537, 1024)
    p256_scalar = p256.private_numbers().private_value.to_bytes(32, "big")
    hash32 = bytes(range(32))
    cert = encode_tlv(0x70, bytes(range(256)) * 2 + b"\x30\x82") + bytes.fromhex("710100FE00")
    new_pin = b"654321\xff\xff"
    s: dict[str, list[Step]] = {}

    s["opensc-probe"] = [
        raw("00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00", 0x9000),
        raw("00 CB 3F FF 03 5C 01 7E 08", 0x610C),
        raw("00 CB 3F FF 03 5C 01 7E 14", 0x9000),
        raw("00 FD 00 00 00", 0x9000),
        raw("00 CB 3F FF 05 5C 03 5F C1 02 08", 0x6A82),
        raw("00 20 00 80", 0x63C3),
        raw("00 87 00 9B 04 7C 02 81 00 00", 0x9000),
        raw("00 CB 3F FF 05 5C 03 5F C1 05 08", 0x6A82),
        raw("00 CB 3F FF 05 5C 03 5F FF 01 08", 0x6100),
        raw("00 C0 00 00 00"),
        raw("00 C0 00 00 00"),
        raw("00 C0 00 00 00"),
    ]
    s["ykman-info"] = [
        raw("00 A4 04 00 05 A0 00 00 03 08", 0x9000),
        raw("00 FD 00 00 00", 0x9000),
        raw("00 F7 00 9B 00", 0x9000),
        raw("00 CB 3F FF 05 5C 03 5F FF 00", 0x6A82),
        raw("00 F7 00 80 00", 0x9000),
        raw("00 F7 00 81 00", 0x9000),
        raw("00 F7 00 96 00", 0x6A88),
        raw("00 F8 00 00 00", 0x9000),
        raw("00 CB 3F FF 05 5C 03 5F C1 07", 0x6A82),
        raw("00 F7 00 9A 00", 0x6A88),
        raw("00 F7 00 F9 00", 0x9000),
    ]
    s["verify-and-logout"] = [
        _SELECT_PIV,
        raw("00 20 00 80 00", 0x63C3),
        _VERIFY,
        raw("00 20 00 80", 0x9000),
        raw("00 20 FF 80 00", 0x9000),
        raw("00 20 00 80", 0x63C3),
        raw("00 20 00 80 08 31 31 31 31 31 31 FF FF", 0x63C2),
        raw("00 20 00 80 08 FF FF FF FF FF FF FF FF", 0x63C1),
        _VERIFY,
        raw("00 CB 3F FF 05 5C 03 5F C1 09", 0x6A82),
        raw("00 F7 00 80", 0x9000),
    ]
    s["admin-put-get-delete"] = [
        _SELECT_PIV,
        raw("00 DB 3F FF 0A 5C 03 5F FF 10 53 03 01 02 03", 0x6982),
        _AUTH,
        _ok(apdu(0, 0xDB, 0x3F, 0xFF, _put(0x5FC102, _seed_chuid()))),
        _ok(apdu(0, 0xCB, 0x3F, 0xFF, _get(0x5FC102))),
        _ok(apdu(0, 0xDB, 0x3F, 0xFF, _put(0x5FFF00, bytes.fromhex("8003810101")))),
        raw("00 DB 3F FF 07 5C 03 5F C1 02 53 00", 0x9000),
        raw("00 CB 3F FF 05 5C 03 5F C1 02", 0x6A82),
        raw("00 DB 3F FF 05 7E 03 4F 01 00", 0x6A81),
        raw("00 DB 3F FF 09 7F 61 06 01 01 00 02 01 00", 0x9000),
        raw("00 CB 3F FF 04 5C 02 7F 61", 0x9000),
    ]
    s["certificate-chained-put-and-read"] = [
        _SELECT_PIV,
        _AUTH,
        *_chained(0xDB, 0x3F, 0xFF, _put(0x5FC105, cert))[:-1],
        _ok(_chained(0xDB, 0x3F, 0xFF, _put(0x5FC105, cert))[-1]),
        raw("00 CB 3F FF 05 5C 03 5F C1 05 08", 0x6100),
        raw("00 CB 3F FF 05 5C 03 5F C1 05 00", 0x6100),
        raw("00 C0 00 00 00", 0x610F),
        raw("00 C0 00 00 08", 0x6107),
        raw("00 C0 00 00 07", 0x9000),
        raw("00 C0 00 00 00", 0x6985),
    ]
    s["generate-p256-sign-ecdh"] = [
        _SELECT_PIV,
        raw("00 47 00 9A 05 AC 03 80 01 11", 0x6982),
        _AUTH,
        raw("00 47 00 9A 05 AC 03 80 01 11", 0x9000),
        raw("00 F7 00 9A 00", 0x9000),
        _ok(apdu(0, 0x87, 0x11, 0x9A, _ga(0x81, hash32)), 0x6982),
        _VERIFY,
        _ok(apdu(0, 0x87, 0x11, 0x9A, _ga(0x81, hash32))),
        _ok(apdu(0, 0x87, 0x11, 0x9A, _ga(0x85, peer_point))),
        raw("00 F9 9A 00 00"),  # 61xx: the certificate's size varies
        raw("00 C0 00 00 00", 0x9000),
    ]
    s["pin-always-9c"] = [
        _SELECT_PIV,
        _AUTH,
        raw("00 47 00 9C 08 AC 06 80 01 11 AB 01 01", 0x9000),
        _VERIFY,
        _ok(apdu(0, 0x87, 0x11, 0x9C, _ga(0x81, hash32))),
        _ok(apdu(0, 0x87, 0x11, 0x9C, _ga(0x81, hash32)), 0x6982),
        _VERIFY,
        raw("00 FD 00 00 00", 0x9000),
        _ok(apdu(0, 0x87, 0x11, 0x9C, _ga(0x81, hash32)), 0x6982),
        _VERIFY,
        _VERIFY,
        _ok(apdu(0, 0x87, 0x11, 0x9C, _ga(0x81, hash32))),
    ]
    s["import-p256-move-delete"] = [
        _SELECT_PIV,
        _AUTH,
        _ok(
            apdu(0, 0xFE, 0x11, 0x9A, encode_tlv(0x06, p256_scalar) + bytes.fromhex("AA0101AB0101"))
        ),
        raw("00 F7 00 9A 00", 0x9000),
        _ok(apdu(0, 0x87, 0x11, 0x9A, _ga(0x81, hash32))),
        raw("00 F6 82 9A", 0x9000),
        raw("00 F7 00 9A 00", 0x6A88),
        _ok(apdu(0, 0x87, 0x11, 0x82, _ga(0x81, hash32))),
        raw("00 F9 82 00 00", 0x6A80),
        raw("00 F6 FF 82", 0x9000),
        raw("00 F6 FF 82", 0x6A88),
    ]
    s["import-25519"] = [
        _SELECT_PIV,
        _AUTH,
        _ok(apdu(0, 0xFE, 0xE0, 0x9C, encode_tlv(0x07, ed_seed))),
        _ok(apdu(0, 0xFE, 0xE1, 0x9D, encode_tlv(0x08, x_seed) + bytes.fromhex("AA0102"))),
        _VERIFY,
        _ok(apdu(0, 0x87, 0xE0, 0x9C, _ga(0x81, b"a message to sign, not a hash"))),
        _ok(apdu(0, 0x87, 0xE1, 0x9D, _ga(0x85, x_peer))),
        _ok(apdu(0, 0x87, 0xE1, 0x9D, _ga(0x81, hash32)), 0x6A80),
    ]
    rsa_steps = _chained(0xFE, 0x07, 0x9D, _rsa_import(rsa2048))
    ga_steps = _chained(0x87, 0x07, 0x9D, _ga(0x81, b"\x00\x01" + b"\xff" * 222 + bytes(32)))
    s["import-rsa2048-chained-sign"] = [
        _SELECT_PIV,
        _AUTH,
        *rsa_steps[:-1],
        _ok(rsa_steps[-1]),
        _VERIFY,
        *ga_steps[:-1],
        _ok(ga_steps[-1], 0x6108),
        raw("00 C0 00 00 08", 0x9000),
        raw("00 F7 00 9D 00", 0x6117),
        raw("00 C0 00 00 00", 0x9000),
    ]
    s["generate-rsa1024-sign"] = [
        _SELECT_PIV,
        _AUTH,
        raw("00 47 00 9E 05 AC 03 80 01 06", 0x9000),
        _ok(apdu(0, 0x87, 0x06, 0x9E, _ga(0x81, b"\x00\x01" + b"\xff" * 94 + bytes(32)))),
        _ok(apdu(0, 0xFE, 0x06, 0x95, _rsa_import(rsa1024)), 0x9000),
        _ok(apdu(0, 0x87, 0x06, 0x95, _ga(0x81, bytes(127) + b"\x02")), 0x6982),
    ]
    s["change-pin-puk-unblock"] = [
        _SELECT_PIV,
        _ok(apdu(0, 0x24, 0, 0x80, DEFAULT_PIN + new_pin)),
        _ok(apdu(0, 0x20, 0, 0x80, new_pin)),
        _ok(apdu(0, 0x20, 0, 0x80, DEFAULT_PIN), 0x63C2),
        _ok(apdu(0, 0x2C, 0, 0x80, DEFAULT_PUK + DEFAULT_PIN)),
        _VERIFY,
        _ok(apdu(0, 0x24, 0, 0x81, DEFAULT_PUK + b"87654321")),
        _ok(apdu(0, 0x24, 0, 0x81, b"87654321" + DEFAULT_PUK)),
        _ok(apdu(0, 0x24, 0, 0x80, DEFAULT_PIN + b"12\xff\xff\xff\xff\xff\xff"), 0x6A80),
        raw("00 F7 00 81 00", 0x9000),
    ]
    s["ykman-piv-reset"] = [
        _SELECT_PIV,
        raw("00 F7 00 96 00", 0x6A88),
        raw("00 FB 00 00", 0x6985),
        raw("00 20 00 80 08 FF FF FF FF FF FF FF FF", 0x63C2),
        raw("00 20 00 80 08 FF FF FF FF FF FF FF FF", 0x63C1),
        raw("00 20 00 80 08 FF FF FF FF FF FF FF FF", 0x63C0),
        raw("00 20 00 80 08 FF FF FF FF FF FF FF FF", 0x6983),
        raw("00 2C 00 80 10" + " FF" * 16, 0x63C2),
        raw("00 2C 00 80 10" + " FF" * 16, 0x63C1),
        raw("00 2C 00 80 10" + " FF" * 16, 0x63C0),
        raw("00 FB 00 00", 0x9000),
        raw("00 F7 00 9B 00", 0x9000),
        raw("00 F7 00 81 00", 0x9000),
        _VERIFY,
    ]
    s["set-pin-retries"] = [
        _SELECT_PIV,
        raw("00 FA 05 06", 0x6982),
        _AUTH,
        raw("00 FA 05 06", 0x6982),
        _VERIFY,
        raw("00 FA 05 06", 0x9000),
        raw("00 20 00 80", 0x63C5),
        raw("00 F7 00 81 00", 0x9000),
        raw("00 DB 3F FF 0A 5C 03 5F FF 00 53 03 80 01 00", 0x9000),
    ]
    aes = bytes(range(0x40, 0x50))
    s["set-management-key"] = [
        _SELECT_PIV,
        _ok(apdu(0, 0xFF, 0xFF, 0xFF, b"\x03\x9b\x18" + bytes(range(0x20, 0x38))), 0x6982),
        _AUTH,
        _ok(apdu(0, 0xFF, 0xFF, 0xFF, b"\x08\x9b\x10" + aes)),
        raw("00 F7 00 9B 00", 0x9000),
        Step(StepKind.AUTHENTICATE, b"\x00\x08" + aes, 0x9000),
        _ok(apdu(0, 0xFF, 0xFF, 0xFE, b"\x0c\x9b\x20" + aes * 2)),
        Step(StepKind.AUTHENTICATE, b"\x00\x0c" + aes * 2, 0x9000),
        _ok(apdu(0, 0xFF, 0xFF, 0xFF, b"\x03\x9b\x18" + DEFAULT_MANAGEMENT_KEY)),
        _AUTH,
    ]
    s["management-key-single-auth-and-rng"] = [
        _SELECT_PIV,
        raw("00 87 03 9B 04 7C 02 81 00", 0x9000),
        raw("00 87 03 9B 0C 7C 0A 82 08 00 11 22 33 44 55 66 77", 0x6982),
        raw("00 87 03 9B 0C 7C 0A 82 08 00 11 22 33 44 55 66 77", 0x6982),
        raw("00 87 03 9B 04 7C 02 80 00", 0x9000),
        raw(
            "00 87 03 9B 16 7C 14 80 08 00 00 00 00 00 00 00 00 81 08 01 02 03 04 05 06 07 08",
            0x6982,
        ),
        raw("00 87 08 9B 04 7C 02 80 00", 0x6A86),
        raw("00 87 00 9B 04 7C 02 81 00 00", 0x9000),
    ]
    s["logical-channels"] = [
        raw("00 70 00 00 01", 0x9000),
        raw("01 A4 04 00 05 A0 00 00 03 08", 0x9000),
        _ok(apdu(1, 0x20, 0, 0x80, DEFAULT_PIN)),
        raw("01 20 00 80", 0x9000),
        raw("00 20 00 80", 0x63C3),
        raw("00 70 00 02", 0x9000),
        raw("02 A4 04 00 06 F0 76 73 63 00 01", 0x9000),
        raw("02 02 01 2C 00", 0x612C),
        raw("01 FD 00 00 00", 0x9000),
        raw("02 C0 00 00 00", 0x9000),
        raw("02 C0 00 00 00", 0x6985),
        raw("00 70 80 01 00", 0x9000),
        raw("01 FD 00 00 00", 0x6881),
        raw("00 70 80 02", 0x9000),
        raw("40 FD 00 00 00", 0x6881),
    ]
    s["echo-long-responses-and-chaining"] = [
        raw("00 A4 04 00 06 F0 76 73 63 00 01", 0x9000),
        raw("00 02 02 58 00", 0x6100),
        raw("00 C0 00 00 00", 0x6158),
        raw("00 C0 00 00 00", 0x9000),
        raw("00 02 01 00 80", 0x6180),
        raw("00 01 00 00 03 AA BB CC", 0x9000),
        raw("00 C0 00 00 00", 0x6985),
        raw("10 01 00 00 03 01 02 03", 0x9000),
        raw("10 01 00 00 02 04 05", 0x9000),
        raw("00 01 00 00 01 06 00", 0x9000),
        raw("10 01 00 00 02 01 02", 0x9000),
        raw("00 02 00 10 00", 0x9000),
        raw("00 01 00 00 00 01 00" + " 5A" * 256 + " 00 00", 0x9000),
        raw("00 02 01 00 00 01 00", 0x9000),
        raw("00 02 FF FF 00 00 00", 0x6102),
        raw("00 C0 00 00 02", 0x9000),
        raw("00 A4 04 00 05 A0 00 00 03 08", 0x9000),
    ]
    s["power-events-clear-state"] = [
        _VERIFY,
        _AUTH,
        Step(StepKind.RESET),
        raw("00 20 00 80", 0x63C3),
        raw("00 DB 3F FF 0A 5C 03 5F FF 10 53 03 01 02 03", 0x6982),
        _VERIFY,
        _AUTH,
        Step(StepKind.POWER_OFF),
        raw("00 FD 00 00 00", 0x9000),
        raw("00 20 00 80", 0x63C3),
        _AUTH,
        raw("00 A4 04 00 06 F0 76 73 63 00 01", 0x9000),
        _SELECT_PIV,
        raw("00 DB 3F FF 0A 5C 03 5F FF 10 53 03 01 02 03", 0x6982),
        Step(StepKind.POWER_OFF),
        Step(StepKind.POWER_ON),
        raw("00 CB 3F FF 03 5C 01 7E", 0x9000),
    ]
    s["extended-apdus"] = [
        _SELECT_PIV,
        _AUTH,
        _ok(
            Step(
                StepKind.APDU,
                CommandApdu(0, 0xDB, 0x3F, 0xFF, _put(0x5FC10A, cert * 2), None, True).encode(),
            )
        ),
        raw("00 CB 3F FF 00 00 05 5C 03 5F C1 0A 00 00", 0x9000),
        raw("00 CB 3F FF 00 00 05 5C 03 5F C1 0A 00 10", 0x6100),
        raw("00 FD 00 00 00 00 03", 0x9000),
        raw("00 FD 00 00 00 00", 0x6700),
        raw("00 CB 3F FF 00 00 00", 0x6A80),
        raw("00 CB 3F FF 00 00 05 5C 03 5F C1 0A 00", 0x6700),
    ]
    s["malformed-piv"] = [
        _SELECT_PIV,
        raw("00 CB 3F FF 03 5C 04 7E", 0x6A80),
        raw("00 CB 3F 00 03 5C 01 7E", 0x6A86),
        raw("00 20 00 81 08 31 32 33 34 35 36 FF FF", 0x6A88),
        raw("00 20 00 80 07 31 32 33 34 35 36 FF", 0x6A80),
        raw("00 87 11 9A 04 7C 02 82 00", 0x6A80),
        raw("00 87 11 9B 03 7C 82 00", 0x6A80),
        raw("00 87 11 9B 04 7C 82 00", 0x6700),
        raw("00 47 01 9A 05 AC 03 80 01 11", 0x6A86),
        raw("00 F7 01 9A", 0x6A86),
        raw("0C FD 00 00 00", 0x6882),
        raw("FF FD 00 00 00", 0x6E00),
        raw("84 FD 00 00", 0x6882),
        raw("80 FD 00 00", 0x6E00),
        raw("00 12 00 00", 0x6D00),
        raw("00 FD 00 00 05 01", 0x6700),
        raw("00 A4 04 00 03 A0 00 00", 0x6A82),
        raw("00 FD 00 00 00", 0x9000),
    ]
    s["chaining-interrupted"] = [
        _SELECT_PIV,
        _AUTH,
        raw("10 DB 3F FF 08 5C 03 5F C1 05 53 82 01", 0x9000),
        raw("00 FD 00 00 00", 0x9000),
        raw("00 DB 3F FF 02 00 00", 0x6A80),
        raw("10 87 11 9A 04 7C 24 82 00", 0x9000),
        raw("10 87 11 9B 02 81 20", 0x9000),
        raw("00 C0 00 00 00", 0x6985),
        raw("10 C0 00 00 00", 0x6884),
        raw("00 FD 00 00 00", 0x9000),
    ]
    return {name: tuple(steps) for name, steps in s.items()}


#: The seeds the fuzzer falls back to without a corpus directory (no keys, no files).
def minimal_seeds() -> list[FuzzInput]:
    return [
        (_SELECT_PIV, raw("00 FD 00 00 00"), _VERIFY, raw("00 CB 3F FF 03 5C 01 7E")),
        (_AUTH, raw("00 47 00 9A 05 AC 03 80 01 11"), raw("00 F7 00 9A 00")),
        (raw("00 A4 04 00 06 F0 76 73 63 00 01"), raw("10 01 00 00 01 01"), raw("00 02 01 2C")),
    ]


def write_seeds(directory: Path) -> list[Path]:
    """Write :func:`seed_inputs` as ``<name>.fuzz`` files (the checked-in corpus)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, steps in seed_inputs().items():
        path = directory / f"{name}{CORPUS_SUFFIX}"
        comment = (
            f"seed: {name}\n"
            "Generated by `python -m vsc.fuzz --write-seeds fixtures/corpus`; =XXXX is the SW\n"
            "a factory-fresh card answers (tests/test_fuzz.py checks it)."
        )
        path.write_text(format_input(steps, comment))
        written.append(path)
    return written
