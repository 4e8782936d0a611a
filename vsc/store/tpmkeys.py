"""Private keys of a stored card that live in its TPM: where a key goes, its record, its use.

Theory of operation
-------------------
On a card protected by a TPM (a backend with a :class:`KeyVault`) every key
the TPM can hold is made there (``TPM2_Create`` under the storage root key,
never leaving it) or wrapped into it (``TPM2_Import``), and every private
operation runs there: raw RSA (``TPM2_RSA_Decrypt``, no scheme: the card
gets the block already padded), ECDSA (``TPM2_Sign``), ECDH
(``TPM2_ECDH_ZGen``). The card's files keep only the TPM's wrapped form.

Each key has a random 32-byte authValue. The record holding it is protected
like a software key's (:func:`vsc.store.piv.key_protection`): for a
PIN-protected slot it is sealed to the PIN binding, which opens only after
the TPM checked the PIN (and counted a wrong one); the key itself is then
DA-protected, so the TPM checks its authValue on every use. A key anyone may
use (PIN policy never, the attestation key) is card-encrypted and ``noDA``.

Record (``<prefix><slot>/key``)::

    "vsc-tpm-key" 00 | version 01 | authValue (32) | TPM blob (TPM2B_PRIVATE ‖ TPM2B_PUBLIC)

Algorithms the TPM lacks (libtpms: RSA-4096, Ed25519, X25519) are refused
with ``6A80`` and a log line, unless the card's settings allow software keys;
such keys are stored as before (PKCS#8) and reported as software keys.
"""

from __future__ import annotations

import logging
import secrets

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
from vsc.sw import ConditionsNotSatisfied, InvalidData

from .card import StoredCard
from .errors import AuthFailed, BackendMismatch, CorruptStore, LockedOut
from .protect import KeyVault

log = logging.getLogger(__name__)

MAGIC = b"vsc-tpm-key\0\x01"
AUTH_SIZE = 32


def algorithm(key_type: KeyType) -> str:
    """The vault's name for ``key_type`` (``rsa2048``, ``eccp256``, ...)."""
    return key_type.name.lower()


def encode_record(auth: bytes, blob: bytes) -> bytes:
    return MAGIC + auth + blob


def is_tpm_record(raw: bytes) -> bool:
    return raw.startswith(MAGIC)


def decode_record(slot: int, raw: bytes) -> tuple[bytes, bytes]:
    """(authValue, blob) of a TPM key record."""
    body = raw[len(MAGIC) :]
    if not is_tpm_record(raw) or len(body) <= AUTH_SIZE:
        raise CorruptStore(f"slot {slot:02X}: malformed TPM key record")
    return body[:AUTH_SIZE], body[AUTH_SIZE:]


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
        self, key_type: KeyType, *, da: bool
    ) -> tuple[bytes, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]:
        """A key made in the TPM: its record and public key."""
        auth = new_auth()
        blob = self.vault.generate(algorithm(key_type), auth, da=da)
        return encode_record(auth, blob), _public_key(self.vault, blob)

    def wrap(self, private_key: PrivateKey, *, da: bool) -> bytes:
        """A host-supplied key wrapped into the TPM: its record."""
        der = private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        auth = new_auth()
        try:
            blob = self.vault.import_key(der, auth, da=da)
        except ValueError as e:
            raise InvalidData(f"the TPM refused the key: {e}") from None
        return encode_record(auth, blob)

    def handle(self, slot: int, raw: bytes, public_spki: bytes) -> TpmKey:
        """The key of a TPM record; :class:`CorruptStore` if it is not the slot's key."""
        auth, blob = decode_record(slot, raw)
        vault = self.vault
        if vault.public_key(blob) != public_spki:
            raise CorruptStore(f"slot {slot:02X}: the TPM key does not match the slot")
        return TpmKey(slot, vault, blob, auth)


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
