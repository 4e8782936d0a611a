"""``vsc list`` and ``vsc info``: what a card is, holds and allows, never its secrets.

The reports are frozen dataclasses (the CLI prints them or dumps them as
JSON); :class:`Reporting` builds them from the card's own state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from applets.piv.keys import ATTESTATION_SLOT, KEY_SLOTS
from applets.piv.managed import Managed
from applets.piv.objects import certificate_object
from applets.piv.state import Reference
from vsc.store.errors import CardNotFound, CorruptStore, StoreError
from vsc.store.piv import StoredPivApplet, StoredPivData
from vsc.sw import ApduError
from vsc.tlv import parse_tlvs

from .base import ManagerBase, card_record, load_pending
from .certs import spki
from .errors import LifecycleError
from .profiles import ecc_policy
from .timespec import format_local

__all__ = [
    "CardReport",
    "CardSummary",
    "CertificateReport",
    "Reporting",
    "SlotReport",
    "certificate_report",
    "describe_lock",
    "slot_report",
]

SLOT_NAMES = {
    0x9A: "authentication",
    0x9C: "signature",
    0x9D: "key management",
    0x9E: "card authentication",
    ATTESTATION_SLOT: "attestation",
}


@dataclass(frozen=True, slots=True)
class CardSummary:
    """One line of ``vsc list``; details are None for a card that could not be opened.

    ``damaged`` says what is wrong with a damaged card (then ``backend`` and
    ``created`` may be unknown: "?" and None).
    """

    name: str
    backend: str
    created: float | None
    in_use: bool
    serial: int | None = None
    profile: str | None = None
    state: str | None = None
    damaged: str | None = None


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
    #: Where the private key lives: "tpm" or "software" (None: no key).
    key_location: str | None = None
    #: Where it lives and what authorises it: "tpm (PIN)", "tpm (no PIN)", "software", ...
    key_authorisation: str | None = None


@dataclass(frozen=True, slots=True)
class CardReport:
    """``vsc info``: everything about a card except its secrets."""

    name: str
    path: str
    serial: int
    profile: str | None
    #: The card the PIV applet is (docs/piv.md, "Profiles"), from its PIV record.
    card_profile: str
    #: The ECC keys it takes (:func:`.profiles.ecc_policy`): which curves, in the TPM or not.
    ecc: str
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
    #: How the PUK was chosen at creation: "disabled", "default", "chosen" (older cards:
    #: "random (unknown)"); None if the card was not made by vsc create. History only:
    #: :attr:`puk_state` is what the card holds now.
    puk_kind: str | None
    #: The PIN as the card holds it now: "set", "factory default" or "blocked".
    pin_state: str
    #: The PUK as the card holds it now: "set", "factory default", "blocked", or
    #: "disabled" (blocked on a managed card, where nothing can re-enable it).
    puk_state: str
    admin_key_algorithm: str
    admin_key_is_default: bool
    admin_tries: tuple[int, int] | None
    admin_retry_after: float | None
    admin_recovery_time: int | None
    admin_unblock: bool
    anti_hammering: dict[str, Any]
    pending: str | None
    slots: tuple[SlotReport, ...]
    #: Rollback protection: the TPM counter and whether the files are in step with it.
    rollback: str = ""
    #: The PCRs the card key is sealed to, or that it is not bound to the boot state.
    boot_state: str = ""


def describe_lock(managed: Managed | None, now: float) -> str:
    """``unlocked``, ``locked``, ``unlocked until T``."""
    if managed is None:
        return "not managed (no lock)"
    if managed.lock_at is None:
        return "unlocked"
    if managed.locked(now):
        return "locked"
    return f"unlocked until {format_local(managed.lock_at)}"


def certificate_report(value: bytes | None, public_spki: bytes | None) -> CertificateReport | None:
    """The certificate in a PIV certificate object (None if none or unreadable)."""
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


def slot_report(applet: StoredPivApplet, data: StoredPivData, slot: int) -> SlotReport:
    """The key in ``slot`` and its certificate."""
    info = applet.keys.get(slot)
    return SlotReport(
        slot=f"{slot:02X}",
        name=SLOT_NAMES.get(slot, "retired key management"),
        algorithm=info.key_type.name if info else None,
        pin_policy=info.pin_policy.name.lower() if info else None,
        touch_policy=info.touch_policy.name.lower() if info else None,
        origin=info.origin.name.lower() if info else None,
        certificate=certificate_report(
            data.get_object(certificate_object(slot)), spki(info.public_key) if info else None
        ),
        key_location=info.location.name.lower() if info and info.location else None,
        key_authorisation=applet.stored_keys.authorisation(slot) if info else None,
    )


def _tries(data: StoredPivData, ref: Reference) -> tuple[int, int]:
    tries = data.tries(ref)
    return tries.maximum, tries.remaining


def secret_state(data: StoredPivData, ref: Reference) -> str:
    """What the card holds for ``ref`` now (see :attr:`CardReport.puk_state`)."""
    if data.tries(ref).remaining == 0:
        return "disabled" if ref is Reference.PUK and data.managed is not None else "blocked"
    return "factory default" if data.is_default(ref) else "set"


def _cert_slots(data: StoredPivData) -> set[int]:
    slots = set()
    for slot in (0x9A, 0x9C, 0x9D, 0x9E, *range(0x82, 0x96)):
        if data.get_object(certificate_object(slot)):
            slots.add(slot)
    return slots


class Reporting(ManagerBase):
    """``list`` and ``info``."""

    def list(self) -> list[CardSummary]:
        """Every card of the store; details for those this backend can open now."""
        summaries = []
        for name in self.store.names():
            try:
                info = self.store.info(name)
            except CardNotFound:
                continue  # destroyed meanwhile
            except CorruptStore as e:
                summaries.append(CardSummary(name, "?", None, False, damaged=str(e)))
                continue
            summary = CardSummary(name, info.backend, info.created, info.in_use)
            if self.backend is not None and not info.in_use and info.backend == self.backend.kind:
                try:
                    summary = self._summarise(summary)
                except CorruptStore as e:
                    summary = replace(summary, damaged=str(e))
                except (StoreError, LifecycleError, ValueError):
                    pass  # another key, a GIDS card...: what the files tell
            summaries.append(summary)
        return summaries

    def _summarise(self, summary: CardSummary) -> CardSummary:
        with self._open(summary.name) as (stored, _, data):
            card = card_record(stored)
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
            occupied = {slot for slot in KEY_SLOTS if applet.keys.get(slot) is not None}
            slots = [
                slot_report(applet, data, slot) for slot in sorted(occupied | _cert_slots(data))
            ]
            da = stored.anti_hammer.status()
            pending = load_pending(stored, now)
            admin = managed.admin.healed(now) if managed else None
            record = card_record(stored)
            return CardReport(
                name=name,
                path=str(stored.path),
                serial=data.serial,
                profile=record.get("profile"),
                card_profile=data.profile.name,
                ecc=ecc_policy(data.profile.key_types, tpm=backend.kind == "tpm"),
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
                puk_kind=record.get("puk"),
                pin_state=secret_state(data, Reference.PIN),
                puk_state=secret_state(data, Reference.PUK),
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
                rollback=stored.rollback_summary,
                boot_state=stored.boot_state_summary,
            )
