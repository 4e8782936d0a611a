"""PIV data objects: identifiers, access rules, namespaces, fixed templates.

The card stores object values opaquely (the bytes inside the ``53`` wrapper)
and never parses certificates or CHUIDs. Which tags exist, which need the PIN
to read and how large they may be depends on the card profile
(:mod:`applets.piv.profile`; the table is in docs/piv.md, "Data objects"):

* A YubiKey stores any tag 5F0000-5FFFFF and the BIT group template 7F61;
  the discovery object 7E is generated and read-only. Fingerprints, facial
  image, printed information and iris need the PIN.
* A plain SP 800-73-4 card has its containers only (5FC101-5FC123 but
  5FC104, 7E, 7F61); the pairing code needs the PIN too.
* Writes need the management key (checked by the applet).
"""

from __future__ import annotations

import uuid
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


#: Objects a YubiKey reads only with the PIN (Yubico: "PIV data objects").
YUBIKEY_PIN_PROTECTED = frozenset(
    {ObjectId.FINGERPRINTS, ObjectId.FACIAL, ObjectId.PRINTED, ObjectId.IRIS}
)
#: Objects whose SP 800-73-4 contact read rule is "PIN" (or "PIN or OCC").
PIV_PIN_PROTECTED = YUBIKEY_PIN_PROTECTED | {ObjectId.PAIRING_CODE}
#: Every object some profile guards with the PIN: what traces hide (vsc.masking).
PIN_PROTECTED = PIV_PIN_PROTECTED

#: SP 800-73-4 Part 1 Table 3: the containers of a PIV card (7E included).
PIV_CONTAINERS = frozenset(
    {
        *range(ObjectId.CARD_AUTH, ObjectId.PAIRING_CODE + 1),
        ObjectId.DISCOVERY,
        ObjectId.BIT_GROUP,
    }
    - {0x5FC104}
)


def is_yubikey_object(tag: int) -> bool:
    """Whether a YubiKey stores ``tag``: 5F0000-5FFFFF and 7F61 (7E is generated)."""
    return 0x5F0000 <= tag <= 0x5FFFFF or tag == ObjectId.BIT_GROUP


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


def certificate_value(der: bytes, *, compressed: bool = False) -> bytes:
    """A certificate object's value: ``70 cert 71 CertInfo FE`` (SP 800-73-4 Part 1)."""
    info = b"\x01" if compressed else b"\x00"
    return encode_tlv(0x70, der) + encode_tlv(0x71, info) + encode_tlv(0xFE, b"")


#: FASC-N of "9999-9999-999999-0-1-0000000000 3 0000 1" (SP 800-73-4's test agency 9999:
#: OpenSC then names the card by the CHUID's GUID), as ykman and libykpiv write it.
_TEST_FASCN = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
#: Expiration date of the factory CHUID ("YYYYMMDD").
_CHUID_EXPIRY = b"20991231"
#: CCC card identifier prefix: GSC-RID A0 00 00 01 16, manufacturer FF, card type 02 (Java Card).
_CCC_ID_PREFIX = bytes.fromhex("A000000116FF02")


def card_guid(serial: int) -> bytes:
    """The 16-byte GUID of a card's factory CHUID, derived from its serial (RFC 4122 v5)."""
    return uuid.uuid5(uuid.NAMESPACE_OID, f"vsc-piv-card-{serial}").bytes


def factory_chuid(serial: int) -> bytes:
    """An unsigned CHUID (SP 800-73-4 Part 1 Table 9): FASC-N, GUID, expiry, empty signature."""
    return (
        encode_tlv(0x30, _TEST_FASCN)
        + encode_tlv(0x34, card_guid(serial))
        + encode_tlv(0x35, _CHUID_EXPIRY)
        + encode_tlv(0x3E, b"")
        + encode_tlv(0xFE, b"")
    )


def factory_ccc(serial: int) -> bytes:
    """A CCC (SP 800-73-4 Part 1 Table 8) of 51 bytes, the layout libykpiv also expects."""
    items = [
        (0xF0, _CCC_ID_PREFIX + card_guid(serial)[:14]),
        (0xF1, b"\x21"),
        (0xF2, b"\x21"),
        (0xF3, b""),
        (0xF4, b"\x00"),
        (0xF5, b"\x10"),
        *((tag, b"") for tag in (0xF6, 0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE)),
    ]
    return b"".join(encode_tlv(tag, value) for tag, value in items)
