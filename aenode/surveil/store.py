"""The surveillance stage's database (``DataDir.surveillance_db``); the only code that
talks SQL to it, through :class:`aenode.store.db.Database`, with portable statements.

- ``surveil_cursor``: the last index result id the worker looked at;
- ``records``: one de-identified record per (study, model), keyed by a one-way hash; a
  newer result revision replaces it, an older one arriving late does not;
- ``confirmations``: the radiologist's category, infection status and identifier per
  record key, written by the web stage's confirm action (kept apart so a confirmation
  that arrives before its record, or a revised result, loses nothing);
- ``signals``: one row per (ISO week, EARS method) that signalled, with its alert
  document; ``enqueued`` flips once the outbox holds it (exactly once per signal);
- ``submissions``: when the FHIR report was last queued for ``[surveillance.submit]``;
- ``backfill``: per study UID found by ``aenode backfill``, whether it was retrieved
  (resumable progress; study UIDs never leave this table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aenode.store.datadir import DataDir
from aenode.store.db import Database, Row, open_store_database
from aenode.surveil.records import Findings, SurveillanceRecord, record_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS surveil_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_result_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    key               TEXT PRIMARY KEY,
    model             TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    study_date        TEXT,
    week              TEXT,
    age_band          TEXT,
    sex               TEXT NOT NULL,
    category          TEXT,
    probabilities     TEXT NOT NULL,
    involvement       DOUBLE PRECISION,
    lesion_volume_ml  DOUBLE PRECISION,
    lung_volume_ml    DOUBLE PRECISION,
    laterality        TEXT,
    distribution      TEXT,
    ggo               INTEGER,
    consolidation     INTEGER,
    crazy_paving      INTEGER,
    scanner           TEXT,
    site_name         TEXT NOT NULL,
    postal_code       TEXT NOT NULL,
    prefecture        TEXT NOT NULL,
    backfilled        INTEGER NOT NULL,
    updated           DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS records_date ON records (study_date);
CREATE TABLE IF NOT EXISTS confirmations (
    key              TEXT PRIMARY KEY,
    category         TEXT NOT NULL,
    infection_status TEXT NOT NULL,
    radiologist_id   TEXT NOT NULL,
    at               DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS signals (
    key          TEXT PRIMARY KEY,
    week         TEXT NOT NULL,
    method       TEXT NOT NULL,
    count        INTEGER NOT NULL,
    statistic    DOUBLE PRECISION NOT NULL,
    payload_json TEXT NOT NULL,
    created      DOUBLE PRECISION NOT NULL,
    enqueued     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS submissions (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_at   DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS backfill (
    study_uid  TEXT PRIMARY KEY,
    study_date TEXT,
    state      TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    reason     TEXT,
    updated    DOUBLE PRECISION NOT NULL
);
"""

_REC_COLS = ("r.key, r.model, r.revision, r.study_date, r.week, r.age_band, r.sex, r.category, r.probabilities,"
             " r.involvement, r.lesion_volume_ml, r.lung_volume_ml, r.laterality, r.distribution, r.ggo,"
             " r.consolidation, r.crazy_paving, r.scanner, r.site_name, r.postal_code, r.prefecture,"
             " r.backfilled, r.updated, c.category, c.infection_status, c.radiologist_id")


def _flag(v: Any) -> bool | None:
    return None if v is None else bool(v)


def _int_flag(v: bool | None) -> int | None:
    return None if v is None else int(v)


def _record(r: Row) -> SurveillanceRecord:
    return SurveillanceRecord(
        key=str(r[0]), model=str(r[1]), revision=int(r[2]), study_date=r[3], week=r[4], age_band=r[5],
        sex=str(r[6]), category=r[7], probabilities=json.loads(r[8]), involvement=r[9],
        lesion_volume_ml=r[10], lung_volume_ml=r[11],
        findings=Findings(r[12], r[13], _flag(r[14]), _flag(r[15]), _flag(r[16])), scanner=r[17],
        site_name=str(r[18]), postal_code=str(r[19]), prefecture=str(r[20]), backfilled=bool(r[21]),
        updated=float(r[22]), confirmed_category=r[23], infection_status=r[24], radiologist_id=r[25])


@dataclass(frozen=True)
class Signal:
    """One EARS signal: a week whose surge-category count was aberrant."""

    key: str
    week: str
    method: str
    count: int
    statistic: float
    payload_json: str
    created: float
    enqueued: bool = False

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload_json)
        return data


@dataclass(frozen=True)
class BackfillItem:
    study_uid: str
    study_date: str | None
    state: str           # "pending" | "retrieved" | "failed"
    attempts: int
    reason: str | None


class SurveillanceStore:
    """Records, confirmations, signals and backfill progress."""

    def __init__(self, path: str | Path, *, url: str | None = None):
        self.path = Path(path)
        self._db: Database = open_store_database("surveillance", self.path, _SCHEMA, (), url)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, *, url: str | None = None) -> SurveillanceStore:
        """``url`` is ``[database] url`` (None: SQLite under ``data_dir``)."""
        return cls(DataDir.of(data_dir).surveillance_db, url=url)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SurveillanceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """Cheap read-only probe for health checks; raises ``StoreError``."""
        self._db.check()

    # ---- records ---------------------------------------------------------------------

    def cursor(self) -> int:
        r = self._db.one("SELECT last_result_id FROM surveil_cursor WHERE id = 1")
        return int(r[0]) if r else 0

    def commit_records(self, cursor: int, records: Iterable[SurveillanceRecord]) -> None:
        """Store records and advance the cursor atomically; a record only replaces one of
        the same or an older result revision."""
        with self._db.tx() as t:
            for rec in records:
                f = rec.findings
                t.execute(
                    "INSERT INTO records (key, model, revision, study_date, week, age_band, sex, category,"
                    " probabilities, involvement, lesion_volume_ml, lung_volume_ml, laterality, distribution,"
                    " ggo, consolidation, crazy_paving, scanner, site_name, postal_code, prefecture, backfilled,"
                    " updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (key) DO UPDATE SET revision = excluded.revision,"
                    " study_date = excluded.study_date, week = excluded.week, age_band = excluded.age_band,"
                    " sex = excluded.sex, category = excluded.category, probabilities = excluded.probabilities,"
                    " involvement = excluded.involvement, lesion_volume_ml = excluded.lesion_volume_ml,"
                    " lung_volume_ml = excluded.lung_volume_ml, laterality = excluded.laterality,"
                    " distribution = excluded.distribution, ggo = excluded.ggo,"
                    " consolidation = excluded.consolidation, crazy_paving = excluded.crazy_paving,"
                    " scanner = excluded.scanner, site_name = excluded.site_name,"
                    " postal_code = excluded.postal_code, prefecture = excluded.prefecture,"
                    " backfilled = excluded.backfilled, updated = excluded.updated"
                    " WHERE excluded.revision >= records.revision",
                    (rec.key, rec.model, rec.revision, rec.study_date, rec.week, rec.age_band, rec.sex,
                     rec.category, json.dumps(rec.probabilities, sort_keys=True), rec.involvement,
                     rec.lesion_volume_ml, rec.lung_volume_ml, f.laterality, f.distribution,
                     _int_flag(f.ggo), _int_flag(f.consolidation), _int_flag(f.crazy_paving), rec.scanner,
                     rec.site_name, rec.postal_code, rec.prefecture, int(rec.backfilled), rec.updated))
            t.execute("INSERT INTO surveil_cursor (id, last_result_id) VALUES (1, ?)"
                      " ON CONFLICT (id) DO UPDATE SET last_result_id = excluded.last_result_id"
                      " WHERE excluded.last_result_id > surveil_cursor.last_result_id", (cursor,))

    def record_confirmation(self, study_uid: str, model: str, category: str, infection_status: str,
                            radiologist_id: str, at: float | None = None) -> None:
        """The web stage's confirm action calls this after storing a confirmation; the
        newest confirmation of a (study, model) wins."""
        with self._db.tx() as t:
            t.execute(
                "INSERT INTO confirmations (key, category, infection_status, radiologist_id, at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (key) DO UPDATE SET category = excluded.category,"
                " infection_status = excluded.infection_status, radiologist_id = excluded.radiologist_id,"
                " at = excluded.at WHERE excluded.at >= confirmations.at",
                (record_key(study_uid, model), category, infection_status, radiologist_id,
                 time.time() if at is None else at))

    def records(self, since: str | None = None, until: str | None = None,
                model: str | None = None) -> list[SurveillanceRecord]:
        """Records by study date (inclusive, YYYY-MM-DD), oldest first; records without a
        study date only when no range is asked for."""
        where, args = [], []
        if since is not None:
            where.append("r.study_date >= ?")
            args.append(since)
        if until is not None:
            where.append("r.study_date <= ?")
            args.append(until)
        if model is not None:
            where.append("r.model = ?")
            args.append(model)
        sql = (f"SELECT {_REC_COLS} FROM records r LEFT JOIN confirmations c ON c.key = r.key"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.study_date, r.key")
        return [_record(r) for r in self._db.query(sql, args)]

    # ---- signals ---------------------------------------------------------------------

    def add_signals(self, signals: Iterable[Signal]) -> list[Signal]:
        """Record signals not seen before; returns the new ones (a repeat is a no-op)."""
        new: list[Signal] = []
        with self._db.tx() as t:
            for s in signals:
                if t.execute("INSERT INTO signals (key, week, method, count, statistic, payload_json, created,"
                             " enqueued) VALUES (?,?,?,?,?,?,?,0) ON CONFLICT (key) DO NOTHING",
                             (s.key, s.week, s.method, s.count, s.statistic, s.payload_json, s.created)):
                    new.append(s)
        return new

    def signals(self) -> list[Signal]:
        return [Signal(str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), str(r[5]), float(r[6]),
                       bool(r[7])) for r in self._db.query(
            "SELECT key, week, method, count, statistic, payload_json, created, enqueued FROM signals"
            " ORDER BY week, method")]

    def unqueued_signals(self) -> list[Signal]:
        return [s for s in self.signals() if not s.enqueued]

    def mark_signal_enqueued(self, key: str) -> None:
        self._db.execute("UPDATE signals SET enqueued = 1 WHERE key = ?", (key,))

    # ---- periodic submission ---------------------------------------------------------

    def last_submission(self) -> float | None:
        r = self._db.one("SELECT last_at FROM submissions WHERE id = 1")
        return float(r[0]) if r else None

    def note_submission(self, at: float) -> None:
        self._db.execute("INSERT INTO submissions (id, last_at) VALUES (1, ?)"
                         " ON CONFLICT (id) DO UPDATE SET last_at = excluded.last_at", (at,))

    # ---- backfill progress -----------------------------------------------------------

    def backfill_found(self, studies: Iterable[tuple[str, str | None]]) -> int:
        """Remember studies a C-FIND returned; returns how many were new."""
        n = 0
        now = time.time()
        with self._db.tx() as t:
            for uid, date in studies:
                n += t.execute("INSERT INTO backfill (study_uid, study_date, state, attempts, reason, updated)"
                               " VALUES (?,?,'pending',0,NULL,?) ON CONFLICT (study_uid) DO NOTHING",
                               (uid, date, now))
        return n

    def backfill_done(self, study_uid: str, state: str, reason: str | None = None) -> None:
        if state not in ("retrieved", "failed", "pending"):
            raise ValueError("backfill state must be pending, retrieved or failed")
        self._db.execute("UPDATE backfill SET state = ?, reason = ?, attempts = attempts + 1, updated = ?"
                         " WHERE study_uid = ?", (state, reason, time.time(), study_uid))

    def backfill_items(self, since: str | None = None, until: str | None = None) -> list[BackfillItem]:
        where, args = [], []
        if since is not None:
            where.append("study_date >= ?")
            args.append(since)
        if until is not None:
            where.append("study_date <= ?")
            args.append(until)
        sql = ("SELECT study_uid, study_date, state, attempts, reason FROM backfill"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY study_date, study_uid")
        return [BackfillItem(str(r[0]), r[1], str(r[2]), int(r[3]), r[4]) for r in self._db.query(sql, args)]
