"""The PIV applet over the card store: keys, PIN/PUK, counters and objects, each change durable.

An adapter between :mod:`applets.piv` (which knows nothing of files or TPMs)
and :class:`vsc.store.StoredCard`. :func:`open_piv` returns the applet of a
stored card, provisioning a factory-fresh PIV card the first time.

Theory of operation
-------------------
Records of a card (``vsc.store`` names, protections)::

    piv/record              CARD   serial, counters, management key, "is the PIN/PUK default"
    piv/object/5FC105       CARD   one per data object (certificates, CHUID, ...)
    piv/slot/9a/info        CARD   key type, policies, origin, public key (SPKI DER), where
                                   the key lives and, for a TPM key, how it is authorised
    piv/slot/9a/key         bound("piv"), or CARD for PIN policy NEVER and for F9
    piv/attestation         CARD   the F9 certificate the key store remembers
    tpm/key-admin/piv       CARD   the TPM's key-admin entity of the binding (TPM cards)
    tpm/key-admin/piv/auth  bound("piv")  its authValue (see vsc.store.tpmkeys)

**Commits.** :class:`StoredPivStore` is the applet's commit point
(``PivStore.save``): the record and the objects that changed are written in
one transaction, so the applet's "decrement the retry counter, commit, then
compare" is durable before the comparison. Key changes are one transaction
each (info and key together).

**PIN binding.** The PIN and the PUK are never stored: the binding ``piv``
is sealed once under each (see :mod:`vsc.store.card`), and
:meth:`StoredPivData.matches` asks the backend to unseal it; with a TPM the
TPM compares and its dictionary-attack logic counts the failure. A try the
anti-hammering refused without comparing (lockout) is given back and
answered ``6985`` (temporary; ``6983`` would send clients to the PUK). The
record keeps only whether each value is still the factory default (GET
METADATA reports it), as the default value itself; anything else is stored
as an empty placeholder. The last wrong try of either is reported here
(``pin-blocked``, ``puk-blocked``), whichever command spent it.

**Binding lifetime.** A successful VERIFY (or PUK check) unlocks the
binding, so the PIN-protected keys can be used; :class:`StoredPivApplet`
locks it again after every command and every session end (power off,
reset, another SELECT) that leaves no channel with the PIN verified.
Checking a value, giving a try back, opening the ``admin`` role and
relocking work as for GIDS, in :mod:`vsc.store.pinbinding`; this module
keeps what is PIV's own (the binding's name and roles, the record, the
sessions' epochs).
Keys the applet lets anyone use (PIN policy NEVER, the F9 attestation key)
are card-encrypted: they work without a PIN, and are readable by whoever
can read the card key (see ``docs/security.md``).

**PIN changes** re-seal the binding under the new value and destroy the old
blob, in the same transaction as the record (on a TPM card the key store,
which follows the binding's PIN, re-authorises its TPM keys in it too);
SET PIN RETRIES re-seals both roles under the defaults; RESET destroys the
binding (and every key bound to it) and creates a new one under the defaults.

**Managed cards** (:mod:`applets.piv.managed`, made by :mod:`vsc.lifecycle`)
can have their PIN reset with the management key, without PIN or PUK. The
binding then has a third role, ``admin``, sealed under a value derived from
the management key; a management-key change re-seals it. Since the card
keeps its management key (encrypted under the card key: GA 9B needs it
without any PIN), whoever can read the card key can open this role: on such
a card the PIN-bound keys are only as safe as the card key (see
``docs/lifecycle.md``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)

from applets.piv.applet import PivApplet
from applets.piv.handles import KeyHandle, KeyLocation
from applets.piv.keys import (
    ATTESTATION_SLOT,
    KeyInfo,
    KeyStore,
    KeyType,
    Origin,
    PinPolicy,
    PrivateKey,
    PublicKey,
    TouchPolicy,
)
from applets.piv.mgmt import ManagementKey
from applets.piv.profile import DEFAULT_PROFILE, PivProfile
from applets.piv.security import SecurityState
from applets.piv.state import (
    DEFAULT_PIN,
    DEFAULT_PUK,
    PivData,
    PivRecord,
    Reference,
    RetryCounter,
    random_serial,
)
from vsc.sw import SecurityStatusNotSatisfied

from .application import require_application
from .card import CARD, StoredCard, bound
from .errors import BindingLocked, CorruptStore, StoreError
from .pinbinding import ADMIN_ROLE, PinBindingApplet, PinBindingData
from .tpmkeys import KeyAuth, Placement, decode_record, is_tpm_record

__all__ = [
    "ADMIN_ROLE",
    "BINDING",
    "RECORD",
    "StoredKeyStore",
    "StoredPivApplet",
    "StoredPivData",
    "StoredPivStore",
    "admin_secret",
    "key_protection",
    "open_piv",
]

log = logging.getLogger(__name__)

#: The binding sealed under the PIN (role "pin") and the PUK (role "puk").
BINDING = "piv"
RECORD = "piv/record"
_OBJECT_PREFIX = "piv/object/"
_SLOT_PREFIX = "piv/slot/"
_ATTESTATION_CERT = "piv/attestation"
_ROLES = {Reference.PIN: "pin", Reference.PUK: "puk"}
_DEFAULTS = {Reference.PIN: DEFAULT_PIN, Reference.PUK: DEFAULT_PUK}
_NO_OBJECTS: Mapping[int, bytes] = MappingProxyType({})
_FACTORY_SECRETS = {"pin": DEFAULT_PIN, "puk": DEFAULT_PUK}


def admin_secret(key: ManagementKey) -> bytes:
    """What the ``admin`` role is sealed under: the management key with its algorithm."""
    return b"piv-management-key\0" + bytes((key.key_type,)) + key.key


def _object_name(tag: int) -> str:
    return f"{_OBJECT_PREFIX}{tag:06X}"


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# -- keys ---------------------------------------------------------------------------------


def _encode_info(info: KeyInfo, tpm_auth: KeyAuth | None = None) -> bytes:
    location = info.location if info.location is not None else KeyLocation.SOFTWARE
    fields: dict[str, Any] = {
        "type": int(info.key_type),
        "pin_policy": int(info.pin_policy),
        "touch_policy": int(info.touch_policy),
        "origin": int(info.origin),
        "public_key": _spki(info.public_key).hex(),
        "location": location.name.lower(),
    }
    if tpm_auth is not None:  # how a TPM key is authorised, readable without the PIN
        fields["tpm_auth"] = tpm_auth.value
    return json.dumps(fields, sort_keys=True).encode()


def _info_auth(slot: int, raw: bytes) -> KeyAuth | None:
    """The ``tpm_auth`` of slot information (None: not a TPM key, or an older record)."""
    try:
        value = json.loads(raw).get("tpm_auth")
        return None if value is None else KeyAuth(value)
    except (AttributeError, TypeError, ValueError) as e:
        raise CorruptStore(f"slot {slot:02X}: malformed key information ({e})") from None


#: What ``vsc info`` says of how a slot's key is authorised.
_AUTH_TEXT = {
    KeyAuth.PIN: "tpm (PIN)",
    KeyAuth.PENDING: "tpm (pending PIN: made before the PIN was verified)",
    KeyAuth.RANDOM: "tpm (no PIN)",
}


def _decode_info(slot: int, raw: bytes) -> KeyInfo:
    try:
        d: dict[str, Any] = json.loads(raw)
        public_key = load_der_public_key(bytes.fromhex(d["public_key"]))
        if not isinstance(
            public_key,
            rsa.RSAPublicKey
            | ec.EllipticCurvePublicKey
            | ed25519.Ed25519PublicKey
            | x25519.X25519PublicKey,
        ):
            raise ValueError(f"unexpected key {type(public_key).__name__}")
        return KeyInfo(
            KeyType(d["type"]),
            PinPolicy(d["pin_policy"]),
            TouchPolicy(d["touch_policy"]),
            Origin(d["origin"]),
            public_key,
            # Records from before TPM-resident keys hold software keys.
            KeyLocation[str(d.get("location", "software")).upper()],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptStore(f"slot {slot:02X}: malformed key information ({e})") from None


def _decode_private_key(slot: int, der: bytes) -> PrivateKey:
    try:
        # The blob is authenticated (AES-GCM) and was validated when it was stored;
        # OpenSSL's RSA check would add ~30 ms to every use.
        key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    except (TypeError, ValueError) as e:
        raise CorruptStore(f"slot {slot:02X}: malformed private key ({e})") from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | x25519.X25519PrivateKey,
    ):
        raise CorruptStore(f"slot {slot:02X}: unexpected key {type(key).__name__}")
    return key


def key_protection(slot: int, pin_policy: PinPolicy, binding: str = BINDING) -> str:
    """How the private key of ``slot`` is stored: PIN-bound unless anyone may use it."""
    if slot == ATTESTATION_SLOT or pin_policy is PinPolicy.NEVER:
        return CARD
    return bound(binding)


class StoredKeyStore(KeyStore):
    """PIV private keys in a :class:`StoredCard`; PIN-protected ones sealed to the PIN binding.

    Another applet keeps its keys apart by giving its own :attr:`prefix` and
    :attr:`binding` (GIDS: ``gids/key/``, ``gids``).
    """

    #: Where the slots' records live: ``<prefix><slot>/info`` and ``<prefix><slot>/key``.
    prefix = _SLOT_PREFIX
    #: The binding PIN-protected private keys are sealed to.
    binding = BINDING

    def __init__(self, card: StoredCard) -> None:
        self._card = card
        self._placement = Placement(card)
        # Decoded public key information by slot (None: empty), and how each TPM key is
        # authorised. Only this process writes the card (it holds the card's lock);
        # every write below drops the slots it touches before it starts.
        self._infos: dict[int, KeyInfo | None] = {}
        self._auths: dict[int, KeyAuth | None] = {}
        if card.protector.key_vault() is not None:
            card.follow_pin(self.binding, self)

    def __repr__(self) -> str:
        return f"<StoredKeyStore {self._card.name!r} slots={self._occupied_slots()}>"

    def _info_name(self, slot: int) -> str:
        return f"{self.prefix}{slot:02x}/info"

    def _key_name(self, slot: int) -> str:
        return f"{self.prefix}{slot:02x}/key"

    def _protection(self, slot: int, pin_policy: PinPolicy) -> str:
        return key_protection(slot, pin_policy, self.binding)

    def _pin_binding(self, protection: str) -> str | None:
        """The binding whose PIN authorises a TPM key stored with ``protection``."""
        return None if protection == CARD else self.binding

    def _load_info(self, slot: int) -> KeyInfo | None:
        if slot in self._infos:
            return self._infos[slot]
        raw = self._card.get(self._info_name(slot))
        info = None if raw is None else _decode_info(slot, raw)
        self._auths[slot] = None if raw is None else _info_auth(slot, raw)
        self._infos[slot] = info
        return info

    def _forget(self, *slots: int) -> None:
        """Drop the cached information of ``slots`` (of every slot when none is named)."""
        if not slots:
            self._infos.clear()
            self._auths.clear()
        for slot in slots:
            self._infos.pop(slot, None)
            self._auths.pop(slot, None)

    def _load_private_key(self, slot: int) -> PrivateKey | KeyHandle:
        try:
            der = self._card.get(self._key_name(slot))
        except BindingLocked:
            # The applet checked the PIN policy first, so this is a session whose PIN
            # status outlived the binding: ask for the PIN again.
            raise SecurityStatusNotSatisfied(f"slot {slot:02X} needs the PIN") from None
        info = self._load_info(slot)
        if der is None or info is None:
            raise CorruptStore(f"slot {slot:02X}: key information without a key")
        if is_tpm_record(der):
            return self._placement.handle(slot, der, _spki(info.public_key), self.binding)
        key = _decode_private_key(slot, der)
        # Bound blobs do not name their slot (MOVE KEY renames them without the PIN):
        # a key swapped between slots in the file is caught here.
        if _spki(key.public_key()) != _spki(info.public_key):
            raise CorruptStore(f"slot {slot:02X}: the private key does not match the slot")
        return key

    def _generate(
        self, slot: int, key_type: KeyType, policies: tuple[PinPolicy, TouchPolicy]
    ) -> KeyInfo:
        if self._placement.location(key_type) is not KeyLocation.TPM:
            return super()._generate(slot, key_type, policies)
        protection = self._protection(slot, policies[0])
        record, public_key = self._placement.generate(
            key_type, binding=self._pin_binding(protection)
        )
        info = KeyInfo(key_type, *policies, Origin.GENERATED, public_key, location=KeyLocation.TPM)
        self._write(slot, info, record.encode(), protection, record.auth)
        return info

    def _store(self, slot: int, info: KeyInfo, private_key: PrivateKey) -> KeyInfo:
        protection = self._protection(slot, info.pin_policy)
        location = self._placement.location(info.key_type)
        tpm_auth = None
        if location is KeyLocation.TPM:
            wrapped = self._placement.wrap(private_key, binding=self._pin_binding(protection))
            record, tpm_auth = wrapped.encode(), wrapped.auth
        else:
            record = private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        info = replace(info, location=location)
        self._write(slot, info, record, protection, tpm_auth)
        return info

    def _write(
        self,
        slot: int,
        info: KeyInfo,
        record: bytes,
        protection: str,
        tpm_auth: KeyAuth | None = None,
    ) -> None:
        replacing = self._card.protection_of(self._key_name(slot)) is not None
        self._forget(slot)
        with self._card.transaction():
            self._card.put(self._info_name(slot), _encode_info(info, tpm_auth))
            self._card.put(self._key_name(slot), record, protection=protection)
            if replacing:
                self._card.scrub()  # the old private key must not linger in the files

    def _erase(self, slot: int) -> None:
        self._forget(slot)
        with self._card.transaction():
            self._card.delete(self._key_name(slot))
            self._card.delete(self._info_name(slot))
            self._card.scrub()

    def _move(self, src: int, dst: int) -> None:
        # Renames without unsealing anything: MOVE KEY needs the management key only.
        self._forget(src, dst)
        with self._card.transaction():
            self._card.rename(self._info_name(src), self._info_name(dst))
            self._card.rename(self._key_name(src), self._key_name(dst))
            self._card.scrub()

    # -- keys authorised by the PIN (vsc.store.card.PinFollower) -----------------------------

    def authorisation(self, slot: int) -> str | None:
        """How the key of ``slot`` is authorised, for people (None: no key)."""
        info = self._load_info(slot)
        if info is None:
            return None
        if info.location is not KeyLocation.TPM:
            return "software"
        auth = self._auths.get(slot)
        if auth is not None:
            return _AUTH_TEXT[auth]
        if self._card.protection_of(self._key_name(slot)) == CARD:
            return _AUTH_TEXT[KeyAuth.RANDOM]
        return "tpm (sealed random auth, older card)"

    def _pin_slots(self, *kinds: KeyAuth) -> list[int]:
        slots = self._occupied_slots()
        for slot in slots:
            self._load_info(slot)
        return [slot for slot in slots if self._auths.get(slot) in kinds]

    def _reauthorise(self, slot: int, key_auth: bytes) -> None:
        """``slot``'s key changed to ``key_auth`` (PIN-derived), record and information."""
        raw = self._card.get(self._key_name(slot))
        info = self._load_info(slot)
        if raw is None or info is None:
            raise CorruptStore(f"slot {slot:02X}: key information without a key")
        old = decode_record(slot, raw)
        if old.auth is KeyAuth.RANDOM:
            raise CorruptStore(f"slot {slot:02X}: its information and its record disagree")
        new = self._placement.reauthorise(slot, old, key_auth, self.binding)
        self._forget(slot)
        self._card.undo_on_rollback(lambda: self._forget(slot))
        self._card.put(self._info_name(slot), _encode_info(info, KeyAuth.PIN))
        self._card.put(self._key_name(slot), new.encode(), protection=bound(self.binding))
        self._card.scrub()  # the old blob still loads with the old value

    def pin_verified(self) -> None:
        """Keys made while the PIN was unknown now get its value (a failure is logged)."""
        key_auth = self._card.key_auth(self.binding)
        if key_auth is None:
            return
        for slot in self._pin_slots(KeyAuth.PENDING):
            try:
                with self._card.transaction():
                    self._reauthorise(slot, key_auth)
            except StoreError as e:
                log.warning(
                    "card %r: the key of slot %02X stays pending (random authValue): %s",
                    self._card.name,
                    slot,
                    e,
                )

    def pin_replaced(self, key_auth: bytes) -> None:
        """Every PIN-authorised (or pending) key changed to the new PIN's value."""
        self._forget()
        for slot in self._pin_slots(KeyAuth.PIN, KeyAuth.PENDING):
            self._reauthorise(slot, key_auth)

    def _occupied_slots(self) -> list[int]:
        slots = []
        for name in self._card.names(self.prefix):
            number, _, kind = name[len(self.prefix) :].partition("/")
            if kind == "info":
                slots.append(int(number, 16))
        return slots

    def _load_attestation_certificate(self) -> bytes | None:
        return self._card.get(_ATTESTATION_CERT)

    def _store_attestation_certificate(self, der: bytes | None) -> None:
        if der is None:
            self._card.delete(_ATTESTATION_CERT)
        else:
            self._card.put(_ATTESTATION_CERT, der)

    def reset(self) -> None:
        self._forget()
        with self._card.transaction():  # all slots or none
            super().reset()


# -- PIN, PUK, counters, objects ----------------------------------------------------------


def _storable(record: PivRecord) -> PivRecord:
    """``record`` as stored: no objects (they are records of their own), no secret values."""
    pin = record.pin if hmac.compare_digest(record.pin, DEFAULT_PIN) else b""
    puk = record.puk if hmac.compare_digest(record.puk, DEFAULT_PUK) else b""
    return replace(record, pin=pin, puk=puk, objects=_NO_OBJECTS)


class StoredPivStore:
    """The applet's commit point: ``save`` writes the record and changed objects, durably."""

    def __init__(self, card: StoredCard) -> None:
        self._card = card
        self._saved: PivRecord | None = None  # what the card holds, once known

    def save(self, record: PivRecord) -> None:
        previous = self._saved
        old_objects = previous.objects if previous is not None else _NO_OBJECTS
        with self._card.transaction():
            self._card.put(RECORD, _storable(record).to_json().encode())
            if record.objects is not old_objects:
                for tag in old_objects.keys() - record.objects.keys():
                    self._card.delete(_object_name(tag))
                for tag, value in record.objects.items():
                    if old_objects.get(tag) != value:
                        self._card.put(_object_name(tag), value)
            if previous is not None and previous.management_key is not record.management_key:
                self._card.scrub()  # the old management key must not linger in the files
        self._saved = record

    def forget(self, record: PivRecord) -> None:
        """A transaction around :meth:`save` rolled back: ``record`` is what is stored."""
        self._saved = record

    def load(self) -> PivRecord | None:
        """The stored record with its objects, or None for a card without PIV data."""
        raw = self._card.get(RECORD)
        if raw is None:
            return None
        try:
            record = PivRecord.from_json(raw.decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptStore(f"card {self._card.name!r}: {e}") from None
        objects: dict[int, bytes] = {}
        for name in self._card.names(_OBJECT_PREFIX):
            value = self._card.get(name)
            try:
                tag = int(name[len(_OBJECT_PREFIX) :], 16)
            except ValueError:
                raise CorruptStore(
                    f"card {self._card.name!r}: bad object record {name!r}"
                ) from None
            if value is not None:
                objects[tag] = value
        record = replace(record, objects=MappingProxyType(objects))
        self._saved = record
        return record


class StoredPivData(PinBindingData[PivRecord, Reference], PivData):
    """PIV data whose PIN and PUK are checked by the backend through the PIN binding."""

    binding = BINDING
    admin_key_name = "management key"
    _roles = _ROLES

    def __init__(self, card: StoredCard, record: PivRecord, store: StoredPivStore) -> None:
        super().__init__(record, store=store)
        self._card = card
        self._stored = store

    def matches(self, ref: Reference, candidate: bytes) -> bool:
        """Whether ``candidate`` unseals the binding's ``ref`` role (the backend compares).

        A try the anti-hammering refused without comparing is given back
        (:mod:`vsc.store.pinbinding`); the wrong try that blocks the PIN or PUK
        is reported here, whether VERIFY, CHANGE REFERENCE DATA or RESET RETRY
        COUNTER spent it.
        """
        if self._unseal(ref, candidate):
            return True
        if self.tries(ref).remaining == 0:  # that was the last try, whichever path
            self._card.report(f"{ref.name.lower()}-blocked", {"outcome": "refused"})
        return False

    def _with_try_back(self, ref: Reference) -> PivRecord:
        tries = self.tries(ref)
        restored = RetryCounter(tries.maximum, min(tries.maximum, tries.remaining + 1))
        return self.record.with_secret(ref, tries=restored)

    def set_secret(self, ref: Reference, value: bytes) -> None:
        """Re-seal the binding under the new value (the old blob is destroyed)."""
        stored = value if hmac.compare_digest(value, _DEFAULTS[ref]) else b""
        try:
            with self._group():
                self._card.rebind(BINDING, _ROLES[ref], value)
                super().set_secret(ref, stored)
        except BindingLocked:
            raise SecurityStatusNotSatisfied(f"{ref.name} change needs the binding") from None

    def set_retries(self, pin_tries: int, puk_tries: int) -> None:
        """New maxima; PIN and PUK back to their defaults (the binding re-sealed).

        A managed card keeps its PIN and PUK, so its binding is not touched.
        """
        try:
            with self._group():
                if self.managed is None:
                    self._card.rebind(BINDING, _ROLES[Reference.PIN], DEFAULT_PIN)
                    self._card.rebind(BINDING, _ROLES[Reference.PUK], DEFAULT_PUK)
                super().set_retries(pin_tries, puk_tries)
        except BindingLocked:
            raise SecurityStatusNotSatisfied("SET PIN RETRIES needs the binding") from None
        finally:
            self._card.lock(BINDING)  # every channel lost its PIN status

    def factory_reset(self) -> None:
        """A new binding under the default PIN and PUK; the old one and its keys destroyed.

        A managed card gets no well-known value: its PIN and PUK roles are sealed
        under random values nobody learns (both are blocked: RESET needs that, and
        the helpdesk's PIN reset re-seals the PIN's), and it keeps an ``admin`` role
        under its management key.
        """
        if self.managed is not None:
            secrets_ = {role: secrets.token_bytes(8) for role in _FACTORY_SECRETS}
        else:
            secrets_ = _FACTORY_SECRETS
        try:
            with self._group():
                if BINDING in self._card.bindings():
                    self._card.delete_binding(BINDING)
                self._card.create_binding(BINDING, secrets_)
                super().factory_reset()
                if self.managed is not None:
                    self._card.rebind(BINDING, ADMIN_ROLE, admin_secret(self.management_key))
        finally:
            self._card.lock(BINDING)

    # -- the management key's role (managed cards) -----------------------------------------

    def has_admin_role(self) -> bool:
        return ADMIN_ROLE in self._card.bindings().get(BINDING, ())

    def add_admin_role(self) -> None:
        """Seal the (unlocked) binding under the management key too."""
        self._card.rebind(BINDING, ADMIN_ROLE, admin_secret(self.management_key))

    def unlock_as_admin(self) -> None:
        """Open the binding with the management key (already authenticated by the caller)."""
        self._unlock_admin(admin_secret(self.management_key))

    def as_admin(self) -> contextlib.AbstractContextManager[None]:
        """The binding opened by the admin role for a change; closed again unless it was open."""
        return self._opened_by_admin(admin_secret(self.management_key))

    def reset_pin_as_admin(self, value: bytes) -> None:
        """The PIN re-sealed under ``value`` through the admin role (the keys stay usable)."""
        with self.as_admin(), self._group():
            super().reset_pin_as_admin(value)

    def set_management_key(self, key: ManagementKey) -> None:
        """A new management key; the ``admin`` role follows it (re-sealed, old blob destroyed)."""
        if not self.has_admin_role():
            super().set_management_key(key)
            return
        with self.as_admin(), self._group():
            self._card.rebind(BINDING, ADMIN_ROLE, admin_secret(key))
            super().set_management_key(key)


# -- the applet -----------------------------------------------------------------------------


#: The security events of PIV commands the applet does not report itself (vsc.store.events).
_COMMAND_EVENTS = {
    (0x24, 0x00, 0x80): "pin-change",
    (0x24, 0x00, 0x81): "puk-change",
    (0x2C, 0x00, 0x80): "puk-unblock",
    # SET MANAGEMENT KEY; P1 is the touch policy.
    **{(0xFF, p1, 0xFF): "admin-key-change" for p1 in (0xFF, 0xFE, 0xFD)},
}


class StoredPivApplet(PinBindingApplet[SecurityState, tuple[int, int]], PivApplet):
    """The PIV applet of a stored card: locks the PIN binding when no channel has the PIN."""

    binding = BINDING
    command_events = _COMMAND_EVENTS

    def __init__(self, card: StoredCard, data: StoredPivData) -> None:
        self._track(card)
        #: The applet's key store, as stored (how each key is authorised, for reports).
        self.stored_keys = StoredKeyStore(card)
        super().__init__(self.stored_keys, data=data)


def open_piv(
    card: StoredCard,
    *,
    serial: int | None = None,
    profile: PivProfile | None = None,
    provision: bool = False,
) -> StoredPivApplet:
    """The PIV applet of ``card``.

    A bare card (no application yet) is provisioned factory-fresh only with
    ``provision=True``, which code that creates cards gives: the PIN binding,
    the factory record (``serial``, default random; ``profile``, default the
    default profile), the F9 attestation key and certificate, and the card's
    application (``piv``), in one transaction. For a card that exists,
    ``serial`` and ``profile`` must be its own (``ValueError``). A PIV card whose record is
    missing is damage, never provisioned again (see :mod:`vsc.store.application`).
    """
    store = StoredPivStore(card)
    if require_application(card, "piv", provision=provision):
        record = store.load()
        if record is None:  # deleted between the two reads: still damage
            raise CorruptStore(f"card {card.name!r} at {card.path}: {RECORD} is missing")
        if serial is not None and serial != record.serial:
            raise ValueError(f"serial {serial} differs from the card's {record.serial}")
        if profile is not None and profile.name != record.profile:
            raise ValueError(f"the card is a {record.profile} card, not {profile.name}")
        card.lock(BINDING)
        return _applet(card, StoredPivData(card, record, store))
    fresh = PivRecord.factory(
        serial if serial is not None else random_serial(), profile or DEFAULT_PROFILE
    )
    try:
        with card.transaction():
            card.set_application("piv")
            card.create_binding(BINDING, _FACTORY_SECRETS)
            data = StoredPivData(card, fresh, store)
            data.commit(fresh)
            applet = _applet(card, data)  # generates F9, commits its certificate
    finally:
        card.lock(BINDING)
    return applet


def _applet(card: StoredCard, data: StoredPivData) -> StoredPivApplet:
    applet = StoredPivApplet(card, data)
    applet.events = card.report  # to the card's sink, whenever it is set
    return applet
