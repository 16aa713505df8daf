"""Alert state per study, for ``aenode status`` and the dashboard.

``alert_status(data_dir, study_uid)`` -> ``{channel: {"state", "category", "update",
"revision", "attempts", "last_error"}}`` for the newest alert of each channel, from the
alert decisions and their outbox rows (``pending`` / ``sending`` / ``sent`` / ``failed``;
``decided`` if not yet handed to the outbox).  Empty when no alert was raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aenode.alert.base import CHANNELS
from aenode.alert.store import ALERTS_FILE, AlertStore


def alert_status(data_dir: str | Path, study_uid: str, outbox: Any | None = None) -> dict[str, dict[str, Any]]:
    path = Path(data_dir) / ALERTS_FILE
    if not path.is_file():
        return {}
    store = AlertStore(path)
    try:
        alerts = store.alerts(study_uid)
    finally:
        store.close()
    if not alerts:
        return {}
    own = outbox is None
    if own:
        from aenode.deliver.outbox import OUTBOX_FILE, Outbox

        outbox = Outbox(Path(data_dir) / OUTBOX_FILE)
    try:
        rows = {(r.kind, r.object_id): r for r in outbox.rows(study_uid=study_uid) if r.kind in CHANNELS}
    finally:
        if own:
            outbox.close()
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
