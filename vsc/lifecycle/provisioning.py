"""``vsc provision``, ``renew``, ``reprovision``, ``csr``: keys and certificates in a card's slots.

MyID's provisioning: a server-generated key (PKCS#8 or PKCS#12) and its
certificate imported under the admin key, a certificate renewed in place,
the whole content erased for a new holder, and a PKCS#10 request signed by
a key that never leaves the card. Each change is one store transaction and
is audited with the certificate's serial, never with key material.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from applets.piv.keys import (
    ATTESTATION_SLOT,
    KEY_SLOTS,
    KeyType,
    PinPolicy,
    TouchPolicy,
    resolve_pin_policy,
)
from applets.piv.mgmt import ManagementKey
from applets.piv.objects import ObjectId, certificate_object, certificate_value
from applets.piv.state import Reference
from vsc.store.piv import BINDING, StoredPivApplet, StoredPivData

from .base import PENDING_RECORD, ManagerBase, card_record, managed_or_refuse, pin_block
from .certs import ProvisioningError, load_certificate, load_key_file, parse_subject, spki
from .certs import signing_request as card_signing_request
from .creation import generate_keys
from .errors import LifecycleError, Refused
from .profiles import DEFAULT_PROFILE, PROFILES
from .reports import CertificateReport, SlotReport, certificate_report, slot_report

__all__ = ["Provisioning"]


def _user_slot(slot: int) -> None:
    if slot == ATTESTATION_SLOT or not (slot in (0x9A, 0x9C, 0x9D, 0x9E) or 0x82 <= slot <= 0x95):
        raise ProvisioningError(f"{slot:02X} is not a key slot to provision (9A 9C 9D 9E 82-95)")


class Provisioning(ManagerBase):
    """``provision``, ``renew``, ``reprovision``, ``signing_request``."""

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
            old = certificate_report(data.get_object(certificate_object(slot)), None)
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
            report = slot_report(applet, data, slot)
        self._audit_slot(event, name, report, old, source=key_file.name)
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
            old = certificate_report(data.get_object(certificate_object(slot)), None)
            with stored.transaction():
                data.put_object(
                    certificate_object(slot), certificate_value(cert.public_bytes(Encoding.DER))
                )
                stored.scrub()
            report = slot_report(applet, data, slot)
        self._audit_slot("renew", name, report, old, source=certificate.name)
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
            managed = managed_or_refuse(name, data)
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
                stored.delete(PENDING_RECORD)
                stored.scrub()
            if block is not None:
                data.reset_pin_as_admin(block)
            generated: tuple[int, ...] = ()
            if generate:
                profile = PROFILES.get(str(card_record(stored).get("profile")), None)
                profile = profile or PROFILES[DEFAULT_PROFILE]
                with data.as_admin():  # the PIN-bound keys sign their certificates
                    generated = generate_keys(stored, applet, profile)
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

    def _audit_slot(
        self,
        event: str,
        name: str,
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
