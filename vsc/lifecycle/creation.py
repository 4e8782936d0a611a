"""``vsc create`` and ``vsc destroy``: a managed card's birth and end (tpmvscmgr create/destroy).

A card made here is *managed*: a PIN policy, a counted admin (management)
key, a lock, and a PIN binding with an ``admin`` role so the helpdesk can
reset the PIN (see :mod:`vsc.store.piv`). The capacity check and the
creation happen under the store's creation lock, so two creations cannot
both take the last place.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass

from applets.piv.keys import TouchPolicy
from applets.piv.managed import DEFAULT_ADMIN_RECOVERY, DEFAULT_ADMIN_TRIES, AdminCounter, Managed
from applets.piv.mgmt import ManagementKey, ManagementKeyType
from applets.piv.objects import certificate_object, certificate_value
from applets.piv.pinrules import PinRules
from applets.piv.state import DEFAULT_PIN, DEFAULT_PUK, DEFAULT_TRIES, Reference
from vsc.store import CardSettings, StoredCard
from vsc.store.errors import CardExists, StoreError
from vsc.store.piv import BINDING, StoredPivApplet, StoredPivData, open_piv

from .adminkey import choose_admin_key
from .base import CARD_RECORD, ManagerBase, audited_creation, pin_block
from .certs import parse_subject, self_signed
from .errors import LifecycleError, PinPolicyViolation
from .profiles import DEFAULT_PROFILE, PIV_PIN_MAX, PROFILES, Profile

__all__ = ["MAX_TRIES", "Created", "Creating", "chosen_rules", "generate_keys"]

#: The most PIN or PUK tries ``create`` sets: VERIFY's 63Cx tells at most 15 left.
MAX_TRIES = 15


@dataclass(frozen=True, slots=True)
class Created:
    """What :meth:`Creating.create` made. ``admin_key`` is set only for a random key,
    to be shown once; the caller must not log it."""

    name: str
    serial: int
    profile: str
    admin_key: ManagementKey | None
    generated: tuple[int, ...]
    locked: bool


def chosen_rules(profile: Profile, rules: PinRules) -> PinRules:
    """``rules`` checked against the PIV PIN's bounds."""
    return profile.rules(
        min_length=rules.min_length,
        max_length=rules.max_length,
        classes={
            name: rules.rule(name) for name in ("lowercase", "uppercase", "digits", "symbols")
        },
    )


def generate_keys(stored: StoredCard, applet: StoredPivApplet, profile: Profile) -> tuple[int, ...]:
    """The profile's keys, generated on the card, each with a card-signed certificate."""
    subject = parse_subject(stored.name)
    for spec in profile.keys:
        with stored.transaction():
            applet.keys.generate(spec.slot, spec.key_type, spec.pin_policy, TouchPolicy.NEVER)
            der = self_signed(applet.keys, spec.slot, subject)
            applet.data.put_object(certificate_object(spec.slot), certificate_value(der))
    return tuple(spec.slot for spec in profile.keys)


def _puk(puk: str | None) -> tuple[bytes, str]:
    if puk is None or puk == "none":
        # A random value, and the counter at zero (see _personalise): disabled.
        digits = "".join(secrets.choice("0123456789") for _ in range(PIV_PIN_MAX))
        return digits.encode(), "disabled"
    if puk == "default":
        return DEFAULT_PUK, "default"
    raw = puk.encode()
    if not 6 <= len(raw) <= PIV_PIN_MAX or any(not 0x20 <= b < 0x7F for b in raw):
        raise PinPolicyViolation("puk", "a PUK has 6 to 8 printable ASCII characters")
    return pin_block(raw, "PUK"), "chosen"


class Creating(ManagerBase):
    """``create`` and ``destroy``."""

    @audited_creation
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
        pin_tries: int = DEFAULT_TRIES,
        puk_tries: int = DEFAULT_TRIES,
        pin_generated: bool = False,
        settings: CardSettings | None = None,
    ) -> Created:
        """Create and personalise a managed card (``tpmvscmgr create``).

        ``pin`` None keeps the factory PIN 123456 (if the policy allows it);
        ``puk`` None sets a random PUK nobody learns (unblocking then goes
        through the admin key, as on Windows), ``"default"`` keeps 12345678.
        ``admin_key``: ``"random"`` (returned once in :attr:`Created.admin_key`),
        ``"default"`` (the factory key: anyone can then answer challenges), hex,
        or a :class:`ManagementKey`. ``pin_tries`` and ``puk_tries``: wrong
        values before each blocks (1 to :data:`MAX_TRIES`). ``pin_generated``: the
        caller made ``pin`` at random (the audit says so; never the PIN).
        ``settings``: what the card fixes at creation (software keys allowed, PCR
        binding).
        """
        for what, tries in (("PIN", pin_tries), ("PUK", puk_tries)):
            if not 1 <= tries <= MAX_TRIES:
                raise LifecycleError(
                    f"{what} tries: {tries} is not 1 to {MAX_TRIES} (a PIV card tells the"
                    f" tries left in VERIFY's status word, 63C0 to 63CF)"
                )
        spec = self.require_backend()
        chosen = PROFILES.get(profile)
        if chosen is None:
            raise LifecycleError(f"unknown profile {profile!r}: choose {', '.join(PROFILES)}")
        rules = chosen.rules() if rules is None else chosen_rules(chosen, rules)
        pin_value = self.check_pin(rules, pin, default=pin is None)
        puk_value, puk_kind = _puk(puk)
        key, key_kind = choose_admin_key(admin_key, admin_key_type or chosen.admin_key_type)
        counter = AdminCounter(admin_tries, admin_tries, admin_recovery, self.now)
        # The card is made whole before it appears under its name (a crash leaves none),
        # under the creation lock: the capacity check and the creation are one step.
        with self.creation_lock():
            if self.store.exists(name):
                raise CardExists(name, self.store.path_of(name))
            with (
                self.reserve(spec, name),
                self.store.creating(name, spec, settings=settings) as stored,
            ):
                created_serial, generated = self._personalise(
                    stored,
                    chosen,
                    Managed(rules, counter, self.now if locked else None),
                    pin_value,
                    (puk_value, puk_kind),
                    key,
                    generate,
                    serial,
                    (pin_tries, puk_tries),
                )
        self.audit.write(
            "create",
            name,
            f"{name}: created (profile {chosen.name}, serial {created_serial},"
            f" {spec.kind} backend)",
            serial=created_serial,
            profile=chosen.name,
            backend=spec.kind,
            **self.capacity_override(),
        )
        slots = ", ".join(f"{slot:02X}" for slot in generated)
        pin_kind = "default" if pin is None else "generated" if pin_generated else "chosen"
        self.audit.write(
            "personalise",
            name,
            f"{name}: personalised ({key_kind} {key.key_type.name} admin key,"
            f" {'factory' if pin_kind == 'default' else pin_kind} PIN, PUK {puk_kind}"
            + (f", generated {slots}" if generated else "")
            + (", locked" if locked else "")
            + ")",
            admin_key_kind=key_kind,
            admin_key_algorithm=key.key_type.name,
            puk_kind=puk_kind,
            pin_kind=pin_kind,
            pin_policy=rules.to_dict(),
            pin_tries=pin_tries,
            puk_tries=puk_tries,
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
        tries: tuple[int, int],
    ) -> tuple[int, tuple[int, ...]]:
        puk, puk_kind = puk_choice
        applet = open_piv(stored, serial=serial, profile=profile.card, provision=True)
        data = applet.data
        assert isinstance(data, StoredPivData)
        stored.unlock(BINDING, "pin", DEFAULT_PIN)  # a fresh card: the factory PIN
        if tries != (DEFAULT_TRIES, DEFAULT_TRIES):
            data.set_retries(*tries)  # still a factory card: re-sealed under the defaults
            stored.unlock(BINDING, "pin", DEFAULT_PIN)  # (SET PIN RETRIES locks the binding)
        try:
            with stored.transaction():
                stored.put(
                    CARD_RECORD,
                    json.dumps(
                        {"profile": profile.name, "made_by": "vsc create", "puk": puk_kind}
                    ).encode(),
                )
                data.set_managed(managed)
                data.set_secret(Reference.PIN, pin)
                data.set_secret(Reference.PUK, puk)
                data.set_management_key(key)
                data.add_admin_role()
                if puk_kind == "disabled":
                    data.block(Reference.PUK)
            generated = generate_keys(stored, applet, profile) if generate else ()
        finally:
            stored.lock(BINDING)
        return data.serial, generated

    def destroy(self, name: str) -> None:
        """Erase a card: its files overwritten and removed (``tpmvscmgr destroy``)."""
        serial = None
        if self.backend is not None:
            with (
                contextlib.suppress(StoreError, LifecycleError, ValueError),
                self._open(name) as (_, _, data),
            ):
                serial = data.serial
        self.audit.check()  # a destruction that could not be audited is not done
        self.store.destroy(name, self.backend)
        self.unregister(name)
        self.audit.write("destroy", name, f"{name}: destroyed", serial=serial)
