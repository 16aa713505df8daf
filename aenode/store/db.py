"""The one way a store talks SQL: a small adapter over the embedded database.

Each stage owns its database (index, outbox, alerts, web) and is the only code that
talks SQL to it, always through this adapter, so that a second engine (PostgreSQL, for
several nodes) plugs in here and nowhere else.  Rules for SQL written against it:

- ``?`` placeholders (the adapter translates for engines that use another style);
- portable statements only: ``INSERT ... ON CONFLICT (...) DO UPDATE / DO NOTHING``
  instead of ``INSERT OR REPLACE / OR IGNORE``, ``CASE`` instead of scalar ``MAX(a, b)``,
  ``DOUBLE PRECISION`` for times, ``BIGINT`` for counts;
- schema DDL may use ``{id}`` for an auto-numbered primary key column type.

Every database gets the same durability settings: WAL so readers (status, dashboard)
never block the writer, ``synchronous=FULL`` so a committed row survives a power cut,
and a busy timeout so concurrent writers queue instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Params = Sequence[Any]
Row = tuple[Any, ...]

_SQLITE_ID = "INTEGER PRIMARY KEY AUTOINCREMENT"


def _statements(script: str) -> list[str]:
    return [s.strip().replace("{id}", _SQLITE_ID) for s in script.split(";") if s.strip()]


class StoreError(Exception):
    """A database could not be opened or used (names the database, never row contents)."""


_TRANSIENT_ERRNOS = frozenset({28, 122, 12, 5, 24, 23})  # ENOSPC EDQUOT ENOMEM EIO EMFILE ENFILE


def is_transient(exc: BaseException) -> bool:
    """True for faults that pass by themselves (disk full, out of memory or descriptors,
    a busy database), as opposed to invalid input: work that failed so is retried later."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("full", "locked", "busy", "disk i/o", "out of memory"))
    if isinstance(exc, StoreError):
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    return False


class Transaction:
    """Statements inside one ``Database.tx()``; the same ``?`` style as the database."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return self._conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.executemany(sql, [tuple(r) for r in rows])

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def one(self, sql: str, params: Params = ()) -> Row | None:
        got: Row | None = self._conn.execute(sql, tuple(params)).fetchone()
        return got

    def insert_id(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT and return the new row's auto-numbered id."""
        cur = self._conn.execute(sql, tuple(params))
        if cur.lastrowid is None:
            raise StoreError("insert_id: the statement inserted no row")
        return int(cur.lastrowid)


class Database:
    """One database of one store: a connection shared by the store's threads."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, schema: str, *, migrations: Sequence[str] = ()):
        self.path = Path(path)
        self.name = self.path.name
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            with self.tx() as t:
                for stmt in _statements(schema):
                    t.execute(stmt)
                self._migrate(t, migrations)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.name}: cannot open ({exc})") from exc

    @staticmethod
    def _migrate(t: Transaction, migrations: Sequence[str]) -> None:
        """Versioned schema changes: ``migrations[k]`` takes the schema from version k to
        k + 1 (``schema`` is version 0); each runs once, in the transaction that records it."""
        t.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = t.one("SELECT version FROM schema_version")
        version = int(row[0]) if row else 0
        if row is None:
            t.execute("INSERT INTO schema_version (version) VALUES (0)")
        for k in range(version, len(migrations)):
            for stmt in _statements(migrations[k]):
                t.execute(stmt)
            t.execute("UPDATE schema_version SET version=?", (k + 1,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[Transaction]:
        """A write transaction: all of it commits, or none of it (the lock is taken first,
        so two writers never interleave)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def one(self, sql: str, params: Params = ()) -> Row | None:
        with self._lock:
            got: Row | None = self._conn.execute(sql, tuple(params)).fetchone()
            return got

    def execute(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; returns the number of rows changed."""
        with self.tx() as t:
            return t.execute(sql, params)

    def check(self) -> None:
        """Cheap read-only probe for health checks; raises StoreError naming the database."""
        try:
            self.one("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.name}: {exc}") from exc
