"""The receive journal end to end (aenode/store/journal.py, aenode/receive/materialise.py):

* kill -9 after acknowledgements whose journal records were never materialised (and one
  spool file torn as a power cut would leave it): the restart materialises every one,
  byte-identical to what a node that did not crash writes, and indexes it;
* replay drops a torn tail, reports and skips a record whose payload fails its CRC,
  and is idempotent (replaying the same records again changes nothing);
* one fdatasync per instance and no fsync on the receive path.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE

from aenode.config import parse_config
from aenode.node import running_node
from aenode.receive.indexer import IndexWriter
from aenode.receive.materialise import Materialiser
from aenode.store.index import RECEIVING, Index
from aenode.store.journal import RECORD_HEADER, Journal, RecordInfo
from aenode.store.spool import Spool

from .conftest import free_port, make_config, wait_for
from .dicomgen import ct_slice

CHILD = """
import sys, threading
from aenode.receive import materialise
# Never materialise: every answered instance stays in the journal only.
materialise.Materialiser._materialise = lambda self, item: threading.Event().wait()
from aenode.config import parse_config
from aenode.node import running_node
config = parse_config({"node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": int(sys.argv[1]),
                                "data_dir": sys.argv[2]},
                       "stability": {"quiet_seconds": 60.0, "after_release_seconds": 60.0}})
with running_node(config, workers=()) as node:
    print("ready", flush=True)
    threading.Event().wait()
"""


def _send(port: int, slices, release: bool = True) -> list[int]:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(slices[0].SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="AENODE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in slices]
    if release:
        assoc.release()
    else:
        assoc.abort()
    return statuses


def _spool_bytes(data_dir: Path, study_uid: str) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (data_dir / "spool" / study_uid).rglob("*.dcm")}


def test_kill9_with_unmaterialised_records_is_replayed_byte_identical(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i, size=64) for i in range(12)]
    data = tmp_path / "crashed"
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(data)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        for line in child.stdout:  # log lines first
            if line.strip() == "ready":
                break
        statuses = _send(port, slices, release=False)  # a release would wait for materialisation
        assert statuses == [0] * len(slices)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert not (data / "spool" / study_uid).exists()  # nothing was materialised before the kill
    assert list((data / "journal").glob("*.jnl"))

    # The reference: the same instances through a node that does not crash.
    reference = make_config(tmp_path / "ref", stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    with running_node(reference, workers=()) as ref:
        assert _send(ref.port, slices) == [0] * len(slices)
    expected = _spool_bytes(reference.node.data_dir, study_uid)
    assert len(expected) == len(slices)

    # A power cut can also leave a spool file materialised but not yet synced, torn: its
    # header readable (so reconciliation alone would index it), its pixels cut short.
    torn_sop = slices[3].SOPInstanceUID
    torn = data / "spool" / study_uid / series_uid / f"{torn_sop}.dcm"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(expected[torn_sop][:3000])
    config = parse_config({"node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(),
                                    "data_dir": str(data)},
                           "stability": {"quiet_seconds": 60.0, "after_release_seconds": 60.0}})
    for _ in range(2):  # the second start finds nothing left to replay
        with running_node(config, workers=()) as node:
            assert _spool_bytes(data, study_uid) == expected  # byte-identical
            rows = node.index.instances(study_uid)
            assert sorted(r.sop_instance_uid for r in rows) == sorted(expected)
            assert all(r.calling_ae == "SCU" and r.path and r.path.exists() for r in rows)
            study = node.index.study(study_uid)
            assert study.state == RECEIVING and study.revision == 1 and study.instance_count == len(slices)
            assert node.scp.materialiser.replayed in (0, len(slices))


def _die(journal: Journal) -> None:
    """What the kernel does when the owner dies: every descriptor closed, every lock gone."""
    for seg in journal.segments():
        seg.close()


def _file_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _parts(root: Path):
    config = parse_config({"node": {"data_dir": str(root)}})
    spool = Spool(root)
    spool.prepare()
    index = Index.for_data_dir(root)
    writer = IndexWriter(index)
    writer.start()
    journal = Journal(spool.journal_dir)
    mat = Materialiser(journal, spool, writer, config.node.ae_title)
    return spool, index, writer, journal, mat


def test_replay_drops_torn_tail_reports_corrupt_record_and_is_idempotent(tmp_path, log_buffer):
    root = tmp_path / "data"
    spool, index, writer, journal, mat = _parts(root)
    journal.open()
    seg = journal.take()
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i, size=32) for i in range(5)]
    offsets = []
    for ds in slices:
        payload = _file_bytes(ds)
        offset = seg.cursor
        os.pwrite(seg.fd, payload, offset + RECORD_HEADER)
        journal.seal(seg, offset, RecordInfo(study_uid, series_uid, ds.SOPInstanceUID, ds.SOPClassUID,
                                             "1.2.840.10008.1.2.1", "SCU", time.time_ns(), len(payload),
                                             zlib.crc32(payload)))
        offsets.append(offset)
    os.pwrite(seg.fd, b"\x00\x01", offsets[2] + RECORD_HEADER + 200)   # bit rot mid-segment
    os.pwrite(seg.fd, bytes(64), offsets[4] + RECORD_HEADER + 150)     # the tail, torn by a crash
    backup = tmp_path / "segment.copy"
    shutil.copyfile(seg.path, backup)
    _die(journal)  # the receiver dies before materialising anything
    writer.stop()
    index.close()

    spool, index, writer, journal, mat = _parts(root)
    mat.start(index)
    try:
        kept = {ds.SOPInstanceUID: _file_bytes(ds) for k, ds in enumerate(slices) if k in (0, 1, 3)}
        assert _spool_bytes(root, study_uid) == kept
        assert {r.sop_instance_uid for r in index.instances(study_uid)} == set(kept)
        logged = log_buffer.getvalue()
        assert '"journal_record_corrupt"' in logged and '"journal_torn_tail_dropped"' in logged
        assert '"journal_replayed"' in logged
        # The same records once more (as if the crash had come before the segment was reset).
        shutil.copyfile(backup, journal.dir / "replayed-again.jnl")
        before = {r.sop_instance_uid: r.received_at for r in index.instances(study_uid)}
        assert mat.replay(journal.orphans(), index) == 3
        assert _spool_bytes(root, study_uid) == kept
        assert {r.sop_instance_uid: r.received_at for r in index.instances(study_uid)} == before
        study = index.study(study_uid)
        assert study.revision == 1 and study.instance_count == 3
        # A newer copy of an instance is indexed: replaying the older record must not undo it.
        newer = ct_slice(study_uid, series_uid, 0, size=32, sop_uid=slices[0].SOPInstanceUID)
        newer.InstanceNumber = 99
        path = spool.write_bytes(_file_bytes(newer), study_uid, series_uid, newer.SOPInstanceUID)
        index.record_instances([_record(index, path, newer)])
        shutil.copyfile(backup, journal.dir / "stale.jnl")
        assert mat.replay(journal.orphans(), index) == 2  # the two others, idempotently
        assert path.read_bytes() == _file_bytes(newer)
    finally:
        mat.stop()
        writer.stop()
        index.close()


def _record(index: Index, path: Path, ds):
    from aenode.store.index import InstanceRecord
    from aenode.store.meta import read_meta

    return InstanceRecord(read_meta(path), path, path.stat().st_size, "SCU", time.time())


def test_one_fdatasync_per_instance_and_no_fsync_before_the_response(tmp_path, monkeypatch):
    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i, size=32) for i in range(10)]
    config = make_config(tmp_path, stability={"quiet_seconds": 60.0, "after_release_seconds": 60.0})
    with running_node(config, workers=()) as node:
        _send(node.port, slices[:1])  # the first segment is taken
        wait_for(lambda: node.scp.flush_index(5))
        calls: list[str] = []
        real_fdatasync, real_fsync = os.fdatasync, os.fsync
        import threading

        def fdatasync(fd):
            if threading.current_thread().name == "aenode-scp-association":  # runs the C-STORE handlers
                calls.append("fdatasync")
            return real_fdatasync(fd)

        def fsync(fd):
            if threading.current_thread().name == "aenode-scp-association":
                calls.append("fsync")
            return real_fsync(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        assert _send(node.port, slices[1:]) == [0] * 9
        assert calls.count("fdatasync") == 9 and "fsync" not in calls
        assert node.scp.flush_index(10)
        assert len(node.index.instances(study_uid)) == 10
