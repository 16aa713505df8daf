"""Outbox logic (fake clock and senders): states, backoff, requeue, summary -- on both engines
(``db_url``: embedded SQLite, then a real throwaway PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from aenode.config import parse_config
from aenode.deliver.dicom import DeliveryError
from aenode.deliver.outbox import Outbox, backoff_delay
from aenode.deliver.senders import register_sender
from aenode.deliver.worker import DeliveryWorker


def _database(url: str | None) -> dict[str, dict[str, str]]:
    return {} if url is None else {"database": {"url": url}}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(n, 2.0, 30.0) for n in range(0, 7)] == [0.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(10_000, 1.0, 5.0) == 5.0


def test_enqueue_is_idempotent_and_durable(tmp_path, db_url):
    with Outbox(tmp_path / "o.sqlite", url=db_url) as box:
        a = box.enqueue("dicom", "pacs", "1.2.3", "/x/sr.dcm", study_uid="9.9")
        assert box.enqueue("dicom", "pacs", "1.2.3", "/x/sr.dcm", study_uid="9.9") == a
        b = box.enqueue("dicom", "backup", "1.2.3", "/x/sr.dcm", study_uid="9.9")
        assert a != b
    with Outbox(tmp_path / "o.sqlite", url=db_url) as box:  # reopened: still there
        assert [r.id for r in box.rows(state="pending")] == [a, b]
    with pytest.raises(ValueError):
        Outbox(tmp_path / "p.sqlite", url=db_url).enqueue("", "pacs", "1", "/p")


def test_attempts_backoff_then_failed_then_requeue(tmp_path, db_url):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", max_attempts=3, backoff_base_seconds=10, backoff_cap_seconds=15, clock=clock,
                 url=db_url)
    rid = box.enqueue("dicom", "pacs", "1.2.3", "/x", study_uid="s")
    assert [r.id for r in box.claim_due()] == [rid]
    assert box.claim_due() == []  # leased
    assert box.mark_failed_attempt(rid, "refused") == "pending"
    assert box.get(rid).next_attempt_at == 1010.0 and box.next_due_in() == 10.0
    assert box.claim_due() == []
    clock.t = 1010.0
    assert len(box.claim_due()) == 1
    assert box.mark_failed_attempt(rid, "refused") == "pending"
    assert box.get(rid).next_attempt_at == 1025.0  # 20 s capped to 15
    clock.t = 1025.0
    box.claim_due()
    assert box.mark_failed_attempt(rid, "refused again") == "failed"
    row = box.get(rid)
    assert row.state == "failed" and row.attempts == 3 and row.last_error == "refused again"
    clock.t = 5000.0
    assert box.claim_due() == []  # failed is terminal until requeued
    s = box.summary_for_study("s")
    assert s["pacs"]["state"] == "failed" and s["pacs"]["last_error"] == "refused again"
    assert box.requeue([rid]) == 1 and box.requeue([rid]) == 0
    row = box.get(rid)
    assert row.state == "pending" and row.attempts == 0
    box.claim_due()
    box.mark_sent(rid)
    assert box.summary_for_study("s")["pacs"]["state"] == "sent"
    assert box.counts() == {"pending": 0, "sending": 0, "sent": 1, "failed": 0}


def test_expired_lease_is_claimed_again(tmp_path, db_url):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", lease_seconds=60, clock=clock, url=db_url)
    rid = box.enqueue("dicom", "pacs", "1", "/x")
    box.claim_due()  # worker dies here
    clock.t += 61
    assert [r.id for r in box.claim_due()] == [rid]


def test_worker_uses_sender_registry_and_permanent_errors(tmp_path, db_url):
    calls = []

    def sender(config, destination, rows):
        calls.append((destination, [r.object_id for r in rows]))
        return {r.id: (None if r.object_id == "ok" else DeliveryError("gone", permanent=True)) for r in rows}

    register_sender("test-kind", sender)
    config = parse_config({"node": {"data_dir": str(tmp_path)}, "delivery": {"max_attempts": 5},
                           **_database(db_url)})
    box = Outbox.for_config(config)
    a = box.enqueue("test-kind", "hook", "ok", "payload")
    b = box.enqueue("test-kind", "hook", "bad", "payload")
    c = box.enqueue("no-such-kind", "x", "1", "p")
    w = DeliveryWorker(config, None, outbox=box)
    assert w.run_once() == 3
    assert calls == [("hook", ["ok", "bad"])]
    assert box.get(a).state == "sent" and box.get(b).state == "failed"
    assert box.get(c).state == "pending" and "no sender" in box.get(c).last_error


def test_sql_is_portable():
    """The outbox's SQL must run unchanged on PostgreSQL (the next backend): no SQLite-only forms."""
    import inspect

    import aenode.deliver.outbox as mod

    src = inspect.getsource(mod)
    for bad in ("INSERT OR", "REPLACE INTO", "sqlite3", "AUTOINCREMENT", " REAL"):
        assert bad not in src, bad


def test_stats_and_check(tmp_path, db_url):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", max_attempts=2, backoff_base_seconds=1, clock=clock, url=db_url)
    a = box.enqueue("dicom", "pacs", "1.1", "/a", study_uid="s")
    b = box.enqueue("dicom", "pacs", "1.2", "/b", study_uid="s")
    c = box.enqueue("webhook", "webhook", "k1", "{}", study_uid="s")
    box.claim_due()
    clock.t += 2.5
    box.mark_sent(a)
    box.mark_failed_attempt(b, "refused")
    box.mark_failed_attempt(c, "HTTP 503")
    clock.t += 10
    box.claim_due()
    box.mark_failed_attempt(b, "refused")  # second failure: failed
    box.requeue([b])  # requeue resets attempts but not the failure count
    st = box.stats()
    assert st.rows == {("dicom", "pacs", "sent"): 1, ("dicom", "pacs", "pending"): 1,
                       ("webhook", "webhook", "sending"): 1}
    assert st.failed_attempts == {("dicom", "pacs"): 2, ("webhook", "webhook"): 1}
    assert st.sent_seconds == {"dicom": [2.5]}
    box.check()
    box.close()
    from aenode.store.db import StoreError

    if db_url is None:
        (tmp_path / "bad.sqlite").write_bytes(b"this is not a database at all" * 100)
        with pytest.raises(StoreError):
            Outbox(tmp_path / "bad.sqlite").check()
    else:  # no server there: the error names the schema, never the password
        with pytest.raises(StoreError, match="aenode_outbox") as err:
            Outbox(tmp_path / "x", url="postgresql://u:canary-pw@127.0.0.1:9/nodb")
        assert "canary-pw" not in str(err.value)


def test_kill_between_send_and_mark_resends_with_the_same_key(tmp_path, db_url):
    """At-least-once with stable keys: a worker killed after the receiver got the object but
    before ``mark_sent`` leaves the row ``sending``; the next worker sends it again with the
    same object_id (SOP Instance UID / alert key), which the receiver deduplicates on."""
    sent: list[str] = []

    def sender(config, destination, rows):
        sent.extend(r.object_id for r in rows)
        return {r.id: None for r in rows}

    register_sender("test-alo", sender)
    config = parse_config({"node": {"data_dir": str(tmp_path)}, **_database(db_url)})
    box = Outbox.for_config(config)
    rid = box.enqueue("test-alo", "r", "1.2.840.99.1", "payload")
    [row] = box.claim_due()
    sender(config, "r", [row])  # delivered ... and the process dies before mark_sent
    box.close()
    if db_url is not None:
        # Shared database: the row may be another live node's; it is released only once
        # its lease ran out, so one node sends it at a time.
        box = Outbox.for_config(config)
        assert DeliveryWorker(config, outbox=box).resume_interrupted() == 0
        box.close()
    later = 0.0 if db_url is None else 301.0
    box = Outbox.for_config(config, clock=lambda: time.time() + later)  # restart
    w = DeliveryWorker(config, outbox=box)
    assert w.resume_interrupted() == 1
    assert w.run_once() == 1
    assert sent == ["1.2.840.99.1", "1.2.840.99.1"]
    assert box.get(rid).state == "sent" and box.rows() == [box.get(rid)]
