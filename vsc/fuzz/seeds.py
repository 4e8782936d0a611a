"""The seed corpus: realistic client sequences against a factory-fresh card.

:func:`seed_inputs` is what ykman, yubico-piv-tool and OpenSC send, by
name, with the status word a fresh card answers; ``python -m vsc.fuzz
--write-seeds fixtures/corpus`` writes them as the checked-in seed files.
:func:`minimal_seeds` is the fallback without a corpus directory.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from ..apdu import CommandApdu
from ..tlv import encode_tlv
from .inputs import (
    CORPUS_SUFFIX,
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    FuzzInput,
    Step,
    StepKind,
    apdu,
    authenticate,
    format_input,
    raw,
)

__all__ = ["minimal_seeds", "seed_inputs", "write_seeds"]

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
        # A YubiKey refuses a short new PIN with 6985.
        _ok(apdu(0, 0x24, 0, 0x80, DEFAULT_PIN + b"12\xff\xff\xff\xff\xff\xff"), 0x6985),
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
