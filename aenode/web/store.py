"""The dashboard's own durable state: ``<data_dir>/web.sqlite`` (WAL).

- ``acknowledgements``: who acknowledged which alert (study, model, alert category,
  result revision), when, with an optional note;
- ``confirmations``: a radiologist's confirmation or correction of a study's category
  (with the infection status and the radiologist's ID), who and when, and the path of
  the verified SR re-issued for it (when configured);
- ``audit``: append-only log of every acknowledgement, confirmation and login.

An alert counts as acknowledged while an acknowledgement exists for its study, model and
alert category: a later revision with the same category stays acknowledged (the alert
channels send nothing new either), a changed category is a new alert.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aenode.store.sqlite import open_database

WEB_FILE = "web.sqlite"
INFECTION_STATUSES = ("pcr-positive", "pcr-negative", "unknown")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS acknowledgements (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    model     TEXT NOT NULL,
    category  TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    user      TEXT NOT NULL,
    at        REAL NOT NULL,
    note      TEXT
);
CREATE INDEX IF NOT EXISTS ack_study ON acknowledgements (study_uid, model, category);
CREATE TABLE IF NOT EXISTS confirmations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid        TEXT NOT NULL,
    model            TEXT NOT NULL,
    revision         INTEGER NOT NULL,
    ai_category      TEXT,
    category         TEXT NOT NULL,
    agrees          INTEGER NOT NULL,
    infection_status TEXT NOT NULL,
    radiologist_id   TEXT NOT NULL,
    user             TEXT NOT NULL,
    at               REAL NOT NULL,
    note             TEXT,
    verified_sr      TEXT
);
CREATE INDEX IF NOT EXISTS conf_study ON confirmations (study_uid);
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    user      TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    study_uid TEXT,
    detail    TEXT
);
"""


@dataclass(frozen=True)
class Acknowledgement:
    id: int
    study_uid: str
    model: str
    category: str
    revision: int
    user: str
    at: float
    note: str | None


@dataclass(frozen=True)
class Confirmation:
    id: int
    study_uid: str
    model: str
    revision: int
    ai_category: str | None
    category: str
    agrees: bool
    infection_status: str
    radiologist_id: str
    user: str
    at: float
    note: str | None
    verified_sr: str | None


class WebStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = open_database(self.path, _SCHEMA)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path) -> WebStore:
        return cls(Path(data_dir) / WEB_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _audit(self, user: str, role: str, action: str, study_uid: str | None, detail: dict[str, Any]) -> None:
        self._db.execute("INSERT INTO audit (at, user, role, action, study_uid, detail) VALUES (?,?,?,?,?,?)",
                         (time.time(), user, role, action, study_uid, json.dumps(detail, sort_keys=True)))

    def audit(self, user: str, role: str, action: str, study_uid: str | None = None, **detail: Any) -> None:
        with self._lock:
            self._audit(user, role, action, study_uid, detail)

    def acknowledge(self, study_uid: str, model: str, category: str, revision: int, user: str, role: str,
                    note: str | None) -> Acknowledgement:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO acknowledgements (study_uid, model, category, revision, user, at, note)"
                    " VALUES (?,?,?,?,?,?,?)", (study_uid, model, category, revision, user, now, note))
                self._audit(user, role, "acknowledge", study_uid,
                            {"model": model, "category": category, "revision": revision, "note": note})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Acknowledgement(int(cur.lastrowid), study_uid, model, category, revision, user, now, note)

    def acknowledgements(self, study_uid: str | None = None) -> list[Acknowledgement]:
        sql = "SELECT id, study_uid, model, category, revision, user, at, note FROM acknowledgements"
        args: tuple = ()
        if study_uid is not None:
            sql += " WHERE study_uid=?"
            args = (study_uid,)
        with self._lock:
            return [Acknowledgement(*r) for r in self._db.execute(sql + " ORDER BY at, id", args).fetchall()]

    def confirm(self, *, study_uid: str, model: str, revision: int, ai_category: str | None, category: str,
                infection_status: str, radiologist_id: str, user: str, role: str,
                note: str | None) -> Confirmation:
        if infection_status not in INFECTION_STATUSES:
            raise ValueError(f"infection_status: must be one of {', '.join(INFECTION_STATUSES)}")
        now = time.time()
        agrees = ai_category == category
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO confirmations (study_uid, model, revision, ai_category, category, agrees,"
                    " infection_status, radiologist_id, user, at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (study_uid, model, revision, ai_category, category, int(agrees), infection_status,
                     radiologist_id, user, now, note))
                self._audit(user, role, "confirm" if agrees else "correct", study_uid,
                            {"model": model, "revision": revision, "ai_category": ai_category,
                             "category": category, "infection_status": infection_status,
                             "radiologist_id": radiologist_id, "note": note})
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Confirmation(int(cur.lastrowid), study_uid, model, revision, ai_category, category, agrees,
                            infection_status, radiologist_id, user, now, note, None)

    def set_verified_sr(self, confirmation_id: int, path: str, user: str, role: str, study_uid: str) -> None:
        with self._lock:
            self._db.execute("UPDATE confirmations SET verified_sr=? WHERE id=?", (path, confirmation_id))
            self._audit(user, role, "reissue_verified_sr", study_uid, {"confirmation": confirmation_id})

    def confirmations(self, study_uid: str | None = None) -> list[Confirmation]:
        sql = ("SELECT id, study_uid, model, revision, ai_category, category, agrees, infection_status,"
               " radiologist_id, user, at, note, verified_sr FROM confirmations")
        args: tuple = ()
        if study_uid is not None:
            sql += " WHERE study_uid=?"
            args = (study_uid,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY at, id", args).fetchall()
        return [Confirmation(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), *r[7:]) for r in rows]

    def audit_log(self, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT id, at, user, role, action, study_uid, detail FROM audit"
                                    " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"id": r[0], "at": r[1], "user": r[2], "role": r[3], "action": r[4], "study_uid": r[5],
                 "detail": json.loads(r[6]) if r[6] else {}} for r in rows]

