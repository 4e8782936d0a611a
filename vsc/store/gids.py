"""The GIDS applet over the card store: files, keys, PIN/PUK and counters, each change durable.

An adapter between :mod:`applets.gids` (which knows nothing of files or TPMs)
and :class:`vsc.store.StoredCard`, as :mod:`vsc.store.piv` is for PIV.
:func:`open_gids` returns the applet of a stored card, provisioning a
factory-empty GIDS card the first time.

Theory of operation
-------------------
Records of a card (``vsc.store`` names, protections)::

    gids/record            CARD   serial, life cycle, PIN/PUK lengths and counters,
                                  the administrator counter, PIN policy
    gids/file/A010         CARD   one per file: FCP, state, data objects; B080's holds
                                  the administrator key
    gids/key/81/info       CARD   key type, origin, public key
    gids/key/81/key        bound("gids"), or CARD for a key usable without the PIN

**Commits.** :class:`StoredGidsStore` is the applet's commit point: the
record and the files that changed are written in one transaction, so a
retry counter is durable before the comparison it pays for.

**Personalisation.** A factory card has no PIN, so nothing can be bound to
one yet: while the application is in its creation state the PIN and PUK
*values* are kept in ``gids/record`` (under the card key, like everything of
a card being personalised; no key can exist yet). ACTIVATE FILE on the
application creates the binding ``gids`` in the same transaction that
blanks the values: roles ``pin``, ``puk`` (if set) and ``admin`` (a value
derived from the administrator key, if set), and scrubs the old record
versions from the files.

**PIN binding.** From then on the values are never stored: VERIFY asks the
backend to unseal the ``pin`` role (with a TPM, the TPM compares and its
dictionary-attack logic counts the failure), a refused-without-comparing
try (lockout) is given back and answered ``6985``. A correct PIN or PUK
unlocks the binding; :class:`StoredGidsApplet` locks it again after every
command and session end that leaves no channel with the PIN verified. A
blocking wrong try is reported by the applet itself (``pin-blocked``,
``puk-blocked``). Checking a value, giving a try back, opening the ``admin``
role and relocking work as for PIV, in :mod:`vsc.store.pinbinding`.

**Changes.** A PIN change re-seals ``pin`` with the binding opened by the
old PIN; an unblock or a new PUK authorised by the administrator key opens
it with the ``admin`` role; a new administrator key re-seals ``admin``. The
card keeps its administrator key (under the card key: GENERAL AUTHENTICATE
needs it without any PIN), so whoever can read the card key can open the
``admin`` role: the PIN-bound keys of a GIDS card are as safe as its card
key (as with PIV's managed cards, docs/lifecycle.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from applets.gids.applet import GidsApplet
from applets.gids.files import GidsFile, LifeCycle
from applets.gids.security import Session
from applets.gids.state import (
    GidsData,
    GidsRecord,
    Reference,
    Secret,
    file_from_dict,
    file_to_dict,
    random_serial,
)
from applets.piv.keys import PinPolicy
from vsc.sw import ConditionsNotSatisfied, SecurityStatusNotSatisfied

from .application import held_application, require_application
from .card import CARD, StoredCard, bound
from .errors import BindingLocked, CorruptStore
from .pinbinding import ADMIN_ROLE, PinBindingApplet, PinBindingData
from .piv import StoredKeyStore

__all__ = [
    "ADMIN_ROLE",
    "BINDING",
    "RECORD",
    "StoredGidsApplet",
    "StoredGidsData",
    "StoredGidsKeyStore",
    "StoredGidsStore",
    "admin_secret",
    "has_gids",
    "open_gids",
]

#: The binding sealed under the PIN (role "pin"), the PUK ("puk") and the admin key.
BINDING = "gids"
RECORD = "gids/record"
_FILE_PREFIX = "gids/file/"
_KEY_PREFIX = "gids/key/"
_ROLES = {Reference.PIN: "pin", Reference.PUK: "puk"}


def admin_secret(key: bytes) -> bytes:
    """What the ``admin`` role is sealed under: the administrator key, labelled."""
    return b"gids-admin-key\0" + key


def _file_name(fid: int) -> str:
    return f"{_FILE_PREFIX}{fid:04X}"


def _blank(secret: Secret | None) -> Secret | None:
    return None if secret is None else replace(secret, value=b"")


def _storable(record: GidsRecord) -> GidsRecord:
    """What ``gids/record`` holds: no values once the binding holds them."""
    if record.state is LifeCycle.CREATION:
        return record
    return replace(record, pin=_blank(record.pin), puk=_blank(record.puk))


class StoredGidsKeyStore(StoredKeyStore):
    """GIDS private keys (slots are key references), PIN-protected ones sealed to ``gids``."""

    prefix = _KEY_PREFIX
    binding = BINDING

    def _protection(self, slot: int, pin_policy: PinPolicy) -> str:
        return CARD if pin_policy is PinPolicy.NEVER else bound(BINDING)


class StoredGidsStore:
    """The applet's commit point: ``save`` writes the record and changed files, durably."""

    def __init__(self, card: StoredCard) -> None:
        self._card = card
        self._saved: GidsRecord | None = None

    def save(self, record: GidsRecord) -> None:
        previous = self._saved
        old_files: Mapping[int, GidsFile] = previous.files if previous is not None else {}
        # PIN/PUK values of a card being personalised changed, or were blanked by activation.
        scrub = (
            previous is not None
            and previous.state is LifeCycle.CREATION
            and (
                (previous.pin, previous.puk, previous.state)
                != (record.pin, record.puk, record.state)
            )
        )
        with self._card.transaction():
            self._card.put(RECORD, _storable(record).to_json(with_files=False).encode())
            for fid in old_files.keys() - record.files.keys():
                self._card.delete(_file_name(fid))
                scrub = True
            for fid, file in record.files.items():
                old = old_files.get(fid)
                if old is not file:
                    self._card.put(_file_name(fid), json.dumps(file_to_dict(file)).encode())
                    scrub = scrub or (old is not None and old.secret is not None)
            if scrub:
                # Old PIN values (creation state), administrator keys and deleted files
                # must not linger in the database's free pages.
                self._card.scrub()
        self._saved = record

    def forget(self, record: GidsRecord) -> None:
        """A transaction around :meth:`save` rolled back: ``record`` is what is stored."""
        self._saved = record

    def load(self) -> GidsRecord | None:
        """The stored record with its files, or None for a card without GIDS data."""
        raw = self._card.get(RECORD)
        if raw is None:
            return None
        files: dict[int, GidsFile] = {}
        try:
            for name in self._card.names(_FILE_PREFIX):
                value = self._card.get(name)
                if value is None:
                    continue
                file = file_from_dict(json.loads(value))
                if _file_name(file.fid) != name:
                    raise ValueError(f"record {name!r} holds file {file.fid:04X}")
                files[file.fid] = file
            record = GidsRecord.from_json(raw.decode(), MappingProxyType(files))
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptStore(f"card {self._card.name!r}: GIDS data unreadable: {e}") from None
        self._saved = record
        return record


class StoredGidsData(PinBindingData[GidsRecord, Reference], GidsData):
    """GIDS data whose PIN and PUK are checked by the backend through the PIN binding."""

    binding = BINDING
    admin_key_name = "administrator key"
    _roles = _ROLES

    def __init__(self, card: StoredCard, record: GidsRecord, store: StoredGidsStore) -> None:
        super().__init__(record, store=store)
        self._card = card
        self._stored = store

    def matches(self, ref: Reference, candidate: bytes) -> bool:
        """Whether ``candidate`` is the PIN or PUK: the record's value while the card is
        being personalised, then whether it unseals the binding's role (the backend
        compares; a try it refused without comparing is given back, see
        :mod:`vsc.store.pinbinding`)."""
        if self.state is LifeCycle.CREATION:
            return super().matches(ref, candidate)
        return self._unseal(ref, candidate)

    def _with_try_back(self, ref: Reference) -> GidsRecord:
        secret = self.secret(ref)
        assert secret is not None
        tries = secret.tries
        restored = replace(tries, remaining=min(tries.maximum, tries.remaining + 1))
        return self.record.with_secret(ref, replace(secret, tries=restored))

    def _opened(self, *, by_admin: bool) -> contextlib.AbstractContextManager[None]:
        """The binding open for a change: already (PIN or PUK checked), or by the admin role."""
        key = self.record.admin_key
        if by_admin and key is not None and key.secret is not None:
            return self._opened_by_admin(admin_secret(key.secret))
        if self._card.is_unlocked(BINDING):
            return contextlib.nullcontext()
        raise SecurityStatusNotSatisfied("this change needs the PIN binding open")

    def set_secret(
        self, ref: Reference, value: bytes, maximum: int | None = None, *, by_admin: bool = False
    ) -> None:
        """Creation state: kept in the record. After: the binding re-sealed, no value kept."""
        if self.state is LifeCycle.CREATION:
            super().set_secret(ref, value, maximum)
            return
        blank = replace(self._fresh(ref, value, maximum), value=b"")
        try:
            with self._opened(by_admin=by_admin), self._group():
                self._card.rebind(BINDING, _ROLES[ref], value)
                self.commit(self.record.with_secret(ref, blank))
        except BindingLocked:
            raise SecurityStatusNotSatisfied(f"{ref.name} change needs the binding") from None

    def activate(self) -> None:
        """Personalisation is over: the binding is created from the values, which go."""
        record = self.record
        if record.pin is None:
            raise ConditionsNotSatisfied("no PIN to bind to")
        roles = {"pin": record.pin.value}
        if record.puk is not None:
            roles["puk"] = record.puk.value
        key = record.admin_key
        if key is not None and key.secret is not None:
            roles[ADMIN_ROLE] = admin_secret(key.secret)
        try:
            with self._group():
                if BINDING in self._card.bindings():
                    self._card.delete_binding(BINDING)  # a half-made one: not to be trusted
                self._card.create_binding(BINDING, roles)
                self.commit(_storable(replace(record, state=LifeCycle.OPERATIONAL)))
        finally:
            self._card.lock(BINDING)

    def set_admin_key(self, file: GidsFile, key: bytes) -> None:
        """A new administrator key; on an operational card the ``admin`` role follows it."""
        if self.state is LifeCycle.CREATION:
            super().set_admin_key(file, key)
            return
        with self._opened(by_admin=True), self._group():
            self._card.rebind(BINDING, ADMIN_ROLE, admin_secret(key))
            super().set_admin_key(file, key)


# -- the applet -----------------------------------------------------------------------------


#: The security events of GIDS commands the applet does not report itself
#: (vsc.store.events): CHANGE REFERENCE DATA with the old value (P1 00) or without (01),
#: RESET RETRY COUNTER with the PUK, with a new PIN (P1 00) or without (01).
_COMMAND_EVENTS = {
    **{
        (0x24, p1, p2): event
        for p1 in (0x00, 0x01)
        for p2, event in ((0x80, "pin-change"), (0x81, "puk-change"))
    },
    **{(0x2C, p1, 0x80): "puk-unblock" for p1 in (0x00, 0x01)},
}


class StoredGidsApplet(PinBindingApplet[Session, int], GidsApplet):
    """The GIDS applet of a stored card: locks the PIN binding when no channel has the PIN."""

    binding = BINDING
    command_events = _COMMAND_EVENTS

    def __init__(self, card: StoredCard, data: StoredGidsData) -> None:
        self._track(card)
        #: The applet's key store, as stored (how each key is authorised, for reports).
        self.stored_keys = StoredGidsKeyStore(card)
        super().__init__(self.stored_keys, data=data)


def has_gids(card: StoredCard) -> bool:
    """Whether ``card`` is a GIDS card (recorded at provisioning, or found by its records)."""
    return held_application(card) == "gids"


def open_gids(
    card: StoredCard, *, serial: int | None = None, provision: bool = False
) -> StoredGidsApplet:
    """The GIDS applet of ``card``.

    A bare card becomes a factory-empty GIDS card only with ``provision=True``
    (code that creates cards gives it), in one transaction that also records
    the card's application. GIDS records or a GIDS binding without the GIDS
    record are damage, not an empty card: :class:`CorruptStore`, nothing wiped
    (see :mod:`vsc.store.application`).
    """
    store = StoredGidsStore(card)
    if require_application(card, "gids", provision=provision):
        record = store.load()
        if record is None:
            raise CorruptStore(f"card {card.name!r} at {card.path}: {RECORD} is missing")
        if serial is not None and serial != record.serial:
            raise ValueError(f"serial {serial} differs from the card's {record.serial}")
        card.lock(BINDING)
        return _applet(card, StoredGidsData(card, record, store))
    fresh = GidsRecord.factory(serial if serial is not None else random_serial())
    with card.transaction():
        card.set_application("gids")
        data = StoredGidsData(card, fresh, store)
        data.commit(fresh)
    return _applet(card, data)


def _applet(card: StoredCard, data: StoredGidsData) -> StoredGidsApplet:
    applet = StoredGidsApplet(card, data)
    applet.events = card.report  # to the card's sink, whenever it is set
    return applet
