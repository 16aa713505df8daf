"""The SQLite index of received studies, series and instances, and each study's state.

States: ``receiving`` -> ``complete`` -> ``analysing`` -> (``analysed`` | ``skipped`` |
``error``).  A new instance arriving after ``receiving`` reopens the study: back to
``receiving`` with ``revision + 1``, so later stages revise their result.  A study made
only of the node's own output is ``skipped`` ("node output") and never analysed.

WAL mode, ``synchronous=NORMAL``: a commit survives a process crash (kill -9); after a
power loss the spool files (fsynced before the sender got "success") are re-indexed by
:meth:`Index.reconcile`.  One connection per Index object, serialised by a lock, so an
Index may be shared between threads; other processes open their own Index.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECEIVING = "receiving"
COMPLETE = "complete"
ANALYSING = "analysing"
ANALYSED = "analysed"
SKIPPED = "skipped"
ERROR = "error"
FINAL_STATES = (ANALYSED, SKIPPED, ERROR)
STATES = (RECEIVING, COMPLETE, ANALYSING, *FINAL_STATES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid     TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    revision      INTEGER NOT NULL DEFAULT 1,
    first_arrival REAL NOT NULL,
    last_arrival  REAL NOT NULL,
    state_changed REAL NOT NULL,
    claimed_by    TEXT,
    reason        TEXT
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE TABLE IF NOT EXISTS series (
    series_uid         TEXT PRIMARY KEY,
    study_uid          TEXT NOT NULL,
    modality           TEXT,
    series_description TEXT,
    series_number      INTEGER,
    own_output         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid   TEXT PRIMARY KEY,
    study_uid          TEXT NOT NULL,
    series_uid         TEXT NOT NULL,
    sop_class_uid      TEXT NOT NULL,
    modality           TEXT,
    image_type         TEXT,
    series_description TEXT,
    series_number      INTEGER,
    slice_thickness    REAL,
    image_position     TEXT,
    image_orientation  TEXT,
    instance_number    INTEGER,
    rows               INTEGER,
    columns            INTEGER,
    number_of_frames   INTEGER,
    transfer_syntax    TEXT,
    calling_ae         TEXT,
    received_at        REAL NOT NULL,
    file_path          TEXT NOT NULL,
    size               INTEGER NOT NULL,
    own_output         INTEGER NOT NULL DEFAULT 0,
    revision           INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS results (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid          TEXT NOT NULL,
    revision           INTEGER NOT NULL,
    model              TEXT NOT NULL,
    category           TEXT,
    probabilities_json TEXT,
    selected_series    TEXT,
    involvement        REAL,
    detail_json        TEXT,
    created            REAL NOT NULL,
    UNIQUE(study_uid, revision, model)
);
CREATE INDEX IF NOT EXISTS results_study ON results(study_uid);
"""


@dataclass(frozen=True, slots=True)
class StudyClaim:
    study_uid: str
    revision: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    study_uid: str
    state: str
    revision: int
    instance_count: int
    first_arrival: float
    last_arrival: float
    state_changed: float
    claimed_by: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str | None
    series_description: str | None
    series_number: int | None
    own_output: bool
    instance_count: int


@dataclass(frozen=True, slots=True)
class InstanceRow:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str | None
    image_type: str | None
    series_description: str | None
    series_number: int | None
    slice_thickness: float | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, ...] | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    transfer_syntax: str | None
    calling_ae: str | None
    received_at: float
    file_path: Path          # absolute
    size: int
    own_output: bool
    revision: int            # the study revision the instance arrived in


@dataclass(frozen=True, slots=True)
class ResultRow:
    study_uid: str
    revision: int
    model: str
    category: str | None
    probabilities: dict[str, float] | None
    selected_series: str | None
    involvement: float | None
    detail: dict[str, Any] | None
    created: float


class Index:
    """The node's index; ``db_path`` is usually ``<data_dir>/index.sqlite``."""

    def __init__(self, db_path: str | Path, data_dir: str | Path | None = None):
        self.db_path = Path(db_path)
        self.data_dir = Path(data_dir).resolve() if data_dir else self.db_path.resolve().parent
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.db_path), isolation_level=None,
                                     check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._tx():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path) -> Index:
        return cls(Path(data_dir) / "index.sqlite", data_dir)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # ---- receiving -------------------------------------------------------------------

    def record_instance(self, meta: Any, file_path: str | Path, size: int, calling_ae: str | None,
                        received_at: float | None = None, own_output: bool = False) -> bool:
        """Index one stored instance; returns True if the SOP instance is new.

        A new (not own-output) instance opens the study, or reopens a study that left
        ``receiving`` (revision + 1).  A re-sent instance replaces the row and only
        refreshes the arrival time of a study that is still receiving.
        """
        now = time.time() if received_at is None else received_at
        path = Path(file_path)
        rel = str(path.relative_to(self.data_dir)) if path.is_absolute() else str(path)
        with self._tx() as c:
            new = c.execute("SELECT 1 FROM instances WHERE sop_instance_uid=?",
                            (meta.sop_instance_uid,)).fetchone() is None
            row = c.execute("SELECT state, revision FROM studies WHERE study_uid=?",
                            (meta.study_uid,)).fetchone()
            if row is None:
                if own_output:
                    c.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,NULL,?)",
                              (meta.study_uid, SKIPPED, 1, now, now, now, "node output only"))
                else:
                    c.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,NULL,NULL)",
                              (meta.study_uid, RECEIVING, 1, now, now, now))
                revision = 1
            else:
                state, revision = row
                if own_output:
                    pass
                elif state == RECEIVING:
                    c.execute("UPDATE studies SET last_arrival=? WHERE study_uid=?", (now, meta.study_uid))
                elif new:
                    revision += 1
                    c.execute(
                        "UPDATE studies SET state=?, revision=?, last_arrival=?, state_changed=?,"
                        " claimed_by=NULL, reason=NULL WHERE study_uid=?",
                        (RECEIVING, revision, now, now, meta.study_uid))
            c.execute(
                "INSERT INTO series VALUES (?,?,?,?,?,?) ON CONFLICT(series_uid) DO UPDATE SET"
                " modality=excluded.modality, series_description=excluded.series_description,"
                " series_number=excluded.series_number,"
                " own_output=MAX(series.own_output, excluded.own_output)",
                (meta.series_uid, meta.study_uid, meta.modality, meta.series_description,
                 meta.series_number, int(own_output)))
            c.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (meta.sop_instance_uid, meta.study_uid, meta.series_uid, meta.sop_class_uid,
                 meta.modality, meta.image_type, meta.series_description, meta.series_number,
                 meta.slice_thickness, meta.image_position, meta.image_orientation,
                 meta.instance_number, meta.rows, meta.columns, meta.number_of_frames,
                 meta.transfer_syntax, calling_ae, now, rel, int(size), int(own_output), revision))
        return new

    def known_instances(self) -> set[str]:
        return {r[0] for r in self._query("SELECT sop_instance_uid FROM instances")}

    def receiving_studies(self) -> list[tuple[str, float]]:
        return [(r[0], r[1]) for r in self._query(
            "SELECT study_uid, last_arrival FROM studies WHERE state=?", (RECEIVING,))]

    def mark_complete(self, study_uid: str, last_arrival: float) -> bool:
        """``receiving`` -> ``complete`` unless an instance arrived since ``last_arrival``."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE studies SET state=?, state_changed=? WHERE study_uid=? AND state=?"
                " AND last_arrival=?", (COMPLETE, time.time(), study_uid, RECEIVING, last_arrival))
            return cur.rowcount == 1

    def recover_interrupted(self) -> int:
        """At node start: analyses that did not finish durably are run again."""
        with self._tx() as c:
            cur = c.execute("UPDATE studies SET state=?, claimed_by=NULL, state_changed=?"
                            " WHERE state=?", (COMPLETE, time.time(), ANALYSING))
            return cur.rowcount

    # ---- hand-off to later stages ---------------------------------------------------

    def claim_next_complete(self, worker: str) -> StudyClaim | None:
        """Atomically move the oldest ``complete`` study to ``analysing``."""
        with self._tx() as c:
            row = c.execute("SELECT study_uid, revision FROM studies WHERE state=?"
                            " ORDER BY state_changed LIMIT 1", (COMPLETE,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE studies SET state=?, claimed_by=?, state_changed=? WHERE study_uid=?",
                      (ANALYSING, worker, time.time(), row[0]))
            return StudyClaim(row[0], row[1])

    def finish_study(self, study_uid: str, revision: int, state: str, reason: str | None = None) -> bool:
        """Record the end of an analysis; ignored (False) if the revision is stale."""
        if state not in FINAL_STATES:
            raise ValueError(f"finish_study: state must be one of {FINAL_STATES}")
        with self._tx() as c:
            cur = c.execute(
                "UPDATE studies SET state=?, reason=?, state_changed=? WHERE study_uid=?"
                " AND revision=? AND state=?",
                (state, reason, time.time(), study_uid, revision, ANALYSING))
            return cur.rowcount == 1

    def record_result(self, study_uid: str, revision: int, model: str, category: str | None,
                      probabilities: dict[str, float] | str | None = None,
                      selected_series: str | None = None, involvement: float | None = None,
                      detail: dict[str, Any] | str | None = None) -> None:
        """Store (or replace) one model's result for one study revision."""
        probs = probabilities if isinstance(probabilities, str) or probabilities is None else json.dumps(probabilities)
        det = detail if isinstance(detail, str) or detail is None else json.dumps(detail)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO results (study_uid, revision, model, category,"
                      " probabilities_json, selected_series, involvement, detail_json, created)"
                      " VALUES (?,?,?,?,?,?,?,?,?)",
                      (study_uid, revision, model, category, probs, selected_series,
                       involvement, det, time.time()))

    def results(self, study_uid: str) -> list[ResultRow]:
        rows = self._query("SELECT study_uid, revision, model, category, probabilities_json,"
                           " selected_series, involvement, detail_json, created FROM results"
                           " WHERE study_uid=? ORDER BY revision, id", (study_uid,))
        return [ResultRow(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6],
                          json.loads(r[7]) if r[7] else None, r[8]) for r in rows]

    def study(self, study_uid: str) -> StudyRow | None:
        rows = self.studies(study_uid)
        return rows[0] if rows else None

    def studies(self, study_uid: str | None = None) -> list[StudyRow]:
        sql = ("SELECT s.study_uid, s.state, s.revision, (SELECT COUNT(*) FROM instances i"
               " WHERE i.study_uid=s.study_uid), s.first_arrival, s.last_arrival, s.state_changed,"
               " s.claimed_by, s.reason FROM studies s")
        args: tuple = ()
        if study_uid is not None:
            sql += " WHERE s.study_uid=?"
            args = (study_uid,)
        return [StudyRow(*r) for r in self._query(sql + " ORDER BY s.first_arrival", args)]

    def series(self, study_uid: str) -> list[SeriesRow]:
        rows = self._query(
            "SELECT s.series_uid, s.study_uid, s.modality, s.series_description, s.series_number,"
            " s.own_output, (SELECT COUNT(*) FROM instances i WHERE i.series_uid=s.series_uid)"
            " FROM series s WHERE s.study_uid=? ORDER BY s.series_number, s.series_uid", (study_uid,))
        return [SeriesRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[InstanceRow]:
        sql = "SELECT * FROM instances WHERE study_uid=?"
        args: tuple = (study_uid,)
        if series_uid is not None:
            sql += " AND series_uid=?"
            args += (series_uid,)
        out = []
        for r in self._query(sql + " ORDER BY series_uid, instance_number, sop_instance_uid", args):
            r = list(r)
            r[9] = tuple(json.loads(r[9])) if r[9] else None
            r[10] = tuple(json.loads(r[10])) if r[10] else None
            r[18] = self.data_dir / r[18]
            r[20] = bool(r[20])
            out.append(InstanceRow(*r))
        return out
