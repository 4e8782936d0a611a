"""What every lifecycle verb shares: the store, the backend, the audit log, and the card's rules.

:class:`ManagerBase` holds the state of a :class:`~vsc.lifecycle.CardManager`
and the steps several verbs take: opening a PIV card (with its lock, its
wall clock and its audit hook), the store-wide creation lock, the admin-key
counter (a try spent durably before the comparison), the PIN policy check.
Each verb lives in the module of its job (:mod:`.creation`,
:mod:`.reports`, :mod:`.helpdesk`, :mod:`.provisioning`) as a mixin on
this base; the GIDS lifecycle (:mod:`.gids`) uses the same base through a
manager.

The records the lifecycle keeps in a card (beside the applet's own) are
here too: ``lifecycle/card`` (how ``vsc create`` made it) and
``lifecycle/pending`` (the challenge outstanding).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from applets.piv.managed import Managed
from applets.piv.mgmt import ManagementKey
from applets.piv.pinrules import CLASSES, CharRule, PinRules, members
from applets.piv.state import DEFAULT_PIN, PIN_BLOCK_SIZE
from vsc.store import BackendSpec, CardStore, LockedOut, StoredCard, StoreError
from vsc.store.errors import BackendError, CorruptStore, StorageFailure
from vsc.store.files import open_private
from vsc.store.gids import has_gids
from vsc.store.piv import StoredPivApplet, StoredPivData, open_piv
from vsc.sw import ApduError

from .audit import AuditLog, Event, Outcome
from .capacity import DEFAULT_CAPACITY, Register, reserve
from .errors import (
    AdminKeyBlocked,
    ChallengeKept,
    LifecycleError,
    NotManaged,
    PinPolicyViolation,
    WrongAdminKey,
)
from .offline import Request
from .timespec import format_local

__all__ = [
    "CARD_RECORD",
    "PENDING_LIFETIME",
    "PENDING_RECORD",
    "ManagerBase",
    "StoredRequest",
    "audited_creation",
    "card_record",
    "generate_pin",
    "load_pending",
    "managed_or_refuse",
    "pin_block",
]

#: Seconds a challenge stays answerable.
PENDING_LIFETIME = 3600.0
#: How ``vsc create`` made the card (JSON: profile, made_by, puk).
CARD_RECORD = "lifecycle/card"
#: The challenge outstanding (JSON: request, expires).
PENDING_RECORD = "lifecycle/pending"
_STORE_LOCK = ".lifecycle.lock"


_Create = TypeVar("_Create", bound=Callable[..., Any])


def audited_creation(create: _Create) -> _Create:
    """``create(self, name, ...)`` of a manager (or of a helper with ``.manager``) whose
    refusals and failures are audited too (:meth:`ManagerBase.refused_creation`)."""

    @functools.wraps(create)
    def audited(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        manager: ManagerBase = getattr(self, "manager", self)
        with manager.refused_creation(name):
            return create(self, name, *args, **kwargs)

    return cast(_Create, audited)


def pin_block(pin: str | bytes, what: str = "PIN") -> bytes:
    """A PIN or PUK as the card's 8-byte block (FF-padded)."""
    raw = pin.encode() if isinstance(pin, str) else bytes(pin)
    if not 1 <= len(raw) <= PIN_BLOCK_SIZE or b"\xff" in raw:
        raise PinPolicyViolation("max-length", f"a {what} has 1 to {PIN_BLOCK_SIZE} characters")
    return raw + b"\xff" * (PIN_BLOCK_SIZE - len(raw))


def generate_pin(rules: PinRules) -> str:
    """A random PIN ``rules`` allow: 8 characters if they may (else the nearest length);
    digits only unless another class is mandatory, never a space."""
    length = min(max(8, rules.min_length), rules.max_length)
    allowed = [name for name in CLASSES if rules.rule(name) is not CharRule.NOT_ALLOWED]
    mandatory = [name for name in CLASSES if rules.rule(name) is CharRule.MANDATORY]
    if "digits" in allowed and set(mandatory) <= {"digits"}:
        pool = ["digits"]
    else:  # letters and digits; symbols only when they must be there or nothing else may
        pool = [n for n in allowed if n != "symbols"] or ["symbols"]
        pool = sorted(set(pool) | set(mandatory), key=CLASSES.index)
    alphabet = "".join(sorted(chr(c) for name in pool for c in members(name) if c != 0x20))
    rng = secrets.SystemRandom()
    while True:
        chars = [rng.choice(alphabet) for _ in range(length - len(mandatory))]
        chars += [rng.choice([chr(c) for c in members(n) if c != 0x20]) for n in mandatory]
        rng.shuffle(chars)
        pin = "".join(chars)
        if rules.violation(pin.encode()) is None:
            return pin


def managed_or_refuse(name: str, data: StoredPivData) -> Managed:
    """The card's managed block; :class:`NotManaged` for a card ``vsc create`` did not make."""
    managed = data.managed
    if managed is None:
        raise NotManaged(name)
    return managed


def card_record(stored: StoredCard) -> dict[str, Any]:
    """The ``lifecycle/card`` record ({} if absent or unreadable)."""
    raw = stored.get(CARD_RECORD)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """The challenge a card has outstanding, and until when it can be answered."""

    request: Request
    expires: float


def load_pending(stored: StoredCard, now: float) -> StoredRequest | None:
    """The challenge outstanding at ``now`` (None: none, unreadable or expired)."""
    raw = stored.get(PENDING_RECORD)
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
    return StoredRequest(request, expires)


class ManagerBase:
    """The cards of ``store``, protected by ``backend``, audited in ``audit``.

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
        register: Register | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the capacity is at least one card")
        self._register = register
        self.store = store
        self.backend = backend
        self.audit = audit if audit is not None else AuditLog(store.root)
        self.capacity = capacity

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.store.root}>"

    @property
    def now(self) -> float:
        return self.store.clock.now()

    def require_backend(self) -> BackendSpec:
        """The backend; :class:`LifecycleError` naming the options when there is none."""
        if self.backend is None:
            raise LifecycleError(
                "this needs the card's protection backend: --tpm TCTI (or VSC_TPM), --key-file"
                " PATH (or VSC_KEY_FILE), VSC_PASSPHRASE, or --insecure-plain"
            )
        return self.backend

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[tuple[StoredCard, StoredPivApplet, StoredPivData]]:
        """The PIV card ``name``, locked for this process until the block ends."""
        stored = self.store.open(name, self.require_backend())
        try:
            stored.events = self.audit.card_hook(name)
            if has_gids(stored):
                raise LifecycleError(f"card {name!r} is a GIDS card: not for this command")
            applet = open_piv(stored)
            applet.wall_clock = self.store.clock.now
            data = applet.data
            assert isinstance(data, StoredPivData)
            yield stored, applet, data
        finally:
            stored.close()

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        """Serialises creations in the store: the capacity check and the creation are one step."""
        self.store.make()
        self.audit.check()  # a creation that could not be audited is not made
        fd = open_private(self.store.root / _STORE_LOCK, os.O_RDWR | os.O_CREAT, "store lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @property
    def register(self) -> Register:
        """The machine's card register (:mod:`.capacity`), found when first needed."""
        if self._register is None:
            self._register = Register.configured()
        return self._register

    @contextlib.contextmanager
    def refused_creation(self, name: str) -> Iterator[None]:
        """A creation that is refused or fails is audited (``create``, not ``success``)."""
        try:
            yield
        except (LifecycleError, StoreError, ValueError) as e:
            if getattr(e, "_vsc_audited", False):
                raise  # an inner refused_creation wrote it
            e._vsc_audited = True  # type: ignore[union-attr]
            failed = isinstance(e, StorageFailure | BackendError | CorruptStore)
            outcome = Outcome.FAILED if failed else Outcome.REFUSED
            with contextlib.suppress(OSError, StoreError, ValueError):
                self.audit.write(
                    Event.CREATE,
                    name,
                    f"{name}: creation {outcome}: {e}",
                    outcome=outcome,
                    reason=type(e).__name__,
                )
            raise

    @contextlib.contextmanager
    def reserve(self, spec: BackendSpec, name: str) -> Iterator[None]:
        """A place for card ``name`` on ``spec``'s device (:class:`CapacityExceeded`):
        create the card in the block; it is entered in the register if it exists then."""
        with reserve(self.store, spec, self.capacity, self.register, name):
            yield

    def capacity_override(self) -> dict[str, Any]:
        """For the audit of a creation: the capacity, when it is not the default."""
        return {} if self.capacity == DEFAULT_CAPACITY else {"capacity": self.capacity}

    def unregister(self, name: str) -> None:
        """Forget a destroyed card in the register (best effort: a dead entry stops counting)."""
        with contextlib.suppress(OSError):
            self.register.remove(self.store, name)

    # -- the card's rules --------------------------------------------------------------------

    def check_pin(self, rules: PinRules, pin: str | None, *, default: bool = False) -> bytes:
        """The PIN block of ``pin`` (None: the factory PIN) if ``rules`` allow it.

        A PIN longer than the PIV PIN block is refused, never cut to fit."""
        raw = DEFAULT_PIN.rstrip(b"\xff") if pin is None else pin.encode("utf-8", "replace")
        if len(raw) > PIN_BLOCK_SIZE:
            raise PinPolicyViolation(
                "max-length",
                f"PIN refused: it has {len(raw)} bytes and a PIV PIN at most {PIN_BLOCK_SIZE}"
                " (SP 800-73-4's PIN block; vsc never shortens a PIN). Windows allows up to"
                " 127 characters on its TPM virtual smart cards: vsc create --applet gids",
            )
        error = rules.violation(raw)
        if error is not None:
            hint = " (the factory PIN 123456: give a PIN)" if default else ""
            raise PinPolicyViolation(
                error.rule, f"PIN refused{hint}: {error.reason} (rule {error.rule})"
            )
        return pin_block(raw)

    def _spend_admin_try(self, data: StoredPivData, name: str, what: str) -> int | None:
        """One try of the admin-key counter, spent durably; the tries left (None: no counter)."""
        if data.managed is None:
            return None
        try:
            return data.consume_admin_try(self.now)
        except ValueError:
            retry = data.admin_tries(self.now)[2]
            self.audit.write(
                "admin-key-blocked", name, f"{name}: {what} refused, the admin key is blocked"
            )
            raise AdminKeyBlocked(retry) from None

    def _admin_refused(self, name: str, what: str, left: int | None) -> None:
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
        left = self._spend_admin_try(data, name, "admin key")
        if not hmac.compare_digest(given.key, data.management_key.key):
            self._admin_refused(name, "admin key", left)
        if data.managed is not None:
            data.restore_admin_tries()

    @contextlib.contextmanager
    def answering(
        self, stored: StoredCard, record: str, name: str, purpose: str, expires: float
    ) -> Iterator[None]:
        """A right response: its challenge ``record`` is used up, then the change it grants.

        Used up first, so a crash replays nothing. A change that fails (its own
        transaction rolled back: the TPM in dictionary-attack lockout, the TPM
        gone) puts the challenge back, answerable with the same response; the
        failure is audited and the message says what to do.
        """
        raw = stored.get(record)
        stored.delete(record)
        try:
            yield
        except (StoreError, ApduError) as e:
            if raw is not None:
                stored.put(record, raw)
            self._challenge_kept(name, purpose, expires, e)

    def _challenge_kept(self, name: str, purpose: str, expires: float, e: Exception) -> None:
        self.audit.write(
            f"{purpose}-failed",
            name,
            f"{name}: right response, but {purpose} not done ({e}): the challenge stays valid",
            outcome="failed",
            reason=str(e),
            challenge="kept",
            until=expires,
        )
        advice = ""
        if isinstance(e, LockedOut) or isinstance(e.__context__, LockedOut):
            advice = (
                " The TPM forgives one failure per recovery time (vsc tpm status shows its"
                " counter); whoever holds its lockout authorisation can end the lockout now"
                " (tpm2_dictionarylockout --clear-lockout)."
            )
        raise ChallengeKept(
            f"the response is right, but the card could not {purpose}: {e}. Nothing changed"
            f" and the challenge stays valid until {format_local(expires)}: give the same"
            f" response again then.{advice}"
        ) from e
