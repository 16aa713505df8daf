"""The alert worker's durable memory: ``<data_dir>/alerts.sqlite`` (WAL).

- ``alert_cursor``: the last ``results.id`` of the index that was looked at;
- ``alert_seen``: per (study, model) the newest result revision decided on, so an older
  revision recorded late (or a result row replaced) never alerts again;
- ``alerts``: one row per alert sent or to send - (study, revision, model, channel) with
  the category, whether it alerts, update/previous category, and the payload exactly as it
  is sent.  ``enqueued`` flips once the outbox holds the row; the outbox's unique
  ``(kind, destination, object_id)`` makes a repeated enqueue after a crash a no-op.

Decisions and the cursor are committed in one transaction, so a crash at any point either
redoes the whole decision (same keys, same payload) or nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aenode.store.sqlite import open_database

ALERTS_FILE = "alerts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_result_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_seen (
    study_uid TEXT NOT NULL,
    model     TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    PRIMARY KEY (study_uid, model)
);
CREATE TABLE IF NOT EXISTS alerts (
    key               TEXT PRIMARY KEY,
    study_uid         TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    model             TEXT NOT NULL,
    channel           TEXT NOT NULL,
    category          TEXT NOT NULL,
    alerting          INTEGER NOT NULL,
    is_update         INTEGER NOT NULL,
    previous_category TEXT,
    payload_json      TEXT NOT NULL,
    created           REAL NOT NULL,
    enqueued          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_channel ON alerts (study_uid, model, channel, revision);
CREATE INDEX IF NOT EXISTS alerts_unqueued ON alerts (enqueued);
"""


@dataclass(frozen=True)
class AlertRow:
    key: str
    study_uid: str
    revision: int
    model: str
    channel: str
    category: str
    alerting: bool
    is_update: bool
    previous_category: str | None
    payload_json: str
    created: float
    enqueued: bool

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.payload_json)


_COLS = ("key, study_uid, revision, model, channel, category, alerting, is_update, previous_category,"
         " payload_json, created, enqueued")


def _row(r: tuple) -> AlertRow:
    return AlertRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], r[9], r[10], bool(r[11]))


class AlertStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = open_database(self.path, _SCHEMA)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path) -> AlertStore:
        return cls(Path(data_dir) / ALERTS_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def cursor(self) -> int:
        with self._lock:
            r = self._db.execute("SELECT last_result_id FROM alert_cursor WHERE id=1").fetchone()
        return int(r[0]) if r else 0

    def seen_revision(self, study_uid: str, model: str) -> int:
        with self._lock:
            r = self._db.execute("SELECT revision FROM alert_seen WHERE study_uid=? AND model=?",
                                 (study_uid, model)).fetchone()
        return int(r[0]) if r else 0

    def last_alert(self, study_uid: str, model: str, channel: str) -> AlertRow | None:
        with self._lock:
            r = self._db.execute(
                f"SELECT {_COLS} FROM alerts WHERE study_uid=? AND model=? AND channel=?"
                " ORDER BY revision DESC, created DESC LIMIT 1", (study_uid, model, channel)).fetchone()
        return _row(r) if r else None

    def commit_decisions(self, cursor: int, seen: Iterable[tuple[str, str, int]],
                         alerts: Iterable[AlertRow]) -> None:
        """Advance the cursor, record the revisions decided on and the new alerts, atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO alert_cursor (id, last_result_id) VALUES (1, ?)"
                                 " ON CONFLICT(id) DO UPDATE SET last_result_id=MAX(last_result_id,"
                                 " excluded.last_result_id)", (cursor,))
                self._db.executemany(
                    "INSERT INTO alert_seen (study_uid, model, revision) VALUES (?,?,?)"
                    " ON CONFLICT(study_uid, model) DO UPDATE SET revision=MAX(revision, excluded.revision)",
                    list(seen))
                self._db.executemany(
                    f"INSERT OR IGNORE INTO alerts ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(a.key, a.study_uid, a.revision, a.model, a.channel, a.category, int(a.alerting),
                      int(a.is_update), a.previous_category, a.payload_json, a.created, int(a.enqueued))
                     for a in alerts])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def unqueued(self) -> list[AlertRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM alerts WHERE enqueued=0 ORDER BY created, key").fetchall()
        return [_row(r) for r in rows]

    def mark_enqueued(self, key: str) -> None:
        with self._lock:
            self._db.execute("UPDATE alerts SET enqueued=1 WHERE key=?", (key,))

    def alerts(self, study_uid: str | None = None) -> list[AlertRow]:
        sql = f"SELECT {_COLS} FROM alerts"
        args: tuple = ()
        if study_uid is not None:
            sql += " WHERE study_uid=?"
            args = (study_uid,)
        with self._lock:
            return [_row(r) for r in self._db.execute(sql + " ORDER BY created, key", args).fetchall()]
