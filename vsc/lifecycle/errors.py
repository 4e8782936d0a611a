"""What the lifecycle API refuses, one class per thing a caller (the CLI) tells apart.

None of them carries a secret. Store errors (:class:`vsc.store.CardExists`,
:class:`vsc.store.CardInUse`, ...) pass through unchanged.
"""

from __future__ import annotations

__all__ = [
    "AdminKeyBlocked",
    "CapacityExceeded",
    "ChallengeKept",
    "LifecycleError",
    "NoPendingRequest",
    "NotManaged",
    "PinPolicyViolation",
    "Refused",
    "WrongAdminKey",
]


class LifecycleError(Exception):
    """Anything the lifecycle API cannot or will not do."""


class Refused(LifecycleError):
    """A request the card's rules refuse (the CLI's exit status 3)."""


class NotManaged(Refused):
    """A card not made by ``vsc create``: it has no lock, PIN policy or admin unblock."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"card {name!r} is not a managed card (it was not made by vsc create):"
            " it has no lock, PIN policy or admin-key unblock"
        )


class PinPolicyViolation(Refused):
    """A PIN the card's policy refuses; ``rule`` names the rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class CapacityExceeded(Refused):
    """More cards on one TPM (or backend) than its capacity."""


class WrongAdminKey(Refused):
    """A wrong admin key or response; one try of the admin-key counter was spent."""

    def __init__(self, message: str, tries_left: int | None) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class AdminKeyBlocked(Refused):
    """The admin-key counter is at zero: one more try after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        minutes = max(1, round(retry_after / 60))
        super().__init__(
            f"the admin key is blocked after too many wrong answers: one more try in about"
            f" {minutes} minute{'s' if minutes != 1 else ''}"
        )
        self.retry_after = retry_after


class NoPendingRequest(Refused):
    """A response typed for a card that has no (or no longer a) challenge outstanding."""


class ChallengeKept(LifecycleError):
    """A right response whose change could not be made (the TPM in lockout, or gone).

    Nothing changed, the challenge stays answerable with the same response."""
