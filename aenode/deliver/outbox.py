"""Durable outbox: everything that leaves the node, one row per (object, destination).

The outbox owns its database (``DataDir.outbox_db``) and talks SQL to it only through
:class:`aenode.store.db.Database`, in portable SQL, so the PostgreSQL backend plugs in
underneath without changes here.  A row is written (and committed) before any attempt is
made, so a crash or restart never loses a delivery; the row key
``(kind, destination, object_id)`` is unique, so enqueueing the same object twice is a
no-op.

Delivery contract: **at-least-once with stable keys.**  A row is marked ``sent`` only
after the receiver acknowledged it; a crash (kill -9, power cut) between the receiver's
acknowledgement and that mark leaves the row ``sending``, and the next worker sends it
again.  Every resend carries the same key: ``object_id`` is the SOP Instance UID for
DICOM objects (C-STORE and STOW-RS; a PACS stores a resent instance as an overwrite of the
same instance) and the alert key (Idempotency-Key / Message-ID / MSH-10) for alerts.
Receivers deduplicate on that key; the outbox never invents a new one for a resend.

States: ``pending`` (waiting for ``next_attempt_at``), ``sending`` (claimed by a worker,
with a lease that expires if the worker dies), ``sent``, ``failed`` (``max_attempts``
used up, or a permanent error; visible, re-triable with :meth:`Outbox.requeue` /
``aenode retry``).

The outbox is generic: ``kind`` names a sender in :mod:`aenode.deliver.senders`
(``dicom`` / ``dicomweb`` = the destination's type; ``webhook``, ``smtp``, ``hl7`` for
alerts).  ``payload`` is a file path (or any text the sender understands) and
``study_uid`` groups rows for status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from aenode.config import DESTINATION_TYPES, Config
from aenode.store.datadir import DataDir
from aenode.store.db import Database, Row, StoreError, open_store_database

STATES = ("pending", "sending", "sent", "failed")
# The file's name, for first-wave callers (tests/alert); new code uses DataDir.outbox_db.
OUTBOX_FILE: str = DataDir(Path("/")).outbox_db.name

Clock = Callable[[], float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              {id},
    kind            TEXT NOT NULL,
    destination     TEXT NOT NULL,
    object_id       TEXT NOT NULL,
    study_uid       TEXT,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_until     DOUBLE PRECISION,
    last_error      TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    sent_at         DOUBLE PRECISION,
    UNIQUE (kind, destination, object_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_study ON outbox (study_uid);
"""

# Versioned schema changes (see aenode.store.db.Database): the first wave had no
# failed_attempts column.
_MIGRATIONS = ("ALTER TABLE outbox ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0",)


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

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def of(cls, r: Row) -> OutboxRow:
        return cls(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), str(r[6]), int(r[7]),
                   int(r[8]), float(r[9]), r[10], float(r[11]), float(r[12]),
                   None if r[13] is None else float(r[13]))


class DeliverySummary(TypedDict):
    """One destination's delivery state for a study (``summary_for_study``)."""

    state: str  # worst of its rows: failed > sending > pending > sent
    counts: dict[str, int]  # state -> rows
    attempts: int  # most attempts of any row
    last_error: str | None
    ids: list[int]  # outbox row ids (for ``aenode retry``)


@dataclass(frozen=True)
class OutboxStats:
    """What metrics need from the outbox, read in one pass (no SQL outside this module)."""

    rows: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (kind, destination, state) -> n
    failed_attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, destination) -> n
    sent_seconds: dict[str, list[float]] = field(default_factory=dict)  # kind -> created-to-sent seconds


_COLUMNS = ("id, kind, destination, object_id, study_uid, payload, state, attempts, max_attempts, "
            "next_attempt_at, last_error, created_at, updated_at, sent_at")


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base * 2**(n-1), capped."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * (2.0 ** min(attempts - 1, 60))))


class Outbox:
    """The outbox database.  Thread-safe (the adapter serialises its connection)."""

    def __init__(self, path: str | Path, *, max_attempts: int = 8, backoff_base_seconds: float = 5.0,
                 backoff_cap_seconds: float = 600.0, lease_seconds: float = 300.0,
                 clock: Clock = time.time, url: str | None = None):
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
        self.shared = url is not None   # other nodes deliver from the same rows
        self._db: Database = open_store_database("outbox", self.path, _SCHEMA, _MIGRATIONS, url)

    @classmethod
    def for_config(cls, config: Config, *, lease_seconds: float = 300.0, clock: Clock = time.time) -> Outbox:
        d = config.delivery
        return cls(DataDir.of(config.node.data_dir).outbox_db, max_attempts=d.max_attempts,
                   backoff_base_seconds=d.backoff_base_seconds, backoff_cap_seconds=d.backoff_cap_seconds,
                   lease_seconds=lease_seconds, clock=clock, url=config.database.url)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> None:
        """Cheap read-only probe (health checks); raises StoreError naming the database."""
        self._db.check()
        try:
            self._db.one("SELECT id FROM outbox WHERE 1=0")
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine's own error, named for the operator
            raise StoreError(f"{self._db.name}: {exc}") from exc

    # Writing ---------------------------------------------------------------------
    def enqueue(self, kind: str, destination: str, object_id: str, payload: str | Path,
                study_uid: str | None = None) -> int:
        """Add a row (durably) and return its id; an existing row for the same
        (kind, destination, object_id) is kept as it is and its id returned."""
        for name, value in (("kind", kind), ("destination", destination), ("object_id", object_id)):
            if not value:
                raise ValueError(f"enqueue: {name} is required")
        now = self._clock()
        with self._db.tx() as t:
            t.execute(
                "INSERT INTO outbox (kind, destination, object_id, study_uid, payload, state, attempts,"
                " max_attempts, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)"
                " ON CONFLICT (kind, destination, object_id) DO NOTHING",
                (kind, destination, object_id, study_uid, str(payload), self.max_attempts, now, now, now))
            row = t.one("SELECT id FROM outbox WHERE kind=? AND destination=? AND object_id=?",
                        (kind, destination, object_id))
        if row is None:
            raise StoreError(f"{self._db.name}: enqueued row not found")
        return int(row[0])

    def claim_due(self, limit: int = 100, kinds: Sequence[str] | None = None) -> list[OutboxRow]:
        """Atomically move due rows to ``sending`` (with a lease) and return them.
        Rows whose lease expired (a worker died mid-send) count as due again.

        Several nodes claim at once without waiting on each other and never get the same
        row: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite's one writer does the same)."""
        now = self._clock()
        with self._db.tx(exclusive=False) as t:
            t.execute("UPDATE outbox SET state='pending', lease_until=NULL, updated_at=?"
                      " WHERE state='sending' AND lease_until < ?", (now, now))
            sql = f"SELECT {_COLUMNS} FROM outbox WHERE state='pending' AND next_attempt_at <= ?"
            args: list[object] = [now]
            if kinds:
                sql += f" AND kind IN ({','.join('?' * len(kinds))})"
                args += list(kinds)
            sql += " ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
            args.append(limit)
            rows = [OutboxRow.of(r) for r in t.query(sql, args)]
            if rows:
                t.executemany("UPDATE outbox SET state='sending', lease_until=?, updated_at=? WHERE id=?",
                              [(now + self.lease_seconds, now, r.id) for r in rows])
        return rows

    def release_leases(self) -> int:
        """Return every ``sending`` row to ``pending`` at once.

        For a delivery worker starting up: in this process nothing is sending yet, so a
        row still ``sending`` was left by a crash and is due now, not when its lease ends.
        (This is the at-least-once resend: the row keeps its key.)

        On a shared database (``[database] url``) another live node may be sending those
        rows: only rows whose lease ran out are released (one delivery per row).
        """
        now = self._clock()
        sql = "UPDATE outbox SET state='pending', lease_until=NULL, updated_at=? WHERE state='sending'"
        if self.shared:
            return self._db.execute(sql + " AND lease_until < ?", (now, now))
        return self._db.execute(sql, (now,))

    def mark_sent(self, row_id: int) -> None:
        now = self._clock()
        self._db.execute(
            "UPDATE outbox SET state='sent', attempts=attempts+1, sent_at=?, updated_at=?, lease_until=NULL,"
            " last_error=NULL WHERE id=?", (now, now, row_id))

    def mark_failed_attempt(self, row_id: int, error: str, *, permanent: bool = False) -> str:
        """Record a failed attempt: back to ``pending`` after the backoff delay, or
        ``failed`` when the attempts are used up (or ``permanent``).  Returns the state."""
        now = self._clock()
        with self._db.tx() as t:
            row = t.one("SELECT attempts, max_attempts FROM outbox WHERE id=?", (row_id,))
            if row is None:
                raise KeyError(row_id)
            attempts = int(row[0]) + 1
            state = "failed" if permanent or attempts >= int(row[1]) else "pending"
            nxt = now + backoff_delay(attempts, self.base, self.cap)
            t.execute(
                "UPDATE outbox SET state=?, attempts=?, next_attempt_at=?, last_error=?, updated_at=?,"
                " lease_until=NULL, failed_attempts=failed_attempts+1 WHERE id=?",
                (state, attempts, nxt, str(error)[:2000], now, row_id))
        return state

    def requeue(self, ids: Iterable[int] | None = None, *, all_failed: bool = False,
                max_attempts: int | None = None) -> int:
        """Move ``failed`` rows (the given ids, or all of them) back to ``pending``, due
        now, with a fresh attempt budget.  Returns how many rows changed."""
        now = self._clock()
        budget = max_attempts or self.max_attempts
        if all_failed:
            return self._db.execute(
                "UPDATE outbox SET state='pending', attempts=0, max_attempts=?, next_attempt_at=?,"
                " updated_at=? WHERE state='failed'", (budget, now, now))
        id_list = [int(i) for i in (ids or [])]
        n = 0
        with self._db.tx() as t:
            for i in id_list:
                n += t.execute(
                    "UPDATE outbox SET state='pending', attempts=0, max_attempts=?, next_attempt_at=?,"
                    " updated_at=? WHERE state='failed' AND id=?", (budget, now, now, i))
        return n

    # Reading ---------------------------------------------------------------------
    def get(self, row_id: int) -> OutboxRow | None:
        r = self._db.one(f"SELECT {_COLUMNS} FROM outbox WHERE id=?", (row_id,))
        return OutboxRow.of(r) if r else None

    def rows(self, *, state: str | None = None, study_uid: str | None = None,
             kind: str | None = None) -> list[OutboxRow]:
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE 1=1"
        args: list[object] = []
        for col, val in (("state", state), ("study_uid", study_uid), ("kind", kind)):
            if val is not None:
                sql += f" AND {col}=?"
                args.append(val)
        return [OutboxRow.of(r) for r in self._db.query(sql + " ORDER BY id", args)]

    def summary_for_study(self, study_uid: str) -> dict[str, DeliverySummary]:
        """Per destination: overall ``state`` (worst of its rows: failed > sending >
        pending > sent), counts per state, attempts and the last error.  For ``aenode status``.

        Result deliveries (kind = a destination type, ``dicom`` or ``dicomweb``) are keyed
        by the destination name; alert rows by ``kind:channel``.
        """
        order = {"failed": 3, "sending": 2, "pending": 1, "sent": 0}
        out: dict[str, DeliverySummary] = {}
        for r in self.rows(study_uid=study_uid):
            key = r.destination if r.kind in DESTINATION_TYPES else f"{r.kind}:{r.destination}"
            d = out.setdefault(key, DeliverySummary(state="sent", counts={}, attempts=0, last_error=None, ids=[]))
            d["counts"][r.state] = d["counts"].get(r.state, 0) + 1
            d["attempts"] = max(d["attempts"], r.attempts)
            d["ids"].append(r.id)
            if r.last_error and r.state != "sent":
                d["last_error"] = r.last_error
            if order[r.state] > order[d["state"]]:
                d["state"] = r.state
        return out

    def counts(self) -> dict[str, int]:
        got = {str(s): int(n) for s, n in self._db.query("SELECT state, COUNT(*) FROM outbox GROUP BY state")}
        return {s: got.get(s, 0) for s in STATES}

    def stats(self) -> OutboxStats:
        """Depth per (kind, destination, state), failed attempts, created-to-sent times."""
        rows = {(str(k), str(d), str(s)): int(n) for k, d, s, n in self._db.query(
            "SELECT kind, destination, state, COUNT(*) FROM outbox GROUP BY kind, destination, state")}
        failed = {(str(k), str(d)): int(n) for k, d, n in self._db.query(
            "SELECT kind, destination, SUM(failed_attempts) FROM outbox GROUP BY kind, destination")}
        sent: dict[str, list[float]] = {}
        for kind, seconds in self._db.query(
                "SELECT kind, sent_at - created_at FROM outbox WHERE state='sent' AND sent_at IS NOT NULL"
                " ORDER BY id"):
            sent.setdefault(str(kind), []).append(max(0.0, float(seconds)))
        return OutboxStats(rows=rows, failed_attempts=failed, sent_seconds=sent)

    def next_due_in(self) -> float | None:
        """Seconds until the next pending row is due (0 if one is due now), None if none."""
        r = self._db.one("SELECT MIN(next_attempt_at) FROM outbox WHERE state='pending'")
        if r is None or r[0] is None:
            return None
        return max(0.0, float(r[0]) - self._clock())
