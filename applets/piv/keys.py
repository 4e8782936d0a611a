"""PIV asymmetric keys: types, policies, the key store and their wire encodings.

Theory of operation
-------------------
:class:`KeyStore` is the only holder of private keys. Its public API (get,
generate, import_key, delete, move, sign, agree, attest, reset) never returns
private key material. The base class holds all the cryptography; a concrete
store implements only the *storage primitives* (``_load_info``,
``_load_private_key``, ``_store``, ``_erase``, ``_occupied_slots``,
``_load_attestation_certificate``, ``_store_attestation_certificate``;
``_generate`` and ``_move`` where it makes keys or moves them itself).
:class:`MemoryKeyStore` keeps ``cryptography`` key objects in a dict. The
persistent store (``vsc.store.piv``) keeps PKCS#8 records for software keys
and, on a TPM card, TPM blobs: its ``_load_private_key`` then returns a
:class:`~applets.piv.handles.KeyHandle`, whose operations run in the TPM,
and :attr:`KeyInfo.location` says where each key lives.

The store does key operations only: PIN and touch enforcement, slot
validation and the choice of status word for an empty slot are the applet's.
An empty slot raises :class:`KeyNotFound` (an ``ApduError`` with ``6A88``);
the applet turns it into ``6A80`` for GENERAL AUTHENTICATE (what ykman expects).
A key of
the wrong type for the operation, or bad input, raises ``InvalidData``
(``6A80``).

Operations (docs/piv.md, "Commands"):

* RSA: raw private operation on a k-byte block, k bytes out (rsa.py).
* ECDSA P-256/P-384: the input is the hash e; its leftmost field-size bytes,
  left-padded with zeros when shorter, signed as a pre-hashed SHA-256/384
  value; DER ``Ecdsa-Sig-Value`` out.
* Ed25519: the input is the whole message; 64 bytes out.
* ECDH: ``04‖X‖Y`` peer point, validated; X coordinate of the shared point.
* X25519: 32-byte peer; an all-zero shared secret is ``6A80``.

Policies are resolved when a key is stored (``DEFAULT`` becomes the slot's
default), so :class:`KeyInfo` always holds what GET METADATA reports.

Beyond the basic key-store operations: ``pin_policy`` and
``touch_policy`` default to ``DEFAULT``; ``sign``/``agree`` take an optional
``key_type`` (GA's P1; a mismatch is ``6A80``); ``attest`` takes optional
``form_factor`` and ``issuer`` (the DER certificate in object 5FFF01);
``attestation_certificate``/``set_attestation_certificate`` and
``self_sign_attestation_key``; ``encode_public_key_data`` (the TLVs of
metadata tag 04); ``resolve_pin_policy``/``resolve_touch_policy``;
``generate_private_key``; ``KeyNotFound``; ``KeyStore.require``;
``KeyType.of``/``is_rsa``/``is_ec``/``bit_len``; ``KEY_SLOTS``,
``ATTESTATION_SLOT``; ``FormFactor`` (attestation.py).

Status words chosen where the sources are silent: MOVE onto an occupied
slot (or onto itself) is ``6A80`` (yubikit names 6A80 INCORRECT_PARAMETERS
and ykman prints "DEST slot is not empty" for it); ATTEST of an imported key
is ``6A80`` (Yubico SDK issue #9); no usable F9 key is ``6985``.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vsc.sw import SW, ApduError, ConditionsNotSatisfied, IncorrectParameters, InvalidData
from vsc.tlv import encode_tlv, parse_tlvs

from . import attestation
from . import rsa as raw_rsa
from .attestation import NO_EXPIRY, FormFactor
from .handles import KeyHandle, KeyLocation

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey
)
PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | x25519.X25519PrivateKey
)

#: The Yubico attestation key slot; it survives RESET.
ATTESTATION_SLOT = 0xF9
#: Slots that hold asymmetric keys on a YubiKey 5.7: 9A 9C 9D 9E, 82-95, F9.
KEY_SLOTS = frozenset({0x9A, 0x9C, 0x9D, 0x9E, ATTESTATION_SLOT, *range(0x82, 0x96)})

RSA_EXPONENT = 65537


class KeyType(IntEnum):
    """Algorithm identifiers of GA P1, the AC/80 tag and IMPORT P1 (table in docs/piv.md)."""

    RSA1024 = 0x06
    RSA2048 = 0x07
    RSA3072 = 0x05
    RSA4096 = 0x16
    ECCP256 = 0x11
    ECCP384 = 0x14
    ED25519 = 0xE0
    X25519 = 0xE1

    @property
    def is_rsa(self) -> bool:
        return self in _RSA_BITS

    @property
    def is_ec(self) -> bool:
        """P-256 or P-384 (ECDSA and ECDH)."""
        return self in _CURVES

    @property
    def bit_len(self) -> int:
        """Modulus bits (RSA) or field bits (EC, 25519)."""
        return _RSA_BITS.get(self) or (384 if self is KeyType.ECCP384 else 256)

    @classmethod
    def of(cls, key: PublicKey | PrivateKey) -> KeyType:
        """The type of a key object; ``6A80`` for keys PIV cannot hold."""
        if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            for key_type, bits in _RSA_BITS.items():
                if bits == key.key_size:
                    return key_type
            raise InvalidData(f"unsupported RSA size {key.key_size}")
        if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
            for key_type, curve in _CURVES.items():
                if isinstance(key.curve, curve):
                    return key_type
            raise InvalidData(f"unsupported curve {key.curve.name}")
        if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
            return cls.ED25519
        if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
            return cls.X25519
        raise InvalidData(f"unsupported key {type(key).__name__}")


_RSA_BITS = {
    KeyType.RSA1024: 1024,
    KeyType.RSA2048: 2048,
    KeyType.RSA3072: 3072,
    KeyType.RSA4096: 4096,
}
_CURVES: dict[KeyType, type[ec.EllipticCurve]] = {
    KeyType.ECCP256: ec.SECP256R1,
    KeyType.ECCP384: ec.SECP384R1,
}
_ECDSA_HASHES: dict[KeyType, hashes.HashAlgorithm] = {
    KeyType.ECCP256: hashes.SHA256(),
    KeyType.ECCP384: hashes.SHA384(),
}


class PinPolicy(IntEnum):
    """Tag AA values (docs/piv.md, "PIN and touch policies")."""

    DEFAULT = 0
    NEVER = 1
    ONCE = 2
    ALWAYS = 3
    MATCH_ONCE = 4
    MATCH_ALWAYS = 5


class TouchPolicy(IntEnum):
    """Tag AB values (docs/piv.md, "PIN and touch policies")."""

    DEFAULT = 0
    NEVER = 1
    ALWAYS = 2
    CACHED = 3


class Origin(IntEnum):
    """Metadata tag 03 values."""

    GENERATED = 1
    IMPORTED = 2


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the card may tell about a key: everything but the private part."""

    key_type: KeyType
    pin_policy: PinPolicy
    touch_policy: TouchPolicy
    origin: Origin
    public_key: PublicKey
    #: Where the private part lives, when the store says (GET METADATA tag C0,
    #: the attestation's key-location extension); None for an in-memory card.
    location: KeyLocation | None = None


class KeyNotFound(ApduError):
    """The slot holds no key: ``6A88`` (the applet maps it to ``6A80`` for GA)."""

    def __init__(self, slot: int) -> None:
        super().__init__(SW.REFERENCE_NOT_FOUND, f"no key in slot {slot:02X}")
        self.slot = slot


# --- policies -------------------------------------------------------------------------

_DEFAULT_PIN_POLICIES = {
    0x9A: PinPolicy.ONCE,
    0x9C: PinPolicy.ALWAYS,
    0x9D: PinPolicy.ONCE,
    0x9E: PinPolicy.NEVER,
}


def default_pin_policy(slot: int) -> PinPolicy:
    """The PIN policy ``DEFAULT`` means in ``slot``: retired slots and F9 ONCE."""
    return _DEFAULT_PIN_POLICIES.get(slot, PinPolicy.ONCE)


def resolve_pin_policy(slot: int, policy: PinPolicy) -> PinPolicy:
    """``DEFAULT`` → the slot default; the Bio-only MATCH policies are ``6A80``."""
    if policy is PinPolicy.DEFAULT:
        return default_pin_policy(slot)
    if policy in (PinPolicy.MATCH_ONCE, PinPolicy.MATCH_ALWAYS):
        raise InvalidData("biometric PIN policies need a YubiKey Bio")
    return PinPolicy(policy)


def resolve_touch_policy(policy: TouchPolicy) -> TouchPolicy:
    """``DEFAULT`` → ``NEVER``."""
    return TouchPolicy.NEVER if policy is TouchPolicy.DEFAULT else TouchPolicy(policy)


# --- encodings ------------------------------------------------------------------------


def encode_public_key_data(key: KeyInfo | PublicKey) -> bytes:
    """The public key TLVs: RSA ``81 n 82 e``, EC ``86 04‖X‖Y``, 25519 ``86 <32>``.

    This is the content of the 7F49 template and of GET METADATA tag 04.
    """
    public_key = key.public_key if isinstance(key, KeyInfo) else key
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return encode_tlv(0x81, n) + encode_tlv(0x82, e)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return encode_tlv(0x86, point)
    return encode_tlv(0x86, public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def encode_public_key(key: KeyInfo | PublicKey) -> bytes:
    """The ``7F49`` template GENERATE answers with, shortest DER lengths."""
    return encode_tlv(0x7F49, encode_public_key_data(key))


_IMPORT_TAGS_RSA = (0x01, 0x02, 0x03, 0x04, 0x05)
_IMPORT_TAG_EC = 0x06
_IMPORT_TAG_ED25519 = 0x07
_IMPORT_TAG_X25519 = 0x08
_POLICY_TAGS = frozenset({0xAA, 0xAB})  # parsed by the applet; ignored here


def parse_private_key(key_type: KeyType, data: bytes) -> PrivateKey:
    """The private key in IMPORT ASYMMETRIC KEY's data field (docs/piv.md, "Key import").

    RSA: 01 p, 02 q, 03 dP, 04 dQ, 05 qInv (n = p·q, e = 65537); EC: 06 scalar;
    Ed25519: 07 seed; X25519: 08 key. AA/AB policy tags are skipped. Missing,
    repeated, unexpected or inconsistent elements are ``6A80``.
    """
    fields: dict[int, bytes] = {}
    for tlv in parse_tlvs(data):
        if tlv.tag in _POLICY_TAGS:
            continue
        if tlv.tag in fields:
            raise InvalidData(f"tag {tlv.tag:02X} repeated")
        fields[tlv.tag] = tlv.value
    if key_type.is_rsa:
        return _parse_rsa(key_type, _take(fields, _IMPORT_TAGS_RSA))
    if key_type.is_ec:
        (scalar,) = _take(fields, (_IMPORT_TAG_EC,))
        return _parse_ec(key_type, scalar)
    if key_type is KeyType.ED25519:
        (seed,) = _take(fields, (_IMPORT_TAG_ED25519,))
        if len(seed) != 32:
            raise InvalidData("Ed25519 seed must be 32 bytes")
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    (raw,) = _take(fields, (_IMPORT_TAG_X25519,))
    if len(raw) != 32:
        raise InvalidData("X25519 key must be 32 bytes")
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _take(fields: dict[int, bytes], tags: tuple[int, ...]) -> list[bytes]:
    if set(fields) != set(tags):
        raise InvalidData(f"key elements {sorted(fields)} but expected {list(tags)}")
    return [fields[tag] for tag in tags]


def _parse_rsa(key_type: KeyType, elements: list[bytes]) -> rsa.RSAPrivateKey:
    half = key_type.bit_len // 16
    # Clients left-pad every element to half the modulus length; allow that much slack.
    if any(not value or len(value) > half + 1 for value in elements):
        raise InvalidData("RSA element of bad length")
    p, q, dp, dq, qinv = (int.from_bytes(value, "big") for value in elements)
    e = RSA_EXPONENT
    if p < 3 or q < 3 or p == q or (p * q).bit_length() != key_type.bit_len:
        raise InvalidData("RSA primes do not make a modulus of the right size")
    try:
        d = pow(e, -1, (p - 1) * (q - 1))
    except ValueError:
        raise InvalidData("e = 65537 is not invertible for these primes") from None
    if dp != d % (p - 1) or dq != d % (q - 1) or qinv != pow(q, -1, p):
        raise InvalidData("RSA CRT elements inconsistent with the primes")
    numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qinv, rsa.RSAPublicNumbers(e, p * q))
    try:
        return numbers.private_key()  # OpenSSL's key check includes primality of p and q
    except ValueError:
        raise InvalidData("RSA key check failed") from None


def _parse_ec(key_type: KeyType, scalar: bytes) -> ec.EllipticCurvePrivateKey:
    size = key_type.bit_len // 8
    if not scalar or len(scalar) > size:
        raise InvalidData("EC private scalar of bad length")
    try:
        return ec.derive_private_key(int.from_bytes(scalar, "big"), _CURVES[key_type]())
    except ValueError:
        raise InvalidData("EC private scalar out of range") from None


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type`` (RSA with e = 65537)."""
    if key_type.is_rsa:
        return rsa.generate_private_key(RSA_EXPONENT, key_type.bit_len)
    if key_type.is_ec:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return x25519.X25519PrivateKey.generate()


# --- operations -----------------------------------------------------------------------


def _ecdsa_digest(key_type: KeyType, data: bytes) -> bytes:
    size = key_type.bit_len // 8
    if not data:
        raise InvalidData("empty ECDSA input")
    return data[:size].rjust(size, b"\x00")


def _sign(key: PrivateKey | KeyHandle, key_type: KeyType, data: bytes) -> bytes:
    if isinstance(key, KeyHandle):
        if key_type.is_rsa:
            return key.raw_rsa(data)
        if key_type.is_ec:
            return key.ecdsa(_ecdsa_digest(key_type, data))
        raise InvalidData(f"a {key_type.name} key cannot sign here")
    if isinstance(key, rsa.RSAPrivateKey):
        return raw_rsa.private_op(key, data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = _ecdsa_digest(key_type, data)
        algorithm = _ECDSA_HASHES[key_type]
        return key.sign(digest, ec.ECDSA(utils.Prehashed(algorithm)))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise InvalidData("an X25519 key cannot sign")


def _peer_point(key_type: KeyType, peer: bytes) -> ec.EllipticCurvePublicKey:
    size = key_type.bit_len // 8
    if len(peer) != 1 + 2 * size or peer[0] != 0x04:
        raise InvalidData("peer point must be an uncompressed point on the key's curve")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[key_type](), peer)
    except ValueError:
        raise InvalidData("peer point not on the curve") from None


def _agree(key: PrivateKey | KeyHandle, key_type: KeyType, peer: bytes) -> bytes:
    if isinstance(key, KeyHandle):
        if not key_type.is_ec:
            raise InvalidData(f"a {key_type.name} key cannot do key agreement here")
        return key.ecdh(_peer_point(key_type, peer))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.exchange(ec.ECDH(), _peer_point(key_type, peer))
    if isinstance(key, x25519.X25519PrivateKey):
        if len(peer) != 32:
            raise InvalidData("X25519 peer key must be 32 bytes")
        try:
            return key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:  # all-zero shared secret: a small-order peer point
            raise InvalidData("X25519 peer key of small order") from None
    raise InvalidData(f"a {key_type.name} key cannot do key agreement")


# --- the store ------------------------------------------------------------------------


class KeyStore(ABC):
    """Private keys by slot; the only place private key material lives.

    Subclasses implement the storage primitives; everything else is shared.
    """

    # Storage primitives. Slots passed in are validated 0x00-0xFF integers.

    @abstractmethod
    def _load_info(self, slot: int) -> KeyInfo | None:
        """The slot's key information, or None when it is empty."""

    @abstractmethod
    def _load_private_key(self, slot: int) -> PrivateKey | KeyHandle:
        """The private key of an occupied slot, or a handle to it where it lives
        (called only after ``_load_info``)."""

    @abstractmethod
    def _store(self, slot: int, info: KeyInfo, private_key: PrivateKey) -> KeyInfo:
        """Put a key in ``slot``, replacing whatever was there; the information stored."""

    @abstractmethod
    def _erase(self, slot: int) -> None:
        """Empty ``slot`` (it is occupied), destroying the private key."""

    @abstractmethod
    def _occupied_slots(self) -> list[int]:
        """Every slot holding a key."""

    @abstractmethod
    def _load_attestation_certificate(self) -> bytes | None:
        """The remembered F9 certificate (DER), if any."""

    @abstractmethod
    def _store_attestation_certificate(self, der: bytes | None) -> None:
        """Remember (or forget) the F9 certificate."""

    def _move(self, src: int, dst: int) -> None:
        """Move an occupied ``src`` to an empty ``dst``; override to make it atomic
        (and where keys live outside: a handle cannot be stored again)."""
        info = self._load_info(src)
        if info is None:
            raise KeyNotFound(src)
        key = self._load_private_key(src)
        if isinstance(key, KeyHandle):
            raise NotImplementedError("a store of key handles moves its own records")
        self._store(dst, info, key)
        self._erase(src)

    def _generate(
        self, slot: int, key_type: KeyType, policies: tuple[PinPolicy, TouchPolicy]
    ) -> KeyInfo:
        """Make a key for ``slot``; here in software (a TPM-backed store makes it there)."""
        private_key = generate_private_key(key_type)
        return self._put(slot, key_type, private_key, policies, Origin.GENERATED)

    # Public API.

    def get(self, slot: int) -> KeyInfo | None:
        """The key in ``slot`` (public part and policies), or None."""
        return self._load_info(_check_slot(slot))

    def require(self, slot: int, key_type: KeyType | None = None) -> KeyInfo:
        """Like :meth:`get` but :class:`KeyNotFound` for an empty slot and ``6A80``
        when ``key_type`` is given and differs from the stored key's."""
        info = self.get(slot)
        if info is None:
            raise KeyNotFound(slot)
        if key_type is not None and info.key_type != key_type:
            raise InvalidData(f"slot {slot:02X} holds {info.key_type.name}, not {key_type.name}")
        return info

    def generate(
        self,
        slot: int,
        key_type: KeyType,
        pin_policy: PinPolicy = PinPolicy.DEFAULT,
        touch_policy: TouchPolicy = TouchPolicy.DEFAULT,
    ) -> KeyInfo:
        """Generate a key in ``slot`` (replacing any key there); origin GENERATED."""
        policies = self._policies(slot, pin_policy, touch_policy)
        return self._generate(slot, KeyType(key_type), policies)

    def import_key(
        self,
        slot: int,
        key_type: KeyType,
        private_key: PrivateKey,
        pin_policy: PinPolicy = PinPolicy.DEFAULT,
        touch_policy: TouchPolicy = TouchPolicy.DEFAULT,
    ) -> KeyInfo:
        """Store a host-supplied key; ``6A80`` if it is not of ``key_type``."""
        policies = self._policies(slot, pin_policy, touch_policy)
        if KeyType.of(private_key) != key_type:
            raise InvalidData(f"key is not {KeyType(key_type).name}")
        return self._put(slot, key_type, private_key, policies, Origin.IMPORTED)

    def delete(self, slot: int) -> None:
        """Destroy the key in ``slot``; :class:`KeyNotFound` if empty."""
        self.require(slot)
        self._erase(slot)

    def move(self, src: int, dst: int) -> None:
        """Move the key (with its policies and origin) from ``src`` to ``dst``.

        Empty ``src`` → :class:`KeyNotFound` (6A88); occupied ``dst`` or
        ``src == dst`` → ``6A80`` (ykman reads 6A80, which yubikit calls
        INCORRECT_PARAMETERS, as "DEST slot is not empty").
        """
        self.require(src)
        if _check_slot(dst) == src or self._load_info(dst) is not None:
            raise InvalidData(f"cannot move {src:02X} onto occupied slot {dst:02X}")
        self._move(src, dst)

    def sign(self, slot: int, data: bytes, *, key_type: KeyType | None = None) -> bytes:
        """The private-key operation of GA with tag 81 (see the module docstring)."""
        info = self.require(slot, key_type)
        return _sign(self._load_private_key(slot), info.key_type, bytes(data))

    def agree(self, slot: int, peer: bytes, *, key_type: KeyType | None = None) -> bytes:
        """The key agreement of GA with tag 85: ECDH X coordinate or X25519 secret."""
        info = self.require(slot, key_type)
        return _agree(self._load_private_key(slot), info.key_type, bytes(peer))

    def attest(
        self,
        slot: int,
        *,
        serial: int,
        version: tuple[int, int, int],
        form_factor: int = FormFactor.USB_A_KEYCHAIN,
        issuer: bytes | None = None,
    ) -> bytes:
        """A DER attestation certificate for the key in ``slot``, signed by F9.

        ``issuer`` is the F9 certificate (DER) to take the issuer name and
        validity from; by default the remembered one. Empty slot →
        :class:`KeyNotFound`; an imported key → ``6A80`` (what a YubiKey
        answers, per the Yubico SDK); no usable F9 key → ``6985``.
        """
        info = self.require(slot)
        if info.origin is not Origin.GENERATED:
            raise InvalidData("only keys generated on the card can be attested")
        signer = self._attestation_signer()
        der = issuer if issuer is not None else self._load_attestation_certificate()
        try:
            issuer_cert = x509.load_der_x509_certificate(der) if der is not None else None
        except ValueError:
            raise ConditionsNotSatisfied("attestation certificate unreadable") from None
        return attestation.build_statement(
            signer,
            issuer_cert,
            info.public_key,
            slot=slot,
            serial=serial,
            version=version,
            pin_policy=info.pin_policy,
            touch_policy=info.touch_policy,
            form_factor=form_factor,
            location=info.location,
        )

    def reset(self) -> None:
        """Erase every slot except F9 (Yubico RESET keeps the attestation key)."""
        for slot in self._occupied_slots():
            if slot != ATTESTATION_SLOT:
                self._erase(slot)

    @property
    def attestation_certificate(self) -> bytes | None:
        """The F9 certificate (DER) ``attest`` uses as issuer by default."""
        return self._load_attestation_certificate()

    def set_attestation_certificate(self, der: bytes | None) -> None:
        """Replace the remembered F9 certificate (e.g. after PUT DATA 5FFF01)."""
        if der is not None:
            try:
                x509.load_der_x509_certificate(der)
            except ValueError:
                raise InvalidData("not a DER certificate") from None
        self._store_attestation_certificate(der)

    def self_sign_attestation_key(
        self,
        subject: x509.Name,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime = NO_EXPIRY,
    ) -> bytes:
        """A self-signed CA certificate for the F9 key; remembered and returned (DER)."""
        der = attestation.build_ca_certificate(
            self._attestation_signer(), subject, not_before=not_before, not_after=not_after
        )
        self._store_attestation_certificate(der)
        return der

    def _attestation_signer(
        self,
    ) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | KeyHandle:
        if self._load_info(ATTESTATION_SLOT) is None:
            raise ConditionsNotSatisfied("no attestation key in slot F9")
        key = self._load_private_key(ATTESTATION_SLOT)
        if isinstance(key, x25519.X25519PrivateKey):
            raise ConditionsNotSatisfied("an X25519 attestation key cannot sign")
        return key

    def _policies(
        self, slot: int, pin_policy: PinPolicy, touch_policy: TouchPolicy
    ) -> tuple[PinPolicy, TouchPolicy]:
        _check_slot(slot)
        return resolve_pin_policy(slot, PinPolicy(pin_policy)), resolve_touch_policy(
            TouchPolicy(touch_policy)
        )

    def _put(
        self,
        slot: int,
        key_type: KeyType,
        private_key: PrivateKey,
        policies: tuple[PinPolicy, TouchPolicy],
        origin: Origin,
    ) -> KeyInfo:
        info = KeyInfo(KeyType(key_type), *policies, origin, private_key.public_key())
        return self._store(slot, info, private_key)


def _check_slot(slot: int) -> int:
    if not 0 <= slot <= 0xFF:
        raise IncorrectParameters(f"slot {slot} out of range")
    return slot


class MemoryKeyStore(KeyStore):
    """Keys held as ``cryptography`` objects in memory. Not thread-safe."""

    def __init__(self) -> None:
        self.__keys: dict[int, tuple[KeyInfo, PrivateKey]] = {}
        self.__attestation_certificate: bytes | None = None

    def __repr__(self) -> str:
        return f"<MemoryKeyStore slots={[f'{s:02X}' for s in sorted(self.__keys)]}>"

    def _load_info(self, slot: int) -> KeyInfo | None:
        entry = self.__keys.get(slot)
        return entry[0] if entry is not None else None

    def _load_private_key(self, slot: int) -> PrivateKey:
        return self.__keys[slot][1]

    def _store(self, slot: int, info: KeyInfo, private_key: PrivateKey) -> KeyInfo:
        self.__keys[slot] = (info, private_key)
        return info

    def _erase(self, slot: int) -> None:
        del self.__keys[slot]

    def _occupied_slots(self) -> list[int]:
        return list(self.__keys)

    def _load_attestation_certificate(self) -> bytes | None:
        return self.__attestation_certificate

    def _store_attestation_certificate(self, der: bytes | None) -> None:
        self.__attestation_certificate = der


def create_attestation_key(
    store: KeyStore,
    *,
    serial: int,
    key_type: KeyType = KeyType.ECCP256,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime = NO_EXPIRY,
) -> bytes:
    """Provision the card's attestation CA: a fresh F9 key and its self-signed
    certificate (subject ``CN=vsc PIV Attestation <serial>``), returned as DER
    for object 5FFF01 and remembered by the store.

    P-256 by default (fast to create; ykman and libykpiv accept any key type
    for F9, they do not verify the chain). RSA-2048 is what YubiKeys ship.
    """
    store.generate(ATTESTATION_SLOT, key_type, PinPolicy.DEFAULT, TouchPolicy.DEFAULT)
    return store.self_sign_attestation_key(
        attestation.ca_subject(serial), not_before=not_before, not_after=not_after
    )
