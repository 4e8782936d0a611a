"""The store's exceptions: one base class, one subclass per thing a caller handles.

None of them carries a secret. The PIV integration maps them to status words
(:class:`AuthFailed` → 63Cx, :class:`CounterBlocked` → 6983; :class:`LockedOut`
is temporary, so a status word that does not send clients to the PUK, such
as 6985, fits it better than 6983); the CLI prints their message. The two
failures of the card's storage itself, :class:`StorageFailure` (its files),
:class:`CorruptStore` (damaged files) and :class:`BackendUnavailable` (its
TPM), carry their status word (``6581``, memory failure), so any applet on
the store answers them without a mapping.
"""

from __future__ import annotations

import errno
from pathlib import Path

from vsc.sw import SW, ApduError


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


class CorruptStore(StoreError, ApduError):
    """The card's files are damaged, missing, of an unknown format, or fail their integrity check.

    The message names the card and the file. Nothing is repaired or made again:
    a card command that meets it answers ``6581`` (memory failure).
    """

    def __init__(self, message: str) -> None:
        ApduError.__init__(self, SW.MEMORY_FAILURE, message)


class RolledBack(CorruptStore):
    """The card's files are older than its TPM counter: an old copy was put back."""


class BackendError(StoreError):
    """The protection backend is missing, misconfigured or unreachable."""


class NoCounter(BackendError):
    """A hardware counter cannot be defined now (the TPM's owner authorisation is needed)."""


class BackendUnavailable(BackendError, ApduError):
    """The backend stopped answering (the TPM is gone or failing): the operation did not complete.

    A card command that needed it answers ``6581``; the card works again once
    the backend is back. ``compared`` says whether an authorisation may have
    been checked before the backend went away (it had received the command
    that checks it): only then does the try count.
    """

    def __init__(self, message: str, *, compared: bool = False) -> None:
        ApduError.__init__(self, SW.MEMORY_FAILURE, message)
        self.compared = compared


class StorageFailure(StoreError, ApduError):
    """The card's files could not be read or written: disk full, read-only, I/O error.

    A change that fails this way was rolled back: the card is in its last
    committed state. A card command answers ``6581`` (memory failure).
    """

    def __init__(self, message: str) -> None:
        ApduError.__init__(self, SW.MEMORY_FAILURE, message)


class BackendMismatch(BackendError):
    """The card was sealed by another backend: another TPM, key file or passphrase."""


class PcrMismatch(BackendMismatch):
    """A secret sealed to the boot state (PCR values) and the boot state changed."""


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


#: errno values that mean the storage failed, not the caller: a disk full, read-only or failing.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file size limit is reached",
    errno.EROFS: "the store is read-only",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def os_storage_failure(what: str, error: OSError) -> StorageFailure | None:
    """``error`` as a :class:`StorageFailure` about ``what``, or None if it is another kind."""
    reason = _STORAGE_ERRNOS.get(error.errno or 0)
    if reason is None:
        return None
    return StorageFailure(f"{what}: {reason} ({error.strerror or error})")
