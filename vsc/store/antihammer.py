"""Anti-hammering (dictionary-attack protection) modelled on TPM 2.0.

Theory of operation
-------------------
TPM 2.0 (Part 1, "Dictionary Attack Protection") keeps one counter,
``failedTries``, and three parameters:

* ``maxTries``: at ``failedTries >= maxTries`` the TPM is in *lockout* and
  refuses every DA-protected authorisation without comparing it;
* ``recoveryTime``: every ``recoveryTime`` seconds one failure is forgiven
  (the timer restarts at each new failure), so a locked-out TPM allows one
  more try per period; ``0`` disables the protection (nothing is counted);
* ``lockoutRecovery``: after a wrong *lockout authorisation* (the secret that
  resets the counter and sets the parameters) that secret is refused for
  this long; ``0`` means until the TPM restarts.

Windows provisions 32 / 7200 s / 86400 s (:data:`WINDOWS_DEFAULTS`).

:class:`DaState` is the model as pure functions of a clock reading.
:class:`SoftwareAntiHammer` keeps it in the card database and enforces it for
the ``software`` and ``plain`` backends. Like a TPM that cannot be sure its
counter reached NV, it counts every try as a failure *before* the comparison
and takes the failure back after a correct value, so a process killed
mid-try has spent the try. With the ``tpm`` backend the TPM enforces its own
state (``vsc.store.tpm.TpmAntiHammer`` reads and sets it); both sit behind
:class:`AntiHammer`.

The software clock is the wall clock: whoever can set it, or edit the
database, can undo the counting. It stops guessing through the card's
interface, not an attacker with the files (see ``docs/security.md``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

from .clock import Clock
from .crypto import constant_time_equal, verifier
from .db import Database
from .errors import AuthFailed, LockedOut

_UINT32 = 2**32 - 1
_LOCKOUT_LABEL = b"vsc/lockout-auth/v1"


@dataclass(frozen=True, slots=True)
class DaParameters:
    """The arguments of TPM2_DictionaryAttackParameters, in its order."""

    max_tries: int = 32
    recovery_time: int = 7200
    lockout_recovery: int = 86400

    def __post_init__(self) -> None:
        for name in ("max_tries", "recovery_time", "lockout_recovery"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= _UINT32:
                raise ValueError(f"{name} must be an integer in 0..2^32-1, not {value!r}")


#: What Windows sets on a TPM it provisions (and what the software model defaults to).
WINDOWS_DEFAULTS = DaParameters(32, 7200, 86400)


@dataclass(frozen=True, slots=True)
class DaState:
    """``failedTries``, the self-heal timer, and when the lockout authorisation is usable again.

    ``lockout_blocked_until`` is ``None`` (usable), a time, or ``math.inf``
    (until the store is reopened: the software analogue of a TPM restart).
    """

    failed_tries: int = 0
    heal_anchor: float = 0.0
    lockout_blocked_until: float | None = None

    def healed(self, params: DaParameters, now: float) -> DaState:
        """Forgive one failure per whole ``recovery_time`` since the last failure or forgiving."""
        state = self
        if state.lockout_blocked_until is not None and now >= state.lockout_blocked_until:
            state = replace(state, lockout_blocked_until=None)
        if state.failed_tries == 0 or params.recovery_time == 0:
            return state
        steps = int((now - state.heal_anchor) // params.recovery_time)
        if steps <= 0:
            return state
        return replace(
            state,
            failed_tries=max(0, state.failed_tries - steps),
            heal_anchor=state.heal_anchor + steps * params.recovery_time,
        )

    def locked_out(self, params: DaParameters) -> bool:
        return params.recovery_time != 0 and self.failed_tries >= params.max_tries

    def retry_after(self, params: DaParameters, now: float) -> float:
        """Seconds until one more try is allowed (0 when not locked out)."""
        if not self.locked_out(params):
            return 0.0
        steps = self.failed_tries - params.max_tries + 1
        return max(0.0, self.heal_anchor + steps * params.recovery_time - now)

    def failure(self, params: DaParameters, now: float) -> DaState:
        if params.recovery_time == 0:  # protection disabled: nothing is counted
            return self
        return replace(self, failed_tries=self.failed_tries + 1, heal_anchor=now)

    def lockout_auth_usable(self, now: float) -> bool:
        return self.lockout_blocked_until is None or now >= self.lockout_blocked_until

    def lockout_auth_failure(self, params: DaParameters, now: float) -> DaState:
        until = now + params.lockout_recovery if params.lockout_recovery else math.inf
        return replace(self, lockout_blocked_until=until)


@dataclass(frozen=True, slots=True)
class DaStatus:
    """What ``vsc tpm status`` / ``vsc info`` show; ``enforced_by`` is ``"tpm"`` or ``"store"``."""

    parameters: DaParameters
    failed_tries: int
    locked_out: bool
    #: ``None`` when unknown (a TPM does not report it).
    lockout_auth_available: bool | None
    enforced_by: str
    retry_after: float | None = None


class AntiHammer(ABC):
    """The dictionary-attack logic guarding PIN-bound secrets, wherever it runs."""

    enforced_by: ClassVar[str]

    @abstractmethod
    def status(self) -> DaStatus: ...

    @abstractmethod
    def set_parameters(self, params: DaParameters, *, lockout_auth: bytes) -> None:
        """Set the parameters (and clear the counter), authorised by the lockout authorisation."""

    @abstractmethod
    def reset(self, *, lockout_auth: bytes) -> None:
        """TPM2_DictionaryAttackLockReset: clear the counter with the lockout authorisation."""

    def before_try(self) -> DaState | None:
        """Called before an authorised unseal; raises :class:`LockedOut`. Returns a token."""
        return None

    def after_try(self, token: DaState | None, *, success: bool) -> None:  # noqa: B027
        """Called after the unseal with the token from :meth:`before_try`."""


class SoftwareAntiHammer(AntiHammer):
    """The TPM model enforced by the store, durable in the card database."""

    enforced_by = "store"

    def __init__(self, db: Database, clock: Clock, salt: bytes) -> None:
        self._db = db
        self._clock = clock
        self._salt = salt

    @classmethod
    def initialise(
        cls, db: Database, clock: Clock, salt: bytes, params: DaParameters, lockout_auth: bytes
    ) -> None:
        """Write the initial row (inside the card's creation transaction)."""
        now = clock.now()
        db.write(
            "INSERT INTO dictionary_attack VALUES (0, ?, ?, ?, 0, ?, NULL, ?, ?)",
            (
                params.max_tries,
                params.recovery_time,
                params.lockout_recovery,
                now,
                now,
                verifier(salt, _LOCKOUT_LABEL, lockout_auth),
            ),
        )

    # -- persistence --------------------------------------------------------------------

    def _load(self) -> tuple[DaParameters, DaState, float]:
        row = self._db.one(
            "SELECT max_tries, recovery_time, lockout_recovery, failed_tries, heal_anchor,"
            " lockout_blocked_until, last_seen FROM dictionary_attack WHERE id = 0"
        )
        if row is None:
            raise LookupError("card has no anti-hammering state")
        params = DaParameters(row[0], row[1], row[2])
        # A clock that went backwards must not stretch nor shorten anything: never go
        # below the latest time this card has seen.
        now = max(self._clock.now(), float(row[6]))
        return params, DaState(row[3], float(row[4]), row[5]).healed(params, now), now

    def _save(self, params: DaParameters, state: DaState, now: float) -> None:
        self._db.write(
            "UPDATE dictionary_attack SET max_tries = ?, recovery_time = ?, lockout_recovery = ?,"
            " failed_tries = ?, heal_anchor = ?, lockout_blocked_until = ?, last_seen = ?"
            " WHERE id = 0",
            (
                params.max_tries,
                params.recovery_time,
                params.lockout_recovery,
                state.failed_tries,
                state.heal_anchor,
                state.lockout_blocked_until,
                now,
            ),
        )

    def _durable(self) -> None:
        if self._db.in_transaction:
            raise RuntimeError("anti-hammering must commit on its own, outside a transaction")

    # -- AntiHammer ----------------------------------------------------------------------

    def status(self) -> DaStatus:
        params, state, now = self._load()
        return DaStatus(
            parameters=params,
            failed_tries=state.failed_tries,
            locked_out=state.locked_out(params),
            lockout_auth_available=state.lockout_auth_usable(now),
            enforced_by=self.enforced_by,
            retry_after=state.retry_after(params, now),
        )

    def before_try(self) -> DaState:
        self._durable()
        with self._db.transaction():
            params, state, now = self._load()
            locked = state.locked_out(params)
            if not locked:
                self._save(params, state.failure(params, now), now)
        if locked:
            wait = state.retry_after(params, now)
            raise LockedOut(
                f"too many wrong authorisations: locked out for {wait:.0f} s more", wait
            )
        return state

    def after_try(self, token: DaState | None, *, success: bool) -> None:
        if not success or token is None:
            return
        self._durable()
        with self._db.transaction():
            params, _, now = self._load()
            self._save(params, token.healed(params, now), now)

    def set_parameters(self, params: DaParameters, *, lockout_auth: bytes) -> None:
        self._use_lockout_auth(lockout_auth)
        with self._db.transaction():
            _, state, now = self._load()
            self._save(params, replace(state, failed_tries=0, heal_anchor=now), now)

    def reset(self, *, lockout_auth: bytes) -> None:
        self._use_lockout_auth(lockout_auth)
        with self._db.transaction():
            params, state, now = self._load()
            self._save(params, replace(state, failed_tries=0, heal_anchor=now), now)

    def set_lockout_auth(self, *, current: bytes, new: bytes) -> None:
        """Change the lockout authorisation (the store's analogue of HierarchyChangeAuth)."""
        self._use_lockout_auth(current)
        with self._db.transaction():
            self._db.write(
                "UPDATE dictionary_attack SET lockout_verifier = ? WHERE id = 0",
                (verifier(self._salt, _LOCKOUT_LABEL, new),),
            )

    def restart(self) -> None:
        """On reopening a card: lift a lockout-authorisation block that lasts "until restart"."""
        with self._db.transaction():
            params, state, now = self._load()
            if state.lockout_blocked_until == math.inf:
                self._save(params, replace(state, lockout_blocked_until=None), now)

    def _use_lockout_auth(self, lockout_auth: bytes) -> None:
        """Check the lockout authorisation: blocked first (durably), unblocked if correct."""
        self._durable()
        with self._db.transaction():
            params, state, now = self._load()
            if not state.lockout_auth_usable(now):
                until = state.lockout_blocked_until or now
                raise LockedOut(
                    "the lockout authorisation is blocked after a wrong value",
                    None if until == math.inf else max(0.0, until - now),
                )
            self._save(params, state.lockout_auth_failure(params, now), now)
            row = self._db.one("SELECT lockout_verifier FROM dictionary_attack WHERE id = 0")
        expected = verifier(self._salt, _LOCKOUT_LABEL, lockout_auth)
        if row is None or not constant_time_equal(bytes(row[0]), expected):
            raise AuthFailed("wrong lockout authorisation")
        with self._db.transaction():
            self._save(params, state, now)
