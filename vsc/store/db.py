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
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import CorruptStore, StoreError

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


class Database:
    """A connection to one card's database, with nested write transactions."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if create:
            # Create the file ourselves so it (and the -wal/-shm SQLite derives) is 0600.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        uri = f"file:{quote(str(path))}?mode=rw"  # never let SQLite create a missing card
        try:
            # One thread at a time, but not always the opener: the emulator opens a card
            # in its main thread, serves it from the card's slot thread, closes it after.
            self._conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=10.0, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise CorruptStore(f"cannot open {path}: {e}") from e
        self._depth = 0
        self._scrub_pending = False
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
            raise CorruptStore(f"{self.path} is not a card database: {e}") from e
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
        try:
            row = self.one("SELECT value FROM meta WHERE key = 'format'")
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{self.path} is not a card database: {e}") from e
        if row is None:
            raise CorruptStore(f"{self.path} has no format version")
        version = bytes(row[0]).decode(errors="replace")
        if version != str(FORMAT_VERSION):
            raise CorruptStore(f"{self.path} has format {version}; this vsc reads {FORMAT_VERSION}")

    def meta(self) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self.all("SELECT key, value FROM meta")}

    def integrity_check(self) -> None:
        """SQLite's full consistency check; :class:`CorruptStore` on any finding."""
        rows = [r[0] for r in self.all("PRAGMA integrity_check")]
        if rows != ["ok"]:
            raise CorruptStore(f"{self.path}: {'; '.join(map(str, rows[:5]))}")

    # -- statements ----------------------------------------------------------------

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params).fetchall())

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run one modifying statement inside the current transaction; rows changed."""
        if self._depth == 0:
            raise RuntimeError("writes happen inside transaction()")
        return self._conn.execute(sql, params).rowcount

    # -- transactions -----------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

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
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._scrub_pending = False
            self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")  # returns once the WAL is fsynced
        except BaseException:
            self._scrub_pending = False
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        if self._scrub_pending:
            self.scrub()

    def request_scrub(self) -> None:
        """Scrub after the outermost transaction commits (or now, outside one)."""
        if self._depth:
            self._scrub_pending = True
        else:
            self.scrub()

    def scrub(self) -> None:
        """Fold the WAL into the database and truncate it, so replaced secrets leave no copy."""
        self._scrub_pending = False
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise StoreError(f"{self.path}: WAL checkpoint blocked by another connection")


def read_meta(path: Path) -> dict[str, bytes]:
    """The metadata of a card database, read-only, without its lock (for listings)."""
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
        try:
            return {k: bytes(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise CorruptStore(f"cannot read {path}: {e}") from e
