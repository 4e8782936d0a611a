"""Rollback protection: a card's files kept in step with a TPM NV counter that never goes back.

Theory of operation
-------------------
A card created on the tpm backend gets its own NV counter in the TPM (its
handle and TPM name are sealed with the card key, :mod:`vsc.store.settings`).
The card's files record the counter value they belong to (the *epoch*) and a
MAC, under a key derived from the card key, over the epoch and a digest of
every table of the card's database. A counter's value can only grow, and a
new counter starts above every value any counter of that TPM ever had, so an
older copy of the files carries an epoch below the counter and is refused
("rolled back"), as is one whose tables do not match their MAC (edited, or
mixed from copies of different ages).

Each committed transaction that changed the database writes epoch + 1 and the
new MAC in the same commit, then increments the counter before the caller
goes on: a retry counter decremented before a PIN comparison is on disk *and*
in the TPM before anything is compared (if the TPM cannot be reached the try
is given back and nothing is compared). A crash, or a TPM outage, between the
commit and the increment leaves the files one ahead of the counter: the change
stands, and the next change or the next open finishes the increment first (an
older copy is still one behind).

The counter is advanced only when it matters, since every increment is a
write to the TPM's non-volatile memory:

* a transaction that changed nothing (a correct PIN whose counter was full,
  reads) writes nothing;
* a transaction that only gives tries back (a correct PIN restoring its retry
  counter) rewrites the MAC under the same epoch: going back past it only
  loses tries;
* every other change advances it: each PIN, PUK or management-key attempt,
  a PIN or key change, key generation or import, a data object written, a
  block, an unblock, a reset.

In use that is one increment per verification or authentication plus one per
change made by an administrator, e.g. a few dozen a day for a card used at
every logon, far inside the write endurance TPMs give their NV counters.

What this stops: putting back an old copy of the files (a backup, a snapshot
of a VM or of a home directory), which would revive an old PIN, a replaced or
destroyed key, or spent retry counters. What it does not: a program running
as the card's user with access to the same TPM can unseal the card key (it
needs no PIN) and so recompute the MAC for old content at the current epoch;
binding the card key to the boot state (``vsc create --pcr``) narrows that to
the same boot state.

The MAC leaves out the audit anchor (the last audit record about the card,
:data:`UNSIGNED`): it is written without the card key, by a connection of its
own while the card is open elsewhere, and it is not card state (the card never
reads it; ``vsc audit --verify`` checks it against the audit log).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from .crypto import constant_time_equal, hkdf
from .db import AUDIT_ANCHOR, Database
from .errors import CorruptStore, RolledBack, StoreError
from .protect import CounterBank, CounterRef

log = logging.getLogger(__name__)

#: Rows of the ``meta`` table this module owns (left out of the digest they sign).
EPOCH = "rollback_epoch"
MAC = "rollback_mac"
#: Rows of the ``meta`` table outside the card's state: the MAC leaves them out. The audit
#: anchor is written by whoever writes an audit record about the card, also while another
#: process has the card open (vsc.store.db.write_anchor); it is evidence about the audit
#: log, never read by the card, and checked against that log by ``vsc audit --verify``.
UNSIGNED = (EPOCH, MAC, AUDIT_ANCHOR)


def counter_auth(card_key: bytes) -> bytes:
    """The authValue of the card's NV counter, derived from its card key."""
    return hkdf(card_key, salt=b"", info=b"vsc/rollback/counter-auth/v1")


def _encode(value: Any) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return b"B" + len(raw).to_bytes(4, "big") + raw
    text = value if isinstance(value, str) else repr(value)
    tag = b"S" if isinstance(value, str) else b"I" if isinstance(value, int) else b"F"
    data = text.encode()
    return tag + len(data).to_bytes(4, "big") + data


def content_digest(db: Database) -> bytes:
    """SHA-256 over every table of the card's database (rows in a canonical order)."""
    digest = hashlib.sha256(b"vsc/rollback/content/v1\0")
    tables = db.all("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    for (table,) in tables:
        rows = db.all(f'SELECT * FROM "{table}"')  # names from sqlite_master
        encoded = sorted(b"".join(_encode(v) for v in row) for row in rows)
        if table == "meta":
            skip = {_encode(key) for key in UNSIGNED}
            encoded = [r for r in encoded if not any(r.startswith(s) for s in skip)]
        digest.update(_encode(str(table)) + len(encoded).to_bytes(4, "big"))
        for row in encoded:
            digest.update(len(row).to_bytes(4, "big") + row)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class RollbackState:
    """What ``vsc info`` shows: the counter and the epoch the files are at."""

    handle: int
    counter: int
    files: int

    @property
    def summary(self) -> str:
        step = "in step" if self.files == self.counter else "ahead by one (being advanced)"
        return f"TPM NV counter {self.handle:#010x} at {self.counter}; the files {step}"


class RollbackGuard:
    """A card's files kept in step with its counter; the database's commit hook."""

    def __init__(self, card: str, bank: CounterBank, ref: CounterRef, card_key: bytes) -> None:
        self.card = card
        self._bank = bank
        self._ref = ref
        self._auth = counter_auth(card_key)
        self._mac_key = hkdf(card_key, salt=b"", info=b"vsc/rollback/state-mac/v1")
        self._counter = 0  # the TPM counter's value, as far as we know
        self._files = 0  # the epoch committed in the files
        self._digest = b""
        self._next: tuple[int, bytes] | None = None
        self._waived = False
        self._uncertain = False

    @property
    def state(self) -> RollbackState:
        return RollbackState(self._ref.handle, self._counter, self._files)

    def _mac(self, epoch: int, digest: bytes) -> bytes:
        message = b"vsc/rollback/state/v1\0" + epoch.to_bytes(8, "big") + digest
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def _write(self, db: Database, epoch: int, digest: bytes) -> None:
        for key, value in ((EPOCH, str(epoch).encode()), (MAC, self._mac(epoch, digest))):
            db.write(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def stamp(self, db: Database, counter: int) -> None:
        """A new card's files at ``counter`` (inside its creating transaction)."""
        self._counter = self._files = counter
        self._digest = content_digest(db)
        self._write(db, counter, self._digest)

    def check(self, db: Database) -> RollbackState:
        """At open: the files match their MAC and the counter, or :class:`RolledBack`."""
        meta = db.meta()
        try:
            files, mac = int(meta[EPOCH]), meta[MAC]
        except (KeyError, ValueError):
            raise CorruptStore(f"card {self.card!r}: its rollback state is missing") from None
        digest = content_digest(db)
        if not constant_time_equal(self._mac(files, digest), mac):
            raise CorruptStore(
                f"card {self.card!r}: its files fail their rollback check (edited, or put"
                " together from copies of different ages)"
            )
        counter = self._bank.read(self._ref, self._auth)
        if files < counter:
            raise RolledBack(
                f"card {self.card!r}: rolled back: its files are at state {files} but its TPM"
                f" counter {self._ref.handle:#010x} is at {counter}; an older copy of the card"
                " was put back. Refusing it: restore the newest copy, or destroy the card"
            )
        if files > counter + 1:
            raise CorruptStore(
                f"card {self.card!r}: its files are at state {files}, ahead of its TPM counter"
                f" ({counter})"
            )
        self._counter, self._files, self._digest = counter, files, digest
        if files == counter + 1:
            log.warning("card %r: finishing an interrupted counter update", self.card)
            self._advance()
        return self.state

    def _advance(self) -> None:
        while self._counter < self._files:
            if self._uncertain:
                # An increment failed without an answer: the TPM may have done it.
                # Counting it again would put the counter ahead of the files.
                self._counter = self._bank.read(self._ref, self._auth)
                self._uncertain = False
                continue
            try:
                self._bank.increment(self._ref, self._auth)
            except StoreError:
                self._uncertain = True
                raise
            self._counter += 1

    # -- the database's commit hook ---------------------------------------------------------

    def waive(self) -> None:
        """This transaction only gives tries back: keep the epoch (no counter write)."""
        self._waived = True

    def require_advanced(self) -> None:
        """The counter has caught up with the files, or an error (a PIN try waits for this)."""
        self._advance()

    def before_commit(self, db: Database) -> None:
        digest = content_digest(db)
        if digest == self._digest:
            self._next = None
            return
        if not self._waived:
            self._advance()  # a change that could not advance the counter before
        epoch = self._files if self._waived else self._files + 1
        self._write(db, epoch, digest)
        self._next = (epoch, digest)

    def after_commit(self) -> None:
        self._waived = False
        if self._next is None:
            return
        (self._files, self._digest), self._next = self._next, None
        try:
            self._advance()
        except StoreError as e:
            # The change is durable: reporting it as failed would be a lie. The next
            # change (or open) advances the counter first; a PIN try waits for it.
            log.warning("card %r: change saved, its TPM counter not advanced yet: %s", self.card, e)

    def rolled_back(self) -> None:
        self._waived = False
        self._next = None
