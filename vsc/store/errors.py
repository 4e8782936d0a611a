"""The store's exceptions: one base class, one subclass per thing a caller handles.

None of them carries a secret. The PIV integration maps them to status words
(:class:`AuthFailed` → 63Cx, :class:`CounterBlocked` → 6983; :class:`LockedOut`
is temporary, so a status word that does not send clients to the PUK, such
as 6985, fits it better than 6983); the CLI prints their message.
"""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Anything the card store refuses or cannot do."""


class InvalidName(StoreError, ValueError):
    """A card, record, counter or binding name that is not allowed."""


class CardNotFound(StoreError):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(f"no card {name!r} at {path}")
        self.name = name
        self.path = path


class CardExists(StoreError):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(f"a card named {name!r} already exists at {path}")
        self.name = name
        self.path = path


class CardInUse(StoreError):
    """Another process (or another open in this one) holds the card's lock."""

    def __init__(self, name: str, path: Path, holder: int | None = None) -> None:
        who = f" by process {holder}" if holder else ""
        super().__init__(f"card {name!r} ({path}) is in use{who}: one card, one process")
        self.name = name
        self.path = path
        self.holder = holder


class CorruptStore(StoreError):
    """The card's files are unreadable, of an unknown format, or fail their integrity check."""


class BackendError(StoreError):
    """The protection backend is missing, misconfigured or unreachable."""


class BackendMismatch(BackendError):
    """The card was sealed by another backend: another TPM, key file or passphrase."""


class AuthFailed(StoreError):
    """A wrong PIN, PUK or other authorisation value (counted by the anti-hammering logic).

    ``remaining`` is the try counter left after this attempt when the caller
    named one (``StoredCard.unlock(..., counter=...)``), else ``None``.
    """

    def __init__(self, message: str, remaining: int | None = None) -> None:
        super().__init__(message)
        self.remaining = remaining


class LockedOut(StoreError):
    """Dictionary-attack lockout: no authorisation is even compared now.

    ``retry_after`` is the number of seconds until one more try is allowed,
    when known (the software model knows; a TPM does not say).
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CounterBlocked(StoreError):
    """A retry counter is at zero: the secret it guards can no longer be tried."""

    def __init__(self, counter: str) -> None:
        super().__init__(f"{counter} is blocked (no tries left)")
        self.counter = counter


class BindingLocked(StoreError):
    """A record bound to a PIN was read before the binding was unlocked."""

    def __init__(self, binding: str) -> None:
        super().__init__(f"binding {binding!r} is locked: unlock it with its secret first")
        self.binding = binding
