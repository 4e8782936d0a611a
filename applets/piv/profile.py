"""Card profiles: which PIV card the applet is, byte for byte (docs/piv.md, "Profiles").

A :class:`PivProfile` is the firmware of the card: the version GET VERSION
reports, which Yubico instructions exist, the algorithms, the factory
management key, the data-object namespace with its access rules and size
limits, and the status words where the cards differ. The profile is chosen
when a card is made, stored with its data (:class:`~applets.piv.state.PivRecord`)
and never changes, as a card's firmware does not.

* ``yubikey-5.4``: a YubiKey 5 NFC with firmware 5.4.3. 3DES factory
  management key (AES-128/192/256 may be set), RSA-1024/2048 and ECC
  P-256/P-384, metadata, attestation, no MOVE/DELETE KEY. The default: it is
  what Debian 12's yubico-piv-tool 2.2.0 (3DES only) can administer.
* ``yubikey-5.7``: firmware 5.7.1. AES-192 factory management key (the same
  24 bytes), adds RSA-3072/4096, Ed25519, X25519 and MOVE/DELETE KEY, and
  takes PUK bytes 00-7F only.
* ``piv``: a plain SP 800-73-4 card, as a government PIV card looks to
  OpenSC: no Yubico instruction (``6D00``), no serial, version or
  attestation; an APT that lists its algorithms; a CHUID and a CCC from the
  factory; the SP 800-73-4 containers only, with their access rules.

Everything here is read when the applet is built, never per command: a
profile costs nothing on the APDU path (the applet copies the few values a
handler needs into its own attributes, and leaves the instructions a
profile lacks out of its command table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from vsc.sw import SW
from vsc.tlv import encode_tlv

from .keys import KEY_SLOTS, KeyType
from .mgmt import ManagementKeyType
from .objects import (
    PIV_CONTAINERS,
    PIV_PIN_PROTECTED,
    YUBIKEY_PIN_PROTECTED,
    ObjectId,
    is_yubikey_object,
)

__all__ = [
    "DEFAULT_PROFILE",
    "LEGACY_PROFILE",
    "PIV",
    "PROFILES",
    "YUBIKEY_5_4",
    "YUBIKEY_5_7",
    "PivProfile",
    "profile_named",
]

# The Yubico instructions (docs/piv.md, "Commands").
INS_MOVE_KEY = 0xF6
INS_GET_METADATA = 0xF7
INS_GET_SERIAL = 0xF8
INS_ATTEST = 0xF9
INS_SET_PIN_RETRIES = 0xFA
INS_RESET = 0xFB
INS_GET_VERSION = 0xFD
INS_IMPORT_KEY = 0xFE
INS_SET_MANAGEMENT_KEY = 0xFF
YUBICO_5_4_INS = frozenset(
    {
        INS_GET_METADATA,
        INS_GET_SERIAL,
        INS_ATTEST,
        INS_SET_PIN_RETRIES,
        INS_RESET,
        INS_GET_VERSION,
        INS_IMPORT_KEY,
        INS_SET_MANAGEMENT_KEY,
    }
)
YUBICO_INS = YUBICO_5_4_INS | {INS_MOVE_KEY}

_SP800_73_KEYS = frozenset({KeyType.RSA1024, KeyType.RSA2048, KeyType.ECCP256, KeyType.ECCP384})
_ALL_KEYS = frozenset(KeyType)
_ALL_MANAGEMENT_KEYS = frozenset(ManagementKeyType)

#: The YubiKey's answer to SELECT: the PIX with version, the RID as tag allocation authority.
YUBIKEY_APT = bytes.fromhex("61114F0600001000010079074F05A000000308")

#: A YubiKey stores at most 3063 bytes per object (its 3072-byte APDU buffer less the
#: 5C/53 framing) and about 51 200 bytes in all (Yubico: "Maximum certificate sizes").
YUBIKEY_OBJECT_MAX = 3063
YUBIKEY_STORAGE = 51200

#: SP 800-73-4 Part 1 minimum capacities above the general limit (biometric containers).
PIV_OBJECT_MAX = 3063
_PIV_LARGE_OBJECTS: dict[int, int] = {
    ObjectId.FINGERPRINTS: 4006,
    ObjectId.FACIAL: 12704,
    ObjectId.IRIS: 7106,
}


def _piv_apt(label: str, algorithms: tuple[int, ...]) -> bytes:
    """SP 800-73-4 Part 2 §3.1.1: PIX, authority, label, and the algorithms (AC … 06 00)."""
    supported = b"".join(encode_tlv(0x80, bytes((a,))) for a in algorithms)
    return encode_tlv(
        0x61,
        encode_tlv(0x4F, bytes.fromhex("000010000100"))
        + encode_tlv(0x79, encode_tlv(0x4F, bytes.fromhex("A000000308")))
        + encode_tlv(0x50, label.encode("ascii"))
        + encode_tlv(0xAC, supported + encode_tlv(0x06, b"")),
    )


@dataclass(frozen=True, slots=True)
class PivProfile:
    """One card the PIV applet can be. See the module docstring."""

    name: str
    #: What the card is, for people ("YubiKey 5 NFC, firmware 5.4.3").
    title: str
    #: GET VERSION's answer; None for a card without Yubico's extensions.
    version: tuple[int, int, int] | None
    #: The Yubico instructions the card answers (any other is ``6D00``).
    yubico_ins: frozenset[int]
    #: Algorithms GENERATE and IMPORT accept (others are ``6A80``).
    key_types: frozenset[KeyType]
    #: The factory management key's algorithm (the key is 01 02 .. 08 three times).
    management_key_type: ManagementKeyType
    #: Algorithms SET MANAGEMENT KEY accepts.
    management_key_types: frozenset[ManagementKeyType]
    #: Slots GENERATE and IMPORT may fill.
    key_slots: frozenset[int]
    #: Objects whose read needs the PIN.
    pin_protected: frozenset[int]
    #: Whether an absent PIN-protected object answers ``6A82`` before the PIN check
    #: (a YubiKey; OpenSC calls it "leaks file not found") or ``6982`` (SP 800-73-4).
    absent_before_pin: bool
    #: Whether a tag names one of the card's objects (7E aside).
    is_object: Callable[[int], bool]
    #: Status words for a tag outside the namespace: GET DATA, PUT DATA.
    unknown_object_sw: tuple[int, int]
    #: Whether PUT DATA may replace the discovery object (SP 800-73-4 defines it;
    #: a YubiKey generates it and refuses writes).
    discovery_writable: bool
    #: The largest value per object, and the exceptions to it.
    object_max: int
    large_objects: dict[int, int]
    #: What all objects together may hold (None: no limit beyond each object's).
    storage: int | None
    #: The answer to SELECT.
    apt: bytes
    #: The status word for a new PIN or PUK the card refuses (bad length or bytes):
    #: a YubiKey answers ``6985``, SP 800-73-4 ``6A80``.
    bad_new_secret_sw: int
    #: Whether a new PUK may hold bytes 80-FE (YubiKey 5.7 refuses them).
    puk_any_byte: bool
    #: Whether GENERATE takes Yubico's PIN and touch policy tags (AA, AB).
    policies: bool
    #: Whether the card carries Yubico's F9 attestation key and certificate.
    attestation: bool
    #: Whether a factory card holds a CHUID and a CCC.
    factory_identity: bool

    @property
    def is_yubikey(self) -> bool:
        return self.version is not None

    def max_size(self, tag: int) -> int:
        return self.large_objects.get(tag, self.object_max)

    def __repr__(self) -> str:
        return f"<PivProfile {self.name}>"


YUBIKEY_5_4 = PivProfile(
    name="yubikey-5.4",
    title="YubiKey 5 NFC, firmware 5.4.3",
    version=(5, 4, 3),
    yubico_ins=YUBICO_5_4_INS,
    key_types=_SP800_73_KEYS,
    management_key_type=ManagementKeyType.TDES,
    management_key_types=_ALL_MANAGEMENT_KEYS,
    key_slots=KEY_SLOTS,
    pin_protected=YUBIKEY_PIN_PROTECTED,
    absent_before_pin=True,
    is_object=is_yubikey_object,
    unknown_object_sw=(SW.INVALID_DATA, SW.INVALID_DATA),
    discovery_writable=False,
    object_max=YUBIKEY_OBJECT_MAX,
    large_objects={},
    storage=YUBIKEY_STORAGE,
    apt=YUBIKEY_APT,
    bad_new_secret_sw=SW.CONDITIONS_NOT_SATISFIED,
    puk_any_byte=True,
    policies=True,
    attestation=True,
    factory_identity=False,
)

YUBIKEY_5_7 = replace(
    YUBIKEY_5_4,
    name="yubikey-5.7",
    title="YubiKey 5 NFC, firmware 5.7.1",
    version=(5, 7, 1),
    yubico_ins=YUBICO_INS,
    key_types=_ALL_KEYS,
    management_key_type=ManagementKeyType.AES192,
    puk_any_byte=False,
)

PIV = PivProfile(
    name="piv",
    title="PIV card (SP 800-73-4)",
    version=None,
    yubico_ins=frozenset(),
    key_types=_SP800_73_KEYS,
    management_key_type=ManagementKeyType.TDES,
    management_key_types=_ALL_MANAGEMENT_KEYS,
    key_slots=frozenset({0x9A, 0x9C, 0x9D, 0x9E}),
    pin_protected=PIV_PIN_PROTECTED,
    absent_before_pin=False,
    is_object=PIV_CONTAINERS.__contains__,
    unknown_object_sw=(SW.FILE_NOT_FOUND, SW.FUNCTION_NOT_SUPPORTED),
    discovery_writable=True,
    object_max=PIV_OBJECT_MAX,
    large_objects=_PIV_LARGE_OBJECTS,
    storage=None,
    apt=_piv_apt(
        "vsc PIV",
        (
            ManagementKeyType.TDES,
            ManagementKeyType.AES128,
            ManagementKeyType.AES192,
            ManagementKeyType.AES256,
            KeyType.RSA1024,
            KeyType.RSA2048,
            KeyType.ECCP256,
            KeyType.ECCP384,
        ),
    ),
    bad_new_secret_sw=SW.INVALID_DATA,
    puk_any_byte=True,
    policies=False,
    attestation=False,
    factory_identity=True,
)

PROFILES: dict[str, PivProfile] = {p.name: p for p in (YUBIKEY_5_4, YUBIKEY_5_7, PIV)}
#: What Debian 12's clients can administer: yubico-piv-tool 2.2.0 knows only 3DES keys.
DEFAULT_PROFILE = YUBIKEY_5_4
#: The profile of records written before profiles existed (they answered as 5.7.1).
LEGACY_PROFILE = YUBIKEY_5_7


def profile_named(name: str) -> PivProfile:
    """The profile called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown card profile {name!r}: choose {', '.join(PROFILES)}") from None
