"""One open card: named records, retry counters and PIN bindings, each change durable.

Theory of operation
-------------------
*Records* are byte strings by name, stored with a protection:

* ``CARD`` (the default): AES-256-GCM under the *card key*, a random key the
  backend sealed when the card was created and unsealed when it was opened;
* ``bound(B)``: encrypted to the X25519 public key of *binding* ``B``. Writing
  needs no secret; reading needs ``B`` unlocked;
* ``CLEAR``: not encrypted (public data that tools may list without a backend).

Every record's associated data names the card (and, except for bound
records, which :meth:`StoredCard.rename` must move without the PIN, the
record), so a blob copied into another card or record does not decrypt.

A *binding* is how PIN binding works. Its X25519 private key is sealed by
the backend once per *role* (``"pin"``, ``"puk"``, ...), each time under an
authorisation value derived from that role's secret; with the TPM backend
the TPM compares that value and counts failures. :meth:`StoredCard.unlock`
with a correct secret keeps the private key in memory until :meth:`lock`
or :meth:`close`; :meth:`rebind` (a PIN change, a PUK reset) seals it under
a new secret and destroys the old blob (``secure_delete`` plus a WAL
checkpoint: old blobs would still open with the old PIN).

*Keys in the TPM* of a binding's PIN-protected slots have an authValue
derived from the ``pin`` role's secret (:meth:`StoredCard.key_auth`, kept
while the binding is open by the PIN, like its private key). A key store
that follows the binding (:meth:`StoredCard.follow_pin`) is told when the
PIN was verified (to convert keys made while it was unknown) and, inside the
transaction of :meth:`rebind`, when the PIN is replaced (to re-authorise its
keys: a failure rolls the new seal back with them). See
:mod:`vsc.store.tpmkeys`.

*Counters* are PIN/PUK/management-key retry counters with the anti-tearing
discipline: :meth:`begin_attempt` commits the decrement before the caller
compares anything; only :meth:`succeed` restores the counter. Both refuse to
hide inside a larger transaction where the decrement would not be durable
before the comparison.

:meth:`transaction` groups changes atomically (a PIN change that updates a
seal and a record together). Each public method that changes something is
one transaction of its own otherwise. Not thread-safe: one thread per card.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from .antihammer import AntiHammer
from .clock import Clock
from .crypto import (
    DecryptionFailed,
    decrypt,
    encrypt,
    open_sealed,
    seal_to,
    x25519_generate,
    x25519_public,
)
from .db import Database, write_anchor
from .errors import (
    AuthFailed,
    BackendError,
    BackendUnavailable,
    BindingLocked,
    CorruptStore,
    CounterBlocked,
    InvalidName,
    LockedOut,
    StoreError,
)
from .lock import CardLock
from .protect import BackendInfo, Protector
from .rollback import RollbackGuard
from .settings import CardSettings

log = logging.getLogger(__name__)

CARD = "card"
CLEAR = "clear"
#: The metadata key naming the card application the card was provisioned with.
APPLICATION = "application"
#: A security-event sink: ``events(name, details)``; details never hold a secret.
EventSink = Callable[[str, Mapping[str, object]], None]
_BOUND = "bound:"
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


def bound(binding: str) -> str:
    """The protection of records readable only while ``binding`` is unlocked."""
    return _BOUND + _check_key("binding", binding)


def record_aad(card_id: bytes, name: str, protection: str) -> bytes:
    """The associated data of record ``name`` of card ``card_id``."""
    # Bound records leave their name out so that rename() can move them without
    # the PIN (PIV MOVE KEY needs only the management key).
    label = protection if protection.startswith(_BOUND) else f"{protection}\0{name}"
    return b"vsc/record/v1\0" + card_id + b"\0" + label.encode()


def binding_auth(
    protector: Protector, salt: bytes, card_id: bytes, binding: str, role: str, secret: bytes
) -> bytes:
    """The authorisation value ``role``'s seal of ``binding`` is sealed under."""
    label = f"{binding}\0{role}".encode()
    return protector.derive_auth(salt + card_id, label, bytes(secret))


#: The role whose secret is the PIN: TPM keys of the binding are authorised by it.
PIN_ROLE = "pin"


def key_admin_records(binding: str) -> tuple[str, str]:
    """The records of ``binding``'s key-admin entity: its TPM blob (card-encrypted) and its
    authValue (bound to the binding), see :mod:`vsc.store.tpmkeys`."""
    return f"tpm/key-admin/{binding}", f"tpm/key-admin/{binding}/auth"


class PinFollower(Protocol):
    """Keeps the TPM keys of a binding authorised by its PIN (:meth:`StoredCard.follow_pin`)."""

    def pin_verified(self) -> None:
        """The PIN opened the binding (:meth:`StoredCard.key_auth` is known)."""

    def pin_replaced(self, key_auth: bytes) -> None:
        """The PIN is being replaced, in an open transaction: re-authorise every key to
        ``key_auth`` (an exception rolls the whole change back)."""


def recovery_record(binding: str) -> str:
    """The record holding a copy of the card key readable with ``binding`` (PCR-bound cards)."""
    return f"pcr-recovery/{binding}"


def _check_key(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _KEY_RE.fullmatch(name):
        raise InvalidName(f"bad {kind} name {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Counter:
    name: str
    maximum: int
    remaining: int

    @property
    def blocked(self) -> bool:
        return self.remaining == 0


class Attempt:
    """One try of a secret whose counter is already decremented (see :meth:`StoredCard.attempt`)."""

    def __init__(self, card: StoredCard, counter: str, remaining: int) -> None:
        self._card = card
        self.counter = counter
        self.remaining = remaining
        self.succeeded = False

    def succeed(self) -> None:
        """The value was right: restore the counter (durably)."""
        self._card.succeed(self.counter)
        self.succeeded = True


def _ignore(event: str, details: Mapping[str, object]) -> None:
    return None


#: The cards this process has open, by the real path of their directory (see :func:`open_card_at`).
_OPEN_CARDS: dict[str, StoredCard] = {}


def open_card_at(path: Path) -> StoredCard | None:
    """The card at ``path`` if this process has it open (to join its connection), else None."""
    return _OPEN_CARDS.get(os.path.realpath(path))


class StoredCard:
    """An open card. Create or open one with :class:`vsc.store.CardStore` or ``open_card``."""

    def __init__(
        self,
        *,
        name: str,
        path: Path,
        lock: CardLock,
        db: Database,
        protector: Protector,
        anti_hammer: AntiHammer,
        card_id: bytes,
        salt: bytes,
        card_key: bytes,
        clock: Clock,
        settings: CardSettings | None = None,
        rollback: RollbackGuard | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.card_id = card_id
        self.clock = clock
        #: What the card fixed at creation (sealed with its key).
        self.settings = settings if settings is not None else CardSettings()
        #: Keeps the files in step with the card's TPM counter (None: no rollback protection).
        self.rollback = rollback
        self._lock = lock
        self._db = db
        self._protector = protector
        self._anti_hammer = anti_hammer
        self._salt = salt
        self._card_key = card_key
        self._unlocked: dict[str, bytes] = {}
        # The PIN-derived authValue of TPM keys, by binding: only while the PIN opened it.
        self._key_auths: dict[str, bytes] = {}
        self._followers: dict[str, PinFollower] = {}
        self._closed = False
        #: Where this card's security events go (its applet's and the store's own, such
        #: as a TPM lockout seen): set by the adapter that opened it (an audit log).
        self.events: EventSink = _ignore
        self._key = os.path.realpath(path)
        _OPEN_CARDS[self._key] = self

    def __repr__(self) -> str:
        return f"<StoredCard {self.name!r} at {self.path} ({self._protector.kind})>"

    # -- life cycle ---------------------------------------------------------------------

    @property
    def backend(self) -> BackendInfo:
        return self._protector.describe()

    @property
    def protector(self) -> Protector:
        return self._protector

    @property
    def rollback_summary(self) -> str:
        """Whether and how the card's files are protected against an older copy."""
        if self.rollback is not None:
            return self.rollback.state.summary
        if self._protector.counter_bank() is None:
            return f"none: the {self._protector.kind} backend has no hardware counter"
        if self.settings.legacy:
            return "none: the card was made before rollback protection"
        return (
            "NONE: no TPM counter could be defined when the card was created (the TPM's"
            " owner authorisation is set and was not given to vsc create)"
        )

    @property
    def boot_state_summary(self) -> str:
        """Whether the card key is sealed to PCRs (the boot state), and to which."""
        if not self.settings.pcrs:
            return "not bound (the card opens in any boot state of this machine)"
        pcrs = ",".join(str(p) for p in self.settings.pcrs)
        return f"sealed to PCR {pcrs} (SHA-256 bank); after a legitimate change: vsc rebind-pcr"

    def reseal_to_boot_state(self) -> None:
        """Seal the card key again to the PCRs' values now (after a legitimate change)."""
        if not self.settings.pcrs:
            raise StoreError(f"card {self.name!r} is not bound to the boot state")
        sealed = self._protector.seal_to_pcrs(
            self.settings.seal_payload(self._card_key), self.settings.pcrs
        )
        db = self._open()
        with db.transaction():
            db.write("UPDATE meta SET value = ? WHERE key = 'card_key'", (sealed,))
            db.request_scrub()

    @property
    def anti_hammer(self) -> AntiHammer:
        return self._anti_hammer

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Forget every unsealed key, close the database, release the card."""
        if self._closed:
            return
        self._closed = True
        if _OPEN_CARDS.get(self._key) is self:
            del _OPEN_CARDS[self._key]
        self._unlocked.clear()
        self._key_auths.clear()
        self._card_key = b""
        try:
            self._db.close()
            self._protector.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> Database:
        if self._closed:
            raise StoreError(f"card {self.name!r} is closed")
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes: all of them are committed together, or none (on an exception)."""
        with self._open().transaction():
            yield

    def scrub(self) -> None:
        """Remove the traces of replaced or deleted data from the card's files now."""
        self._open().request_scrub()

    def integrity_check(self) -> None:
        self._open().integrity_check()

    def report(self, event: str, details: Mapping[str, object]) -> None:
        """Pass a security event to :attr:`events` (applets of the card report here)."""
        self.events(event, details)

    # -- metadata: the card's application, the audit anchor --------------------------------

    def meta(self, key: str) -> bytes | None:
        row = self._open().one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    @property
    def application(self) -> str | None:
        """The card application this card was provisioned with (None: not recorded)."""
        raw = self.meta(APPLICATION)
        return None if raw is None else raw.decode("ascii", "replace")

    def set_application(self, application: str) -> None:
        """Record the card's application (in the transaction that provisions it)."""
        _check_key("application", application)
        db = self._open()
        with db.transaction():
            db.write(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (APPLICATION, application.encode()),
            )

    def anchor_audit(self, seq: int, digest: str) -> None:
        """Remember audit record ``seq`` (``digest``) as the last one about this card."""
        write_anchor(self.path / "card.db", seq, digest, self._open())

    # -- records ------------------------------------------------------------------------

    def _aad(self, name: str, protection: str) -> bytes:
        return record_aad(self.card_id, name, protection)

    def put(self, name: str, value: bytes, *, protection: str = CARD) -> None:
        """Store ``value`` under ``name`` (replacing any old value), durably.

        The old value's bytes may linger in the WAL until the next checkpoint;
        call :meth:`scrub` after replacing a secret someone must not recover.
        """
        db = self._open()
        _check_key("record", name)
        value = bytes(value)
        if protection == CLEAR:
            blob = value
        elif protection == CARD:
            blob = encrypt(self._card_key, value, self._aad(name, protection))
        elif protection.startswith(_BOUND):
            public = self._binding_public(protection[len(_BOUND) :])
            blob = seal_to(public, value, self._aad(name, protection))
        else:
            raise InvalidName(f"unknown protection {protection!r}")
        with db.transaction():
            db.write(
                "INSERT INTO records (name, protection, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET protection = excluded.protection,"
                " value = excluded.value",
                (name, protection, blob),
            )

    def get(self, name: str) -> bytes | None:
        """The value of ``name``, or ``None``; :class:`BindingLocked` if its binding is locked."""
        row = self._open().one("SELECT protection, value FROM records WHERE name = ?", (name,))
        if row is None:
            return None
        protection, blob = str(row[0]), bytes(row[1])
        try:
            if protection == CLEAR:
                return blob
            if protection == CARD:
                return decrypt(self._card_key, blob, self._aad(name, protection))
            if protection.startswith(_BOUND):
                binding = protection[len(_BOUND) :]
                private = self._unlocked.get(binding)
                if private is None:
                    raise BindingLocked(binding)
                return open_sealed(private, blob, self._aad(name, protection))
        except DecryptionFailed:
            raise CorruptStore(f"record {name!r} of card {self.name!r} fails its check") from None
        raise CorruptStore(f"record {name!r} has unknown protection {protection!r}")

    def protection_of(self, name: str) -> str | None:
        row = self._open().one("SELECT protection FROM records WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def delete(self, name: str) -> bool:
        """Remove ``name``; whether it existed."""
        db = self._open()
        with db.transaction():
            existed = db.write("DELETE FROM records WHERE name = ?", (name,)) > 0
            if existed:
                db.request_scrub()
        return existed

    def rename(self, old: str, new: str) -> None:
        """Move record ``old`` to ``new`` (replacing ``new``), without unlocking anything."""
        _check_key("record", new)
        db = self._open()
        with db.transaction():
            row = db.one("SELECT protection, value FROM records WHERE name = ?", (old,))
            if row is None:
                raise KeyError(f"no record {old!r}")
            protection, blob = str(row[0]), bytes(row[1])
            if protection == CARD:  # re-encrypt: the name is part of its associated data
                try:
                    value = decrypt(self._card_key, blob, self._aad(old, protection))
                except DecryptionFailed:
                    raise CorruptStore(
                        f"record {old!r} of card {self.name!r} fails its check"
                    ) from None
                blob = encrypt(self._card_key, value, self._aad(new, protection))
            db.write("DELETE FROM records WHERE name = ?", (old,))
            db.write(
                "INSERT INTO records (name, protection, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET protection = excluded.protection,"
                " value = excluded.value",
                (new, protection, blob),
            )

    def names(self, prefix: str = "") -> list[str]:
        rows = self._open().all("SELECT name FROM records ORDER BY name")
        return [str(r[0]) for r in rows if str(r[0]).startswith(prefix)]

    # -- retry counters -----------------------------------------------------------------

    def set_counter(self, name: str, maximum: int, remaining: int | None = None) -> Counter:
        """Create or overwrite a counter (full unless ``remaining`` says otherwise)."""
        _check_key("counter", name)
        counter = Counter(name, maximum, maximum if remaining is None else remaining)
        if not 0 <= counter.remaining <= counter.maximum <= 255:
            raise ValueError(f"bad counter {counter.remaining}/{counter.maximum}")
        db = self._open()
        with db.transaction():
            db.write(
                "INSERT INTO counters (name, maximum, remaining) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET maximum = excluded.maximum,"
                " remaining = excluded.remaining",
                (name, counter.maximum, counter.remaining),
            )
        return counter

    def counter(self, name: str) -> Counter:
        row = self._open().one("SELECT maximum, remaining FROM counters WHERE name = ?", (name,))
        if row is None:
            raise KeyError(f"no counter {name!r}")
        return Counter(name, int(row[0]), int(row[1]))

    def counters(self) -> list[Counter]:
        rows = self._open().all("SELECT name, maximum, remaining FROM counters ORDER BY name")
        return [Counter(str(n), int(m), int(r)) for n, m, r in rows]

    def delete_counter(self, name: str) -> bool:
        db = self._open()
        with db.transaction():
            return db.write("DELETE FROM counters WHERE name = ?", (name,)) > 0

    def begin_attempt(self, name: str) -> int:
        """Durably decrement ``name`` before a comparison; the tries left after this one.

        :class:`CounterBlocked` if no try is left. Must not run inside
        :meth:`transaction`: the decrement has to be on disk before the caller
        compares anything.
        """
        db = self._open()
        if db.in_transaction:
            raise RuntimeError("begin_attempt must commit on its own, outside a transaction")
        with db.transaction():
            current = self.counter(name)
            if current.blocked:
                raise CounterBlocked(name)
            db.write("UPDATE counters SET remaining = remaining - 1 WHERE name = ?", (name,))
        try:  # the try must be counted in the TPM too before anything is compared
            self.require_counted()
        except StoreError:
            self._refund(name)  # nothing will be compared: give the try back
            raise
        return current.remaining - 1

    def succeed(self, name: str) -> None:
        """A correct value: restore ``name`` to its maximum."""
        db = self._open()
        with db.transaction():
            self._gives_back_only(db)
            if not db.write("UPDATE counters SET remaining = maximum WHERE name = ?", (name,)):
                raise KeyError(f"no counter {name!r}")

    def _refund(self, name: str) -> None:
        """Give back a try that was never compared (the TPM refused it in lockout)."""
        db = self._open()
        with db.transaction():
            self._gives_back_only(db)
            db.write(
                "UPDATE counters SET remaining = MIN(maximum, remaining + 1) WHERE name = ?",
                (name,),
            )

    def require_counted(self) -> None:
        """Every committed change is counted by the card's TPM counter too (call it before a
        comparison); :class:`BackendUnavailable` if the TPM cannot do that now."""
        if self.rollback is None:
            return
        try:
            self.rollback.require_advanced()
        except BackendUnavailable:
            raise
        except BackendError as e:
            raise BackendUnavailable(
                f"card {self.name!r}: its TPM counter cannot be advanced now: {e}"
            ) from None

    @contextlib.contextmanager
    def giving_back(self) -> Iterator[None]:
        """A transaction that only gives tries back: it needs no TPM counter write (an
        applet's counter given back while the TPM is unreachable still goes in)."""
        db = self._open()
        with db.transaction():
            self._gives_back_only(db)
            yield

    def _gives_back_only(self, db: Database) -> None:
        # A transaction of its own that only restores tries need not advance the TPM
        # counter: an older copy of the files has fewer tries, not more.
        if self.rollback is not None and db.transaction_depth == 1:
            self.rollback.waive()

    @contextlib.contextmanager
    def attempt(self, name: str) -> Iterator[Attempt]:
        """``with card.attempt("pin") as a:`` decrements first; call ``a.succeed()`` on a match."""
        yield Attempt(self, name, self.begin_attempt(name))

    # -- PIN bindings -------------------------------------------------------------------

    def _binding_public(self, binding: str) -> bytes:
        row = self._open().one("SELECT public FROM bindings WHERE name = ?", (binding,))
        if row is None:
            raise KeyError(f"no binding {binding!r}")
        return bytes(row[0])

    def _auth(self, binding: str, role: str, secret: bytes) -> bytes:
        return binding_auth(self._protector, self._salt, self.card_id, binding, role, secret)

    # -- keys authorised by the PIN ---------------------------------------------------

    def key_auth(self, binding: str) -> bytes | None:
        """The authValue of ``binding``'s PIN-protected TPM keys, while the PIN opened it."""
        return self._key_auths.get(binding)

    def follow_pin(self, binding: str, follower: PinFollower) -> None:
        """Tell ``follower`` when the PIN of ``binding`` is verified or replaced (one per
        binding: the key store of the card's applet)."""
        self._followers[binding] = follower

    def undo_on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` should the open transaction roll back."""
        self._open().undo_on_rollback(undo)

    def _pin_key_auth(self, binding: str, role: str, secret: bytes) -> bytes | None:
        if role != PIN_ROLE or self._protector.key_vault() is None:
            return None  # (the software backend's derivation is slow on purpose)
        label = f"{binding}\0key\0{role}".encode()  # no role name holds a NUL
        return self._protector.derive_auth(self._salt + self.card_id, label, bytes(secret))

    def bindings(self) -> dict[str, tuple[str, ...]]:
        """Each binding with its roles."""
        result: dict[str, list[str]] = {
            str(r[0]): [] for r in self._open().all("SELECT name FROM bindings ORDER BY name")
        }
        for binding, role in self._open().all(
            "SELECT binding, role FROM binding_seals ORDER BY binding, role"
        ):
            result[str(binding)].append(str(role))
        return {k: tuple(v) for k, v in result.items()}

    def create_binding(self, binding: str, secrets: Mapping[str, bytes]) -> None:
        """A new binding sealed under each ``role: secret``; it starts unlocked."""
        _check_key("binding", binding)
        for role in secrets:
            _check_key("role", role)
        if not secrets:
            raise ValueError("a binding needs at least one role")
        db = self._open()
        if db.one("SELECT 1 FROM bindings WHERE name = ?", (binding,)) is not None:
            raise StoreError(f"binding {binding!r} already exists")
        private = x25519_generate()
        blobs = [
            (binding, role, self._protector.seal(private, auth=self._auth(binding, role, secret)))
            for role, secret in secrets.items()
        ]
        with db.transaction():
            db.write(
                "INSERT INTO bindings (name, public) VALUES (?, ?)",
                (binding, x25519_public(private)),
            )
            for row in blobs:
                db.write("INSERT INTO binding_seals (binding, role, blob) VALUES (?, ?, ?)", row)
            if self.settings.pcrs:
                # Whoever can open the binding (the PIN) can re-bind the card after a
                # legitimate change of the boot state (vsc.store.store.open_card's recover).
                payload = self.settings.seal_payload(self._card_key)
                self.put(recovery_record(binding), payload, protection=bound(binding))
        self._unlocked[binding] = private
        pin = secrets.get(PIN_ROLE)
        key_auth = None if pin is None else self._pin_key_auth(binding, PIN_ROLE, pin)
        if key_auth is not None:
            self._key_auths[binding] = key_auth

    def unlock(self, binding: str, role: str, secret: bytes, *, counter: str | None = None) -> None:
        """Unseal ``binding`` with ``role``'s secret; the backend checks it.

        With ``counter``, that retry counter is decremented durably first and
        restored on success (:class:`CounterBlocked` at zero; the tries left
        are in :attr:`AuthFailed.remaining`). Anti-hammering applies too:
        :class:`LockedOut` while it is locked out (the counter's try is then
        given back: nothing was compared). :class:`BackendUnavailable` when the
        TPM is gone; the try is given back unless it may have been compared.
        """
        row = self._open().one(
            "SELECT blob FROM binding_seals WHERE binding = ? AND role = ?", (binding, role)
        )
        if row is None:
            raise KeyError(f"binding {binding!r} has no role {role!r}")
        if counter is not None:
            remaining: int | None = self.begin_attempt(counter)
        else:  # the caller's own counter (an applet's record) is committed: count it first
            self.require_counted()
            remaining = None
        auth = self._auth(binding, role, secret)
        try:
            token = self._anti_hammer.before_try()
            try:
                private = self._protector.unseal(bytes(row[0]), auth=auth)
            except AuthFailed:
                self._anti_hammer.after_try(token, success=False)
                log.info("card %s: wrong %s for binding %s", self.name, role, binding)
                raise AuthFailed(f"wrong {role}", remaining) from None
        except LockedOut:
            if counter is not None:
                self._refund(counter)
            # Seen whichever path asked (the card's APDUs, the CLI): a security event.
            self.report("tpm-lockout", {"what": role, "outcome": "refused"})
            raise
        except BackendUnavailable as e:
            # A TPM that could not be reached compared nothing: an outage must not
            # block the PIN. One lost mid-check may have counted the try: it stays spent.
            if counter is not None and not e.compared:
                self._refund(counter)
            raise
        self._anti_hammer.after_try(token, success=True)
        if x25519_public(private) != self._binding_public(binding):
            raise CorruptStore(f"binding {binding!r} of card {self.name!r} is inconsistent")
        self._unlocked[binding] = private
        key_auth = self._pin_key_auth(binding, role, secret)
        if key_auth is not None:
            self._key_auths[binding] = key_auth
        if counter is not None:
            self.succeed(counter)
        follower = self._followers.get(binding)
        if key_auth is not None and follower is not None:
            follower.pin_verified()

    def is_unlocked(self, binding: str) -> bool:
        return binding in self._unlocked

    def lock(self, binding: str | None = None) -> None:
        """Forget the unsealed key of ``binding`` (of every binding by default)."""
        if binding is None:
            self._unlocked.clear()
            self._key_auths.clear()
        else:
            self._unlocked.pop(binding, None)
            self._key_auths.pop(binding, None)

    def rebind(self, binding: str, role: str, secret: bytes) -> None:
        """Seal the unlocked ``binding`` under a new secret for ``role`` (new or existing).

        The old blob of that role is overwritten and scrubbed from the files:
        with a TPM it would otherwise still open with the old secret. A new PIN
        re-authorises the binding's TPM keys in the same transaction.
        """
        _check_key("role", role)
        private = self._unlocked.get(binding)
        if private is None:
            raise BindingLocked(binding)
        blob = self._protector.seal(private, auth=self._auth(binding, role, secret))
        db = self._open()
        with db.transaction():
            db.write(
                "INSERT INTO binding_seals (binding, role, blob) VALUES (?, ?, ?)"
                " ON CONFLICT (binding, role) DO UPDATE SET blob = excluded.blob",
                (binding, role, blob),
            )
            key_auth = self._pin_key_auth(binding, role, secret)
            if key_auth is not None:
                self._replace_key_auth(binding, key_auth)
            db.request_scrub()

    def _replace_key_auth(self, binding: str, key_auth: bytes) -> None:
        follower = self._followers.get(binding)
        if follower is not None:
            follower.pin_replaced(key_auth)
        before = self._key_auths.get(binding)

        def undo() -> None:
            if before is None:
                self._key_auths.pop(binding, None)
            else:
                self._key_auths[binding] = before

        self._key_auths[binding] = key_auth
        self.undo_on_rollback(undo)

    def remove_role(self, binding: str, role: str) -> None:
        db = self._open()
        with db.transaction():
            if (
                db.write(
                    "DELETE FROM binding_seals WHERE binding = ? AND role = ?", (binding, role)
                )
                == 0
            ):
                raise KeyError(f"binding {binding!r} has no role {role!r}")
            db.request_scrub()

    def delete_binding(self, binding: str) -> None:
        """Destroy ``binding``, its seals and every record bound to it."""
        db = self._open()
        with db.transaction():
            db.write("DELETE FROM records WHERE protection = ?", (bound(binding),))
            db.write("DELETE FROM records WHERE name = ?", (key_admin_records(binding)[0],))
            if db.write("DELETE FROM bindings WHERE name = ?", (binding,)) == 0:
                raise KeyError(f"no binding {binding!r}")
            db.request_scrub()
        self._unlocked.pop(binding, None)
        self._key_auths.pop(binding, None)
