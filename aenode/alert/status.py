"""Alert state per study, for ``aenode status`` and the dashboard.

``alert_status(data_dir, study_uid)`` -> ``{channel: {"state", "category", "update",
"alerting", "revision", "attempts", "last_error"}}`` for the newest alert of each outbox
channel, from the alert decisions and their outbox rows (``pending`` / ``sending`` /
``sent`` / ``failed``; ``decided`` if not yet handed to the outbox).  Empty when no alert
was raised.  The built-in "dashboard" channel is not listed: it sends nothing (read it
with :meth:`AlertStore.current_alert`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aenode.alert.channels import REGISTRY
from aenode.alert.store import AlertStore
from aenode.deliver.outbox import Outbox
from aenode.store.datadir import DataDir


def alert_status(data_dir: str | Path, study_uid: str, outbox: Outbox | None = None, *,
                 url: str | None = None) -> dict[str, dict[str, Any]]:
    """``url`` is ``[database] url`` (None: the SQLite files under ``data_dir``)."""
    files = DataDir.of(data_dir)
    if url is None and not files.alerts_db.is_file():
        return {}
    with AlertStore(files.alerts_db, url=url) as store:
        alerts = [a for a in store.alerts(study_uid) if a.channel in REGISTRY]
    if not alerts:
        return {}
    own = outbox is None
    box = Outbox(files.outbox_db, url=url) if outbox is None else outbox
    try:
        rows = {(r.kind, r.object_id): r for r in box.rows(study_uid=study_uid) if r.kind in REGISTRY}
    finally:
        if own:
            box.close()
    out: dict[str, dict[str, Any]] = {}
    for a in sorted(alerts, key=lambda a: (a.revision, a.created)):
        row = rows.get((a.channel, a.key))
        out[a.channel] = {
            "state": row.state if row else "decided",
            "category": a.category,
            "update": a.is_update,
            "alerting": a.alerting,
            "revision": a.revision,
            "attempts": row.attempts if row else 0,
            "last_error": row.last_error if row else None,
        }
    return out
