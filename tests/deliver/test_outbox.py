"""Outbox logic (pure SQLite, fake clock and senders): states, backoff, requeue, summary."""

from __future__ import annotations

import pytest

from aenode.config import parse_config
from aenode.deliver.dicom import DeliveryError
from aenode.deliver.outbox import Outbox, backoff_delay
from aenode.deliver.senders import register_sender
from aenode.deliver.worker import DeliveryWorker


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(n, 2.0, 30.0) for n in range(0, 7)] == [0.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(10_000, 1.0, 5.0) == 5.0


def test_enqueue_is_idempotent_and_durable(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        a = box.enqueue("dicom", "pacs", "1.2.3", "/x/sr.dcm", study_uid="9.9")
        assert box.enqueue("dicom", "pacs", "1.2.3", "/x/sr.dcm", study_uid="9.9") == a
        b = box.enqueue("dicom", "backup", "1.2.3", "/x/sr.dcm", study_uid="9.9")
        assert a != b
    with Outbox(tmp_path / "o.sqlite") as box:  # reopened: still there
        assert [r.id for r in box.rows(state="pending")] == [a, b]
    with pytest.raises(ValueError):
        Outbox(tmp_path / "p.sqlite").enqueue("", "pacs", "1", "/p")


def test_attempts_backoff_then_failed_then_requeue(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", max_attempts=3, backoff_base_seconds=10, backoff_cap_seconds=15, clock=clock)
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


def test_expired_lease_is_claimed_again(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", lease_seconds=60, clock=clock)
    rid = box.enqueue("dicom", "pacs", "1", "/x")
    box.claim_due()  # worker dies here
    clock.t += 61
    assert [r.id for r in box.claim_due()] == [rid]


def test_worker_uses_sender_registry_and_permanent_errors(tmp_path):
    calls = []

    def sender(config, destination, rows):
        calls.append((destination, [r.object_id for r in rows]))
        return {r.id: (None if r.object_id == "ok" else DeliveryError("gone", permanent=True)) for r in rows}

    register_sender("test-kind", sender)
    config = parse_config({"node": {"data_dir": str(tmp_path)}, "delivery": {"max_attempts": 5}})
    box = Outbox.for_config(config)
    a = box.enqueue("test-kind", "hook", "ok", "payload")
    b = box.enqueue("test-kind", "hook", "bad", "payload")
    c = box.enqueue("no-such-kind", "x", "1", "p")
    w = DeliveryWorker(config, None, outbox=box)
    assert w.run_once() == 3
    assert calls == [("hook", ["ok", "bad"])]
    assert box.get(a).state == "sent" and box.get(b).state == "failed"
    assert box.get(c).state == "pending" and "no sender" in box.get(c).last_error
