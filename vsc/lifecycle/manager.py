"""The lifecycle API: create, personalise, lock, unlock, unblock, provision and destroy cards.

Theory of operation
-------------------
:class:`CardManager` works on a :class:`vsc.store.CardStore` with one
protection backend, the way ``tpmvscmgr`` and an identity-management system
such as MyID drive Windows' TPM virtual smart cards. Every operation opens
the card (taking its lock: a card an emulator serves is *in use*, and the
operation fails with :class:`vsc.store.CardInUse`), builds its PIV applet
(:func:`vsc.store.piv.open_piv`) and changes it through the applet's own
data and key store, so the card's rules (counters before comparisons, PIN
binding, the managed block of :mod:`applets.piv.managed`) apply exactly as
they do through APDUs. The same operations a remote tool performs through
the card's APDU interface are described in ``docs/lifecycle.md``.

A card made by :meth:`CardManager.create` is *managed*: a PIN policy, a
counted admin (management) key, a lock, and a PIN binding with an ``admin``
role so the helpdesk can reset the PIN (see :mod:`vsc.store.piv`).

Offline unblock and unlock are two steps, so nobody keeps a card open while
the user is on the phone: ``begin_*`` stores a pending request in the card
and returns its challenge; ``complete`` checks the typed response against
*that* request (the counter is decremented durably first) and applies it.
A pending request lasts :data:`PENDING_LIFETIME` seconds and is replaced by
the next ``begin_*``.

Everything that happens is appended to the store's audit log
(:mod:`vsc.lifecycle.audit`), without secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from applets.piv.keys import (
    ATTESTATION_SLOT,
    KEY_SLOTS,
    KeyType,
    PinPolicy,
    TouchPolicy,
    resolve_pin_policy,
)
from applets.piv.managed import DEFAULT_ADMIN_RECOVERY, DEFAULT_ADMIN_TRIES, AdminCounter, Managed
from applets.piv.mgmt import DEFAULT_MANAGEMENT_KEY, ManagementKey, ManagementKeyType
from applets.piv.objects import ObjectId, certificate_object, certificate_value
from applets.piv.pinrules import PinRules
from applets.piv.state import DEFAULT_PIN, DEFAULT_PUK, PIN_BLOCK_SIZE, Reference
from vsc.store import BackendSpec, CardStore, StoredCard
from vsc.store.db import read_meta
from vsc.store.errors import CardExists, CardNotFound, CorruptStore, StoreError
from vsc.store.gids import has_gids
from vsc.store.piv import BINDING, StoredPivApplet, StoredPivData, open_piv
from vsc.sw import ApduError
from vsc.tlv import parse_tlvs

from .audit import AuditLog
from .certs import (
    ProvisioningError,
    load_certificate,
    load_key_file,
    parse_subject,
    self_signed,
    spki,
)
from .certs import signing_request as card_signing_request
from .errors import (
    AdminKeyBlocked,
    CapacityExceeded,
    LifecycleError,
    NoPendingRequest,
    NotManaged,
    PinPolicyViolation,
    Refused,
    WrongAdminKey,
)
from .offline import (
    MistypedCode,
    Purpose,
    Request,
    check_response,
    describe_minutes,
    parse_response,
)
from .profiles import DEFAULT_PROFILE, PIV_PIN_MAX, PROFILES, Profile
from .timespec import format_local

__all__ = [
    "DEFAULT_CAPACITY",
    "PENDING_LIFETIME",
    "CardManager",
    "CardReport",
    "CardSummary",
    "Created",
    "Pending",
    "SlotReport",
    "parse_admin_key",
    "pin_block",
]

#: Cards one TPM may hold (Windows allows 10 virtual smart cards per machine).
DEFAULT_CAPACITY = 10
#: Seconds a challenge stays answerable.
PENDING_LIFETIME = 3600.0
_CARD_RECORD = "lifecycle/card"
_PENDING_RECORD = "lifecycle/pending"
_STORE_LOCK = ".lifecycle.lock"
_SLOT_NAMES = {
    0x9A: "authentication",
    0x9C: "signature",
    0x9D: "key management",
    0x9E: "card authentication",
    ATTESTATION_SLOT: "attestation",
}


def pin_block(pin: str | bytes, what: str = "PIN") -> bytes:
    """A PIN or PUK as the card's 8-byte block (FF-padded)."""
    raw = pin.encode() if isinstance(pin, str) else bytes(pin)
    if not 1 <= len(raw) <= PIN_BLOCK_SIZE or b"\xff" in raw:
        raise PinPolicyViolation("max-length", f"a {what} has 1 to {PIN_BLOCK_SIZE} characters")
    return raw + b"\xff" * (PIN_BLOCK_SIZE - len(raw))


def parse_admin_key(text: str, key_type: ManagementKeyType | None = None) -> ManagementKey:
    """An admin key in hex (spaces and colons allowed); the algorithm from ``key_type`` or
    the length (24 bytes: 3DES, 16 or 32: AES)."""
    try:
        raw = bytes.fromhex(text.replace(":", "").replace(" ", ""))
    except ValueError:
        raise ValueError("the admin key must be hexadecimal") from None
    if key_type is None:
        by_length = {24: ManagementKeyType.TDES, 16: ManagementKeyType.AES128}
        key_type = by_length.get(len(raw), ManagementKeyType.AES256)
    if len(raw) != key_type.key_length:
        raise ValueError(
            f"the admin key has {len(raw)} bytes: a {key_type.name} key has {key_type.key_length}"
            " (3DES: 24, AES: 16, 24 or 32)"
        )
    return ManagementKey(key_type, raw)


def _random_admin_key(key_type: ManagementKeyType) -> ManagementKey:
    while True:
        key = ManagementKey(key_type, secrets.token_bytes(key_type.key_length))
        if not key.is_default:
            return key


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created:
    """What :meth:`CardManager.create` made. ``admin_key`` is set only for a random key,
    to be shown once; the caller must not log it."""

    name: str
    serial: int
    profile: str
    admin_key: ManagementKey | None
    generated: tuple[int, ...]
    locked: bool


@dataclass(frozen=True, slots=True)
class Pending:
    """A challenge to show: what it asks for, until when it can be answered."""

    name: str
    serial: int
    request: Request
    expires: float

    @property
    def challenge(self) -> str:
        return self.request.encode()


@dataclass(frozen=True, slots=True)
class CardSummary:
    """One line of ``vsc list``; details are None for a card that could not be opened."""

    name: str
    backend: str
    created: float
    in_use: bool
    serial: int | None = None
    profile: str | None = None
    state: str | None = None


@dataclass(frozen=True, slots=True)
class CertificateReport:
    subject: str
    issuer: str
    serial: str
    not_before: str
    not_after: str
    sha256: str
    matches_key: bool


@dataclass(frozen=True, slots=True)
class SlotReport:
    slot: str
    name: str
    algorithm: str | None
    pin_policy: str | None
    touch_policy: str | None
    origin: str | None
    certificate: CertificateReport | None


@dataclass(frozen=True, slots=True)
class CardReport:
    """``vsc info``: everything about a card except its secrets."""

    name: str
    path: str
    serial: int
    profile: str | None
    managed: bool
    backend: str
    backend_kind: str
    hardware_bound: bool
    weaknesses: tuple[str, ...]
    created: float
    lock: str
    locked: bool
    lock_at: float | None
    pin_policy: tuple[str, ...]
    pin_tries: tuple[int, int]
    pin_is_default: bool
    puk_tries: tuple[int, int]
    puk_is_default: bool
    #: How the PUK was chosen at creation: "random (unknown)", "default", "chosen"; None if
    #: the card was not made by vsc create.
    puk_kind: str | None
    admin_key_algorithm: str
    admin_key_is_default: bool
    admin_tries: tuple[int, int] | None
    admin_retry_after: float | None
    admin_recovery_time: int | None
    admin_unblock: bool
    anti_hammering: dict[str, Any]
    pending: str | None
    slots: tuple[SlotReport, ...]


def describe_lock(managed: Managed | None, now: float) -> str:
    """``unlocked``, ``locked``, ``unlocked until T``."""
    if managed is None:
        return "not managed (no lock)"
    if managed.lock_at is None:
        return "unlocked"
    if managed.locked(now):
        return "locked"
    return f"unlocked until {format_local(managed.lock_at)}"


def _certificate_report(value: bytes | None, public_spki: bytes | None) -> CertificateReport | None:
    if not value:
        return None
    try:
        der = {t.tag: t.value for t in parse_tlvs(value)}[0x70]
        cert = x509.load_der_x509_certificate(der)
    except (KeyError, ValueError, ApduError):
        return None
    return CertificateReport(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        matches_key=public_spki is not None and spki(cert.public_key()) == public_spki,
    )


# -- the manager -----------------------------------------------------------------------------


class CardManager:
    """Lifecycle operations on the cards of ``store``, protected by ``backend``.

    ``backend`` may be None for operations that need no card key (list,
    destroy); the others raise :class:`LifecycleError` without one.
    """

    def __init__(
        self,
        store: CardStore,
        backend: BackendSpec | None = None,
        *,
        audit: AuditLog | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if capacity < 1:
            raise ValueError("the capacity is at least one card")
        self.store = store
        self.backend = backend
        self.audit = audit if audit is not None else AuditLog(store.root)
        self.capacity = capacity
        self._tries_left = 0

    def __repr__(self) -> str:
        return f"<CardManager {self.store.root}>"

    @property
    def now(self) -> float:
        return self.store.clock.now()

    def _backend(self) -> BackendSpec:
        if self.backend is None:
            raise LifecycleError(
                "this needs the card's protection backend: --tpm TCTI (or VSC_TPM), --key-file"
                " PATH (or VSC_KEY_FILE), VSC_PASSPHRASE, or --insecure-plain"
            )
        return self.backend

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[tuple[StoredCard, StoredPivApplet, StoredPivData]]:
        stored = self.store.open(name, self._backend())
        try:
            if has_gids(stored):  # never provision PIV data onto a GIDS card
                raise LifecycleError(f"card {name!r} is a GIDS card: not for this command")
            applet = open_piv(stored)
            applet.wall_clock = self.store.clock.now
            applet.events = self.audit.card_hook(name)
            data = applet.data
            assert isinstance(data, StoredPivData)
            yield stored, applet, data
        finally:
            stored.close()

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Serialises creations in the store: the capacity check and the creation are one step."""
        self.store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.store.root / _STORE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- creation ------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        profile: str = DEFAULT_PROFILE,
        pin: str | None = None,
        puk: str | None = None,
        admin_key: str | ManagementKey = "random",
        admin_key_type: ManagementKeyType | None = None,
        rules: PinRules | None = None,
        generate: bool = False,
        locked: bool = False,
        admin_tries: int = DEFAULT_ADMIN_TRIES,
        admin_recovery: int = DEFAULT_ADMIN_RECOVERY,
        serial: int | None = None,
    ) -> Created:
        """Create and personalise a managed card (``tpmvscmgr create``).

        ``pin`` None keeps the factory PIN 123456 (if the policy allows it);
        ``puk`` None sets a random PUK nobody learns (unblocking then goes
        through the admin key, as on Windows), ``"default"`` keeps 12345678.
        ``admin_key``: ``"random"`` (returned once in :attr:`Created.admin_key`),
        ``"default"`` (the factory key: anyone can then answer challenges), hex,
        or a :class:`ManagementKey`.
        """
        spec = self._backend()
        chosen = PROFILES.get(profile)
        if chosen is None:
            raise LifecycleError(f"unknown profile {profile!r}: choose {', '.join(PROFILES)}")
        rules = chosen.rules() if rules is None else chosen_rules(chosen, rules)
        pin_value = self.check_pin(rules, pin, default=pin is None)
        puk_value, puk_kind = _puk(puk)
        key, key_kind = _admin_key(admin_key, admin_key_type or chosen.admin_key_type)
        counter = AdminCounter(admin_tries, admin_tries, admin_recovery, self.now)
        with self._store_lock():
            if self.store.exists(name):
                raise CardExists(name, self.store.path_of(name))
            self._check_capacity(spec)
            stored = self.store.create(name, spec)
        try:
            created_serial, generated = self._personalise(
                stored,
                chosen,
                Managed(rules, counter, self.now if locked else None),
                pin_value,
                (puk_value, puk_kind),
                key,
                generate,
                serial,
            )
        except BaseException:
            stored.close()
            with contextlib.suppress(StoreError, OSError):
                self.store.destroy(name)
            raise
        stored.close()
        self.audit.write(
            "create",
            name,
            f"{name}: created (profile {chosen.name}, serial {created_serial},"
            f" {spec.kind} backend)",
            serial=created_serial,
            profile=chosen.name,
            backend=spec.kind,
        )
        slots = ", ".join(f"{slot:02X}" for slot in generated)
        self.audit.write(
            "personalise",
            name,
            f"{name}: personalised ({key_kind} {key.key_type.name} admin key,"
            f" {'chosen' if pin is not None else 'factory'} PIN, PUK {puk_kind}"
            + (f", generated {slots}" if generated else "")
            + (", locked" if locked else "")
            + ")",
            admin_key_kind=key_kind,
            admin_key_algorithm=key.key_type.name,
            puk_kind=puk_kind,
            pin_kind="default" if pin is None else "chosen",
            pin_policy=rules.to_dict(),
            generated=[f"{slot:02X}" for slot in generated],
            locked=locked,
        )
        return Created(
            name,
            created_serial,
            chosen.name,
            key if key_kind == "random" else None,
            generated,
            locked,
        )

    def _check_capacity(self, spec: BackendSpec) -> None:
        device, label = self._device(spec)
        on_it = [n for n in self.store.names() if self._device_of(n) == device]
        if len(on_it) >= self.capacity:
            raise CapacityExceeded(
                f"{label} already holds {len(on_it)} cards ({', '.join(on_it)}): its capacity"
                f" is {self.capacity} (--max-cards or VSC_MAX_CARDS to change it)"
            )

    def _device(self, spec: BackendSpec) -> tuple[str, str]:
        """What a card's capacity is counted against: one TPM, or one software backend."""
        if spec.kind == "tpm":
            from vsc.store.tpm import Tpm

            assert spec.tcti is not None
            return "tpm:" + Tpm(spec.tcti).srk_name().hex(), f"the TPM at {spec.tcti}"
        return spec.kind, f"the {spec.kind} backend of this store"

    def _device_of(self, name: str) -> str | None:
        try:
            identity = json.loads(read_meta(self.store.path_of(name) / "card.db")["backend"])
        except (StoreError, KeyError, ValueError):
            return None
        kind = str(identity.get("kind"))
        return f"tpm:{identity.get('srk_name')}" if kind == "tpm" else kind

    def _personalise(
        self,
        stored: StoredCard,
        profile: Profile,
        managed: Managed,
        pin: bytes,
        puk_choice: tuple[bytes, str],
        key: ManagementKey,
        generate: bool,
        serial: int | None,
    ) -> tuple[int, tuple[int, ...]]:
        puk, puk_kind = puk_choice
        applet = open_piv(stored, serial=serial)
        data = applet.data
        assert isinstance(data, StoredPivData)
        stored.unlock(BINDING, "pin", DEFAULT_PIN)  # a fresh card: the factory PIN
        try:
            with stored.transaction():
                stored.put(
                    _CARD_RECORD,
                    json.dumps(
                        {"profile": profile.name, "made_by": "vsc create", "puk": puk_kind}
                    ).encode(),
                )
                data.set_managed(managed)
                data.set_secret(Reference.PIN, pin)
                data.set_secret(Reference.PUK, puk)
                data.set_management_key(key)
                data.add_admin_role()
            generated = self._generate(stored, applet, profile) if generate else ()
        finally:
            stored.lock(BINDING)
        return data.serial, generated

    def _generate(
        self, stored: StoredCard, applet: StoredPivApplet, profile: Profile
    ) -> tuple[int, ...]:
        """The profile's keys, generated on the card, each with a card-signed certificate."""
        subject = parse_subject(stored.name)
        for spec in profile.keys:
            with stored.transaction():
                applet.keys.generate(spec.slot, spec.key_type, spec.pin_policy, TouchPolicy.NEVER)
                der = self_signed(applet.keys, spec.slot, subject)
                applet.data.put_object(certificate_object(spec.slot), certificate_value(der))
        return tuple(spec.slot for spec in profile.keys)

    def check_pin(self, rules: PinRules, pin: str | None, *, default: bool = False) -> bytes:
        """The PIN block of ``pin`` (None: the factory PIN) if ``rules`` allow it."""
        raw = DEFAULT_PIN.rstrip(b"\xff") if pin is None else pin.encode("utf-8", "replace")
        error = rules.violation(raw)
        if error is not None:
            hint = " (the factory PIN 123456: give a PIN)" if default else ""
            raise PinPolicyViolation(
                error.rule, f"PIN refused{hint}: {error.reason} (rule {error.rule})"
            )
        return pin_block(raw)

    # -- listing and information ---------------------------------------------------------------

    def list(self) -> list[CardSummary]:
        """Every card of the store; details for those this backend can open now."""
        summaries = []
        for name in self.store.names():
            try:
                info = self.store.info(name)
            except (CardNotFound, CorruptStore):
                continue
            summary = CardSummary(name, info.backend, info.created, info.in_use)
            if self.backend is not None and not info.in_use and info.backend == self.backend.kind:
                with contextlib.suppress(StoreError, LifecycleError, ValueError):
                    summary = self._summarise(summary)
            summaries.append(summary)
        return summaries

    def _summarise(self, summary: CardSummary) -> CardSummary:
        with self._open(summary.name) as (stored, _, data):
            card = _card_record(stored)
            managed = data.managed
            state = describe_lock(managed, self.now)
            if data.tries(Reference.PIN).remaining == 0:
                state += ", PIN blocked"
            return replace(summary, serial=data.serial, profile=card.get("profile"), state=state)

    def info(self, name: str) -> CardReport:
        with self._open(name) as (stored, applet, data):
            now = self.now
            managed = data.managed
            backend = stored.backend
            slots = []
            occupied = {slot for slot in KEY_SLOTS if applet.keys.get(slot) is not None}
            for slot in sorted(occupied | _cert_slots(data)):
                info = applet.keys.get(slot)
                value = data.get_object(certificate_object(slot))
                slots.append(
                    SlotReport(
                        slot=f"{slot:02X}",
                        name=_SLOT_NAMES.get(slot, "retired key management"),
                        algorithm=info.key_type.name if info else None,
                        pin_policy=info.pin_policy.name.lower() if info else None,
                        touch_policy=info.touch_policy.name.lower() if info else None,
                        origin=info.origin.name.lower() if info else None,
                        certificate=_certificate_report(
                            value, spki(info.public_key) if info else None
                        ),
                    )
                )
            da = stored.anti_hammer.status()
            pending = _load_pending(stored, now)
            admin = managed.admin.healed(now) if managed else None
            return CardReport(
                name=name,
                path=str(stored.path),
                serial=data.serial,
                profile=_card_record(stored).get("profile"),
                managed=managed is not None,
                backend=backend.summary,
                backend_kind=backend.kind,
                hardware_bound=backend.hardware_bound,
                weaknesses=backend.weaknesses,
                created=self.store.info(name).created,
                lock=describe_lock(managed, now),
                locked=managed is not None and managed.locked(now),
                lock_at=managed.lock_at if managed else None,
                pin_policy=tuple(managed.pin_rules.describe()) if managed else (),
                pin_tries=_tries(data, Reference.PIN),
                pin_is_default=data.is_default(Reference.PIN),
                puk_tries=_tries(data, Reference.PUK),
                puk_is_default=data.is_default(Reference.PUK),
                puk_kind=_card_record(stored).get("puk"),
                admin_key_algorithm=data.management_key.key_type.name,
                admin_key_is_default=data.management_key.is_default,
                admin_tries=(admin.maximum, admin.remaining) if admin else None,
                admin_retry_after=admin.retry_after(now) if admin else None,
                admin_recovery_time=admin.recovery_time if admin else None,
                admin_unblock=data.has_admin_role(),
                anti_hammering={
                    "enforced_by": da.enforced_by,
                    "failed_tries": da.failed_tries,
                    "max_tries": da.parameters.max_tries,
                    "recovery_time": da.parameters.recovery_time,
                    "lockout_recovery": da.parameters.lockout_recovery,
                    "locked_out": da.locked_out,
                },
                pending=pending.request.describe() if pending else None,
                slots=tuple(slots),
            )

    # -- destruction ------------------------------------------------------------------------

    def destroy(self, name: str) -> None:
        """Erase a card: its files overwritten and removed (``tpmvscmgr destroy``)."""
        serial = None
        if self.backend is not None:
            with (
                contextlib.suppress(StoreError, LifecycleError, ValueError),
                self._open(name) as (_, _, data),
            ):
                serial = data.serial
        self.store.destroy(name)
        self.audit.write("destroy", name, f"{name}: destroyed", serial=serial)

    # -- locks ---------------------------------------------------------------------------------

    def lock(self, name: str, at: float | None = None) -> float:
        """Lock now, or from ``at`` on (never later than a lock already set); the lock time."""
        with self._open(name) as (_, _, data):
            managed = _managed(name, data)
            when = self.now if at is None else max(self.now, at)
            data.set_managed(managed.locked_from(when))
            lock_at = data.managed.lock_at if data.managed else when
        assert lock_at is not None
        scheduled = lock_at > self.now
        self.audit.write(
            "lock",
            name,
            f"{name}: {'lock scheduled for ' + format_local(lock_at) if scheduled else 'locked'}",
            at=lock_at,
            scheduled=scheduled,
        )
        return lock_at

    def begin_unlock(self, name: str, minutes: int) -> Pending:
        """A challenge asking to unlock for ``minutes`` (:data:`~.offline.UNRESTRICTED`)."""
        return self._begin(name, Request.new(Purpose.UNLOCK, minutes))

    def begin_unblock(self, name: str) -> Pending:
        """A challenge asking to reset the PIN (Windows' integrated unblock)."""
        return self._begin(name, Request.new(Purpose.UNBLOCK))

    def _begin(self, name: str, request: Request) -> Pending:
        with self._open(name) as (stored, _, data):
            _managed(name, data)
            expires = self.now + PENDING_LIFETIME
            stored.put(
                _PENDING_RECORD,
                json.dumps({"request": request.to_bytes().hex(), "expires": expires}).encode(),
            )
            serial = data.serial
        self.audit.write(
            "challenge",
            name,
            f"{name}: challenge issued to {request.describe()}",
            purpose=request.purpose.name.lower(),
            minutes=request.minutes if request.purpose is Purpose.UNLOCK else None,
        )
        return Pending(name, serial, request, expires)

    def pending(self, name: str) -> Pending | None:
        """The challenge outstanding for ``name``, if any."""
        with self._open(name) as (stored, _, data):
            request = _load_pending(stored, self.now)
            if request is None:
                return None
            return Pending(name, data.serial, request.request, request.expires)

    def complete(self, name: str, response: str, *, new_pin: str | None = None) -> Request:
        """Apply the pending request if ``response`` answers it; returns the request.

        An unblock needs ``new_pin`` (checked against the policy first, so a
        refused PIN costs no try). A response whose check characters fail is
        refused without a try; a wrong one costs one (:class:`WrongAdminKey`).
        """
        with self._open(name) as (stored, _, data):
            managed = _managed(name, data)
            pending = _load_pending(stored, self.now)
            if pending is None:
                raise NoPendingRequest(
                    f"{name} has no challenge outstanding (none issued, answered, or expired):"
                    " start again"
                )
            request = pending.request
            block = None
            if request.purpose is Purpose.UNBLOCK:
                if new_pin is None:
                    raise LifecycleError("an unblock needs the new PIN")
                block = self.check_pin(managed.pin_rules, new_pin)
            try:
                mac = parse_response(response)
            except MistypedCode as e:
                raise Refused(str(e)) from None
            self._spend_admin_try(data, name, "response")
            if not check_response(data.management_key.key, request, mac):
                self._admin_refused(data, name, "response")
            data.restore_admin_tries()
            if block is not None:
                # Used up first: a crash before the reset means asking again, never a replay.
                stored.delete(_PENDING_RECORD)
                data.reset_pin_as_admin(block)
            else:
                with stored.transaction():
                    stored.delete(_PENDING_RECORD)
                    lock_at = None if request.unrestricted else self.now + 60 * request.minutes
                    data.set_lock(lock_at)
        self._audit_completed(name, request)
        return request

    def _audit_completed(self, name: str, request: Request) -> None:
        if request.purpose is Purpose.UNBLOCK:
            self.audit.write("unblock", name, f"{name}: PIN reset with the admin key's response")
            return
        until = None if request.unrestricted else self.now + 60 * request.minutes
        self.audit.write(
            "unlock",
            name,
            f"{name}: unlocked"
            + (" (unrestricted)" if until is None else f" until {format_local(until)}")
            + f" by the admin key's response ({describe_minutes(request.minutes)})",
            minutes=None if request.unrestricted else request.minutes,
            duration=describe_minutes(request.minutes),
            until=until,
        )

    def _spend_admin_try(self, data: StoredPivData, name: str, what: str) -> None:
        if data.managed is None:
            return
        try:
            self._tries_left = data.consume_admin_try(self.now)
        except ValueError:
            retry = data.admin_tries(self.now)[2]
            self.audit.write(
                "admin-key-blocked", name, f"{name}: {what} refused, the admin key is blocked"
            )
            raise AdminKeyBlocked(retry) from None

    def _admin_refused(self, data: StoredPivData, name: str, what: str) -> None:
        left = self._tries_left if data.managed is not None else None
        self.audit.write(
            "admin-key-refused",
            name,
            f"{name}: wrong {what}" + (f" ({left} tries left)" if left is not None else ""),
            what=what,
            tries_left=left,
        )
        counted = f": {left} tries left before the admin key blocks" if left is not None else ""
        raise WrongAdminKey(f"wrong {what}{counted}", left)

    def _check_admin_key(self, data: StoredPivData, name: str, given: ManagementKey) -> None:
        """An operation that needs the admin key: the try is counted before the comparison."""
        self._spend_admin_try(data, name, "admin key")
        if not hmac.compare_digest(given.key, data.management_key.key):
            self._admin_refused(data, name, "admin key")
        if data.managed is not None:
            data.restore_admin_tries()

    # -- provisioning -------------------------------------------------------------------------

    def provision(
        self,
        name: str,
        admin_key: ManagementKey,
        slot: int,
        key_file: Path,
        *,
        certificate: Path | None = None,
        password: bytes | None = None,
        pin_policy: PinPolicy = PinPolicy.DEFAULT,
        touch_policy: TouchPolicy = TouchPolicy.DEFAULT,
        event: str = "provision",
    ) -> SlotReport:
        """Import a server-generated key (PKCS#8 or PKCS#12) and its certificate into ``slot``."""
        _user_slot(slot)
        material = load_key_file(key_file, password)
        cert = load_certificate(certificate) if certificate else material.certificate
        public = spki(material.private_key.public_key())
        if cert is not None and spki(cert.public_key()) != public:
            raise ProvisioningError("the certificate is not for this key")
        if event == "renew" and cert is None:
            raise ProvisioningError("a renewal needs the new certificate")
        with self._open(name) as (stored, applet, data):
            self._check_admin_key(data, name, admin_key)
            old = _certificate_report(data.get_object(certificate_object(slot)), None)
            with stored.transaction():
                applet.keys.import_key(
                    slot,
                    KeyType.of(material.private_key),
                    material.private_key,
                    pin_policy,
                    touch_policy,
                )
                value = certificate_value(cert.public_bytes(Encoding.DER)) if cert else b""
                data.put_object(certificate_object(slot), value)  # b"": the old one goes
            report = self._slot_report(applet, data, slot)
        self._audit_slot(event, name, slot, report, old, source=key_file.name)
        return report

    def renew(
        self,
        name: str,
        admin_key: ManagementKey,
        slot: int,
        certificate: Path,
        *,
        key_file: Path | None = None,
        password: bytes | None = None,
    ) -> SlotReport:
        """Write a new certificate into ``slot`` (and a new key, given one); the old one goes."""
        if key_file is not None:
            return self.provision(
                name,
                admin_key,
                slot,
                key_file,
                certificate=certificate,
                password=password,
                event="renew",
            )
        _user_slot(slot)
        cert = load_certificate(certificate)
        with self._open(name) as (stored, applet, data):
            self._check_admin_key(data, name, admin_key)
            info = applet.keys.get(slot)
            if info is None:
                raise ProvisioningError(f"slot {slot:02X} holds no key: give the new key too")
            if spki(cert.public_key()) != spki(info.public_key):
                raise ProvisioningError(f"the certificate is not for the key in slot {slot:02X}")
            old = _certificate_report(data.get_object(certificate_object(slot)), None)
            with stored.transaction():
                data.put_object(
                    certificate_object(slot), certificate_value(cert.public_bytes(Encoding.DER))
                )
                stored.scrub()
            report = self._slot_report(applet, data, slot)
        self._audit_slot("renew", name, slot, report, old, source=certificate.name)
        return report

    def reprovision(
        self,
        name: str,
        admin_key: ManagementKey,
        *,
        pin: str | None = None,
        generate: bool = False,
    ) -> tuple[int, ...]:
        """Erase every key and object (but the attestation ones), keep the card and its admin
        key, policy and lock; optionally a new PIN and the profile's keys. The erased slots."""
        with self._open(name) as (stored, applet, data):
            managed = _managed(name, data)
            block = self.check_pin(managed.pin_rules, pin) if pin is not None else None
            self._check_admin_key(data, name, admin_key)
            erased = tuple(
                sorted(s for s in KEY_SLOTS - {ATTESTATION_SLOT} if applet.keys.get(s) is not None)
            )
            with stored.transaction():
                for slot in erased:
                    applet.keys.delete(slot)
                for tag in list(data.record.objects):
                    if tag != ObjectId.ATTESTATION:
                        data.put_object(tag, b"")
                stored.delete(_PENDING_RECORD)
                stored.scrub()
            if block is not None:
                data.reset_pin_as_admin(block)
            generated: tuple[int, ...] = ()
            if generate:
                profile = PROFILES.get(str(_card_record(stored).get("profile")), None)
                profile = profile or PROFILES[DEFAULT_PROFILE]
                with data.as_admin():  # the PIN-bound keys sign their certificates
                    generated = self._generate(stored, applet, profile)
        self.audit.write(
            "reprovision",
            name,
            f"{name}: content erased ({', '.join(f'{s:02X}' for s in erased) or 'no keys'})"
            + (", new PIN" if block is not None else "")
            + (f", generated {', '.join(f'{s:02X}' for s in generated)}" if generated else ""),
            erased=[f"{s:02X}" for s in erased],
            pin_reset=block is not None,
            generated=[f"{s:02X}" for s in generated],
        )
        return erased

    def signing_request(
        self, name: str, slot: int, subject: str, *, pin: str | None = None
    ) -> bytes:
        """A PKCS#10 request signed by the key in ``slot`` (the PIN if the key needs one)."""
        _user_slot(slot)
        with self._open(name) as (stored, applet, data):
            info = applet.keys.get(slot)
            if info is None:
                raise ProvisioningError(f"slot {slot:02X} holds no key")
            if resolve_pin_policy(slot, info.pin_policy) is not PinPolicy.NEVER:
                if pin is None:
                    raise LifecycleError(f"the key in slot {slot:02X} needs the PIN")
                self._verify_pin(applet, data, pin)
            try:
                return card_signing_request(applet.keys, slot, parse_subject(subject))
            finally:
                stored.lock(BINDING)

    def _verify_pin(self, applet: StoredPivApplet, data: StoredPivData, pin: str) -> None:
        """VERIFY's rules: the lock, then the counter decremented before the comparison."""
        if applet.locked():
            raise Refused("the card is locked")
        tries = data.tries(Reference.PIN)
        if tries.remaining == 0:
            raise Refused("the PIN is blocked")
        left = data.consume_try(Reference.PIN)
        if not data.matches(Reference.PIN, pin_block(pin)):
            raise Refused(f"wrong PIN ({left} tries left)")
        data.restore_tries(Reference.PIN)

    def _slot_report(self, applet: StoredPivApplet, data: StoredPivData, slot: int) -> SlotReport:
        info = applet.keys.get(slot)
        return SlotReport(
            slot=f"{slot:02X}",
            name=_SLOT_NAMES.get(slot, "retired key management"),
            algorithm=info.key_type.name if info else None,
            pin_policy=info.pin_policy.name.lower() if info else None,
            touch_policy=info.touch_policy.name.lower() if info else None,
            origin=info.origin.name.lower() if info else None,
            certificate=_certificate_report(
                data.get_object(certificate_object(slot)), spki(info.public_key) if info else None
            ),
        )

    def _audit_slot(
        self,
        event: str,
        name: str,
        slot: int,
        report: SlotReport,
        old: CertificateReport | None,
        *,
        source: str,
    ) -> None:
        cert = report.certificate
        what = f"certificate {cert.subject} (serial {cert.serial})" if cert else "no certificate"
        replaced = f", replacing serial {old.serial}" if old else ""
        self.audit.write(
            event,
            name,
            f"{name}: slot {report.slot} {report.algorithm} key with {what}{replaced}",
            slot=report.slot,
            algorithm=report.algorithm,
            origin=report.origin,
            certificate_serial=cert.serial if cert else None,
            certificate_subject=cert.subject if cert else None,
            not_after=cert.not_after if cert else None,
            replaced_certificate_serial=old.serial if old else None,
            source=source,
        )


# -- helpers --------------------------------------------------------------------------------


def chosen_rules(profile: Profile, rules: PinRules) -> PinRules:
    """``rules`` checked against the PIV PIN's bounds."""
    return profile.rules(
        min_length=rules.min_length,
        max_length=rules.max_length,
        classes={
            name: rules.rule(name) for name in ("lowercase", "uppercase", "digits", "symbols")
        },
    )


def _puk(puk: str | None) -> tuple[bytes, str]:
    if puk is None or puk == "none":
        digits = "".join(secrets.choice("0123456789") for _ in range(PIV_PIN_MAX))
        return digits.encode(), "random (unknown)"
    if puk == "default":
        return DEFAULT_PUK, "default"
    raw = puk.encode()
    if not 6 <= len(raw) <= PIV_PIN_MAX or any(not 0x20 <= b < 0x7F for b in raw):
        raise PinPolicyViolation("puk", "a PUK has 6 to 8 printable ASCII characters")
    return pin_block(raw, "PUK"), "chosen"


def _admin_key(
    choice: str | ManagementKey, key_type: ManagementKeyType
) -> tuple[ManagementKey, str]:
    if isinstance(choice, ManagementKey):
        return choice, "chosen"
    if choice == "random":
        return _random_admin_key(key_type), "random"
    if choice == "default":
        if key_type is not ManagementKeyType.TDES:
            return ManagementKey(key_type, DEFAULT_MANAGEMENT_KEY[: key_type.key_length]), "default"
        return ManagementKey(key_type, DEFAULT_MANAGEMENT_KEY), "default"
    return parse_admin_key(choice, key_type), "chosen"


def _managed(name: str, data: StoredPivData) -> Managed:
    managed = data.managed
    if managed is None:
        raise NotManaged(name)
    return managed


def _user_slot(slot: int) -> None:
    if slot == ATTESTATION_SLOT or not (slot in (0x9A, 0x9C, 0x9D, 0x9E) or 0x82 <= slot <= 0x95):
        raise ProvisioningError(f"{slot:02X} is not a key slot to provision (9A 9C 9D 9E 82-95)")


def _tries(data: StoredPivData, ref: Reference) -> tuple[int, int]:
    tries = data.tries(ref)
    return tries.maximum, tries.remaining


def _cert_slots(data: StoredPivData) -> set[int]:
    slots = set()
    for slot in (0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)):
        if data.get_object(certificate_object(slot)):
            slots.add(slot)
    return slots


def _card_record(stored: StoredCard) -> dict[str, Any]:
    raw = stored.get(_CARD_RECORD)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class _Stored:
    request: Request
    expires: float


def _load_pending(stored: StoredCard, now: float) -> _Stored | None:
    raw = stored.get(_PENDING_RECORD)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        request = Request.from_bytes(bytes.fromhex(d["request"]))
        expires = float(d["expires"])
    except (KeyError, ValueError, TypeError):
        return None
    if now >= expires:
        return None
    return _Stored(request, expires)
