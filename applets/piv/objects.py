"""PIV data objects: identifiers, access rules, size limits, fixed templates.

The card stores object values opaquely (the bytes inside the ``53`` wrapper)
and never parses certificates or CHUIDs. Rules (SP 800-73-4 Part 1 and the
YubiKey's extensions; the table is in docs/piv.md, "Commands"):

* Writable objects are ``5FC101``-``5FC123`` (SP 800-73-4 containers, some
  numbers unassigned but harmless) and ``5FFF00``-``5FFFFF`` (Yubico), plus the
  BIT group template ``7F61``. The discovery object ``7E`` is generated from
  constants and read-only.
* Reads need nothing, except the five objects SP 800-73-4 marks "PIN":
  fingerprints, facial image, printed information, iris, pairing code.
* Writes need the management key (checked by the applet).
"""

from __future__ import annotations

from enum import IntEnum

from vsc.tlv import encode_tlv


class ObjectId(IntEnum):
    """Data object tags, named as in SP 800-73-4 Part 1 Table 3 and yubikit."""

    CARD_AUTH = 0x5FC101  # X.509 certificate for 9E
    CHUID = 0x5FC102
    FINGERPRINTS = 0x5FC103
    AUTHENTICATION = 0x5FC105  # X.509 certificate for 9A
    SECURITY = 0x5FC106
    CAPABILITY = 0x5FC107  # CCC
    FACIAL = 0x5FC108
    PRINTED = 0x5FC109
    SIGNATURE = 0x5FC10A  # X.509 certificate for 9C
    KEY_MANAGEMENT = 0x5FC10B  # X.509 certificate for 9D
    KEY_HISTORY = 0x5FC10C
    RETIRED1 = 0x5FC10D  # ... RETIRED20 = 0x5FC120, certificates for 82-95
    RETIRED20 = 0x5FC120
    IRIS = 0x5FC121
    SM_SIGNER = 0x5FC122
    PAIRING_CODE = 0x5FC123
    DISCOVERY = 0x7E
    BIT_GROUP = 0x7F61
    ADMIN_DATA = 0x5FFF00  # Yubico pivman data
    ATTESTATION = 0x5FFF01  # certificate of the F9 attestation key


#: Objects whose read access rule is "PIN" (contact interface).
PIN_PROTECTED = frozenset(
    {
        ObjectId.FINGERPRINTS,
        ObjectId.FACIAL,
        ObjectId.PRINTED,
        ObjectId.IRIS,
        ObjectId.PAIRING_CODE,
    }
)

#: The largest value the card stores. 3063 bytes is what libykpiv can read
#: back (3072-byte buffer less the 5C/53 framing); the three biometric
#: containers get their SP 800-73-4 Part 1 maximum, which is larger.
MAX_OBJECT_SIZE = 3063
_MAX_SIZES: dict[int, int] = {
    ObjectId.FINGERPRINTS: 4006,
    ObjectId.FACIAL: 12704,
    ObjectId.IRIS: 7106,
}

#: The discovery object (SP 800-73-4 Part 1 §3.3.2): the full PIV AID and a
#: PIN usage policy of "application PIN only" (40 00).
PIV_AID = bytes.fromhex("A000000308000010000100")
DISCOVERY_OBJECT = encode_tlv(
    ObjectId.DISCOVERY, encode_tlv(0x4F, PIV_AID) + encode_tlv(0x5F2F, b"\x40\x00")
)

# Certificate object of each key slot: 9A, 9C, 9D, 9E, 82-95, F9.
_CERT_OBJECTS = {
    0x9A: ObjectId.AUTHENTICATION,
    0x9C: ObjectId.SIGNATURE,
    0x9D: ObjectId.KEY_MANAGEMENT,
    0x9E: ObjectId.CARD_AUTH,
    0xF9: ObjectId.ATTESTATION,
}


def certificate_object(slot: int) -> int:
    """The tag of the object holding the certificate for key ``slot``."""
    if 0x82 <= slot <= 0x95:
        return ObjectId.RETIRED1 + slot - 0x82
    return _CERT_OBJECTS[slot]


def is_stored(tag: int) -> bool:
    """Whether ``tag`` names an object the card stores (and PUT DATA may write)."""
    return 0x5FC101 <= tag <= 0x5FC123 or 0x5FFF00 <= tag <= 0x5FFFFF or tag == ObjectId.BIT_GROUP


def max_size(tag: int) -> int:
    return _MAX_SIZES.get(tag, MAX_OBJECT_SIZE)


def certificate_value(der: bytes, *, compressed: bool = False) -> bytes:
    """A certificate object's value: ``70 cert 71 CertInfo FE`` (SP 800-73-4 Part 1)."""
    info = b"\x01" if compressed else b"\x00"
    return encode_tlv(0x70, der) + encode_tlv(0x71, info) + encode_tlv(0xFE, b"")
