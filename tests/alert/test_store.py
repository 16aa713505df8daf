"""AlertStore: the agreed read methods, forward-only cursor, idempotent commits."""

from __future__ import annotations

import json

import pytest

from aenode.alert.base import alert_key
from aenode.alert.store import DASHBOARD, AlertRow, AlertStore
from aenode.store.datadir import DataDir
from aenode.store.db import StoreError


def row(study: str, revision: int, channel: str, category: str, alerting: bool, created: float,
        model: str = "m") -> AlertRow:
    return AlertRow(alert_key(study, revision, model, channel), study, revision, model, channel, category,
                    alerting, revision > 1, None, json.dumps({"probability": 0.5}), created, False)


def test_current_alerts_counts_and_cursor(tmp_path, db_url):
    store = AlertStore.for_data_dir(tmp_path, url=db_url)
    assert store.path == DataDir.of(tmp_path).alerts_db
    store.commit_decisions(10, [("s1", "m", 1), ("s2", "m", 1), ("s3", "m", 1)], [
        row("s1", 1, DASHBOARD, "Typical", True, 1.0),
        row("s2", 1, DASHBOARD, "Typical", True, 2.0),
        row("s3", 1, DASHBOARD, "Negative", False, 3.0),
        row("s1", 1, "webhook", "Typical", True, 1.0),
    ])
    # s2 is lowered by revision 2: no longer current, but still its newest decision.
    store.commit_decisions(12, [("s2", "m", 2)], [row("s2", 2, DASHBOARD, "Negative", False, 4.0)])
    # A late, lower cursor and an older revision never move state back.
    store.commit_decisions(5, [("s2", "m", 1)], [])
    assert store.cursor() == 12 and store.seen_revision("s2", "m") == 2

    current = store.current_alerts(10)
    assert [(a.study_uid, a.category) for a in current] == [("s1", "Typical")]
    assert current[0].probability == 0.5
    assert store.current_alert("s2", "m").revision == 2
    assert store.current_alert("s2", "m").alerting is False
    assert store.current_alert("nope", "m") is None
    assert store.counts() == {(DASHBOARD, "Typical"): 2, (DASHBOARD, "cleared"): 2, ("webhook", "Typical"): 1}
    # The dashboard channel is never handed to the outbox.
    assert [a.channel for a in store.unqueued()] == ["webhook"]
    # A repeated commit (crash before the cursor moved) keeps the first decision.
    store.commit_decisions(12, [], [row("s1", 1, DASHBOARD, "Indeterminate", True, 9.0)])
    assert store.current_alert("s1", "m").category == "Typical"
    store.check()
    store.close()


def test_current_alerts_newest_first_and_limited(tmp_path, db_url):
    with AlertStore.for_data_dir(tmp_path, url=db_url) as store:
        store.commit_decisions(3, [], [row(f"s{i}", 1, DASHBOARD, "Typical", True, float(i)) for i in range(3)])
        assert [a.study_uid for a in store.current_alerts(2)] == ["s2", "s1"]


def test_unusable_database_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="alerts.sqlite"):
        AlertStore(tmp_path / "file" / "alerts.sqlite")
