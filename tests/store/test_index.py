"""Index state machine, hand-off API and spool reconciliation (no network)."""

from __future__ import annotations

import threading

import pytest
from pydicom.uid import generate_uid

from aenode.store.index import ANALYSED, ANALYSING, COMPLETE, ERROR, RECEIVING, SKIPPED, Index
from aenode.store.meta import InstanceHeader, read_meta
from aenode.store.spool import Spool, UnsafePath
from aenode.store.stabilise import ActivityTracker, Stabiliser, reconcile
from tests.receive.dicomgen import ct_slice


def meta(study: str, sop: str | None = None, series: str = "1.2.3") -> InstanceHeader:
    return InstanceHeader(study_uid=study, series_uid=series, sop_instance_uid=sop or generate_uid(),
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
                        modality="CT", instance_number=1)


@pytest.fixture
def index(tmp_path, db_url):
    idx = Index.for_data_dir(tmp_path, url=db_url)
    yield idx
    idx.close()


def test_lifecycle_reopen_and_stale_finish(index, tmp_path):
    m = meta("1.2.840.1")
    assert index.record_instance(m, tmp_path / "a.dcm", 10, "SCU")
    assert not index.record_instance(m, tmp_path / "a.dcm", 10, "SCU")  # same instance: counted once
    s = index.study("1.2.840.1")
    assert (s.state, s.revision, s.instance_count) == (RECEIVING, 1, 1)
    assert index.claim_next_complete("w") is None
    assert index.mark_complete("1.2.840.1", s.last_arrival)
    claim = index.claim_next_complete("w")
    assert claim.study_uid == "1.2.840.1" and claim.revision == 1
    assert index.study("1.2.840.1").state == ANALYSING
    # a late instance reopens the study with a new revision; the old analysis is stale
    index.record_instance(meta("1.2.840.1"), tmp_path / "b.dcm", 10, "SCU")
    s = index.study("1.2.840.1")
    assert (s.state, s.revision, s.instance_count) == (RECEIVING, 2, 2)
    assert not index.finish_study("1.2.840.1", 1, ANALYSED)
    assert index.study("1.2.840.1").state == RECEIVING
    assert index.mark_complete("1.2.840.1", s.last_arrival)
    claim = index.claim_next_complete("w")
    assert claim.revision == 2
    index.record_result("1.2.840.1", 2, "covid", "typical", {"typical": 0.8}, "1.2.3", 12.5, {"result_uids": ["9.9"]})
    assert index.finish_study("1.2.840.1", 2, ANALYSED)
    (r,) = index.results("1.2.840.1")
    assert r.category == "typical" and r.probabilities == {"typical": 0.8} and r.detail["result_uids"] == ["9.9"]
    (row,) = [i for i in index.instances("1.2.840.1") if i.path.name == "a.dcm"]
    assert row.path == tmp_path / "a.dcm" and row.path.is_absolute()
    assert [s.instance_count for s in index.series("1.2.840.1")] == [2]


def test_finish_states_and_recovery(index, tmp_path):
    for uid in ("1.1", "1.2", "1.3"):
        index.record_instance(meta(uid), tmp_path / f"{uid}.dcm", 1, "SCU")
        index.mark_complete(uid, index.study(uid).last_arrival)
    a, b, c = (index.claim_next_complete("w") for _ in range(3))
    index.finish_study(a.study_uid, a.revision, SKIPPED, "no CT series")
    index.finish_study(b.study_uid, b.revision, ERROR, "load failed")
    with pytest.raises(ValueError):
        index.finish_study(c.study_uid, c.revision, COMPLETE)
    assert index.recover_interrupted() == 1
    assert index.study(c.study_uid).state == COMPLETE
    assert index.study(a.study_uid).reason == "no CT series"


def test_claims_are_exclusive(index, tmp_path, db_url):
    for k in range(20):
        uid = f"1.5.{k}"
        index.record_instance(meta(uid), tmp_path / f"{k}.dcm", 1, "SCU")
        index.mark_complete(uid, index.study(uid).last_arrival)
    others = [Index.for_data_dir(tmp_path, url=db_url) for _ in range(4)]
    got: list = []

    def work(idx):
        while (c := idx.claim_next_complete("w")) is not None:
            got.append(c.study_uid)

    threads = [threading.Thread(target=work, args=(i,)) for i in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"1.5.{k}" for k in range(20))
    for i in others:
        i.close()


def test_own_output_never_opens_a_study(index, tmp_path):
    index.record_instance(meta("1.7"), tmp_path / "sr.dcm", 1, "AENODE", own_output=True)
    assert index.study("1.7").state == SKIPPED
    index.record_instance(meta("1.8"), tmp_path / "ct.dcm", 1, "SCU")
    index.mark_complete("1.8", index.study("1.8").last_arrival)
    index.record_instance(meta("1.8"), tmp_path / "sr2.dcm", 1, "AENODE", own_output=True)
    assert (index.study("1.8").state, index.study("1.8").revision) == (COMPLETE, 1)


def test_stabiliser_quiet_and_release(tmp_path, db_url):
    """Timers on an injected clock: no sleeping, no dependence on the machine's load."""
    now = [1000.0]

    def clock() -> float:
        return now[0]

    index = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    try:
        tracker = ActivityTracker(clock=clock)
        stab = Stabiliser(index, tracker, quiet_seconds=5, after_release_seconds=0.1, clock=clock)
        index.record_instance(meta("1.9"), tmp_path / "x.dcm", 1, "SCU")
        tracker.instance("assoc1", "1.9")
        tracker.instance("assoc2", "1.9")
        tracker.ended("assoc1")
        now[0] += 0.15
        assert stab.tick() == []  # assoc2 is still sending
        tracker.ended("assoc2")
        now[0] += 0.05
        assert stab.tick() == []  # released, but not for after_release_seconds yet
        now[0] += 0.1
        assert stab.tick() == ["1.9"]
        stab2 = Stabiliser(index, ActivityTracker(clock=clock), quiet_seconds=0.1, after_release_seconds=0,
                           clock=clock)
        index.record_instance(meta("1.10"), tmp_path / "y.dcm", 1, "SCU")
        now[0] += 0.09
        assert stab2.tick() == []
        now[0] += 0.02
        assert stab2.tick() == ["1.10"]
    finally:
        index.close()


def test_spool_paths_and_reconcile(tmp_path, db_url):
    spool = Spool(tmp_path)
    spool.prepare()
    with pytest.raises(UnsafePath):
        spool.path_for("../x", "1.2", "1.3")
    ds = ct_slice(generate_uid(), generate_uid(), 0)
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path = spool.write_bytes(buf.getvalue(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    m = read_meta(path)
    assert m.sop_instance_uid == ds.SOPInstanceUID and m.phi  # PHI values found for masking
    idx = Index.for_data_dir(tmp_path, url=db_url)  # an index that lost the row (e.g. power loss)
    assert reconcile(idx, spool) == 1 and reconcile(idx, spool) == 0
    (row,) = idx.instances(ds.StudyInstanceUID)
    assert row.path == path and idx.study(ds.StudyInstanceUID).state == RECEIVING
    idx.close()
