"""The dashboard's own durable state: ``DataDir.web_db`` (``web.sqlite``), the only module
that talks SQL to it, always through :class:`aenode.store.db.Database` (portable SQL).

- ``acknowledgements``: who acknowledged which alert (study, model, alert category,
  result revision), when, with an optional note;
- ``confirmations``: a radiologist's confirmation or correction of a study's category
  (with the infection status and the radiologist's ID), who and when, and the path of
  the verified SR re-issued for it (when configured);
- ``audit``: append-only log of every acknowledgement, confirmation, login and logout;
- ``web_sessions``: server-side session records, so that logout and a password change end
  a session even when its signed cookie was copied (only the SHA-256 of the session id is
  stored, so a copy of the database does not hand out live sessions).

An alert counts as acknowledged while an acknowledgement exists for its study, model and
alert category: a later revision with the same category stays acknowledged (the alert
channels send nothing new either), a changed category is a new alert.

``"user"`` is quoted everywhere: it is a reserved word in PostgreSQL.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from aenode.store.datadir import DataDir
from aenode.store.db import Database, Row, open_store_database

INFECTION_STATUSES = ("pcr-positive", "pcr-negative", "unknown")

JSONValue = str | int | float | bool | None

_SCHEMA = """
CREATE TABLE IF NOT EXISTS acknowledgements (
    id        {id},
    study_uid TEXT NOT NULL,
    model     TEXT NOT NULL,
    category  TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    "user"    TEXT NOT NULL,
    at        DOUBLE PRECISION NOT NULL,
    note      TEXT
);
CREATE INDEX IF NOT EXISTS ack_study ON acknowledgements (study_uid, model, category);
CREATE TABLE IF NOT EXISTS confirmations (
    id               {id},
    study_uid        TEXT NOT NULL,
    model            TEXT NOT NULL,
    revision         INTEGER NOT NULL,
    ai_category      TEXT,
    category         TEXT NOT NULL,
    agrees           INTEGER NOT NULL,
    infection_status TEXT NOT NULL,
    radiologist_id   TEXT NOT NULL,
    "user"           TEXT NOT NULL,
    at               DOUBLE PRECISION NOT NULL,
    note             TEXT,
    verified_sr      TEXT
);
CREATE INDEX IF NOT EXISTS conf_study ON confirmations (study_uid);
CREATE TABLE IF NOT EXISTS audit (
    id        {id},
    at        DOUBLE PRECISION NOT NULL,
    "user"    TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    study_uid TEXT,
    detail    TEXT
);
CREATE TABLE IF NOT EXISTS web_sessions (
    id_sha256   TEXT PRIMARY KEY,
    "user"      TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    credential  TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL,
    expires     DOUBLE PRECISION NOT NULL,
    ended       DOUBLE PRECISION,
    end_reason  TEXT
);
CREATE INDEX IF NOT EXISTS web_sessions_user ON web_sessions ("user", ended);
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


@dataclass(frozen=True)
class SessionRecord:
    """A live session: the CSRF token it carries and the fingerprint of the credential it
    was opened with (a changed password no longer matches, so the session ends)."""

    user: str
    csrf: str
    credential: str
    created: float
    expires: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    user: str
    role: str
    action: str
    study_uid: str | None
    detail: dict[str, JSONValue]

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "at": self.at, "user": self.user, "role": self.role, "action": self.action,
                "study_uid": self.study_uid, "detail": self.detail}


def _confirmation(r: Row) -> Confirmation:
    return Confirmation(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5], bool(r[6]), r[7], r[8], r[9], float(r[10]),
                        r[11], r[12])


class WebStore:
    """Acknowledgements, confirmations, audit log and sessions of the dashboard."""

    def __init__(self, path: str | Path, *, url: str | None = None):
        self.path = Path(path)
        self._db: Database = open_store_database("web", self.path, _SCHEMA, (), url)

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, *, url: str | None = None) -> WebStore:
        """``url`` is ``[database] url`` (None: SQLite under ``data_dir``)."""
        return cls(DataDir.of(data_dir).web_db, url=url)

    def close(self) -> None:
        self._db.close()

    def check(self) -> None:
        """Cheap read-only probe for ``/healthz``; raises ``StoreError`` naming the database."""
        self._db.check()

    # ---- audit -----------------------------------------------------------------------

    @staticmethod
    def _audit_sql() -> str:
        return 'INSERT INTO audit (at, "user", role, action, study_uid, detail) VALUES (?,?,?,?,?,?)'

    def audit(self, user: str, role: str, action: str, study_uid: str | None = None,
              **detail: JSONValue) -> None:
        self._db.execute(self._audit_sql(),
                         (time.time(), user, role, action, study_uid, json.dumps(detail, sort_keys=True)))

    def audit_log(self, limit: int = 500) -> list[AuditEntry]:
        rows = self._db.query('SELECT id, at, "user", role, action, study_uid, detail FROM audit'
                              " ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else {})
                for r in rows]

    # ---- acknowledgements ------------------------------------------------------------

    def acknowledge(self, study_uid: str, model: str, category: str, revision: int, user: str, role: str,
                    note: str | None) -> Acknowledgement:
        now = time.time()
        with self._db.tx() as t:
            ack_id = t.insert_id(
                'INSERT INTO acknowledgements (study_uid, model, category, revision, "user", at, note)'
                " VALUES (?,?,?,?,?,?,?)", (study_uid, model, category, revision, user, now, note))
            t.execute(self._audit_sql(), (now, user, role, "acknowledge", study_uid, json.dumps(
                {"model": model, "category": category, "revision": revision, "note": note}, sort_keys=True)))
        return Acknowledgement(ack_id, study_uid, model, category, revision, user, now, note)

    def acknowledgements(self, study_uid: str | None = None) -> list[Acknowledgement]:
        sql = 'SELECT id, study_uid, model, category, revision, "user", at, note FROM acknowledgements'
        args: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " WHERE study_uid=?"
            args = (study_uid,)
        return [Acknowledgement(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], float(r[6]), r[7])
                for r in self._db.query(sql + " ORDER BY at, id", args)]

    def acknowledgement(self, study_uid: str, model: str, category: str) -> Acknowledgement | None:
        """The newest acknowledgement of this alert (study, model, category), if any."""
        r = self._db.one('SELECT id, study_uid, model, category, revision, "user", at, note FROM acknowledgements'
                         " WHERE study_uid=? AND model=? AND category=? ORDER BY at DESC, id DESC LIMIT 1",
                         (study_uid, model, category))
        return None if r is None else Acknowledgement(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], float(r[6]),
                                                      r[7])

    # ---- confirmations ---------------------------------------------------------------

    def confirm(self, *, study_uid: str, model: str, revision: int, ai_category: str | None, category: str,
                infection_status: str, radiologist_id: str, user: str, role: str,
                note: str | None) -> Confirmation:
        if infection_status not in INFECTION_STATUSES:
            raise ValueError(f"infection_status: must be one of {', '.join(INFECTION_STATUSES)}")
        now = time.time()
        agrees = ai_category == category
        with self._db.tx() as t:
            conf_id = t.insert_id(
                "INSERT INTO confirmations (study_uid, model, revision, ai_category, category, agrees,"
                ' infection_status, radiologist_id, "user", at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?)',
                (study_uid, model, revision, ai_category, category, int(agrees), infection_status,
                 radiologist_id, user, now, note))
            t.execute(self._audit_sql(), (now, user, role, "confirm" if agrees else "correct", study_uid, json.dumps(
                {"model": model, "revision": revision, "ai_category": ai_category, "category": category,
                 "infection_status": infection_status, "radiologist_id": radiologist_id, "note": note},
                sort_keys=True)))
        return Confirmation(conf_id, study_uid, model, revision, ai_category, category, agrees,
                            infection_status, radiologist_id, user, now, note, None)

    def set_verified_sr(self, confirmation_id: int, path: str, user: str, role: str, study_uid: str) -> None:
        now = time.time()
        with self._db.tx() as t:
            t.execute("UPDATE confirmations SET verified_sr=? WHERE id=?", (path, confirmation_id))
            t.execute(self._audit_sql(), (now, user, role, "reissue_verified_sr", study_uid,
                                          json.dumps({"confirmation": confirmation_id})))

    def confirmations(self, study_uid: str | None = None) -> list[Confirmation]:
        sql = ("SELECT id, study_uid, model, revision, ai_category, category, agrees, infection_status,"
               ' radiologist_id, "user", at, note, verified_sr FROM confirmations')
        args: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " WHERE study_uid=?"
            args = (study_uid,)
        return [_confirmation(r) for r in self._db.query(sql + " ORDER BY at, id", args)]

    def confirmation_counts(self) -> dict[bool, int]:
        """Confirmations (True: agrees with the AI) and corrections (False), for metrics."""
        got = {bool(r[0]): int(r[1]) for r in self._db.query("SELECT agrees, COUNT(*) FROM confirmations"
                                                              " GROUP BY agrees")}
        return {True: got.get(True, 0), False: got.get(False, 0)}

    # ---- sessions --------------------------------------------------------------------

    def open_session(self, id_sha256: str, user: str, role: str, csrf: str, credential: str,
                     expires: float) -> None:
        """Record a new session and audit the login, in one transaction."""
        now = time.time()
        with self._db.tx() as t:
            t.execute('INSERT INTO web_sessions (id_sha256, "user", csrf, credential, created, expires)'
                      " VALUES (?,?,?,?,?,?)", (id_sha256, user, csrf, credential, now, expires))
            t.execute(self._audit_sql(), (now, user, role, "login", None, "{}"))
            # Housekeeping on login (rare), never per request: drop records long past.
            t.execute("DELETE FROM web_sessions WHERE expires < ?", (now - 30 * 86400,))

    def session(self, id_sha256: str, now: float | None = None) -> SessionRecord | None:
        """The live session with this id hash, or None (unknown, ended or expired)."""
        r = self._db.one('SELECT "user", csrf, credential, created, expires FROM web_sessions'
                         " WHERE id_sha256=? AND ended IS NULL AND expires > ?",
                         (id_sha256, time.time() if now is None else now))
        return None if r is None else SessionRecord(r[0], r[1], r[2], float(r[3]), float(r[4]))

    def end_session(self, id_sha256: str, reason: str, role: str) -> bool:
        """End one session (logout); audited.  False if it was not live."""
        now = time.time()
        with self._db.tx() as t:
            got = t.one('SELECT "user" FROM web_sessions WHERE id_sha256=? AND ended IS NULL', (id_sha256,))
            if got is None:
                return False
            t.execute("UPDATE web_sessions SET ended=?, end_reason=? WHERE id_sha256=?", (now, reason, id_sha256))
            t.execute(self._audit_sql(), (now, got[0], role, reason, None, "{}"))
        return True

    def end_sessions(self, user: str, reason: str, *, except_credential: str | None = None) -> int:
        """End every live session of ``user`` (password changed, user removed); returns how many.
        ``except_credential``: keep the sessions opened with this credential fingerprint."""
        now = time.time()
        sql = 'UPDATE web_sessions SET ended=?, end_reason=? WHERE "user"=? AND ended IS NULL'
        args: tuple[float | str, ...] = (now, reason, user)
        if except_credential is not None:
            sql += " AND credential<>?"
            args += (except_credential,)
        with self._db.tx() as t:
            return t.execute(sql, args)

    def live_sessions(self, user: str | None = None) -> int:
        now = time.time()
        if user is None:
            r = self._db.one("SELECT COUNT(*) FROM web_sessions WHERE ended IS NULL AND expires > ?", (now,))
        else:
            r = self._db.one('SELECT COUNT(*) FROM web_sessions WHERE "user"=? AND ended IS NULL AND expires > ?',
                             (user, now))
        return int(r[0]) if r else 0
