"""The PIV card's persistent data: PIN, PUK, counters, management key, objects.

Theory of operation
-------------------
Everything a real card keeps in EEPROM lives in one immutable
:class:`PivRecord`. :class:`PivData` holds the current record and changes it
only through its methods; each method builds the next record, hands it to
the :class:`PivStore` (``save`` is the commit point) and adopts it only once
``save`` returned. A store that writes durably (issue 4) therefore makes
every change crash-safe, including the retry counter, which the applet
decrements *before* it compares a PIN: pulling the power during a guess
still costs the try. If ``save`` raises, the data stays as it was.

Private keys are not here: they belong to the :class:`~applets.piv.keys.KeyStore`.
Volatile security state (PIN verified, ...) is per-channel, in
:mod:`applets.piv.security`.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Protocol

from .keys import TouchPolicy
from .managed import Managed
from .mgmt import DEFAULT_MANAGEMENT_KEY, ManagementKey, ManagementKeyType
from .objects import ObjectId, factory_ccc, factory_chuid
from .profile import DEFAULT_PROFILE, LEGACY_PROFILE, PivProfile, profile_named

#: PIN and PUK blocks: ASCII right-padded with FF to 8 bytes.
PIN_BLOCK_SIZE = 8
DEFAULT_PIN = b"123456\xff\xff"
DEFAULT_PUK = b"12345678"
DEFAULT_TRIES = 3


class Reference(IntEnum):
    """Key references of the two secrets VERIFY/CHANGE/RESET RETRY name in P2."""

    PIN = 0x80
    PUK = 0x81


_DEFAULT_SECRET = {Reference.PIN: DEFAULT_PIN, Reference.PUK: DEFAULT_PUK}


@dataclass(frozen=True, slots=True)
class RetryCounter:
    maximum: int
    remaining: int

    def __post_init__(self) -> None:
        if not 0 <= self.remaining <= self.maximum <= 255:
            raise ValueError(f"bad retry counter {self.remaining}/{self.maximum}")


@dataclass(frozen=True, slots=True)
class PivRecord:
    """One consistent snapshot of the card's persistent data."""

    serial: int
    pin: bytes = field(repr=False)
    pin_tries: RetryCounter
    puk: bytes = field(repr=False)
    puk_tries: RetryCounter
    management_key: ManagementKey
    objects: Mapping[int, bytes]
    #: PIN policy, admin-key counter and lock of a managed card; None: a plain card.
    managed: Managed | None = None
    #: The card profile (:mod:`applets.piv.profile`) by name: fixed for the card's life.
    profile: str = DEFAULT_PROFILE.name

    @classmethod
    def factory(cls, serial: int, profile: PivProfile = DEFAULT_PROFILE) -> PivRecord:
        """A card fresh from the factory (PIN 123456, PUK 12345678, 3 tries).

        The management key is the factory key in the profile's algorithm; a
        plain PIV card also comes with a CHUID and a CCC (an issued card has both).
        """
        tries = RetryCounter(DEFAULT_TRIES, DEFAULT_TRIES)
        key = ManagementKey(profile.management_key_type, DEFAULT_MANAGEMENT_KEY)
        objects: dict[int, bytes] = {}
        if profile.factory_identity:
            objects[ObjectId.CHUID] = factory_chuid(serial)
            objects[ObjectId.CAPABILITY] = factory_ccc(serial)
        return cls(
            serial,
            DEFAULT_PIN,
            tries,
            DEFAULT_PUK,
            tries,
            key,
            _frozen(objects),
            profile=profile.name,
        )

    def secret(self, ref: Reference) -> bytes:
        return self.pin if ref is Reference.PIN else self.puk

    def tries(self, ref: Reference) -> RetryCounter:
        return self.pin_tries if ref is Reference.PIN else self.puk_tries

    def with_secret(
        self, ref: Reference, value: bytes | None = None, tries: RetryCounter | None = None
    ) -> PivRecord:
        """A copy with the PIN or PUK value and/or counter replaced."""
        # The constructor, not dataclasses.replace (~2 us more): VERIFY commits twice.
        if ref is Reference.PIN:
            pin = self.pin if value is None else value
            pin_tries = self.pin_tries if tries is None else tries
            puk, puk_tries = self.puk, self.puk_tries
        else:
            pin, pin_tries = self.pin, self.pin_tries
            puk = self.puk if value is None else value
            puk_tries = self.puk_tries if tries is None else tries
        return PivRecord(
            serial=self.serial,
            pin=pin,
            pin_tries=pin_tries,
            puk=puk,
            puk_tries=puk_tries,
            management_key=self.management_key,
            objects=self.objects,
            managed=self.managed,
            profile=self.profile,
        )

    # -- serialisation (for persistent stores) ------------------------------------

    def to_json(self) -> str:
        mk = self.management_key
        document: dict[str, Any] = {
            "serial": self.serial,
            "pin": self.pin.hex(),
            "pin_tries": [self.pin_tries.maximum, self.pin_tries.remaining],
            "puk": self.puk.hex(),
            "puk_tries": [self.puk_tries.maximum, self.puk_tries.remaining],
            "management_key": [int(mk.key_type), mk.key.hex(), int(mk.touch_policy)],
            "objects": {f"{tag:X}": value.hex() for tag, value in self.objects.items()},
            "profile": self.profile,
        }
        if self.managed is not None:  # absent for plain cards: their records stay as they were
            document["managed"] = self.managed.to_dict()
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PivRecord:
        """Inverse of :meth:`to_json`; ``ValueError`` on anything malformed."""
        try:
            d: dict[str, Any] = json.loads(text)
            mk_type, mk_key, mk_touch = d["management_key"]
            return cls(
                serial=int(d["serial"]),
                pin=bytes.fromhex(d["pin"]),
                pin_tries=RetryCounter(*map(int, d["pin_tries"])),
                puk=bytes.fromhex(d["puk"]),
                puk_tries=RetryCounter(*map(int, d["puk_tries"])),
                management_key=ManagementKey(
                    ManagementKeyType(mk_type), bytes.fromhex(mk_key), TouchPolicy(mk_touch)
                ),
                objects=_frozen(
                    {int(tag, 16): bytes.fromhex(v) for tag, v in d["objects"].items()}
                ),
                managed=Managed.from_dict(d["managed"]) if "managed" in d else None,
                # Records from before profiles answered as firmware 5.7.1.
                profile=profile_named(str(d.get("profile", LEGACY_PROFILE.name))).name,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed PIV record: {e}") from e


def _frozen(objects: dict[int, bytes]) -> Mapping[int, bytes]:
    return MappingProxyType(objects)


class PivStore(Protocol):
    """Where committed records go. ``save`` returning means the record is durable."""

    def save(self, record: PivRecord) -> None: ...


class MemoryStore:
    """Keeps the last committed record in memory (the default: no durability)."""

    def __init__(self) -> None:
        self.record: PivRecord | None = None

    def save(self, record: PivRecord) -> None:
        self.record = record


def random_serial() -> int:
    """An eight-digit serial number, like a YubiKey's."""
    return 10_000_000 + secrets.randbelow(90_000_000)


class PivData:
    """The card's persistent data; every method that changes it commits once."""

    def __init__(self, record: PivRecord | None = None, *, store: PivStore | None = None) -> None:
        self._record = record if record is not None else PivRecord.factory(random_serial())
        self._store: PivStore = store if store is not None else MemoryStore()
        # (record before a try, the same record with the try spent, the reference): a
        # correct VERIFY goes from the first to the second and back, so the next try
        # reuses both instead of building two new records (records are immutable).
        self._spent: tuple[PivRecord, PivRecord, Reference] | None = None

    @property
    def record(self) -> PivRecord:
        return self._record

    @property
    def serial(self) -> int:
        return self._record.serial

    @property
    def management_key(self) -> ManagementKey:
        return self._record.management_key

    @property
    def profile(self) -> PivProfile:
        return profile_named(self._record.profile)

    def commit(self, record: PivRecord) -> None:
        """The commit point: save ``record`` durably, then make it current."""
        self._store.save(record)
        self._record = record

    # -- PIN and PUK ----------------------------------------------------------------

    def tries(self, ref: Reference) -> RetryCounter:
        return self._record.tries(ref)

    def consume_try(self, ref: Reference) -> int:
        """Decrement the counter (committed) before a comparison; returns what is left."""
        before = self._record
        spent = self._spent
        if spent is not None and spent[0] is before and spent[2] is ref:
            after = spent[1]  # made from this very record, which had a try left
        else:
            tries = before.tries(ref)
            if tries.remaining == 0:
                raise ValueError(f"{ref.name} is blocked")
            after = before.with_secret(ref, tries=RetryCounter(tries.maximum, tries.remaining - 1))
            self._spent = (before, after, ref)
        self.commit(after)
        return after.tries(ref).remaining

    def matches(self, ref: Reference, candidate: bytes) -> bool:
        """Constant-time comparison with the stored PIN or PUK block."""
        return hmac.compare_digest(self._record.secret(ref), candidate)

    def restore_tries(self, ref: Reference) -> None:
        """After a correct value: the counter back to its maximum."""
        record = self._record
        tries = record.tries(ref)
        if tries.remaining == tries.maximum:
            return
        spent = self._spent
        if spent is not None and spent[1] is record and spent[2] is ref:
            before = spent[0]
            if before.tries(ref).remaining == tries.maximum:
                self.commit(before)  # only the counter differed: this is the full record
                return
        self.commit(record.with_secret(ref, tries=RetryCounter(tries.maximum, tries.maximum)))

    def set_secret(self, ref: Reference, value: bytes) -> None:
        """A new PIN or PUK block; its counter goes back to the maximum."""
        tries = self._record.tries(ref)
        full = RetryCounter(tries.maximum, tries.maximum)
        self.commit(self._record.with_secret(ref, value, full))

    def block(self, ref: Reference) -> None:
        """No try left for ``ref``: a PUK nobody should use is disabled this way."""
        maximum = self._record.tries(ref).maximum
        self.commit(self._record.with_secret(ref, tries=RetryCounter(maximum, 0)))

    def is_default(self, ref: Reference) -> bool:
        return hmac.compare_digest(self._record.secret(ref), _DEFAULT_SECRET[ref])

    def set_retries(self, pin_tries: int, puk_tries: int) -> None:
        """SET PIN RETRIES: new maxima, full counters, PIN and PUK back to defaults.

        A managed card keeps its PIN and PUK (nothing may give it a well-known
        value) and a blocked PUK stays blocked: it is how the card disables it.
        """
        if self._record.managed is not None:
            record = self._record
            puk_left = 0 if record.puk_tries.remaining == 0 else puk_tries
            self.commit(
                replace(
                    record,
                    pin_tries=RetryCounter(pin_tries, pin_tries),
                    puk_tries=RetryCounter(puk_tries, puk_left),
                )
            )
            return
        self.commit(
            replace(
                self._record,
                pin=DEFAULT_PIN,
                pin_tries=RetryCounter(pin_tries, pin_tries),
                puk=DEFAULT_PUK,
                puk_tries=RetryCounter(puk_tries, puk_tries),
            )
        )

    # -- management key -------------------------------------------------------------

    def set_management_key(self, key: ManagementKey) -> None:
        self.commit(replace(self._record, management_key=key))

    # -- managed cards (see applets.piv.managed) ---------------------------------------

    @property
    def managed(self) -> Managed | None:
        return self._record.managed

    def set_managed(self, managed: Managed | None) -> None:
        self.commit(replace(self._record, managed=managed))

    def consume_admin_try(self, now: float) -> int:
        """Take one management-key try (committed) before a comparison; the tries left.

        ``ValueError`` when the counter is at zero (the caller answers ``6983``).
        """
        managed = self._managed()
        admin = managed.admin.healed(now).spent(now)
        self.set_managed(replace(managed, admin=admin))
        return admin.remaining

    def restore_admin_tries(self) -> None:
        """After a correct management-key answer: the counter back to its maximum."""
        managed = self._managed()
        if managed.admin.remaining != managed.admin.maximum:
            self.set_managed(replace(managed, admin=managed.admin.restored()))

    def admin_tries(self, now: float) -> tuple[int, int, float]:
        """(maximum, remaining, seconds until one more try) of a managed card's admin key."""
        admin = self._managed().admin.healed(now)
        return admin.maximum, admin.remaining, admin.retry_after(now)

    def set_lock(self, lock_at: float | None) -> None:
        """The time from which the card is locked (None: never)."""
        self.set_managed(replace(self._managed(), lock_at=lock_at))

    def reset_pin_as_admin(self, value: bytes) -> None:
        """A new PIN set with the management key's authority (counter restored)."""
        self._managed()
        self.set_secret(Reference.PIN, value)

    def _managed(self) -> Managed:
        managed = self._record.managed
        if managed is None:
            raise ValueError("not a managed card")
        return managed

    # -- data objects ----------------------------------------------------------------

    def get_object(self, tag: int) -> bytes | None:
        return self._record.objects.get(tag)

    def put_object(self, tag: int, value: bytes) -> None:
        """Store ``value``; an empty value deletes the object."""
        objects = dict(self._record.objects)
        if value:
            objects[tag] = bytes(value)
        elif objects.pop(tag, None) is None:
            return
        self.commit(replace(self._record, objects=_frozen(objects)))

    # -- Yubico RESET -------------------------------------------------------------------

    def factory_reset(self) -> None:
        """Factory values for everything except the serial and the attestation certificate."""
        fresh = PivRecord.factory(self._record.serial, profile_named(self._record.profile))
        keep = dict(fresh.objects)
        attestation = self._record.objects.get(ObjectId.ATTESTATION)
        if attestation is not None:
            keep[ObjectId.ATTESTATION] = attestation
        managed = self._record.managed
        if managed is None:
            self.commit(replace(fresh, objects=_frozen(keep)))
            return
        # A managed card stays managed: its PIN policy, admin-key counter and lock are
        # not content, and neither is its admin key (a factory key anyone knows would
        # answer its unlock challenges): a RESET lifts no lock and refills no counter.
        # Nor does it give the PIN or PUK a value anyone knows: both get random ones and
        # stay blocked (RESET needs that) until the helpdesk sets a new PIN.
        old = self._record
        self.commit(
            replace(
                fresh,
                objects=_frozen(keep),
                managed=managed,
                management_key=old.management_key,
                pin=secrets.token_bytes(PIN_BLOCK_SIZE),
                pin_tries=old.pin_tries,
                puk=secrets.token_bytes(PIN_BLOCK_SIZE),
                puk_tries=old.puk_tries,
            )
        )
