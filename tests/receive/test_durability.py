"""The durability promise with index rows written after the response (issue 11).

* every instance answered 0x0000 is in the index once the association has ended;
* concurrent associations share index commits (group commit) and directory syncs;
* a power loss that leaves the index behind the spool (the last rows lost) is repaired
  exactly once by start-up reconciliation;
* kill -9 during ingest: every instance the sender was told was stored is indexed after
  the restart.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from pydicom.uid import generate_uid

from aenode.node import running_node
from aenode.store.index import RECEIVING, Index

from .conftest import DCMTK_ENV, echoscu, make_config, storescu, wait_for, write_toml
from .dicomgen import ct_slice, save, write_study


def _rows(db, study_uid: str) -> list[str]:
    with sqlite3.connect(db, timeout=5) as c:
        return [r[0] for r in c.execute("SELECT sop_instance_uid FROM instances WHERE study_uid=?"
                                        " ORDER BY received_at, rowid", (study_uid,))]


def test_ended_associations_are_fully_indexed_and_rows_are_group_committed(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 30.0, "after_release_seconds": 30.0})
    studies = [write_study(tmp_path / f"s{k}", n=40, size=32) for k in range(4)]
    with running_node(config, workers=()) as node:
        results: list[subprocess.CompletedProcess] = []

        def send(folder):
            results.append(storescu(node.port, folder))

        threads = [threading.Thread(target=send, args=(tmp_path / f"s{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr[-300:] for r in results]
        assert node.scp.flush_index(10)  # the rows follow each association's end
        for study_uid, paths in studies:
            assert len(node.index.instances(study_uid)) == len(paths)
            assert node.index.study(study_uid).state == RECEIVING
        # 160 instances over 4 concurrent associations: fewer commits than instances.
        assert 0 < node.scp.writer.batches <= 160


def test_power_loss_with_index_behind_spool_is_reconciled_exactly_once(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    study_uid, paths = write_study(tmp_path / "study", n=30, size=32)
    other_uid, other_paths = write_study(tmp_path / "other", n=5, size=32)
    db = config.node.data_dir / "index.sqlite"
    with running_node(config, workers=()) as node:
        assert storescu(node.port, tmp_path / "study").returncode == 0
        assert storescu(node.port, tmp_path / "other").returncode == 0
    before = _rows(db, study_uid)
    assert len(before) == 30
    lost = before[-7:]
    # The power cut: the last 7 rows of one study and every row of the other never reached
    # the database (their spool files did).
    with sqlite3.connect(db) as c:
        c.executemany("DELETE FROM instances WHERE sop_instance_uid=?", [(u,) for u in lost])
        c.execute("DELETE FROM instances WHERE study_uid=?", (other_uid,))
        c.execute("DELETE FROM studies WHERE study_uid=?", (other_uid,))
    assert len(_rows(db, study_uid)) == 23

    for _ in range(2):  # a second restart must not add anything again
        with running_node(config, workers=()) as node:
            rows = node.index.instances(study_uid)
            assert sorted(r.sop_instance_uid for r in rows) == sorted(before)
            assert {r.sop_instance_uid for r in rows} >= set(lost)
            assert all(r.path.exists() for r in rows)
            study = node.index.study(study_uid)
            assert study.instance_count == 30 and study.revision == 1 and study.state == RECEIVING
            other = node.index.study(other_uid)
            assert other is not None and other.instance_count == 5 and other.revision == 1
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 35


def test_kill9_during_ingest_keeps_every_acknowledged_instance(tmp_path):
    n = 150
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "study"
    for i in range(n):
        save(ct_slice(study_uid, series_uid, i, size=128), folder / f"ct{i:03d}.dcm")
    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    cfg = write_toml(tmp_path / "node.toml", config)
    port = config.node.port
    log = open(tmp_path / "node.log", "ab")
    node = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)], stdout=log, stderr=log)
    try:
        wait_for(lambda: echoscu(port).returncode == 0, timeout=60, interval=0.2)
        sender = subprocess.Popen(["/usr/bin/storescu", "-v", "-aec", "AENODE", "127.0.0.1", str(port), "+sd",
                                   str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=DCMTK_ENV)
        acked = 0
        assert sender.stdout is not None
        for line in sender.stdout:
            if "Received Store Response (Success)" in line:
                acked += 1
                if acked == 40:
                    os.kill(node.pid, signal.SIGKILL)  # right after a success, rows likely still queued
                    break
        sender.stdout.read()
        sender.wait(60)
        node.wait(10)
        assert acked == 40
        node = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)],
                                stdout=log, stderr=log)
        wait_for(lambda: echoscu(port).returncode == 0, timeout=60, interval=0.2)
        index = Index.for_data_dir(config.node.data_dir)
        try:
            indexed = index.instances(study_uid)
            spooled = list((config.node.data_dir / "spool" / study_uid).rglob("*.dcm"))
            assert len(indexed) >= acked  # nothing acknowledged is lost
            assert {r.sop_instance_uid for r in indexed} == {p.stem for p in spooled}  # index == spool
            assert len({r.sop_instance_uid for r in indexed}) == len(indexed)
        finally:
            index.close()
    finally:
        node.terminate()
        node.wait(20)


def test_index_failure_answers_out_of_resources_then_recovers_without_loss(tmp_path):
    """A real write failure of the index database (a trigger that aborts every insert, as a
    full disk would): the file is kept, later instances get 0xA700 (retry), and once the
    database accepts writes again every durable instance is indexed."""
    from pynetdicom import AE

    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i, size=16) for i in range(6)]
    db = config.node.data_dir / "index.sqlite"
    with running_node(config, workers=()) as node:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(slices[0].SOPClassUID, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE")
        assert assoc.is_established
        assert assoc.send_c_store(slices[0]).Status == 0x0000
        assert node.scp.flush_index(10)
        with sqlite3.connect(db) as c:
            c.execute("CREATE TRIGGER full BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'full'); END")
        assert assoc.send_c_store(slices[1]).Status == 0x0000  # durable; its row cannot be written yet
        wait_for(lambda: node.scp.writer.failing, timeout=10)
        statuses = [assoc.send_c_store(ds).Status for ds in slices[2:4]]
        assert statuses == [0xA700, 0xA700]  # the sender is told to retry
        assert not node.scp.flush_index(1)  # nobody waits on a failing index
        with sqlite3.connect(db) as c:
            c.execute("DROP TRIGGER full")
        wait_for(lambda: not node.scp.writer.failing, timeout=10)
        assert [assoc.send_c_store(ds).Status for ds in slices[4:]] == [0x0000, 0x0000]
        assoc.release()
        assert node.scp.flush_index(10)
        rows = {r.sop_instance_uid for r in node.index.instances(study_uid)}
        assert rows == {ds.SOPInstanceUID for ds in slices}  # the 0xA700 ones were durable too


def test_responses_and_release_do_not_wait_for_the_index(tmp_path):
    """Another process holds the index database's write lock: C-STOREs and the release are
    still answered at once (the journal record is the durable record); the rows are
    committed once the lock is let go."""
    import time

    from pynetdicom import AE

    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i, size=16) for i in range(5)]
    db = config.node.data_dir / "index.sqlite"
    hold = 2.0
    with running_node(config, workers=()) as node:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(slices[0].SOPClassUID, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE")
        assert assoc.is_established
        locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN IMMEDIATE")  # the writer now waits (busy timeout)
        released_lock = threading.Timer(hold, lambda: locker.execute("ROLLBACK"))
        t0 = time.monotonic()
        released_lock.start()
        try:
            statuses = [assoc.send_c_store(ds).Status for ds in slices]
            answered = time.monotonic() - t0
            assert statuses == [0] * 5
            assert answered < hold / 2, answered  # not held up by the locked index
            assoc.release()
            released = time.monotonic() - t0
        finally:
            released_lock.join()
            locker.close()
        assert released < hold / 2, released  # nor the release
        assert node.scp.flush_index(10)
        assert time.monotonic() - t0 >= hold * 0.9  # the rows had to wait for the lock
        assert len(node.index.instances(study_uid)) == 5


def _long_quiet_study(tmp_path, n: int):
    """A config whose stabiliser stays out of the way, and ``n`` small slices of one study."""
    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    study_uid, series_uid = generate_uid(), generate_uid()
    return config, study_uid, [ct_slice(study_uid, series_uid, i, size=16) for i in range(n)]


def _open_association(port: int, sop_class: str):
    from pynetdicom import AE

    ae = AE(ae_title="SCU")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="AENODE")
    assert assoc.is_established
    return assoc


def test_materialiser_waits_for_a_pause_in_the_receive(tmp_path, monkeypatch):
    """While an association sends, spool files and rows wait (aenode/receive/materialise.py);
    they follow a pause even with the association still open, and at once for a flush."""
    import time

    from aenode.receive import materialise

    monkeypatch.setattr(materialise, "YIELD_SECONDS", 0.6)
    config, study_uid, slices = _long_quiet_study(tmp_path, 6)
    with running_node(config, workers=()) as node:
        assoc = _open_association(node.port, slices[0].SOPClassUID)
        try:
            assert [assoc.send_c_store(ds).Status for ds in slices[:3]] == [0] * 3
            sent = time.monotonic()
            time.sleep(0.2)
            assert node.index.instances(study_uid) == []  # still within the receive's burst
            wait_for(lambda: len(node.index.instances(study_uid)) == 3, timeout=10, interval=0.02)
            assert time.monotonic() - sent >= 0.55  # after the pause, not before
            assert assoc.is_established
            assert [assoc.send_c_store(ds).Status for ds in slices[3:]] == [0] * 3
            assert node.scp.flush_index(5)  # someone waits: no more yielding
            assert len(node.index.instances(study_uid)) == 6
            assert time.monotonic() - sent < 0.55 + 0.6 + 5
        finally:
            assoc.release()


@pytest.mark.parametrize("bound", ["bytes", "age"])
def test_materialiser_works_during_the_receive_past_its_bounds(tmp_path, monkeypatch, bound):
    """A continuous receive does not hold the rows back for ever: past DEFER_MAX_BYTES, or
    once the oldest record is older than max_defer_seconds, the materialiser works while the
    association sends (else the quiet rule could fire from a stale last arrival)."""
    import time

    from aenode.receive import materialise

    monkeypatch.setattr(materialise, "YIELD_SECONDS", 5.0)
    if bound == "bytes":
        monkeypatch.setattr(materialise, "DEFER_MAX_BYTES", 1)  # any record is past the bound
    else:
        monkeypatch.setattr(materialise, "MAX_DEFER_SECONDS", 0.2)
    config, study_uid, slices = _long_quiet_study(tmp_path, 3)
    with running_node(config, workers=()) as node:
        assoc = _open_association(node.port, slices[0].SOPClassUID)
        try:
            assert [assoc.send_c_store(ds).Status for ds in slices] == [0] * 3
            sent = time.monotonic()
            wait_for(lambda: len(node.index.instances(study_uid)) == 3, timeout=10, interval=0.02)
            assert time.monotonic() - sent < 4.0  # well before the 5 s pause
        finally:
            assoc.release()
