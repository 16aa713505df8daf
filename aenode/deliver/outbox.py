"""Durable outbox: everything that leaves the node, one row per (object, destination).

SQLite in WAL mode, its own file (``<data_dir>/outbox.sqlite``).  A row is written (and
committed) before any attempt is made, so a crash or restart never loses a delivery; the
row key ``(kind, destination, object_id)`` is unique, so enqueueing the same object twice
is a no-op and a result is delivered at most once per destination by the outbox (the
deterministic SOP Instance UIDs make a resend after a crash an idempotent overwrite).

States: ``pending`` (waiting for ``next_attempt_at``), ``sending`` (claimed by a worker,
with a lease that expires if the worker dies), ``sent``, ``failed`` (``max_attempts``
used up; visible, re-triable with :meth:`Outbox.requeue` / ``aenode retry``).

The outbox is generic: ``kind`` names a sender in :mod:`aenode.deliver.senders`
(``dicom`` now; ``webhook``, ``smtp``, ``hl7`` for alerts).  ``payload`` is a file path
(or any text the sender understands) and ``study_uid`` groups rows for status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aenode.store.sqlite import open_database

OUTBOX_FILE = "outbox.sqlite"
STATES = ("pending", "sending", "sent", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    destination     TEXT NOT NULL,
    object_id       TEXT NOT NULL,
    study_uid       TEXT,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sent_at         REAL,
    UNIQUE (kind, destination, object_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_study ON outbox (study_uid);
"""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    destination: str
    object_id: str
    study_uid: str | None
    payload: str
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    updated_at: float
    sent_at: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_COLUMNS = ("id, kind, destination, object_id, study_uid, payload, state, attempts, max_attempts, "
            "next_attempt_at, last_error, created_at, updated_at, sent_at")


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base * 2**(n-1), capped."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * (2.0 ** min(attempts - 1, 60))))


class Outbox:
    """The outbox database.  Thread-safe; one connection per instance."""

    def __init__(self, path: str | Path, *, max_attempts: int = 8, backoff_base_seconds: float = 5.0,
                 backoff_cap_seconds: float = 600.0, lease_seconds: float = 300.0,
                 clock=time.time):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_base_seconds <= 0 or backoff_cap_seconds <= 0:
            raise ValueError("backoff seconds must be > 0")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self.base = backoff_base_seconds
        self.cap = backoff_cap_seconds
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._lock = threading.RLock()
        self._db = open_database(self.path, _SCHEMA)

    @classmethod
    def for_config(cls, config, **kwargs) -> Outbox:
        d = config.delivery
        return cls(Path(config.node.data_dir) / OUTBOX_FILE, max_attempts=d.max_attempts,
                   backoff_base_seconds=d.backoff_base_seconds, backoff_cap_seconds=d.backoff_cap_seconds,
                   **kwargs)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Writing ---------------------------------------------------------------------
    def enqueue(self, kind: str, destination: str, object_id: str, payload: str | Path,
                study_uid: str | None = None) -> int:
        """Add a row (durably) and return its id; an existing row for the same
        (kind, destination, object_id) is kept as it is and its id returned."""
        for name, value in (("kind", kind), ("destination", destination), ("object_id", object_id)):
            if not value:
                raise ValueError(f"enqueue: {name} is required")
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (kind, destination, object_id, study_uid, payload, state, attempts,"
                " max_attempts, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
                (kind, destination, object_id, study_uid, str(payload), self.max_attempts, now, now, now))
            row = self._db.execute("SELECT id FROM outbox WHERE kind=? AND destination=? AND object_id=?",
                                   (kind, destination, object_id)).fetchone()
        return int(row[0])

    def claim_due(self, limit: int = 100, kinds: Sequence[str] | None = None) -> list[OutboxRow]:
        """Atomically move due rows to ``sending`` (with a lease) and return them.
        Rows whose lease expired (a worker died mid-send) count as due again."""
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE outbox SET state='pending', lease_until=NULL, updated_at=?"
                    " WHERE state='sending' AND lease_until < ?", (now, now))
                sql = f"SELECT {_COLUMNS} FROM outbox WHERE state='pending' AND next_attempt_at <= ?"
                args: list = [now]
                if kinds:
                    sql += f" AND kind IN ({','.join('?' * len(kinds))})"
                    args += list(kinds)
                sql += " ORDER BY next_attempt_at, id LIMIT ?"
                args.append(limit)
                rows = [OutboxRow(*r) for r in self._db.execute(sql, args).fetchall()]
                if rows:
                    self._db.executemany(
                        "UPDATE outbox SET state='sending', lease_until=?, updated_at=? WHERE id=?",
                        [(now + self.lease_seconds, now, r.id) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rows

    def release_leases(self) -> int:
        """Return every ``sending`` row to ``pending`` at once.

        For a delivery worker starting up: in this process nothing is sending yet, so a
        row still ``sending`` was left by a crash and is due now, not when its lease ends.
        """
        now = self._clock()
        with self._lock:
            cur = self._db.execute("UPDATE outbox SET state='pending', lease_until=NULL, updated_at=?"
                                   " WHERE state='sending'", (now,))
        return cur.rowcount

    def mark_sent(self, row_id: int) -> None:
        now = self._clock()
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET state='sent', attempts=attempts+1, sent_at=?, updated_at=?, lease_until=NULL,"
                " last_error=NULL WHERE id=?", (now, now, row_id))

    def mark_failed_attempt(self, row_id: int, error: str, *, permanent: bool = False) -> str:
        """Record a failed attempt: back to ``pending`` after the backoff delay, or
        ``failed`` when the attempts are used up (or ``permanent``).  Returns the state."""
        now = self._clock()
        with self._lock:
            row = self._db.execute("SELECT attempts, max_attempts FROM outbox WHERE id=?", (row_id,)).fetchone()
            if row is None:
                raise KeyError(row_id)
            attempts = row[0] + 1
            state = "failed" if permanent or attempts >= row[1] else "pending"
            nxt = now + backoff_delay(attempts, self.base, self.cap)
            self._db.execute(
                "UPDATE outbox SET state=?, attempts=?, next_attempt_at=?, last_error=?, updated_at=?,"
                " lease_until=NULL WHERE id=?", (state, attempts, nxt, str(error)[:2000], now, row_id))
        return state

    def requeue(self, ids: Iterable[int] | None = None, *, all_failed: bool = False,
                max_attempts: int | None = None) -> int:
        """Move ``failed`` rows (the given ids, or all of them) back to ``pending``, due
        now, with a fresh attempt budget.  Returns how many rows changed."""
        now = self._clock()
        budget = max_attempts or self.max_attempts
        with self._lock:
            if all_failed:
                cur = self._db.execute(
                    "UPDATE outbox SET state='pending', attempts=0, max_attempts=?, next_attempt_at=?,"
                    " updated_at=? WHERE state='failed'", (budget, now, now))
                return cur.rowcount
            id_list = [int(i) for i in (ids or [])]
            if not id_list:
                return 0
            cur = self._db.executemany(
                "UPDATE outbox SET state='pending', attempts=0, max_attempts=?, next_attempt_at=?, updated_at=?"
                " WHERE state='failed' AND id=?", [(budget, now, now, i) for i in id_list])
            return cur.rowcount

    # Reading ---------------------------------------------------------------------
    def get(self, row_id: int) -> OutboxRow | None:
        with self._lock:
            r = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id=?", (row_id,)).fetchone()
        return OutboxRow(*r) if r else None

    def rows(self, *, state: str | None = None, study_uid: str | None = None,
             kind: str | None = None) -> list[OutboxRow]:
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE 1=1"
        args: list = []
        for col, val in (("state", state), ("study_uid", study_uid), ("kind", kind)):
            if val is not None:
                sql += f" AND {col}=?"
                args.append(val)
        with self._lock:
            return [OutboxRow(*r) for r in self._db.execute(sql + " ORDER BY id", args).fetchall()]

    def summary_for_study(self, study_uid: str) -> dict[str, dict]:
        """Per destination: overall ``state`` (worst of its rows: failed > sending >
        pending > sent), counts per state, attempts and the last error.  For ``aenode status``."""
        order = {"failed": 3, "sending": 2, "pending": 1, "sent": 0}
        out: dict[str, dict] = {}
        for r in self.rows(study_uid=study_uid):
            key = r.destination if r.kind == "dicom" else f"{r.kind}:{r.destination}"
            d = out.setdefault(key, {"state": "sent", "counts": {}, "attempts": 0, "last_error": None, "ids": []})
            d["counts"][r.state] = d["counts"].get(r.state, 0) + 1
            d["attempts"] = max(d["attempts"], r.attempts)
            d["ids"].append(r.id)
            if r.last_error and r.state != "sent":
                d["last_error"] = r.last_error
            if order[r.state] > order[d["state"]]:
                d["state"] = r.state
        return out

    def counts(self) -> dict[str, int]:
        with self._lock:
            got = dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        return {s: int(got.get(s, 0)) for s in STATES}

    def next_due_in(self) -> float | None:
        """Seconds until the next pending row is due (0 if one is due now), None if none."""
        with self._lock:
            r = self._db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state='pending'").fetchone()
        if r is None or r[0] is None:
            return None
        return max(0.0, r[0] - self._clock())
