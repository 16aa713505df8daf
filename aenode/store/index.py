"""The index of received studies, series and instances, each study's state, and results.

States: ``receiving`` -> ``complete`` -> ``analysing`` -> (``analysed`` | ``skipped`` |
``error``).  A new instance arriving after ``receiving`` reopens the study: back to
``receiving`` with ``revision + 1``, so later stages revise their result.  A study made
only of the node's own output is ``skipped`` ("node output only") and never analysed.

This module is the only code that talks SQL to the index database (through
:class:`aenode.store.db.Database`); every other stage uses the typed methods below.
One Index object may be shared between threads; other processes open their own.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aenode.store.datadir import DataDir
from aenode.store.db import Database, Row, Transaction, open_store_database
from aenode.store.meta import InstanceHeader, split_multi

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
    first_arrival DOUBLE PRECISION NOT NULL,
    last_arrival  DOUBLE PRECISION NOT NULL,
    state_changed DOUBLE PRECISION NOT NULL,
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
    slice_thickness    DOUBLE PRECISION,
    image_position     TEXT,
    image_orientation  TEXT,
    instance_number    INTEGER,
    rows               INTEGER,
    columns            INTEGER,
    number_of_frames   INTEGER,
    transfer_syntax    TEXT,
    calling_ae         TEXT,
    received_at        DOUBLE PRECISION NOT NULL,
    file_path          TEXT NOT NULL,
    size               BIGINT NOT NULL,
    own_output         INTEGER NOT NULL DEFAULT 0,
    revision           INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS results (
    id                 {id},
    study_uid          TEXT NOT NULL,
    revision           INTEGER NOT NULL,
    model              TEXT NOT NULL,
    category           TEXT,
    probabilities_json TEXT,
    selected_series    TEXT,
    involvement        DOUBLE PRECISION,
    detail_json        TEXT,
    created            DOUBLE PRECISION NOT NULL,
    UNIQUE(study_uid, revision, model)
);
CREATE INDEX IF NOT EXISTS results_study ON results(study_uid);
"""


# Versioned changes after the first schema (see Database._migrate).
_MIGRATIONS = (
    "ALTER TABLE instances ADD COLUMN convolution_kernel TEXT",
    # Transient analysis failures (disk full...) retried so far, shown with the reason.
    "ALTER TABLE studies ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    # Retention: when the study's spooled instances were deleted (results and audit stay).
    "ALTER TABLE studies ADD COLUMN purged_at DOUBLE PRECISION",
    # Backfill (aenode backfill): studies retrieved from a PACS for surveillance; the
    # alert stage never alerts on them.  Marked before the C-MOVE, so before any instance.
    "CREATE TABLE IF NOT EXISTS backfilled (study_uid TEXT PRIMARY KEY, marked DOUBLE PRECISION NOT NULL)",
    # Several nodes on one database: an analysing study's claim lasts until lease_until
    # (renewed while the analysis runs); after that any node may claim it again.
    "ALTER TABLE studies ADD COLUMN lease_until DOUBLE PRECISION",
)

LEASE_SECONDS = 60.0   # default claim length ([database] lease_seconds)


def node_identity(name: str, port: int) -> str:
    """Who claims studies: ``[node] name`` @ host : DICOM port.  Stable across restarts of
    the same node (so it takes back its own interrupted studies at once) and different for
    every node sharing a database (so it never takes another live node's).  Workers claim
    as ``<identity>/<pid>-<thread>``."""
    return f"{name}@{socket.gethostname()}:{port}"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One stored instance to index (see :meth:`Index.record_instances`)."""

    meta: InstanceHeader
    file_path: str | Path
    size: int
    calling_ae: str | None
    received_at: float | None = None
    own_output: bool | None = None


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
    purged_at: float | None = None   # when retention deleted its spooled instances


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
class ResultRow:
    id: int
    study_uid: str
    revision: int
    model: str
    category: str | None
    probabilities: dict[str, float] | None
    selected_series: str | None
    involvement: float | None
    detail: dict[str, Any] | None
    created: float


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Counts for ``/metrics`` (no patient data)."""

    instances: dict[str, tuple[int, int]]              # origin -> (count, bytes)
    studies_by_state: dict[str, int]
    results_by_model_category: dict[tuple[str, str], int]
    stage_seconds: dict[str, list[float]]              # analysis timings; "result": arrival -> result


_INSTANCE_COLS = (
    "sop_instance_uid, study_uid, series_uid, sop_class_uid, modality, image_type, series_description,"
    " series_number, slice_thickness, image_position, image_orientation, instance_number, rows, columns,"
    " number_of_frames, transfer_syntax, calling_ae, received_at, file_path, size, own_output, revision,"
    " convolution_kernel")
_RESULT_COLS = ("id, study_uid, revision, model, category, probabilities_json, selected_series, involvement,"
                " detail_json, created")


def _json_tuple(text: str | None) -> Any:
    return tuple(json.loads(text)) if text else None


def _result(r: Row) -> ResultRow:
    return ResultRow(int(r[0]), r[1], int(r[2]), r[3], r[4], json.loads(r[5]) if r[5] else None, r[6], r[7],
                     json.loads(r[8]) if r[8] else None, float(r[9]))


class Index:
    """The node's index; ``db_path`` is usually ``DataDir.index_db``."""

    def __init__(self, db_path: str | Path, data_dir: str | Path | None = None, *,
                 clock: Callable[[], float] = time.time, url: str | None = None):
        self.db_path = Path(db_path)
        self.data_dir = Path(data_dir).resolve() if data_dir else self.db_path.resolve().parent
        self._clock = clock
        self._db: Database = open_store_database("index", self.db_path, _SCHEMA, _MIGRATIONS, url)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, *, clock: Callable[[], float] = time.time,
                     url: str | None = None) -> Index:
        """The node's index: ``url`` is ``[database] url`` (None: SQLite under ``data_dir``)."""
        layout = DataDir.of(data_dir)
        return cls(layout.index_db, layout.root, clock=clock, url=url)

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        """Cheap read-only probe for /healthz; raises StoreError."""
        self._db.check()

    # ---- receiving -------------------------------------------------------------------

    def record_instance(self, meta: InstanceHeader, file_path: str | Path, size: int, calling_ae: str | None,
                        received_at: float | None = None, own_output: bool | None = None) -> bool:
        """Index one stored instance; returns True if the SOP instance is new.

        A new (not own-output) instance opens the study, or reopens a study that left
        ``receiving`` (revision + 1).  A re-sent instance replaces the row and only
        refreshes the arrival time of a study that is still receiving.
        """
        return self.record_instances([InstanceRecord(meta, file_path, size, calling_ae, received_at,
                                                     own_output)])[0]

    def record_instances(self, records: Sequence[InstanceRecord]) -> list[bool]:
        """Index several stored instances in one transaction (group commit: one sync for
        the batch); for each, True if its SOP instance is new.  Same rules as
        :meth:`record_instance`, applied in order."""
        if not records:
            return []
        with self._db.tx() as t:
            return [self._record(t, r) for r in records]

    def _record(self, t: Transaction, r: InstanceRecord) -> bool:
        meta = r.meta
        now = self._clock() if r.received_at is None else r.received_at
        own = meta.own_output if r.own_output is None else r.own_output
        path = Path(r.file_path)
        rel = str(path.relative_to(self.data_dir)) if path.is_absolute() else str(path)
        new = t.one("SELECT 1 FROM instances WHERE sop_instance_uid=?", (meta.sop_instance_uid,)) is None
        row = t.one("SELECT state, revision FROM studies WHERE study_uid=?", (meta.study_uid,))
        if row is None:
            t.execute("INSERT INTO studies (study_uid, state, revision, first_arrival, last_arrival,"
                      " state_changed, claimed_by, reason) VALUES (?,?,?,?,?,?,NULL,?)",
                      (meta.study_uid, SKIPPED if own else RECEIVING, 1, now, now, now,
                       "node output only" if own else None))
            revision = 1
        else:
            state, revision = row[0], int(row[1])
            if own:
                pass
            elif state == RECEIVING:
                # A batch may carry arrivals out of order (several associations): never go back.
                t.execute("UPDATE studies SET last_arrival=CASE WHEN last_arrival > ? THEN last_arrival"
                          " ELSE ? END WHERE study_uid=?", (now, now, meta.study_uid))
            elif new:
                revision += 1
                t.execute(
                    "UPDATE studies SET state=?, revision=?, last_arrival=?, state_changed=?,"
                    " claimed_by=NULL, lease_until=NULL, reason=NULL, attempts=0 WHERE study_uid=?",
                    (RECEIVING, revision, now, now, meta.study_uid))
        t.execute(
            "INSERT INTO series (series_uid, study_uid, modality, series_description, series_number,"
            " own_output) VALUES (?,?,?,?,?,?) ON CONFLICT(series_uid) DO UPDATE SET"
            " modality=excluded.modality, series_description=excluded.series_description,"
            " series_number=excluded.series_number,"
            " own_output=CASE WHEN series.own_output > excluded.own_output THEN series.own_output"
            " ELSE excluded.own_output END",
            (meta.series_uid, meta.study_uid, meta.modality, meta.series_description,
             meta.series_number, int(own)))
        values = (meta.sop_instance_uid, meta.study_uid, meta.series_uid, meta.sop_class_uid,
                  meta.modality, "\\".join(meta.image_type) or None, meta.series_description or None,
                  meta.series_number, meta.slice_thickness,
                  json.dumps(meta.image_position) if meta.image_position else None,
                  json.dumps(meta.image_orientation) if meta.image_orientation else None,
                  meta.instance_number, meta.rows, meta.columns, meta.number_of_frames,
                  meta.transfer_syntax, r.calling_ae, now, rel, int(r.size), int(own), revision,
                  meta.convolution_kernel or None)
        cols = _INSTANCE_COLS.split(", ")
        t.execute(
            f"INSERT INTO instances ({_INSTANCE_COLS}) VALUES ({','.join('?' * len(cols))})"
            " ON CONFLICT(sop_instance_uid) DO UPDATE SET "
            + ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in cols[1:]),
            values)
        return new

    def received_times(self, sop_uids: Sequence[str]) -> dict[str, float]:
        """Arrival time of each indexed instance among ``sop_uids`` (journal replay keeps a
        record only if it is not older than what the index already holds)."""
        out: dict[str, float] = {}
        uids = list(sop_uids)
        for k in range(0, len(uids), 500):
            part = uids[k:k + 500]
            out.update((r[0], float(r[1])) for r in self._db.query(
                f"SELECT sop_instance_uid, received_at FROM instances WHERE sop_instance_uid IN"
                f" ({','.join('?' * len(part))})", tuple(part)))
        return out

    def known_instances(self) -> set[str]:
        return {r[0] for r in self._db.query("SELECT sop_instance_uid FROM instances")}

    def receiving_studies(self) -> list[tuple[str, float]]:
        return [(r[0], float(r[1])) for r in self._db.query(
            "SELECT study_uid, last_arrival FROM studies WHERE state=?", (RECEIVING,))]

    def receiving_instance_count(self, study_uid: str) -> int:
        """Instances (not the node's own output) of the study's current revision: a node
        compares it with what it received itself to learn whether another node shares
        the study (see :class:`aenode.store.stabilise.Stabiliser`)."""
        row = self._db.one("SELECT COUNT(*) FROM instances i JOIN studies s ON s.study_uid=i.study_uid"
                           " WHERE i.study_uid=? AND i.revision=s.revision AND i.own_output=0", (study_uid,))
        return int(row[0]) if row else 0

    def mark_complete(self, study_uid: str, last_arrival: float) -> bool:
        """``receiving`` -> ``complete`` unless an instance arrived since ``last_arrival``."""
        return self._db.execute(
            "UPDATE studies SET state=?, state_changed=? WHERE study_uid=? AND state=? AND last_arrival=?",
            (COMPLETE, self._clock(), study_uid, RECEIVING, last_arrival)) == 1

    def recover_interrupted(self, owner: str | None = None) -> int:
        """At node start: analyses that did not finish durably are run again.

        ``owner`` (this node's :func:`node_identity`) limits it to studies this node's
        previous incarnation claimed, plus claims whose lease expired or that have none;
        studies another live node holds stay with it.  ``None`` (one node alone on its
        database): every ``analysing`` study."""
        now = self._clock()
        sql = "UPDATE studies SET state=?, claimed_by=NULL, lease_until=NULL, state_changed=? WHERE state=?"
        args: tuple[str | float | int, ...] = (COMPLETE, now, ANALYSING)
        if owner is not None:
            prefix = owner + "/"
            sql += (" AND (lease_until IS NULL OR lease_until < ? OR claimed_by IS NULL"
                    " OR substr(claimed_by, 1, ?) = ?)")
            args += (now, len(prefix), prefix)
        return self._db.execute(sql, args)

    def release_claims(self, claimed_by_prefix: str) -> int:
        """Studies an analysis process that died was working on go back to ``complete``
        (the supervisor calls this with the dead process's worker-name prefix)."""
        return self._db.execute(
            "UPDATE studies SET state=?, claimed_by=NULL, lease_until=NULL, state_changed=? WHERE state=?"
            " AND substr(claimed_by, 1, ?) = ?",
            (COMPLETE, self._clock(), ANALYSING, len(claimed_by_prefix), claimed_by_prefix))

    # ---- hand-off to later stages ---------------------------------------------------

    def claim_next_complete(self, worker: str, lease_seconds: float = LEASE_SECONDS) -> StudyClaim | None:
        """Atomically move the oldest ``complete`` study (or an ``analysing`` one whose
        lease expired: its node died) to ``analysing``, claimed by ``worker`` until
        ``now + lease_seconds`` (see :meth:`renew_lease`).

        Several nodes claim concurrently without waiting on each other: the row is locked
        with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's one writer gives the same)."""
        now = self._clock()
        with self._db.tx(exclusive=False) as t:
            row = t.one("SELECT study_uid, revision FROM studies WHERE state=? OR (state=? AND lease_until < ?)"
                        " ORDER BY state_changed LIMIT 1 FOR UPDATE SKIP LOCKED", (COMPLETE, ANALYSING, now))
            if row is None:
                return None
            t.execute("UPDATE studies SET state=?, claimed_by=?, lease_until=?, state_changed=? WHERE study_uid=?",
                      (ANALYSING, worker, now + lease_seconds, now, row[0]))
            return StudyClaim(row[0], int(row[1]))

    def renew_lease(self, study_uid: str, revision: int, worker: str, seconds: float = LEASE_SECONDS) -> bool:
        """Extend ``worker``'s claim on an analysing study revision to ``now + seconds``.
        False when the claim is gone (the study was reopened by a late instance, or another
        node took it after the lease ran out): the caller's analysis is stale."""
        return self._db.execute(
            "UPDATE studies SET lease_until=? WHERE study_uid=? AND revision=? AND state=? AND claimed_by=?",
            (self._clock() + seconds, study_uid, revision, ANALYSING, worker)) == 1

    def finish_study(self, study_uid: str, revision: int, state: str, reason: str | None = None) -> bool:
        """Record the end of an analysis; ignored (False) if the revision is stale."""
        if state not in FINAL_STATES:
            raise ValueError(f"finish_study: state must be one of {FINAL_STATES}")
        return self._db.execute(
            "UPDATE studies SET state=?, reason=?, state_changed=?, attempts=0 WHERE study_uid=? AND revision=?"
            " AND state=?", (state, reason, self._clock(), study_uid, revision, ANALYSING)) == 1

    def note_retry(self, study_uid: str, revision: int, reason: str) -> None:
        """Show that an ``analysing`` study waits to retry after a transient fault (the
        worker keeps the claim; a restart re-queues it).  Raises when the database cannot
        be written, e.g. while the disk is still full: the caller treats that as best effort."""
        self._db.execute("UPDATE studies SET reason=?, attempts=attempts + 1 WHERE study_uid=? AND revision=?"
                         " AND state=?", (reason, study_uid, revision, ANALYSING))

    def attempts(self, study_uid: str) -> int:
        """How many transient faults the study's current revision has met."""
        row = self._db.one("SELECT attempts FROM studies WHERE study_uid=?", (study_uid,))
        return int(row[0]) if row else 0

    def requeue_failed(self, study_uid: str | None = None) -> int:
        """``error`` -> ``complete`` for one study or all (``aenode retry --studies``); returns how many."""
        sql = "UPDATE studies SET state=?, state_changed=?, claimed_by=NULL, lease_until=NULL, attempts=0 WHERE state=?"
        args: tuple[str | float, ...] = (COMPLETE, self._clock(), ERROR)
        if study_uid is not None:
            sql += " AND study_uid=?"
            args += (study_uid,)
        return self._db.execute(sql, args)

    def record_result(self, study_uid: str, revision: int, model: str, category: str | None,
                      probabilities: dict[str, float] | None = None,
                      selected_series: str | None = None, involvement: float | None = None,
                      detail: dict[str, Any] | None = None) -> int:
        """Store (or replace) one model's result for one study revision; returns its id.

        A replaced result gets a new id, so stages that follow results by id (alerts)
        see it again."""
        with self._db.tx() as t:
            t.execute("DELETE FROM results WHERE study_uid=? AND revision=? AND model=?",
                      (study_uid, revision, model))
            return t.insert_id(
                "INSERT INTO results (study_uid, revision, model, category, probabilities_json,"
                " selected_series, involvement, detail_json, created) VALUES (?,?,?,?,?,?,?,?,?)",
                (study_uid, revision, model, category,
                 None if probabilities is None else json.dumps(probabilities), selected_series,
                 involvement, None if detail is None else json.dumps(detail), self._clock()))

    def results(self, study_uid: str) -> list[ResultRow]:
        """Every result of a study, oldest revision first."""
        return [_result(r) for r in self._db.query(
            f"SELECT {_RESULT_COLS} FROM results WHERE study_uid=? ORDER BY revision, id", (study_uid,))]

    def results_after(self, after_id: int, limit: int) -> list[ResultRow]:
        """Results recorded after ``after_id``, in the order they were recorded."""
        return [_result(r) for r in self._db.query(
            f"SELECT {_RESULT_COLS} FROM results WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))]

    def latest_results(self, limit: int) -> list[ResultRow]:
        """The newest revision's result of every (study, model), newest first."""
        return [_result(r) for r in self._db.query(
            "SELECT r.id, r.study_uid, r.revision, r.model, r.category, r.probabilities_json,"
            " r.selected_series, r.involvement, r.detail_json, r.created FROM results r"
            " JOIN (SELECT study_uid, model, MAX(revision) AS rev FROM results GROUP BY study_uid, model) m"
            " ON r.study_uid=m.study_uid AND r.model=m.model AND r.revision=m.rev"
            " ORDER BY r.created DESC, r.id DESC LIMIT ?", (limit,))]

    def study(self, study_uid: str) -> StudyRow | None:
        rows = self.studies(study_uid)
        return rows[0] if rows else None

    def studies(self, study_uid: str | None = None) -> list[StudyRow]:
        sql = ("SELECT s.study_uid, s.state, s.revision, (SELECT COUNT(*) FROM instances i"
               " WHERE i.study_uid=s.study_uid), s.first_arrival, s.last_arrival, s.state_changed,"
               " s.claimed_by, s.reason, s.purged_at FROM studies s")
        args: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " WHERE s.study_uid=?"
            args = (study_uid,)
        return [StudyRow(r[0], r[1], int(r[2]), int(r[3]), float(r[4]), float(r[5]), float(r[6]), r[7], r[8],
                         None if r[9] is None else float(r[9]))
                for r in self._db.query(sql + " ORDER BY s.first_arrival", args)]

    def series(self, study_uid: str) -> list[SeriesRow]:
        rows = self._db.query(
            "SELECT s.series_uid, s.study_uid, s.modality, s.series_description, s.series_number,"
            " s.own_output, (SELECT COUNT(*) FROM instances i WHERE i.series_uid=s.series_uid)"
            " FROM series s WHERE s.study_uid=? ORDER BY s.series_number, s.series_uid", (study_uid,))
        return [SeriesRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), int(r[6])) for r in rows]

    def instances(self, study_uid: str, series_uid: str | None = None) -> list[InstanceHeader]:
        """The stored instances of a study (or one series), with absolute paths."""
        sql = f"SELECT {_INSTANCE_COLS} FROM instances WHERE study_uid=?"
        args: tuple[str, ...] = (study_uid,)
        if series_uid is not None:
            sql += " AND series_uid=?"
            args += (series_uid,)
        return [InstanceHeader(
            sop_instance_uid=r[0], study_uid=r[1], series_uid=r[2], sop_class_uid=r[3], modality=r[4],
            image_type=split_multi(r[5]), series_description=r[6] or "", series_number=r[7],
            slice_thickness=r[8], image_position=_json_tuple(r[9]), image_orientation=_json_tuple(r[10]),
            instance_number=r[11], rows=r[12], columns=r[13], number_of_frames=r[14], transfer_syntax=r[15],
            calling_ae=r[16], received_at=float(r[17]), path=self.data_dir / r[18], size=int(r[19]),
            own_output=bool(r[20]), revision=int(r[21]), convolution_kernel=r[22] or "")
            for r in self._db.query(sql + " ORDER BY series_uid, instance_number, sop_instance_uid", args)]

    # ---- backfill ------------------------------------------------------------------------

    def mark_backfilled(self, study_uids: list[str]) -> None:
        """Mark studies as retrieved by ``aenode backfill`` (before they arrive)."""
        now = self._clock()
        with self._db.tx() as t:
            for uid in study_uids:
                t.execute("INSERT INTO backfilled (study_uid, marked) VALUES (?, ?)"
                          " ON CONFLICT (study_uid) DO NOTHING", (uid, now))

    def is_backfilled(self, study_uid: str) -> bool:
        return self._db.one("SELECT 1 FROM backfilled WHERE study_uid=?", (study_uid,)) is not None

    def has_study(self, study_uid: str) -> bool:
        """True when any instance of the study was ever received (backfill skips it)."""
        return self._db.one("SELECT 1 FROM studies WHERE study_uid=?", (study_uid,)) is not None

    # ---- retention -----------------------------------------------------------------------

    def purge_candidates(self, finished_before: float) -> list[StudyClaim]:
        """Studies whose analysis ended before ``finished_before`` and that still have
        spooled instances."""
        return [StudyClaim(r[0], int(r[1])) for r in self._db.query(
            "SELECT s.study_uid, s.revision FROM studies s WHERE s.state IN (?,?,?) AND s.state_changed < ?"
            " AND EXISTS (SELECT 1 FROM instances i WHERE i.study_uid=s.study_uid) ORDER BY s.state_changed",
            (*FINAL_STATES, finished_before))]

    def purge_instances(self, study_uid: str, revision: int) -> tuple[float, list[Path]] | None:
        """Forget a finished study's instances (their rows go; study, series and results
        stay) and record when; returns (that time, the files to delete), or None when the
        study changed meanwhile (a late instance reopened it)."""
        now = self._clock()
        with self._db.tx() as t:
            row = t.one("SELECT state, revision FROM studies WHERE study_uid=?", (study_uid,))
            if row is None or row[0] not in FINAL_STATES or int(row[1]) != revision:
                return None
            paths = [self.data_dir / r[0] for r in t.query(
                "SELECT file_path FROM instances WHERE study_uid=?", (study_uid,))]
            t.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,))
            t.execute("UPDATE studies SET purged_at=? WHERE study_uid=?", (now, study_uid))
        return now, paths

    def purged_studies(self) -> dict[str, float]:
        """Study UID -> when its spooled instances were deleted (for start-up reconciliation)."""
        return {r[0]: float(r[1]) for r in self._db.query(
            "SELECT study_uid, purged_at FROM studies WHERE purged_at IS NOT NULL")}

    # ---- figures -----------------------------------------------------------------------

    def stats(self) -> IndexStats:
        """Counts and timings for /metrics, read in one pass."""
        got = {bool(r[0]): (int(r[1]), int(r[2] or 0)) for r in self._db.query(
            "SELECT own_output, COUNT(*), SUM(size) FROM instances GROUP BY own_output")}
        by_state = {r[0]: int(r[1]) for r in self._db.query("SELECT state, COUNT(*) FROM studies GROUP BY state")}
        results: dict[tuple[str, str], int] = {}
        stages: dict[str, list[float]] = {}
        for model, category, detail_json, created, rev, last_arrival, study_rev in self._db.query(
                "SELECT r.model, r.category, r.detail_json, r.created, r.revision, s.last_arrival, s.revision"
                " FROM results r JOIN studies s ON s.study_uid=r.study_uid"):
            key = (model, category or "none")
            results[key] = results.get(key, 0) + 1
            try:
                timings = (json.loads(detail_json) or {}).get("timings_s") if detail_json else None
            except ValueError:
                timings = None
            if isinstance(timings, dict):
                for stage, secs in timings.items():
                    if isinstance(secs, (int, float)):
                        stages.setdefault(str(stage), []).append(float(secs))
            if rev == study_rev and created >= last_arrival:
                stages.setdefault("result", []).append(float(created - last_arrival))
        return IndexStats(
            instances={"external": got.get(False, (0, 0)), "own_output": got.get(True, (0, 0))},
            studies_by_state={state: by_state.get(state, 0) for state in STATES},
            results_by_model_category=results, stage_seconds=stages)
