"""The card database: one SQLite file in WAL mode, every change one durable transaction.

Theory of operation
-------------------
SQLite's write-ahead log makes a commit atomic: a transaction's pages are
appended to ``card.db-wal`` and become part of the database only when its
commit frame is complete, so a process killed at any instant leaves the old
or the new state. ``synchronous=FULL`` fsyncs the log at every commit, so a
commit that returned survives a power cut too (SIGKILL alone would only need
the page cache). ``secure_delete`` zeroes freed and overwritten content in the
database file; :meth:`Database.scrub` checkpoints and truncates the log, so an
old sealed blob (an old PIN's) is gone from both files once it is replaced.

Write transactions start with ``BEGIN IMMEDIATE`` (the write lock up front, no
upgrade deadlock) and nest: only the outermost ``transaction()`` commits.

When the storage fails (disk full, read-only, I/O error) SQLite rolls the
transaction back; the error surfaces as :class:`StorageFailure` and the card
stays in its last committed state. A scrub that fails *after* a commit (a
checkpoint needs room in the database file) does not undo or hide that
commit: it is retried after the next one, and the replaced data stays in the
WAL meanwhile (logged as a warning).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from .errors import CorruptStore, StorageFailure, StoreError, os_storage_failure

log = logging.getLogger(__name__)

#: Bumped when the schema changes incompatibly; older code refuses newer cards.
FORMAT_VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE records (
    name TEXT PRIMARY KEY,
    protection TEXT NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    maximum INTEGER NOT NULL CHECK (maximum BETWEEN 0 AND 255),
    remaining INTEGER NOT NULL CHECK (remaining BETWEEN 0 AND maximum)
) WITHOUT ROWID;
CREATE TABLE bindings (name TEXT PRIMARY KEY, public BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE binding_seals (
    binding TEXT NOT NULL REFERENCES bindings (name) ON DELETE CASCADE,
    role TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (binding, role)
) WITHOUT ROWID;
CREATE TABLE dictionary_attack (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    max_tries INTEGER NOT NULL,
    recovery_time INTEGER NOT NULL,
    lockout_recovery INTEGER NOT NULL,
    failed_tries INTEGER NOT NULL,
    heal_anchor REAL NOT NULL,
    lockout_blocked_until REAL,
    last_seen REAL NOT NULL,
    lockout_verifier BLOB NOT NULL
);
"""


#: SQLite primary result codes that mean the storage failed, not the data or the caller.
_STORAGE_CODES = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_READONLY: "the store is read-only",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot open the card's files",
    sqlite3.SQLITE_PERM: "permission denied",
}
#: SQLite primary result codes that mean the files are damaged: the card is, not the caller.
_CORRUPT_CODES = {
    sqlite3.SQLITE_CORRUPT: "its database is damaged",
    sqlite3.SQLITE_NOTADB: "it is not a card database",
}


def storage_failure(path: Path, error: sqlite3.Error) -> StorageFailure | None:
    """``error`` as a :class:`StorageFailure`, or None if it is not about the storage."""
    reason = _STORAGE_CODES.get(getattr(error, "sqlite_errorcode", 0) & 0xFF)
    return None if reason is None else StorageFailure(f"{path}: {reason} ({error})")


def damage(path: Path, error: sqlite3.Error, label: str | None = None) -> CorruptStore | None:
    """``error`` as a :class:`CorruptStore` naming the card and its file, or None."""
    reason = _CORRUPT_CODES.get(getattr(error, "sqlite_errorcode", 0) & 0xFF)
    if reason is None:
        return None
    card = f"card {label!r}: " if label else ""
    return CorruptStore(f"{card}{path}: {reason} ({error})")


def converted(path: Path, error: sqlite3.Error, label: str | None = None) -> StoreError | None:
    """A failure of the storage or damage to the files as the store's error, else None."""
    return storage_failure(path, error) or damage(path, error, label)


@contextlib.contextmanager
def _storage_errors(path: Path, label: str | None = None) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        failure = converted(path, e, label)
        if failure is None:
            raise
        raise failure from e


class CommitHook(Protocol):
    """Work joined to every outermost transaction: before its COMMIT, after it, or instead."""

    def before_commit(self, db: Database) -> None:
        """Last writes of the transaction (an exception rolls it back)."""

    def after_commit(self) -> None:
        """The transaction is durable; an exception now reaches the caller."""

    def rolled_back(self) -> None:
        """The transaction was rolled back."""


class Database:
    """A connection to one card's database, with nested write transactions."""

    def __init__(self, path: Path, *, create: bool = False, label: str | None = None) -> None:
        self.path = path
        #: The card's name, for messages.
        self.label = label or path.parent.name
        if create:
            # Create the file ourselves so it (and the -wal/-shm SQLite derives) is 0600.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                os.close(os.open(path, flags, 0o600))
            except OSError as e:
                failure = os_storage_failure(f"cannot create {path}", e)
                if failure is None:
                    raise
                raise failure from e
        uri = f"file:{quote(str(path))}?mode=rw"  # never let SQLite create a missing card
        try:
            # One thread at a time, but not always the opener: the emulator opens a card
            # in its main thread, serves it from the card's slot thread, closes it after.
            self._conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=10.0, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise converted(path, e, self.label) or CorruptStore(
                f"card {self.label!r}: cannot open {path}: {e}"
            ) from e
        self._depth = 0
        self._scrub_pending = False
        #: Told about each outermost commit (rollback protection, :mod:`vsc.store.rollback`).
        self.commit_hook: CommitHook | None = None
        self._undo: list[Callable[[], None]] = []
        try:
            self._configure()
        except BaseException:
            self._conn.close()
            raise

    def _configure(self) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            failure = converted(self.path, e, self.label)
            raise failure or CorruptStore(
                f"card {self.label!r}: {self.path} is not a card database: {e}"
            ) from e
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode ({mode})")

    def close(self) -> None:
        self._conn.close()

    # -- schema -------------------------------------------------------------------

    def initialise(self, meta: dict[str, bytes]) -> None:
        """Create the schema and write the card's metadata, in one transaction."""
        with self.transaction():
            # Not executescript(): it would COMMIT the open transaction first.
            for statement in filter(str.strip, SCHEMA.split(";")):
                self._conn.execute(statement)
            self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", str(FORMAT_VERSION).encode()), *meta.items()],
            )

    def check_format(self) -> None:
        card = f"card {self.label!r}: {self.path}"
        try:
            row = self.one("SELECT value FROM meta WHERE key = 'format'")
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{card} is not a card database: {e}") from e
        if row is None:
            raise CorruptStore(f"{card} has no format version")
        version = bytes(row[0]).decode(errors="replace")
        if version != str(FORMAT_VERSION):
            raise CorruptStore(f"{card} has format {version}; this vsc reads {FORMAT_VERSION}")

    def meta(self) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self.all("SELECT key, value FROM meta")}

    def integrity_check(self) -> None:
        """SQLite's full consistency check; :class:`CorruptStore` on any finding."""
        rows = [r[0] for r in self.all("PRAGMA integrity_check")]
        if rows != ["ok"]:
            raise CorruptStore(f"card {self.label!r}: {self.path}: {'; '.join(map(str, rows[:5]))}")

    # -- statements ----------------------------------------------------------------

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with _storage_errors(self.path, self.label):
            row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with _storage_errors(self.path, self.label):
            return list(self._conn.execute(sql, params).fetchall())

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one modifying statement inside the current transaction; rows changed."""
        if self._depth == 0:
            raise RuntimeError("writes happen inside transaction()")
        with _storage_errors(self.path, self.label):
            return self._conn.execute(sql, params).rowcount

    # -- transactions -----------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @property
    def transaction_depth(self) -> int:
        """How many ``transaction()`` blocks are open (1: only the outermost)."""
        return self._depth

    def undo_on_rollback(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` if the open transaction rolls back (in-memory state that followed
        one of its changes, e.g. a PIN-derived value)."""
        if not self._depth:
            raise RuntimeError("undo_on_rollback needs an open transaction")
        self._undo.append(undo)

    def _rolled_back(self, hook: CommitHook | None) -> None:
        self._rollback()
        undo, self._undo = self._undo, []
        for step in reversed(undo):
            step()
        if hook is not None:
            hook.rolled_back()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; nested calls join the outermost, which commits or rolls back."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with _storage_errors(self.path, self.label):
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        hook = self.commit_hook
        try:
            yield
            if hook is not None:
                hook.before_commit(self)
        except BaseException:
            self._depth = 0
            self._scrub_pending = False
            self._rolled_back(hook)
            raise
        self._depth = 0
        try:
            with _storage_errors(self.path, self.label):
                self._conn.execute("COMMIT")  # returns once the WAL is fsynced
        except BaseException:
            self._scrub_pending = False
            self._rolled_back(hook)
            raise
        self._undo.clear()
        if self._scrub_pending:
            self._scrub_after_commit()
        if hook is not None:
            hook.after_commit()

    def _rollback(self) -> None:
        # After a full disk or an I/O error SQLite may have rolled back already; a
        # second ROLLBACK would then fail and hide the error that matters.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _scrub_after_commit(self) -> None:
        # The commit stands whatever happens here: raising now would tell the caller
        # that a change failed which is in fact durable.
        try:
            self.scrub()
        except StoreError as e:
            self._scrub_pending = True  # retried after the next commit
            log.warning("%s: replaced data stays in the WAL for now: %s", self.path, e)

    def request_scrub(self) -> None:
        """Scrub after the outermost transaction commits (or now, outside one)."""
        if self._depth:
            self._scrub_pending = True
        else:
            self.scrub()

    def scrub(self) -> None:
        """Fold the WAL into the database and truncate it, so replaced secrets leave no copy."""
        self._scrub_pending = False
        busy, _, _ = self.one("PRAGMA wal_checkpoint(TRUNCATE)") or (0, 0, 0)
        if busy:
            raise StoreError(f"{self.path}: WAL checkpoint blocked by another connection")


def read_meta(path: Path, label: str | None = None) -> dict[str, bytes]:
    """The metadata of a card database, read-only, without its lock (for listings)."""
    label = label or path.parent.name
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
        try:
            return {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise converted(path, e, label) or CorruptStore(
            f"card {label!r}: cannot read {path}: {e}"
        ) from e


# -- the audit anchor -----------------------------------------------------------------------

#: The metadata key of the last audit record written about the card (JSON: seq, hash).
AUDIT_ANCHOR = "audit_anchor"


def parse_anchor(raw: bytes | None) -> tuple[int, str] | None:
    """An anchor's (seq, hash), or None if there is none or it is unreadable."""
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return int(d["seq"]), str(d["hash"])
    except (ValueError, KeyError, TypeError):
        return None


def _set_anchor(
    one: Callable[[str, tuple[Any, ...]], tuple[Any, ...] | None],
    write: Callable[[str, tuple[Any, ...]], object],
    seq: int,
    digest: str,
) -> None:
    row = one("SELECT value FROM meta WHERE key = ?", (AUDIT_ANCHOR,))
    old = parse_anchor(bytes(row[0]) if row else None)
    if old is not None and old[0] >= seq:
        return  # a later record's anchor is there already (concurrent writers)
    write(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (AUDIT_ANCHOR, json.dumps({"seq": seq, "hash": digest}).encode()),
    )


def write_anchor(path: Path, seq: int, digest: str, db: Database | None = None) -> None:
    """Record the audit log's ``seq``/``digest`` in the card database at ``path``.

    Through ``db`` when this process has the card open (joining its
    transaction), else through a connection of its own that waits briefly
    for another process's write.
    """
    if db is not None:
        with db.transaction():
            _set_anchor(db.one, db.write, seq, digest)
        return
    uri = f"file:{quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=2.0)
        try:
            conn.execute("BEGIN IMMEDIATE")

            def one(sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
                row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
                return row

            _set_anchor(one, conn.execute, seq, digest)
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise converted(path, e) or StoreError(
            f"{path}: cannot record the audit anchor: {e}"
        ) from e
