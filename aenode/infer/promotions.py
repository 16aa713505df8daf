"""Which version of each model is active, and the log of every promotion (the audit trail).

Several versions of one model may be installed side by side (``models/covid-typicality/``
and ``models/covid-typicality-1.1.0/``, both ``name = "covid-typicality"``).  The
registry runs the version recorded here; with none recorded, the highest version.
``aenode models promote NAME@VERSION`` changes it; the old package stays on disk, so a
rollback is another promotion.  This module is the only owner of ``DataDir.models_db``.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from pathlib import Path

from aenode.store.datadir import DataDir
from aenode.store.db import Database, open_store_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS active_versions (
    name     TEXT PRIMARY KEY,
    version  TEXT NOT NULL,
    since    DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS promotions (
    id        {id},
    at        DOUBLE PRECISION NOT NULL,
    name      TEXT NOT NULL,
    version   TEXT NOT NULL,
    previous  TEXT,
    "user"    TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Promotion:
    id: int
    at: float
    name: str
    version: str
    previous: str | None
    user: str


class Promotions:
    """Active version per model name plus the append-only promotion log."""

    def __init__(self, path: str | Path, *, url: str | None = None):
        self._db: Database = open_store_database("model_versions", Path(path), _SCHEMA, (), url)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, *, url: str | None = None) -> Promotions:
        """``url`` is ``[database] url`` (None: SQLite under ``data_dir``)."""
        return cls(DataDir.of(data_dir).models_db, url=url)

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        self._db.check()

    def active(self) -> dict[str, str]:
        """Model name -> promoted version."""
        return {r[0]: r[1] for r in self._db.query("SELECT name, version FROM active_versions")}

    def promote(self, name: str, version: str, user: str | None = None) -> Promotion:
        """Make ``version`` the active one and log who did it (one transaction)."""
        now = time.time()
        who = user or getpass.getuser()
        with self._db.tx() as t:
            row = t.one("SELECT version FROM active_versions WHERE name=?", (name,))
            previous = row[0] if row else None
            t.execute("INSERT INTO active_versions (name, version, since) VALUES (?,?,?)"
                      " ON CONFLICT (name) DO UPDATE SET version=excluded.version, since=excluded.since",
                      (name, version, now))
            pid = t.insert_id('INSERT INTO promotions (at, name, version, previous, "user") VALUES (?,?,?,?,?)',
                              (now, name, version, previous, who))
        return Promotion(pid, now, name, version, previous, who)

    def log(self, name: str | None = None) -> list[Promotion]:
        sql = 'SELECT id, at, name, version, previous, "user" FROM promotions'
        args: tuple[str, ...] = ()
        if name is not None:
            sql += " WHERE name=?"
            args = (name,)
        return [Promotion(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5])
                for r in self._db.query(sql + " ORDER BY id", args)]
