"""Private keys of a stored card that live in its TPM: where a key goes, its record, its use.

Theory of operation
-------------------
On a card protected by a TPM (a backend with a :class:`KeyVault`) every key
the TPM can hold is made there (``TPM2_Create`` under the storage root key,
never leaving it) or wrapped into it (``TPM2_Import``), and every private
operation runs there: raw RSA (``TPM2_RSA_Decrypt``, no scheme: the card
gets the block already padded), ECDSA (``TPM2_Sign``), ECDH
(``TPM2_ECDH_ZGen``). The card's files keep only the TPM's wrapped form.

**The PIN is the key's authorisation.** A key of a PIN-protected slot is
DA-protected and its authValue is derived from the PIN
(:meth:`StoredCard.key_auth`: the card's KDF with a label of its own, never
the PIN itself, never stored). The TPM checks it on every use and counts a
wrong one. The value is in memory only while the PIN binding is open by the
PIN (forgotten on ``lock()``/``close()``, like the binding's private key).

PIV GENERATE and IMPORT need only the management key, and PUK unblock, the
admin's PIN reset, SET PIN RETRIES replace the PIN without knowing the old
one. So each binding has a *key-admin entity*: a small sealed TPM object
(``noDA``) whose authValue ``K_adm`` is random. Its blob is a card-encrypted
record (``tpm/key-admin/<binding>``), ``K_adm`` a record bound to the binding
(whoever opens the binding with any role reads it). Keys of PIN-protected
slots carry ``adminWithPolicy`` and the policy PolicyCommandCode(
ObjectChangeAuth) ; PolicySecret(entity): with ``K_adm``, and only for
TPM2_ObjectChangeAuth, their authValue can be replaced. That is how:

* a key made while the PIN is unknown gets a random authValue kept in its
  record, marked *pending*; the next VERIFY of the binding changes it to the
  PIN-derived value (a refusal is logged; the key stays pending and works);
* every flow that replaces the PIN (change, PUK unblock, admin reset, SET
  PIN RETRIES) changes every key of the binding to the new PIN's value in the
  same transaction as the binding's new seal (:meth:`StoredCard.rebind`): a
  failure rolls all of it back.

Keys anyone may use (PIN policy never, the attestation key) are ``noDA``
with a random authValue in a card-encrypted record. Records written before
(version 1) keep their random authValue sealed to the binding and no admin
policy: they work as before and are never converted.

Record (``<prefix><slot>/key``)::

    "vsc-tpm-key" 00 | 01 | authValue (32) | TPM blob        random (noDA keys, older cards)
    "vsc-tpm-key" 00 | 02 | 01 | authValue (32) | TPM blob   pending
    "vsc-tpm-key" 00 | 02 | 02 | TPM blob                    PIN-derived

(TPM blob: TPM2B_PRIVATE ‖ TPM2B_PUBLIC.) Algorithms the TPM lacks (libtpms:
RSA-4096, Ed25519, X25519) are refused with ``6A80`` and a log line, unless
the card's settings allow software keys; such keys are stored as before
(PKCS#8) and reported as software keys.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_public_key,
)

from applets.piv.handles import KeyHandle, KeyLocation
from applets.piv.keys import KeyType, PrivateKey
from vsc.sw import ConditionsNotSatisfied, InvalidData, SecurityStatusNotSatisfied

from .card import CARD, StoredCard, bound, key_admin_records
from .errors import AuthFailed, BackendMismatch, CorruptStore, LockedOut
from .protect import KeyVault

log = logging.getLogger(__name__)

MAGIC = b"vsc-tpm-key\0"
AUTH_SIZE = 32
_V1 = 0x01
_V2 = 0x02


class KeyAuth(Enum):
    """How a TPM key's authValue is chosen (the ``tpm_auth`` of its slot information)."""

    #: Random, in the record (version 1): keys anyone may use, and keys of older cards.
    RANDOM = "random"
    #: Random, in the record, until the next VERIFY makes it PIN-derived.
    PENDING = "pending"
    #: Derived from the PIN; nowhere in the files.
    PIN = "pin"


_KINDS = {KeyAuth.PENDING: 0x01, KeyAuth.PIN: 0x02}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A TPM key record: how it is authorised, its stored authValue (if any), its blob."""

    auth: KeyAuth
    blob: bytes
    value: bytes | None = None

    def encode(self) -> bytes:
        if self.auth is KeyAuth.RANDOM:
            assert self.value is not None
            return MAGIC + bytes((_V1,)) + self.value + self.blob
        head = MAGIC + bytes((_V2, _KINDS[self.auth]))
        return head + (self.value or b"") + self.blob


def algorithm(key_type: KeyType) -> str:
    """The vault's name for ``key_type`` (``rsa2048``, ``eccp256``, ...)."""
    return key_type.name.lower()


def is_tpm_record(raw: bytes) -> bool:
    return raw.startswith(MAGIC) and raw[len(MAGIC) : len(MAGIC) + 1] in (b"\x01", b"\x02")


def decode_record(slot: int, raw: bytes) -> KeyRecord:
    """The parts of a TPM key record; :class:`CorruptStore` if it is malformed."""
    body = raw[len(MAGIC) + 1 :]
    version = raw[len(MAGIC)] if is_tpm_record(raw) else 0
    if version == _V1 and len(body) > AUTH_SIZE:
        return KeyRecord(KeyAuth.RANDOM, body[AUTH_SIZE:], body[:AUTH_SIZE])
    if version == _V2 and body[:1] == b"\x01" and len(body) > 1 + AUTH_SIZE:
        return KeyRecord(KeyAuth.PENDING, body[1 + AUTH_SIZE :], body[1 : 1 + AUTH_SIZE])
    if version == _V2 and body[:1] == b"\x02" and len(body) > 1:
        return KeyRecord(KeyAuth.PIN, body[1:])
    raise CorruptStore(f"slot {slot:02X}: malformed TPM key record")


def new_auth() -> bytes:
    return secrets.token_bytes(AUTH_SIZE)


class Placement:
    """Where a card's new keys go: in its TPM when it can hold them, else software or nowhere."""

    def __init__(self, card: StoredCard) -> None:
        self._card = card
        self._vault: KeyVault | None = card.protector.key_vault()

    @property
    def vault(self) -> KeyVault:
        if self._vault is None:
            raise CorruptStore(f"card {self._card.name!r}: a TPM key on a card without a TPM")
        return self._vault

    def location(self, key_type: KeyType) -> KeyLocation:
        """TPM or software for a new ``key_type`` key; ``6A80`` (logged) if neither is allowed."""
        if self._vault is None:
            return KeyLocation.SOFTWARE
        if self._vault.supports(algorithm(key_type)):
            return KeyLocation.TPM
        if self._card.settings.software_keys:
            log.warning(
                "card %r: the TPM cannot hold %s keys; this one lives in software"
                " (the card allows software keys)",
                self._card.name,
                key_type.name,
            )
            return KeyLocation.SOFTWARE
        log.warning(
            "card %r: refused a %s key: the TPM cannot hold it and the card keeps its keys"
            " in the TPM only (create it with --software-keys to allow software keys)",
            self._card.name,
            key_type.name,
        )
        raise InvalidData(f"{key_type.name} keys cannot live in this card's TPM")

    def generate(
        self, key_type: KeyType, *, binding: str | None
    ) -> tuple[KeyRecord, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]:
        """A key made in the TPM: its record and public key. With ``binding``, a key of a
        PIN-protected slot (see the module's docstring); without, one anyone may use."""
        auth, record, policy = self._authorisation(binding)
        blob = self.vault.generate(
            algorithm(key_type), auth, da=binding is not None, admin_policy=policy
        )
        return record(blob), _public_key(self.vault, blob)

    def wrap(self, private_key: PrivateKey, *, binding: str | None) -> KeyRecord:
        """A host-supplied key wrapped into the TPM: its record."""
        der = private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        auth, record, policy = self._authorisation(binding)
        try:
            blob = self.vault.import_key(der, auth, da=binding is not None, admin_policy=policy)
        except ValueError as e:
            raise InvalidData(f"the TPM refused the key: {e}") from None
        return record(blob)

    def _authorisation(
        self, binding: str | None
    ) -> tuple[bytes, Callable[[bytes], KeyRecord], bytes | None]:
        """A new key's authValue, how to record it, its admin policy."""
        if binding is None:
            value = new_auth()
            return value, lambda blob: KeyRecord(KeyAuth.RANDOM, blob, value), None
        policy = self.admin_policy(binding)
        pin_auth = self._card.key_auth(binding)
        if pin_auth is not None:  # the PIN is verified: derived from it right away
            return pin_auth, lambda blob: KeyRecord(KeyAuth.PIN, blob), policy
        value = new_auth()
        return value, lambda blob: KeyRecord(KeyAuth.PENDING, blob, value), policy

    def admin_policy(self, binding: str) -> bytes:
        """The admin policy of ``binding``'s keys; its key-admin entity made the first time."""
        entity_name, auth_name = key_admin_records(binding)
        entity = self._card.get(entity_name)
        if entity is None:
            value = new_auth()
            entity = self.vault.create_admin_entity(value)
            with self._card.transaction():
                self._card.put(entity_name, entity, protection=CARD)
                self._card.put(auth_name, value, protection=bound(binding))
        return self.vault.admin_policy(entity)

    def reauthorise(self, slot: int, record: KeyRecord, auth: bytes, binding: str) -> KeyRecord:
        """``record``'s key with authValue ``auth`` (needs ``binding`` open): a PIN record."""
        entity_name, auth_name = key_admin_records(binding)
        entity = self._card.get(entity_name)
        value = self._card.get(auth_name)
        if entity is None or value is None:
            raise CorruptStore(f"slot {slot:02X}: the key-admin entity of {binding!r} is missing")
        _, policy = self.vault.authorisation(record.blob)
        if policy != self.vault.admin_policy(entity):
            raise CorruptStore(f"slot {slot:02X}: the key does not follow {binding!r}'s entity")
        try:
            blob = self.vault.change_auth(record.blob, auth, entity, value)
        except (AuthFailed, LockedOut, BackendMismatch) as e:
            raise CorruptStore(
                f"slot {slot:02X}: the TPM refused the new authValue ({e})"
            ) from None
        return KeyRecord(KeyAuth.PIN, blob)

    def handle(self, slot: int, raw: bytes, public_spki: bytes, binding: str) -> TpmKey:
        """The key of a TPM record; :class:`CorruptStore` if it is not the slot's key.

        A PIN-derived key needs the binding opened by the PIN (a PUK or the admin
        role opens it too, but does not give the PIN): else ``6982``.
        """
        record = decode_record(slot, raw)
        vault = self.vault
        if vault.public_key(record.blob) != public_spki:
            raise CorruptStore(f"slot {slot:02X}: the TPM key does not match the slot")
        auth = record.value if record.value is not None else self._card.key_auth(binding)
        if auth is None:
            raise SecurityStatusNotSatisfied(f"slot {slot:02X} needs the PIN")
        return TpmKey(slot, vault, record.blob, auth)


def _public_key(vault: KeyVault, blob: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    key = load_der_public_key(vault.public_key(blob))
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CorruptStore(f"unexpected TPM key {type(key).__name__}")
    return key


def spki(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class TpmKey(KeyHandle):
    """A key in the TPM: its wrapped blob and authValue, each use a TPM command."""

    __slots__ = ("_auth", "_blob", "_vault", "slot")

    def __init__(self, slot: int, vault: KeyVault, blob: bytes, auth: bytes) -> None:
        self.slot = slot
        self._vault = vault
        self._blob = blob
        self._auth = auth

    def __repr__(self) -> str:
        return f"<TpmKey slot {self.slot:02X}>"

    @property
    def blob(self) -> bytes:
        """The TPM's wrapped form (usable only by that TPM, only with the authValue)."""
        return self._blob

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        return _public_key(self._vault, self._blob)

    def raw_rsa(self, block: bytes) -> bytes:
        try:
            return self._vault.rsa_private(self._blob, self._auth, block)
        except ValueError:
            raise InvalidData("RSA input out of range for the key") from None
        except (AuthFailed, LockedOut, BackendMismatch) as e:
            raise self._refused(e) from None

    def ecdsa(self, digest: bytes) -> bytes:
        try:
            r, s = self._vault.ecdsa(self._blob, self._auth, digest)
        except ValueError:
            raise InvalidData("ECDSA input refused by the TPM") from None
        except (AuthFailed, LockedOut, BackendMismatch) as e:
            raise self._refused(e) from None
        return utils.encode_dss_signature(r, s)

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        numbers = peer.public_numbers()
        size = (peer.curve.key_size + 7) // 8
        try:
            return self._vault.ecdh(
                self._blob,
                self._auth,
                numbers.x.to_bytes(size, "big"),
                numbers.y.to_bytes(size, "big"),
            )
        except ValueError:
            raise InvalidData("peer point refused by the TPM") from None
        except (AuthFailed, LockedOut, BackendMismatch) as e:
            raise self._refused(e) from None

    def _refused(self, e: Exception) -> Exception:
        if isinstance(e, LockedOut):
            # A PIN-bound key is DA-protected: the TPM uses none while it is locked out.
            return ConditionsNotSatisfied(f"slot {self.slot:02X}: {e}")
        return CorruptStore(f"slot {self.slot:02X}: the TPM refused the key ({e})")
