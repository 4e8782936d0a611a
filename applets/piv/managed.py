"""What a *managed* PIV card adds: a PIN policy, a counted admin key, and a lock.

Theory of operation
-------------------
A card personalised by an identity-management workflow (``vsc create``,
:mod:`vsc.lifecycle`) carries a :class:`Managed` block in its
:class:`~applets.piv.state.PivRecord`; a card without one behaves exactly
like a YubiKey. The block holds:

* ``pin_rules``: the PIN policy (:mod:`applets.piv.pinrules`), enforced by
  the card on every new PIN (CHANGE REFERENCE DATA, RESET RETRY COUNTER).
* ``admin``: the management key's retry counter, :class:`AdminCounter`. The
  management key is also what answers the offline unblock and unlock
  challenges, whose responses are short enough to read aloud, so its tries
  are counted: each try is decremented durably *before* the comparison and a
  correct value restores the counter. It never blocks for good (the admin
  key is the only way back in): like TPM 2.0's dictionary-attack logic, one
  failure is forgiven every ``recovery_time`` seconds, counted from the last
  failure, so a counter at zero allows one more try per period.
* ``lock_at``: the time (Unix seconds) from which the card is locked, or
  None. One value covers every lock: "lock now" is the current time, a
  scheduled lock a later one, a time-limited unlock the time it ends (the
  lock then comes back by itself), an unrestricted unlock None. Locking only
  ever moves ``lock_at`` earlier; only the admin key moves it later.

A locked card refuses every PIN operation with ``6283`` (ISO 7816's "selected
file deactivated": not a blocked PIN, whose counter would read 0) and every
private key operation with ``6982``; the management key keeps working, so the
helpdesk can still unlock or unblock it. A time-limited unlock lasts
:data:`UNLOCK_MIN` to :data:`UNLOCK_MAX` seconds (MyID's temporary access:
8 hours to one week); an unrestricted one has no end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .pinrules import PinRules

__all__ = [
    "DEFAULT_ADMIN_RECOVERY",
    "DEFAULT_ADMIN_TRIES",
    "UNLOCK_MAX",
    "UNLOCK_MIN",
    "AdminCounter",
    "Managed",
    "unlock_refusal",
]

#: Wrong management-key answers allowed before the counter blocks.
DEFAULT_ADMIN_TRIES = 10
#: One failure forgiven per hour (and, when blocked, one try per hour).
DEFAULT_ADMIN_RECOVERY = 3600
#: A time-limited unlock lasts from 8 hours to one week, in seconds.
UNLOCK_MIN = 8 * 3600
UNLOCK_MAX = 7 * 24 * 3600


def unlock_refusal(seconds: int) -> str | None:
    """Why an unlock for ``seconds`` is refused (None: within the range)."""
    if UNLOCK_MIN <= seconds <= UNLOCK_MAX:
        return None
    return (
        f"an unlock for {seconds} s is outside the range: a time-limited unlock lasts"
        f" 8 hours to 1 week ({UNLOCK_MIN} to {UNLOCK_MAX} s), or is unrestricted"
    )


@dataclass(frozen=True, slots=True)
class AdminCounter:
    """A self-healing retry counter: TPM 2.0's dictionary-attack model as tries left."""

    maximum: int = DEFAULT_ADMIN_TRIES
    remaining: int = DEFAULT_ADMIN_TRIES
    #: Seconds per forgiven failure; must be positive (a permanent block is not offered).
    recovery_time: int = DEFAULT_ADMIN_RECOVERY
    #: When the last failure happened or the last failure was forgiven.
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.remaining <= self.maximum <= 255 or self.maximum < 1:
            raise ValueError(f"bad admin counter {self.remaining}/{self.maximum}")
        if self.recovery_time < 1:
            raise ValueError("the admin key's recovery time must be at least one second")

    def healed(self, now: float) -> AdminCounter:
        """Forgive one failure per whole recovery period since the anchor."""
        if self.remaining == self.maximum:
            return self
        steps = int((now - self.anchor) // self.recovery_time)
        if steps <= 0:  # also a clock that went backwards: nothing is forgiven
            return self
        remaining = min(self.maximum, self.remaining + steps)
        return replace(self, remaining=remaining, anchor=self.anchor + steps * self.recovery_time)

    def spent(self, now: float) -> AdminCounter:
        """One try taken (before the comparison); the recovery timer restarts."""
        if self.remaining == 0:
            raise ValueError("no admin key try left")
        return replace(self, remaining=self.remaining - 1, anchor=now)

    def restored(self) -> AdminCounter:
        return replace(self, remaining=self.maximum)

    def retry_after(self, now: float) -> float:
        """Seconds until a blocked counter allows one more try (0 when not blocked)."""
        if self.remaining:
            return 0.0
        return max(0.0, self.anchor + self.recovery_time - now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "maximum": self.maximum,
            "remaining": self.remaining,
            "recovery_time": self.recovery_time,
            "anchor": self.anchor,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdminCounter:
        return cls(
            int(d["maximum"]), int(d["remaining"]), int(d["recovery_time"]), float(d["anchor"])
        )


@dataclass(frozen=True, slots=True)
class Managed:
    """The managed-card block of a PIV record (see the module docstring)."""

    pin_rules: PinRules = field(default_factory=PinRules)
    admin: AdminCounter = field(default_factory=AdminCounter)
    lock_at: float | None = None

    def locked(self, now: float) -> bool:
        return self.lock_at is not None and now >= self.lock_at

    def locked_from(self, when: float) -> Managed:
        """A lock from ``when`` on, unless the card already locks earlier."""
        if self.lock_at is not None and self.lock_at <= when:
            return self
        return replace(self, lock_at=when)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pin_rules": self.pin_rules.to_dict(),
            "admin": self.admin.to_dict(),
            "lock_at": self.lock_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Managed:
        """Inverse of :meth:`to_dict`; ``ValueError`` on anything malformed."""
        try:
            lock_at = d["lock_at"]
            return cls(
                PinRules.from_dict(d["pin_rules"]),
                AdminCounter.from_dict(d["admin"]),
                None if lock_at is None else float(lock_at),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed managed-card block: {e}") from e
