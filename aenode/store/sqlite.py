"""One way to open the node's SQLite databases.

Each stage owns its own database file (index, outbox, alerts, web), but all of them need
the same durability settings: WAL so that readers (status, dashboard) never block the
writer, ``synchronous=FULL`` so that a committed row survives a power cut, and a busy
timeout so that concurrent writers queue instead of failing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: str | Path, schema: str) -> sqlite3.Connection:
    """Open (creating folder and tables if needed) a database in autocommit mode.

    The connection may be shared between threads; callers serialise their own use of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(schema)
    return db
