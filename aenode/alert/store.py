"""The alert stage's durable memory: the ``alerts`` database of the data directory.

The alert stage owns this database; nothing else talks SQL to it, and it talks SQL only
through :class:`aenode.store.db.Database` with portable statements (the PostgreSQL
backend plugs into that adapter).  Its file comes from :class:`aenode.store.datadir.DataDir`.

- ``alert_cursor``: the last index result id the worker looked at;
- ``alert_seen``: per (study, model) the newest result revision decided on, so an older
  revision recorded late (or a result row replaced) never alerts again;
- ``alerts``: one row per decision - (study, revision, model, channel) with the category,
  whether it alerts, update/previous category, and the payload exactly as it is sent.
  ``enqueued`` flips once the outbox holds the row; the outbox's unique
  ``(kind, destination, object_id)`` makes a repeated enqueue after a crash a no-op.

The built-in channel ``"dashboard"`` (:data:`DASHBOARD`) gets a decision for every newest
result revision, alerting or not, and is never handed to the outbox: the dashboard reads
"is this study alerting?" from here instead of deciding again from the manifests.

Decisions and the cursor are committed in one transaction, so a crash at any point either
redoes the whole decision (same keys, same payload) or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aenode.store.datadir import DataDir
from aenode.store.db import Database, Row, open_store_database

DASHBOARD = "dashboard"  # the built-in channel the dashboard reads; never enqueued

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_result_id BIGINT NOT NULL
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
    created           DOUBLE PRECISION NOT NULL,
    enqueued          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_channel ON alerts (study_uid, model, channel, revision);
CREATE INDEX IF NOT EXISTS alerts_unqueued ON alerts (enqueued);
CREATE INDEX IF NOT EXISTS alerts_current ON alerts (channel, alerting, created);
"""


@dataclass(frozen=True)
class AlertRow:
    """One decision on one channel for one (study, result revision, model)."""

    key: str
    study_uid: str
    revision: int
    model: str
    channel: str
    category: str           # the alert category, or the result category when not alerting
    alerting: bool
    is_update: bool
    previous_category: str | None
    payload_json: str
    created: float
    enqueued: bool

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload_json)
        return data

    @property
    def probability(self) -> float | None:
        p = self.payload.get("probability")
        return None if p is None else float(p)


_COLS = ("key, study_uid, revision, model, channel, category, alerting, is_update, previous_category,"
         " payload_json, created, enqueued")


def _row(r: Row) -> AlertRow:
    return AlertRow(str(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), bool(r[6]),
                    bool(r[7]), r[8], str(r[9]), float(r[10]), bool(r[11]))


# The newest decision per (study, model) on one channel: no later revision (or, for the
# same revision, no later decision) exists.  Portable: no window functions needed.
_NEWEST = (" NOT EXISTS (SELECT 1 FROM alerts b WHERE b.channel = a.channel"
           " AND b.study_uid = a.study_uid AND b.model = a.model"
           " AND (b.revision > a.revision OR (b.revision = a.revision AND b.created > a.created)))")


class AlertStore:
    """The alert decisions; the only code that talks SQL to the alerts database."""

    def __init__(self, path: str | Path, *, url: str | None = None):
        self.path = Path(path)
        self._db: Database = open_store_database("alerts", self.path, _SCHEMA, (), url)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, *, url: str | None = None) -> AlertStore:
        """``url`` is ``[database] url`` (None: SQLite under ``data_dir``)."""
        return cls(DataDir.of(data_dir).alerts_db, url=url)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the worker's memory -------------------------------------------------------

    def cursor(self) -> int:
        r = self._db.one("SELECT last_result_id FROM alert_cursor WHERE id = 1")
        return int(r[0]) if r else 0

    def seen_revision(self, study_uid: str, model: str) -> int:
        r = self._db.one("SELECT revision FROM alert_seen WHERE study_uid = ? AND model = ?",
                         (study_uid, model))
        return int(r[0]) if r else 0

    def last_alert(self, study_uid: str, model: str, channel: str) -> AlertRow | None:
        r = self._db.one(
            f"SELECT {_COLS} FROM alerts WHERE study_uid = ? AND model = ? AND channel = ?"
            " ORDER BY revision DESC, created DESC LIMIT 1", (study_uid, model, channel))
        return _row(r) if r else None

    def commit_decisions(self, cursor: int, seen: Iterable[tuple[str, str, int]],
                         alerts: Iterable[AlertRow]) -> None:
        """Advance the cursor, record the revisions decided on and the new alerts, atomically.

        The cursor and the seen revisions only move forward (a repeated or late commit
        never moves them back); an alert already recorded under its key is kept as it is.
        """
        with self._db.tx() as t:
            t.execute("INSERT INTO alert_cursor (id, last_result_id) VALUES (1, ?)"
                      " ON CONFLICT (id) DO UPDATE SET last_result_id = excluded.last_result_id"
                      " WHERE excluded.last_result_id > alert_cursor.last_result_id", (cursor,))
            t.executemany(
                "INSERT INTO alert_seen (study_uid, model, revision) VALUES (?, ?, ?)"
                " ON CONFLICT (study_uid, model) DO UPDATE SET revision = excluded.revision"
                " WHERE excluded.revision > alert_seen.revision", list(seen))
            t.executemany(
                f"INSERT INTO alerts ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                [(a.key, a.study_uid, a.revision, a.model, a.channel, a.category, int(a.alerting),
                  int(a.is_update), a.previous_category, a.payload_json, a.created, int(a.enqueued))
                 for a in alerts])

    def unqueued(self) -> list[AlertRow]:
        """Decisions of outbox channels not yet handed to the outbox (never "dashboard")."""
        rows = self._db.query(f"SELECT {_COLS} FROM alerts WHERE enqueued = 0 AND channel <> ?"
                              " ORDER BY created, key", (DASHBOARD,))
        return [_row(r) for r in rows]

    def mark_enqueued(self, key: str) -> None:
        self._db.execute("UPDATE alerts SET enqueued = 1 WHERE key = ?", (key,))

    def alerts(self, study_uid: str | None = None, *, channel: str | None = None) -> list[AlertRow]:
        """Every decision (of one study, of one channel), oldest first."""
        where, args = [], []
        if study_uid is not None:
            where.append("study_uid = ?")
            args.append(study_uid)
        if channel is not None:
            where.append("channel = ?")
            args.append(channel)
        sql = f"SELECT {_COLS} FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        return [_row(r) for r in self._db.query(sql + " ORDER BY created, key", args)]

    # ---- what the dashboard, status and metrics read -------------------------------

    def current_alerts(self, limit: int) -> list[AlertRow]:
        """The studies alerting now: per (study, model) the newest "dashboard" decision,
        if it alerts; newest first."""
        rows = self._db.query(
            f"SELECT {_COLS} FROM alerts a WHERE a.channel = ? AND a.alerting = 1 AND {_NEWEST}"
            " ORDER BY a.created DESC, a.key LIMIT ?", (DASHBOARD, int(limit)))
        return [_row(r) for r in rows]

    def current_alert(self, study_uid: str, model: str) -> AlertRow | None:
        """The newest "dashboard" decision for one study and model, alerting or not."""
        return self.last_alert(study_uid, model, DASHBOARD)

    def counts(self) -> dict[tuple[str, str], int]:
        """Decisions recorded so far: (channel, category or "cleared") -> n.

        Monotonic (a counter for metrics): a decision that does not alert - a "cleared"
        update on an outbox channel, a non-alerting result on "dashboard" - counts as
        "cleared".
        """
        rows = self._db.query(
            "SELECT channel, CASE WHEN alerting = 1 THEN category ELSE 'cleared' END AS c, COUNT(*)"
            " FROM alerts GROUP BY channel, CASE WHEN alerting = 1 THEN category ELSE 'cleared' END")
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    def check(self) -> None:
        """Cheap read-only probe for health checks; raises ``StoreError`` naming the database."""
        self._db.check()
